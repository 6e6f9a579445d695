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

Under the launcher with ``--metrics``, each worker sends the same snapshot to
its master over the heartbeat pipe, and the master serves them, summed, as
Prometheus metrics (:mod:`greenzmq.launcher.metrics`). For that the snapshot
also carries histograms (:class:`Histogram`: request latency in the reliable
brokers), event counts (``count``: hub-blocked reports) and tables
(``table``: idle and busy workers and pending requests per service).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError

if TYPE_CHECKING:
    from .monitor import SocketMonitor

__all__ = [
    "LATENCY_BUCKETS",
    "STATS_ENV",
    "Histogram",
    "SocketCounters",
    "Stats",
    "control_endpoint",
    "ipc_path",
    "serve_control",
    "watch_peers",
]

STATS_ENV = "GREENZMQ_STATS"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the request latency histogram's buckets: 0.5 ms to 10 s."""


class Histogram:
    """Observations counted into fixed buckets, their sum and count (Prometheus's model).

    ``counts[i]`` counts the values in ``(bounds[i-1], bounds[i]]``; the last
    one those above every bound. Not cumulative: the master adds them up.
    One ``bisect`` and two additions per observation.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """Bounds, per-bucket counts and sum, as plain data."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


class SocketCounters:
    """Messages and bytes in and out of one socket, drops by reason, connection events."""

    __slots__ = ("bytes_in", "bytes_out", "connections", "drops", "msgs_in", "msgs_out")

    def __init__(self) -> None:
        self.msgs_in = 0
        self.bytes_in = 0
        self.msgs_out = 0
        self.bytes_out = 0
        self.drops: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()

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

    def connection(self, event: str) -> None:
        """Count one connection event (``accepted``, ``handshake_failed``, ...: a monitor's)."""
        self.connections[event] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as a plain dict (``connections`` only where a monitor counted some)."""
        snap: dict[str, Any] = {
            "msgs_in": self.msgs_in,
            "bytes_in": self.bytes_in,
            "msgs_out": self.msgs_out,
            "bytes_out": self.bytes_out,
            "drops": dict(self.drops),
        }
        if self.connections:
            snap["connections"] = dict(self.connections)
        return snap


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
        self._histograms: dict[str, Histogram] = {}
        self._tables: dict[str, Callable[[], Mapping[str, Mapping[str, int]]]] = {}
        self._peers: dict[str, SocketMonitor] = {}
        self.events: Counter[str] = Counter()

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
        """Start the sockets' monitors; serve the stats on ``GREENZMQ_STATS``, if it is set.

        Each monitor (:class:`~greenzmq.core.monitor.SocketMonitor`) is read by
        a greenlet of ``service`` named ``monitor:SOCKET``. A bad endpoint is
        a ValueError here, before anything is served.
        """
        from .sockets import type_name

        self.service = service.name
        self.register_sockets(service.socks)
        for name, sock in service.socks.items():
            watch = getattr(sock, "peer_watch", None)
            if watch is None:
                continue
            log = service.log.bind(socket=name, sock_type=type_name(sock.type))
            watch.bind(name, log, self.socket(name))
            if watch.endpoints:
                self._peers[name] = watch
            service.spawn(watch.run, name=f"monitor:{name}")
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

    def histogram(self, name: str, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        """The histogram ``name`` (made on first use), in every snapshot."""
        h = self._histograms.get(name)
        if h is None:
            h = self._histograms[name] = Histogram(bounds)
        return h

    def count(self, event: str, n: int = 1) -> None:
        """Count ``n`` occurrences of ``event`` (rare events: hub blocked, ...)."""
        self.events[event] += n

    def table(self, name: str, fn: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Report ``fn() -> {row: {column: n}}`` as ``tables[name]`` in every snapshot."""
        self._tables[name] = fn

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
            "histograms": {name: h.snapshot() for name, h in self._histograms.items()},
            "events": dict(self.events),
            "tables": {
                name: {k: dict(v) for k, v in fn().items()} for name, fn in self._tables.items()
            },
            "peers": {
                name: {"connect": list(w.endpoints), "live": sorted(w.live)}
                for name, w in self._peers.items()
            },
        }


def __getattr__(name: str) -> Any:
    # PeerWatch, the monitor's first name: imported on use, so that importing
    # this module (the launcher's master does) imports no zmq
    if name == "PeerWatch":
        from .monitor import SocketMonitor

        return SocketMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def watch_peers(ctx: Any, sock: Any, endpoints: tuple[str, ...]) -> None:
    """Attach a monitor of live peers to ``sock`` (as ``sock.peer_watch``), before it connects."""
    from .monitor import attach_monitor

    attach_monitor(ctx, sock, endpoints)


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
