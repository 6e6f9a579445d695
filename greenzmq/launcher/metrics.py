"""``--metrics HOST:PORT``: the master serves its workers' counters as Prometheus metrics.

Stdlib and ``prometheus_client`` only: the master imports no zmq and no gevent
(rule 7), so it never asks a worker anything over zmq. Each worker sends its
stats snapshot (:meth:`greenzmq.core.stats.Stats.snapshot`) over the pipe it
heartbeats on, every :data:`~greenzmq.launcher.protocol.STATS_INTERVAL`
seconds and once more before a deliberate exit; the master keeps the latest
one per live worker (:class:`Metrics`).

**No lingering, no double counting.** A scrape is built by
:class:`FleetCollector` from the live workers' latest snapshots plus the
totals of the dead ones: when a worker is reaped its last snapshot's counters
move into those totals (once) and its gauges are gone with it. So counters
summed over the fleet never go backwards when a worker is replaced (a rate()
over them stays right), and a dead worker's queue depths and idle workers
vanish at once. What a worker counted after its last snapshot and before a
SIGKILL (at most one interval) is lost. This is why the master does not use
``prometheus_client``'s multiprocess mode: its files outlive the processes
unless every exit is reported, and its counters are per process.

**Serving** happens in the master's own loop, not in a thread: a thread in a
process that forks can leave a lock held in the child (the master's log
stream, an import lock). :class:`MetricsServer` is a non-blocking listening
socket in the master's selector; a connection is read until its request
headers are complete, answered in one write and closed (HTTP/1.0 style,
``Connection: close``). A client that sends nothing is dropped after
:data:`IDLE_TIMEOUT` seconds.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import ConfigError
from .config import parse_hostport

__all__ = ["IDLE_TIMEOUT", "FleetCollector", "Metrics", "MetricsServer"]

# the classic text format, what generate_latest writes for our (legacy-valid) names;
# every Prometheus version reads it (newer clients announce version=1.0.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
IDLE_TIMEOUT = 5.0  # seconds a connection may take to send its request
MAX_CONNECTIONS = 32
MAX_REQUEST = 8192  # bytes of request headers

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]

# socket counters in a snapshot -> metric name (without the _total suffix)
_SOCKET_COUNTERS = {
    "msgs_in": "greenzmq_socket_received_messages",
    "bytes_in": "greenzmq_socket_received_bytes",
    "msgs_out": "greenzmq_socket_sent_messages",
    "bytes_out": "greenzmq_socket_sent_bytes",
}
# gauges the reliable-broker engine registers that are really counters
_ENGINE_COUNTERS = {
    "workers:expired": "greenzmq_broker_worker_expiries",
    "requests:requeued": "greenzmq_broker_requests_requeued",
    "requests:timed_out": "greenzmq_broker_requests_timed_out",
}
# engine gauges the per-service table gives with a service label
_ENGINE_GAUGES = ("workers:idle", "workers:busy", "pending")

_HELP = {
    "greenzmq_socket_received_messages": "Messages received, per socket",
    "greenzmq_socket_received_bytes": "Bytes received, per socket (where the pattern counts them)",
    "greenzmq_socket_sent_messages": "Messages sent, per socket",
    "greenzmq_socket_sent_bytes": "Bytes sent, per socket (where the pattern counts them)",
    "greenzmq_socket_dropped_messages": "Messages dropped, per socket and reason",
    "greenzmq_connection_events": (
        "Connection events (accepted, connected, disconnected, handshake_failed, ...), "
        "per socket, with --monitor"
    ),
    "greenzmq_broker_worker_expiries": "PPP/MDP workers expired for silence",
    "greenzmq_broker_requests_requeued": "PPP/MDP requests requeued from a lost worker",
    "greenzmq_requests": "Requests the workers handled (as counted by Service.request_done)",
    "greenzmq_broker_requests_timed_out": "PPP/MDP requests dropped after waiting too long",
    "greenzmq_hub_blocked": "Times a worker's gevent hub was blocked past --block-threshold",
    "greenzmq_events": "Other events counted by the workers",
    "greenzmq_queue_depth": "Messages or requests waiting in a queue of the service",
    "greenzmq_broker_workers": "PPP/MDP workers registered with the broker, per service and state",
    "greenzmq_broker_pending_requests": "PPP/MDP requests waiting for a worker, per service",
    "greenzmq_broker_request_duration_seconds": (
        "PPP/MDP requests from accepted by the broker to the worker's reply forwarded"
    ),
}


def _add(into: dict[Key, float], key: Key, v: Any) -> None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        into[key] = into.get(key, 0) + v


def counters_of(snap: Mapping[str, Any]) -> dict[Key, float]:
    """Every monotonic count in one worker's snapshot, keyed by (metric, labels)."""
    out: dict[Key, float] = {}
    for sock, c in snap.get("sockets", {}).items():
        labels: Labels = (("socket", sock), ("type", str(c.get("type", ""))))
        # bytes only where the pattern counts them (the broker does, PPP/MDP
        # do not yet): a series stuck at 0 would say "no traffic", wrongly
        counts_bytes = bool(c.get("bytes_in") or c.get("bytes_out"))
        for field, metric in _SOCKET_COUNTERS.items():
            if counts_bytes or not field.startswith("bytes"):
                _add(out, (metric, labels), c.get(field, 0))
        for reason, n in c.get("drops", {}).items():
            key = ("greenzmq_socket_dropped_messages", (("socket", sock), ("reason", reason)))
            _add(out, key, n)
        for event, n in c.get("connections", {}).items():  # --monitor's
            _add(out, ("greenzmq_connection_events", (("socket", sock), ("event", event))), n)
    for q, n in snap.get("queues", {}).items():
        if q in _ENGINE_COUNTERS:
            _add(out, (_ENGINE_COUNTERS[q], ()), n)
    if snap.get("requests"):  # a service that never calls request_done() shows no series
        _add(out, ("greenzmq_requests", ()), snap["requests"])
    for event, n in snap.get("events", {}).items():
        if event == "hub_blocked":
            _add(out, ("greenzmq_hub_blocked", ()), n)
        else:
            _add(out, ("greenzmq_events", (("event", event),)), n)
    return out


def gauges_of(snap: Mapping[str, Any]) -> dict[Key, float]:
    """Every level (queue depths, idle and busy workers) in one worker's snapshot."""
    out: dict[Key, float] = {}
    services = snap.get("tables", {}).get("services")
    for q, n in snap.get("queues", {}).items():
        if q in _ENGINE_COUNTERS:
            continue
        if services is not None and (q in _ENGINE_GAUGES or q.startswith("pending:")):
            continue  # given per service below
        _add(out, ("greenzmq_queue_depth", (("queue", q),)), n)
    for svc, row in (services or {}).items():
        for state in ("idle", "busy"):
            key = ("greenzmq_broker_workers", (("service", svc), ("state", state)))
            _add(out, key, row.get(state, 0))
        _add(out, ("greenzmq_broker_pending_requests", (("service", svc),)), row.get("pending", 0))
    return out


class Hist:
    """A histogram summed over snapshots: bounds, per-bucket counts, sum."""

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, h: Mapping[str, Any]) -> None:
        """Add a snapshot's histogram (ignored if its buckets differ)."""
        if list(h.get("bounds", ())) != self.bounds:
            return
        for i, n in enumerate(h.get("counts", ())):
            self.counts[i] += n
        self.sum += float(h.get("sum", 0.0))


def _hist_name(name: str) -> str:
    return (
        "greenzmq_broker_request_duration_seconds"
        if name == "request_latency"
        else f"greenzmq_{name}_seconds"
    )


class Metrics:
    """The master's side: the latest snapshot per live worker, the dead ones' totals.

    ``workers_alive``, ``workers_desired`` are read from the arbiter at scrape
    time (callables); ``restarts`` counts worker replacements by cause.
    """

    def __init__(self) -> None:
        self.live: dict[int, dict[str, Any]] = {}
        self.retired: dict[Key, float] = {}
        self.retired_hist: dict[str, Hist] = {}
        self.restarts: Counter[str] = Counter()
        self.workers_alive: Any = lambda: len(self.live)
        self.workers_desired: Any = lambda: 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self))

    def update(self, pid: int, snap: dict[str, Any]) -> None:
        """A worker's newest snapshot replaces its previous one."""
        self.live[pid] = snap

    def worker_gone(self, pid: int) -> None:
        """Worker ``pid`` was reaped: its counts go into the totals, its gauges go."""
        snap = self.live.pop(pid, None)
        if snap is None:
            return
        for key, v in counters_of(snap).items():
            self.retired[key] = self.retired.get(key, 0) + v
        for name, h in snap.get("histograms", {}).items():
            self._hist(self.retired_hist, name, h)

    @staticmethod
    def _hist(into: dict[str, Hist], name: str, h: Mapping[str, Any]) -> None:
        acc = into.get(name)
        if acc is None:
            acc = into[name] = Hist(list(h.get("bounds", ())))
        acc.add(h)

    def totals(self) -> tuple[dict[Key, float], dict[Key, float], dict[str, Hist]]:
        """(counters, gauges, histograms) over the fleet, dead workers' counts included."""
        counters = dict(self.retired)
        gauges: dict[Key, float] = {}
        hists: dict[str, Hist] = {}
        for name, h in self.retired_hist.items():
            self._hist(hists, name, {"bounds": h.bounds, "counts": h.counts, "sum": h.sum})
        for snap in self.live.values():
            for key, v in counters_of(snap).items():
                counters[key] = counters.get(key, 0) + v
            for key, v in gauges_of(snap).items():
                gauges[key] = gauges.get(key, 0) + v
            for name, h in snap.get("histograms", {}).items():
                self._hist(hists, name, h)
        return counters, gauges, hists

    def exposition(self) -> bytes:
        """The Prometheus text format of everything (what ``/metrics`` answers)."""
        return bytes(generate_latest(self.registry))


def _families(
    values: Mapping[Key, float], kind: type[CounterMetricFamily] | type[GaugeMetricFamily]
) -> Iterator[Metric]:
    by_name: dict[str, list[tuple[Labels, float]]] = {}
    for (name, labels), v in sorted(values.items()):
        by_name.setdefault(name, []).append((labels, v))
    for name, rows in by_name.items():
        fam = kind(name, _HELP.get(name, name), labels=[k for k, _ in rows[0][0]])
        for labels, v in rows:
            fam.add_metric([val for _, val in labels], v)
        yield fam


class FleetCollector(Collector):
    """Builds the metric families from :class:`Metrics` at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        """The families: workers, restarts, then the workers' counters, gauges, histograms."""
        m = self.m
        alive = GaugeMetricFamily("greenzmq_workers_alive", "Worker processes alive")
        alive.add_metric([], m.workers_alive())
        yield alive
        desired = GaugeMetricFamily("greenzmq_workers_desired", "Worker processes asked for")
        desired.add_metric([], m.workers_desired())
        yield desired
        reporting = GaugeMetricFamily(
            "greenzmq_workers_reporting", "Workers whose snapshot this scrape includes"
        )
        reporting.add_metric([], len(m.live))
        yield reporting
        restarts = CounterMetricFamily(
            "greenzmq_worker_restarts",
            "Workers replaced, by cause (crash, timeout, max_requests, reload)",
            labels=["cause"],
        )
        for cause in ("crash", "timeout", "max_requests", "reload"):
            restarts.add_metric([cause], m.restarts[cause])
        yield restarts
        counters, gauges, hists = m.totals()
        counters.setdefault(("greenzmq_hub_blocked", ()), 0)
        yield from _families(counters, CounterMetricFamily)
        yield from _families(gauges, GaugeMetricFamily)
        for name, h in sorted(hists.items()):
            buckets, acc = [], 0
            for bound, n in zip([*map(str, h.bounds), "+Inf"], h.counts, strict=True):
                acc += n
                buckets.append((bound, float(acc)))
            fam_name = _hist_name(name)
            fam = HistogramMetricFamily(fam_name, _HELP.get(fam_name, fam_name))
            fam.add_metric([], buckets, sum_value=h.sum)
            yield fam


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.since = time.monotonic()


class MetricsServer:
    """``/metrics`` over HTTP from the master's selector loop (see the module docstring)."""

    def __init__(self, address: str, metrics: Metrics) -> None:
        host, port = parse_hostport(address)
        self.metrics = metrics
        self.address = address
        self.conns: dict[int, _Conn] = {}
        self.selector: selectors.BaseSelector | None = None
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as e:
            raise ConfigError(f"--metrics {address}: {e.strerror}") from None
        self.sock = socket.socket(family, kind, proto)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(addr)
            self.sock.listen(16)
        except OSError as e:
            self.sock.close()
            raise ConfigError(f"--metrics {address}: cannot listen: {e.strerror}") from None
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Be served by ``selector`` (the master's): the listening socket now, connections later."""
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self)

    def on_ready(self, fileobj: Any) -> None:
        """The selector found ``fileobj`` (ours) readable."""
        if fileobj is self.sock:
            self._accept()
        else:
            self._read(fileobj)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the next turn retries
            if len(self.conns) >= MAX_CONNECTIONS:
                conn.close()
                continue
            conn.setblocking(False)
            self.conns[conn.fileno()] = _Conn(conn)
            if self.selector is not None:
                self.selector.register(conn, selectors.EVENT_READ, self)

    def _read(self, conn: socket.socket) -> None:
        c = self.conns.get(conn.fileno())
        if c is None:
            return
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)
            return
        c.buf += data
        if b"\r\n\r\n" not in c.buf and b"\n\n" not in c.buf:
            if len(c.buf) > MAX_REQUEST:
                self._respond(c, 400, b"request header too large\n")
            return
        self._respond(c, *self.route(c.buf))

    def route(self, request: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) for a raw request."""
        words = request.split(b"\n", 1)[0].split()
        if len(words) < 2:
            return 400, b"bad request\n", "text/plain"
        method, target = words[0], words[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, b"GET /metrics\n", "text/plain"
        if target != b"/metrics":
            return 404, b"not found: try /metrics\n", "text/plain"
        body = self.metrics.exposition()
        return 200, (b"" if method == b"HEAD" else body), CONTENT_TYPE

    def _respond(self, c: _Conn, status: int, body: bytes, ctype: str = "text/plain") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            # one write of a few kB fits the socket buffer; a client that does not
            # read costs the master at most this timeout
            c.sock.settimeout(1.0)
            c.sock.sendall(head + body)
        except OSError:
            pass
        self._close(c)

    def _close(self, c: _Conn) -> None:
        self.conns.pop(c.sock.fileno(), None)
        if self.selector is not None:
            try:
                self.selector.unregister(c.sock)
            except (KeyError, ValueError):
                pass
        c.sock.close()

    def sweep(self, now: float) -> None:
        """Drop connections that sent no complete request within :data:`IDLE_TIMEOUT`."""
        for c in [c for c in self.conns.values() if now - c.since > IDLE_TIMEOUT]:
            self._close(c)

    def close(self) -> None:
        """Close the listening socket and every connection."""
        for c in list(self.conns.values()):
            self._close(c)
        if self.selector is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()

    def close_in_child(self) -> None:
        """In a forked worker: close the inherited descriptors, touch no selector."""
        for c in self.conns.values():
            c.sock.close()
        self.sock.close()
