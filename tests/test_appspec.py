"""App specs: gunicorn's grammar, precise one-line errors, the pre-fork check (scenario 4)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from greenzmq.errors import AppImportError, ConfigError
from greenzmq.launcher.appspec import AppSpec, as_service, check_app, load_app, parse_app_spec

from .helpers import ROOT, ServiceProcess, free_endpoint, free_port


class TestParse:
    """Parsing imports nothing."""

    @pytest.mark.parametrize(
        ("text", "want"),
        [
            ("services.broker:app", AppSpec("services.broker", "app", text="services.broker:app")),
            ("services.broker", AppSpec("services.broker", "app", text="services.broker")),
            (
                "services.killswitch:app(2, wait=1.5)",
                AppSpec(
                    "services.killswitch",
                    "app",
                    True,
                    (2,),
                    {"wait": 1.5},
                    "services.killswitch:app(2, wait=1.5)",
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
        """`mod:factory(args)` calls the factory (a Service class too); a wrong signature is
        one line."""
        ks = load_app("services.killswitch:app(expect=3)")
        assert ks.expect == 3
        with pytest.raises(AppImportError, match="calling app failed"):
            load_app("services.killswitch:app(nope=1)")
        from greenzmq import PPPQueue

        # a factory that is not its class's constructor: it adds CURVE
        assert isinstance(load_app("services.ppqueue:make(heartbeat=0.2)"), PPPQueue)

    def test_roles_load_under_both_names(self, tmp_path: Path) -> None:
        """Every role imports as services.X (repository root) and greenzmq.services.X."""
        import importlib

        for path in sorted((ROOT / "services").glob("*.py")):
            for pkg in ("services", "greenzmq.services"):
                mod = importlib.import_module(f"{pkg}.{path.stem}")
                # the same source: the repository's file, or its copy in an installed wheel
                assert Path(mod.__file__ or "").read_bytes() == path.read_bytes()
        assert as_service(load_app("greenzmq.services.broker:app")).name == "broker"
        # from any directory, also one with its own services/ package
        (tmp_path / "services").mkdir()
        (tmp_path / "services" / "__init__.py").write_text("")
        r = subprocess.run(
            [sys.executable, "-m", "greenzmq", "--check-config", "greenzmq.services.client:app"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "(client-3)" in r.stdout + r.stderr

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


# every factory of a service in services/, named without its parentheses (the
# roles whose arguments are their constructor's have none: `app(...)` calls the class)
FACTORIES = (
    "services.majordomo:make",
    "services.majordomo:worker",
    "services.ppqueue:make",
)


class TestFactoryWithoutCall:
    """Issue 8.7: ``mod:factory`` (no parentheses) is refused before anything runs, exit 2."""

    def test_list_is_every_factory(self) -> None:
        """FACTORIES names every module-level function of services/ that returns a Service."""
        import importlib
        import inspect
        import typing

        from greenzmq import Service

        found = set()
        for path in sorted((ROOT / "services").glob("*.py")):
            mod = importlib.import_module(f"services.{path.stem}")
            for name, fn in vars(mod).items():
                if inspect.isfunction(fn) and fn.__module__ == mod.__name__:
                    ret = typing.get_type_hints(fn).get("return")
                    if isinstance(ret, type) and issubclass(ret, Service):
                        found.add(f"{mod.__name__}:{name}")
        assert found == set(FACTORIES)

    def test_refused_in_process(self) -> None:
        """load_app refuses with the fix; with the parentheses the factory is called."""
        with pytest.raises(AppImportError) as e:
            load_app("services.majordomo:worker")
        assert str(e.value) == (
            "'services.majordomo:worker' is a factory: it returns a Service "
            "(MDPWorkerService); call it: 'services.majordomo:worker()'"
        )
        assert load_app("services.majordomo:worker()").name == "mdpworker-square"

    def test_plain_callable_returning_none_stays_an_app(self) -> None:
        """Functions without a Service return annotation are plain callable apps."""

        def main() -> None:
            pass

        assert as_service(main).name == "main"

    def test_every_factory_refused_by_the_command(self, tmp_path: Path) -> None:
        """`greenzmq services.X:make`: one error line naming the fix, exit 2, nothing served."""
        procs = {
            spec: ServiceProcess([spec], tmp_path / f"f{i}.log") for i, spec in enumerate(FACTORIES)
        }
        try:
            for spec, p in procs.items():
                assert p.wait(30) == 2, f"{spec}: {p.output()}"
                lines = p.output().strip().splitlines()
                assert len(lines) == 1, lines
                assert lines[0].startswith(f"greenzmq: error: {spec!r} is a factory: "), lines
                assert lines[0].endswith(f"call it: '{spec}()'"), lines
                assert not p.events("service.start"), spec
        finally:
            for p in procs.values():
                p.stop()

    def test_check_config_refuses(self) -> None:
        """--check-config says the same, exit 2 (a configuration error)."""
        r = subprocess.run(
            [sys.executable, "-m", "greenzmq", "--check-config", "services.ppqueue:make"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2
        assert "'services.ppqueue:make' is a factory" in r.stderr
