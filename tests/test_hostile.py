"""Hostile input: random multipart messages at every router of the broker, the PPP queue and
the Majordomo broker, interleaved with valid traffic; and MAXMSGSIZE.

Each example sends one hostile message from a fresh DEALER or REQ socket, then one valid
request that must be answered. At the end every process is alive and the log holds at least
one ``drop`` (with a reason) per message that is certainly malformed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenzmq import RequestTimeout, SocketSpec
from greenzmq.patterns.lazypirate import LazyPirate
from greenzmq.patterns.mdp import MDPClient

from .helpers import ServiceProcess, wait_for

HEADERS = [
    b"MDPC01",
    b"MDPW01",
    b"MDPC02",
    b"MDPW02",
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\x06",
    b"",
]
frame = st.one_of(st.sampled_from(HEADERS), st.binary(max_size=64), st.binary(max_size=3000))
hostile = st.tuples(st.sampled_from(["DEALER", "REQ"]), st.lists(frame, max_size=6))
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUIET = ("--trace-sample", "0")  # drops are logged anyway; hops are not needed here


def payload(kind: str, frames: list[bytes]) -> list[bytes]:
    """What the router sees after the sender's routing id."""
    frames = frames or [b""]  # a message has at least one frame
    return [b"", *frames] if kind == "REQ" else frames


def unroutable(p: list[bytes]) -> bool:
    """Certainly malformed for a request router: no empty delimiter before a body frame."""
    return not any(not f for f in p[:-1])


def bad_for_backend(p: list[bytes]) -> bool:
    """Certainly dropped by the PPP backend: all but READY/DISCONNECT (replies go nowhere)."""
    return not (len(p) == 1 and p[0] in (b"\x01", b"\x03"))


def bad_for_mdp(p: list[bytes]) -> bool:
    """Certainly malformed for Majordomo: too short, no delimiter, or no protocol header."""
    return len(p) < 3 or p[0] != b"" or p[1] not in HEADERS[:4]


def drops(p: ServiceProcess) -> list[dict[str, Any]]:
    return p.events("hop", op="drop")


def attack(
    ctx: Any,
    target: str,
    valid: Callable[[int], None],
    oracle: Callable[[list[bytes]], bool],
    counter: dict[str, int],
) -> Callable[..., None]:
    """One hypothesis example: a hostile message at ``target``, then a valid request."""

    @EXAMPLES
    @given(hostile)
    def run(msg: tuple[str, list[bytes]]) -> None:
        kind, frames = msg
        s = ctx.socket(zmq.REQ if kind == "REQ" else zmq.DEALER)
        s.connect(target)
        try:
            s.send_multipart(frames or [b""])
            counter["sent"] += 1
            counter["bad"] += oracle(payload(kind, frames))
            valid(counter["sent"])
        finally:
            # the connection may still be handshaking: linger lets libzmq deliver the message
            s.close(linger=2000)

    return run


def check_after(
    procs: list[ServiceProcess], logger: ServiceProcess, counter: dict[str, int]
) -> None:
    """Everyone alive; at least one drop with a reason per certainly-bad message.

    Past a burst, drops are counted into ``drops_suppressed`` lines, the last
    of them when the service closes: the logger is stopped first.
    """
    for p in procs:
        assert p.proc.poll() is None, f"{p.args} died:\n{p.output()}"
    logger.signal(signal.SIGTERM)
    assert logger.wait(15) == 0, logger.output()
    counts = logger.drop_counts()
    assert sum(counts.values()) >= counter["bad"], (counter, counts)
    assert all(d.get("reason") for d in drops(logger))
    print(f"{counter['sent']} hostile, {counter['bad']} certainly bad, drops: {dict(counts)}")


class TestHostile:
    @pytest.mark.deadline(80)
    def test_tutorial_broker(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """The tutorial broker's ROUTER frontend survives random frames; valid requests answered."""
        fe, be = endpoint(), endpoint()
        b = service(
            "services.broker:app",
            "--endpoint",
            f"frontend={fe}",
            "--endpoint",
            f"backend={be}",
            *QUIET,
        )
        w = service("services.worker:app", "--endpoint", f"backend={be}", *QUIET)
        counter = {"sent": 0, "bad": 0}
        with LazyPirate(fe, timeout=2, retries=3, ctx=ctx) as c:

            def valid(i: int) -> None:
                assert c.request(str(i).encode()) == [str(i * i).encode()]

            attack(ctx, fe, valid, unroutable, counter)()
        check_after([b, w], b, counter)

    @pytest.mark.deadline(80)
    @pytest.mark.parametrize("router", ["frontend", "backend"])
    def test_ppp_queue(self, router: str, service: Any, endpoint: Any, ctx: Any) -> None:
        """Both PPP queue routers survive random frames (fake READYs too); valid ones answered."""
        fe, be = endpoint(), endpoint()
        q = service(
            "services.ppqueue:make(heartbeat=0.2)",
            "--endpoint",
            f"frontend={fe}",
            "--endpoint",
            f"backend={be}",
            *QUIET,
        )
        w = service("services.ppworker:app(heartbeat=0.2)", "--endpoint", f"backend={be}", *QUIET)
        wait_for(lambda: q.events("ppqueue.worker_ready"), 15, "worker ready")
        counter = {"sent": 0, "bad": 0}
        with LazyPirate(fe, timeout=2, retries=3, ctx=ctx) as c:

            def valid(i: int) -> None:
                assert c.request(str(i).encode()) == [str(i * i).encode()]

            oracle = unroutable if router == "frontend" else bad_for_backend
            attack(ctx, fe if router == "frontend" else be, valid, oracle, counter)()
        check_after([q, w], q, counter)

    @pytest.mark.deadline(80)
    def test_majordomo(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """The Majordomo ROUTER survives random frames and fake headers; 0.1 and 0.2 answered."""
        ep = endpoint()
        b = service("services.majordomo:make(heartbeat=0.2)", "--endpoint", f"broker={ep}", *QUIET)
        w = service(
            "services.majordomo:worker(heartbeat=0.2)", "--endpoint", f"broker={ep}", *QUIET
        )
        wait_for(lambda: b.events("mdp.worker_ready"), 15, "worker ready")
        counter = {"sent": 0, "bad": 0}
        with (
            MDPClient(ep, version=1, timeout=2, retries=3, ctx=ctx) as c1,
            MDPClient(ep, version=2, timeout=2, retries=3, ctx=ctx) as c2,
        ):

            def valid(i: int) -> None:
                c = c1 if i % 2 else c2
                assert c.request("square", str(i).encode()) == [str(i * i).encode()]

            attack(ctx, ep, valid, bad_for_mdp, counter)()
        check_after([b, w], b, counter)

    def test_known_bad_messages_and_reasons(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """Specific malformed messages are dropped with the expected reasons."""
        ep = endpoint()
        b = service("services.majordomo:make(heartbeat=0.2)", "--endpoint", f"broker={ep}", *QUIET)
        b.wait_started()
        cases = [
            ([b"x"], "too few frames"),
            ([b"x", b"y", b"z"], "no envelope delimiter"),
            ([b"", b"HTTP/1.1", b"x"], "unknown protocol header"),
            ([b"", b"MDPC02", b"\x09", b"svc", b"x"], "unknown client command"),
            ([b"", b"MDPC02", b"\x02", b"", b"x"], "request without a service name"),
            ([b"", b"MDPW02", b"\x01"], "READY without a service name"),
            ([b"", b"MDPW01", b"\x01", b"mmi.x"], "READY for a reserved mmi. service"),
            ([b"", b"MDPW02", b"\x04", b"c", b"", b"x"], "command from an unregistered worker"),
        ]
        s = ctx.socket(zmq.DEALER)
        s.connect(ep)
        for frames, _ in cases:
            s.send_multipart(frames)
        wait_for(lambda: len(drops(b)) >= len(cases), 10, "all drops logged")
        got = [d["reason"] for d in drops(b)]
        assert got == [r for _, r in cases]
        with MDPClient(ep, ctx=ctx, timeout=2, retries=1) as c:
            assert c.request("mmi.service", b"none") == [b"404"]  # still serving
        s.close(linger=0)


class TestMaxMsgSize:
    def test_socket_spec_caps_messages(self, ctx: Any, endpoint: Any) -> None:
        """A ROUTER with maxmsgsize drops the oversized sender's connection; others go on."""
        ep = endpoint()
        router = ctx.build(SocketSpec("r", "ROUTER", bind=(ep,), maxmsgsize=1000))
        big, small = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for s in (big, small):
            s.connect(ep)
        big.send(b"x" * 5000)
        small.send(b"y" * 1000)
        with gevent.Timeout(5):
            assert router.recv_multipart()[1] == b"y" * 1000
        with gevent.Timeout(0.3, False):
            router.recv_multipart()
            pytest.fail("the oversized message was delivered")
        for s in (router, big, small):
            s.close(linger=0)

    def test_queue_maxmsgsize(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """ppqueue make(maxmsgsize=...) refuses an oversized request and serves small ones."""
        fe, be = endpoint(), endpoint()
        q = service(
            "services.ppqueue:make(heartbeat=0.2, maxmsgsize=1000)",
            "--endpoint",
            f"frontend={fe}",
            "--endpoint",
            f"backend={be}",
            *QUIET,
        )
        service("services.ppworker:app(heartbeat=0.2)", "--endpoint", f"backend={be}", *QUIET)
        wait_for(lambda: q.events("ppqueue.worker_ready"), 15, "worker ready")
        with LazyPirate(fe, timeout=0.5, retries=1, ctx=ctx) as c:
            with pytest.raises(RequestTimeout):
                c.request(b"1" * 2000)
            assert c.request(b"12") == [b"144"]
