"""App specs: gunicorn's grammar, precise one-line errors, the pre-fork check (scenario 4)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from greenzmq.appspec import AppSpec, as_service, check_app, load_app, parse_app_spec
from greenzmq.errors import AppImportError, ConfigError

from .helpers import ROOT, ServiceProcess, free_endpoint, free_port


class TestParse:
    """Parsing imports nothing."""

    @pytest.mark.parametrize(
        ("text", "want"),
        [
            ("services.broker:app", AppSpec("services.broker", "app", text="services.broker:app")),
            ("services.broker", AppSpec("services.broker", "app", text="services.broker")),
            (
                "services.killswitch:make(2, wait=1.5)",
                AppSpec(
                    "services.killswitch",
                    "make",
                    True,
                    (2,),
                    {"wait": 1.5},
                    "services.killswitch:make(2, wait=1.5)",
                ),
            ),
        ],
    )
    def test_good(self, text: str, want: AppSpec) -> None:
        """mod:attr, mod (means app), mod:factory(literals)."""
        assert parse_app_spec(text) == want

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("services.broker:app(", "failed to parse 'app(' as an attribute name or function"),
            ("services/broker.py", "did you mean 'services.broker:app'?"),
            ("broker.py", "did you mean 'broker:app'?"),
            ("services.broker:make(os.sep)", "factory arguments in 'make(os.sep)' must be"),
            ("services..broker:app", "invalid module name 'services..broker'"),
            ("", "empty app spec"),
        ],
    )
    def test_bad(self, text: str, needle: str) -> None:
        """Each error names the bad part."""
        with pytest.raises(AppImportError) as e:
            parse_app_spec(text)
        assert needle in str(e.value)


class TestLoad:
    """Loading imports the module and resolves the attribute (in a subprocess for the master)."""

    def test_missing_module_and_attribute(self) -> None:
        """`services.nope:app` and `services.broker:missing` are named exactly."""
        with pytest.raises(AppImportError, match=r"no module named 'services\.nope'"):
            load_app("services.nope:app")
        with pytest.raises(
            AppImportError, match=r"failed to find attribute 'missing' in 'services\.broker'"
        ):
            load_app("services.broker:missing")

    def test_factory_is_called(self) -> None:
        """`mod:factory(args)` calls the factory; a wrong signature is one line."""
        ks = load_app("services.killswitch:make(expect=3)")
        assert ks.expect == 3
        with pytest.raises(AppImportError, match="calling make failed"):
            load_app("services.killswitch:make(nope=1)")

    def test_import_error_inside_the_app_keeps_its_traceback(self) -> None:
        """The app's own exception propagates as itself."""
        with pytest.raises(RuntimeError, match="boom at import time"):
            load_app("tests.launcher_boom:app")

    def test_as_service(self) -> None:
        """A Service class is instantiated; a callable is wrapped; anything else refused."""
        assert as_service(load_app("services.broker:app")).name == "broker"
        assert as_service(lambda: None).name == "<lambda>"
        with pytest.raises(AppImportError, match="neither a greenzmq Service nor a callable"):
            as_service(3)


class TestCheck:
    """The pre-fork check: endpoints for every worker index, tcp binds and -w."""

    def test_shared_tcp_bind_refused_for_many_workers(self) -> None:
        """libzmq has no SO_REUSEPORT: -w 2 with a plain tcp bind is refused, with the fix."""
        with pytest.raises(ConfigError, match=r"socket 'frontend' binds .* 2 workers cannot"):
            check_app("services.broker:app", {}, 2)

    def test_placeholder_accepted(self) -> None:
        """`{BASE+wid}` binds are fine with -w N; the description lists the binds."""
        eps = {
            "frontend": "tcp://127.0.0.1:{20000+wid}",
            "backend": "tcp://127.0.0.1:{21000+wid}",
        }
        info = check_app("services.broker:app", eps, 4)
        assert info["service"] == "broker"
        assert {s["name"]: s["bind"] for s in info["sockets"]}["frontend"] == [eps["frontend"]]

    def test_placeholder_out_of_range(self) -> None:
        """The last worker's port must exist too."""
        with pytest.raises(ConfigError, match="port 65536 out of range"):
            check_app(
                "services.broker:app",
                {"frontend": "tcp://127.0.0.1:{65534+wid}", "backend": "tcp://127.0.0.1:{1+wid}"},
                3,
            )

    def test_unknown_endpoint_name(self) -> None:
        """An endpoint name the service does not have is refused with its names."""
        with pytest.raises(ConfigError, match=r"unknown endpoint name 'nope'.*backend, frontend"):
            check_app("services.broker:app", {"nope": "tcp://127.0.0.1:1"}, 1)


class TestCommand:
    """Scenario 4 via `python -m greenzmq`: the message, non-zero exit, nothing forked or bound."""

    def test_bad_specs(self, tmp_path: Path) -> None:
        """The four bad specs, run in parallel; the broker's ports stay free."""
        fe, be = free_port(), free_port()
        eps = [
            f"--endpoint=frontend=tcp://127.0.0.1:{fe}",
            f"--endpoint=backend=tcp://127.0.0.1:{be}",
        ]
        cases = {
            "services.nope:app": "no module named 'services.nope'",
            "services.broker:missing": "failed to find attribute 'missing' in 'services.broker'",
            "services.broker:app(": "failed to parse 'app(' as an attribute name",
            "services/broker.py": "did you mean 'services.broker:app'?",
            "-w=2 services.broker:app": "2 workers cannot bind one address",
            "services.broker:app --endpoint=nope=tcp://127.0.0.1:1": "unknown endpoint name 'nope'",
        }
        procs = {
            spec: ServiceProcess([*spec.split(), *eps], tmp_path / f"{i}.log")
            for i, spec in enumerate(cases)
        }
        try:
            for spec, needle in cases.items():
                p = procs[spec]
                assert p.wait(15) == 2, p.output()
                lines = p.output().strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("greenzmq: error: "), lines
                assert needle in lines[0]
                # only the exec'd first worker (the check) ran: nothing forked, nothing served
                assert [e.get("exec") for e in p.events("worker.spawn")] in ([], [True])
                assert not p.events("master.start") and not p.events("service.start")
        finally:
            for p in procs.values():
                p.stop()
        for port in (fe, be):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # nothing was bound

    def test_check_config(self) -> None:
        """--check-config loads the app and validates endpoints: exit 0, or 2 with the reason."""

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "greenzmq", "--check-config", *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
            )

        ok = run("services.broker:app", f"--endpoint=frontend={free_endpoint()}")
        assert ok.returncode == 0, ok.stderr
        assert "config OK: services.broker:app (broker)" in ok.stdout
        bad = run("services.broker:app", "--endpoint=front=tcp://127.0.0.1:1")
        assert bad.returncode == 2
        assert "unknown endpoint name 'front'" in bad.stderr
        worse = run("services.broker:app(")
        assert worse.returncode == 2
