"""Hop tracing: keys that join processes, the field set, sampling, and the cost when off."""

from __future__ import annotations

import os
import signal
import timeit
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from greenzmq import Broker, message_key
from greenzmq.core.mux import Outbox, PollerListener, Readers
from greenzmq.core.sockets import Context, SocketSpec
from greenzmq.core.tracing import SocketTracer, Tracer

from .helpers import ServiceProcess, green_wait_for

# issue 2 section 7: every hop event carries these
HOP_FIELDS = {"timestamp", "service", "pid", "socket", "sock_type", "op", "frames", "bytes", "key"}


def _k(body: bytes) -> str:
    return message_key([body])


class TestMessageKey:
    def test_envelope_is_not_part_of_the_key(self) -> None:
        """The same body has the same key with or without its routing envelope."""
        body = b"42"
        assert message_key([b"id", b"", body]) == _k(body)
        assert message_key([b"id1", b"id2", b"", body]) == _k(body)
        assert message_key([b"id", body], routed=True) == _k(body)
        assert message_key([b"a", b"b"]) == message_key([b"a", b"b"])

    def test_different_bodies_differ(self) -> None:
        """Different bodies get different keys; keys are short hex."""
        keys = {_k(b"%d" % i) for i in range(1000)}
        assert len(keys) == 1000
        assert all(len(k) == 16 and int(k, 16) >= 0 for k in keys)


def _start_pair(
    service: Callable[..., ServiceProcess], endpoint: Callable[[], str], *extra: str
) -> tuple[ServiceProcess, ServiceProcess, dict[str, str]]:
    eps = {n: endpoint() for n in ("frontend", "backend", "kill")}
    broker = service(
        "services.broker:app",
        *(a for n in ("frontend", "backend", "kill") for a in ("--endpoint", f"{n}={eps[n]}")),
        *extra,
    )
    worker = service(
        "services.worker:app",
        "--endpoint", f"backend={eps['backend']}",
        "--endpoint", f"kill={eps['kill']}",
        *extra,
    )  # fmt: skip
    broker.wait_started()
    worker.wait_started()
    return broker, worker, eps


def _run_client(
    service: Callable[..., ServiceProcess], fe: str, n: int, *extra: str
) -> ServiceProcess:
    client = service(f"services.client:app(i={n})", "--endpoint", f"frontend={fe}", *extra)
    assert client.wait(30) == 0, client.output()
    return client


def _stop(*procs: ServiceProcess) -> None:
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(10) == 0, p.output()


@pytest.mark.slow
class TestAcrossProcesses:
    @pytest.mark.deadline(60)
    def test_requests_and_replies_join_by_key(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """Broker and worker JSON logs: each request and reply joins by key; reply_to pairs."""
        n = 20
        broker, worker, eps = _start_pair(service, endpoint)
        client = _run_client(service, eps["frontend"], n)
        _stop(broker, worker)
        hops = {
            name: p.events("hop")
            for name, p in (("broker", broker), ("worker", worker), ("client", client))
        }
        for name, evs in hops.items():
            assert evs, f"no hops from the {name}"
            for e in evs:
                missing = HOP_FIELDS - e.keys()
                assert not missing, f"{name} hop lacks {missing}: {e}"
                assert e["level"] == "info" and isinstance(e["timestamp"], float)
            assert len({e["pid"] for e in evs}) == 1
        b_req = {e["key"]: e for e in hops["broker"] if e["socket"] == "frontend"}
        b_rep = {e["key"]: e for e in hops["broker"] if e["socket"] == "backend"}
        w_recv = {e["key"]: e for e in hops["worker"] if e["op"] == "recv"}
        w_send = {e["key"]: e for e in hops["worker"] if e["op"] == "send"}
        c_send = {e["key"]: e for e in hops["client"] if e["op"] == "send"}
        c_recv = {e["key"]: e for e in hops["client"] if e["op"] == "recv"}
        for j in range(1, n + 1):
            req, rep = _k(b"%d" % j), _k(b"%d" % (j * j))
            # the request: client send -> broker forward -> worker recv, one key
            assert req in c_send and req in b_req and req in w_recv, f"request {j} not joined"
            # the reply: worker send -> broker forward -> client recv, one key
            assert rep in w_send and rep in b_rep and rep in c_recv, f"reply {j} not joined"
            assert w_send[rep]["reply_to"] == req
            assert c_recv[rep]["reply_to"] == req
            fwd_req, fwd_rep = b_req[req], b_rep[rep]
            assert (fwd_req["op"], fwd_req["dest"], fwd_req["sock_type"]) == (
                "forward",
                "backend",
                "ROUTER",
            )
            assert (fwd_rep["op"], fwd_rep["dest"], fwd_rep["sock_type"]) == (
                "forward",
                "frontend",
                "DEALER",
            )
            # the broker sees the client's routing id both ways
            assert fwd_req["peer"] == fwd_rep["peer"]
            assert int(fwd_req["peer"], 16) >= 0
            id_len = len(fwd_req["peer"]) // 2
            assert fwd_req["frames"] == 3 and fwd_req["bytes"] == id_len + len(b"%d" % j)
            w = w_recv[req]
            assert (w["service"], w["socket"], w["sock_type"]) == ("worker", "backend", "REP")
            assert "peer" not in w  # REP hands over the body only
        assert {e["service"] for e in hops["broker"]} == {"broker"}
        assert len(b_req) == len(w_recv) == n

    @pytest.mark.deadline(60)
    def test_sampling_is_the_same_in_every_process(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """At --trace-sample 0.5 the broker and the worker log the same messages."""
        n = 40
        broker, worker, eps = _start_pair(service, endpoint, "--trace-sample", "0.5")
        _run_client(service, eps["frontend"], n, "--trace-sample", "0")
        _stop(broker, worker)
        b_keys = {e["key"] for e in broker.events("hop", socket="frontend")}
        w_keys = {e["key"] for e in worker.events("hop", op="recv")}
        assert b_keys == w_keys
        assert 0 < len(b_keys) < n, "sampling at 0.5 kept all or nothing"


@pytest.mark.slow
class TestCaseOneHops:
    @pytest.mark.deadline(60)
    def test_tasks_and_updates_join_by_key(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """Ventilator/weather send -> listener recv, put, take: one key per message."""
        eps = {n: endpoint() for n in ("tasks", "weather", "kill")}
        listener = service(
            "services.listener:tasks_app",
            *(a for n in ("tasks", "weather", "kill") for a in ("--endpoint", f"{n}={eps[n]}")),
        )
        listener.wait_started()
        vent = service("services.ventilator:app(count=5, pause=0)",
                       "--endpoint", f"tasks={eps['tasks']}")  # fmt: skip
        weather = service("services.weather:app(count=5, pause=0)",
                          "--endpoint", f"updates={eps['weather']}")  # fmt: skip
        assert vent.wait(15) == 0 and weather.wait(15) == 0
        ks = service("services.killswitch:app", "--endpoint", f"kill={eps['kill']}")
        assert ks.wait(15) == 0 and listener.wait(10) == 0
        done = listener.wait_event("listener.done")
        assert sorted(done["tasks"]) == sorted(done["weather"]) == ["1", "2", "3", "4", "5"]
        for sender, sock in ((vent, "tasks"), (weather, "weather")):
            for i in range(1, 6):
                key = _k(b"%d" % i)
                assert sender.events("hop", op="send", key=key), f"{sock} {i}: no send hop"
                ops = [e["op"] for e in listener.events("hop", key=key, socket=sock)]
                assert ops == ["recv", "put"], f"{sock} {i}: {ops}"
                # same bodies on both sockets, same keys: the take names its source
                (take,) = listener.events("hop", key=key, op="take", source=sock)
                assert take["socket"] == "mux" and take["sock_type"] == "queue"
        (kill_send,) = ks.events("hop", op="send")
        assert listener.events("hop", socket="kill", key=kill_send["key"], op="recv")


class TestTracingOff:
    @pytest.mark.deadline(60)
    def test_sample_zero_logs_only_drops(
        self,
        service: Callable[..., ServiceProcess],
        endpoint: Callable[[], str],
    ) -> None:
        """--trace-sample 0: no hop events at all, but a drop is still logged."""
        broker, worker, eps = _start_pair(service, endpoint, "--trace-sample", "0")
        _run_client(service, eps["frontend"], 10, "--trace-sample", "0")
        ctx = Context()
        bad = ctx.build(SocketSpec("bad", "DEALER", connect=(eps["frontend"],)))
        try:
            bad.send(b"no delimiter")
            broker.wait_event("hop", op="drop")
        finally:
            bad.close(linger=0)
            ctx.term()
        _stop(broker, worker)
        assert [e["op"] for e in broker.events("hop")] == ["drop"]
        assert broker.events("hop")[0]["reason"] == "no envelope delimiter"
        assert worker.events("hop") == []
        assert worker.wait_event("worker.done")["answered"] == 10

    def test_hop_not_called_when_off(
        self,
        ctx: Any,
        endpoint: Callable[[], str],
        logs: Any,
        monkeypatch: pytest.MonkeyPatch,
        record_property: Callable[[str, object], None],
    ) -> None:
        """Sample 0: mux, outbox and broker never call hop(); the hop site cost is measured."""
        events = logs(trace_sample=0)
        calls: list[str] = []
        real_hop = SocketTracer.hop

        def counting_hop(self: SocketTracer, op: str, *a: Any, **kw: Any) -> str | None:
            calls.append(op)
            return real_hop(self, op, *a, **kw)

        monkeypatch.setattr(SocketTracer, "hop", counting_hop)
        tracer = Tracer()
        assert not tracer.on

        # Readers, PollerListener and Outbox with the tracer passed in
        pulls, outboxes = [], []
        for name in ("r", "p"):
            ep = endpoint()
            pulls.append(ctx.build(SocketSpec(name, "PULL", bind=(ep,))))
            push = ctx.build(SocketSpec(f"push-{name}", "PUSH", connect=(ep,)))
            outboxes.append(Outbox(push, tracer=tracer))
        readers = Readers([pulls[0]], tracer=tracer).start()
        listener = PollerListener([pulls[1]], tracer=tracer)
        for box in outboxes:
            for i in range(50):
                box.send([b"%d" % i])
        with gevent.Timeout(10):
            assert [readers.get()[1] for _ in range(50)] == [[b"%d" % i] for i in range(50)]
            assert [listener.get()[1] for _ in range(50)] == [[b"%d" % i] for i in range(50)]
        readers.stop()
        listener.stop()
        for box in outboxes:
            box.close()
            box.sock.close()

        # the broker, in-process, carrying requests
        fe, be, kill = endpoint(), endpoint(), endpoint()
        broker = Broker()
        run = gevent.spawn(
            broker.serve, {"frontend": fe, "backend": be, "kill": kill}, install_signals=False
        )
        client = ctx.build(SocketSpec("c", "REQ", connect=(fe,)))
        work = ctx.build(SocketSpec("w", "REP", connect=(be,)))
        with gevent.Timeout(10):
            for i in range(20):
                client.send(b"%d" % i)
                work.send(work.recv())
                assert client.recv() == b"%d" % i
        green_wait_for(lambda: broker.forwarded["backend->frontend"] == 20, 5, "20 replies")
        broker.stop()
        assert run.get(timeout=10) == 0
        client.close()
        work.close()

        assert calls == [], f"hop() called with tracing off: {sorted(set(calls))}"
        assert events("hop") == []

        # the cost of a hop site when off (measured, reported, not asserted)
        st = tracer.for_socket("x", "PULL")
        frames = [b"id", b"", b"x" * 100]
        loops = 200_000
        off = min(timeit.repeat(lambda: st.on and st.hop("recv", frames), number=loops, repeat=3))
        record_property("hop_site_off_ns", round(off / loops * 1e9, 1))
        print(f"hop site with tracing off: {off / loops * 1e9:.1f} ns")

    def test_level_above_info_turns_hops_off(self, logs: Any) -> None:
        """--log-level warning switches hop events off entirely (drops still show)."""
        logs(trace_sample=1.0, level="warning")
        assert not Tracer().on
        logs(trace_sample=1.0, level="info")
        assert Tracer().on
        logs(trace_sample=0.0, level="debug")
        assert not Tracer().on


class TestInProcessHops:
    def test_readers_hops_share_the_key(
        self, ctx: Any, endpoint: Callable[[], str], logs: Any
    ) -> None:
        """recv, put and take of one message through Readers carry one key, with peer."""
        events = logs(trace_sample=1.0)
        ep = endpoint()
        router = ctx.build(SocketSpec("in", "ROUTER", bind=(ep,)))
        dealer = ctx.build(SocketSpec("d", "DEALER", connect=(ep,), identity=b"peer-1"))
        mux = Readers([router], tracer=Tracer()).start()
        try:
            dealer.send(b"payload")  # [peer-1, payload]: no delimiter, routed by the ROUTER
            with gevent.Timeout(5):
                assert mux.get() == ("in", [b"peer-1", b"payload"])
        finally:
            mux.stop()
            dealer.close()
        hops = events("hop")
        assert [h["op"] for h in hops] == ["recv", "put", "take"]
        assert {h["key"] for h in hops} == {_k(b"payload")}
        assert hops[0]["peer"] == b"peer-1".hex()
        assert hops[0]["socket"] == "in" and hops[0]["sock_type"] == "ROUTER"


class TestConfigure:
    def test_json_lines_to_a_stream(self, tmp_path: Any, logs: Any) -> None:
        """JSON format writes one orjson line per event to the stream's bytes buffer."""
        import json

        from greenzmq.core.tracing import configure_logging, get_logger

        path = tmp_path / "stream.log"
        with open(path, "w") as stream:
            configure_logging("svc", fmt="json", stream=stream)
            get_logger(extra=1).info("hello", n=2)
            stream.flush()
        (line,) = path.read_bytes().splitlines()
        ev = json.loads(line)
        assert ev["event"] == "hello" and ev["service"] == "svc" and ev["pid"] == os.getpid()
        assert (ev["extra"], ev["n"], ev["level"]) == (1, 2, "info")
        assert isinstance(ev["timestamp"], float)
        logs()  # back to a file the test owns

    @pytest.mark.parametrize(
        ("kw", "message"),
        [
            ({"fmt": "xml"}, "unknown log format"),
            ({"trace_sample": 1.5}, "not between 0 and 1"),
            ({"level": "loud"}, "unknown log level"),
        ],
    )
    def test_bad_settings(self, kw: dict[str, Any], message: str) -> None:
        """Bad format, sample rate or level: ValueError naming the value."""
        from greenzmq.core.tracing import configure_logging

        with pytest.raises(ValueError, match=message):
            configure_logging("svc", **kw)


class TestDropRateLimit:
    @pytest.mark.deadline(60)
    def test_a_flood_of_drops_is_a_few_lines_and_every_drop_counted(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """500 malformed messages at the broker: 20 drop lines (the burst), then one
        drops_suppressed line with the rest of the count when the broker closes; each
        one is still counted, and the broker serves a request meanwhile."""
        import zmq

        fe, be = endpoint(), endpoint()
        broker = service("services.broker:app", "--endpoint", f"frontend={fe}",
                         "--endpoint", f"backend={be}")  # fmt: skip
        broker.wait_started()
        zctx = zmq.Context()
        bad = zctx.socket(zmq.DEALER)
        bad.connect(fe)
        try:
            for _ in range(500):
                bad.send(b"no envelope")  # [id, body]: no delimiter
            broker.wait_event("hop", op="drop", reason="no envelope delimiter")
        finally:
            bad.close(linger=2000)
            zctx.term()
        broker.signal(signal.SIGTERM)
        assert broker.wait(15) == 0, broker.output()
        logged = broker.events("hop", op="drop", reason="no envelope delimiter")
        assert 20 <= len(logged) < 100  # one burst per window: 500 in well under 5 s
        (held,) = broker.events("drops_suppressed")[-1:]
        assert held["socket"] == "frontend" and held["reason"] == "no envelope delimiter"
        assert broker.drop_counts()["no envelope delimiter"] == 500
        stats = broker.wait_event("broker.stats")
        assert stats["drops"]["no envelope delimiter"] == 500


class TestDropWindow:
    def test_burst_then_held_then_reported(self, logs: Callable[..., Any]) -> None:
        """Per socket and reason: the burst passes, the rest is counted and reported once
        the window is over (or at flush), and another reason has its own burst."""
        events = logs(trace_sample=0)
        tr = Tracer("t")
        tr.drop_burst, tr.drop_window = 3, 0.05
        st = tr.for_socket("in", "ROUTER")
        for _ in range(10):
            st.drop([b"id", b"x"], "bad")
        st.drop([b"id", b"x"], "other")
        assert len(events("hop", op="drop", reason="bad")) == 3
        assert len(events("hop", op="drop", reason="other")) == 1
        assert events("drops_suppressed") == []
        gevent.sleep(0.06)  # the window ends: the next drop reports the held ones
        st.drop([b"id", b"x"], "bad")
        (held,) = events("drops_suppressed")
        assert (held["reason"], held["count"], held["logged"]) == ("bad", 7, 3)
        for _ in range(5):
            st.drop([b"id", b"x"], "bad")
        tr.flush_drops()
        assert [e["count"] for e in events("drops_suppressed")] == [7, 3]
