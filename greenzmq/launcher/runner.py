"""``greenzmq [OPTIONS] MODULE:APP``: settings, then the master.

The command path is stdlib only until a worker exists (rule 7):

1. :func:`greenzmq.launcher.config.load_config` resolves the settings (defaults <
   ``-c`` file < ``GREENZMQ_CMD_ARGS`` < CLI); a bad value is one
   ``greenzmq: error:`` line and exit 2; ``--print-config`` stops here.
2. The spec's syntax is checked here, without importing anything.
3. :class:`greenzmq.launcher.arbiter.Arbiter` runs, also for ``-w 1``, so HUP, TTIN
   and the heartbeat work whatever the count. Its first worker is exec'd and
   is the pre-fork check: it imports the app and validates the endpoints for
   every worker index; a bad spec, an unknown endpoint name, a malformed
   endpoint or a tcp bind shared by ``-w N`` workers is one line and exit 2,
   an exception in the app module's own code its traceback and exit 1, with
   nothing forked or bound (see :mod:`greenzmq.launcher.workerproc`).

``--check-config`` runs the same :func:`validate_start` as the real start,
then imports the app in this process (it never forks), checks what the first
worker checks, and exits 0 or 2 (1 if the app's own code raises). It binds
nothing: a port in use is found at start. When HUP changes the app or
its endpoints, the master checks the new ones in a short-lived subprocess
(:func:`check_in_subprocess`) before replacing any worker.

:func:`run_service` is kept for embedding: one service, in this process, no
master.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.endpoints import EndpointMap
from ..errors import ConfigError, GreenZMQError
from .appspec import as_service, load_app, parse_app_spec
from .config import Config, format_config, load_config
from .proc import child_env
from .protocol import EXIT_CONFIG, EXIT_FAILED

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "check_in_subprocess",
    "fail",
    "main",
    "run_service",
    "validate_start",
]


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """Print ``greenzmq: error: message`` on stderr and return ``code``."""
    print(f"greenzmq: error: {message}", file=sys.stderr, flush=True)
    return code


def check_in_subprocess(cfg: Config) -> dict[str, Any] | int:
    """Import and check the app in a fresh interpreter; its description, or an exit code.

    The subprocess prints its own errors on our stderr (inherited).
    """
    req = json.dumps({"app": cfg.app, "endpoint": cfg.endpoint, "workers": cfg.workers})
    proc = subprocess.run(
        [sys.executable, "-m", "greenzmq.launcher.appspec", req],
        stdout=subprocess.PIPE,
        env=child_env(),
        check=False,
    )
    if proc.returncode == 0:
        return dict(json.loads(proc.stdout))
    if proc.returncode == EXIT_CONFIG:
        return EXIT_CONFIG
    return fail(f"importing {cfg.app!r} failed (traceback above)", EXIT_FAILED)


def _reload_check(cfg: Config) -> dict[str, Any]:
    info = check_in_subprocess(cfg)
    if isinstance(info, int):
        raise ConfigError(f"the new configuration does not check (exit {info})")
    return info


def _writable_path(flag: str, path: str) -> None:
    """The file at ``path`` can be created or appended to (nothing is created here)."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise ConfigError(f"{flag}: {path!r} is a directory")
    if os.path.exists(target):
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{flag}: {path!r} is not writable")
        return
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: directory {parent!r} is not writable")


def validate_start(cfg: Config, environ: Mapping[str, str] | None = None) -> None:
    """What the master checks before starting anything: ConfigError, one line.

    Shared by the real start and ``--check-config`` (which then also imports
    the app and validates its endpoints, as the first worker does), so the
    two cannot drift. Stdlib only: the master runs it.
    """
    from ..core.stats import STATS_ENV, control_endpoint, ipc_path

    if not cfg.app:
        raise ConfigError("no app given: greenzmq [OPTIONS] MODULE:APP")
    parse_app_spec(cfg.app)  # syntax, before starting anything
    if cfg.log_file:
        _writable_path("--log-file", cfg.log_file)
    if cfg.pid:
        _writable_path("--pid", cfg.pid)
    endpoint = control_endpoint("service", environ)
    if endpoint is not None:
        raw = (os.environ if environ is None else environ)[STATS_ENV].strip()
        path = ipc_path(endpoint)
        if cfg.workers > 1 and "{pid}" not in raw:
            # the second bind would take the path over from the first worker
            raise ConfigError(
                f"{STATS_ENV}: {cfg.workers} workers cannot share the stats endpoint {raw!r}: "
                "put {pid} in the path"
            )
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(
                f"{STATS_ENV}: stats endpoint {endpoint!r}: directory {parent!r} does not exist"
            )


def check_config(cfg: Config) -> int:
    """``--check-config``: what the start checks, the app and its endpoints too; 0 or 2.

    An exception raised by the app module's own code prints its traceback (exit 1).
    """
    from .appspec import check_app

    try:
        info = check_app(str(cfg.app), dict(cfg.endpoint), int(cfg.workers))
    except GreenZMQError as e:
        return fail(str(e), EXIT_CONFIG)
    print(
        f"greenzmq: config OK: {cfg.app} ({info['service']}), {cfg.workers} worker(s), "
        f"sockets: {', '.join(s['name'] for s in info['sockets']) or 'none'}"
    )
    return 0


def main(argv: Sequence[str]) -> int:
    """Run the command line ``argv`` (without the program name)."""
    try:
        cfg = load_config(argv)
        if cfg.print_config:
            print(format_config(cfg))
            return 0
        validate_start(cfg)
    except GreenZMQError as e:
        return fail(str(e), EXIT_CONFIG)
    if cfg.check_config:
        return check_config(cfg)
    from .arbiter import Arbiter

    return Arbiter(cfg, argv=list(argv), reload_check=_reload_check).run()


def run_service(
    spec: str,
    *,
    endpoints: EndpointMap | None = None,
    log_format: str | None = None,
    log_file: str | None = None,
    log_level: str = "info",
    trace_sample: float = 1.0,
) -> int:
    """Load ``spec`` and serve it in this process until it stops (no master, no fork)."""
    import zmq

    from ..core.sockets import apply_endpoints
    from ..core.tracing import configure_logging

    try:
        service = as_service(load_app(spec))
        configure_logging(
            service.name,
            fmt=log_format,
            log_file=log_file,
            level=log_level,
            trace_sample=trace_sample,
        )
        apply_endpoints(service.specs, endpoints or {})
        code = int(service.serve(endpoints))
        refused = getattr(service, "refused", None)
        return fail(str(refused)) if refused is not None else code
    except (GreenZMQError, ValueError) as e:
        return fail(str(e))
    except zmq.ZMQError as e:
        return fail(str(e), EXIT_FAILED)
