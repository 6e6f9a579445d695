"""Operations: `--metrics` scraped over HTTP, sd_notify, `greenzmq health` and `mmi`.

Real launcher processes, real brokers and workers on free tcp ports, a real
HTTP scrape (``urllib``), a real unix datagram socket standing in for systemd.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from greenzmq.launcher.metrics import Metrics, counters_of

from .helpers import ROOT, ServiceProcess, free_port, wait_for

Start = Callable[..., ServiceProcess]
README = (ROOT / "README.md").read_text()


def readme_block(name: str) -> str:
    """The code block after ``<!-- ops-test: NAME -->`` in the README."""
    m = re.search(rf"<!-- ops-test: {name} -->\n```\w+\n(.*?)```", README, re.S)
    assert m, f"no ops-test: {name} block in the README"
    return m.group(1)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """``GET /metrics``, parsed by prometheus_client's own parser: {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None if absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape_until(
    port: int, cond: Callable[[Samples], bool], what: str, timeout: float = 10
) -> Samples:
    """Scrape until ``cond(samples)`` holds (the workers report every 0.5 s)."""
    last: list[Samples] = [{}]

    def ok() -> bool:
        try:
            last[0] = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            return False
        return cond(last[0])

    try:
        wait_for(ok, timeout, what)
    except AssertionError as e:
        shown = {k: v for k, v in last[0].items() if not k[0].endswith("_bucket")}
        raise AssertionError(f"{e}; last scrape: {shown}") from None
    return last[0]


def pipelined(endpoint: str, bodies: list[bytes], identity: bytes, window: int = 100) -> None:
    """Send every body through a DEALER (``window`` in flight); wait for every reply."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, identity)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        sent = got = 0
        deadline = time.monotonic() + 30
        while got < len(bodies):
            while sent < len(bodies) and sent - got < window:
                s.send_multipart([b"", bodies[sent]])
                sent += 1
            assert s.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), f"{got} replies"
            s.recv_multipart()
            got += 1
    finally:
        s.close(0)
        ctx.term()


def endpoints(*pairs: tuple[str, str]) -> list[str]:
    """``--endpoint NAME=ADDR`` arguments."""
    return [a for name, addr in pairs for a in ("--endpoint", f"{name}={addr}")]


class TestMetrics:
    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(90)
    def test_broker_and_workers_scraped_under_load_and_a_killed_worker(
        self, service: Start, endpoint: Callable[[], str]
    ) -> None:
        """The scrape's counts are what was sent; a SIGKILLed worker is neither lost nor doubled.

        The tutorial broker (``-w 1``) and ``services.worker`` (``-w 2``), each
        under its own master with ``--metrics``; 1000 requests pipelined from
        a DEALER with a known identity, so the bytes are known exactly.
        """
        fe, be, kill = endpoint(), endpoint(), endpoint()
        bport, wport = free_port(), free_port()
        service("services.broker:app", "--metrics", f"127.0.0.1:{bport}",
                *endpoints(("frontend", fe), ("backend", be), ("kill", kill)))  # fmt: skip
        workers = service("services.worker:app", "-w", "2", "--metrics", f"127.0.0.1:{wport}",
                          *endpoints(("backend", be), ("kill", kill)))  # fmt: skip
        wait_for(lambda: len(workers.events("service.start")) >= 2, 20, "two workers")
        n, ident = 1000, b"client-1"
        bodies = [b"%06d" % i for i in range(n)]
        pipelined(fe, bodies, ident)
        frame_bytes = n * (len(ident) + 0 + 6)  # the ROUTER's id frame, the delimiter, the body

        def broker_counted(s: Samples) -> bool:
            return (
                value(s, "greenzmq_socket_sent_messages_total", socket="frontend", type="ROUTER")
                == n
            )

        b = scrape_until(bport, broker_counted, "the broker's counts")
        fe_l, be_l = (
            {"socket": "frontend", "type": "ROUTER"},
            {"socket": "backend", "type": "DEALER"},
        )
        assert value(b, "greenzmq_socket_received_messages_total", **fe_l) == n
        assert value(b, "greenzmq_socket_received_bytes_total", **fe_l) == frame_bytes
        assert value(b, "greenzmq_socket_sent_messages_total", **be_l) == n
        assert value(b, "greenzmq_socket_received_messages_total", **be_l) == n
        assert value(b, "greenzmq_workers_alive") == 1
        assert value(b, "greenzmq_queue_depth", queue="pending:backend") == 0

        wl = {"socket": "backend", "type": "REP"}

        def workers_counted(want: int) -> Callable[[Samples], bool]:
            return lambda s: (
                value(s, "greenzmq_socket_received_messages_total", **wl) == want
                and value(s, "greenzmq_workers_reporting") == 2
            )

        w = scrape_until(wport, workers_counted(n), f"{n} requests counted by the workers")
        assert value(w, "greenzmq_workers_alive") == 2
        assert value(w, "greenzmq_requests_total") == n
        assert value(w, "greenzmq_worker_restarts_total", cause="crash") == 0

        victim = workers.events("service.start")[-1]["pid"]
        os.kill(victim, signal.SIGKILL)

        def replaced(s: Samples) -> bool:
            return (
                value(s, "greenzmq_worker_restarts_total", cause="crash") == 1
                and value(s, "greenzmq_workers_reporting") == 2
            )

        w = scrape_until(wport, replaced, "the killed worker replaced and reporting", 20)
        # the dead worker's counts stay in the total once: not lost, not doubled
        assert value(w, "greenzmq_socket_received_messages_total", **wl) == n
        assert value(w, "greenzmq_requests_total") == n
        pipelined(fe, bodies[:200], ident)
        scrape_until(wport, workers_counted(n + 200), "200 more, on the new fleet")

    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(90)
    def test_restarts_by_cause_and_hub_blocked(
        self, service: Start, endpoint: Callable[[], str]
    ) -> None:
        """A blocked hub is counted; max-requests, heartbeat timeout and HUP restarts by cause;
        a recycled worker's last counts (sent before its exit) stay in the totals."""
        fe, be, kill = endpoint(), endpoint(), endpoint()
        port = free_port()
        service(
            "services.broker:app", *endpoints(("frontend", fe), ("backend", be), ("kill", kill))
        )
        p = service("tests.launcher_apps:echo", "--metrics", f"127.0.0.1:{port}",
                    "--block-threshold", "0.2", "--timeout", "1.5", "--max-requests", "4",
                    *endpoints(("backend", be), ("kill", kill)))  # fmt: skip
        p.wait_started()
        ctx = zmq.Context()
        c = ctx.socket(zmq.DEALER)
        c.setsockopt(zmq.LINGER, 0)
        c.connect(fe)

        def ask(body: bytes) -> None:
            c.send_multipart([b"", body])
            assert c.poll(10_000), f"no reply to {body!r}"
            assert c.recv_multipart()[-1] == b"ok:" + body

        def restarts(s: Samples, cause: str) -> float | None:
            return value(s, "greenzmq_worker_restarts_total", cause=cause)

        try:
            ask(b"block:0.5")  # the hub blocked 0.5 s, past the 0.2 s threshold
            scrape_until(port, lambda s: (value(s, "greenzmq_hub_blocked_total") or 0) >= 1, "hub")
            for i in range(3):
                ask(b"x%d" % i)  # the 4th request: recycled

            def recycled(s: Samples) -> bool:
                return (
                    restarts(s, "max_requests") == 1 and value(s, "greenzmq_workers_reporting") == 1
                )

            s = scrape_until(port, recycled, "a recycled worker replaced", 20)
            assert value(s, "greenzmq_requests_total") == 4  # its last snapshot, before exiting
            assert (value(s, "greenzmq_hub_blocked_total") or 0) >= 1
            c.send_multipart([b"", b"block:30"])  # silent past --timeout: ABRT, replaced
            scrape_until(port, lambda s: restarts(s, "timeout") == 1, "a timeout restart", 20)
            p.wait_event("worker.timeout", 10)
            wait_for(lambda: len(p.events("service.start")) >= 3, 15, "its replacement")
            p.signal(signal.SIGHUP)
            s = scrape_until(port, lambda s: restarts(s, "reload") == 1, "a reload restart", 20)
            assert restarts(s, "crash") == 0 and restarts(s, "max_requests") == 1
        finally:
            c.close(0)
            ctx.term()

    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(60)
    def test_ppp_queue_latency_workers_pending_and_drops(
        self, service: Start, endpoint: Callable[[], str]
    ) -> None:
        """PPP: one latency observation per reply, idle workers per service, drops by reason."""
        fe, be, kill = endpoint(), endpoint(), endpoint()
        qport = free_port()
        queue = service("services.ppqueue:make(heartbeat=0.2)", "--metrics", f"127.0.0.1:{qport}",
                        *endpoints(("frontend", fe), ("backend", be), ("kill", kill)))  # fmt: skip
        service("services.ppworker:app(heartbeat=0.2)", "-w", "2",
                *endpoints(("backend", be), ("kill", kill)))  # fmt: skip
        wait_for(lambda: len(queue.events("ppqueue.worker_ready")) >= 2, 20, "two workers ready")
        n = 300
        pipelined(fe, [b"%d" % i for i in range(n)], b"ppp-client")
        ctx = zmq.Context()
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(fe)
        bad.send_multipart([b"no-delimiter"])  # a request without its empty frame

        def counted(s: Samples) -> bool:
            return (
                value(s, "greenzmq_broker_request_duration_seconds_count") == n
                and value(s, "greenzmq_broker_workers", service="default", state="idle") == 2
                and any(k[0] == "greenzmq_socket_dropped_messages_total" for k in s)
            )

        try:
            s = scrape_until(qport, counted, f"{n} latencies, 2 idle workers, 1 drop")
        finally:
            bad.close(0)  # open until then: linger 0 would discard the unsent message
            ctx.term()
        assert value(s, "greenzmq_broker_request_duration_seconds_bucket", le="+Inf") == n
        assert value(s, "greenzmq_broker_request_duration_seconds_sum") > 0
        assert value(s, "greenzmq_broker_workers", service="default", state="busy") == 0
        assert value(s, "greenzmq_broker_pending_requests", service="default") == 0
        assert value(s, "greenzmq_broker_worker_expiries_total") == 0
        drops = {k: v for k, v in s.items() if k[0] == "greenzmq_socket_dropped_messages_total"}
        assert list(drops.values()) == [1], drops
        (((_, labels),),) = [tuple(drops)]
        assert dict(labels)["socket"] == "frontend"
        fe_l = {"socket": "frontend", "type": "ROUTER"}
        assert value(s, "greenzmq_socket_received_messages_total", **fe_l) == n + 1
        assert value(s, "greenzmq_socket_sent_messages_total", **fe_l) == n
        # every frame through the ROUTER: its id for the client, the delimiter, the body;
        # and the bad message (a 5-byte id libzmq made up, its one frame)
        ident = len(b"ppp-client")
        expect = sum(ident + len(b"%d" % i) for i in range(n)) + 5 + len(b"no-delimiter")
        assert value(s, "greenzmq_socket_received_bytes_total", **fe_l) == expect
        assert value(s, "greenzmq_hub_blocked_total") == 0

    def test_http_answers_only_metrics(self) -> None:
        """404 elsewhere, 405 for POST, and a silent client does not hold the server."""
        import selectors

        from greenzmq.launcher.metrics import MetricsServer

        port = free_port()
        srv = MetricsServer(f"127.0.0.1:{port}", Metrics())
        sel = selectors.DefaultSelector()
        srv.attach(sel)

        def ask(raw: bytes) -> bytes:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(raw)
            buf = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for key, _ in sel.select(0.05):
                    key.data.on_ready(key.fileobj)
                c.setblocking(False)
                try:
                    chunk = c.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                buf += chunk
            c.close()
            return buf

        try:
            assert ask(b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
            assert ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
            ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200") and b"greenzmq_workers_alive 0.0" in ok
        finally:
            srv.close()
            sel.close()

    def test_dead_worker_totals_folded_once(self) -> None:
        """Unit check of the bookkeeping: gauges leave with the worker, counts stay once."""
        m = Metrics()
        snap = {
            "sockets": {
                "frontend": {"type": "ROUTER", "msgs_in": 5, "msgs_out": 4, "drops": {"x": 1}}
            },
            "queues": {"mux": 7, "workers:expired": 2},
            "histograms": {"request_latency": {"bounds": [0.1], "counts": [3, 1], "sum": 0.5}},
        }
        m.update(1, snap)
        m.update(2, snap)
        counters, gauges, hists = m.totals()
        key = ("greenzmq_socket_received_messages", (("socket", "frontend"), ("type", "ROUTER")))
        assert counters[key] == 10 and gauges[("greenzmq_queue_depth", (("queue", "mux"),))] == 14
        m.worker_gone(1)
        m.worker_gone(1)  # reaped twice (or an unknown pid): no second fold
        counters, gauges, hists = m.totals()
        assert counters[key] == 10 and counters[("greenzmq_broker_worker_expiries", ())] == 4
        assert gauges[("greenzmq_queue_depth", (("queue", "mux"),))] == 7
        assert hists["request_latency"].counts == [6, 2]
        assert counters_of({"sockets": {}}) == {}

    def test_metrics_setting_everywhere(self, tmp_path: Path) -> None:
        """--metrics is a setting (CLI, file, env var); a malformed one: one line, exit 2."""
        from greenzmq.errors import ConfigError
        from greenzmq.launcher.config import load_config

        conf = tmp_path / "c.py"
        conf.write_text("metrics = '0.0.0.0:9100'\n")
        assert load_config(["-c", str(conf), "m:app"]).metrics == "0.0.0.0:9100"
        env = {"GREENZMQ_CMD_ARGS": "--metrics [::1]:9101"}
        assert load_config(["m:app"], env).metrics == "[::1]:9101"
        assert (
            load_config(["--metrics", "127.0.0.1:9102", "m:app"], env).metrics == "127.0.0.1:9102"
        )
        with pytest.raises(ConfigError, match="is not HOST:PORT"):
            load_config(["--metrics", "9100", "m:app"])
        out = subprocess.run(
            [sys.executable, "-m", "greenzmq", "--metrics", "localhost", "services.broker:app"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert out.returncode == 2
        assert out.stderr.strip() == (
            "greenzmq: error: --metrics: 'localhost' is not HOST:PORT (e.g. 127.0.0.1:9100)"
        )

    @pytest.mark.deadline(30)
    def test_port_in_use_halts_with_one_line(self, service: Start) -> None:
        """A --metrics address that cannot be bound: exit 2 before any worker, one line."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            p = service("services.broker:app", "--metrics", f"127.0.0.1:{port}")
            assert p.wait(20) == 2
        assert f"--metrics 127.0.0.1:{port}: cannot listen: Address already in use" in p.output()
        assert not p.events("service.start")


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        import tempfile

        # a short path: sun_path holds 108 bytes, pytest's tmp_path can be longer
        self.dir = tempfile.mkdtemp(prefix="gzn")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got: list[tuple[float, dict[str, str]]] = []

    def pump(self, timeout: float) -> None:
        """Receive what arrives within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.got.append((time.monotonic(), fields))

    def wait(self, key: str, after: float = 0.0, timeout: float = 15) -> dict[str, str]:
        """The first datagram with ``key`` received after ``after`` (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            for t, f in self.got:
                if t >= after and key in f:
                    return f
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key} after {after}; got {self.got[-10:]}")
            self.pump(0.05)

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


class TestSystemd:
    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(60)
    def test_ready_reload_watchdog_stopping(
        self, service: Start, endpoint: Callable[[], str]
    ) -> None:
        """READY with STATUS; RELOADING+MONOTONIC_USEC then READY on HUP; a stuck
        worker stops the watchdog, a live one feeds it; STOPPING on TERM."""
        n = NotifyListener()
        try:
            eps = endpoints(("frontend", endpoint()), ("backend", endpoint()), ("kill", endpoint()))
            env = {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "200000"}
            port = free_port()
            p = service(
                "services.broker:app", "-t", "2", "--metrics", f"127.0.0.1:{port}", *eps, env=env
            )
            ready = n.wait("READY")
            assert ready["STATUS"] == "1 of 1 workers serving"
            t0 = time.monotonic()
            n.pump(1.0)
            feeds = [t for t, f in n.got if t >= t0 and f.get("WATCHDOG") == "1"]
            assert len(feeds) >= 5, n.got  # every 0.1 s (half of 0.2 s), while the worker beats

            hup = time.monotonic()
            p.signal(signal.SIGHUP)
            reloading = n.wait("RELOADING", after=hup)
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 <= usec - int(reloading["MONOTONIC_USEC"]) < 5_000_000
            again = n.wait("READY", after=hup)
            assert again["STATUS"] == "1 of 1 workers serving"
            # a binding worker is retired at once on HUP (its successor needs the port)
            reload = {"cause": "reload"}
            scrape_until(
                port, lambda s: value(s, "greenzmq_worker_restarts_total", **reload) == 1, "reload"
            )

            worker = wait_for(lambda: p.events("service.start")[1:], 15, "the new worker")[-1]
            stop = time.monotonic()
            os.kill(worker["pid"], signal.SIGSTOP)  # stuck: no more heartbeats
            try:
                # the master (timeout 2 s) kills it at ~3 s; the watchdog stops after ~1 s
                n.pump(2.0)
                late = [t for t, f in n.got if t >= stop + 1.5 and f.get("WATCHDOG") == "1"]
                assert not late, "the watchdog was fed while the only worker was stuck"
            finally:
                os.kill(worker["pid"], signal.SIGCONT)
            n.wait("WATCHDOG", after=time.monotonic())  # a live worker again: fed again

            term = time.monotonic()
            p.signal(signal.SIGTERM)
            assert n.wait("STOPPING", after=term)["STOPPING"] == "1"
            assert p.wait(15) == 0
        finally:
            n.close()

    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(30)
    def test_a_reader_that_does_not_read_never_blocks_the_master(
        self, service: Start, endpoint: Callable[[], str]
    ) -> None:
        """A full NOTIFY_SOCKET queue (10 datagrams) drops watchdog pings; the master goes on."""
        n = NotifyListener()  # bound, never read
        try:
            eps = endpoints(("frontend", endpoint()), ("backend", endpoint()), ("kill", endpoint()))
            env = {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "100000"}
            port = free_port()
            p = service("services.broker:app", "-t", "1", "--metrics", f"127.0.0.1:{port}",
                        *eps, env=env)  # fmt: skip
            p.wait_event("master.ready", 15)
            time.sleep(1.5)  # 30 pings due: the queue is full after 10 (a deadline, not a wait)
            t0 = time.monotonic()
            s = scrape(port)
            assert time.monotonic() - t0 < 1.0 and value(s, "greenzmq_workers_alive") == 1
            assert not p.events("worker.timeout")  # the master read every heartbeat
        finally:
            n.close()

    def test_notifier_from_env(self) -> None:
        """The variables leave the environment; WATCHDOG_PID of another process disables it."""
        from greenzmq.launcher.sdnotify import Notifier

        env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1", "A": "b"}
        no = Notifier.from_env(env)
        assert env == {"A": "b"} and no.enabled and no.watchdog_interval == 0
        mine = Notifier.from_env({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
        assert not mine.enabled and mine.watchdog_interval == 1.5
        assert not mine.send("READY=1")  # no socket: nothing, no error
        no.close()


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``python -m greenzmq ARGS``: exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "greenzmq", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


class TestUnitFile:
    def test_readme_unit(self, tmp_path: Path) -> None:
        """The README's unit: Type=notify, a watchdog, a HUP reload, a command line that
        loads; ``systemd-analyze verify`` finds nothing to say where it is installed."""
        from greenzmq.launcher.config import load_config

        unit = readme_block("unit")
        fields: dict[str, str] = {}
        for line in unit.splitlines():
            if line and not line.startswith(("#", "[")):
                key, _, val = line.partition("=")
                fields[key] = val
        assert fields["Type"] == "notify" and float(fields["WatchdogSec"]) > 0
        assert fields["ExecReload"] == "/bin/kill -HUP $MAINPID"
        argv = shlex.split(fields["ExecStart"])
        assert argv[0].endswith("/greenzmq")
        cfg = load_config(argv[1:], {})
        # the master gets to replace a stuck worker before systemd restarts everything
        assert float(fields["WatchdogSec"]) > cfg.timeout
        assert float(fields["TimeoutStopSec"]) > cfg.graceful_timeout
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed: the fields were checked")
        path = tmp_path / "greenzmq-broker.service"
        # verify wants an executable that exists: this interpreter running the same command
        path.write_text(unit.replace(argv[0], f"{sys.executable} -m greenzmq"))
        r = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert (r.returncode, r.stderr) == (0, ""), r.stderr


class TestProbes:
    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(60)
    def test_health_follows_the_loop_and_the_peer(
        self, service: Start, endpoint: Callable[[], str], tmp_path: Path
    ) -> None:
        """The README's container example: its CMD under its ENV, its HEALTHCHECK command.

        Healthy with the broker up; unhealthy (one line, exit 1) with the broker
        gone, with the worker's hub stopped, and with nobody there; exit 2 for a
        bad endpoint.
        """
        fe, be, kill = endpoint(), endpoint(), endpoint()
        broker = service(
            "services.broker:app", *endpoints(("frontend", fe), ("backend", be), ("kill", kill))
        )
        lines = readme_block("container").replace("/tmp/", f"{tmp_path}/").splitlines()
        env_line = next(x for x in lines if x.startswith("ENV ")).split()[1]
        env_name, _, env_value = env_line.partition("=")
        cmd = json.loads(next(x for x in lines if x.startswith("CMD "))[4:])
        check = next(x for x in lines if x.startswith("HEALTHCHECK "))
        probe = shlex.split(check.split(" CMD ", 1)[1])
        assert cmd[0] == probe[0] == "greenzmq" and probe[1] == "health"
        stats = probe[2]
        args = [a.replace("tcp://broker:5561", be) for a in cmd[1:]]
        worker = service(*args, *endpoints(("kill", kill)), env={env_name: env_value})
        worker.wait_started()
        ok = wait_for(lambda: (r := cli(*probe[1:])).returncode == 0 and r, 15, "healthy")
        assert (
            ok.stdout.startswith("healthy: worker pid ") and "backend: 1 live peer(s)" in ok.stdout
        )

        broker.signal(signal.SIGTERM)
        assert broker.wait(15) == 0
        bad = wait_for(lambda: (r := cli("health", stats)).returncode == 1 and r, 15, "unhealthy")
        assert bad.stdout.count("\n") == 1
        assert f"socket 'backend' has no live peer (connects to {be})" in bad.stdout

        pid = worker.events("service.start")[0]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            stuck = cli("health", stats, "--timeout", "0.5")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert stuck.returncode == 1
        assert stuck.stdout == f"unhealthy: the service at {stats} did not answer within 0.5 s\n"

        gone = cli("health", f"ipc://{tmp_path}/nobody.ipc")
        assert gone.returncode == 1 and "nobody.ipc does not exist" in gone.stdout
        usage = cli("health", "tcp://127.0.0.1:5999")
        assert usage.returncode == 2 and "must be ipc://PATH" in usage.stderr

    @pytest.mark.slow  # whole-system: runs once per tox run (py311)
    @pytest.mark.deadline(60)
    def test_mmi_service_from_the_command_line(
        self, service: Start, endpoint: Callable[[], str]
    ) -> None:
        """200 and exit 0 for a service with workers, 404 and exit 1 for one without;
        the broker's metrics name the service's idle worker."""
        ep, kill = endpoint(), endpoint()
        port = free_port()
        broker = service(
            "services.majordomo:make(heartbeat=0.2)",
            "--metrics",
            f"127.0.0.1:{port}",
            *endpoints(("broker", ep), ("kill", kill)),
        )
        broker.wait_started()
        assert cli("mmi", ep, "square").stdout == "square: 404 no workers\n"
        service(
            "services.majordomo:worker(service='square')",
            *endpoints(("broker", ep), ("kill", kill)),
        )
        got = wait_for(lambda: (r := cli("mmi", ep, "square")).returncode == 0 and r, 15, "200")
        assert got.stdout == "square: 200 has workers\n"
        idle = {"service": "square", "state": "idle"}
        scrape_until(port, lambda s: value(s, "greenzmq_broker_workers", **idle) == 1, "square")
        missing = cli("mmi", ep, "nobody")
        assert (missing.returncode, missing.stdout) == (1, "nobody: 404 no workers\n")
        assert cli("mmi", "tcp://*:1", "x").returncode == 2
        silent = cli("mmi", endpoint(), "x", "--timeout", "0.3")
        assert silent.returncode == 1 and "no answer from" in silent.stdout
