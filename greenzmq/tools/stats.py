"""``greenzmq stats ENDPOINT``: one snapshot of a service's live counters, or ``--watch``.

The service side (counters, the control endpoint ``GREENZMQ_STATS``) is
:mod:`greenzmq.core.stats`; this is the client a person runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..cli import plain
from ..core.stats import STATS_ENV, ipc_path

__all__ = ["fetch", "main", "render"]


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
