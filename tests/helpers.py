"""Test helpers: free endpoints, service processes, waiting with deadlines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from greenzmq.tools.demo import read_events

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` on a free port."""
    return f"tcp://127.0.0.1:{free_port()}"


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def green_wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Like :func:`wait_for` inside a gevent program: waits with ``gevent.sleep``.

    ``time.sleep`` would block the hub, so the greenlets that make ``cond`` true
    would never run.
    """
    import gevent

    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        gevent.sleep(delay)
        delay = min(delay * 2, 0.05)


class ServiceProcess:
    """``python -m greenzmq ARGS`` in its own process group, JSON logs to a file."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.stderr_path = log.with_suffix(".stderr")
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "greenzmq",
                *self.args,
                "--log-format",
                "json",
                "--log-file",
                str(log),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Logged events, optionally only those named ``event`` with fields ``match``."""
        return [
            e
            for e in read_events(self.log)
            if (event is None or e.get("event") == event)
            and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_event(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Wait for an event; fail with the process output if it exits first."""

        def found() -> Any:
            evs = self.events(event, **match)
            if evs:
                return evs[0]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.args} exited {self.proc.returncode} before {event!r}:\n{self.output()}"
                )
            return None

        return wait_for(found, timeout, f"{event!r} from {self.args}")

    def drop_counts(self) -> Counter[str]:
        """Drops by reason: the ones logged, plus the ones the rate limit counted instead.

        Held-back counts are logged when their window ends or the service closes.
        """
        counts = Counter(str(d.get("reason")) for d in self.events("hop", op="drop"))
        for e in self.events("drops_suppressed"):
            counts[str(e["reason"])] += int(e["count"])
        return counts

    def wait_started(self, timeout: float = 15.0) -> None:
        """Wait until the service logged ``service.start`` (its sockets exist)."""
        self.wait_event("service.start", timeout)

    def output(self) -> str:
        """What the process printed outside its log file."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for exit; AssertionError (not a hang) after ``timeout`` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args} still running after {timeout} s") from None

    def stop(self) -> None:
        """Make sure the process group is gone (always safe to call)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._stderr.close()
