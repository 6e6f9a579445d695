"""``greenzmq health ENDPOINT``: exit 0 if the service answers and its connect sockets have peers.

A probe for containers and Kubernetes (``exec`` probes, Docker's
``HEALTHCHECK``): the ENDPOINT is the service's stats endpoint
(``GREENZMQ_STATS=ipc:///...``, see :mod:`greenzmq.core.stats`). Healthy is:

- the service's hub answers a stats request within ``--timeout`` (a blocked
  hub or a stopped process does not), and
- every socket that connects somewhere (the kill switch aside: nothing need
  publish on it) has at least one live peer: a ZMTP handshake that
  succeeded and no disconnect since, from a socket monitor the service runs
  while its stats endpoint is served (:class:`greenzmq.core.monitor.SocketMonitor`).

Exit 0 with one ``healthy:`` line, 1 with one ``unhealthy:`` line saying
why, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..cli import plain
from ..core.stats import STATS_ENV, ipc_path
from .stats import fetch

__all__ = ["check", "main"]

IGNORED = frozenset({"kill"})  # the kill switch's SUB: a publisher is optional


def check(snap: dict[str, Any]) -> str | None:
    """Why the snapshot is unhealthy, or None."""
    for name, p in sorted(snap.get("peers", {}).items()):
        if name in IGNORED or not p.get("connect"):
            continue
        if not p.get("live"):
            return f"socket {name!r} has no live peer (connects to {', '.join(p['connect'])})"
    return None


def build_parser() -> argparse.ArgumentParser:
    """Options of ``greenzmq health``."""
    p = argparse.ArgumentParser(
        prog="greenzmq health",
        description=plain(__doc__.split("\n\n")[0]),
        epilog=f"The service serves its stats when started with {STATS_ENV}=ipc:///PATH.ipc.",
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="the service's stats endpoint (ipc://...)")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds the service gets to answer (default 2 s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``greenzmq health``: 0 healthy, 1 unhealthy, 2 bad input."""
    ns = build_parser().parse_args(argv)
    try:
        path = ipc_path(ns.endpoint)
        if not ns.timeout > 0:
            raise ValueError(f"--timeout must be positive, got {ns.timeout}")
    except ValueError as e:
        print(f"greenzmq health: error: {e}", file=sys.stderr)
        return 2
    if not os.path.exists(path):
        print(f"unhealthy: {path} does not exist (service not running with {STATS_ENV}?)")
        return 1
    try:
        snap = fetch(ns.endpoint, ns.timeout)
    except TimeoutError:
        print(f"unhealthy: the service at {ns.endpoint} did not answer within {ns.timeout:g} s")
        return 1
    why = check(snap)
    if why is not None:
        print(f"unhealthy: {snap.get('service', '?')} pid {snap.get('pid', '?')}: {why}")
        return 1
    peers = ", ".join(
        f"{n}: {len(p['live'])} live peer(s)"
        for n, p in sorted(snap.get("peers", {}).items())
        if n not in IGNORED and p.get("connect")
    )
    print(
        f"healthy: {snap.get('service', '?')} pid {snap.get('pid', '?')}: loop answers"
        + (f"; {peers}" if peers else "")
    )
    return 0
