"""The ROUTER/DEALER broker: in-process and as real processes, good and bad traffic."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any, NamedTuple

import gevent
import pytest

from greenzmq.broker import Broker, envelope_problem
from greenzmq.sockets import Context, SocketSpec
from services.worker import Worker

from .helpers import ServiceProcess, green_wait_for, wait_for

CLIENTS, REQUESTS = 3, 1000


class TestEnvelope:
    @pytest.mark.parametrize(
        ("frames", "problem"),
        [
            ([b"id", b"", b"5"], None),
            ([b"id1", b"id2", b"", b"5"], None),
            ([b"id", b"", b"a", b"b"], None),
            ([b"id", b"", b""], None),  # a REQ may send an empty frame: the worker answers it
            ([b"x"], "no envelope"),
            ([b"id", b"body"], "no envelope delimiter"),
            ([b"id", b""], "empty body"),
            ([b"id1", b"id2", b""], "empty body"),
        ],
    )
    def test_envelope_problem(self, frames: list[bytes], problem: str | None) -> None:
        """Routable messages pass; each malformed shape gets its own reason."""
        assert envelope_problem(frames) == problem


def _request_loop(ctx: Any, fe: str, i: int, count: int) -> int:
    sock = ctx.build(SocketSpec(f"client-{i}", "REQ", connect=(fe,)))
    try:
        for j in range(1, count + 1):
            body = b"%d" % (i * 100_000 + j)
            sock.send(body)
            with gevent.Timeout(10):
                reply = sock.recv()
            assert reply == b"%d" % ((i * 100_000 + j) ** 2), f"client {i}: {body!r} -> {reply!r}"
        return count
    finally:
        sock.close()


class TestInProcess:
    @pytest.mark.deadline(60)
    def test_clients_through_broker_to_workers(
        self, ctx: Any, endpoint: Callable[[], str], logs: Any
    ) -> None:
        """3 clients x 1,000 requests through a Broker to 4 Workers: every reply correct."""
        events = logs(trace_sample=0)
        fe, be, kill = endpoint(), endpoint(), endpoint()
        broker = Broker()
        workers = [Worker("poller"), Worker("poller"), Worker("tasks"), Worker("tasks")]
        services = [broker, *workers]
        runs = [
            gevent.spawn(
                broker.serve, {"frontend": fe, "backend": be, "kill": kill}, install_signals=False
            )
        ] + [
            gevent.spawn(w.serve, {"backend": be, "kill": kill}, install_signals=False)
            for w in workers
        ]
        try:
            clients = [gevent.spawn(_request_loop, ctx, fe, i, REQUESTS) for i in range(CLIENTS)]
            gevent.joinall(clients, timeout=45, raise_error=True)
            assert [c.value for c in clients] == [REQUESTS] * CLIENTS
        finally:
            for s in services:
                s.stop("test over")
            gevent.joinall(runs, timeout=10)
        assert [r.value for r in runs] == [0] * 5, "a service did not exit cleanly"
        assert sum(w.answered for w in workers) == CLIENTS * REQUESTS
        assert all(w.answered > 0 for w in workers), "a worker got no work"
        assert broker.forwarded == {
            "frontend->backend": CLIENTS * REQUESTS,
            "backend->frontend": CLIENTS * REQUESTS,
        }
        assert not broker.drops
        assert not events("hop", op="forward"), "tracing off, yet hops were logged"


class BrokerProc(NamedTuple):
    proc: ServiceProcess
    fe: str
    be: str
    kill: str


@pytest.fixture
def broker_proc(service: Callable[..., ServiceProcess], endpoint: Callable[[], str]) -> BrokerProc:
    """A broker process on free ports, started."""
    fe, be, kill = endpoint(), endpoint(), endpoint()
    p = service(
        "services.broker:app",
        "--endpoint", f"frontend={fe}",
        "--endpoint", f"backend={be}",
        "--endpoint", f"kill={kill}",
    )  # fmt: skip
    p.wait_started()
    return BrokerProc(p, fe, be, kill)


class TestProcesses:
    @pytest.mark.deadline(90)
    def test_three_clients_four_workers(
        self,
        service: Callable[..., ServiceProcess],
        broker_proc: BrokerProc,
    ) -> None:
        """3 client processes x 1,000 requests, broker, 2+2 worker processes: all replies right."""
        broker, fe, be, kill_ep = broker_proc
        kill = ["--endpoint", f"kill={kill_ep}"]
        workers = [
            service(spec, "--endpoint", f"backend={be}", *kill, "--trace-sample", "0")
            for spec in ("services.worker:app",) * 2 + ("services.worker:tasks_app",) * 2
        ]
        for w in workers:
            w.wait_started()
        clients = [
            service(
                f"services.client:make(i={REQUESTS})",
                "--endpoint",
                f"frontend={fe}",
                "--trace-sample",
                "0",
            )
            for _ in range(CLIENTS)
        ]
        for c in clients:
            assert c.wait(60) == 0, c.output() + str(c.events("service.greenlet_failed"))
            assert c.events("client.done", checked=REQUESTS)
        for p in [*workers, broker]:
            p.signal(signal.SIGTERM)
        for p in [*workers, broker]:
            assert p.wait(10) == 0, p.output()
        answered = [w.wait_event("worker.done")["answered"] for w in workers]
        assert sum(answered) == CLIENTS * REQUESTS
        assert all(answered), f"a worker got no work: {answered}"
        stats = broker.wait_event("broker.stats")
        assert stats["forwarded"] == {
            "frontend->backend": CLIENTS * REQUESTS,
            "backend->frontend": CLIENTS * REQUESTS,
        }
        assert stats["drops"] == {}

    @pytest.mark.deadline(60)
    def test_survives_malformed_frames(self, broker_proc: BrokerProc) -> None:
        """Malformed frames on both sides and unknown peers are logged drops; serving goes on."""
        broker, fe, be, _ = broker_proc
        ctx = Context()
        worker = ctx.build(SocketSpec("worker", "DEALER", connect=(be,)))
        client = ctx.build(SocketSpec("client", "REQ", connect=(fe,)))
        bad = ctx.build(SocketSpec("bad", "DEALER", connect=(fe,), identity=b"bad-peer"))
        gone = ctx.build(SocketSpec("gone", "REQ", connect=(fe,), identity=b"gone-peer"))

        def serve_one(body: bytes) -> None:
            """The test is the worker: answer one request; return its envelope."""
            client.send(body)
            with gevent.Timeout(10):
                env_req = worker.recv_multipart()
                assert env_req[1:] == [b"", body]
                worker.send_multipart([env_req[0], b"", body + b"!"])
                assert client.recv() == body + b"!"

        def drops(reason: str) -> list[dict[str, Any]]:
            return broker.events("hop", op="drop", reason=reason)

        try:
            serve_one(b"before")
            bad.send(b"hello")  # frontend: [id, hello]
            bad.send(b"")  # an empty message from a DEALER: [id, ""]
            worker.send(b"x")  # backend: one frame, no envelope at all
            worker.send_multipart([b"a", b"b"])  # backend: no delimiter
            worker.send_multipart([b"ghost", b"", b"1"])  # a reply to nobody: EHOSTUNREACH
            wait_for(lambda: drops("unknown peer"), 10, "the unknown-peer drop")
            fe_delim = drops("no envelope delimiter")
            assert {d["socket"] for d in fe_delim} == {"frontend", "backend"}
            assert [d["peer"] for d in fe_delim if d["socket"] == "frontend"] == [b"bad-peer".hex()]
            (empty,) = drops("empty body")
            assert (empty["socket"], empty["peer"], empty["frames"]) == (
                "frontend",
                b"bad-peer".hex(),
                2,
            )
            (none,) = drops("no envelope")
            assert (none["socket"], none["frames"], none["bytes"]) == ("backend", 1, 1)
            for d in broker.events("hop", op="drop"):
                assert d["level"] == "warning" and d["service"] == "broker" and d["key"]
            serve_one(b"after")  # the broker kept serving

            # a real client that goes away before its reply
            gone.send(b"bye")
            with gevent.Timeout(10):
                env_req = worker.recv_multipart()
            assert env_req[0] == b"gone-peer"
            gone.close(linger=0)

            def reply_lands_as_drop() -> bool:
                # until the broker notices the disconnect, the reply is queued for
                # the dead pipe and discarded by libzmq; after it, EHOSTUNREACH
                worker.send_multipart(env_req)
                return any(d.get("peer") == b"gone-peer".hex() for d in drops("unknown peer"))

            wait_for(reply_lands_as_drop, 10, "EHOSTUNREACH to the gone client")
            serve_one(b"last")
        finally:
            for s in (worker, client, bad, gone):
                s.close(linger=0)
            ctx.term()
        broker.signal(signal.SIGTERM)
        assert broker.wait(10) == 0
        stats = broker.wait_event("broker.stats")
        assert stats["drops"]["empty body"] == 1
        assert stats["drops"]["no envelope"] == 1
        assert stats["drops"]["no envelope delimiter"] == 2
        assert stats["drops"]["unknown peer"] >= 2

    def test_inproc_drop_is_logged(self, ctx: Any, endpoint: Callable[[], str], logs: Any) -> None:
        """In-process too: a malformed frame is a drop hop with its reason, even with sample 0."""
        events = logs(trace_sample=0)
        fe, be, kill = endpoint(), endpoint(), endpoint()
        broker = Broker()
        run = gevent.spawn(
            broker.serve, {"frontend": fe, "backend": be, "kill": kill}, install_signals=False
        )
        bad = ctx.build(SocketSpec("bad", "DEALER", connect=(fe,)))
        try:
            bad.send(b"oops")
            green_wait_for(lambda: broker.drops, 10, "the drop")
            assert broker.drops == {"no envelope delimiter": 1}
            (drop,) = events("hop", op="drop")
            assert drop["reason"] == "no envelope delimiter" and drop["socket"] == "frontend"
        finally:
            bad.close()
            broker.stop()
            assert run.get(timeout=10) == 0


class TinyBroker(Broker):
    """A broker with HWM 5 on both sides: backpressure happens at once."""

    specs = tuple(dataclasses.replace(s, hwm=5) if s.name != "kill" else s for s in Broker.specs)


class TestBackpressure:
    @pytest.mark.deadline(60)
    def test_late_worker_and_tiny_hwm(
        self, ctx: Any, endpoint: Callable[[], str], logs: Any
    ) -> None:
        """Requests queued before any worker exists, at HWM 5, all get answered; none dropped."""
        logs(trace_sample=0)
        fe, be, kill = endpoint(), endpoint(), endpoint()
        broker = TinyBroker()
        run = gevent.spawn(
            broker.serve, {"frontend": fe, "backend": be, "kill": kill}, install_signals=False
        )
        # one DEALER client with many requests in flight (a REQ allows only one)
        client = ctx.build(SocketSpec("client", "DEALER", connect=(fe,), hwm=5000))
        n = 500
        worker: Worker | None = None
        wrun = None
        try:
            sender = gevent.spawn(
                lambda: [client.send_multipart([b"", b"%d" % j]) for j in range(n)]
            )
            # nobody on the backend: the broker holds one message and stops reading
            green_wait_for(lambda: broker.forwarded["frontend->backend"] >= 1, 10, "a forward")
            gevent.sleep(0.1)  # time to misbehave: it must not read on while it cannot send
            assert broker.forwarded["frontend->backend"] == 1, "no backpressure"
            worker = Worker("tasks")
            wrun = gevent.spawn(worker.serve, {"backend": be, "kill": kill}, install_signals=False)
            got = set()
            with gevent.Timeout(30):
                while len(got) < n:
                    _, body = client.recv_multipart()
                    got.add(int(body))
            sender.get(timeout=5)
            assert got == {j * j for j in range(n)}
            assert not broker.drops
        finally:
            client.close()
            if worker is not None:
                worker.stop()
            broker.stop()
            assert run.get(timeout=10) == 0
            if wrun is not None:
                assert wrun.get(timeout=10) == 0


class TestGracefulStop:
    @pytest.mark.deadline(60)
    def test_sigterm_forwards_replies_in_flight(self, broker_proc: BrokerProc) -> None:
        """SIGTERM: requests already forwarded get their replies; new requests are not taken."""
        broker, fe, be, _ = broker_proc
        ctx = Context()
        worker = ctx.build(SocketSpec("worker", "DEALER", connect=(be,)))
        clients = [ctx.build(SocketSpec(f"c{i}", "REQ", connect=(fe,))) for i in range(5)]
        try:
            for i, c in enumerate(clients):
                c.send(b"%d" % i)
            held = []
            with gevent.Timeout(10):
                while len(held) < len(clients):
                    held.append(worker.recv_multipart())  # the worker holds them: in flight
            broker.signal(signal.SIGTERM)
            broker.wait_event("broker.draining", in_flight=len(clients))
            late = ctx.build(SocketSpec("late", "REQ", connect=(fe,)))
            late.send(b"late")  # after the stop: must not be forwarded
            for env in held:
                worker.send_multipart([*env[:-1], env[-1] + b"!"])
            with gevent.Timeout(10):
                for i, c in enumerate(clients):
                    assert c.recv() == b"%d!" % i
            assert broker.wait(10) == 0, broker.output()
            stats = broker.wait_event("broker.stats")
            assert stats["forwarded"]["frontend->backend"] == len(clients)
            assert stats["in_flight"] == 0
            assert worker.poll(200) == 0, "a request sent after SIGTERM was forwarded"
            late.close(linger=0)
        finally:
            for s in [worker, *clients]:
                s.close(linger=0)
            ctx.term()
