"""What a worker does: gevent first, then the app, then serve it with its own context.

The master (:mod:`greenzmq.launcher.arbiter`) forks and runs a
:class:`WorkerProcess` in the child, which never returns into the master's
loop (the arbiter exits with its result through ``os._exit``). Order matters
(rule 7): the master imported neither gevent nor zmq, so this process imports
gevent first (with the monitor thread configured before the hub exists),
then the app (which imports zmq.green), and :meth:`Service.serve` makes the
context after that.

The very first worker is different: the master starts it with exec
(``python -m greenzmq.launcher.workerproc``, :func:`main`) before it forks anything,
and that worker is the pre-fork check. It imports the app, validates the
endpoints for every worker index (:func:`greenzmq.launcher.appspec.describe_service`)
and either prints the error and exits (the master exits with its code,
nothing forked or bound) or boots as worker 0 and reports ``checked``
once its sockets are bound and its setup ran (so a port already in use is
one line and exit 2 too, before anything is forked). A separate check
process would cost a second interpreter and a second import of gevent, zmq
and the app on every start (about 0.25 s on an idle 2-core machine).

Talking to the master: one end of a socketpair, the lines of
:mod:`greenzmq.launcher.protocol` (``beat`` from a greenlet, so a blocked hub
stops the beats; ``checked``, ``ready``, ``fail``, ``exit``). A reader
greenlet on the same socket sees EOF when the master dies, and the worker
stops.

With ``--metrics``, a third greenlet sends the service's stats snapshot
(``stats``) every :data:`~greenzmq.launcher.protocol.STATS_INTERVAL` seconds,
and the worker sends a last one before a deliberate exit, so the master's sums
lose nothing a graceful stop counted.

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

__all__ = ["WorkerInfo", "WorkerProcess", "is_config_error", "main"]

# what worker.hub_blocked advises: the usual culprit is a handler that computes or blocks
# (greenzmq.core.offload runs it off the hub)
BLOCKED_FIX = (
    "nothing else runs while one greenlet computes or blocks (heartbeats, signals, other "
    "requests): run such a handler with offload='thread' (or 'process' for parallel CPU work)"
)

# a stop for one of these is the master's (or the operator's): no "exit" line
_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT")


class WorkerInfo:
    """What worker-side hooks receive: pid, index, the service (once loaded), the log."""

    def __init__(self, wid: int) -> None:
        self.pid = os.getpid()
        self.wid = wid
        self.service: Any = None
        self.log: Any = None


class WorkerProcess:
    """One worker: boot the app, serve it until it stops, exit; :meth:`run` does all three.

    Built in the child, after the fork (or in the exec'd first worker); the
    master's end of the channel is the descriptor ``fd``. ``check``: this is
    the first worker, started with exec before any fork, and it is also the
    launcher's pre-fork check (see :func:`main`).
    """

    def __init__(
        self, cfg: Config, wid: int, fd: int, title: Callable[[str], None], *, check: bool = False
    ) -> None:
        self.cfg = cfg
        self.wid = wid
        self.check = check
        self.title = title
        self.info = WorkerInfo(wid)
        self.interval = heartbeat_interval(cfg.timeout)
        self.fd = fd
        self.chan: _Channel  # opened in run(), once gevent is configured
        self.service: Any = None
        self.log: Any = None
        self.description: dict[str, Any] = {}  # the first worker's check, for the master
        self.endpoints: dict[str, str | list[str]] = {}  # this worker's, placeholders expanded
        self.ipc_files: list[str] = []
        self.limit = 0  # max-requests with its jitter; 0: no limit
        self.ready = False  # the service served: failures are no longer boot failures
        self.reason: str | None = None  # why the worker stopped itself (recycle, master gone)
        self._handlers: list[Any] = []
        self._greenlets: list[Any] = []

    def run(self) -> int:
        """Boot and serve the app in this process; return the exit code."""
        self.setup_gevent()
        self.chan = _Channel(self.fd)
        code = self.boot()
        if code is not None:
            return code
        self.watch_max_requests()
        self.service.add_ready_callback(self._on_ready)
        self.install_signals()
        self.start_heartbeat()
        self.log.debug("worker.boot", wid=self.wid, max_requests=self.limit or None)
        try:
            code = int(self.service.serve(self.endpoints, install_signals=False))
        except BaseException as e:
            return self.serve_failed(e)
        finally:
            self.remove_signals()
            if self.ready:
                _remove_ipc_files(self.ipc_files)
        return self.exit(code)

    # -- boot ------------------------------------------------------------------
    def setup_gevent(self) -> None:
        """Import gevent, configured before its hub exists (the monitor thread)."""
        import gevent

        if self.cfg.block_threshold > 0:
            gevent.config.monitor_thread = True
            gevent.config.max_blocking_time = self.cfg.block_threshold
            gevent.config.print_blocking_reports = False  # we log a structured event instead
        import gevent.signal

    def boot(self) -> int | None:
        """The app, logging, endpoints for this worker index; None, or the exit code.

        The first worker checks the app before anything else; a failure after
        that is reported to the master (``fail``) and halts it.
        """
        if self.check:
            code = self.check_app()
            if code is not None:
                return code
        try:
            self.load()
        except BaseException as e:
            return self.report_failure(e, EXIT_CONFIG)
        return None

    def check_app(self) -> int | None:
        """The pre-fork check, in the first worker: None, or the exit code.

        Errors are printed here, as the command's own: one ``greenzmq: error:``
        line (exit 2), or the app's traceback (exit 1). The master hears
        ``checked`` only once the service's sockets are bound (see
        :meth:`_on_ready`), so a port in use is part of the check.
        """
        from ..errors import GreenZMQError
        from .appspec import as_service, describe_service, load_app

        try:
            self.service = as_service(load_app(self.cfg.app))
            self.description = describe_service(
                self.service, dict(self.cfg.endpoint), int(self.cfg.workers)
            )
        except GreenZMQError as e:
            print(f"greenzmq: error: {e}", file=sys.stderr, flush=True)
            return EXIT_CONFIG
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            return EXIT_FAILED
        return None

    def load(self) -> None:
        """Import the app (zmq.green with it), set up logging, resolve this worker's endpoints."""
        from ..core.sockets import apply_endpoints
        from ..core.tracing import configure_logging, get_logger
        from .appspec import as_service, load_app
        from .config import expand_endpoints

        cfg, wid = self.cfg, self.wid
        if self.service is None:
            self.service = as_service(load_app(cfg.app))
        service = self.service
        configure_logging(
            service.name,
            fmt=cfg.log_format,
            log_file=cfg.log_file,
            level=cfg.log_level,
            trace_sample=cfg.trace_sample,
        )
        self.log = get_logger(wid=wid)
        self.info.service, self.info.log = service, self.log
        self.endpoints = {n: expand_endpoints(a, wid) for n, a in cfg.endpoint.items()}
        specs = apply_endpoints(service.specs, self.endpoints)  # names and syntax, no socket yet
        self.ipc_files = [
            ep[len("ipc://") :] for sp in specs for ep in sp.bind if ep.startswith("ipc://")
        ]
        # the master KILLs at graceful_timeout: the service's own grace (if shorter)
        # stands, otherwise it finishes a little before the KILL
        service.graceful_timeout = min(
            float(service.graceful_timeout), max(0.05, cfg.graceful_timeout - 0.5)
        )
        self.title(f"worker {wid} [{cfg.name or service.name}]")
        if cfg.monitor:
            service.monitor = True  # a spec that says monitor=False keeps it off
        if cfg.block_threshold > 0:
            self.install_monitor()

    def install_monitor(self) -> None:
        """Report a hub blocked longer than ``block_threshold`` as one structured event."""
        import gevent
        import gevent.events

        threshold, log, stats = self.cfg.block_threshold, self.log, self.service.stats

        def on_event(event: Any) -> None:
            if isinstance(event, gevent.events.EventLoopBlocked):
                stats.count("hub_blocked")  # the monitor thread's: a Counter add, GIL-safe
                log.warning(
                    "worker.hub_blocked",
                    threshold=threshold,
                    greenlet=repr(event.greenlet),
                    stack="\n".join(str(x) for x in event.info),
                    fix=BLOCKED_FIX,
                )

        gevent.events.subscribers.append(on_event)
        with warnings.catch_warnings():
            # "Unable to monitor memory usage. Install psutil.": we do not ask it to
            warnings.simplefilter("ignore")
            gevent.get_hub().start_periodic_monitoring_thread()

    def _on_ready(self, svc: Any) -> None:
        self.ready = True
        if self.check:
            # bound: the master may fork the rest
            self.chan.send(protocol.checked(self.description))
        self.chan.send(protocol.ready())
        self.cfg.run_hook("post_worker_init", self.info)

    # -- heartbeat, and the master's death -----------------------------------------
    def start_heartbeat(self) -> None:
        """Beat from one greenlet; watch for the master's EOF from another."""
        import gevent

        self._greenlets = [gevent.spawn(self._beat), gevent.spawn(self._watch_master)]
        if self.cfg.metrics:
            # bytes too (the broker counts them only when someone reads the stats)
            self.service.stats.detailed = True
            self._greenlets.append(gevent.spawn(self._report_stats))

    def send_stats(self) -> None:
        """Send one ``stats`` line: the service's snapshot (``--metrics``)."""
        import orjson

        try:
            snap = self.service.stats.snapshot()
            snap["requests"] = self.service.requests  # what request_done() counted
        except Exception as e:  # a gauge of a half-stopped service: the next one will do
            self.log.debug("worker.stats_failed", error=repr(e))
            return
        self.chan.send(protocol.stats(orjson.dumps(snap)))

    def _report_stats(self) -> None:
        import gevent

        while not self.chan.broken:
            self.send_stats()
            gevent.sleep(protocol.STATS_INTERVAL)

    def _beat(self) -> None:
        import gevent

        while not self.chan.broken:
            self.chan.send(protocol.beat())
            gevent.sleep(self.interval)

    def _watch_master(self) -> None:
        try:
            while self.chan.sock.recv(64):
                pass
        except OSError:
            pass
        if not self.service.stopping.is_set():
            self.log.warning("worker.master_gone", wid=self.wid)
            self.reason = "master gone"
            # an orphan should not outlive its master by much: two beats at most
            self.service.graceful_timeout = min(self.service.graceful_timeout, self.interval)
            self.service.stop("master gone")

    def stop_heartbeat(self) -> None:
        """Stop beating and watching (the greenlets end at the hub's next turn)."""
        for g in self._greenlets:
            g.kill(block=False)

    # -- max requests ----------------------------------------------------------------
    def watch_max_requests(self) -> None:
        """With ``max_requests``: stop gracefully after that many (plus jitter) requests."""
        if self.cfg.max_requests <= 0:
            return
        # the jitter staggers the recycling of workers started together
        self.limit = self.cfg.max_requests + random.randint(0, self.cfg.max_requests_jitter)
        self.service.add_request_callback(self._count)

    def _count(self, svc: Any) -> None:
        if svc.requests >= self.limit and not svc.stopping.is_set():
            self.log.info(
                "worker.max_requests", wid=self.wid, requests=svc.requests, limit=self.limit
            )
            self.reason = protocol.RECYCLE
            svc.stop("max requests")

    # -- signals -----------------------------------------------------------------------
    def install_signals(self) -> None:
        """TERM graceful, INT/QUIT quick, USR1 reopen logs, ABRT abort; the master's ignored."""
        import gevent

        from ..core.tracing import reopen_log_files

        signal.signal(signal.SIGABRT, self._abort)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)  # the master's business
        self._handlers = [
            gevent.signal_handler(signal.SIGTERM, self.service.stop, "SIGTERM"),
            gevent.signal_handler(signal.SIGINT, self._quick, "SIGINT"),
            gevent.signal_handler(signal.SIGQUIT, self._quick, "SIGQUIT"),
            gevent.signal_handler(signal.SIGUSR1, reopen_log_files),
        ]

    def remove_signals(self) -> None:
        """Cancel the gevent signal handlers."""
        for h in self._handlers:
            h.cancel()

    def _quick(self, signame: str) -> None:
        self.cfg.run_hook("worker_int", self.info)
        service = self.service
        service.graceful_timeout = 0.0
        if service.stopping.is_set():
            # already in a graceful stop: end the in-flight work now
            service.group.kill(block=False)
        service.stop(signame)

    def _abort(self, signum: int, frame: Any) -> None:
        # a plain handler: it runs between bytecodes even while the hub is blocked
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        try:
            self.log.error("worker.abort", wid=self.wid, stack=stack)
            self.cfg.run_hook("worker_abort", self.info)
        finally:
            os._exit(EXIT_FAILED)

    # -- exit ------------------------------------------------------------------------------
    def serve_failed(self, exc: BaseException) -> int:
        """``serve`` raised: a crash once ready, a boot failure (the master halts) before."""
        import zmq

        from ..errors import GreenZMQError

        if self.ready:
            self.log.error("worker.failed", wid=self.wid, error=repr(exc), exc_info=True)
            return EXIT_FAILED
        # the first worker is still the pre-fork check: its message is the command's own line
        if isinstance(exc, (GreenZMQError, zmq.ZMQError)):
            code = EXIT_FAILED if isinstance(exc, zmq.ZMQError) else EXIT_CONFIG
            return self.report_failure(exc, code, echo=self.check)
        return self.report_failure(exc, EXIT_BOOT, echo=self.check)

    def exit(self, code: int) -> int:
        """``serve`` returned ``code``: tell the master why, if it did not ask; the exit code."""
        refused = getattr(self.service, "refused", None)
        if refused is not None:
            # the spec named a factory that no annotation gave away: a usage error,
            # the master halts with its line (exit 2) instead of restarting it
            self.stop_heartbeat()
            return self.report_failure(refused, EXIT_CONFIG)
        if self.cfg.metrics:
            self.send_stats()  # the last counts: the master folds them into its totals
        if code == EXIT_OK and self.reason == protocol.RECYCLE:
            self.chan.send(protocol.recycle())
        elif code == EXIT_OK and self.service.stop_reason not in _STOP_SIGNALS:
            self.chan.send(protocol.done(self.service.stop_reason))
        self.stop_heartbeat()
        sys.stdout.flush()
        sys.stderr.flush()
        return code

    def report_failure(self, exc: BaseException, code: int, *, echo: bool = False) -> int:
        """Send ``fail`` for a failed boot; the exit code.

        An expected error (greenzmq's, zmq's, a ValueError) is a one-line
        message, exit 2 if it is the user's (:func:`is_config_error`), else
        ``code``; anything else is a traceback and :data:`EXIT_BOOT`. ``echo``:
        nothing is forked yet, so the line goes on the command's stderr here
        and the master stays quiet.
        """
        import zmq

        from ..errors import GreenZMQError

        expected = isinstance(exc, (GreenZMQError, zmq.ZMQError, ValueError))
        if expected and is_config_error(exc):
            code = EXIT_CONFIG
        failure: protocol.Failure = {"code": code if expected else EXIT_BOOT}
        if expected:
            failure["message"] = str(exc)
            if echo:
                print(f"greenzmq: error: {exc}", file=sys.stderr, flush=True)
        else:
            failure["traceback"] = "".join(traceback.format_exception(exc))
        self.chan.send(protocol.fail(failure))
        return failure["code"]


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


def _remove_ipc_files(paths: list[str]) -> None:
    """Remove the ipc files this worker bound: libzmq leaves them behind on close."""
    for path in paths:
        if path and not path.startswith("@"):  # "@name": Linux abstract namespace, no file
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


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


def main(argv: list[str] | None = None) -> int:
    """``python -m greenzmq.launcher.workerproc REQUEST``: the first worker, exec'd by the master.

    REQUEST (:func:`greenzmq.launcher.protocol.encode_request`) holds the
    command line, the worker index and the inherited descriptor of the master
    pipe. The settings are resolved again from the same command line and
    environment, so hooks from ``-c`` exist here too (``post_fork`` gets
    ``None`` for the arbiter).
    """
    from .config import load_config
    from .proc import title_setter

    args, wid, fd = protocol.decode_request((sys.argv[1:] if argv is None else argv)[0])
    cfg = load_config(args)
    cfg.run_hook("post_fork", None, WorkerInfo(wid))
    return WorkerProcess(cfg, wid, fd, title_setter(), check=True).run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # like a forked worker: no interpreter teardown (gevent threads, atexit)
