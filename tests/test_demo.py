"""The main job: ``greenzmq demo`` runs both tutorial scenarios end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .helpers import ROOT


class TestDemo:
    def test_demo_passes_and_keeps_hop_logs(self, tmp_path: Path) -> None:
        """The demo exits 0 within 30 s, reports every check, and leaves joinable JSON logs.

        It runs from a user's project that has its own ``services`` package
        (issue 9.3): the demo's roles are ``greenzmq.services.*``, which that
        package cannot shadow.
        """
        project = tmp_path / "project"
        (project / "services").mkdir(parents=True)
        (project / "services" / "__init__.py").write_text('"""A user\'s own services."""\n')
        logdir = tmp_path / "logs"
        r = subprocess.run(
            [sys.executable, "-m", "greenzmq", "demo", "--log-dir", str(logdir)],
            cwd=project,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        assert "tasks received 5/5" in out
        assert out.count("weather updates 5/5") == 2
        for i in (1, 2, 3):
            assert f"client-{i}: {i}/{i} replies checked" in out
        assert "broker forwarded 6 requests and 6 replies" in out
        assert "demo: OK" in out
        # every process wrote JSON lines; the broker's forwards carry keys
        logs = {p.stem: p for p in logdir.glob("*.log")}
        assert {"broker", "listener-poller", "listener-tasks", "worker-1", "client-3"} <= set(logs)
        hops = [json.loads(line) for line in logs["broker"].read_text().splitlines()]
        forwards = [e for e in hops if e.get("event") == "hop" and e.get("op") == "forward"]
        assert len(forwards) == 12 and all(e["key"] for e in forwards)

    def test_demo_fails_loudly_when_it_cannot_finish(self, tmp_path: Path) -> None:
        """With no time to finish, the demo exits non-zero and says what it waited for."""
        r = subprocess.run(
            [sys.executable, "-m", "greenzmq", "demo", "--deadline", "0.01"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0
        assert "--deadline of 0.01 s passed" in r.stderr and "demo: FAILED" in r.stdout
