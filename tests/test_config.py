"""Settings declared once: precedence, validation, the config file, hooks, --print-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from greenzmq.errors import ConfigError
from greenzmq.launcher.config import (
    ENV_VAR,
    HOOK_NAMES,
    SETTINGS,
    build_parser,
    expand_endpoint,
    format_config,
    load_config,
    options_table,
)

from .helpers import ROOT


def conf(tmp_path: Path, text: str) -> str:
    """Write a config file; return its path."""
    p = tmp_path / "greenzmq.conf.py"
    p.write_text(text)
    return str(p)


class TestPrecedence:
    """defaults < file < env < CLI (scenario 10)."""

    def test_each_layer_overrides_the_one_below(self, tmp_path: Path) -> None:
        """workers from the CLI, timeout from env, graceful_timeout from the file, rest default."""
        path = conf(tmp_path, "workers = 2\ntimeout = 9\ngraceful_timeout = 4\n")
        env = {ENV_VAR: "-w 3 --timeout 7"}
        cfg = load_config(["-c", path, "-w", "4", "services.broker:app"], env)
        assert (cfg.workers, cfg.timeout, cfg.graceful_timeout, cfg.max_requests) == (4, 7, 4, 0)
        assert cfg.sources["workers"] == "cli"
        assert cfg.sources["timeout"] == "env"
        assert cfg.sources["graceful_timeout"] == "file"
        assert cfg.sources["max_requests"] == "default"

    def test_endpoints_merge_by_name(self, tmp_path: Path) -> None:
        """A later layer replaces one socket's address, not the whole map."""
        path = conf(
            tmp_path,
            'endpoint = {"frontend": "tcp://127.0.0.1:1", "backend": "tcp://127.0.0.1:2"}\n',
        )
        env = {ENV_VAR: "--endpoint backend=tcp://127.0.0.1:3"}
        cfg = load_config(["-c", path, "--endpoint", "kill=tcp://127.0.0.1:4", "x:app"], env)
        assert cfg.endpoint == {
            "frontend": "tcp://127.0.0.1:1",
            "backend": "tcp://127.0.0.1:3",
            "kill": "tcp://127.0.0.1:4",
        }

    def test_config_path_from_env(self, tmp_path: Path) -> None:
        """-c may come from GREENZMQ_CMD_ARGS too."""
        path = conf(tmp_path, "max_requests = 12\n")
        cfg = load_config(["x:app"], {ENV_VAR: f"-c {path}"})
        assert cfg.max_requests == 12

    def test_print_config_shows_the_result(self, tmp_path: Path) -> None:
        """--print-config prints one `name = value` line per setting, resolved."""
        path = conf(tmp_path, "workers = 2\nlog_level = 'debug'\n")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "greenzmq",
                "-c",
                path,
                "--timeout",
                "5",
                "services.broker:app",
                "--print-config",
            ],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), ENV_VAR: "-w 3"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        lines = dict(line.split(" = ", 1) for line in out.stdout.splitlines())
        assert lines["workers"] == "3"
        assert lines["timeout"] == "5.0"
        assert lines["log_level"] == "'debug'"
        assert lines["app"] == "'services.broker:app'"
        assert set(lines) == {"app", *(s.name for s in SETTINGS), *HOOK_NAMES}


class TestValidation:
    """Bad values are one ConfigError naming the setting, from any layer."""

    @pytest.mark.parametrize(
        ("argv", "env", "needle"),
        [
            (["-w", "0"], {}, "--workers: 0 is below the minimum 1"),
            (["--timeout", "soon"], {}, "--timeout: not a number: 'soon'"),
            (["--trace-sample", "2"], {}, "--trace-sample: 2 is not between 0 and 1"),
            (["--endpoint", "frontend"], {}, "malformed --endpoint 'frontend'"),
            (["--endpoint", "fe=tcp://x"], {}, "malformed endpoint 'tcp://x'"),
            (["--endpoint", "fe=tcp://h:{1+pid}"], {}, "placeholders are {wid} and {BASE+wid}"),
            ([], {ENV_VAR: "--max-requests -1"}, "--max-requests: -1 is below the minimum 0"),
            ([], {ENV_VAR: "--bogus 1"}, "unrecognized arguments: --bogus 1"),
        ],
    )
    def test_bad_values(self, argv: list[str], env: dict[str, str], needle: str) -> None:
        """The message names the setting and the value."""
        with pytest.raises(ConfigError, match=None) as e:
            load_config([*argv, "x:app"], env)
        assert needle in str(e.value)

    def test_bad_value_in_file(self, tmp_path: Path) -> None:
        """A config file's bad value names the file and the setting."""
        path = conf(tmp_path, "workers = 'many'\n")
        with pytest.raises(ConfigError, match=r"greenzmq.conf.py.*workers.*not an integer"):
            load_config(["-c", path, "x:app"], {})

    def test_typo_in_file_is_caught(self, tmp_path: Path) -> None:
        """An unknown name holding plain data is a typo, with a suggestion."""
        path = conf(tmp_path, "import os\nworker = 4\n")
        with pytest.raises(ConfigError, match=r"unknown setting 'worker' \(did you mean 'workers'"):
            load_config(["-c", path, "x:app"], {})

    def test_missing_and_broken_files(self, tmp_path: Path) -> None:
        """A missing file, or one that raises, is a ConfigError."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(["-c", str(tmp_path / "nope.py"), "x:app"], {})
        path = conf(tmp_path, "1/0\n")
        with pytest.raises(ConfigError, match="ZeroDivisionError"):
            load_config(["-c", path, "x:app"], {})

    def test_cli_error_is_one_line(self) -> None:
        """`greenzmq -w 0 APP`: one `greenzmq: error:` line, exit 2, nothing started."""
        out = subprocess.run(
            [sys.executable, "-m", "greenzmq", "-w", "0", "services.broker:app"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2
        assert out.stderr.strip() == "greenzmq: error: --workers: 0 is below the minimum 1"


class TestFileAndHooks:
    """Hooks come from the config file; the app may too."""

    def test_hooks_and_app_from_file(self, tmp_path: Path) -> None:
        """Callables named like hooks are hooks; other callables (imports) are ignored."""
        path = conf(
            tmp_path,
            "from os.path import join\n"
            "app = 'services.broker:app'\n"
            "def on_starting(arbiter):\n    arbiter.seen = True\n",
        )
        cfg = load_config(["-c", path], {})
        assert cfg.app == "services.broker:app"
        assert cfg.on_starting is not None and cfg.when_ready is None

        class Fake:
            seen = False

        f = Fake()
        cfg.run_hook("on_starting", f)
        cfg.run_hook("when_ready", f)  # unset: nothing happens
        assert f.seen

    def test_non_callable_hook_is_refused(self, tmp_path: Path) -> None:
        """A hook must be callable."""
        path = conf(tmp_path, "pre_fork = 3\n")
        with pytest.raises(ConfigError, match="pre_fork: not callable"):
            load_config(["-c", path, "x:app"], {})

    def test_format_config_lists_hooks_by_name(self, tmp_path: Path) -> None:
        """--print-config names a set hook by its qualified name."""
        path = conf(tmp_path, "def on_exit(arbiter):\n    pass\n")
        text = format_config(load_config(["-c", path, "x:app"], {}))
        assert "on_exit = on_exit" in text.splitlines()
        assert "when_ready = None" in text.splitlines()


class TestPlaceholder:
    """The per-worker endpoint placeholder."""

    @pytest.mark.parametrize(
        ("addr", "wid", "want"),
        [
            ("tcp://127.0.0.1:{5560+wid}", 3, "tcp://127.0.0.1:5563"),
            ("tcp://127.0.0.1:{5560 + wid}", 0, "tcp://127.0.0.1:5560"),
            ("ipc:///tmp/w-{wid}.sock", 2, "ipc:///tmp/w-2.sock"),
            ("tcp://127.0.0.1:5560", 5, "tcp://127.0.0.1:5560"),
        ],
    )
    def test_expand(self, addr: str, wid: int, want: str) -> None:
        """{wid} is the index, {BASE+wid} an offset from BASE."""
        assert expand_endpoint(addr, wid) == want


class TestDocs:
    """The README's options table is the one generated from SETTINGS."""

    def test_readme_table_in_sync(self) -> None:
        """Regenerate with greenzmq.launcher.config.options_table() when a setting changes."""
        readme = (ROOT / "README.md").read_text()
        assert options_table() in readme

    def test_readme_lists_every_hook(self) -> None:
        """The README's hook table names every hook."""
        readme = (ROOT / "README.md").read_text()
        assert all(f"| `{h}` |" in readme for h in HOOK_NAMES)

    def test_every_setting_has_a_flag_and_help(self) -> None:
        """Each declared setting drives argparse."""
        parser = build_parser()
        dests = {a.dest for a in parser._actions}
        for s in SETTINGS:
            assert s.help and s.name in dests

    def test_readme_config_example_loads(self, tmp_path: Path) -> None:
        """The README's config-file example is a valid config file."""
        readme = (ROOT / "README.md").read_text()
        start = readme.index("# greenzmq.conf.py\n")
        example = readme[start : readme.index("```", start)]
        cfg = load_config(["-c", conf(tmp_path, example), "x:app"], {})
        assert cfg.workers == 4 and cfg.when_ready is not None
