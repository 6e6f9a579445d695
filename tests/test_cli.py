"""The command line as a person meets it: version, usage, help, exit codes, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import greenzmq

from .helpers import ROOT

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
