"""Settings declared once: they drive argparse, the ``-c`` file, the env var and the docs.

Each :class:`Setting` has a name, its command-line flags, a converter for
text (CLI and ``GREENZMQ_CMD_ARGS``), a validator for any value (the config
file may give ints, lists or dicts), a default and a help line. From the one
list :data:`SETTINGS` come the argument parser, the config-file reader,
``--print-config`` and the README's options table (:func:`options_table`,
kept in sync by a test).

Precedence, lowest first: defaults < config file (``-c``) < ``GREENZMQ_CMD_ARGS``
< command line. ``endpoint`` is merged by socket name across the layers (a
later layer replaces one name's addresses, not the whole map); one socket
named several times within one layer gets all those addresses (a worker
that registers with two brokers), the same address twice is an error.

Hooks (``on_starting``, ``pre_fork``, ...) are callables and can only be set in
the config file. The module is stdlib only: the master imports it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import runpy
import shlex
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.endpoints import Endpoints, parse_endpoint
from ..errors import ConfigError

__all__ = [
    "ENV_VAR",
    "HOOKS",
    "SETTINGS",
    "Config",
    "Setting",
    "build_parser",
    "expand_endpoint",
    "expand_endpoints",
    "format_config",
    "load_config",
    "options_table",
    "parse_hostport",
]

ENV_VAR = "GREENZMQ_CMD_ARGS"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


# -- converters / validators (each raises ConfigError naming the value) -------
def _int(minimum: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ConfigError(f"not an integer: {v!r}")
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"not an integer: {v!r}") from None
        if n < minimum:
            raise ConfigError(f"{n} is below the minimum {minimum}")
        return n

    return conv


def _float(minimum: float, maximum: float | None = None) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        if isinstance(v, bool):
            raise ConfigError(f"not a number: {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"not a number: {v!r}") from None
        if x != x or x < minimum or (maximum is not None and x > maximum):
            hi = f" and {maximum:g}" if maximum is not None else ""
            raise ConfigError(f"{x:g} is not between {minimum:g}{hi or ' and infinity'}")
        return x

    return conv


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ConfigError(f"not a string: {v!r}")
    return v or None


def _choice(*choices: str, optional: bool = False) -> Callable[[Any], str | None]:
    def conv(v: Any) -> str | None:
        if v is None and optional:
            return None
        if not isinstance(v, str) or v.lower() not in choices:
            raise ConfigError(f"{v!r} is not one of {', '.join(choices)}")
        return v.lower()

    return conv


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"not a boolean: {v!r}")


_PLACEHOLDER = re.compile(r"\{(?:(\d+)\s*\+\s*)?wid\}")


def expand_endpoint(addr: str, wid: int) -> str:
    """Replace the per-worker placeholder: ``{wid}`` -> 3, ``{5560+wid}`` -> 5563."""
    return _PLACEHOLDER.sub(lambda m: str(int(m.group(1) or 0) + wid), addr)


def expand_endpoints(addrs: Endpoints, wid: int) -> str | list[str]:
    """:func:`expand_endpoint` on one socket's address, or on each of its addresses."""
    if isinstance(addrs, str):
        return expand_endpoint(addrs, wid)
    return [expand_endpoint(a, wid) for a in addrs]


def has_placeholder(addr: str) -> bool:
    """True if ``addr`` carries ``{wid}`` or ``{BASE+wid}``."""
    return bool(_PLACEHOLDER.search(addr))


def _endpoint_item(text: Any) -> tuple[str, str]:
    if not isinstance(text, str):
        raise ConfigError(f"malformed endpoint {text!r}: expected NAME=TRANSPORT://ADDRESS")
    name, sep, addr = text.partition("=")
    name, addr = name.strip(), addr.strip()
    if not sep or not name or not addr:
        raise ConfigError(f"malformed --endpoint {text!r}: expected NAME=TRANSPORT://ADDRESS")
    leftover = _PLACEHOLDER.sub("", addr)
    if "{" in leftover or "}" in leftover:
        raise ConfigError(
            f"malformed endpoint {addr!r}: the only placeholders are {{wid}} and {{BASE+wid}}"
        )
    # syntax only: "*" is checked for bind/connect when the socket is known
    parse_endpoint(expand_endpoint(addr, 0))
    return name, addr


def _endpoints(v: Any) -> dict[str, str | list[str]]:
    """NAME=ADDR items (or a dict) -> {name: addr}, or {name: [addr, ...]} for several."""
    if v is None:
        return {}
    if isinstance(v, Mapping):
        items = [_endpoint_item(f"{k}={a}") for k, addrs in v.items() for a in _listed(addrs, k)]
    else:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"endpoint: expected a list of NAME=ADDR or a dict, got {v!r}")
        items = [_endpoint_item(x) for x in v]
    out: dict[str, list[str]] = {}
    for name, addr in items:
        have = out.setdefault(name, [])
        if addr in have:
            # within one layer; across layers a later one replaces (see Config.set)
            raise ConfigError(f"--endpoint: socket {name!r} is given {addr} twice")
        have.append(addr)
    # one address stays a plain string: what a single --endpoint always gave
    return {name: addrs[0] if len(addrs) == 1 else addrs for name, addrs in out.items()}


def _listed(addrs: Any, name: Any) -> list[Any]:
    if isinstance(addrs, (list, tuple)):
        if not addrs:
            raise ConfigError(f"endpoint: socket {name!r} has an empty list of addresses")
        return list(addrs)
    return [addrs]


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> ``(host, port)``; ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9100)")
    return host, int(port)


def _hostport(v: Any) -> str | None:
    text = _opt_str(v)
    if text is not None:
        parse_hostport(text)
    return text


def _hook(v: Any) -> Callable[..., Any] | None:
    if v is None:
        return None
    if not callable(v):
        raise ConfigError(f"not callable: {v!r}")
    fn: Callable[..., Any] = v
    return fn


@dataclass(frozen=True)
class Setting:
    """One setting, declared once."""

    name: str
    flags: tuple[str, ...]
    validator: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    action: str | None = None  # "append", "store_true"
    cli: bool = True  # False: config file only (hooks)
    choices: tuple[str, ...] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "config",
        ("-c", "--config"),
        _opt_str,
        None,
        "Python config file: module-level names are settings and hooks",
        "PATH",
    ),
    Setting("workers", ("-w", "--workers"), _int(1), 1, "number of worker processes", "N"),
    Setting(
        "graceful_timeout",
        ("--graceful-timeout",),
        _float(0.0),
        30.0,
        "seconds workers get to finish in-flight work on TERM/HUP before KILL",
        "S",
    ),
    Setting(
        "timeout",
        ("-t", "--timeout"),
        _float(0.0),
        30.0,
        "a worker silent (no heartbeat) this long is killed and replaced; 0: off",
        "S",
    ),
    Setting(
        "block_threshold",
        ("--block-threshold",),
        _float(0.0),
        1.0,
        "report a worker hub blocked longer than this (gevent monitor thread); 0: off",
        "S",
    ),
    Setting(
        "max_requests",
        ("--max-requests",),
        _int(0),
        0,
        "recycle a worker after this many requests; 0: never",
        "N",
    ),
    Setting(
        "max_requests_jitter",
        ("--max-requests-jitter",),
        _int(0),
        0,
        "add 0..N to max-requests per worker, so restarts are staggered",
        "N",
    ),
    Setting(
        "pid",
        ("-p", "--pid"),
        _opt_str,
        None,
        "write the master's pid to PATH (removed on exit)",
        "PATH",
    ),
    Setting(
        "name",
        ("-n", "--name"),
        _opt_str,
        None,
        "process title prefix (needs setproctitle); default: the service name",
        "NAME",
    ),
    Setting(
        "endpoint",
        ("--endpoint",),
        _endpoints,
        {},
        "replace socket NAME's endpoint (repeat for several: a worker registers with each broker; "
        "`{wid}`, `{BASE+wid}`: per worker)",
        "NAME=ADDR",
        action="append",
    ),
    Setting(
        "log_format",
        ("--log-format",),
        _choice("json", "console", optional=True),
        None,
        "json or console (default: console on a TTY, json otherwise)",
        "FORMAT",
        choices=("json", "console"),
    ),
    Setting(
        "log_file",
        ("--log-file",),
        _opt_str,
        None,
        "append logs to PATH (master and workers; USR1 reopens)",
        "PATH",
    ),
    Setting(
        "log_level",
        ("--log-level",),
        _choice(*LOG_LEVELS),
        "info",
        "debug, info, warning, error or critical",
        "LEVEL",
        choices=LOG_LEVELS,
    ),
    Setting(
        "trace_sample",
        ("--trace-sample",),
        _float(0.0, 1.0),
        1.0,
        "share of messages whose hops are logged: 0 none, 1 all",
        "RATE",
    ),
    Setting(
        "monitor",
        ("--monitor",),
        _bool,
        False,
        "log and count each socket's connection events (accepted, handshake failed with the "
        "peer's address, ...)",
        action="store_true",
    ),
    Setting(
        "metrics",
        ("--metrics",),
        _hostport,
        None,
        "serve Prometheus metrics of all workers on `http://HOST:PORT/metrics` (from the master)",
        "HOST:PORT",
    ),
    Setting(
        "check_config",
        ("--check-config",),
        _bool,
        False,
        "check what a start checks (settings, app, endpoints, files), bind nothing; exit 0 or 2",
        action="store_true",
    ),
    Setting(
        "print_config",
        ("--print-config",),
        _bool,
        False,
        "print one `name = value` line per setting and exit",
        action="store_true",
    ),
)

HOOKS: tuple[tuple[str, str], ...] = (
    ("on_starting", "on_starting(arbiter): in the master, before the first fork"),
    ("when_ready", "when_ready(arbiter): in the master, once every worker is up"),
    ("pre_fork", "pre_fork(arbiter, worker): in the master, before a fork"),
    (
        "post_fork",
        "post_fork(arbiter, worker): in the worker after the fork (arbiter None in worker 0)",
    ),
    ("post_worker_init", "post_worker_init(worker): in the worker, once its service started"),
    ("worker_int", "worker_int(worker): in the worker, on INT/QUIT"),
    ("worker_abort", "worker_abort(worker): in the worker, on ABRT (heartbeat timeout)"),
    ("worker_exit", "worker_exit(arbiter, worker): in the master, after a worker is reaped"),
    ("nworkers_changed", "nworkers_changed(arbiter, new, old): in the master (TTIN/TTOU/HUP)"),
    ("on_exit", "on_exit(arbiter): in the master, just before it exits"),
)
HOOK_NAMES = tuple(h for h, _ in HOOKS)

_BY_NAME = {s.name: s for s in SETTINGS}
_APP = "app"  # the positional MODULE:APP (also `app = "..."` in a config file)


class Config:
    """Resolved settings: attribute access, plus where each value came from."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {s.name: _copy(s.default) for s in SETTINGS}
        self.values[_APP] = None
        self.hooks: dict[str, Callable[..., Any] | None] = dict.fromkeys(HOOK_NAMES)
        self.sources: dict[str, str] = dict.fromkeys(self.values, "default")

    def __getattr__(self, name: str) -> Any:
        if name in ("values", "hooks", "sources"):
            raise AttributeError(name)
        if name in self.values:
            return self.values[name]
        if name in self.hooks:
            return self.hooks[name]
        raise AttributeError(f"no setting {name!r}")

    def set(self, name: str, value: Any, source: str) -> None:
        """Validate and set one setting (``endpoint`` merges by socket name)."""
        if name == _APP:
            self.values[_APP] = _opt_str(value)
        elif name in self.hooks:
            self.hooks[name] = _hook(value)
        else:
            s = _BY_NAME[name]
            try:
                v = s.validator(value)
            except ConfigError as e:
                # endpoint messages already say "malformed --endpoint ..." / "malformed endpoint"
                msg = str(e) if name == "endpoint" else f"{_flag(s)}: {e}"
                raise ConfigError(f"{ENV_VAR}: {msg}" if source == "env" else msg) from None
            if name == "endpoint":
                v = {**self.values["endpoint"], **v}
            self.values[name] = v
        self.sources[name] = source

    def run_hook(self, name: str, *args: Any) -> None:
        """Call a hook if it is set (exceptions propagate to the caller)."""
        fn = self.hooks.get(name)
        if fn is not None:
            fn(*args)


def _copy(v: Any) -> Any:
    return dict(v) if isinstance(v, dict) else v


def _flag(s: Setting) -> str:
    return s.flags[-1] if s.flags else s.name


def build_parser(prog: str = "greenzmq", *, for_env: bool = False) -> argparse.ArgumentParser:
    """The argument parser generated from :data:`SETTINGS`.

    Every option defaults to SUPPRESS, so the namespace holds only what was
    given: that is what lets the layers stack (defaults < file < env < CLI).
    """
    from .. import __version__
    from ..cli import USAGE

    p = argparse.ArgumentParser(
        prog=ENV_VAR if for_env else prog,
        usage=None if for_env else USAGE,
        argument_default=argparse.SUPPRESS,
        description="Run MODULE:APP under a pre-fork master (-w workers).",
    )
    if not for_env:
        p.add_argument(
            "app", metavar="MODULE:APP", nargs="?", help="the app, e.g. services.broker:app"
        )
        p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    for s in SETTINGS:
        if not s.cli:
            continue
        # the help is Markdown for the README's table; plain text in a terminal
        kw: dict[str, Any] = {"dest": s.name, "help": s.help.replace("`", "")}
        if s.action == "store_true":
            kw["action"] = "store_true"
        else:
            if s.action:
                kw["action"] = s.action
            kw["metavar"] = s.metavar
            if s.choices:
                kw["choices"] = s.choices
        p.add_argument(*s.flags, **kw)
    return p


def _apply_namespace(cfg: Config, ns: argparse.Namespace, source: str) -> None:
    for name, value in vars(ns).items():
        if name == _APP and value is None:
            continue
        cfg.set(name, value, source)


def _read_file(cfg: Config, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        namespace = runpy.run_path(path, run_name="__greenzmq_config__")
    except Exception as e:
        raise ConfigError(f"config file {path!r} failed: {type(e).__name__}: {e}") from e
    known = set(_BY_NAME) | set(HOOK_NAMES) | {_APP}
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name in known:
            if name in ("config", "check_config", "print_config"):
                raise ConfigError(
                    f"config file {path!r}: {name!r} can only be given on the command line"
                )
            try:
                cfg.set(name, value, "file")
            except ConfigError as e:
                raise ConfigError(f"config file {path!r}: {name}: {e}") from None
        elif isinstance(value, (int, float, str, list, tuple, dict)) or value is None:
            # plain data under an unknown name is almost always a typo
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"config file {path!r}: unknown setting {name!r}{hint}")


def load_config(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, prog: str = "greenzmq"
) -> Config:
    """Resolve the settings from defaults, ``-c`` file, ``GREENZMQ_CMD_ARGS`` and ``argv``.

    argparse errors (unknown option, bad choice) exit 2 with argparse's
    message; a bad value anywhere raises ConfigError naming the setting.
    """
    env = os.environ if env is None else env
    cli = build_parser(prog).parse_args(list(argv))
    env_ns = argparse.Namespace()
    env_text = env.get(ENV_VAR, "").strip()
    if env_text:
        try:
            words = shlex.split(env_text)
        except ValueError as e:
            raise ConfigError(f"{ENV_VAR}: {e}") from None
        env_ns, extra = build_parser(prog, for_env=True).parse_known_args(words)
        if extra:
            raise ConfigError(f"{ENV_VAR}: unrecognized arguments: {' '.join(extra)}")
    cfg = Config()
    path = getattr(cli, "config", None) or getattr(env_ns, "config", None)
    if path:
        _read_file(cfg, path)
    _apply_namespace(cfg, env_ns, "env")
    _apply_namespace(cfg, cli, "cli")
    return cfg


def format_config(cfg: Config) -> str:
    """``--print-config``: one ``name = value`` line per setting, hooks included."""
    lines = [f"app = {cfg.app!r}"]
    lines += [f"{s.name} = {cfg.values[s.name]!r}" for s in SETTINGS]
    for h in HOOK_NAMES:
        fn = cfg.hooks[h]
        lines.append(f"{h} = {getattr(fn, '__qualname__', fn)!s}" if fn else f"{h} = None")
    return "\n".join(lines)


def options_table() -> str:
    """The README's options table (a test checks the README contains it verbatim)."""
    rows = ["| option | setting | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        flags = ", ".join(f"`{f}`" + (f" {s.metavar}" if s.metavar else "") for f in s.flags)
        rows.append(f"| {flags} | `{s.name}` | `{s.default!r}` | {s.help} |")
    return "\n".join(rows)
