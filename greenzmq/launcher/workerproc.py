"""What a worker does: gevent first, then the app, then serve it with its own context.

The master (:mod:`greenzmq.launcher.arbiter`) forks and calls :func:`run_worker` in the
child, which never returns into the master's loop (the arbiter exits with its
result through ``os._exit``). Order matters (rule 7): the master imported
neither gevent nor zmq, so this process imports gevent first (with the
monitor thread configured before the hub exists), then the app (which imports
zmq.green), and :meth:`Service.serve` makes the context after that.

The very first worker is different: the master starts it with exec
(``python -m greenzmq.launcher.workerproc``, :func:`main`) before it forks anything,
and that worker is the pre-fork check. It imports the app, validates the
endpoints for every worker index (:func:`greenzmq.launcher.appspec.describe_service`)
and either prints the error and exits (the master exits with its code,
nothing forked or bound) or boots as worker 0 and reports ``checked {json}``
once its sockets are bound and its setup ran (so a port already in use is
one line and exit 2 too, before anything is forked). A separate check
process would cost a second interpreter and a second import of gevent, zmq
and the app on every start (about 0.25 s on an idle 2-core machine).

Talking to the master: one end of a socketpair, newline-framed lines:
``beat`` every heartbeat interval from a greenlet (so a blocked hub stops the
beats), ``ready`` once the service serves, ``fail {json}`` if booting fails
(the master halts with that message or traceback), ``exit REASON`` before a
deliberate exit (``recycle`` after max-requests, ``done`` when the app
finished, e.g. the kill switch). A reader greenlet on the same socket sees
EOF when the master dies, and the worker stops.

Signals: TERM graceful (stop taking work, finish what is in flight); INT and
QUIT quick (no grace); USR1 reopens log files; ABRT (the master's heartbeat
timeout) logs the stack, runs ``worker_abort`` and exits at once, from a
plain (non-gevent) handler so it also runs while the hub is blocked.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import protocol
from .protocol import EXIT_BOOT, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, heartbeat_interval

if TYPE_CHECKING:
    from .config import Config

__all__ = ["WorkerInfo", "run_worker"]


class WorkerInfo:
    """What worker-side hooks receive: pid, index, the service (once loaded), the log."""

    def __init__(self, wid: int) -> None:
        self.pid = os.getpid()
        self.wid = wid
        self.service: Any = None
        self.log: Any = None


class _Channel:
    """The worker's end of the master pipe (a gevent socket after gevent is imported)."""

    def __init__(self, fd: int) -> None:
        from gevent import socket as gsocket

        self.sock = gsocket.socket(fileno=fd)
        self.broken = False

    def send(self, line: bytes) -> None:
        if self.broken:
            return
        try:
            self.sock.sendall(line)
        except OSError:
            self.broken = True  # master gone: the reader greenlet sees EOF too


def _boot_failure(chan: _Channel, exc: BaseException, code: int, *, echo: bool = False) -> int:
    import zmq

    from ..errors import GreenZMQError

    expected = isinstance(exc, (GreenZMQError, zmq.ZMQError, ValueError))
    if expected and is_config_error(exc):
        code = EXIT_CONFIG
    payload: protocol.Failure = {"code": code if expected else EXIT_BOOT}
    if expected:
        payload["message"] = str(exc)
        if echo:  # nothing forked yet: one line on the command's stderr, the master is quiet
            print(f"greenzmq: error: {exc}", file=sys.stderr, flush=True)
    else:
        payload["traceback"] = "".join(traceback.format_exception(exc))
    chan.send(protocol.fail(payload))
    return payload["code"]


def _remove_ipc_files(paths: list[str]) -> None:
    """Remove the ipc files this worker bound: libzmq leaves them behind on close."""
    for path in paths:
        if path and not path.startswith("@"):  # "@name": Linux abstract namespace, no file
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _install_monitor(threshold: float, log: Any) -> None:
    """Report a hub blocked longer than ``threshold`` as one structured event."""
    import gevent
    import gevent.events

    def on_event(event: Any) -> None:
        if isinstance(event, gevent.events.EventLoopBlocked):
            log.warning(
                "worker.hub_blocked",
                threshold=threshold,
                greenlet=repr(event.greenlet),
                stack="\n".join(str(x) for x in event.info),
            )

    gevent.events.subscribers.append(on_event)
    with warnings.catch_warnings():
        # "Unable to monitor memory usage. Install psutil.": we do not ask it to
        warnings.simplefilter("ignore")
        gevent.get_hub().start_periodic_monitoring_thread()


def _check(cfg: Config) -> tuple[Any, dict[str, Any], int]:
    """The pre-fork check, in the first worker: (service, description, 0), or (None, {}, code).

    Errors are printed here, as the command's own: one ``greenzmq: error:``
    line (exit 2), or the app's traceback (exit 1). The master hears
    ``checked`` only once the service's sockets are bound (see the ``ready``
    callback in :func:`run_worker`), so a port in use is part of the check.
    """
    from ..errors import GreenZMQError
    from .appspec import as_service, describe_service, load_app

    try:
        service = as_service(load_app(cfg.app))
        desc = describe_service(service, dict(cfg.endpoint), int(cfg.workers))
    except GreenZMQError as e:
        print(f"greenzmq: error: {e}", file=sys.stderr, flush=True)
        return None, {}, EXIT_CONFIG
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return None, {}, EXIT_FAILED
    return service, desc, 0


def is_config_error(exc: BaseException) -> bool:
    """An error in what the user asked for (exit 2), not a runtime failure (exit 1).

    An address in use or not on this host is a configuration error too.
    """
    import errno

    import zmq

    from ..errors import GreenZMQError

    if isinstance(exc, zmq.ZMQError):
        return exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    return isinstance(exc, GreenZMQError)


def run_worker(
    cfg: Config, wid: int, fd: int, title: Callable[[str], None], *, check: bool = False
) -> int:
    """Boot and serve the app in this process; return the exit code.

    ``check``: this is the first worker, started with exec before any fork,
    and it is also the launcher's pre-fork check (see :func:`main`).
    """
    # 1. gevent, configured before its hub exists
    import gevent

    if cfg.block_threshold > 0:
        gevent.config.monitor_thread = True
        gevent.config.max_blocking_time = cfg.block_threshold
        gevent.config.print_blocking_reports = False  # we log a structured event instead
    import gevent.signal

    chan = _Channel(fd)
    info = WorkerInfo(wid)
    service: Any = None
    desc: dict[str, Any] = {}
    if check:
        service, desc, code = _check(cfg)
        if service is None:
            return code
    try:
        # 2. the app (imports zmq.green), logging, endpoints for this worker index
        import zmq

        from ..core.sockets import apply_endpoints
        from ..core.tracing import configure_logging, get_logger, reopen_log_files
        from ..errors import GreenZMQError
        from .appspec import as_service, load_app
        from .config import expand_endpoint

        if service is None:
            service = as_service(load_app(cfg.app))
        configure_logging(
            service.name,
            fmt=cfg.log_format,
            log_file=cfg.log_file,
            level=cfg.log_level,
            trace_sample=cfg.trace_sample,
        )
        log = get_logger(wid=wid)
        info.service, info.log = service, log
        endpoints = {n: expand_endpoint(a, wid) for n, a in cfg.endpoint.items()}
        specs = apply_endpoints(service.specs, endpoints)  # names and syntax, before any socket
        ipc_files = [
            ep[len("ipc://") :] for sp in specs for ep in sp.bind if ep.startswith("ipc://")
        ]
        # the master KILLs at graceful_timeout: the service's own grace (if shorter)
        # stands, otherwise it finishes a little before the KILL
        service.graceful_timeout = min(
            float(service.graceful_timeout), max(0.05, cfg.graceful_timeout - 0.5)
        )
        title(f"worker {wid} [{cfg.name or service.name}]")
        if cfg.block_threshold > 0:
            _install_monitor(cfg.block_threshold, log)
    except BaseException as e:
        return _boot_failure(chan, e, EXIT_CONFIG)

    state: dict[str, Any] = {"ready": False, "reason": None}
    interval = heartbeat_interval(cfg.timeout)

    def beat() -> None:
        while not chan.broken:
            chan.send(protocol.beat())
            gevent.sleep(interval)

    def watch_master() -> None:
        try:
            while chan.sock.recv(64):
                pass
        except OSError:
            pass
        if not service.stopping.is_set():
            log.warning("worker.master_gone", wid=wid)
            state["reason"] = "master gone"
            service.graceful_timeout = min(service.graceful_timeout, interval)
            service.stop("master gone")

    def ready(svc: Any) -> None:
        state["ready"] = True
        if check:
            chan.send(protocol.checked(desc))  # bound: the master may fork the rest
        chan.send(protocol.ready())
        cfg.run_hook("post_worker_init", info)

    def quick(signame: str) -> None:
        cfg.run_hook("worker_int", info)
        service.graceful_timeout = 0.0
        if service.stopping.is_set():
            # already in a graceful stop: end the in-flight work now
            service.group.kill(block=False)
        service.stop(signame)

    def abort(signum: int, frame: Any) -> None:
        # a plain handler: it runs between bytecodes even while the hub is blocked
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        try:
            log.error("worker.abort", wid=wid, stack=stack)
            cfg.run_hook("worker_abort", info)
        finally:
            os._exit(EXIT_FAILED)

    limit = 0
    if cfg.max_requests > 0:
        limit = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)

        def count(svc: Any) -> None:
            if svc.requests >= limit and not svc.stopping.is_set():
                log.info("worker.max_requests", wid=wid, requests=svc.requests, limit=limit)
                state["reason"] = protocol.RECYCLE
                svc.stop("max requests")

        service.add_request_callback(count)
    service.add_ready_callback(ready)

    signal.signal(signal.SIGABRT, abort)
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)  # the master's business
    handlers: list[Any] = [
        gevent.signal_handler(signal.SIGTERM, service.stop, "SIGTERM"),
        gevent.signal_handler(signal.SIGINT, quick, "SIGINT"),
        gevent.signal_handler(signal.SIGQUIT, quick, "SIGQUIT"),
        gevent.signal_handler(signal.SIGUSR1, reopen_log_files),
    ]
    beater = gevent.spawn(beat)
    watcher = gevent.spawn(watch_master)
    log.debug("worker.boot", wid=wid, max_requests=limit or None)
    try:
        code = int(service.serve(endpoints, install_signals=False))
    except BaseException as e:
        if state["ready"]:
            log.error("worker.failed", wid=wid, error=repr(e), exc_info=True)
            return EXIT_FAILED
        # the first worker is still the pre-fork check: its message is the command's own line
        if isinstance(e, (GreenZMQError, zmq.ZMQError)):
            code = EXIT_FAILED if isinstance(e, zmq.ZMQError) else EXIT_CONFIG
            return _boot_failure(chan, e, code, echo=check)
        return _boot_failure(chan, e, EXIT_BOOT, echo=check)
    finally:
        for h in handlers:
            h.cancel()
        if state["ready"]:
            _remove_ipc_files(ipc_files)
    refused = getattr(service, "refused", None)
    if refused is not None:
        # the spec named a factory that no annotation gave away: a usage error,
        # the master halts with its line (exit 2) instead of restarting it
        beater.kill(block=False)
        watcher.kill(block=False)
        return _boot_failure(chan, refused, EXIT_CONFIG)
    if code == EXIT_OK and state["reason"] == protocol.RECYCLE:
        chan.send(protocol.recycle())
    elif code == EXIT_OK and service.stop_reason not in ("SIGTERM", "SIGINT", "SIGQUIT"):
        chan.send(protocol.done(service.stop_reason))
    beater.kill(block=False)
    watcher.kill(block=False)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m greenzmq.launcher.workerproc REQUEST``: the first worker, exec'd by the master.

    REQUEST is JSON: the command line (``argv``), the worker index and the
    inherited descriptor of the master pipe. The settings are resolved again
    from the same command line and environment, so hooks from ``-c`` exist
    here too (``post_fork`` gets ``None`` for the arbiter).
    """
    from .config import load_config
    from .proc import title_setter

    args, wid, fd = protocol.decode_request((sys.argv[1:] if argv is None else argv)[0])
    cfg = load_config(args)
    cfg.run_hook("post_fork", None, WorkerInfo(wid))
    return run_worker(cfg, wid, fd, title_setter(), check=True)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # like a forked worker: no interpreter teardown (gevent threads, atexit)
