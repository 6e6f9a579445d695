"""A ``zmq.green.Poller`` that works with file descriptors >= 1024 and can be woken.

``zmq.green.Poller.poll`` asks ``zmq_poll(0)`` first and, when nothing is
ready, waits in ``gevent.select.select`` on the sockets' ``ZMQ_FD``s; select()
raises ``ValueError: filedescriptor out of range`` for an FD >= 1024
(pyzmq#844). :class:`GreenPoller` keeps the same API and the same
``zmq_poll(0)``-first logic but waits on one libev io watcher per FD, created
once per registration instead of once per call, so it has no FD limit and is
cheaper per wait. :meth:`GreenPoller.wake` makes a parked ``poll`` return early
(``[]``), which is how another greenlet stops a poll loop without touching its
sockets (rule 2).
"""

from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.green as gzmq
from gevent.hub import Waiter, get_hub
from zmq.backend import zmq_poll as _zmq_poll

__all__ = ["GreenPoller"]


class GreenPoller(gzmq.Poller):
    """Drop-in ``zmq.green.Poller`` without select()'s FD limit; see module docstring."""

    # libzmq's FD is edge-triggered; zmq_poll(0) before each wait re-reads the
    # real state, so this fallback only matters if libev ever misses an edge.
    _gevent_bug_timeout = 1.33
    # io wake-ups in a row with no event before an FD is taken as stuck
    # readable, and the longest pause between checks while it is (the latency
    # a message can see in that state, instead of a core spent spinning)
    _spurious_limit = 3
    _stuck_max = 0.02

    def __init__(self, *, persistent: bool = False) -> None:
        """``persistent``: keep the io watchers started between polls.

        It saves re-registering every FD with epoll on each wait (a busy loop
        with one consumer, like the broker), but the owner must then call
        :meth:`close_watchers` before any registered socket or FD is closed
        (libev aborts on a closed FD it still watches): in a ``finally``.
        """
        super().__init__()
        self._persistent = persistent
        self._armed = False
        self._watchers: dict[int, Any] = {}
        # what zmq_poll gets, flags as plain ints: zmq.Poller.poll passes the
        # registered IntFlags, and converting them costs more than the poll
        self._items: list[tuple[Any, int]] = []
        self._fallback: Any = None  # the one fallback timer, started per wait
        self._waiter: Waiter[Any] | None = None
        self._woken = False
        self._timed_out = False
        self._spurious = 0  # io wake-ups in a row that found no event
        self._armed_io = False  # wait(): the last return was an io wake-up
        self._fired: set[int] = set()  # wait(): the FDs that signalled

    def _fds(self) -> list[tuple[int, int]]:
        out = []
        for sock, flags in self.sockets:
            if isinstance(sock, zmq.Socket):
                # a zmq socket's FD signals both directions as "readable"
                out.append((int(sock.getsockopt(zmq.FD)), 1))
                continue
            fd = sock if isinstance(sock, int) else int(sock.fileno())
            mask = (1 if flags & zmq.POLLIN else 0) | (2 if flags & zmq.POLLOUT else 0)
            out.append((fd, mask or 1))
        return out

    def register(self, socket: Any, flags: int = zmq.POLLIN | zmq.POLLOUT) -> None:
        """Like ``zmq.Poller.register`` (flags 0 unregisters); rebuilds the watchers."""
        if not flags:
            # zmq.Poller's meaning of flags 0; through super() it would call our
            # unregister and then rebuild a second time here. Registered or not
            # is read from the public ``sockets`` list, not pyzmq's private map.
            if any(s == socket for s, _ in self.sockets):
                self.unregister(socket)
            return
        super().register(socket, flags)
        self._rebuild()

    def modify(self, socket: Any, flags: int = zmq.POLLIN | zmq.POLLOUT) -> None:
        """Like ``zmq.Poller.modify``."""
        # what zmq.Poller.modify does; our register rebuilds the watchers once
        # (super().modify goes through it too, so rebuilding here did it twice)
        self.register(socket, flags)

    def unregister(self, socket: Any) -> None:
        """Like ``zmq.Poller.unregister``; rebuilds the watchers."""
        super().unregister(socket)
        self._rebuild()

    def _rebuild(self) -> None:
        self._items = [(sock, int(flags)) for sock, flags in self.sockets]
        self.close_watchers()
        loop = get_hub().loop
        for fd, mask in self._fds():
            key = fd * 4 + mask
            if key not in self._watchers:
                self._watchers[key] = loop.io(fd, mask)

    def close_watchers(self) -> None:
        """Stop and free the io watchers (done again on the next register)."""
        self._armed = False
        for w in self._watchers.values():
            w.stop()
            w.close()
        self._watchers.clear()
        if self._fallback is not None:
            self._fallback.stop()
            self._fallback.close()
            self._fallback = None

    def wake(self) -> None:
        """Make the current ``poll``, or else the next one that would wait, return ``[]``.

        Any greenlet may call it. A poll that finds sockets ready still
        returns them; the wake-up is kept for the first poll that would park.
        """
        self._woken = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            # Waiter.switch may only run in the hub: hand it over.
            get_hub().loop.run_callback(waiter.switch, None)

    def _on_ready(self, *_: Any) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.switch(None)

    def _on_timer(self) -> None:
        self._timed_out = True
        self._on_ready()

    def _still_readable(self) -> bool:
        """Whether a watched FD is readable right now (one non-blocking poll(2))."""
        probe = select.poll()
        for fd, mask in self._fds():
            probe.register(
                fd, (select.POLLIN if mask & 1 else 0) | (select.POLLOUT if mask & 2 else 0)
            )
        return bool(probe.poll(0))

    def _stop_persistent(self) -> None:
        if self._armed:
            self._armed = False
            for w in self._watchers.values():
                w.stop()

    def wait(self, timeout: float, *, found: bool = True) -> set[int]:
        """Park until a registered FD signals, ``timeout`` s pass, or :meth:`wake`.

        The wait without :meth:`poll`'s two ``zmq_poll`` calls, for a loop that
        owns its sockets and reads each one's EVENTS after its last operation
        on it before it parks (rule 3): libzmq's FD then signals only on new
        activity. Returns the FDs that signalled (empty on a timeout or a
        :meth:`wake`): which sockets to read EVENTS of first; what is ready is
        the caller's to find out. ``found``: whether the caller's pass since
        the last wait found work; io wake-ups in a row that found none mean an
        FD stuck readable, waited out on a short timer as in :meth:`poll`.
        Needs ``persistent=True``; do not mix with :meth:`poll`.
        """
        fired = self._fired
        fired.clear()
        if self._woken:
            self._woken = False
            return fired
        if found:
            self._spurious = 0
        elif self._armed_io:
            self._spurious += 1
        self._armed_io = False
        loop = get_hub().loop
        stuck = self._spurious >= self._spurious_limit
        if stuck and not self._still_readable():
            self._spurious, stuck = 0, False
        if stuck:
            self._stop_persistent()
            n = self._spurious - self._spurious_limit
            timeout = min(timeout, self._stuck_max, 0.001 * (1 << min(n, 16)))
            self._spurious += 1
        elif not self._armed:
            for w in self._watchers.values():
                w.start(self._on_fd, w.fd)
            self._armed = True
        self._park(loop.timer(max(timeout, 0.0)))
        if self._woken:
            self._woken = False
        elif not self._timed_out:
            self._armed_io = True
        return fired

    def _park(self, timer: Any, stop_after: Sequence[Any] = ()) -> None:
        """Wait in the hub until a watcher, ``timer`` or :meth:`wake` switches back; tidy up.

        ``timer`` is the shared fallback (restarted, kept) or a fresh one
        (closed after); ``stop_after``: watchers started for this wait only.
        """
        waiter: Waiter[Any] = Waiter()
        self._waiter = waiter
        self._timed_out = False
        if timer is self._fallback:
            timer.again(self._on_timer)
        else:
            timer.start(self._on_timer)
        try:
            waiter.get()
        finally:
            self._waiter = None
            timer.stop()
            if timer is not self._fallback:
                timer.close()
            for w in stop_after:
                w.stop()

    def _on_fd(self, fd: int) -> None:
        self._fired.add(fd)
        self._on_ready()

    def poll(self, timeout: float | None = -1) -> list[tuple[Any, int]]:
        """Like ``zmq.Poller.poll``: milliseconds, ``None``/negative waits forever."""
        if timeout is None or timeout < 0:
            timeout = -1
        deadline = None
        if timeout > 0:
            loop = get_hub().loop
            # the loop's cached clock lags by however long greenlets ran since the
            # loop last turned: a deadline taken from it ends the poll that much early
            # once any wake-up re-reads the clock (a 50 ms poll returned after 28 ms)
            loop.update_now()
            deadline = loop.now() + timeout / 1000.0
        while True:
            events: list[tuple[Any, int]] = _zmq_poll(self._items, 0)
            if events or timeout == 0:
                self._spurious = 0
                return events
            if self._woken:
                self._woken = False
                return []
            loop = get_hub().loop
            left = None if deadline is None else deadline - loop.now()
            if left is not None and left <= 0:
                return []
            stuck = self._spurious >= self._spurious_limit
            if stuck and not self._still_readable():
                # the FD was drained (libzmq caught up): edges mean events again
                self._spurious = 0
                stuck = False
            if stuck:
                # an FD that stays readable with nothing behind it (pyzmq PR
                # #2167) would wake a level-triggered watcher at once, forever:
                # wait on a short timer instead, doubling up to _stuck_max
                self._stop_persistent()
                n = self._spurious - self._spurious_limit
                pause = min(self._stuck_max, 0.001 * (1 << min(n, 16)))
                timer = loop.timer(pause if left is None else min(pause, left))
                self._spurious += 1
                watchers = []
            else:
                if left is not None and left < self._gevent_bug_timeout:
                    timer = loop.timer(left)
                else:
                    timer = self._fallback
                    if timer is None:
                        # one timer for every wait: no allocation on the wake-up
                        # path. It repeats so that again() re-arms it: a plain
                        # libev timer that has fired once keeps an expiry of ~0
                        # and a later start() fires at once (an idle poll(-1)
                        # spun at 50k+ wake-ups a second).
                        timer = self._fallback = loop.timer(
                            self._gevent_bug_timeout, self._gevent_bug_timeout
                        )
                watchers = [] if self._armed else list(self._watchers.values())
                for w in watchers:
                    w.start(self._on_ready)
                if self._persistent:
                    self._armed, watchers = True, []  # stay started: see __init__
            self._park(timer, watchers)
            if self._woken:
                self._woken = False
                return []
            if not stuck and not self._timed_out:
                # an io wake-up; if zmq_poll(0) then finds nothing it was spurious
                self._spurious += 1
            if self._spurious and _zmq_poll(self._items, 0):
                self._spurious = 0

    def __del__(self) -> None:
        try:
            self.close_watchers()
        except Exception:
            pass
