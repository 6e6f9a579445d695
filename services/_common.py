"""Shared by the tutorial services: endpoints and an XPUB that waits for subscribers."""

from __future__ import annotations

import gevent
import zmq

from greenzmq.sockets import Socket

WEATHER = "tcp://127.0.0.1:5556"
TASKS = "tcp://127.0.0.1:5557"
KILL = "tcp://127.0.0.1:5558"
FRONTEND = "tcp://127.0.0.1:5560"
BACKEND = "tcp://127.0.0.1:5561"


def wait_for_subscribers(sock: Socket, expect: int, timeout: float) -> int:
    """Wait on an XPUB (with XPUB_VERBOSE) until ``expect`` peers subscribed.

    This is the PUB/SUB slow-joiner fix: a PUB drops what it sends before a
    subscription has arrived, so publishers wait for their subscribers instead
    of sleeping and hoping. Returns how many subscriptions were seen (less
    than ``expect`` only if ``timeout`` ran out).
    """
    seen = 0
    with gevent.Timeout(timeout, False):  # type: ignore[arg-type]  # False: end quietly
        while seen < expect:
            msg = sock.recv()
            if msg[:1] == b"\x01":
                seen += 1
    return seen


def xpub_options() -> dict[int, int]:
    """Socket options for a publisher that counts its subscribers."""
    return {zmq.XPUB_VERBOSE: 1}
