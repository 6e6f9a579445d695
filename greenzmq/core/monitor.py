"""Connection events: one libzmq socket monitor per socket, handled by one greenlet.

A :class:`SocketMonitor` is attached to a socket before it binds or connects
(an event sent before the monitor's PAIR is connected would be lost). A
thread of its own reads the PAIR (see :meth:`SocketMonitor.run` for why a
thread) and hands each event to a greenlet of the service, which logs and
counts it. Two users share the monitor, since libzmq allows one per socket:

- ``greenzmq health`` needs to know whether a connecting socket has a live
  peer (``live``: ZMTP handshakes succeeded minus disconnects, per endpoint).
  That part runs while the stats endpoint is served (``GREENZMQ_STATS``).
- With ``monitor`` on (``--monitor``, ``Service(monitor=True)``,
  ``SocketSpec(monitor=True)``), every connection event is logged as a
  structured ``socket.<event>`` line and counted in the socket's stats
  (``connections``, exported as ``greenzmq_connection_events_total``).

The address of the peer: a connecting socket's events carry the endpoint it
connects to. On a bound socket libzmq's (v1) monitor gives only the local
endpoint, but ``accepted`` carries the new connection's descriptor, so the
reader thread asks the kernel (``getpeername``) as soon as it has the event.
A handshake that fails is followed at once, in libzmq's I/O thread, by the
``disconnected`` event of the same descriptor: the failure is logged with
that connection's address. A connection that failed fast may be closed
before the thread gets to ask (it needs the GIL); then, on Linux, the
address is read from ``/proc/net/tcp{,6}``: a socket this side closed lingers
there (TIME_WAIT and the other closing states) with its remote address. A
peer that hung up first (libzmq's own plaintext client does, on a mechanism
mismatch) leaves no such trace: it is ``"unknown"`` unless the thread was in
time. Several closed connections unaccounted for at once are named by the
IP they share (no port), else ``"unknown"``.

A hostile peer reconnecting in a loop must not flood the log: per socket and
event, :attr:`SocketMonitor.burst` lines per :attr:`SocketMonitor.window`
seconds are logged, the rest counted into one ``socket.events_suppressed``
line when the window ends (or the service closes). The counters count all.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zmq

__all__ = ["EVENT_NAMES", "RateLimit", "SocketMonitor", "attach_monitor"]

# libzmq event -> (event name, log level); absent: not asked for
EVENT_NAMES: dict[int, tuple[str, str]] = {
    zmq.EVENT_CONNECTED: ("connected", "info"),
    zmq.EVENT_ACCEPTED: ("accepted", "info"),
    zmq.EVENT_DISCONNECTED: ("disconnected", "info"),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: ("handshake_failed", "warning"),
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: ("handshake_failed", "warning"),
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: ("handshake_failed", "warning"),
    zmq.EVENT_BIND_FAILED: ("bind_failed", "error"),
    zmq.EVENT_ACCEPT_FAILED: ("accept_failed", "error"),
    zmq.EVENT_CLOSE_FAILED: ("close_failed", "error"),
    # counted, logged at debug: one per connection (or per retry) is noise at info
    zmq.EVENT_HANDSHAKE_SUCCEEDED: ("handshake_succeeded", "debug"),
    zmq.EVENT_CONNECT_RETRIED: ("connect_retried", "debug"),
}
_ALL = 0
for _ev in EVENT_NAMES:
    _ALL |= _ev
# what ``greenzmq health`` alone needs
_PEERS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED

_FAILURE_REASONS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
_PROTOCOL_ERRORS = {
    getattr(zmq, n): n[len("PROTOCOL_ERROR_") :]
    for n in dir(zmq)
    if n.startswith("PROTOCOL_ERROR_")
}
# closing states (/proc/net/tcp "st") of a socket this side closed: FIN_WAIT1,
# FIN_WAIT2, TIME_WAIT, CLOSING, and LAST_ACK (the peer closed at the same time)
_CLOSED_STATES = {"04", "05", "06", "0B", "09"}
BATCH = 256  # events handled per wake-up at most


def _error_name(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL_ERRORS.get(value, f"protocol error {value:#x}")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"ZAP status {value}"
    return errno.errorcode.get(value, str(value))


def _peer_of(fd: int) -> str | None:
    """``ip:port`` of the peer of descriptor ``fd`` (still open), else None."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        host, port = s.getpeername()[:2]
    except OSError:
        return None
    finally:
        s.detach()  # libzmq's descriptor: never close it
    if host.startswith("::ffff:"):  # an IPv4 peer of a dual-stack socket
        host = host[len("::ffff:") :]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hex_ip(text: str) -> str:
    """A /proc/net/tcp address (host-order 32-bit words in hex) -> its text form."""
    raw = bytes.fromhex(text)
    words = raw
    if sys.byteorder == "little":  # each 32-bit word is printed in host order
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def closed_peers(port: int) -> set[str]:
    """``ip:port`` of the peers of sockets on local ``port`` that this host closed (Linux)."""
    out: set[str] = set()
    want = f"{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] not in _CLOSED_STATES:
                continue
            local, remote = fields[1], fields[2]
            if not local.endswith(":" + want):
                continue
            rip, _, rport = remote.partition(":")
            try:
                host = _hex_ip(rip)
            except ValueError:
                continue
            if host.startswith("::ffff:"):
                host = host[len("::ffff:") :]
            p = int(rport, 16)
            out.add(f"[{host}]:{p}" if ":" in host else f"{host}:{p}")
    return out


def _local_port(endpoint: str) -> int | None:
    if not endpoint.startswith("tcp://"):
        return None
    port = endpoint.rpartition(":")[2]
    return int(port) if port.isdigit() else None


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class RateLimit:
    """At most ``burst`` lines per key in any ``window`` seconds; the rest counted.

    When a key's window ends (at its next line, or at :meth:`flush`),
    ``report(key, suppressed, logged, seconds)`` is called if lines were held
    back: the caller logs one summary line. The drop logs' rule
    (:class:`~greenzmq.core.tracing.Tracer`), for connection events and refusals.
    """

    def __init__(self, report: Callable[[str, int, int, float], None]) -> None:
        self.report = report
        self._windows: dict[str, _Window] = {}

    def allow(self, key: str, burst: int, window: float) -> bool:
        """Whether to log this line now; counts it if not."""
        now = time.monotonic()
        w = self._windows.get(key)
        if w is None:
            if len(self._windows) > 4096:  # many keys (addresses): forget the quiet ones
                self.flush()
            w = self._windows[key] = _Window(now)
        elif now - w.start >= window:
            self._end(key, w, now)
            w.start, w.logged, w.suppressed = now, 0, 0
        if w.logged < burst:
            w.logged += 1
            return True
        w.suppressed += 1
        return False

    def _end(self, key: str, w: _Window, now: float) -> None:
        if w.suppressed:
            self.report(key, w.suppressed, w.logged, round(now - w.start, 3))

    def flush(self) -> None:
        """Report what is held back, and start afresh."""
        now = time.monotonic()
        for key, w in self._windows.items():
            self._end(key, w, now)
        self._windows.clear()


class SocketMonitor:
    """The monitor of one socket: live peers for ``health``, and connection events.

    ``monitor`` is the PAIR socket the events arrive on; ``endpoints`` the
    socket's connect endpoints (whose live peers ``greenzmq health`` reports);
    ``events`` whether connection events are logged and counted. :meth:`run`,
    in a greenlet of the service, starts the thread that owns the PAIR and
    handles what it reads; :meth:`bind` gives it the service's log and
    counters first.
    """

    burst = 20  # lines per socket and event in any window
    window = 1.0  # seconds

    def __init__(self, monitor: Any, endpoints: Sequence[str], events: bool = False) -> None:
        self.monitor = monitor
        self.endpoints = tuple(endpoints)
        self.events = events
        self.live: Counter[str] = Counter()
        self.name = "?"
        self.log: Any = None
        self.counters: Any = None
        # descriptor -> peer address of the connections a bound socket accepted
        self._fds: dict[int, str] = {}
        self._listening: set[str] = set()
        # a bound socket's handshake failure waits for its connection's disconnect
        self._failed: list[tuple[int, int, str]] = []
        self._known: dict[int, set[str]] = {}  # local port -> peers already named
        self._unnamed: dict[int, str] = {}  # id(event) -> a name from the kernel's table
        self._queue: deque[tuple[dict[str, Any], str | None]] = deque()
        self._thread: threading.Thread | None = None
        self._wake: Any = None
        self._limit = RateLimit(self._suppressed)

    def bind(self, name: str, log: Any, counters: Any) -> None:
        """Log as socket ``name`` to ``log``; count into ``counters`` (a SocketCounters)."""
        self.name = name
        self.log = log
        self.counters = counters

    def run(self) -> None:
        """Handle events until killed (the service's close kills it, then closes the socket).

        The PAIR is read by a thread (:meth:`_read`), which names an accepted
        connection's peer the moment the event arrives: a connection that
        fails its handshake is closed by libzmq within a round trip or two,
        often before a greenlet would be scheduled (measured: 13 of 40
        plaintext clients named from a greenlet on an idle hub, 37 of 40 from
        a thread). The thread does nothing else: the events are handled here,
        in the hub, where the logger and the counters live.
        """
        import gevent.event

        ready = gevent.event.Event()
        wake = gevent.get_hub().loop.async_()
        wake.start(ready.set)
        self._wake = wake  # kept (and never closed) while the thread may send to it
        self._thread = threading.Thread(
            target=self._read, args=(wake,), name=f"greenzmq-monitor-{self.name}", daemon=True
        )
        self._thread.start()
        try:
            while True:
                ready.wait()
                ready.clear()
                batch: list[tuple[dict[str, Any], str | None]] = []
                while self._queue and len(batch) < BATCH:
                    batch.append(self._queue.popleft())
                if self._queue:
                    ready.set()  # the rest on the next turn: other greenlets run between
                self.handle(batch)
        finally:
            wake.stop()
            self.flush()

    def _read(self, wake: Any) -> None:
        """The reader thread: receive, name accepted peers, queue, wake the hub."""
        from zmq.utils.monitor import parse_monitor_message

        mon = self.monitor
        try:
            while True:
                ev = parse_monitor_message(mon.recv_multipart())
                if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return  # the monitored socket was closed
                peer = None
                if ev["event"] == zmq.EVENT_ACCEPTED and self.events:
                    peer = _peer_of(int(ev["value"]))
                self._queue.append((dict(ev), peer))
                wake.send()  # thread-safe: wakes the hub, which sets the event
        except zmq.ZMQError:
            return  # ETERM: the context is ending
        finally:
            mon.close(0)

    def close(self) -> None:
        """Close the PAIR, if no reader thread owns it (the thread closes its own)."""
        if self._thread is None:
            self.monitor.close(0)

    def bind_error(self, error: zmq.ZMQError) -> zmq.ZMQError:
        """``error`` (EAGAIN from a monitored bind) with the errno its bind_failed event has.

        For a socket being built, before :meth:`run` owns the PAIR: the event
        is read here (and not logged: the failed build raises it).
        """
        from zmq.utils.monitor import parse_monitor_message

        while True:
            try:
                ev = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.ZMQError:
                return error
            if ev["event"] == zmq.EVENT_BIND_FAILED and ev["value"]:
                real = int(ev["value"])
                msg = str(error).replace(zmq.strerror(zmq.EAGAIN), zmq.strerror(real))
                return zmq.ZMQError(real, msg)

    # -- one batch -------------------------------------------------------------
    def handle(self, batch: Sequence[tuple[dict[str, Any], str | None]]) -> None:
        """Account for, log and count a batch of (parsed event, peer or None), in order."""
        if self.events:
            self._name_closed(batch)
        for ev, peer in batch:
            event, value = int(ev["event"]), int(ev["value"])
            endpoint = bytes(ev["endpoint"]).decode(errors="replace")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED and endpoint in self.endpoints:
                self.live[endpoint] += 1
            elif event == zmq.EVENT_DISCONNECTED and self.live[endpoint] > 0:
                self.live[endpoint] -= 1
                if not self.live[endpoint]:
                    del self.live[endpoint]
            if self.events:
                if event == zmq.EVENT_ACCEPTED:
                    self._listening.add(endpoint)
                    self._fds[value] = peer or self._unnamed.pop(id(ev), "unknown")
                self._event(event, value, endpoint)

    def _name_closed(self, batch: Sequence[tuple[dict[str, Any], str | None]]) -> None:
        """Name the peers the reader thread was too late for (see the module docstring)."""
        pending: dict[int | None, list[int]] = {}  # local port -> events (by id)
        for ev, peer in batch:
            if int(ev["event"]) != zmq.EVENT_ACCEPTED:
                continue
            port = _local_port(bytes(ev["endpoint"]).decode(errors="replace"))
            if peer is None:
                pending.setdefault(port, []).append(id(ev))
            elif port is not None:
                self._known.setdefault(port, set()).add(peer)
        # closed before the thread could ask: the kernel remembers the sockets we closed
        for port, ids in pending.items():
            name = self._closed_names(port)
            for i in ids:
                self._unnamed[i] = name

    def _closed_names(self, port: int | None) -> str:
        if port is None:
            return "unknown"
        peers = closed_peers(port)
        known = self._known.setdefault(port, set())
        # forget what the kernel forgot, except connections still open
        known &= peers | set(self._fds.values())
        new = peers - known
        known |= new
        if len(new) == 1:
            return next(iter(new))
        hosts = {p.rpartition(":")[0] for p in new}
        if len(hosts) == 1 and new:
            return next(iter(hosts))  # several from one host: its IP, not which port
        return "unknown"

    def _event(self, event: int, value: int, endpoint: str) -> None:
        if event not in EVENT_NAMES:
            return
        if event in _FAILURE_REASONS:
            if endpoint in self._listening:
                # a bound socket's: named by the disconnect of its descriptor, next
                self._failed.append((event, value, endpoint))
                return
            self._emit(event, value, endpoint, endpoint)
            return
        if event == zmq.EVENT_ACCEPTED:
            self._emit(event, value, endpoint, self._fds.get(value, "unknown"))
        elif event == zmq.EVENT_DISCONNECTED:
            addr = self._fds.pop(value, None)
            if addr is None and not self._failed:  # a connecting socket's peer
                self._emit(event, value, endpoint, endpoint)
                return
            addr = addr or "unknown"
            # libzmq's I/O thread reports a failed handshake and then, in the
            # same call, its connection's disconnect: this one is the failure's
            for failed in self._failed:
                self._emit(failed[0], failed[1], failed[2], addr)
            self._failed.clear()
            self._emit(event, value, endpoint, addr)
        elif event in (zmq.EVENT_BIND_FAILED, zmq.EVENT_ACCEPT_FAILED, zmq.EVENT_CLOSE_FAILED):
            self._emit(event, value, endpoint, None)
        else:
            self._emit(event, value, endpoint, endpoint)

    def _emit(self, event: int, value: int, endpoint: str, address: str | None) -> None:
        name, level = EVENT_NAMES[event]
        if self.counters is not None:
            self.counters.connection(name)
        if self.log is None or not self._limit.allow(name, self.burst, self.window):
            return
        fields: dict[str, Any] = {"endpoint": endpoint}
        if address is not None:
            fields["address"] = address
        if event in _FAILURE_REASONS:
            fields.update(
                reason=_FAILURE_REASONS[event], error=_error_name(event, value), code=value
            )
        elif event in (zmq.EVENT_BIND_FAILED, zmq.EVENT_ACCEPT_FAILED, zmq.EVENT_CLOSE_FAILED):
            fields.update(error=_error_name(event, value), code=value)
        getattr(self.log, level)(f"socket.{name}", **fields)

    # -- rate limit ------------------------------------------------------------
    def _suppressed(self, name: str, count: int, logged: int, seconds: float) -> None:
        if self.log is not None:
            self.log.warning(
                "socket.events_suppressed", kind=name, count=count, logged=logged, seconds=seconds
            )

    def flush(self) -> None:
        """Log the counts the rate limit held back (the reader's last act)."""
        self._limit.flush()


def attach_monitor(
    ctx: Any, sock: Any, endpoints: Iterable[str] = (), *, events: bool = False
) -> SocketMonitor:
    """Attach a :class:`SocketMonitor` to ``sock`` (as ``sock.peer_watch``), before it connects.

    ``events`` False asks libzmq only for what ``greenzmq health`` needs.
    """
    addr = f"inproc://greenzmq-monitor-{id(sock):x}"
    sock.monitor(addr, (_ALL if events else _PEERS) | zmq.EVENT_MONITOR_STOPPED)
    # a plain socket: the reader thread owns it (SocketMonitor.run), and the
    # service's close must not close it under that thread (it is not in
    # ctx._sockets); it closes itself when the monitored socket closes
    mon = zmq.Socket(ctx, zmq.PAIR)
    try:
        mon.setsockopt(zmq.LINGER, 0)
        mon.connect(addr)
    except BaseException:
        mon.close(0)
        raise
    watch = SocketMonitor(mon, tuple(endpoints), events)
    sock.peer_watch = watch
    return watch
