"""Live stats: per-socket counters, an optional control endpoint, ``greenzmq stats``.

Every :class:`~greenzmq.core.service.Service` has a :class:`Stats`: per socket,
messages and bytes in and out and drops by reason (:class:`SocketCounters`),
and queue depths (gauges read when asked). Hot paths count per batch, not per
message: the broker adds a whole drain's count at once and sums bytes only
while a control endpoint is being served (``Stats.detailed``); a mux is read
through its ``statistics()`` when a snapshot is taken, so it costs nothing.

The control endpoint is optional: set ``GREENZMQ_STATS=ipc:///path/x.ipc``
(``{pid}`` and ``{service}`` are filled in, so several workers do not clash).
It must be ``ipc://``: the file is created owner-only (0600). A greenlet of the
service owns a REP socket there and answers any request with a JSON snapshot.

``greenzmq stats ENDPOINT`` (:mod:`greenzmq.tools.stats`) prints one snapshot;
``--watch`` redraws it every ``--interval`` seconds with rates, like top.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..errors import ConfigError

__all__ = ["STATS_ENV", "SocketCounters", "Stats", "control_endpoint", "ipc_path", "serve_control"]

STATS_ENV = "GREENZMQ_STATS"


class SocketCounters:
    """Messages and bytes in and out of one socket, and drops by reason."""

    __slots__ = ("bytes_in", "bytes_out", "drops", "msgs_in", "msgs_out")

    def __init__(self) -> None:
        self.msgs_in = 0
        self.bytes_in = 0
        self.msgs_out = 0
        self.bytes_out = 0
        self.drops: Counter[str] = Counter()

    def add_in(self, msgs: int, nbytes: int = 0) -> None:
        """Count ``msgs`` received (a whole batch at once)."""
        self.msgs_in += msgs
        self.bytes_in += nbytes

    def add_out(self, msgs: int, nbytes: int = 0) -> None:
        """Count ``msgs`` sent (a whole batch at once)."""
        self.msgs_out += msgs
        self.bytes_out += nbytes

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages dropped for ``reason``."""
        self.drops[reason] += n

    def snapshot(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {
            "msgs_in": self.msgs_in,
            "bytes_in": self.bytes_in,
            "msgs_out": self.msgs_out,
            "bytes_out": self.bytes_out,
            "drops": dict(self.drops),
        }


SourceFn = Callable[[], Mapping[str, Mapping[str, int]]]


class Stats:
    """A service's counters: sockets, queue-depth gauges, and pull-style sources."""

    def __init__(self, service: str = "?") -> None:
        self.service = service
        self.started = time.time()
        # True while a control endpoint serves the stats: hot paths may then
        # spend a little more (bytes per message) on detail
        self.detailed = False
        self._sockets: dict[str, SocketCounters] = {}
        self._types: dict[str, str] = {}
        self._gauges: dict[str, Callable[[], int]] = {}
        self._sources: list[SourceFn] = []

    def socket(self, name: str, sock_type: str | None = None) -> SocketCounters:
        """The counters of socket ``name`` (created on first use)."""
        c = self._sockets.get(name)
        if c is None:
            c = self._sockets[name] = SocketCounters()
        if sock_type is not None:
            self._types[name] = sock_type
        return c

    def register_sockets(self, socks: Mapping[str, Any]) -> None:
        """List every socket of the service (with its type), counted or not."""
        from .sockets import type_name

        for name, sock in socks.items():
            self.socket(name, type_name(sock.type))

    def start_control(self, service: Any) -> None:
        """Serve the stats on ``GREENZMQ_STATS`` in a greenlet of ``service``, if it is set.

        A bad endpoint is a ValueError here, before anything is served.
        """
        self.service = service.name
        self.register_sockets(service.socks)
        endpoint = control_endpoint(service.name)
        if endpoint is None:
            return
        ipc_path(endpoint)
        service.spawn(serve_control, self, service.ctx, endpoint, name="stats")

    def gauge(self, name: str, fn: Callable[[], int]) -> None:
        """Report ``fn()`` as the depth of queue ``name`` in every snapshot."""
        self._gauges[name] = fn

    def source(self, fn: SourceFn) -> None:
        """Add ``fn() -> {socket: {counter: n}}`` to every snapshot (added to the counters)."""
        self._sources.append(fn)

    def watch_mux(self, mux: Any, queue: str = "mux") -> None:
        """Read a Readers / PollerListener's ``statistics()`` at snapshot time (free when idle)."""
        self.gauge(queue, lambda: int(mux.statistics().queued))
        self.source(lambda: {s: {"msgs_in": n} for s, n in mux.statistics().received.items()})

    def snapshot(self) -> dict[str, Any]:
        """Everything, as JSON-ready data."""
        socks = {name: c.snapshot() for name, c in self._sockets.items()}
        for fn in self._sources:
            for name, counts in fn().items():
                entry = socks.setdefault(name, SocketCounters().snapshot())
                for k, v in counts.items():
                    entry[k] = entry.get(k, 0) + v
        for name, entry in socks.items():
            entry["type"] = self._types.get(name, "")
        return {
            "service": self.service,
            "pid": os.getpid(),
            "time": time.time(),
            "uptime": time.time() - self.started,
            "sockets": socks,
            "queues": {name: fn() for name, fn in self._gauges.items()},
        }


def control_endpoint(service: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The control endpoint asked for in ``GREENZMQ_STATS`` (placeholders filled), or None."""
    env = os.environ if environ is None else environ
    raw = env.get(STATS_ENV, "").strip()
    if not raw:
        return None
    return raw.replace("{pid}", str(os.getpid())).replace("{service}", service)


def ipc_path(endpoint: str) -> str:
    """``ipc:///run/x.ipc`` -> ``/run/x.ipc``; ConfigError (a ValueError) if it is not ipc."""
    if not endpoint.startswith("ipc://") or len(endpoint) <= len("ipc://"):
        raise ConfigError(
            f"stats endpoint {endpoint!r} must be ipc://PATH (owner-only file permissions)"
        )
    path = endpoint[len("ipc://") :]
    if path.startswith("@"):
        raise ConfigError(f"stats endpoint {endpoint!r}: abstract sockets have no permissions")
    return path


def serve_control(stats: Stats, ctx: Any, endpoint: str, ready: Any = None) -> None:
    """Answer every request on ``endpoint`` with a JSON snapshot, until killed.

    Runs in its own greenlet, which owns the REP socket. The ipc file is made
    under umask 0177 and chmod 0600, so only the owner can connect.
    """
    import zmq

    path = ipc_path(endpoint)
    sock = ctx.socket(zmq.REP)
    sock.name = "stats"
    sock.setsockopt(zmq.LINGER, 0)
    old = os.umask(0o177)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        raise zmq.ZMQError(
            e.errno, f"cannot bind stats endpoint {endpoint}: {e.strerror}"
        ) from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    ours = os.stat(path).st_ino
    stats.detailed = True
    if ready is not None:
        ready.set()
    try:
        while True:
            sock.recv_multipart()
            sock.send(orjson.dumps(stats.snapshot()))
    finally:
        stats.detailed = False
        sock.close(linger=0)
        _remove_if_ours(path, ours)


def _remove_if_ours(path: str, inode: int) -> None:
    """Remove the ipc file libzmq leaves behind, unless another process re-bound the path."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
