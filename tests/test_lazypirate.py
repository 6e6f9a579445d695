"""The Lazy Pirate client against plain REP, a forgetful server, nobody, and the broker."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
import zmq

from greenzmq import RequestTimeout
from greenzmq.patterns.lazypirate import LazyPirate


def _rep_server(ctx: Any, ep: str, forget_first: int = 0) -> tuple[gevent.Greenlet, list[bytes]]:
    """A ROUTER that squares integers and ignores its first ``forget_first`` requests."""
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(ep)
    seen: list[bytes] = []

    def serve() -> None:
        try:
            while True:
                m = sock.recv_multipart()
                seen.append(m[-1])
                if len(seen) <= forget_first:
                    continue  # the request is "lost"
                sock.send_multipart([*m[:-1], str(int(m[-1]) ** 2).encode()])
        finally:
            sock.close(linger=0)

    return gevent.spawn(serve), seen


class TestLazyPirate:
    def test_plain_rep(self, ctx: Any, endpoint: Any) -> None:
        """Against a plain REP server each request gets its reply, no retries."""
        ep = endpoint()
        rep = ctx.socket(zmq.REP)
        rep.bind(ep)

        def serve() -> None:
            for _ in range(3):
                rep.send(str(int(rep.recv()) ** 2).encode())

        g = gevent.spawn(serve)
        with LazyPirate(ep, timeout=2.0, retries=2, ctx=ctx) as c:
            assert [c.request(str(i).encode()) for i in (2, 3, 4)] == [[b"4"], [b"9"], [b"16"]]
            assert c.resent == 0
        g.join(5)
        rep.close(linger=0)

    def test_retry_after_lost_request(self, ctx: Any, endpoint: Any) -> None:
        """A lost request is resent on a fresh socket and the reply comes back."""
        ep = endpoint()
        g, seen = _rep_server(ctx, ep, forget_first=2)
        with LazyPirate(ep, timeout=0.3, retries=3, ctx=ctx) as c:
            assert c.request(b"5") == [b"25"]
            assert c.resent == 2
            assert c.request(b"6") == [b"36"]  # the fresh socket works on
        assert seen == [b"5", b"5", b"5", b"6"]
        g.kill()

    def test_clear_error_after_last_retry(self, ctx: Any, endpoint: Any) -> None:
        """With nobody answering, RequestTimeout names endpoint, tries and timeout."""
        ep = endpoint()
        t0 = time.monotonic()
        with LazyPirate(ep, timeout=0.2, retries=3, ctx=ctx) as c:
            with pytest.raises(RequestTimeout, match=rf"no reply from {ep} after 3 tries of 0.2 s"):
                c.request(b"1")
            assert isinstance(RequestTimeout("x"), TimeoutError)
        assert time.monotonic() - t0 >= 0.6

    def test_bad_settings(self) -> None:
        """A zero timeout or no tries is refused up front."""
        with pytest.raises(ValueError, match="timeout"):
            LazyPirate("tcp://127.0.0.1:1", timeout=0)
        with pytest.raises(ValueError, match="retries"):
            LazyPirate("tcp://127.0.0.1:1", retries=0)

    def test_tutorial_broker_with_late_worker(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """Through the tutorial broker (worker started after the client): all answered."""
        fe, be = endpoint(), endpoint()
        broker = service(
            "services.broker:app", "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}"
        )
        broker.wait_started()
        with LazyPirate(fe, timeout=0.5, retries=20, ctx=ctx) as c:
            # the first request waits in the broker's DEALER until a worker connects
            worker = service("services.worker:app", "--endpoint", f"backend={be}")
            assert c.request(b"12") == [b"144"]
            assert [c.request(str(i).encode()) for i in range(1, 6)] == [
                [str(i * i).encode()] for i in range(1, 6)
            ]
        worker.wait_started()


class TestCorrelation:
    def test_stray_reply_is_not_the_answer(self, ctx: Any, endpoint: Any) -> None:
        """A reply that does not carry the request's id is dropped with a reason, not returned."""
        from structlog.testing import capture_logs

        ep = endpoint()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(ep)

        def serve() -> None:
            m = sock.recv_multipart()
            # a reply forged for this client's routing id (guessable: they count up)
            # reaches it while its request is in hand, before the real one
            sock.send_multipart([m[0], b"", b"forged"])
            sock.send_multipart([*m[:-1], b"one"])
            sock.send_multipart([*m[:-1], b"one again"])  # at-least-once: a duplicate
            m = sock.recv_multipart()
            sock.send_multipart([*m[:-1], b"two"])

        g = gevent.spawn(serve)
        sock.hand_over(g)
        try:
            with capture_logs() as logs, LazyPirate(ep, timeout=2.0, retries=1, ctx=ctx) as c:
                assert c.request(b"1") == [b"one"]
                assert c.request(b"2") == [b"two"]
            g.get(timeout=5)
        finally:
            sock.close(linger=0)
        stale = [e["reason"] for e in logs if e["event"] == "lazypirate.stale_reply"]
        assert stale == ["no request id", "not the request in hand"]
