"""Service lifecycle: signals, kill switch, graceful stop, leaks, plain callables, CLI errors."""

from __future__ import annotations

import gc
import os
import signal
import socket as pysocket
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from greenzmq import Broker, CallableService, Service
from greenzmq.core.sockets import SocketSpec
from services.listener import Listener
from services.worker import Worker

from .helpers import ROOT, ServiceProcess, green_wait_for

# every tutorial role, with the endpoints it has
TUTORIAL = {
    "services.ventilator:app(count=1000)": ("tasks",),
    "services.weather:app": ("updates",),
    "services.killswitch:app": ("kill",),
    "services.listener:app": ("tasks", "weather", "kill"),
    "services.listener:tasks_app": ("tasks", "weather", "kill"),
    "services.broker:app": ("frontend", "backend", "kill"),
    "services.worker:app": ("backend", "kill"),
    "services.worker:tasks_app": ("backend", "kill"),
    "services.client:app(i=5)": ("frontend",),
}


def endpoint_args(names: Any, endpoints: dict[str, str]) -> list[str]:
    out = []
    for n in names:
        out += ["--endpoint", f"{n}={endpoints[n]}"]
    return out


class TestSignals:
    @pytest.mark.deadline(60)
    @pytest.mark.slow
    def test_sigterm_exits_zero(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """SIGTERM to each tutorial service (idle or blocked) makes it exit 0, promptly."""
        procs = {}
        for spec, names in TUTORIAL.items():
            # own ports per service: nobody talks to anybody, so each is parked
            eps = {n: endpoint() for n in names}
            procs[spec] = service(spec, *endpoint_args(names, eps))
        for p in procs.values():
            p.wait_started()
        for p in procs.values():
            p.signal(signal.SIGTERM)
        for spec, p in procs.items():
            # a generous hang bound, well under the 10 s graceful timeout
            assert p.wait(5) == 0, f"{spec}: {p.output()}"
            exit_ev = p.wait_event("service.exit")
            assert exit_ev["code"] == 0 and exit_ev["reason"] == "SIGTERM", spec
            assert not p.events("service.graceful_timeout"), f"{spec} ignored the stop"

    @pytest.mark.deadline(30)
    def test_sigint_exits_zero(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """SIGINT (Ctrl-C) stops a service as cleanly as SIGTERM."""
        names = ("frontend", "backend", "kill")
        p = service("services.broker:app", *endpoint_args(names, {n: endpoint() for n in names}))
        p.wait_started()
        p.signal(signal.SIGINT)
        assert p.wait(5) == 0
        # the launcher may relay Ctrl-C to the service as a quick shutdown (SIGQUIT)
        assert p.wait_event("service.exit")["code"] == 0


class TestKillSwitch:
    @pytest.mark.slow
    @pytest.mark.deadline(60)
    def test_stops_broker_workers_listeners_within_1s(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """One kill message stops broker, both workers and both listeners within 1 s."""
        eps = {n: endpoint() for n in ("frontend", "backend", "kill", "tasks", "weather")}
        targets = [
            service(spec, *endpoint_args(TUTORIAL[spec], eps))
            for spec in (
                "services.broker:app",
                "services.worker:app",
                "services.worker:tasks_app",
                "services.listener:app",
                "services.listener:tasks_app",
            )
        ]
        for p in targets:
            p.wait_started()
        # the kill switch waits for its 5 subscribers, so nobody misses the message
        ks = service(f"services.killswitch:app(expect={len(targets)})",
                     "--endpoint", f"kill={eps['kill']}")  # fmt: skip
        assert ks.wait(15) == 0, ks.output()
        sent = ks.wait_event("killswitch.sent")
        assert sent["subscribers"] == len(targets)
        for p in targets:
            assert p.wait(5) == 0, p.output()
            exit_ev = p.wait_event("service.exit")
            assert exit_ev["reason"] == "kill switch"
            took = exit_ev["timestamp"] - sent["timestamp"]
            assert took < 1.0, f"{p.args[0]} took {took:.3f} s to stop after the kill"


class TestWorker:
    @pytest.mark.parametrize(
        "spec",
        [
            "services.worker:app",
            "services.worker:tasks_app",
            "services.worker:app(offload='process')",
        ],
    )
    def test_survives_non_integer(
        self,
        spec: str,
        ctx: Any,
        service: Callable[..., ServiceProcess],
        endpoint: Callable[[], str],
    ) -> None:
        """A non-integer or too-long body gets an error reply; the worker keeps serving."""
        be = endpoint()
        # the test plays the broker's backend: a DEALER bound where workers connect
        dealer = ctx.build(SocketSpec("backend", "DEALER", bind=(be,)))
        try:
            p = service(spec, "--endpoint", f"backend={be}", "--endpoint", f"kill={endpoint()}")
            with gevent.Timeout(15):
                for body, want in [
                    (b"12", b"144"),
                    (b"twelve", b"error: not an integer: twelve"),
                    (b"", b"error: not an integer: "),
                    # a square over Python's 4,300-digit str() limit killed the worker
                    (b"7" * 4000, b"error: square too long: 4000 digits"),
                    (b"9" * 5000, b"error: not an integer: " + b"9" * 64),
                    (b"-3", b"9"),
                ]:
                    dealer.send_multipart([b"", body])
                    assert dealer.recv_multipart() == [b"", want]
            p.signal(signal.SIGTERM)
            assert p.wait(5) == 0
            assert p.wait_event("worker.done")["answered"] == 6
        finally:
            dealer.close()


def _live_greenlets() -> set[int]:
    gc.collect()
    return {id(g) for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead}


def _start(svc: Service, endpoints: dict[str, str]) -> tuple[gevent.Greenlet, Any, dict[str, Any]]:
    """Serve in a greenlet; return it, the service's context and its sockets once open."""
    run = gevent.spawn(svc.serve, endpoints, install_signals=False)
    green_wait_for(lambda: svc._main is not None or run.dead, 10, "the service to start")
    assert not run.dead, run.exception
    return run, svc.ctx, dict(svc.socks)


class TestCleanStop:
    @pytest.mark.deadline(60)
    @pytest.mark.parametrize("which", ["broker", "worker", "worker-tasks", "listener",
                                       "listener-tasks"])  # fmt: skip
    def test_nothing_left_after_stop(
        self, which: str, ctx: Any, endpoint: Callable[[], str], logs: Any
    ) -> None:
        """After serving some traffic and stopping: no live greenlet, every socket closed."""
        logs(trace_sample=1.0)  # tracing on: the hop code paths run too
        eps = {n: endpoint() for n in ("frontend", "backend", "kill", "tasks", "weather")}
        svc: Service = {
            "broker": Broker,
            "worker": lambda: Worker("poller"),
            "worker-tasks": lambda: Worker("tasks"),
            "listener": lambda: Listener("poller"),
            "listener-tasks": lambda: Listener("tasks"),
        }[which]()
        before = _live_greenlets()
        names = {s.name for s in svc.specs}
        run, svc_ctx, socks = _start(svc, {n: e for n, e in eps.items() if n in names})
        with gevent.Timeout(10):
            if which == "broker":
                client = ctx.build(SocketSpec("c", "REQ", connect=(eps["frontend"],)))
                work = ctx.build(SocketSpec("w", "REP", connect=(eps["backend"],)))
                client.send(b"2")
                work.send(work.recv() + b"!")
                assert client.recv() == b"2!"
                peers = [client, work]
            elif which.startswith("worker"):
                dealer = ctx.build(SocketSpec("d", "DEALER", bind=(eps["backend"],)))
                dealer.send_multipart([b"", b"3"])
                assert dealer.recv_multipart() == [b"", b"9"]
                peers = [dealer]
            else:
                push = ctx.build(SocketSpec("p", "PUSH", bind=(eps["tasks"],)))
                for i in range(3):
                    push.send(b"%d" % i)
                assert isinstance(svc, Listener)
                green_wait_for(lambda: len(svc.received["tasks"]) == 3, 10, "3 tasks")
                peers = [push]
        svc.stop("test")
        assert run.get(timeout=10) == 0
        for s in peers:
            s.close()
        assert svc_ctx.closed, "the service's context was not terminated"
        open_socks = [s for s in svc_ctx._sockets if not s.closed]
        assert not open_socks and all(s.closed for s in socks.values())
        assert svc.ctx is None
        left = _live_greenlets() - before
        assert not left, f"{len(left)} greenlet(s) still alive after stop"


class TestPlainCallable:
    def test_runs_until_stopped(self, logs: Any) -> None:
        """A plain callable runs until stop(); its finally blocks run; exit code 0."""
        logs()
        ticks: list[int] = []
        cleaned: list[bool] = []

        def app() -> None:
            try:
                while True:
                    ticks.append(1)
                    gevent.sleep(0.005)
            finally:
                cleaned.append(True)

        svc = CallableService(app)
        run = gevent.spawn(svc.serve, install_signals=False)
        green_wait_for(lambda: len(ticks) >= 5, 10, "the app to run")
        assert not run.dead
        svc.stop()
        assert run.get(timeout=5) == 0
        assert cleaned == [True]

    def test_failing_callable_exits_1(self, logs: Any) -> None:
        """A plain callable that raises makes the service exit 1 and log the failure."""
        events = logs()

        def app() -> None:
            raise RuntimeError("boom")

        svc = CallableService(app)
        assert gevent.spawn(svc.serve, install_signals=False).get(timeout=5) == 1
        (failed,) = events("service.greenlet_failed")
        assert "boom" in failed["error"]

    def test_unannotated_factory_is_refused_not_exit_0(self, logs: Any) -> None:
        """A callable that returns a Service (no annotation to see it by) fails, exit 1."""
        events = logs()

        def factory():  # type: ignore[no-untyped-def]  # unannotated on purpose
            return Broker()

        svc = CallableService(factory)
        assert gevent.spawn(svc.serve, install_signals=False).get(timeout=5) == 1
        (refused,) = events("service.refused")
        assert "is a factory: it returned a Service; call it:" in refused["error"]
        assert svc.refused is not None

    def test_plain_callable_process(
        self, tmp_path: Path, service: Callable[..., ServiceProcess]
    ) -> None:
        """``greenzmq module:function`` runs a plain function until SIGTERM, then exits 0."""
        (tmp_path / "plainapp.py").write_text(
            textwrap.dedent("""
            import gevent
            from greenzmq import get_logger

            def forever():
                get_logger().info("plain.running")
                while True:
                    gevent.sleep(0.05)
        """)
        )
        env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
        p = service("plainapp:forever", env=env)
        p.wait_event("plain.running")
        assert p.proc.poll() is None
        p.signal(signal.SIGTERM)
        assert p.wait(5) == 0
        assert p.wait_event("service.exit")["code"] == 0

    @pytest.mark.deadline(60)
    def test_unannotated_factory_process_exits_2(
        self, tmp_path: Path, service: Callable[..., ServiceProcess]
    ) -> None:
        """``greenzmq mod:factory`` (no annotation): its error line, exit 2, no restart loop."""
        (tmp_path / "factoryapp.py").write_text(
            textwrap.dedent("""
            from greenzmq import Broker

            def factory():
                return Broker
        """)
        )
        env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
        p = service("factoryapp:factory", env=env)
        assert p.wait(20) == 2, p.output()
        want = (
            "greenzmq: error: 'factoryapp:factory' is a factory: it returned a Service; "
            "call it: 'factoryapp:factory()'"
        )
        assert p.output().strip().splitlines() == [want]
        assert not p.events("worker.crashed")  # halted, not restarted


class TestCliErrors:
    @pytest.mark.deadline(60)
    def test_one_line_errors(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """Bad endpoint names/addresses, a port in use, a bad spec: one line, non-zero exit."""
        with pysocket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            in_use = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
            cases = {
                "unknown endpoint name 'nope'": service(
                    "services.broker:app", "--endpoint", f"nope={endpoint()}"
                ),
                "malformed endpoint 'tcp://127.0.0.1'": service(
                    "services.broker:app", "--endpoint", "frontend=tcp://127.0.0.1"
                ),
                "malformed --endpoint 'frontend'": service(
                    "services.broker:app", "--endpoint", "frontend"
                ),
                f"cannot bind socket 'frontend' to {in_use}": service(
                    "services.broker:app", "--endpoint", f"frontend={in_use}",
                    "--endpoint", f"backend={endpoint()}", "--endpoint", f"kill={endpoint()}",
                ),
                "no module named 'services.nosuch'": service("services.nosuch:app"),
                "failed to find attribute 'nosuch'": service("services.broker:nosuch"),
            }  # fmt: skip
            for expected, p in cases.items():
                code = p.wait(10)
                out = p.output().strip().splitlines()
                assert code != 0, f"{p.args}: exit 0"
                assert len(out) == 1, f"{p.args}: not one line:\n" + "\n".join(out)
                assert out[0].startswith("greenzmq: error: "), out[0]
                assert expected in out[0], out[0]

    def test_one_line_error_without_a_log_file(self) -> None:
        """With logs on stderr too, a spec that does not check prints only its one line."""
        import subprocess
        import sys

        from .helpers import ROOT

        for spec in ("services.nosuch:app", "services/broker.py"):
            r = subprocess.run(
                [sys.executable, "-m", "greenzmq", spec, "--log-format", "json"],
                cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert lines[0].startswith("greenzmq: error: "), lines[0]


class Idle(Service):
    """A service with one PULL socket whose run is given by the test."""

    name = "idle"

    def __init__(self, body: Callable[[Idle], None], **kw: Any) -> None:
        super().__init__(specs=(SocketSpec("in", "PULL", bind=("inproc://idle",)),), **kw)
        self.body = body

    def run(self) -> None:
        """Whatever the test says."""
        self.body(self)


class TestLifecycle:
    def test_graceful_timeout(self, logs: Any) -> None:
        """A run() that ignores the stop is killed after graceful_timeout; exit 0, logged."""
        events = logs()
        ignored: list[bool] = []

        def stubborn(svc: Idle) -> None:
            try:
                while True:
                    gevent.sleep(0.01)
            finally:
                ignored.append(True)

        svc = Idle(stubborn)
        svc.graceful_timeout = 0.2
        run = gevent.spawn(svc.serve, install_signals=False)
        green_wait_for(lambda: svc._main is not None, 5, "run to start")
        svc.stop("test")
        assert run.get(timeout=5) == 0
        assert ignored == [True]
        assert events("service.graceful_timeout", seconds=0.2)

    def test_kill_run_from_on_stop(self, logs: Any) -> None:
        """kill_run(): an on_stop kills a run parked with nothing in flight at once; exit 0.

        From run's own greenlet, before run started and after it ended it does nothing.
        """
        events = logs()
        cleaned: list[bool] = []

        class Parked(Idle):
            def on_stop(self) -> None:
                self.killed = self.kill_run()

        def parked(svc: Idle) -> None:
            assert svc.kill_run() is False  # run's own greenlet: left alone
            try:
                gevent.sleep(60)
            finally:
                cleaned.append(True)

        svc = Parked(parked)
        svc.graceful_timeout = 30.0  # a stop that waited for it would time the test out
        assert svc.kill_run() is False  # not serving yet
        run = gevent.spawn(svc.serve, install_signals=False)
        green_wait_for(lambda: svc._main is not None, 5, "run to start")
        svc.stop("test")
        assert run.get(timeout=5) == 0
        assert svc.killed is True and cleaned == [True]
        assert svc.kill_run() is False  # run has ended
        assert not events("service.graceful_timeout")

    def test_before_bind_callback(self, logs: Any) -> None:
        """Before-bind callbacks run once the context exists and before any socket is made;
        a socket one makes is closed with the others, also when a bind then fails."""
        logs()
        seen: list[tuple[bool, list[str]]] = []
        made: list[Any] = []

        def before(svc: Service) -> None:
            assert svc.ctx is not None
            seen.append((svc.log is not None, sorted(svc.socks)))
            sock = svc.ctx.socket(zmq.PAIR)
            made.append(sock)
            svc.socks["extra"] = sock

        svc = Idle(lambda s: None)
        svc.add_before_bind_callback(before)
        assert gevent.spawn(svc.serve, install_signals=False).get(timeout=5) == 0
        assert seen == [(True, [])]
        assert made[0].closed and svc.ctx is None

        # the service's own socket cannot bind: the callback's socket is closed too
        with pysocket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            late = Idle(lambda s: None)
            late.add_before_bind_callback(before)
            with pytest.raises(zmq.ZMQError, match="cannot bind socket 'in'"):
                late.open({"in": f"tcp://127.0.0.1:{port}"})
        assert made[1].closed and late.ctx is None and late.socks == {}

    def test_spawned_failure_stops_with_exit_1(self, logs: Any) -> None:
        """A greenlet started with spawn() that raises stops the service; exit code 1."""
        events = logs()

        def body(svc: Idle) -> None:
            svc.spawn(lambda: 1 / 0, name="divider")
            svc.stopping.wait()

        svc = Idle(body)
        assert gevent.spawn(svc.serve, install_signals=False).get(timeout=5) == 1
        assert svc.failed
        assert svc.stop_reason == "greenlet 'divider' failed"
        (failed,) = events("service.greenlet_failed")
        assert failed["greenlet"] == "divider" and "ZeroDivisionError" in failed["error"]

    def test_stop_before_serve(self, logs: Any) -> None:
        """stop() before serve(): serve opens, sees the stop, closes; nothing left open."""
        logs()
        svc = Idle(lambda s: s.stopping.wait())
        svc.stop("early")
        assert gevent.spawn(svc.serve, install_signals=False).get(timeout=5) == 0
        assert svc.ctx is None and all(s.closed for s in svc.socks.values())

    def test_kill_switch_in_process(self, ctx: Any, endpoint: Callable[[], str], logs: Any) -> None:
        """Any message on the ``kill`` SUB stops the service with reason 'kill switch'."""
        logs()
        kill = endpoint()
        pub = ctx.build(SocketSpec("pub", "XPUB", bind=(kill,)))
        svc = Worker("poller")
        run = gevent.spawn(svc.serve, {"backend": endpoint(), "kill": kill}, install_signals=False)
        try:
            with gevent.Timeout(5):
                assert pub.recv() == b"\x01"  # the service subscribed
                pub.send(b"KILL")
            assert run.get(timeout=5) == 0
            assert svc.stop_reason == "kill switch"
        finally:
            pub.close()


class TestEndpointOverrides:
    def test_wildcard_bind(
        self, ctx: Any, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """``--endpoint frontend=tcp://*:PORT`` binds every interface; clients reach it."""
        from .helpers import free_port

        port, be = free_port(), endpoint()
        p = service(
            "services.broker:app",
            "--endpoint", f"frontend=tcp://*:{port}",
            "--endpoint", f"backend={be}",
            "--endpoint", f"kill={endpoint()}",
        )  # fmt: skip
        p.wait_started()
        worker = ctx.build(SocketSpec("w", "DEALER", connect=(be,)))
        client = ctx.build(SocketSpec("c", "REQ", connect=(f"tcp://127.0.0.1:{port}",)))
        try:
            client.send(b"hi")
            with gevent.Timeout(10):
                env = worker.recv_multipart()
                assert env[1:] == [b"", b"hi"]
                worker.send_multipart([*env[:2], b"ho"])
                assert client.recv() == b"ho"
        finally:
            worker.close()
            client.close()
        p.signal(signal.SIGTERM)
        assert p.wait(5) == 0


class EchoN(Service):
    """A REP service that answers ``n`` requests, then returns."""

    name = "echo-n"

    def __init__(self, ep: str, n: int) -> None:
        super().__init__(specs=[SocketSpec("rep", "REP", connect=(ep,))])
        self.n = n
        self.graceful_timeout = 10.0

    def run(self) -> None:
        sock = self.socks["rep"]
        for _ in range(self.n):
            sock.send(sock.recv())


@pytest.mark.slow
class TestRepliesOutliveTheService:
    @pytest.mark.deadline(60)
    def test_replies_reach_a_peer_that_reads_late(
        self, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """Replies a REP service sent still reach a peer that starts reading after it stopped.

        The peer reads nothing until 2 s after the service's run() returned,
        longer than the 1 s default linger: reply sockets linger for the
        graceful timeout, and the context's term() waits in a thread.
        """
        ep, n, body = endpoint(), 3000, b"y" * 2000
        peer = ctx.build(SocketSpec("peer", "DEALER", bind=(ep,), hwm=10))
        svc = EchoN(ep, n)
        server = gevent.spawn(svc.serve, install_signals=False)
        for i in range(n):
            peer.send_multipart([b"", b"%d" % i + body])
        green_wait_for(svc.stopping.is_set, 30, "the service to answer all")
        gevent.sleep(2.0)  # the stalled peer: on purpose, past the old 1 s linger
        got = 0
        with gevent.Timeout(30, False):
            while got < n:
                peer.recv_multipart()
                got += 1
        assert got == n, f"{n - got} replies lost"
        assert server.get(timeout=30) == 0
        peer.close()
