"""RPC over Majordomo (issue 12, section 1; the test client of section 2): greenzmq.rpc.

Real brokers and workers: an in-process MDPBroker and RPCService (greenlets,
through the plugin's ``greenzmq_service``) on free tcp endpoints; launcher
processes and ``greenzmq call`` subprocesses where the behaviour spans
processes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.subprocess
import pytest
import zmq
import zmq.green
from hypothesis import given, settings
from hypothesis import strategies as st

from greenzmq import rpc
from greenzmq.errors import GreenZMQError, RemoteError, RequestTimeout
from greenzmq.patterns.mdp import MDPBroker

from .helpers import ROOT, green_wait_for
from .rpc_apps import Calculator

Env = tuple[Any, Any, rpc.Client]


@pytest.fixture
def served(greenzmq_service: Any) -> Callable[..., Env]:
    """``served(**broker_or_service_options)``: a broker, a Calculator service, a client."""
    clients: list[rpc.Client] = []

    def start(*, broker: dict[str, Any] | None = None, **options: Any) -> Env:
        b = greenzmq_service(MDPBroker(**(broker or {})))
        ep = b.endpoints["broker"]
        svc = greenzmq_service(rpc.RPCService(Calculator(), endpoint=ep, **options))
        client = rpc.Client("Calculator", ep, timeout=5)
        clients.append(client)
        return b, svc, client

    yield start
    for c in clients:
        c.close()


class TestCalls:
    @pytest.mark.deadline(30)
    def test_attribute_calls_with_keywords(self, served: Callable[..., Env]) -> None:
        """client.add(1, 2) and keyword arguments reach the method through the broker."""
        _, svc, calc = served()
        assert calc.add(1, 2) == 3
        assert calc.add(a="x", b="y") == "xy"
        assert calc.add([1], b=[2]) == [1, 2]
        assert calc.call("add", (2, 3), {}) == 5
        assert svc.service.dispatcher.calls == 4

    @pytest.mark.deadline(30)
    def test_values_round_trip_exactly(self, served: Callable[..., Env]) -> None:
        """bytes, str, ints, floats, None, bools, lists and dicts come back as sent (msgpack)."""
        _, _, calc = served()
        value = {
            "bytes": b"\x00\xff",
            "str": "h\u00e9",
            "int": -(2**63),
            "big": 2**64 - 1,
            "float": 0.1,
            "inf": math.inf,
            "none": None,
            "flags": [True, False],
            1: {b"k": [[], {}]},
        }
        back = calc.echo(value)
        assert back == value
        assert type(back["bytes"]) is bytes and type(back["str"]) is str

    @pytest.mark.deadline(30)
    def test_json_codec(self, served: Callable[..., Env]) -> None:
        """The JSON fallback carries JSON's types; bytes are refused with the codec named."""
        broker, _, _ = served()
        with rpc.Client("Calculator", broker.endpoints["broker"], timeout=5, codec="json") as calc:
            assert calc.echo({"a": [1, 2.5, None, "s"]}) == {"a": [1, 2.5, None, "s"]}
            with pytest.raises(TypeError, match="JSON cannot carry"):
                calc.echo(b"raw")

    @pytest.mark.deadline(30)
    def test_a_value_no_codec_carries(self, served: Callable[..., Env]) -> None:
        """A result msgpack cannot carry comes back as a remote TypeError; the service goes on."""
        _, _, calc = served()
        with pytest.raises(RemoteError.named("TypeError"), match="msgpack cannot carry"):
            calc.opaque()
        with pytest.raises(TypeError, match="msgpack cannot carry"):
            calc.echo(object())  # refused before it is sent
        assert calc.add(1, 1) == 2


class TestErrors:
    @pytest.mark.deadline(30)
    def test_remote_exception(self, served: Callable[..., Env]) -> None:
        """Type name, message and remote traceback; one RemoteError subclass per name."""
        _, _, calc = served()
        with pytest.raises(RemoteError) as info:
            calc.div(1, 0)
        e = info.value
        assert isinstance(e, RemoteError.named("ZeroDivisionError"))
        assert isinstance(e, GreenZMQError)
        assert type(e) is RemoteError.named("ZeroDivisionError")
        assert type(e).__name__ == e.type_name == "ZeroDivisionError"
        assert e.message == "division by zero"
        assert str(e) == "ZeroDivisionError: division by zero"
        assert "in div" in e.remote_traceback and "return a / b" in e.remote_traceback
        assert not isinstance(e, RemoteError.named("ValueError"))

    @pytest.mark.deadline(30)
    def test_a_failing_method_never_kills_the_worker(self, served: Callable[..., Env]) -> None:
        """After errors of every kind the same worker answers the next call."""
        _, svc, calc = served()
        for call in (
            lambda: calc.div(1, 0),
            calc.add,  # TypeError: missing argument
            calc.nothing,
            lambda: calc.call("_private"),
        ):
            with pytest.raises(RemoteError):
                call()
        assert calc.add(2, 2) == 4
        assert svc.service.worker.answered == 5
        assert svc.service.dispatcher.errors == 2

    @pytest.mark.deadline(30)
    def test_unknown_and_private_methods(self, served: Callable[..., Env]) -> None:
        """Only public methods are callable; the error names the method."""
        _, _, calc = served()
        with pytest.raises(RemoteError.named("AttributeError"), match="no method 'nothing'"):
            calc.nothing()
        with pytest.raises(RemoteError.named("AttributeError"), match="'_private'"):
            calc.call("_private")
        with pytest.raises(AttributeError):
            calc._private  # noqa: B018 (a private name is never a remote method)


def cli_module(module: str, *args: str) -> Any:
    """``python -m MODULE ARGS`` (green: a broker in the test's process keeps serving)."""
    return gevent.subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def cli(*args: str) -> Any:
    """``python -m greenzmq ARGS``."""
    return cli_module("greenzmq", *args)


def produced(svc: Any) -> int:
    return int(svc.service.obj.produced)


class TestStreams:
    @pytest.mark.deadline(30)
    @pytest.mark.parametrize("version", ["0.2", "0.1"])
    def test_a_generator_streams_in_chunks(self, served: Callable[..., Env], version: str) -> None:
        """Items come in order, window by window, and the stream ends with the generator
        (from an MDP/0.1 worker too, which has no PARTIAL: a chunk comes in its one reply)."""
        broker, svc, _ = served(version=version)
        with rpc.Client("Calculator", broker.endpoints["broker"], window=4) as calc:
            stream = calc.count(10)
            assert isinstance(stream, rpc.Stream)
            assert list(stream) == list(range(10))
            assert stream.fetched == 2  # 4 in the first reply, then 4 and 2
        assert svc.service.dispatcher.open_streams == 0

    @pytest.mark.deadline(30)
    def test_backpressure_a_slow_consumer_holds_the_worker(
        self, served: Callable[..., Env]
    ) -> None:
        """An endless generator runs one window ahead of its consumer, no further, however
        long the consumer dawdles; the service's window caps a greedy client's."""
        broker, svc, _ = served(window=8)
        with rpc.Client("Calculator", broker.endpoints["broker"], window=4) as calc:
            stream = calc.count()  # never ends
            for expected in range(10):
                assert next(stream) == expected
                gevent.sleep(0.01)
            gevent.sleep(0.3)  # time the worker would use to run ahead, were it free to
            assert produced(svc) == 12  # 10 consumed, rounded up to the window of 4
            stream.close()
        greedy = rpc.Client("Calculator", broker.endpoints["broker"], window=1000)
        with greedy, greedy.count() as stream:
            assert next(stream) == 0
            gevent.sleep(0.3)
            assert produced(svc) == 12 + 8  # the service's window, not the client's
        green_wait_for(lambda: svc.service.dispatcher.open_streams == 0, 5, "streams closed")

    @pytest.mark.deadline(30)
    def test_an_error_mid_stream(self, served: Callable[..., Env]) -> None:
        """The items made before a generator's exception arrive, then the RemoteError."""
        broker, svc, _ = served()
        for window in (3, 8):  # the error in a later chunk, or in the first one's wake
            with rpc.Client("Calculator", broker.endpoints["broker"], window=window) as calc:
                got = []
                with pytest.raises(RemoteError.named("ValueError"), match="no 5"):
                    for item in calc.count(10, fail_at=5):
                        got.append(item)
                assert got == [0, 1, 2, 3, 4]
        assert svc.service.dispatcher.open_streams == 0

    @pytest.mark.deadline(30)
    def test_close_and_idle_streams(self, served: Callable[..., Env]) -> None:
        """close() ends the remote generator; one nobody asks for expires after stream_idle."""
        _, svc, calc = served(stream_idle=0.2)
        d = svc.service.dispatcher
        with calc.count() as stream:
            next(stream)
            assert d.open_streams == 1
        assert d.open_streams == 0
        abandoned = calc.count()
        assert d.open_streams == 1
        gevent.sleep(0.3)
        assert calc.add(1, 1) == 2  # any request sweeps the idle streams
        assert d.open_streams == 0
        with pytest.raises(RemoteError.named("LookupError"), match="finished or expired"):
            list(abandoned)

    @pytest.mark.deadline(30)
    def test_streams_with_offload_thread(self, served: Callable[..., Env]) -> None:
        """offload="thread": the generator runs in the pool's threads, chunk by chunk."""
        broker, _, _ = served(offload="thread", pool=2)
        with rpc.Client("Calculator", broker.endpoints["broker"], window=3) as calc:
            assert list(calc.count(7)) == list(range(7))
            assert calc.add(2, 3) == 5

    @pytest.mark.deadline(30)
    def test_items_arrive_as_they_are_made(self, served: Callable[..., Env]) -> None:
        """The caller gets each item when its PARTIAL arrives, not when its chunk is done;
        a call in between reads the chunk's rest into the stream's buffer."""
        _, _, calc = served()
        t0 = time.monotonic()
        stream = calc.count(4, delay=0.4)  # a chunk of 4 takes 1.6 s to make
        assert next(stream) == 0
        assert time.monotonic() - t0 < 1.2
        assert list(stream) == [1, 2, 3]
        stream = calc.count(3, delay=0.05)
        assert next(stream) == 0
        assert calc.add(1, 2) == 3  # the socket is shared: the stream's rest is kept
        assert list(stream) == [1, 2]

    @pytest.mark.deadline(30)
    def test_a_stalled_stream(self, greenzmq_service: Any) -> None:
        """A stream silent past the timeout raises RequestTimeout, the stream's own error
        even when another call on the client read ahead and met it; the client goes on."""
        broker = greenzmq_service(MDPBroker())
        ep = broker.endpoints["broker"]
        greenzmq_service(rpc.RPCService(Calculator(), endpoint=ep, pool=2))
        with rpc.Client("Calculator", ep, timeout=0.5) as calc:
            stream = calc.ticks([0, 2.0, 0])
            assert next(stream) == 0
            assert calc.add(1, 2) == 3  # it waits 0.5 s for the stream's chunk, then goes on
            with pytest.raises(RequestTimeout, match="the stream stalled"):
                next(stream)
            with pytest.raises(StopIteration):
                next(stream)
            assert calc.add(2, 2) == 4

    @pytest.mark.deadline(30)
    @pytest.mark.parametrize("offload", [None, "thread"])
    def test_items_travel_as_mdp02_partial_replies(
        self, served: Callable[..., Env], offload: str | None
    ) -> None:
        """On the wire each item is one MDP/0.2 PARTIAL reply, the chunk's FINAL says what
        comes next: seen by a raw DEALER speaking MDP/0.2 to the broker."""
        broker, _, _ = served(offload=offload)
        ctx = zmq.green.Context()
        sock = ctx.socket(zmq.DEALER)
        try:
            sock.connect(broker.endpoints["broker"])
            call = rpc.MSGPACK.dumps(["count", [5], {}, None, 3])  # a window of 3
            sock.send_multipart([b"", b"MDPC02", b"\x02", b"Calculator", b"msgpack", call])
            replies = []
            with gevent.Timeout(10):
                while not replies or replies[-1][2] != b"\x04":  # until the FINAL
                    replies.append(sock.recv_multipart())
        finally:
            sock.close(linger=0)
            ctx.term()
        assert [r[:3] for r in replies] == [[b"", b"MDPC02", b"\x03"]] * 3 + [
            [b"", b"MDPC02", b"\x04"]
        ]
        assert [rpc.MSGPACK.loads(r[3]) for r in replies[:3]] == [0, 1, 2]
        assert replies[-1][3:5] == [b"msgpack", b"more"]

    def test_no_streams_from_a_process_pool(self) -> None:
        """A generator cannot outlive a pool process's call: refused, with the fix named."""
        d = rpc.Dispatcher(Calculator(), streaming=False)
        payload = rpc.MSGPACK.dumps(["count", [3], {}, None, None])
        reply = d([b"msgpack", payload])
        assert reply[1] == b"err"
        assert "streams need offload=None or 'thread'" in rpc.MSGPACK.loads(reply[2])[1]


class TestIntrospection:
    @pytest.mark.deadline(30)
    def test_methods_signatures_and_docstrings(self, served: Callable[..., Env]) -> None:
        """methods(): the public methods, their signatures, docstrings and stream flags."""
        _, _, calc = served()
        found = {m["name"]: m for m in calc.methods()}
        assert sorted(found) == ["add", "count", "div", "echo", "nap", "opaque", "pid", "ticks"]
        assert found["add"] == {
            "name": "add",
            "signature": "(a: 'Any', b: 'Any' = 0) -> 'Any'",
            "doc": "a + b.",
            "stream": False,
        }
        assert found["count"]["stream"] is True
        assert rpc.LocalClient(Calculator).methods() == calc.methods()


class TestDeadlines:
    @pytest.mark.deadline(30)
    def test_the_broker_drops_a_request_past_its_expiry(self, served: Callable[..., Env]) -> None:
        """The caller times out; the broker's request expiry (service_timeouts) drops the
        queued request instead of dispatching it to the worker when it frees up."""
        broker, svc, calc = served(broker={"service_timeouts": {"Calculator": 0.3}})
        ep = broker.endpoints["broker"]
        with rpc.Client("Calculator", ep, timeout=5) as other:
            busy = gevent.spawn(other.nap, 1.0)
            green_wait_for(lambda: svc.service.obj.calls == 1, 5, "the worker busy")
            with pytest.raises(RequestTimeout, match="no reply from 'Calculator'"):
                calc.call("add", (1, 2), timeout=0.3)
            assert busy.get(timeout=5) == 1.0
        b = broker.service
        green_wait_for(lambda: b.counts["requests timed out"] == 1, 5, "the expiry")
        assert b.drops["request timed out waiting for a worker"] == 1
        assert svc.service.obj.calls == 1  # only the nap ran
        assert svc.service.dispatcher.expired == 0  # the worker never saw it

    @pytest.mark.deadline(30)
    def test_a_late_request_is_not_run(self, served: Callable[..., Env]) -> None:
        """Without a broker expiry, the worker that gets a call past its deadline skips it."""
        broker, svc, calc = served()
        with rpc.Client("Calculator", broker.endpoints["broker"], timeout=5) as other:
            busy = gevent.spawn(other.nap, 0.6)
            green_wait_for(lambda: svc.service.obj.calls == 1, 5, "the worker busy")
            with pytest.raises(RequestTimeout):
                calc.call("add", (1, 2), timeout=0.2)
            busy.get(timeout=5)
        green_wait_for(lambda: svc.service.dispatcher.expired == 1, 5, "the late call skipped")
        assert svc.service.obj.calls == 1
        assert calc.add(1, 2) == 3  # the client goes on, on a fresh socket


class TestMajordomoForFree:
    @pytest.mark.deadline(60)
    def test_several_brokers_offload_and_failover(self, greenzmq_service: Any) -> None:
        """A service on two brokers (offload="thread", pool=2) answers through either,
        streams through either, and a client that knows both fails over when one stops."""
        b1, b2 = greenzmq_service(MDPBroker()), greenzmq_service(MDPBroker())
        eps = [b1.endpoints["broker"], b2.endpoints["broker"]]
        # heartbeat 0.2: leaving, the workers wait 0.6 s, not 7.5, for the stopped b1's goodbye
        svc = rpc.RPCService(Calculator(), endpoint=eps, offload="thread", pool=2, heartbeat=0.2)
        greenzmq_service(svc)
        for ep in eps:
            with rpc.Client("Calculator", ep, timeout=5, window=2) as calc:
                assert calc.add(1, 2) == 3
                assert list(calc.count(5)) == [0, 1, 2, 3, 4]
        with rpc.Client("Calculator", eps, timeout=2, retries=2) as calc:
            assert calc.add(1, 1) == 2  # through b1, the first listed
            b1.stop()
            assert calc.add(2, 2) == 4  # b1 silent for 2 s: the second try goes to b2
            assert calc.mdp.failovers == 1, calc.mdp.failovers

    @pytest.mark.deadline(60)
    def test_curve(self, greenzmq_service: Any, tmp_path: Any) -> None:
        """A CURVE broker: the service and a client with keys are served; one without is not."""
        from greenzmq.core.auth import client_options, generate_keys, secure

        keys = {n: generate_keys(tmp_path, n) for n in ("server", "worker", "client")}
        allowed = tmp_path / "allowed"
        allowed.mkdir()
        for n in ("worker", "client"):
            (allowed / f"{n}.key").write_bytes(keys[n][0].read_bytes())
        broker = MDPBroker()
        secure(broker, secret_key=keys["server"][1], allowed_keys=allowed, sockets=("broker",))
        ep = greenzmq_service(broker).endpoints["broker"]
        server_pub = keys["server"][0]
        worker = client_options(server_pub, keys["worker"][1])
        greenzmq_service(rpc.RPCService(Calculator(), endpoint=ep, options=worker))
        opts = client_options(server_pub, keys["client"][1])
        with rpc.Client("Calculator", ep, timeout=5, options=opts) as calc:
            assert calc.add(b"se", b"cure") == b"secure"
        with rpc.Client("Calculator", ep, timeout=0.3) as plain, pytest.raises(RequestTimeout):
            plain.add(1, 2)


class TestLaunchable:
    def test_the_launcher_serves_a_marked_class(self) -> None:
        """@rpc.service leaves the class plain; the launcher's as_service makes the service:
        from the class (an instance made), a factory spec (that instance), with options."""
        from greenzmq.launcher.appspec import as_service, load_app

        from .rpc_apps import Tuned

        assert Calculator().add(1, 2) == 3  # still a plain class
        svc = as_service(load_app("tests.rpc_apps:Calculator"))
        assert isinstance(svc, rpc.RPCService) and isinstance(svc.obj, Calculator)
        assert (svc.service, svc.socket_name, svc.name) == (
            "Calculator",
            "broker",
            "rpc.Calculator",
        )
        tuned = as_service(load_app("tests.rpc_apps:Tuned(5)"))
        assert isinstance(tuned.obj, Tuned) and tuned.obj.base == 5
        assert (tuned.service, tuned.dispatcher.window, tuned.pool) == ("Calc", 8, 2)
        assert tuned.offload.mode == "thread"


class TestCallArguments:
    def test_json_literals_and_keywords(self) -> None:
        """ARGS are JSON literals, NAME=JSON a keyword; a bad one is named (exit 2 upstream)."""
        from greenzmq.tools.call import parse_args

        assert parse_args(["1", '"a=b"', "[1, {}]", "x=null", "y=-2.5"]) == (
            [1, "a=b", [1, {}]],
            {"x": None, "y": -2.5},
        )
        with pytest.raises(ValueError, match="'one' is not a JSON literal"):
            parse_args(["one"])
        with pytest.raises(ValueError, match="positional argument '2' after a keyword"):
            parse_args(["x=1", "2"])


class TestBenchmark:
    @pytest.mark.slow
    @pytest.mark.deadline(120)
    def test_the_rpc_benchmark_runs(self) -> None:
        """The benchmark times raw MDP and RPC echo calls in one run and gives their ratio."""
        r = cli_module("greenzmq.tools.benchmarks.rpc", "-n", "50", "-r", "1", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert set(out["us_per_call"]) >= {"mdp", "rpc"}
        assert out["rpc_x_mdp"] == round(out["us_per_call"]["rpc"] / out["us_per_call"]["mdp"], 2)


class TestPluginClient:
    @pytest.mark.deadline(30)
    def test_direct_and_through_a_broker(self, greenzmq_rpc: Any, greenzmq_service: Any) -> None:
        """greenzmq_rpc(obj) calls in-process through the codec; greenzmq_rpc(name,
        broker=...) through a broker (an endpoint or the broker's running service)."""
        direct = greenzmq_rpc(Calculator())
        assert direct.add(2, b=3) == 5
        assert direct.echo((1, b"x")) == [1, b"x"]  # the codec's view of a tuple
        with pytest.raises(RemoteError.named("ZeroDivisionError")):
            direct.div(1, 0)
        assert direct.obj.calls == 2
        broker = greenzmq_service(MDPBroker())
        greenzmq_service(rpc.RPCService(Calculator(), endpoint=broker.endpoints["broker"]))
        remote = greenzmq_rpc("Calculator", broker, timeout=5)
        assert remote.add(2, b=3) == 5
        assert list(remote.count(3)) == [0, 1, 2]
        assert greenzmq_rpc("Calculator", broker.endpoints["broker"]).pid() == remote.pid()
        with pytest.raises(TypeError, match="needs broker"):
            greenzmq_rpc("Calculator")


class TestLocalClient:
    def test_same_semantics_without_sockets(self) -> None:
        """LocalClient calls through the codec: values, errors and streams as a remote caller."""
        calc = rpc.LocalClient(Calculator)
        assert calc.add(1, b=2) == 3
        assert calc.echo((1, 2)) == [1, 2]  # msgpack has no tuples: what a remote caller sees
        with pytest.raises(RemoteError.named("ZeroDivisionError")):
            calc.div(1, 0)
        assert list(calc.count(3)) == [0, 1, 2]

    @settings(max_examples=40, deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False)
            | st.text()
            | st.binary(),
            lambda kids: (
                st.lists(kids) | st.dictionaries(st.text() | st.integers(-(2**63), 2**64 - 1), kids)
            ),
            max_leaves=20,
        )
    )
    def test_round_trip_property(self, value: Any) -> None:
        """Any msgpack-able value of bytes, str, numbers, lists and dicts comes back equal."""
        assert rpc.LocalClient(Calculator).echo(value) == value


class TestProcesses:
    @pytest.mark.slow
    @pytest.mark.deadline(90)
    def test_launcher_and_greenzmq_call(self, greenzmq_service: Any) -> None:
        """``greenzmq tests.rpc_apps:Calculator -w 2 --endpoint broker=...`` serves from two
        processes; ``greenzmq call`` prints the result as JSON (exit 0), a remote error in
        one line (exit 1), refuses a bad argument (exit 2), lists the methods."""
        # both in processes: the fixture's teardown waits for a process without yielding,
        # and an in-process broker would not be there to see the workers leave
        broker = greenzmq_service("greenzmq.services.majordomo:app", process=True)
        ep = broker.endpoints["broker"]
        greenzmq_service(
            "tests.rpc_apps:Calculator", {"broker": ep}, process=True, args=["-w", "2"]
        )
        with rpc.Client("Calculator", ep, timeout=10) as calc:
            pids: set[int] = set()
            green_wait_for(lambda: pids.add(calc.pid()) or len(pids) == 2, 20, "two workers")
        ok = cli("call", "--broker", ep, "Calculator", "add", "1", "b=2")
        assert (ok.returncode, ok.stdout) == (0, "3\n"), ok.stderr
        assert cli("call", "--broker", ep, "Calculator", "echo", '{"a": [1, "x"]}').stdout == (
            '{"a": [1, "x"]}\n'
        )
        assert cli("call", "--broker", ep, "Calculator", "count", "3").stdout == "0\n1\n2\n"
        err = cli("call", "--broker", ep, "Calculator", "div", "1", "0")
        assert err.returncode == 1
        assert err.stderr == "greenzmq call: ZeroDivisionError: division by zero\n"
        bad = cli("call", "--broker", ep, "Calculator", "add", "one")
        assert bad.returncode == 2 and "'one' is not a JSON literal" in bad.stderr
        listed = cli("call", "--broker", ep, "--list", "Calculator")
        assert listed.returncode == 0
        assert "add(a: 'Any', b: 'Any' = 0) -> 'Any'\n    a + b.\n" in listed.stdout
        assert "count(n: 'int | None' = None, fail_at: 'int | None' = None, delay" in listed.stdout
        assert "[stream]" in listed.stdout and "_private" not in listed.stdout
        gone = cli("call", "--broker", ep, "--timeout", "0.3", "Nobody", "x")
        assert gone.returncode == 1 and "no reply from 'Nobody'" in gone.stderr
