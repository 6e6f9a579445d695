"""Handlers off the hub: run a request handler inline, in threads, or in processes.

A handler that computes for seconds without yielding stops the hub: no
heartbeat goes out, the kill switch and the stats endpoint go unanswered, and
a heartbeating queue declares the worker dead. :class:`Offload` runs the
handler where it does not hold the hub:

* ``None`` (inline): in the calling greenlet. Right for handlers that wait
  green (sockets, ``gevent.sleep``) or finish in milliseconds. A call that
  held the hub longer than ``warn_after`` seconds is logged
  (``handler.blocked_hub``) with the fix: an offload.
* ``"thread"``: in a :class:`gevent.threadpool.ThreadPool` of ``pool``
  threads. The hub keeps running: a thread holding the GIL with pure-Python
  work gives it up every ``sys.getswitchinterval()`` (5 ms), so heartbeats
  go out late by milliseconds, not seconds. C code that releases the GIL
  (hashlib on large buffers, zlib, numpy, blocking I/O) runs in parallel.
* ``"process"``: in a :class:`concurrent.futures.ProcessPoolExecutor` of
  ``pool`` processes started with ``spawn`` (a fresh interpreter), never by
  forking this process: no zmq context, socket or gevent hub crosses a fork
  (rule 7). Not ``forkserver``: its server process dies of a SIGTERM sent to
  the whole process group, and the pool counts that as the death of every
  process it forked (BrokenProcessPool) while their requests still run.
  CPU-bound Python runs in parallel. The handler and its arguments are
  pickled: it must be a module-level function (or a picklable callable such
  as a ``functools.partial`` of one), its module is imported in each pool
  process, and a script must guard its entry with
  ``if __name__ == "__main__":`` (as with :mod:`multiprocessing`). The pool
  processes ignore SIGINT and SIGTERM: their owner decides when they end (a
  SIGTERM to the whole process group lets the request in hand finish;
  :meth:`Offload.close` kills a process still working), and they exit by
  themselves when the owner dies without closing the pool. A pool process
  that dies (a crash, SIGKILL) fails the request it held with
  :class:`~concurrent.futures.process.BrokenProcessPool`; the pool is
  rebuilt for the next request.

Either way the calling greenlet waits green and gets the handler's reply, or
its exception, back. The pools are made by :meth:`Offload.start`, in the
process that serves (after any fork), and ended by :meth:`Offload.close`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import gevent
import gevent.event
import gevent.threadpool

from ..errors import ConfigError
from .tracing import get_logger

__all__ = ["MODES", "FrameHandler", "Offload", "check_offload"]

FrameHandler = Callable[[list[bytes]], Sequence[bytes]]
"""A handler: request body frames in, reply body frames out."""

MODES = (None, "thread", "process")
"""What ``offload=`` accepts."""

OWNER_CHECK = 0.5
"""Seconds between a pool process's checks that its owner is alive."""

FIX = "run the handler with offload='thread' (or 'process' for parallel CPU work)"
"""The log's advice for a handler that holds the hub."""


def check_offload(offload: str | None, pool: int) -> None:
    """Raise :class:`~greenzmq.errors.ConfigError` (one line) for a bad ``offload``/``pool``."""
    if offload not in MODES:
        raise ConfigError(f"offload must be None, 'thread' or 'process', got {offload!r}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ConfigError(f"pool must be a positive integer, got {pool!r}")


def _call(handler: FrameHandler, body: list[bytes]) -> list[bytes]:
    # in the thread or process too: a generator or memoryviews are made into bytes there
    return [bytes(f) for f in handler(body)]


def _call_caught(handler: FrameHandler, body: list[bytes]) -> tuple[bool, Any]:
    # gevent's thread pool prints a task's exception to stderr: hand it over instead
    try:
        return True, _call(handler, body)
    except Exception as e:
        return False, e


def _child_init(owner: int) -> None:
    # the pool's owner ends its processes (shutdown, or SIGKILL when it must): a
    # SIGTERM (or Ctrl-C) to the whole process group lets the owner decide
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_owner, args=(owner,), name="owner-watch", daemon=True).start()


def _watch_owner(owner: int) -> None:
    # A pool process never sees EOF when its owner dies without a shutdown (SIGKILL,
    # os._exit): it holds a write end of its own task pipe. Left alone it would
    # live on, an orphan waiting for work that never comes.
    while True:
        time.sleep(OWNER_CHECK)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # alive (pid reuse by another user's process is beyond reach here)


def _warm(handler: FrameHandler) -> int:
    # unpickling the handler imported its module: an import error shows at start
    return os.getpid()


def _name(handler: Any) -> str:
    fn = getattr(handler, "func", handler)  # functools.partial
    mod = getattr(fn, "__module__", None) or "?"
    return f"{mod}:{getattr(fn, '__qualname__', type(fn).__name__)}"


START_METHOD = "spawn"
"""How pool processes start (see the module docstring: not fork, not forkserver)."""


class Offload:
    """Run ``handler(body)`` inline, in a thread pool or in a process pool; see the module.

    ``Offload(handler, "process", pool=2)``; :meth:`start` in the serving
    process, then ``offload(body)`` from any greenlet (it waits green),
    :meth:`close` at the end. ``warn_after``: seconds an inline call may hold
    the hub before it is logged (None: never). Bad arguments raise
    :class:`~greenzmq.errors.ConfigError` here, before anything starts: an
    unknown mode, a pool under 1, or (``"process"``) a handler that cannot be
    pickled.
    """

    def __init__(
        self,
        handler: FrameHandler,
        offload: str | None = None,
        pool: int = 1,
        *,
        warn_after: float | None = None,
    ) -> None:
        check_offload(offload, pool)
        if offload == "process":
            try:
                pickle.dumps(handler)
            except Exception as e:
                raise ConfigError(
                    f"offload='process' needs a picklable handler (a module-level function "
                    f"or a functools.partial of one): {_name(handler)} is not ({e})"
                ) from None
        self.handler = handler
        self.mode = offload
        self.pool = pool
        self.warn_after = warn_after
        self.name = _name(handler)
        self.in_flight = 0
        self.calls = 0
        self.pool_restarts = 0
        self._log: Any = None  # bound when first used: in the serving process, once logging is set
        self._threads: gevent.threadpool.ThreadPool | None = None
        self._procs: concurrent.futures.ProcessPoolExecutor | None = None

    @property
    def log(self) -> Any:
        """The logger (``offload`` and ``handler`` bound)."""
        if self._log is None:
            self._log = get_logger(offload=self.mode or "inline", handler=self.name)
        return self._log

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Make the pool, in the process that serves; ``"process"``: start its processes now.

        The process pool is warmed up (every process started and the handler's
        module imported) so the first request does not pay for it and an
        import error fails the start, not a request.
        """
        if self.mode == "thread" and self._threads is None:
            self._threads = gevent.threadpool.ThreadPool(self.pool)
        elif self.mode == "process" and self._procs is None:
            self._procs = self._new_executor()
            t0 = time.monotonic()
            # all submitted before any is waited for: each one finds no idle process
            warming = [self._procs.submit(_warm, self.handler) for _ in range(self.pool)]
            pids = {self._wait(f) for f in warming}
            # (one fast process may have run both: the pool's own list has them all)
            pids.update(dict(getattr(self._procs, "_processes", None) or {}))
            self.log.info(
                "offload.started",
                pool=self.pool,
                start_method=START_METHOD,
                pids=sorted(pids),
                seconds=round(time.monotonic() - t0, 3),
            )

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        ctx = multiprocessing.get_context(START_METHOD)
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.pool, mp_context=ctx, initializer=_child_init, initargs=(os.getpid(),)
        )

    def close(self, timeout: float = 5.0) -> None:
        """End the pool; a process still running a handler (a stop past its grace) is killed."""
        threads, self._threads = self._threads, None
        if threads is not None and not self.in_flight:
            threads.kill()  # idle threads end; a busy one cannot be killed, it ends with us
        ex, self._procs = self._procs, None
        if ex is None:
            return
        pids = [p.pid for p in dict(getattr(ex, "_processes", None) or {}).values()]
        if self.in_flight:
            self._kill(pids)
        # shutdown(wait=True) joins the pool's manager thread: in a thread, so the hub runs
        done = gevent.get_hub().threadpool.spawn(ex.shutdown, wait=True, cancel_futures=True)
        if done.wait(timeout) is None and not done.ready():
            self.log.warning("offload.close_timeout", seconds=timeout)
            self._kill(pids)
            done.wait(timeout)

    @staticmethod
    def _kill(pids: list[int | None]) -> None:
        for pid in pids:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)  # they ignore TERM (see _child_init)
                except ProcessLookupError:
                    pass

    # -- calls -----------------------------------------------------------------
    def __call__(self, body: list[bytes]) -> list[bytes]:
        """The handler's reply frames for ``body`` (its exception, raised here)."""
        self.calls += 1
        self.in_flight += 1
        try:
            if self.mode is None:
                return self._inline(body)
            if self.mode == "thread":
                if self._threads is None:
                    self.start()
                assert self._threads is not None
                ok, reply = self._threads.apply(_call_caught, (self.handler, body))
                if not ok:
                    raise reply
                return list(reply)
            return self._in_process(body)
        finally:
            self.in_flight -= 1

    def _inline(self, body: list[bytes]) -> list[bytes]:
        loop = gevent.get_hub().loop
        turns = getattr(loop, "iteration", None)  # libev's loop count; None: cannot tell
        t0 = time.monotonic()
        try:
            return _call(self.handler, body)
        finally:
            took = time.monotonic() - t0
            warn = self.warn_after
            if warn is not None and took > warn and turns is not None and loop.iteration == turns:
                # the loop never turned: no heartbeat, signal or other greenlet ran meanwhile
                self.log.warning("handler.blocked_hub", seconds=round(took, 3), fix=FIX)

    def _in_process(self, body: list[bytes]) -> list[bytes]:
        if self._procs is None:
            self.start()
        ex = self._procs
        assert ex is not None
        try:
            reply: list[bytes] = self._wait(ex.submit(_call, self.handler, body))
        except BrokenProcessPool:
            # a pool process died (crash, OOM killer, SIGKILL): this request fails,
            # the next one gets a fresh pool
            if self._procs is ex:
                self.pool_restarts += 1
                self.log.error("offload.pool_broken", restarts=self.pool_restarts)
                ex.shutdown(wait=False, cancel_futures=True)
                self._procs = self._new_executor()
            raise
        return reply

    @staticmethod
    def _wait(fut: concurrent.futures.Future[Any]) -> Any:
        """The future's result, waited for green (the pool's thread wakes the hub)."""
        done = gevent.event.Event()
        watcher = gevent.get_hub().loop.async_()
        watcher.start(done.set)
        waiting = [True]

        def wake(_: Any) -> None:
            # the pool's manager thread; a waiter killed meanwhile closed the watcher
            if waiting[0]:
                watcher.send()

        try:
            fut.add_done_callback(wake)
            done.wait()
        finally:
            waiting[0] = False
            if fut.done():
                watcher.close()
            else:
                watcher.stop()  # a late send() is harmless to a stopped watcher, not a closed one
        return fut.result()
