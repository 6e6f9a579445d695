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

``greenzmq stats ENDPOINT`` prints one snapshot; ``--watch`` redraws it every
``--interval`` seconds with rates, like top.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ..cli import plain
from ..errors import ConfigError

__all__ = ["STATS_ENV", "SocketCounters", "Stats", "fetch", "main", "serve_control"]

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


def fetch(endpoint: str, timeout: float = 2.0) -> dict[str, Any]:
    """One snapshot from a service's control endpoint; TimeoutError if it does not answer."""
    import zmq

    ctx: zmq.Context[Any] = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send(b"stats")
        if not s.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer from {endpoint} within {timeout} s")
        data: dict[str, Any] = orjson.loads(s.recv())
        return data
    finally:
        s.close(linger=0)


def _num(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000.0
    return f"{n:.1f}T"


def render(snap: Mapping[str, Any], prev: Mapping[str, Any] | None = None) -> list[str]:
    """A snapshot as text; with ``prev``, messages per second since it."""
    dt = (snap["time"] - prev["time"]) if prev else 0.0
    out = [
        f"{snap['service']} pid {snap['pid']}, up {snap['uptime']:.0f} s",
        "",
        f"{'socket':<16}{'type':<8}{'msgs in':>10}{'bytes in':>10}{'msgs out':>10}"
        f"{'bytes out':>10}{'in/s':>9}{'out/s':>9}  drops",
    ]
    for name, c in sorted(snap["sockets"].items()):
        rate_in = rate_out = ""
        if prev and dt > 0:
            p = prev["sockets"].get(name, {})
            rate_in = _num((c["msgs_in"] - p.get("msgs_in", 0)) / dt)
            rate_out = _num((c["msgs_out"] - p.get("msgs_out", 0)) / dt)
        drops = ", ".join(f"{r}: {n}" for r, n in sorted(c.get("drops", {}).items())) or "-"
        out.append(
            f"{name:<16}{c.get('type', ''):<8}{_num(c['msgs_in']):>10}{_num(c['bytes_in']):>10}"
            f"{_num(c['msgs_out']):>10}{_num(c['bytes_out']):>10}{rate_in:>9}{rate_out:>9}  {drops}"
        )
    if snap["queues"]:
        out += ["", "queue depths: " + ", ".join(f"{q}={n}" for q, n in snap["queues"].items())]
    return out


def build_parser() -> argparse.ArgumentParser:
    """Options of ``greenzmq stats``."""
    p = argparse.ArgumentParser(
        prog="greenzmq stats",
        description=plain(__doc__.split("\n\n")[0]),
        epilog=f"A service serves its stats when started with {STATS_ENV}=ipc:///PATH.ipc "
        "({pid} and {service} in PATH are filled in, so several workers do not clash); "
        "the file is owner-only and removed when the service exits.",
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="a service's control endpoint (ipc://...)")
    p.add_argument("--watch", action="store_true", help="refresh like top until Ctrl-C")
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="with --watch: seconds between refreshes (default 1 s)",
    )
    p.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="with --watch: stop after N refreshes (default 0: never)",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds to wait for the service to answer (default 2 s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``greenzmq stats``: 0; 1 if no service answers; 2 on bad input."""
    ns = build_parser().parse_args(argv)
    try:
        ipc_path(ns.endpoint)
        if not ns.timeout > 0:  # a negative one would make the poll wait forever
            raise ValueError(f"--timeout must be positive, got {ns.timeout}")
        if not ns.interval >= 0:  # time.sleep() would raise after the first snapshot
            raise ValueError(f"--interval must not be negative, got {ns.interval}")
    except ValueError as e:
        print(f"greenzmq stats: error: {e}", file=sys.stderr)
        return 2
    path = ipc_path(ns.endpoint)
    if not os.path.exists(path):
        # a service removes its file when it exits: nobody serves there (a runtime state)
        print(
            f"greenzmq stats: error: {path} does not exist "
            f"(is the service running with {STATS_ENV}={ns.endpoint}?)",
            file=sys.stderr,
        )
        return 1
    prev: dict[str, Any] | None = None
    shown = 0
    try:
        while True:
            try:
                snap = fetch(ns.endpoint, ns.timeout)
            except TimeoutError as e:
                print(f"greenzmq stats: error: {e}", file=sys.stderr)
                return 1
            if ns.json:
                print(orjson.dumps(snap).decode(), flush=True)
            else:
                if ns.watch and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place like top
                print("\n".join(render(snap, prev)), flush=True)
            shown += 1
            if not ns.watch or (ns.count and shown >= ns.count):
                return 0
            if not sys.stdout.isatty():
                print(flush=True)
            prev = snap
            time.sleep(ns.interval)
    except KeyboardInterrupt:
        return 0
