"""The README shows what the tests run: its marked examples are executed here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from .helpers import ROOT, ServiceProcess, free_endpoint

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(
    r"<!-- readme-test: (?P<kind>run|module (?P<mod>\w+)) -->\n```python\n(?P<code>.*?)```", re.S
)
BLOCKS = [(m.group("kind"), m.group("mod"), m.group("code")) for m in BLOCK.finditer(README)]
RUN = [code for kind, _, code in BLOCKS if kind == "run"]
MODULES = {mod: code for kind, mod, code in BLOCKS if mod}


class TestReadme:
    def test_examples_are_found(self) -> None:
        """The README has runnable examples (guards the regex above)."""
        assert len(RUN) >= 2 and "echoapp" in MODULES

    @pytest.mark.parametrize("code", RUN, ids=[f"run{i}" for i in range(len(RUN))])
    def test_run_example(self, code: str, tmp_path: Path) -> None:
        """Each `run` example executes without error in a fresh interpreter."""
        script = tmp_path / "example.py"
        script.write_text(code)
        r = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr

    @pytest.mark.deadline(120)
    def test_testing_example(self, tmp_path: Path) -> None:
        """ "Testing your services": the example tests pass with the installed plugin alone."""
        run_example_tests(tmp_path, ("echoapp", "test_echoapp"))

    @pytest.mark.deadline(120)
    def test_rpc_example(self, tmp_path: Path) -> None:
        """ "RPC services": the Calculator, its client and its tests (direct, through a
        broker, launched with two workers) pass with the installed plugin alone."""
        run_example_tests(tmp_path, ("calculator", "calc_client", "test_calculator"))

    def test_echo_service_example(self, tmp_path: Path) -> None:
        """The README's echo service answers over tcp and exits 0 on SIGTERM."""
        (tmp_path / "echoapp.py").write_text(MODULES["echoapp"])
        ep = free_endpoint()
        svc = ServiceProcess(
            [
                "echoapp:app",
                "--endpoint",
                f"requests={ep}",
                "--endpoint",
                f"kill={free_endpoint()}",
            ],
            tmp_path / "echo.log",
            env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        )
        try:
            svc.wait_started()
            ctx = zmq.Context()
            req = ctx.socket(zmq.REQ)
            req.linger = 0
            req.connect(ep)
            req.send_multipart([b"ping", b"2"])
            assert req.poll(10000), "no echo within 10 s"
            assert req.recv_multipart() == [b"ping", b"2"]
            req.close()
            ctx.term()
            svc.signal(signal.SIGTERM)
            assert svc.wait(10) == 0, svc.output()
        finally:
            svc.stop()


def run_example_tests(tmp_path: Path, modules: tuple[str, ...]) -> None:
    """Write the README's ``modules`` to a fresh project and run its test module (the last)
    with pytest, as a user would: all 3 tests pass."""
    for mod in modules:
        (tmp_path / f"{mod}.py").write_text(MODULES[mod])
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{modules[-1]}.py"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout
