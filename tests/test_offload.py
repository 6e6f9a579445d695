"""Handlers off the hub (issue 10, section 1): ``offload=None | "thread" | "process"``.

In-process tests put a PPP worker in front of a fake queue (a raw ROUTER in
the test) that answers heartbeats and times them: a CPU-bound handler inline
stops them; offloaded, they keep coming, the kill switch works meanwhile and
the reply still goes out. The slow tests are the issue's acceptance with real
processes behind the real PPP queue and Majordomo broker.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from greenzmq.core.offload import Offload
from greenzmq.errors import ConfigError
from greenzmq.patterns.ppp import DISCONNECT, HEARTBEAT, READY, PPPWorkerService

from .helpers import ROOT, free_endpoint
from .offload_apps import burn, burn_for, rounds_per_second, trouble

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
            q.until_left(1)  # the stop came during the handler: reply first, then DISCONNECT
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

    @pytest.mark.deadline(40)
    def test_process_pool_of_two_runs_two_requests_at_once(self, ctx: Any, tmp_path: Path) -> None:
        """``pool=2``: the queue sees two workers, and their handlers run at the same time."""
        record = tmp_path / "runs.txt"
        rounds = rounds_per_second() // 2  # about 0.5 s each
        q = FakeQueue(ctx)
        app = PPPWorkerService(
            functools.partial(burn, rounds, str(record)),
            endpoint=q.endpoint,
            heartbeat=HB,
            offload="process",
            pool=2,
        )
        g = serve(app)
        try:
            a, b = q.ready(2)
            q.request(a, b"1", b"c1")
            q.request(b, b"2", b"c2")
            assert sorted(r[-1] for r in q.replies(2)) == [b"done 1", b"done 2"]
            runs = [line.split() for line in record.read_text().splitlines()]
            assert sorted(r[0] for r in runs) == ["1", "2"]
            (_, pid1, s1, e1), (_, pid2, s2, e2) = runs
            assert pid1 != pid2
            assert float(s1) < float(e2) and float(s2) < float(e1)  # the runs overlap
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
