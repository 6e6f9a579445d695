"""``greenzmq trace LOGFILE...``: follow messages across processes through their hop logs.

Reads the JSON hop events (``event="hop"``, see :mod:`greenzmq.core.tracing`) of any
number of processes and joins them into one path per message:

* hops with the same ``key`` are the same message (the key is a digest of the
  body, the same in every process);
* a reply's hops (another key) join its request's path through ``reply_to``,
  which the process that pairs them (a worker's send, a client's recv) logs.

Messages with identical bodies share a key. When such messages follow one
another they are told apart (a message has one send, its origin; a service
forwards or receives one message once; a process that received a body and
sends it again sends a new message; a reply that reached its requester is
done); identical bodies in flight at the same time cannot be told apart. A
``retry`` (a client's next try) and a ``dispatch`` with ``attempt`` 2 or more
(a queue's, after the worker holding the request was lost) send the same
message again: its next try, on the same path.
Hops are logged just after the socket operation, so a fast receiver may log
before its sender: within a try, the services a path passed are ordered by
the earliest op each logged (send, forward/dispatch, recv, put, take), then
by time, each service's own hops in time order; the time at a hop is never
negative.

The default report gives per-hop latency percentiles and counts (time from one
hop of a path to the next), and lists the messages whose path stops: the last
hop seen is a send, retry, forward, dispatch, put or drop, a recv on a
REP/ROUTER socket that got no reply, or a retrying client's request
(LazyPirate, MDPClient) with no reply. ``--key K`` prints the timeline of the message(s) with key K.
``--slowest N`` lists the slowest paths with their slowest hop; ``--otlp``,
``--chrome`` and ``--plot`` write the paths as OpenTelemetry spans, a
Chrome/Perfetto timeline and a latency plot (:mod:`greenzmq.tools.trace_formats`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..cli import plain

__all__ = ["Hop", "Path", "build_paths", "hop_latencies", "load_hops", "main", "stopped"]

# a path whose last hop is one of these was not seen arriving anywhere
_UNFINISHED_OPS = frozenset({"send", "retry", "forward", "dispatch", "put", "drop"})
# a request taken by one of these expects a reply
_REPLYING_TYPES = frozenset({"REP", "ROUTER"})
# where each op sits on a message's way through the processes
_RANK = {
    "send": 0, "retry": 0, "forward": 1, "dispatch": 1, "drop": 1, "recv": 2, "put": 3, "take": 4,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Hop:
    """One hop event, with what the report needs."""

    ts: float
    key: str
    op: str
    service: str
    pid: int
    socket: str
    sock_type: str
    reply_to: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    source: str = ""

    @property
    def where(self) -> str:
        """``service/socket op``: a hop's place, the same for every process of a service."""
        return f"{self.service}/{self.socket} {self.op}"


@dataclasses.dataclass
class Path:
    """One message's hops in time order, its reply's hops included."""

    hops: list[Hop]
    keys: list[str]

    @property
    def last(self) -> Hop:
        """The last hop seen."""
        return self.hops[-1]


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


_KNOWN = {
    "event",
    "timestamp",
    "key",
    "op",
    "service",
    "pid",
    "socket",
    "sock_type",
    "reply_to",
    "level",
}


def load_hops(paths: Iterable[str]) -> tuple[list[Hop], int]:
    """Every hop event in the files, in time order; and how many lines were unreadable.

    Unreadable: not JSON, or a hop event with a bad timestamp, pid or reply_to.
    """
    hops: list[Hop] = []
    skipped = 0
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError:
                    skipped += 1
                    continue
                if not isinstance(ev, dict) or ev.get("event") != "hop" or not ev.get("key"):
                    continue
                ts = _timestamp(ev.get("timestamp"))
                pid = ev.get("pid", 0) or 0
                reply_to = ev.get("reply_to")
                if (
                    ts is None
                    or not isinstance(pid, int)
                    or not isinstance(reply_to, (str, type(None)))
                ):
                    skipped += 1
                    continue
                hops.append(
                    Hop(
                        ts=ts,
                        key=str(ev["key"]),
                        op=str(ev.get("op", "?")),
                        service=str(ev.get("service", "?")),
                        pid=pid,
                        socket=str(ev.get("socket", "?")),
                        sock_type=str(ev.get("sock_type", "?")),
                        reply_to=reply_to,
                        extra={k: v for k, v in ev.items() if k not in _KNOWN},
                        source=path,
                    )
                )
    hops.sort(key=lambda h: h.ts)
    return hops, skipped


def _attempt(h: Hop) -> int:
    """The try a hop belongs to: its ``attempt`` field (a client's, a queue's dispatch), else 1."""
    a = h.extra.get("attempt")
    return a if isinstance(a, int) and not isinstance(a, bool) else 1


def _again(h: Hop) -> bool:
    """A hop that sends the message once more: a client's retry, a queue's next dispatch."""
    return h.op == "retry" or _attempt(h) > 1


@dataclasses.dataclass
class _Group:
    hops: list[Hop] = dataclasses.field(default_factory=list)
    tries: list[int] = dataclasses.field(default_factory=list)  # per hop: the try it is part of
    places: set[tuple[int, str, str]] = dataclasses.field(default_factory=set)
    stations: set[tuple[int, str]] = dataclasses.field(default_factory=set)  # (pid, service)
    receivers: set[int] = dataclasses.field(default_factory=set)
    reply_to: str | None = None
    sent: bool = False  # a message has one origin: one send
    done: bool = False  # a reply reached its requester
    try_no: int = 1

    def takes(self, h: Hop) -> bool:
        if _again(h):
            # the same request sent again (after a timeout, or to the next
            # worker): one path, unless it was answered already
            return bool(self.hops) and not self.done
        if (h.pid, h.service, h.op) in self.places:
            return False  # one service forwards (receives, ...) one message once
        if h.op == "send" and (self.sent or h.pid in self.receivers):
            return False  # a second origin, or sent again after receiving: a new message
        # a reply's own late hop (its sender, or a relay it passed, logs after
        # the requester got it) still belongs to it; anything else after the
        # reply arrived is new
        return (
            not self.done
            or (h.reply_to is not None and h.reply_to == self.reply_to)
            or (h.pid, h.service) in self.stations
        )

    def add(self, h: Hop) -> None:
        if _again(h) and self.hops:
            # a new try: its hops may pass the same services again
            self.try_no += 1
            self.places.clear()
            self.receivers.clear()
        self.hops.append(h)
        self.tries.append(self.try_no)
        self.places.add((h.pid, h.service, h.op))
        self.stations.add((h.pid, h.service))
        if h.reply_to is not None:
            self.reply_to = h.reply_to
        self.sent = self.sent or h.op in ("send", "retry")
        if h.op in ("recv", "take"):
            self.receivers.add(h.pid)
            self.done = self.done or h.reply_to is not None


def _segments(hops: Sequence[Hop]) -> list[_Group]:
    """Hops grouped by key, one group per message (see :meth:`_Group.takes`).

    Processes log a hop just after the socket operation, so the timestamps of
    different processes are only roughly in causal order; the rules allow for
    a receiver that logs before its sender.
    """
    groups: dict[str, _Group] = {}
    segs: list[_Group] = []
    for h in hops:
        g = groups.get(h.key)
        if g is None or not g.takes(h):
            g = groups[h.key] = _Group()
            segs.append(g)
        g.add(h)
    return segs


def build_paths(hops: Sequence[Hop]) -> list[Path]:
    """Join the hops into one path per message (a request and its reply are one path)."""
    segs = _segments(hops)
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, seg in enumerate(segs):
        by_key[seg.hops[0].key].append(i)
    parent: dict[int, int] = {}
    child: dict[int, int] = {}
    for i, seg in enumerate(segs):
        req = next((h.reply_to for h in seg.hops if h.reply_to), None)
        if req is None:
            continue
        start = seg.hops[0].ts
        # the latest earlier segment of the request's key that has no reply yet
        for j in reversed(by_key.get(req, [])):
            if j != i and j not in child and segs[j].hops[0].ts <= start:
                parent[i], child[j] = j, i
                break
    paths = []
    for i, seg in enumerate(segs):
        if i in parent:
            continue  # reached from its request
        hops_ = _causal(seg)
        keys = [seg.hops[0].key]
        j = i
        while j in child:
            j = child[j]
            hops_.extend(_causal(segs[j]))
            keys.append(segs[j].hops[0].key)
        paths.append(Path(hops_, keys))
    return paths


def _causal(seg: _Group) -> list[Hop]:
    """A segment's hops in the order the message took them, try after try.

    Processes log a hop right after the socket operation, so a fast receiver
    can log before its sender: within one try, the services the message
    passed are ordered by the earliest op each logged (send, forward/dispatch/
    drop, recv, put, take: an origin first, a relay before the one it hands
    to), then by time; the hops of one service stay in their own time order
    (a queue's recv before its dispatch).
    """
    out: list[Hop] = []
    by_try: dict[int, dict[tuple[int, str], list[Hop]]] = {}
    for h, t in zip(seg.hops, seg.tries, strict=True):
        by_try.setdefault(t, {}).setdefault((h.pid, h.service), []).append(h)
    for t in sorted(by_try):
        stations = sorted(
            by_try[t].values(), key=lambda hs: (min(_RANK.get(h.op, 1) for h in hs), hs[0].ts)
        )
        for hs in stations:
            out.extend(hs)  # logged in time order by one service
    return out


def stopped(path: Path) -> str | None:
    """Why a path looks unfinished (lost or still in flight), or None if it arrived."""
    last = path.last
    if last.op == "drop":
        return f"dropped: {last.extra.get('reason', '?')}"
    if last.op in _UNFINISHED_OPS:
        return f"not seen after {last.op}"
    if len(path.keys) == 1:
        if last.sock_type in _REPLYING_TYPES and last.reply_to is None:
            return f"no reply after {last.op} on {last.sock_type}"
        if path.hops[0].op in ("send", "retry") and "attempt" in path.hops[0].extra:
            # a retrying client's request (LazyPirate, MDPClient): it waits for a reply
            return f"no reply after {last.op} at {last.service}/{last.socket}"
    return None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def hop_latencies(paths: Iterable[Path]) -> dict[tuple[str, str], list[float]]:
    """Seconds from each hop to the next on every path, by (from place, to place)."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in paths:
        for a, b in zip(p.hops, p.hops[1:], strict=False):
            # clamped: a receiver can log a few us before its sender does
            out[(a.where, b.where)].append(max(0.0, b.ts - a.ts))
    for v in out.values():
        v.sort()
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def report(paths: Sequence[Path], hops: Sequence[Hop], limit: int) -> list[str]:
    """The default report: counts, per-hop latency percentiles, stopped messages."""
    bad = [(p, why) for p in paths if (why := stopped(p)) is not None]
    out = [
        f"{len(hops)} hops, {len(paths)} messages: {len(paths) - len(bad)} arrived, "
        f"{len(bad)} stopped",
        "",
        "per-hop latency (ms)",
        "| from | to | count | p50 | p90 | p99 | max |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lat = hop_latencies(paths)
    for (a, b), v in sorted(lat.items(), key=lambda kv: -len(kv[1])):
        out.append(
            f"| {a} | {b} | {len(v)} | {_ms(percentile(v, 0.5))} | {_ms(percentile(v, 0.9))} "
            f"| {_ms(percentile(v, 0.99))} | {_ms(v[-1])} |"
        )
    counts: dict[str, int] = defaultdict(int)
    for h in hops:
        counts[h.where] += 1
    out += ["", "hops", "| where | count |", "| --- | ---: |"]
    out += [f"| {w} | {n} |" for w, n in sorted(counts.items())]
    out += ["", f"stopped messages: {len(bad)}"]
    for p, why in bad[:limit]:
        h = p.last
        out.append(
            f"  {p.keys[0]}  {why}; last hop {h.where} pid {h.pid} at "
            f"{datetime.datetime.fromtimestamp(h.ts, datetime.timezone.utc):%H:%M:%S.%f}"
        )
    if len(bad) > limit:
        out.append(f"  ... and {len(bad) - limit} more (--limit)")
    return out


def timeline(path: Path) -> list[str]:
    """One message's hops: time since the earliest hop logged, and (+) since the previous hop."""
    t0 = min(h.ts for h in path.hops)
    out = [f"message {' -> reply '.join(path.keys)} ({len(path.hops)} hops)"]
    prev = path.hops[0].ts
    for h in path.hops:
        prev = min(prev, h.ts)  # the time at this hop is never negative (see hop_latencies)
        details = " ".join(
            f"{k}={h.extra[k]}"
            for k in ("attempt", "peer", "dest", "reason", "source")
            if k in h.extra
        )
        rt = f" reply_to={h.reply_to}" if h.reply_to else ""
        out.append(
            f"  {_ms(h.ts - t0):>10} ms  (+{_ms(h.ts - prev)})  {h.service}[{h.pid}] "
            f"{h.socket} {h.sock_type} {h.op} key={h.key}{rt} {details}".rstrip()
        )
        prev = h.ts
    why = stopped(path)
    out.append(f"  => {why}" if why else "  => arrived")
    return out


def build_parser() -> argparse.ArgumentParser:
    """Options of ``greenzmq trace``."""
    p = argparse.ArgumentParser(prog="greenzmq trace", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("logs", nargs="+", metavar="LOGFILE", help="JSON log files (any processes)")
    p.add_argument("--key", help="print this message's timeline (a key or a unique prefix)")
    p.add_argument("--limit", type=int, default=20, help="stopped messages to list (default 20)")
    p.add_argument(
        "--slowest",
        type=int,
        metavar="N",
        help="also list the N slowest paths, with their slowest hop",
    )
    p.add_argument(
        "--otlp", metavar="FILE", help="write the paths as OpenTelemetry spans (OTLP/JSON)"
    )
    p.add_argument(
        "--chrome", metavar="FILE", help="write a Chrome/Perfetto trace (Trace Event Format JSON)"
    )
    p.add_argument(
        "--plot", metavar="PNG", help="plot per-hop latency distributions (needs greenzmq[plot])"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``greenzmq trace``; 0, or 1 if --key matches nothing, 2 on bad input.

    Bad input: a missing file, a negative --limit, or no hop events in the files at all.
    """
    ns = build_parser().parse_args(argv)
    for opt, value in (("--limit", ns.limit), ("--slowest", ns.slowest)):
        if value is not None and value < 0:
            print(
                f"greenzmq trace: error: {opt} must not be negative, got {value}", file=sys.stderr
            )
            return 2
    if ns.plot:
        try:
            import matplotlib  # noqa: F401  # checked before the logs are read
        except ImportError:
            print(
                "greenzmq trace: error: --plot needs matplotlib: pip install 'greenzmq[plot]'",
                file=sys.stderr,
            )
            return 2
    try:
        hops, skipped = load_hops(ns.logs)
    except OSError as e:
        print(f"greenzmq trace: error: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    if not hops:
        # a console log, a service run without tracing, or the wrong file
        print(
            f"greenzmq trace: error: no hop events in {', '.join(ns.logs)} "
            "(JSON lines with event=hop: run the services with --log-format json)",
            file=sys.stderr,
        )
        return 2
    paths = build_paths(hops)
    if ns.key:
        chosen = [p for p in paths if any(k.startswith(ns.key) for k in p.keys)]
        if not chosen:
            print(
                f"greenzmq trace: no message with key {ns.key!r} in {len(hops)} hops",
                file=sys.stderr,
            )
            return 1
        for p in chosen:
            print("\n".join(timeline(p)))
        return 0
    print("\n".join(report(paths, hops, ns.limit)))
    if skipped:
        print(f"({skipped} lines were not JSON events and were skipped)")
    return _exports(ns, paths)


def _exports(ns: argparse.Namespace, paths: Sequence[Path]) -> int:
    """``--slowest``, ``--otlp``, ``--chrome``, ``--plot``: 0, or 2 if a file cannot be written."""
    from . import trace_formats as tf

    if ns.slowest:
        print()
        print("\n".join(tf.slowest(paths, ns.slowest)))
    try:
        for path, build, what in (
            (ns.otlp, tf.otlp, "OpenTelemetry spans (OTLP/JSON)"),
            (ns.chrome, tf.chrome, "Chrome trace events"),
        ):
            if path:
                with open(path, "wb") as f:
                    f.write(orjson.dumps(build(paths)))
                print(f"wrote {what} of {len(paths)} messages to {path}")
        if ns.plot:
            tf.plot(hop_latencies(paths), ns.plot, paths)
            print(f"wrote the per-hop latency plot to {ns.plot}")
    except OSError as e:
        print(f"greenzmq trace: error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    return 0
