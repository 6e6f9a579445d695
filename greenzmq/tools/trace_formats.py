"""What ``greenzmq trace`` writes besides its report: spans, timelines, slowest paths, plots.

* :func:`otlp` follows OpenTelemetry's OTLP/JSON encoding of ``ExportTraceServiceRequest``
  (opentelemetry-proto, ``trace/v1/trace.proto``; JSON mapping per OTLP's
  "JSON Protobuf Encoding": ids as hex, 64-bit integers as decimal strings,
  enums as integers). One trace per path: a root span from its first hop to its
  last, and one child span per interval between two hops, named
  ``from -> to``. A span belongs to the process (``resourceSpans``) of the hop it
  ends at, where the time was spent waiting for it; the root to the process of
  the first hop. Loadable by OpenTelemetry tooling (an OTLP/HTTP JSON receiver,
  or ``otel-cli``/collector file receivers).
* :func:`chrome` writes the Trace Event Format (``{"traceEvents": [...]}``,
  complete ``"X"`` events in microseconds, ``process_name`` metadata) that
  chrome://tracing and ui.perfetto.dev open: one row per process, a box per
  hop interval.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .trace import Hop, Path, percentile

__all__ = ["chrome", "otlp", "plot", "slowest"]

_SPAN_KIND_INTERNAL = 1  # opentelemetry.proto.trace.v1.Span.SpanKind
_STATUS_UNSET, _STATUS_ERROR = 0, 2


def _hex_id(*parts: str, size: int) -> str:
    """A deterministic id of ``size`` bytes, as OTLP/JSON's lowercase hex; never all zero."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=size).hexdigest()
    return digest if digest.strip("0") else "0" * (2 * size - 1) + "1"


def _attr(key: str, value: str | int) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def _nanos(ts: float) -> str:
    return str(round(ts * 1e9))


def _hop_attrs(h: Hop) -> list[dict[str, Any]]:
    attrs = [
        _attr("greenzmq.socket", h.socket),
        _attr("greenzmq.socket_type", h.sock_type),
        _attr("greenzmq.op", h.op),
        _attr("greenzmq.key", h.key),
    ]
    for k in ("peer", "dest", "reason", "attempt"):
        if k in h.extra:
            attrs.append(_attr(f"greenzmq.{k}", str(h.extra[k])))
    return attrs


def otlp(paths: Sequence[Path]) -> dict[str, Any]:
    """The paths as one OTLP/JSON ``ExportTraceServiceRequest`` (see the module docstring)."""
    from .trace import stopped

    by_proc: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for i, p in enumerate(paths):
        trace_id = _hex_id(str(i), *p.keys, size=16)
        root_id = _hex_id(trace_id, "root", size=8)
        first = p.hops[0]
        why = stopped(p)
        status: dict[str, Any] = {"code": _STATUS_UNSET}
        if why is not None:
            status = {"code": _STATUS_ERROR, "message": why}
        by_proc[(first.service, first.pid)].append(
            {
                "traceId": trace_id,
                "spanId": root_id,
                "name": f"message {p.keys[0]}",
                "kind": _SPAN_KIND_INTERNAL,
                # a receiver may log a few us before its sender: the root spans them all
                "startTimeUnixNano": _nanos(min(h.ts for h in p.hops)),
                "endTimeUnixNano": _nanos(max(h.ts for h in p.hops)),
                "attributes": [
                    _attr("greenzmq.keys", " ".join(p.keys)),
                    _attr("greenzmq.hops", len(p.hops)),
                ],
                "status": status,
            }
        )
        start = first.ts
        for j, (a, b) in enumerate(zip(p.hops, p.hops[1:], strict=False)):
            start = min(max(start, a.ts), b.ts)  # never negative (see hop_latencies)
            by_proc[(b.service, b.pid)].append(
                {
                    "traceId": trace_id,
                    "spanId": _hex_id(trace_id, str(j), size=8),
                    "parentSpanId": root_id,
                    "name": f"{a.where} -> {b.where}",
                    "kind": _SPAN_KIND_INTERNAL,
                    "startTimeUnixNano": _nanos(start),
                    "endTimeUnixNano": _nanos(b.ts),
                    "attributes": _hop_attrs(b),
                    "status": {"code": _STATUS_UNSET},
                }
            )
            start = b.ts
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [_attr("service.name", service), _attr("process.pid", pid)]
                },
                "scopeSpans": [{"scope": {"name": "greenzmq.trace"}, "spans": spans}],
            }
            for (service, pid), spans in sorted(by_proc.items())
        ]
    }


def chrome(paths: Sequence[Path]) -> dict[str, Any]:
    """The paths in the Trace Event Format (see the module docstring)."""
    events: list[dict[str, Any]] = []
    procs: dict[int, str] = {}
    for i, p in enumerate(paths):
        start = p.hops[0].ts
        for a, b in zip(p.hops, p.hops[1:], strict=False):
            start = min(max(start, a.ts), b.ts)
            procs.setdefault(b.pid, b.service)
            events.append(
                {
                    "name": f"{a.where} -> {b.where}",
                    "cat": "hop",
                    "ph": "X",
                    "ts": round(start * 1e6, 3),
                    "dur": round((b.ts - start) * 1e6, 3),
                    "pid": b.pid,
                    "tid": i,  # one row per message within a process
                    "args": {"key": b.key, "op": b.op, "socket": b.socket, "message": p.keys[0]},
                }
            )
            start = b.ts
    meta = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}}
        for pid, name in sorted(procs.items())
    ]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms"}


def slowest(paths: Sequence[Path], n: int) -> list[str]:
    """The ``n`` slowest paths (first hop to last), each with its slowest hop interval."""
    timed = []
    for p in paths:
        if len(p.hops) < 2:
            continue
        gaps = [(b.ts - a.ts, a, b) for a, b in zip(p.hops, p.hops[1:], strict=False)]
        worst = max(gaps, key=lambda g: g[0])
        timed.append((p.hops[-1].ts - p.hops[0].ts, p, worst))
    timed.sort(key=lambda t: -t[0])
    out = [f"slowest {min(n, len(timed))} of {len(timed)} paths (ms)"]
    out.append("| message | total | hops | slowest hop | its ms |")
    out.append("| --- | ---: | ---: | --- | ---: |")
    for total, p, (gap, a, b) in timed[:n]:
        out.append(
            f"| {p.keys[0]} | {total * 1e3:.3f} | {len(p.hops)} "
            f"| {a.where} -> {b.where} | {max(gap, 0.0) * 1e3:.3f} |"
        )
    return out


def plot(
    latencies: dict[tuple[str, str], list[float]],
    path: str,
    paths: Sequence[Path] = (),
    top: int = 12,
    shown: int = 4,
) -> None:
    """Per-hop latency distributions and a timeline of the slowest messages, as one PNG.

    Left: box plots (ms, log scale) of the ``top`` busiest hop intervals.
    Right (when ``paths`` are given): the ``shown`` slowest messages, one row
    per process they crossed, a bar per hop interval where it ended (what
    ``--chrome`` shows interactively). Needs matplotlib (``greenzmq[plot]``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    items = sorted(latencies.items(), key=lambda kv: -len(kv[1]))[:top]
    slow = sorted(
        (p for p in paths if len(p.hops) > 1), key=lambda p: p.hops[0].ts - p.hops[-1].ts
    )[:shown]
    cols = 2 if slow else 1
    height = 0.45 * max(len(items), 2 * len(slow), 2) + 1.4
    fig, grid = plt.subplots(1, cols, figsize=(9 * cols, height), squeeze=False)
    ax = grid[0][0]
    data = [[max(v, 1e-7) * 1e3 for v in vs] for _, vs in items]
    labels = [f"{a} -> {b} (n={len(vs)}, p99 {percentile(vs, 0.99) * 1e3:.2f})"
              for (a, b), vs in items]  # fmt: skip
    if data:
        # matplotlib 3.10 renamed vert=False to orientation="horizontal"
        new = tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
        horizontal: dict[str, Any] = {"orientation": "horizontal"} if new else {"vert": False}
        ax.boxplot(data, showfliers=True, **horizontal)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ms from one hop to the next")
    ax.set_title("per-hop latency")
    if slow:
        _timeline_panel(grid[0][1], slow)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _timeline_panel(ax: Any, paths: Sequence[Path]) -> None:
    """Rows ``message / process``, a bar per hop interval (ms since the message's first hop)."""
    rows: list[str] = []
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for n, p in enumerate(paths):
        t0 = min(h.ts for h in p.hops)
        start = p.hops[0].ts
        for a, b in zip(p.hops, p.hops[1:], strict=False):
            start = min(max(start, a.ts), b.ts)
            label = f"{p.keys[0][:8]} {b.service}[{b.pid}]"
            if label not in rows:
                rows.append(label)
            y = rows.index(label)
            ax.broken_barh(
                [((start - t0) * 1e3, max((b.ts - start) * 1e3, 0.002))],
                (y - 0.35, 0.7),
                color=colors[n % len(colors)],
            )
            ax.text((b.ts - t0) * 1e3, y, f" {b.socket} {b.op}", va="center", fontsize=6)
            start = b.ts
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the message's first hop")
    ax.set_title(f"timeline of the {len(paths)} slowest messages")
