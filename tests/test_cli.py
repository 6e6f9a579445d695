"""The command line as a person meets it: version, usage, help, exit codes, errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import greenzmq

from .helpers import ROOT, ServiceProcess, free_endpoint, free_port, wait_for

SUBCOMMANDS = ("demo", "keygen", "bench", "trace", "stats")


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m greenzmq ARGS`` from the worktree, with a deadline."""
    return subprocess.run(
        [sys.executable, "-m", "greenzmq", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


class TestVersionUsageHelp:
    def test_version(self) -> None:
        """`greenzmq --version` prints the package version and exits 0."""
        out = cli("--version")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"greenzmq {greenzmq.__version__}"

    def test_usage_line_names_the_subcommands(self) -> None:
        """The usage line (not only the prose) shows MODULE:APP and every subcommand."""
        out = cli("--help")
        assert out.returncode == 0
        usage = out.stdout.split("\n\n")[0]
        assert usage.startswith("usage: greenzmq [OPTIONS] MODULE:APP")
        for sub in SUBCOMMANDS:
            assert sub in usage, usage
        # a usage error shows the same usage line
        bad = cli("--bogus")
        assert bad.returncode == 2
        assert bad.stderr.startswith("usage: greenzmq [OPTIONS] MODULE:APP")

    @pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
    def test_help_has_no_markup(self, sub: str | None) -> None:
        """Help is plain text: no reStructuredText ``literals``, no Markdown `code`."""
        out = cli(*([sub] if sub else []), "--help")
        assert out.returncode == 0, out.stderr
        assert "``" not in out.stdout and "`" not in out.stdout, out.stdout

    def test_defaults_are_shown(self) -> None:
        """demo --deadline and stats --interval / --timeout say their defaults."""
        demo = flat(cli("demo", "--help").stdout)
        assert re.search(r"--deadline S [^()]*\(default 30 s\)", demo), demo
        stats = flat(cli("stats", "--help").stdout)
        assert re.search(r"--interval S [^()]*\(default 1 s\)", stats), stats
        assert re.search(r"--timeout S [^()]*\(default 2 s\)", stats), stats

    def test_demo_has_no_timeout_option(self) -> None:
        """The launcher's --timeout is a heartbeat timeout; the demo's budget is --deadline."""
        out = cli("demo", "--timeout", "1")
        assert out.returncode == 2
        assert "unrecognized arguments: --timeout" in out.stderr


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket holds (listening) for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


class TestExitCodes:
    @pytest.mark.parametrize("launcher", [[], ["-w", "1"]], ids=["single", "w1"])
    def test_port_in_use_is_one_config_error(self, held_port: int, launcher: list[str]) -> None:
        """A bind on a port in use: exactly one `greenzmq: error:` line on stderr, exit 2."""
        out = cli(
            "services.broker:app",
            *launcher,
            "--endpoint",
            f"frontend=tcp://127.0.0.1:{held_port}",
            "--log-format",
            "json",
        )
        lines = out.stderr.splitlines()
        assert out.returncode == 2, out.stderr
        assert len(lines) == 1, lines
        assert lines[0].startswith("greenzmq: error: cannot bind socket 'frontend' to ")
        assert "Address already in use" in lines[0]
        assert out.stdout == ""

    def test_readme_documents_exit_codes(self) -> None:
        """The README has an exit-code table: 0, 1 runtime failure, 2 usage or configuration."""
        readme = (ROOT / "README.md").read_text()
        section = readme[readme.index("### Exit codes") :]
        section = section[: section.index("\n#")]
        assert "| 0 |" in section and "| 1 |" in section and "| 2 |" in section


class TestCheckConfig:
    """--check-config and the real start share their validation: same verdict, same line."""

    @pytest.mark.parametrize(
        ("extra", "env", "needle"),
        [
            ([], {"GREENZMQ_STATS": "tcp://127.0.0.1:5999"}, "must be ipc://PATH"),
            ([], {"GREENZMQ_STATS": "ipc://@abstract"}, "abstract sockets have no permissions"),
            ([], {"GREENZMQ_STATS": "ipc:///nonexistent-dir/x.ipc"}, "'/nonexistent-dir'"),
            (["--log-file", "/nonexistent-dir/x.log"], {}, "--log-file: directory"),
            (["--pid", "/nonexistent-dir/x.pid"], {}, "--pid: directory"),
            (["--endpoint", "front=tcp://127.0.0.1:1"], {}, "unknown endpoint name 'front'"),
            (["-w", "2"], {"GREENZMQ_STATS": "ipc:///tmp/one.ipc"}, "put {pid} in the path"),
        ],
        ids=[
            "stats-tcp",
            "stats-abstract",
            "stats-dir",
            "log-file",
            "pid",
            "endpoint-name",
            "stats-shared",
        ],
    )
    def test_both_reject_with_the_same_line(
        self, extra: list[str], env: dict[str, str], needle: str
    ) -> None:
        """Whatever stops the real start makes --check-config exit 2 with the same message."""
        eps = [f"--endpoint={n}=tcp://127.0.0.1:{free_port()}" for n in ("frontend", "backend")]
        args = ["services.broker:app", *eps, *extra]
        check = cli("--check-config", *args, env=env)
        real = cli(*args, "--log-format", "json", env=env)
        assert (check.returncode, real.returncode) == (2, 2), (check.stderr, real.stderr)
        assert check.stdout == ""
        assert len(real.stderr.splitlines()) == 1, real.stderr
        assert check.stderr == real.stderr
        assert check.stderr.startswith("greenzmq: error: ") and needle in check.stderr

    def test_good_paths_pass_the_check(self, tmp_path: Path) -> None:
        """Paths for stats, log and pid that would work pass; the check creates nothing."""
        out = cli(
            "--check-config",
            "services.broker:app",
            "--log-file",
            str(tmp_path / "x.log"),
            "--pid",
            str(tmp_path / "x.pid"),
            env={"GREENZMQ_STATS": f"ipc://{tmp_path}/{{service}}-{{pid}}.ipc"},
        )
        assert out.returncode == 0, out.stderr
        assert "config OK" in out.stdout
        assert not list(tmp_path.iterdir())  # a check creates nothing


class TestTrace:
    @pytest.mark.parametrize(
        "content",
        ["", "2026-12-02 08:00 [info] service.start\n", '{"event": "service.start"}\n'],
        ids=["empty", "console-log", "json-without-hops"],
    )
    def test_file_without_hops_is_an_error(self, tmp_path: Path, content: str) -> None:
        """No hop events in the files: exit 2 and one line naming the file, not '0 hops'."""
        log = tmp_path / "svc.log"
        log.write_text(content)
        out = cli("trace", str(log))
        assert out.returncode == 2, out.stdout
        assert out.stdout == ""
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("greenzmq trace: error: no hop events in ")
        assert str(log) in lines[0]


class TestStats:
    def test_missing_ipc_path_says_so(self, tmp_path: Path) -> None:
        """No file at the path: no service serves there (it removes its file on exit): exit 1."""
        path = tmp_path / "nobody.ipc"
        out = cli("stats", f"ipc://{path}", "--timeout", "5")
        assert out.returncode == 1
        assert out.stderr.splitlines() == [
            f"greenzmq stats: error: {path} does not exist (is the service running with "
            f"GREENZMQ_STATS=ipc://{path}?)"
        ]

    def test_help_names_the_env_var(self) -> None:
        """stats --help says how a service gets a control endpoint."""
        assert "GREENZMQ_STATS" in cli("stats", "--help").stdout

    @pytest.mark.deadline(90)
    @pytest.mark.parametrize("launcher", [[], ["-w", "2"]], ids=["single", "w2"])
    def test_ipc_file_removed_on_exit(self, tmp_path: Path, launcher: list[str]) -> None:
        """SIGTERM: every worker's stats ipc file is gone once the service exited."""
        log = tmp_path / "svc.log"
        p = ServiceProcess(
            ["services.worker:app", *launcher, "--endpoint", f"backend={free_endpoint()}"],
            log,
            env={"GREENZMQ_STATS": f"ipc://{tmp_path}/{{service}}-{{pid}}.ipc"},
        )
        try:
            n = 2 if launcher else 1
            wait_for(lambda: len(list(tmp_path.glob("*.ipc"))) == n, 30, f"{n} stats files")
            ctl = f"ipc://{next(tmp_path.glob('*.ipc'))}"
            assert cli("stats", ctl, "--json").returncode == 0
            p.signal(signal.SIGTERM)
            assert p.wait(30) == 0, p.output()
            assert list(tmp_path.glob("*.ipc")) == []
        finally:
            p.stop()


class TestRepeatedEndpoint:
    def test_repeated_means_every_broker(self) -> None:
        """Two --endpoint for one socket give it both addresses (a worker registers with both)."""
        a, b = free_endpoint(), free_endpoint()
        args = ("services.ppworker:app", "--endpoint", f"backend={a}", f"--endpoint=backend={b}")
        out = cli(*args, "--print-config")
        assert out.returncode == 0, out.stderr
        assert f"endpoint = {{'backend': [{a!r}, {b!r}]}}" in out.stdout.splitlines()
        assert cli(*args, "--check-config").returncode == 0

    def test_same_address_twice_on_the_command_line(self) -> None:
        """The same address twice for one socket: exit 2, naming the socket and the address."""
        a = free_endpoint()
        out = cli("services.broker:app", "--endpoint", f"frontend={a}", f"--endpoint=frontend={a}")
        assert out.returncode == 2
        assert out.stderr.splitlines() == [
            f"greenzmq: error: --endpoint: socket 'frontend' is given {a} twice"
        ]

    def test_same_address_twice_in_the_env_var(self) -> None:
        """The same within GREENZMQ_CMD_ARGS, which the message names."""
        a = free_endpoint()
        env = {"GREENZMQ_CMD_ARGS": f"--endpoint backend={a} --endpoint backend={a}"}
        out = cli("services.broker:app", "--check-config", env=env)
        assert out.returncode == 2
        assert out.stderr.splitlines() == [
            f"greenzmq: error: GREENZMQ_CMD_ARGS: --endpoint: socket 'backend' is given {a} twice"
        ]

    def test_config_file_list_and_dict(self, tmp_path: Path) -> None:
        """A config file names several addresses as a repeated item or a dict of lists."""
        conf = tmp_path / "c.py"
        conf.write_text('endpoint = ["kill=tcp://127.0.0.1:1", "kill=tcp://127.0.0.1:1"]\n')
        out = cli("-c", str(conf), "services.broker:app", "--check-config")
        assert out.returncode == 2
        assert "socket 'kill' is given tcp://127.0.0.1:1 twice" in out.stderr
        assert str(conf) in out.stderr
        conf.write_text('endpoint = {"backend": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]}\n')
        out = cli("-c", str(conf), "services.ppworker:app", "--print-config")
        assert out.returncode == 0, out.stderr
        want = "endpoint = {'backend': ['tcp://127.0.0.1:1', 'tcp://127.0.0.1:2']}"
        assert want in out.stdout.splitlines()

    def test_two_binds_for_two_workers_still_refused(self) -> None:
        """-w 2 with two tcp binds without a placeholder: the shared-bind error, exit 2."""
        a, b = free_endpoint(), free_endpoint()
        out = cli("services.broker:app", "-w", "2", "--check-config",
                  "--endpoint", f"frontend={a}", "--endpoint", f"frontend={b}")  # fmt: skip
        assert out.returncode == 2
        assert f"binds {a} and 2 workers cannot bind one address" in out.stderr

    def test_later_layer_still_overrides(self, tmp_path: Path) -> None:
        """file < env < CLI for one socket is fine: each layer names it once."""
        conf = tmp_path / "c.py"
        conf.write_text('endpoint = {"frontend": "tcp://127.0.0.1:1"}\n')
        env = {"GREENZMQ_CMD_ARGS": "--endpoint frontend=tcp://127.0.0.1:2"}
        out = cli(
            "-c", str(conf), "services.broker:app", "--endpoint", "frontend=tcp://127.0.0.1:3",
            "--print-config", env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "endpoint = {'frontend': 'tcp://127.0.0.1:3'}" in out.stdout.splitlines()
