"""Handlers off the hub (issue 10, section 1): ``offload=None | "thread" | "process"``.

In-process tests put a PPP worker in front of a fake queue (a raw ROUTER in
the test) that answers heartbeats and times them: a CPU-bound handler inline
stops them; offloaded, they keep coming, the kill switch works meanwhile and
the reply still goes out. The slow tests are the issue's acceptance with real
processes behind the real PPP queue and Majordomo broker.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from greenzmq.core.offload import Offload
from greenzmq.core.stats import STATS_ENV
from greenzmq.errors import ConfigError
from greenzmq.patterns.lazypirate import LazyPirate
from greenzmq.patterns.mdp import MDPClient
from greenzmq.patterns.ppp import DISCONNECT, HEARTBEAT, READY, PPPWorkerService
from greenzmq.tools.stats import fetch

from .helpers import ROOT, free_endpoint, green_wait_for, wait_for
from .offload_apps import burn, burn_for, trouble

HB = 0.2  # worker heartbeat: liveness 3 makes a 0.6 s window


class FakeQueue:
    """A ROUTER that speaks the queue's side of PPP and records when heartbeats came."""

    def __init__(self, ctx: Any) -> None:
        self.endpoint = free_endpoint()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.bind(self.endpoint)
        self.workers: list[bytes] = []
        self.beats: list[float] = []
        self.left: list[bytes] = []

    def ready(self, n: int = 1, timeout: float = 10.0) -> list[bytes]:
        """Wait for ``n`` workers' READY."""
        with gevent.Timeout(timeout):
            while len(self.workers) < n:
                m = self.sock.recv_multipart()
                if m[1:] == [READY]:
                    self.workers.append(m[0])
        return self.workers

    def request(self, wid: bytes, body: bytes, client: bytes = b"client") -> None:
        self.sock.send_multipart([wid, client, b"", body])

    def replies(self, n: int, timeout: float = 15.0) -> list[list[bytes]]:
        """Answer heartbeats (timing them) until ``n`` replies came; they are returned."""
        out: list[list[bytes]] = []
        with gevent.Timeout(timeout):
            while len(out) < n:
                m = self.sock.recv_multipart()
                if m[1:] == [HEARTBEAT]:
                    self.beats.append(time.monotonic())
                    self.sock.send_multipart([m[0], HEARTBEAT])
                elif m[1:] == [DISCONNECT]:
                    self.left.append(m[0])
                    self.sock.send_multipart([m[0], DISCONNECT])
                elif len(m) > 2:
                    out.append(m[1:])
        return out

    def until_left(self, n: int, timeout: float = 10.0) -> None:
        """Acknowledge DISCONNECTs until ``n`` workers left."""
        with gevent.Timeout(timeout):
            while len(self.left) < n:
                m = self.sock.recv_multipart()
                if m[1:] == [DISCONNECT]:
                    self.left.append(m[0])
                    self.sock.send_multipart([m[0], DISCONNECT])
                elif m[1:] == [HEARTBEAT]:
                    self.sock.send_multipart([m[0], HEARTBEAT])

    def close(self) -> None:
        self.sock.close(linger=0)


def serve(app: PPPWorkerService, kill: str | None = None) -> gevent.Greenlet[..., int]:
    return gevent.spawn(app.serve, {"kill": kill or free_endpoint()}, install_signals=False)


class TestOffThehub:
    @pytest.mark.deadline(40)
    @pytest.mark.parametrize("offload", [None, "thread", "process"])
    def test_heartbeats_and_kill_switch_while_a_cpu_bound_handler_runs(
        self, offload: str | None, ctx: Any, logs: Any
    ) -> None:
        """1 s of pure-Python CPU work: offloaded, heartbeats keep their pace and the kill
        switch stops the worker after the reply; inline, the hub is silent and the log
        names the fix."""
        events = logs()
        q = FakeQueue(ctx)
        kill_ep = free_endpoint()
        kill = ctx.socket(zmq.PUB)
        kill.bind(kill_ep)
        app = PPPWorkerService(
            functools.partial(burn_for, 1.0), endpoint=q.endpoint, heartbeat=HB, offload=offload
        )
        g = serve(app, kill_ep)
        try:
            (wid,) = q.ready()

            def press_kill_switch() -> None:
                # once the handler runs and two beats came: the switch is pressed meanwhile
                while len(q.beats) < 2 and time.monotonic() < sent + 0.8:
                    gevent.sleep(0.02)
                while not app.stopping.is_set():
                    kill.send(b"stop")  # a SUB that joined late misses one: send until heard
                    gevent.sleep(0.02)

            sent = time.monotonic()
            q.request(wid, b"x")
            presser = gevent.spawn(press_kill_switch)
            (reply,) = q.replies(1)
            took = time.monotonic() - sent
            assert reply == [b"client", b"", b"burnt x"]
            during = [t for t in q.beats if t < sent + took]
            gaps = [b - a for a, b in zip([sent, *during], [*during, sent + took], strict=True)]
            print(f"offload={offload}: {len(during)} heartbeats in {took:.2f} s, "
                  f"longest gap {max(gaps):.3f} s")  # fmt: skip
            if offload is None:
                assert not during  # the hub did nothing else meanwhile
                (blocked,) = events("handler.blocked_hub")
                assert blocked["seconds"] >= 1.0 and "offload='thread'" in blocked["fix"]
                assert blocked["handler"] == "tests.offload_apps:burn_for"
            else:
                assert max(gaps) < 3 * HB, gaps  # within the liveness window, every time
                assert len(during) >= 3
                assert not events("handler.blocked_hub")
            presser.get(timeout=5)
            if offload is not None:
                q.until_left(1)  # the stop came during the handler: reply first, then DISCONNECT
            # inline, this queue (which sends no heartbeats) was silent for the whole
            # blocked second: the worker gave its link up and leaves without a goodbye
            assert g.get(timeout=10) == 0
            assert app.stop_reason == "kill switch"
        finally:
            app.stop()
            g.join(10)
            kill.close(linger=0)
            q.close()

    @pytest.mark.deadline(40)
    @pytest.mark.parametrize("offload", ["thread", "process"])
    def test_handler_errors_become_error_replies(self, offload: str, ctx: Any, logs: Any) -> None:
        """A raising handler gets the error reply; a dead pool process too; the worker goes on."""
        events = logs()
        q = FakeQueue(ctx)
        app = PPPWorkerService(trouble, endpoint=q.endpoint, heartbeat=HB, offload=offload)
        g = serve(app)
        try:
            (wid,) = q.ready()
            bodies = [b"boom", b"crash", b"after"] if offload == "process" else [b"boom", b"after"]
            got = []
            for body in bodies:
                q.request(wid, body)
                got.append(q.replies(1)[0][-1])
            expect = {b"boom": b"error: ZeroDivisionError", b"crash": b"error: BrokenProcessPool",
                      b"after": b"ok after"}  # fmt: skip
            assert got == [expect[b] for b in bodies]
            failed = events("worker.handler_failed")
            assert "ZeroDivisionError('boom')" in failed[0]["error"]
            assert "in trouble" in failed[0]["traceback"]  # where it was raised, in any offload
            if offload == "process":
                assert events("offload.pool_broken")[0]["restarts"] == 1
            app.stop()
            q.until_left(1)
            assert g.get(timeout=10) == 0
        finally:
            app.stop()
            g.join(10)
            q.close()

    @pytest.mark.slow
    @pytest.mark.deadline(40)
    def test_process_pool_of_two_runs_two_requests_in_half_the_time(
        self, ctx: Any, tmp_path: Path
    ) -> None:
        """``pool=2``: the queue sees two workers, and two requests take about as long as one.

        Each round times one request alone, then two at once: the machine is shared and
        its load drifts, so the two are compared round by round (median of three).
        """
        record = tmp_path / "runs.txt"
        q = FakeQueue(ctx)
        app = PPPWorkerService(
            functools.partial(burn, 0.4, str(record)),  # 0.4 s of CPU each
            endpoint=q.endpoint,
            heartbeat=HB,
            offload="process",
            pool=2,
        )
        g = serve(app)
        try:
            a, b = q.ready(2)
            ratios = []
            for i in range(3):
                t0 = time.monotonic()
                q.request(a, b"alone%d" % i)
                assert q.replies(1)[0][-1] == b"done alone%d" % i
                alone = time.monotonic() - t0
                t0 = time.monotonic()
                q.request(a, b"a%d" % i, b"c1")
                q.request(b, b"b%d" % i, b"c2")
                assert sorted(r[-1] for r in q.replies(2)) == [b"done a%d" % i, b"done b%d" % i]
                ratios.append((time.monotonic() - t0) / (2 * alone))
            runs = executions(record)
            print(f"two at once / two alone: {', '.join(f'{r:.2f}' for r in ratios)}")
            assert len({pid for _, pid, _, _ in runs}) == 2
            assert most_at_once(runs) == 2
            # the ratio is printed, not asserted (a throughput figure on a shared machine:
            # 0.45-0.83 on a busy one, 1.16 once beside a full tox run); that the two ran
            # at once is asserted above from the runs' own start and end times
            app.stop()
            q.until_left(2)
            assert g.get(timeout=10) == 0
        finally:
            app.stop()
            g.join(10)
            q.close()


class TestInlinePool:
    @pytest.mark.deadline(30)
    def test_inline_pool_of_two_waits_green_side_by_side(self, ctx: Any) -> None:
        """``offload=None, pool=2``: two handlers that wait green run at the same time."""
        q = FakeQueue(ctx)
        app = PPPWorkerService(
            lambda body: gevent.sleep(0.5) or [body[0]], endpoint=q.endpoint, heartbeat=HB, pool=2
        )
        g = serve(app)
        try:
            a, b = q.ready(2)
            t0 = time.monotonic()
            q.request(a, b"1", b"c1")
            q.request(b, b"2", b"c2")
            assert sorted(r[-1] for r in q.replies(2)) == [b"1", b"2"]
            assert time.monotonic() - t0 < 0.9  # one after the other: 1.0 s at least
            app.stop()
            q.until_left(2)
            assert g.get(timeout=10) == 0
        finally:
            app.stop()
            g.join(10)
            q.close()


class TestTutorialWorkers:
    @pytest.mark.deadline(30)
    def test_ppworker_squares_in_a_process_pool(self, ctx: Any) -> None:
        """``services.ppworker:app(offload="process", pool=2)``: its handler pickles and serves."""
        from services.majordomo import worker
        from services.ppworker import PPWorker

        assert worker(offload="thread", pool=3).offload.mode == "thread"
        q = FakeQueue(ctx)
        app = PPWorker(heartbeat=HB, offload="process", pool=2)
        g = gevent.spawn(app.serve, {"backend": q.endpoint, "kill": free_endpoint()},
                         install_signals=False)  # fmt: skip
        try:
            a, b = q.ready(2)
            q.request(a, b"7")
            q.request(b, b"x")
            assert sorted(r[-1] for r in q.replies(2)) == [b"49", b"error: not an integer: x"]
            app.stop()
            q.until_left(2)
            assert g.get(timeout=10) == 0
        finally:
            app.stop()
            g.join(10)
            q.close()


class TestConfig:
    def test_bad_offload_settings_are_one_line_errors(self) -> None:
        with pytest.raises(ConfigError, match=r"^offload must be None, 'thread' or 'process', "
                           r"got 'gpu'$"):  # fmt: skip
            PPPWorkerService(trouble, offload="gpu")
        with pytest.raises(ConfigError, match=r"^pool must be a positive integer, got 0$"):
            PPPWorkerService(trouble, offload="thread", pool=0)
        with pytest.raises(ConfigError, match=r"^offload='process' needs a picklable handler"):
            Offload(lambda body: body, "process")
        Offload(lambda body: body, "thread")  # threads take any callable

    def test_launcher_refuses_a_bad_offload_before_forking(self) -> None:
        """``greenzmq 'app(offload=...)'``: one line and exit 2."""
        r = subprocess.run(
            [sys.executable, "-m", "greenzmq", "tests.offload_apps:ppp(offload='gpu')"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            "greenzmq: error: offload must be None, 'thread' or 'process', got 'gpu'"
        ]


# -- the acceptance: real processes behind the real queue and broker -------------
def five_clients(ask: Any, n: int = 10) -> tuple[dict[str, list[bytes]], float]:
    """``n`` requests from 5 concurrent clients (``ask(client, body)``); replies, wall time."""
    got: dict[str, list[bytes]] = {}

    def client(c: int) -> None:
        for k in range(c, n, 5):
            body = f"r{k}"
            got[body] = ask(c, body.encode())

    t0 = time.monotonic()
    gevent.joinall([gevent.spawn(client, c) for c in range(5)], raise_error=True)
    return got, time.monotonic() - t0


def executions(record: Path) -> list[tuple[str, int, float, float]]:
    """The handler's runs: (body, pid, start, end)."""
    out = []
    for line in record.read_text().splitlines():
        body, pid, start, end = line.split()
        out.append((body, int(pid), float(start), float(end)))
    return out


def most_at_once(runs: list[tuple[str, int, float, float]]) -> int:
    """The largest number of runs in progress at one instant."""
    edges = sorted([(s, 1) for _, _, s, _ in runs] + [(e, -1) for _, _, _, e in runs])
    now = best = 0
    for _, d in edges:
        now += d
        best = max(best, now)
    return best


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
class TestAcceptance:
    @pytest.mark.deadline(240)
    def test_ppp_process_pool_cpu_bound_3_5_s(
        self, service: Any, endpoint: Any, ctx: Any, tmp_path: Path
    ) -> None:
        """Behind the PPP queue (1 s heartbeats, 3 s window): a 3.5 s pure-CPU handler in a
        pool of 2 processes. 10 of 10 answered, no expiry, no duplicate run, two at once
        (wall time against one request alone), and SIGTERM mid-handler still delivers."""
        record = tmp_path / "runs.txt"
        fe, be = endpoint(), endpoint()
        q = service("services.ppqueue:make(heartbeat=1.0)",
                    "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}")  # fmt: skip
        q.wait_started()
        w = service(
            "tests.offload_apps:ppp(offload='process', pool=2, seconds=3.5, "
            f"record={str(record)!r}, heartbeat=1.0)",
            "--endpoint",
            f"backend={be}",
        )
        wait_for(lambda: len(q.events("ppqueue.worker_ready")) >= 2, 20, "2 workers ready")
        # the fifth client waits three rounds of 3.5 s of CPU: 10.5 s on an idle machine,
        # 30 s and more beside other test runs; a retry would run a request twice
        clients = [LazyPirate(fe, timeout=90, retries=2, ctx=ctx) for _ in range(5)]
        try:
            got, wall = five_clients(lambda c, body: clients[c].request(body))
        finally:
            for c in clients:
                c.close()
        assert got == {b: [b"done " + b.encode()] for b in got} and len(got) == 10
        runs = executions(record)
        dup = sum(n - 1 for n in Counter(r[0] for r in runs).values())

        # one request alone, and SIGTERM to the whole process group while it runs (as
        # systemd does): the pool processes ignore it, the worker stops gracefully
        req = ctx.socket(zmq.REQ)
        req.connect(fe)
        t0 = time.monotonic()
        req.send(b"last")
        wait_for(lambda: len(w.events("hop", op="recv")) >= 11, 10, "the worker holds it")
        os.killpg(w.pid, signal.SIGTERM)
        with gevent.Timeout(15):
            assert req.recv() == b"done last"
        alone = time.monotonic() - t0
        req.close(linger=0)
        assert w.wait(15) == 0
        pids = {r[1] for r in executions(record)}
        wait_for(lambda: all(gone(p) for p in pids), 10, "the pool processes gone")
        q.signal(signal.SIGTERM)
        assert q.wait(15) == 0
        counts = q.wait_event("ppqueue.stats")["counts"]
        expired = counts.get("workers expired", 0) + len(q.events("ppqueue.worker_lost"))
        print(f"\nPPP, process pool of 2, 3.5 s of CPU per request: 10/10 answered, "
              f"{expired} expiries, {dup} duplicate runs; runs took "
              f"{min(r[3] - r[2] for r in runs):.2f}-{max(r[3] - r[2] for r in runs):.2f} s, "
              f"at most {most_at_once(runs)} at once; 10 requests in {wall:.2f} s (one at a "
              f"time: 35 s of CPU at least), one alone {alone:.2f} s")  # fmt: skip
        assert expired == 0 and dup == 0
        assert counts.get("requeued", 0) == 0
        # two at once, in two processes, from the runs' own start and end times (the
        # wall time is printed, not asserted: 17.9 s idle, 46 s beside a full tox run)
        assert most_at_once(runs) == 2 and len(pids) == 2
        assert not w.events("worker.hub_blocked") and not w.events("handler.blocked_hub")

    @pytest.mark.deadline(60)
    def test_pool_processes_follow_a_sigkilled_worker(self, service: Any, endpoint: Any) -> None:
        """A worker SIGKILLed (no shutdown) leaves no pool process behind: they watch it."""
        w = service("tests.offload_apps:ppp(offload='process', pool=2)",
                    "--endpoint", f"backend={endpoint()}")  # fmt: skip
        started = w.wait_event("offload.started", 20)
        assert len(started["pids"]) == 2
        os.kill(started["pid"], signal.SIGKILL)  # the serving process, not the launcher
        t0 = time.monotonic()
        wait_for(lambda: all(gone(p) for p in started["pids"]), 10, "the pool processes gone")
        print(f"\npool processes gone {time.monotonic() - t0:.2f} s after their owner's SIGKILL")

    @pytest.mark.deadline(180)
    def test_majordomo_thread_cpu_bound_with_stats_and_sigterm(
        self, service: Any, endpoint: Any, ctx: Any, tmp_path: Path
    ) -> None:
        """Behind Majordomo (0.2 s heartbeats, 0.6 s window): a 1 s pure-Python handler in a
        thread. 10 of 10, no expiry, no duplicate; the stats endpoint answers at once while
        a handler runs; SIGTERM mid-handler still delivers."""
        record = tmp_path / "runs.txt"
        ep = endpoint()
        b = service("services.majordomo:make(heartbeat=0.2)", "--endpoint", f"broker={ep}")
        b.wait_started()
        w = service(
            "tests.offload_apps:mdp(offload='thread', seconds=1.0, "
            f"record={str(record)!r}, heartbeat=0.2)",
            "--endpoint",
            f"broker={ep}",
            env={STATS_ENV: f"ipc://{tmp_path}/{{service}}.ipc"},
        )
        wait_for(lambda: b.events("mdp.worker_ready"), 20, "the worker ready")
        stats = f"ipc://{tmp_path}/mdpworker.ipc"
        lag: list[float] = []

        def ask_stats() -> None:
            green_wait_for(record.exists, 20, "a first run")  # busy from now on
            for _ in range(3):
                t0 = time.monotonic()
                snap = fetch(stats, timeout=2.0)
                lag.append(time.monotonic() - t0)
                assert snap["sockets"]["broker"]["msgs_in"] > 0
                gevent.sleep(0.3)

        clients = [MDPClient(ep, timeout=60, retries=2, ctx=ctx) for _ in range(5)]
        try:
            watcher = gevent.spawn(ask_stats)
            got, wall = five_clients(lambda c, body: clients[c].request("burn", body))
            watcher.get(timeout=10)
        finally:
            for c in clients:
                c.close()
        assert got == {b: [b"done " + b.encode()] for b in got} and len(got) == 10
        runs = executions(record)
        dup = sum(n - 1 for n in Counter(r[0] for r in runs).values())

        with MDPClient(ep, timeout=15, retries=1, ctx=ctx) as last:
            pending = gevent.spawn(last.request, "burn", b"last")
            green_wait_for(lambda: len(executions(record)) >= 10 and
                     len(w.events("hop", op="recv")) >= 11, 10, "the worker holds it")  # fmt: skip
            w.signal(signal.SIGTERM)
            assert pending.get(timeout=15) == [b"done last"]
        assert w.wait(15) == 0
        b.signal(signal.SIGTERM)
        assert b.wait(15) == 0
        counts = b.wait_event("mdp.stats")["counts"]
        expired = counts.get("workers expired", 0) + len(b.events("mdp.worker_lost"))
        print(f"\nMajordomo, thread, 1 s of CPU per request: 10/10 answered, {expired} expiries, "
              f"{dup} duplicate runs; 10 requests in {wall:.2f} s; stats answered in "
              f"{', '.join(f'{x * 1000:.0f}' for x in lag)} ms while busy")  # fmt: skip
        assert expired == 0 and dup == 0
        assert max(lag) < 1.5  # a hang would be the 2 s timeout; idle: 6-17 ms
        assert not w.events("worker.hub_blocked") and not w.events("handler.blocked_hub")
