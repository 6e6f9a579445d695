"""The pre-fork master: keeps ``workers`` processes serving the app, and nothing else.

Stdlib only: the master never imports zmq, zmq.green or gevent, so no context,
socket or hub crosses a fork (rule 7). It does not even import the app, which
would import zmq.green. The app is checked before any fork by the first
worker, which the master starts with exec (``python -m greenzmq.launcher.workerproc``):
that fresh interpreter imports the app, validates the endpoints for every
worker index, binds, and reports ``checked`` (or prints the one-line error or
the traceback and exits; the master then exits with its code). Only then does
the master fork the other workers; each imports gevent, then the app, then
makes its own context (:mod:`greenzmq.launcher.workerproc`). Spec syntax and settings
were checked earlier, in the command (:mod:`greenzmq.launcher.runner`).

The loop reads top to bottom, like gunicorn's::

    wait (self-pipe + worker pipes, short timeout)
    -> handle one queued signal
    -> reap dead children
    -> murder workers that stopped beating
    -> manage the worker count

Signal handlers only append to a queue and write a byte to the self-pipe;
every decision and every log line happens in the loop (logging inside a
handler deadlocked gunicorn's master, #3198).

Signals: TERM graceful stop (workers finish in-flight work; KILL after
``graceful_timeout``); INT/QUIT quick stop (KILL after 1 s); HUP re-reads the
config and replaces every worker (new workers first; the old ones retire once
as many new ones have booted); TTIN/TTOU one worker more/less (never below
1); USR1 reopens log files here and in the workers.

With ``--metrics HOST:PORT`` the master serves ``/metrics`` from this loop
(:mod:`greenzmq.launcher.metrics`: the workers send their counters over the
same pipes). With ``NOTIFY_SOCKET`` set it speaks systemd's ``sd_notify``
(:mod:`greenzmq.launcher.sdnotify`): READY, RELOADING, STOPPING, STATUS and
the watchdog, fed while some worker's heartbeat is live.

Workers heartbeat over a socketpair (:mod:`greenzmq.launcher.protocol` has
what they say and what their exit codes mean); one silent for ``timeout``
seconds gets ABRT (it logs its stack and runs ``worker_abort``), then KILL a
second later, and a replacement. A worker that fails while booting halts the master with
the worker's message or traceback; a worker that crashes after booting is
replaced, with exponential backoff while crashes keep coming. "While
booting" halts only when the worker reports its own boot failure (``fail``),
or for any death before the app has ever served (its first boot); a later
worker killed during its boot (the OOM killer) is a crash, not a halt.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

from ..errors import ConfigError
from .config import LOG_LEVELS, Config, load_config
from .proc import Pidfile, child_env, title_setter
from .protocol import (
    CHECKED,
    EXIT,
    EXIT_BOOT,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    FAIL,
    READY,
    STATS,
    Failure,
    LineReader,
    encode_request,
    heartbeat_interval,
    is_done,
    is_recycle,
)
from .sdnotify import Notifier

__all__ = ["Arbiter", "HaltServer", "MasterLog"]

KILL_GRACE = 1.0  # seconds between ABRT (or a quick stop) and KILL
STABLE_AFTER = 5.0  # a worker up this long ends a crash streak
MAX_BACKOFF = 10.0

SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)


class HaltServer(BaseException):
    """Stop the master now (a BaseException: hooks and app code cannot swallow it)."""

    def __init__(
        self, reason: str, exit_status: int = 1, detail: str = "", *, quiet: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status
        self.detail = detail
        self.quiet = quiet  # the message is already on stderr (the first worker printed it)


class MasterLog:
    """The master's events: JSON lines or console lines, same fields as the workers'.

    Stdlib only (no structlog here is a choice, not a need: the master's log
    path stays trivially fork- and signal-safe). Reopened on USR1.
    """

    def __init__(self, fmt: str | None, path: str | None, level: str, service: str) -> None:
        self.path = path
        if fmt is None:
            fmt = "console" if (path is None and sys.stderr.isatty()) else "json"
        self.fmt = fmt
        self.min = LOG_LEVELS.index(level)
        self.service = service
        self._f: IO[str] | None = None
        self.reopen()

    def reopen(self) -> None:
        """Open (again) the log file; stderr when there is none."""
        if self.path is None:
            return
        old, self._f = self._f, open(self.path, "a", buffering=1)  # noqa: SIM115
        if old is not None:
            old.close()

    def fileno(self) -> int | None:
        """The log file's descriptor (workers close it after fork)."""
        return self._f.fileno() if self._f is not None else None

    def close(self) -> None:
        """Close the log file."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Write one event if ``level`` passes the threshold."""
        if LOG_LEVELS.index(level) < self.min:
            return
        out = self._f or sys.stderr
        if self.fmt == "json":
            rec = {
                "event": event,
                "level": level,
                "timestamp": time.time(),
                "service": self.service,
                "role": "master",
                "pid": os.getpid(),
                **fields,
            }
            line = json.dumps(rec, default=str)
        else:
            ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            kv = " ".join(f"{k}={v!r}" for k, v in fields.items())
            line = f"{ts} [{level:<8}] {event:<24} master pid={os.getpid()} {kv}"
        out.write(line + "\n")
        out.flush()

    def debug(self, event: str, **fields: Any) -> None:
        """A debug event."""
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """An info event."""
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """A warning event."""
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """An error event."""
        self.log("error", event, **fields)


class Worker:
    """The master's record of one worker process."""

    def __init__(self, wid: int, pid: int, sock: socket.socket) -> None:
        self.wid = wid
        self.pid = pid
        self.sock: socket.socket | None = sock
        self.born = self.last_beat = time.monotonic()
        self.booted_at: float | None = None
        self.retiring = False  # we asked it to stop (TERM)
        self.stale = False  # HUP: retire once its successors have booted
        self.reloaded = False  # a HUP replaces it (at once or once its successors boot)
        self.kill_at: float | None = None  # KILL if still alive then
        self.aborted = False
        self.failure: Failure | None = None
        self.exit_reason: str | None = None
        self.checked: dict[str, Any] | None = None
        self.snapshot: dict[str, Any] | None = None  # its latest ``stats`` (--metrics)
        self._reader = LineReader()

    def feed(self, data: bytes) -> None:
        """Take what the worker said (:mod:`greenzmq.launcher.protocol`)."""
        self.last_beat = time.monotonic()  # any line proves the hub runs
        for msg in self._reader.feed(data):
            if msg.kind == READY:
                self.booted_at = time.monotonic()
            elif msg.kind == FAIL:
                self.failure = msg.arg
            elif msg.kind == EXIT:
                self.exit_reason = msg.arg
            elif msg.kind == STATS:
                self.snapshot = msg.arg
            elif msg.kind == CHECKED:
                self.checked = msg.arg


class Arbiter:
    """The master process (see the module docstring).

    ``argv`` is the command line, re-read on HUP and passed to the exec'd first
    worker; ``reload_check(new_cfg)`` checks a HUP that changes the app, its
    endpoints or the worker count, returning the new app description or raising.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        argv: list[str],
        reload_check: Callable[[Config], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.info: dict[str, Any] = {}  # from the first worker's check: name, binds
        self.checked = False
        self.quiet_exit = False  # the first worker already printed why we stop
        self.argv = argv
        self.reload_check = reload_check
        self.name = cfg.name or "greenzmq"
        self.num_workers = int(cfg.workers)
        self.workers: dict[int, Worker] = {}
        self.sig_queue: list[int] = []
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.crash_streak = 0
        self.spawn_not_before = 0.0
        self.ready_announced = False
        # a worker served once: later boots that die without a report of their
        # own (SIGKILL by the OOM killer, ...) are crashes, respawned with backoff
        self.app_booted = False
        self.title = title_setter()
        self.log = MasterLog(cfg.log_format, cfg.log_file, cfg.log_level, self.name)
        self.pipe: tuple[int, int] = (-1, -1)
        self.selector: selectors.BaseSelector | None = None
        self.pidfile: Pidfile | None = None  # once written: removed at exit
        self.metrics: Any = None  # launcher.metrics.Metrics with --metrics
        self.metrics_server: Any = None
        self.notify = Notifier.from_env()
        self.reloading = False  # a HUP's RELOADING=1 awaits its READY=1

    # -- start / stop ------------------------------------------------------
    def _binds_per_worker(self) -> bool:
        return any(s.get("bind") for s in self.info.get("sockets", ()))

    def start(self) -> None:
        """Pidfile, self-pipe, signal handlers; ``on_starting``."""
        self.cfg.run_hook("on_starting", self)
        if self.cfg.pid:
            pidfile = Pidfile(self.cfg.pid)
            try:
                pidfile.create()
            except ConfigError as e:
                raise HaltServer(str(e), EXIT_CONFIG) from None
            self.pidfile = pidfile
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self.pipe = (r, w)
        self.selector = selectors.DefaultSelector()
        self.selector.register(r, selectors.EVENT_READ, None)
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        if self.cfg.metrics:
            self.start_metrics(self.cfg.metrics)
        self.title(f"master [{self.name}]")

    def start_metrics(self, address: str) -> None:
        """Listen for scrapes on ``address`` (a HUP does not move it)."""
        from .metrics import Metrics, MetricsServer  # prometheus_client: only when asked for

        assert self.selector is not None
        self.metrics = Metrics()
        self.metrics.workers_alive = lambda: len(self.workers)
        self.metrics.workers_desired = lambda: self.num_workers
        try:
            self.metrics_server = MetricsServer(address, self.metrics)
        except ConfigError as e:
            raise HaltServer(str(e), EXIT_CONFIG) from None
        self.metrics_server.attach(self.selector)
        self.log.info("master.metrics", address=address, path="/metrics")

    def _on_checked(self, info: dict[str, Any]) -> None:
        self.checked = True
        self.info = info
        self.name = self.cfg.name or str(info.get("service", "greenzmq"))
        self.log.service = self.name
        self.title(f"master [{self.name}]")
        self.log.info(
            "master.start",
            workers=self.num_workers,
            app=self.cfg.app,
            timeout=self.cfg.timeout,
            graceful_timeout=self.cfg.graceful_timeout,
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        # only enqueue and wake the loop: no logging, no locks. CHLD needs no entry
        # (the loop reaps on every turn); a full queue drops HUP/TTIN/... but never a stop.
        if signum != signal.SIGCHLD and (
            len(self.sig_queue) < 64 or signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
        ):
            self.sig_queue.append(signum)
        try:
            os.write(self.pipe[1], b".")
        except OSError:
            pass  # pipe full: the loop is awake anyway

    def run(self) -> int:
        """Run until stopped; return the exit code."""
        detail = ""
        try:
            self.start()
            self.manage_workers()
            while True:
                if self.sig_queue:
                    self.handle(self.sig_queue.pop(0))
                else:
                    self.wait()
                self.reap_workers()
                self.murder_workers()
                if self.stopping and not self.workers:
                    break
                self.manage_workers()
                self.tell_systemd()
        except HaltServer as h:
            detail = h.detail
            self.exit_code = h.exit_status
            self.quiet_exit = h.quiet
            (self.log.debug if h.quiet else self.log.error)(
                "master.halt", reason=h.reason, exit_code=h.exit_status
            )
            if detail:
                sys.stderr.write(detail if detail.endswith("\n") else detail + "\n")
            if not h.quiet:
                print(f"greenzmq: error: {h.reason}", file=sys.stderr, flush=True)
            self.kill_all(signal.SIGKILL)
            self._wait_children(5.0)
        finally:
            self._shutdown()
        return self.exit_code

    def _shutdown(self) -> None:
        try:
            self.cfg.run_hook("on_exit", self)
        except Exception:
            self.log.error("master.hook_failed", hook="on_exit", error=traceback.format_exc())
        if self.pidfile is not None:
            self.pidfile.remove()
        (self.log.debug if self.quiet_exit else self.log.info)("master.exit", code=self.exit_code)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.notify.close()
        if self.selector is not None:
            self.selector.close()
        for fd in self.pipe:
            if fd >= 0:
                os.close(fd)
        self.log.close()

    # -- the loop ------------------------------------------------------------
    def wait(self) -> None:
        """Sleep until a signal, a worker line, or a short timeout."""
        assert self.selector is not None
        timeout = 0.05 if (self.stopping or any(w.kill_at for w in self.workers.values())) else 0.25
        if self.notify.watchdog_interval:
            timeout = min(timeout, self.notify.watchdog_interval / 2)
        if self.metrics_server is not None:
            self.metrics_server.sweep(time.monotonic())
        try:
            ready = self.selector.select(timeout)
        except InterruptedError:
            return
        for key, _ in ready:
            if key.data is None:
                try:
                    while os.read(self.pipe[0], 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            if key.data is self.metrics_server:
                self.metrics_server.on_ready(key.fileobj)
                continue
            w: Worker = key.data
            try:
                data = w.sock.recv(65536) if w.sock is not None else b""
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                w.feed(data)
                if w.snapshot is not None and self.metrics is not None:
                    self.metrics.update(w.pid, w.snapshot)
                if w.booted_at is not None:
                    self.app_booted = True
                if w.checked is not None and not self.checked:
                    self._on_checked(w.checked)
            else:
                self._close_channel(w)  # EOF: the worker is exiting; reap tells how

    def handle(self, sig: int) -> None:
        """Dispatch one queued signal to ``handle_<name>``."""
        name = signal.Signals(sig).name  # never CHLD: _on_signal does not queue it
        self.log.info("master.signal", signal=name)
        getattr(self, f"handle_{name[3:].lower()}")()

    def handle_term(self) -> None:
        """Graceful stop."""
        self.stop(graceful=True)

    def handle_int(self) -> None:
        """Quick stop (also during a graceful one)."""
        self.stop(graceful=False)

    handle_quit = handle_int

    def handle_hup(self) -> None:
        """Re-read the config; replace every worker gracefully, new ones booted first."""
        if self.stopping:
            return
        self.notify.reloading()
        self.reloading = True  # READY=1 again once the new workers serve (manage_workers)
        try:
            new = load_config(self.argv)
            if self.reload_check is not None and (
                new.app != self.cfg.app
                or new.endpoint != self.cfg.endpoint
                or new.workers != self.cfg.workers
            ):
                self.info = self.reload_check(new)
        except Exception as e:
            self.log.error("master.reload_failed", error=str(e))
            self._reload_failed()
            return
        except SystemExit:
            self.log.error("master.reload_failed", error="bad arguments")
            self._reload_failed()
            return
        if new.metrics != self.cfg.metrics:
            # the listening socket stays where it is: moving it would drop scrapes
            self.log.warning(
                "master.metrics_unchanged", metrics=self.cfg.metrics, asked=new.metrics
            )
        old_n, self.cfg = self.num_workers, new
        self.num_workers = int(new.workers)
        if old_n != self.num_workers:
            self.cfg.run_hook("nworkers_changed", self, self.num_workers, old_n)
        # gunicorn's order: the new workers start now (manage_workers), the old
        # ones serve until as many new ones have booted, then retire. Retired at
        # once: workers still booting (an earlier HUP's: no capacity yet, old
        # config) and, with per-worker binds, every worker (its successor needs
        # the address it holds).
        replacing = retired = 0
        for w in list(self.workers.values()):
            if w.retiring:
                continue
            w.reloaded = True  # replaced by this HUP: a "reload" restart in the metrics
            if w.booted_at is None or self._binds_per_worker():
                self.retire(w)
                retired += 1
            else:
                w.stale = True
                replacing += 1
        self.log.info(
            "master.reload", workers=self.num_workers, replacing=replacing, retired=retired
        )

    def _reload_failed(self) -> None:
        # the old workers go on serving: ready as before
        self.reloading = False
        self.notify.ready(self._status())

    def handle_ttin(self) -> None:
        """One worker more."""
        if self.stopping:
            return
        self._resize(self.num_workers + 1)

    def handle_ttou(self) -> None:
        """One worker less (never below one)."""
        if self.stopping:
            return
        self._resize(max(1, self.num_workers - 1))

    def handle_usr1(self) -> None:
        """Reopen log files, here and in every worker."""
        self.log.reopen()
        self.kill_all(signal.SIGUSR1)
        self.log.info("master.reopened_logs")

    def _resize(self, n: int) -> None:
        old, self.num_workers = self.num_workers, n
        self.log.info("master.workers", workers=n, was=old)
        if n != old:
            self.cfg.run_hook("nworkers_changed", self, n, old)

    def stop(self, graceful: bool) -> None:
        """Start a graceful (TERM) or quick (QUIT, then KILL) stop of every worker."""
        now = time.monotonic()
        if graceful and self.stopping:
            return
        if not self.stopping:
            self.notify.stopping()
        if graceful:
            self.stopping = "graceful"
            self.stop_deadline = now + float(self.cfg.graceful_timeout)
            self.kill_all(signal.SIGTERM)
        else:
            self.stopping = "quick"
            self.stop_deadline = min(self.stop_deadline or now + KILL_GRACE, now + KILL_GRACE)
            self.kill_all(signal.SIGQUIT)
        self.log.info("master.stopping", mode=self.stopping, workers=len(self.workers))

    def retire(self, w: Worker) -> None:
        """Ask one worker to stop gracefully; KILL it after graceful_timeout."""
        if w.retiring:
            return
        w.retiring = True
        w.kill_at = time.monotonic() + float(self.cfg.graceful_timeout)
        self._kill(w.pid, signal.SIGTERM)

    def reap_workers(self) -> None:
        """Collect every exited child; decide what each exit means."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue  # an orphan re-parented to us (PID 1 in a container)
            self._close_channel(w)
            if self.metrics is not None:
                if w.snapshot is not None:
                    self.metrics.update(w.pid, w.snapshot)  # its last words, read on close
                self.metrics.worker_gone(w.pid)
            code = os.waitstatus_to_exitcode(status)
            self._worker_exited(w, code)

    def _worker_exited(self, w: Worker, code: int) -> None:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        # before the app checks, the first worker's own one-line error is the
        # whole story: the master's bookkeeping only at debug level
        log = self.log.info if self.checked else self.log.debug
        log(
            "worker.exit",
            worker_pid=w.pid,
            wid=w.wid,
            how=how,
            reason=w.exit_reason,
            booted=w.booted_at is not None,
        )
        try:
            self.cfg.run_hook("worker_exit", self, w)
        except Exception:
            self.log.error("master.hook_failed", hook="worker_exit", error=traceback.format_exc())
        if self.stopping:
            return
        if not self.checked and w.failure is None:
            # the first worker is the pre-fork check and printed why it failed
            if code == EXIT_CONFIG:
                raise HaltServer("the app does not check", EXIT_CONFIG, quiet=True)
            if code == EXIT_FAILED:
                raise HaltServer(
                    f"importing {self.cfg.app!r} failed (traceback above)", EXIT_FAILED
                )
            raise HaltServer(f"worker failed to boot ({how})", EXIT_BOOT)
        if w.failure is not None:
            f = w.failure
            if "message" in f:
                # before the check passed, the first worker printed the message itself
                quiet = not self.checked
                raise HaltServer(str(f["message"]), int(f.get("code", EXIT_FAILED)), quiet=quiet)
            raise HaltServer(
                "worker failed to boot (traceback above)",
                int(f.get("code", EXIT_BOOT)),
                detail=str(f.get("traceback", "")),
            )
        if w.booted_at is None and not w.retiring and not w.aborted and not self.app_booted:
            # the app's first boot: nothing ever served, respawning would loop
            raise HaltServer(f"worker failed to boot ({how})", EXIT_BOOT)
        if w.retiring:
            if w.reloaded:
                self._restarted("reload")
            return
        if code == EXIT_OK and is_recycle(w.exit_reason):
            self._restarted("max_requests")
            return  # max-requests: manage_workers starts the replacement at once
        if code == EXIT_OK and is_done(w.exit_reason):
            # the app finished (kill switch, run returned): the whole launcher stops
            self.log.info("master.app_done", reason=w.exit_reason)
            self.stop(graceful=True)
            return
        self._restarted("timeout" if w.aborted else "crash")
        now = time.monotonic()
        stable = w.booted_at is not None and now - w.booted_at >= STABLE_AFTER
        self.crash_streak = 1 if stable else self.crash_streak + 1
        delay = (
            0.0 if self.crash_streak <= 1 else min(MAX_BACKOFF, 0.1 * 2 ** (self.crash_streak - 1))
        )
        self.spawn_not_before = now + delay
        self.log.warning(
            "worker.crashed",
            worker_pid=w.pid,
            wid=w.wid,
            how=how,
            streak=self.crash_streak,
            backoff=delay,
        )

    def _restarted(self, cause: str) -> None:
        if self.metrics is not None:
            self.metrics.restarts[cause] += 1

    def murder_workers(self) -> None:
        """KILL what is past its deadline; ABRT workers that stopped beating."""
        now = time.monotonic()
        if self.stopping and now >= self.stop_deadline:
            if self.workers:
                self.log.warning(
                    "master.stop_timeout", mode=self.stopping, killed=sorted(self.workers)
                )
            self.kill_all(signal.SIGKILL)
            self._wait_children(2.0)
            return
        timeout = float(self.cfg.timeout)
        for w in list(self.workers.values()):
            if w.kill_at is not None and now >= w.kill_at:
                self._kill(w.pid, signal.SIGKILL)
                w.kill_at = None
            elif timeout > 0 and not w.aborted and now - w.last_beat > timeout:
                self.log.error(
                    "worker.timeout",
                    worker_pid=w.pid,
                    wid=w.wid,
                    silent=round(now - w.last_beat, 3),
                    timeout=timeout,
                )
                w.aborted = True
                w.kill_at = now + KILL_GRACE
                self._kill(w.pid, signal.SIGABRT)

    def manage_workers(self) -> None:
        """Start or retire workers until the count matches; end a HUP's handover."""
        if self.stopping:
            return
        if not self.checked:
            if not self.workers:
                self.spawn_first_worker()
            return  # nothing is forked before the first worker checked the app
        live = sorted(
            (w for w in self.workers.values() if not w.retiring and not w.stale),
            key=lambda w: w.wid,
        )
        for w in live[self.num_workers :]:
            self.retire(w)  # the highest indexes go first
        live = live[: self.num_workers]
        if len(live) < self.num_workers and time.monotonic() >= self.spawn_not_before:
            # a slot is busy while a worker holding it lives; with per-worker binds
            # a retiring worker still holds its address
            held = {w.wid for w in (self.workers.values() if self._binds_per_worker() else live)}
            for _ in range(self.num_workers - len(live)):
                wid = next(i for i in range(len(held) + 1) if i not in held)
                if wid >= self.num_workers and self._binds_per_worker():
                    break  # wait for the old holder of a slot to exit
                held.add(wid)
                self.spawn_worker(wid)
        stale = [w for w in self.workers.values() if w.stale and not w.retiring]
        if stale and sum(w.booted_at is not None for w in live) >= self.num_workers:
            for w in stale:
                self.retire(w)  # HUP: the new generation serves, the old one goes
            self.log.info("master.replaced", workers=self.num_workers, retired=len(stale))
        if (
            not self.ready_announced
            and self.workers
            and all(w.booted_at is not None for w in self.workers.values())
            and len(self.workers) >= self.num_workers
        ):
            self.ready_announced = True
            self.log.info("master.ready", workers=len(self.workers))
            self.notify.ready(self._status())
            self.cfg.run_hook("when_ready", self)
        if (
            self.reloading
            and not any(w.stale for w in self.workers.values())
            and sum(w.booted_at is not None for w in live) >= self.num_workers
        ):
            self.reloading = False  # the HUP's new generation serves
            self.notify.ready(self._status())

    # -- systemd -----------------------------------------------------------------
    def _status(self) -> str:
        serving = sum(
            w.booted_at is not None and not w.retiring and not w.stale
            for w in self.workers.values()
        )
        state = ", reloading" if self.reloading else ""
        if self.stopping:
            state = f", {self.stopping} stop"
        return f"{serving} of {self.num_workers} workers serving{state}"

    def workers_beating(self, now: float) -> bool:
        """Some worker's heartbeat is live (two beats late at most): the watchdog may be fed."""
        window = 2 * heartbeat_interval(float(self.cfg.timeout)) + 0.1
        return any(now - w.last_beat <= window for w in self.workers.values())

    def tell_systemd(self) -> None:
        """STATUS when it changed, WATCHDOG when due and some worker beats."""
        if not self.notify.enabled:
            return
        if self.ready_announced:
            self.notify.set_status(self._status())
        self.notify.watchdog(time.monotonic(), self.workers_beating(time.monotonic()))

    # -- forking ---------------------------------------------------------------
    def spawn_worker(self, wid: int) -> Worker:
        """Fork one worker for slot ``wid``."""
        assert self.selector is not None
        parent, child = socket.socketpair()
        placeholder = Worker(wid, 0, parent)
        self.cfg.run_hook("pre_fork", self, placeholder)
        # block our signals across fork so the child never runs the master's handlers
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            parent.close()
            child.close()
            raise
        if pid == 0:  # pragma: no cover - runs in the child, ends with _exit
            code = 1
            try:
                parent.close()
                code = self._child(wid, child, old_mask)
            except BaseException:
                traceback.print_exc()
                code = EXIT_BOOT
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child.close()
        parent.setblocking(False)
        w = placeholder
        w.pid = pid
        self.workers[pid] = w
        self.selector.register(parent, selectors.EVENT_READ, w)
        self.log.info("worker.spawn", worker_pid=pid, wid=wid)
        return w

    def spawn_first_worker(self) -> Worker:
        """Start worker 0 with exec: a fresh interpreter that also checks the app."""
        assert self.selector is not None
        parent, child = socket.socketpair()
        placeholder = Worker(0, 0, parent)
        self.cfg.run_hook("pre_fork", self, placeholder)
        os.set_inheritable(child.fileno(), True)
        req = encode_request(self.argv, 0, child.fileno())
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "greenzmq.launcher.workerproc", req],
                child_env(),
            )
        finally:
            child.close()
        parent.setblocking(False)
        placeholder.pid = pid
        self.workers[pid] = placeholder
        self.selector.register(parent, selectors.EVENT_READ, placeholder)
        self.log.debug("worker.spawn", worker_pid=pid, wid=0, exec=True)
        return placeholder

    def _child(self, wid: int, chan: socket.socket, mask: Any) -> int:
        # forget the master: its handlers, self-pipe, selector, other workers' pipes
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if self.selector is not None:
            self.selector.close()
        for fd in self.pipe:
            os.close(fd)
        for other in self.workers.values():
            if other.sock is not None:
                other.sock.close()
        if self.metrics_server is not None:
            self.metrics_server.close_in_child()
        self.notify.close()
        self.log.close()
        self.cfg.run_hook("post_fork", self, Worker(wid, os.getpid(), chan))
        from .workerproc import WorkerProcess  # the worker's code: the master never runs it

        fd = chan.detach()
        return WorkerProcess(self.cfg, wid, fd, self.title).run()

    # -- helpers ---------------------------------------------------------------
    def _close_channel(self, w: Worker) -> None:
        if w.sock is None:
            return
        try:  # what it said last (its final stats, its exit reason) before closing
            while data := w.sock.recv(65536):
                w.feed(data)
        except OSError:
            pass
        if self.selector is not None:
            try:
                self.selector.unregister(w.sock)
            except (KeyError, ValueError):
                pass
        w.sock.close()
        w.sock = None

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except OSError as e:  # pragma: no cover
            if e.errno != errno.ESRCH:
                raise

    def kill_all(self, sig: int) -> None:
        """Send ``sig`` to every worker."""
        for pid in list(self.workers):
            self._kill(pid, sig)

    def _wait_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.workers and time.monotonic() < deadline:
            for pid in list(self.workers):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if done:
                    w = self.workers.pop(pid)
                    self._close_channel(w)
                    self.log.info(
                        "worker.exit",
                        worker_pid=pid,
                        wid=w.wid,
                        how=f"code {os.waitstatus_to_exitcode(status)}",
                        reason="killed",
                        booted=w.booted_at is not None,
                    )
            if self.workers:
                time.sleep(0.01)
