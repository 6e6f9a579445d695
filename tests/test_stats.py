"""Live stats: per-socket counters, the ipc control endpoint (0600), ``greenzmq stats``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from greenzmq.core.mux import Readers
from greenzmq.core.sockets import SocketSpec
from greenzmq.core.stats import STATS_ENV, Stats, control_endpoint, ipc_path
from greenzmq.tools.stats import main as stats_main

from .helpers import ROOT, ServiceProcess, wait_for


def stats_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenzmq", "stats", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


class TestCounters:
    def test_snapshot_adds_sources_and_gauges(self) -> None:
        """Counters, pull-style sources and queue gauges all land in one snapshot."""
        st = Stats("svc")
        st.socket("fe", "ROUTER").add_in(3, 30)
        st.socket("fe").add_out(2, 20)
        st.socket("fe").drop("no envelope")
        st.source(lambda: {"fe": {"msgs_in": 4}, "tasks": {"msgs_in": 7}})
        st.gauge("q", lambda: 5)
        snap = st.snapshot()
        assert snap["service"] == "svc" and snap["pid"] == os.getpid()
        assert snap["sockets"]["fe"] == {
            "msgs_in": 7, "bytes_in": 30, "msgs_out": 2, "bytes_out": 20,
            "drops": {"no envelope": 1}, "type": "ROUTER",
        }  # fmt: skip
        assert snap["sockets"]["tasks"]["msgs_in"] == 7
        assert snap["queues"] == {"q": 5}

    def test_watch_mux(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A Readers mux is read at snapshot time: messages in per socket and queue depth."""
        eps = [endpoint(), endpoint()]
        pulls = [ctx.build(SocketSpec(f"in{i}", "PULL", bind=(e,))) for i, e in enumerate(eps)]
        pushes = [ctx.build(SocketSpec(f"out{i}", "PUSH", connect=(e,))) for i, e in enumerate(eps)]
        mux = Readers(pulls).start()
        st = Stats("svc")
        st.watch_mux(mux, "inbox")
        try:
            for i, p in enumerate(pushes):
                for _ in range(5 * (i + 1)):
                    p.send(b"x")
            with gevent.Timeout(10):
                while mux.statistics().queued < 15:
                    gevent.sleep(0.01)
            mux.get()
            snap = st.snapshot()
            assert snap["sockets"]["in0"]["msgs_in"] == 5
            assert snap["sockets"]["in1"]["msgs_in"] == 10
            assert snap["queues"] == {"inbox": 14}
        finally:
            mux.stop()
            for p in pushes:
                p.close()


class TestEndpoint:
    def test_only_ipc(self) -> None:
        """The control endpoint must be an ipc path (owner-only permissions)."""
        assert ipc_path("ipc:///tmp/x.ipc") == "/tmp/x.ipc"
        for bad in ("tcp://127.0.0.1:5555", "ipc://", "ipc://@abstract", "inproc://x"):
            with pytest.raises(ValueError, match="stats endpoint"):
                ipc_path(bad)

    def test_placeholders(self) -> None:
        """{pid} and {service} are filled in, so several workers get their own endpoint."""
        env = {STATS_ENV: "ipc:///run/{service}-{pid}.ipc"}
        assert control_endpoint("broker", env) == f"ipc:///run/broker-{os.getpid()}.ipc"
        assert control_endpoint("broker", {}) is None


@pytest.fixture
def served_broker(
    service: Callable[..., ServiceProcess], endpoint: Callable[[], str], tmp_path: Path
) -> Iterator[tuple[ServiceProcess, dict[str, str], str]]:
    """A broker serving its stats on an ipc endpoint in tmp_path."""
    eps = {n: endpoint() for n in ("frontend", "backend", "kill")}
    ctl = f"ipc://{tmp_path}/{{service}}.ipc"
    broker = service(
        "services.broker:app",
        *(a for n in eps for a in ("--endpoint", f"{n}={eps[n]}")),
        env={STATS_ENV: ctl},
    )
    broker.wait_started()
    path = tmp_path / "broker.ipc"
    wait_for(path.exists, 10, "the stats socket file")
    yield broker, eps, f"ipc://{path}"


class TestServed:
    @pytest.mark.deadline(60)
    def test_broker_counts_requests_drops_and_permissions(
        self,
        served_broker: tuple[ServiceProcess, dict[str, str], str],
        service: Callable[..., ServiceProcess],
    ) -> None:
        """After 20 requests and one malformed message the stats say so; the file is 0600."""
        _broker, eps, ctl = served_broker
        path = ctl[len("ipc://") :]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        worker = service("services.worker:app", "--endpoint", f"backend={eps['backend']}",
                         "--endpoint", f"kill={eps['kill']}")  # fmt: skip
        worker.wait_started()
        client = service("services.client:app(i=20)", "--endpoint", f"frontend={eps['frontend']}")
        assert client.wait(30) == 0, client.output()
        bad = zmq.Context.instance().socket(zmq.DEALER)
        bad.linger = 1000
        bad.connect(eps["frontend"])
        bad.send(b"no delimiter")  # the ROUTER sees [id, body]: no envelope delimiter
        bad.close()

        def snapshot() -> dict[str, Any]:
            out = stats_cli(ctl, "--json")
            assert out.returncode == 0, out.stderr
            return dict(json.loads(out.stdout))

        snap = wait_for(
            lambda: (s := snapshot())["sockets"]["frontend"]["drops"] and s, 20, "the drop"
        )
        fe, be = snap["sockets"]["frontend"], snap["sockets"]["backend"]
        assert snap["service"] == "broker" and snap["pid"] != os.getpid()
        assert fe["type"] == "ROUTER" and be["type"] == "DEALER"
        assert fe["msgs_in"] == 21 and fe["drops"] == {"no envelope delimiter": 1}
        assert be["msgs_out"] == 20 and be["msgs_in"] == 20 and fe["msgs_out"] == 20
        assert fe["bytes_in"] > 0 and be["bytes_out"] == fe["bytes_in"]
        assert snap["queues"] == {"pending:frontend": 0, "pending:backend": 0, "held:frontend": 0}
        assert "kill" in snap["sockets"]

        text = stats_cli(ctl)
        assert text.returncode == 0
        lines = text.stdout.splitlines()
        assert lines[0].startswith(f"broker pid {snap['pid']}")
        row = next(line for line in lines if line.startswith("frontend"))
        assert row.split()[:3] == ["frontend", "ROUTER", "21"]
        assert row.endswith("no envelope delimiter: 1")

        watch = stats_cli(ctl, "--watch", "--count", "2", "--interval", "0.1")
        assert watch.returncode == 0
        assert watch.stdout.count("broker pid") == 2
        assert "in/s" in watch.stdout

    def test_bad_endpoints(self, tmp_path: Path) -> None:
        """A tcp endpoint is refused (exit 2); nobody serving is exit 1, each one line."""
        tcp = stats_cli("tcp://127.0.0.1:5555")
        assert tcp.returncode == 2
        assert tcp.stderr.strip().splitlines() == [
            "greenzmq stats: error: stats endpoint 'tcp://127.0.0.1:5555' must be ipc://PATH "
            "(owner-only file permissions)"
        ]
        (tmp_path / "stale.ipc").touch()  # left by a service that was killed
        stale = stats_cli(f"ipc://{tmp_path}/stale.ipc", "--timeout", "0.3")
        assert stale.returncode == 1
        assert "no answer from" in stale.stderr
        gone = stats_cli(f"ipc://{tmp_path}/nobody.ipc")
        assert gone.returncode == 1
        assert "nobody.ipc does not exist" in gone.stderr

    def test_bad_timings(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A timeout that is not positive or a negative interval is refused in one line (exit 2)."""
        ep = f"ipc://{tmp_path}/nobody.ipc"
        assert stats_main([ep, "--timeout", "-1"]) == 2  # would poll forever
        assert stats_main([ep, "--watch", "--interval", "-1"]) == 2
        assert capsys.readouterr().err.splitlines() == [
            "greenzmq stats: error: --timeout must be positive, got -1.0",
            "greenzmq stats: error: --interval must not be negative, got -1.0",
        ]

    def test_service_refuses_tcp_control_endpoint(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """GREENZMQ_STATS=tcp://... stops the service at start with a one-line error."""
        eps = {n: endpoint() for n in ("frontend", "backend", "kill")}
        broker = service(
            "services.broker:app",
            *(a for n in eps for a in ("--endpoint", f"{n}={eps[n]}")),
            env={STATS_ENV: "tcp://127.0.0.1:5999"},
        )
        assert broker.wait(20) != 0
        assert "must be ipc://PATH" in broker.output()


class TestReliable:
    @pytest.mark.deadline(60)
    def test_ppp_queue_and_worker_report_real_counters(
        self,
        service: Callable[..., ServiceProcess],
        endpoint: Callable[[], str],
        tmp_path: Path,
    ) -> None:
        """``greenzmq stats`` on the PPP queue and a worker: messages, workers, pending."""
        from greenzmq.patterns.lazypirate import LazyPirate

        fe, be = endpoint(), endpoint()
        env = {STATS_ENV: f"ipc://{tmp_path}/{{service}}.ipc"}
        queue = service("services.ppqueue:make(heartbeat=0.2)", "--endpoint", f"frontend={fe}",
                        "--endpoint", f"backend={be}", env=env)  # fmt: skip
        worker = service("services.ppworker:app(heartbeat=0.2)", "--endpoint", f"backend={be}",
                         env=env)  # fmt: skip
        wait_for(lambda: queue.events("ppqueue.worker_ready"), 15, "the worker ready")
        with LazyPirate(fe, timeout=5, retries=1) as c:
            for i in range(10):
                assert c.request(str(i).encode()) == [str(i * i).encode()]

        def snapshot(name: str) -> dict[str, Any]:
            out = stats_cli(f"ipc://{tmp_path}/{name}.ipc", "--json")
            assert out.returncode == 0, out.stderr
            return dict(json.loads(out.stdout))

        q = snapshot("ppqueue")
        qfe, qbe = q["sockets"]["frontend"], q["sockets"]["backend"]
        assert (qfe["msgs_in"], qfe["msgs_out"]) == (10, 10)
        assert qbe["msgs_out"] >= 10 and qbe["msgs_in"] >= 11  # READY, replies, heartbeats
        assert q["queues"]["workers:idle"] == 1 and q["queues"]["workers:busy"] == 0
        assert q["queues"]["pending"] == 0 and q["queues"]["workers:expired"] == 0
        w = snapshot("ppworker")["sockets"]["backend"]
        assert w["msgs_in"] >= 10 and w["msgs_out"] >= 11  # requests (+heartbeats), replies + READY
        text = stats_cli(f"ipc://{tmp_path}/ppqueue.ipc")
        assert "workers:idle" in text.stdout, text.stdout
        assert worker.proc.poll() is None
