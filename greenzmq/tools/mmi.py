"""``greenzmq mmi ENDPOINT SERVICE``: ask a Majordomo broker whether SERVICE has workers.

Sends Majordomo's ``mmi.service`` request (MDP/0.1, which every greenzmq
broker speaks) and prints the broker's answer: ``200`` (the service has
workers), ``404`` (it has none). Exit 0 for 200, 1 for 404 or no answer
within ``--timeout``, 2 for a bad command line: usable as a readiness probe
("is anybody serving ``echo``?").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..cli import plain
from ..core.endpoints import parse_endpoint

__all__ = ["lookup", "main"]

MDPC01 = b"MDPC01"


def lookup(endpoint: str, service: str, timeout: float = 2.0) -> str:
    """The broker's answer to ``mmi.service`` for ``service``; TimeoutError if none."""
    import zmq

    ctx: zmq.Context[Any] = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send_multipart([MDPC01, b"mmi.service", service.encode()])
        if not s.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer from {endpoint} within {timeout:g} s")
        reply = s.recv_multipart()
    finally:
        s.close(linger=0)
    # ["MDPC01", "mmi.service", code]
    return reply[-1].decode(errors="replace") if reply else ""


def build_parser() -> argparse.ArgumentParser:
    """Options of ``greenzmq mmi``."""
    p = argparse.ArgumentParser(prog="greenzmq mmi", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("endpoint", metavar="ENDPOINT", help="the broker's endpoint (tcp://...)")
    p.add_argument("service", metavar="SERVICE", help="the service name to look up")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds the broker gets to answer (default 2 s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``greenzmq mmi``: 0 if the service has workers, 1 if not, 2 bad input."""
    ns = build_parser().parse_args(argv)
    try:
        parse_endpoint(ns.endpoint, bind=False)
        if not ns.timeout > 0:
            raise ValueError(f"--timeout must be positive, got {ns.timeout}")
        if not ns.service or ns.service.startswith("mmi."):
            raise ValueError(f"not a service name: {ns.service!r}")
    except ValueError as e:
        print(f"greenzmq mmi: error: {e}", file=sys.stderr)
        return 2
    try:
        code = lookup(ns.endpoint, ns.service, ns.timeout)
    except TimeoutError as e:
        print(f"{ns.service}: {e}")
        return 1
    meaning = {"200": "has workers", "404": "no workers"}.get(code, "unexpected answer")
    print(f"{ns.service}: {code} {meaning}")
    return 0 if code == "200" else 1
