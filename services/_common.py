"""Shared by the tutorial services: endpoints, XPUB helpers and the simple roles' shapes.

The shapes: stop now (:func:`kill_main`), trace one socket
(:func:`socket_tracer`), send 1..N with random pauses (:func:`send_numbered`).
"""

from __future__ import annotations

import random

import gevent
import zmq

from greenzmq import Service
from greenzmq.core.sockets import Socket
from greenzmq.core.tracing import SocketTracer

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


def kill_main(svc: Service) -> None:
    """Kill ``svc``'s main greenlet now, unless it is the one asking (an ``on_stop`` body)."""
    svc.kill_run()


def socket_tracer(svc: Service, socket: str, kind: str) -> SocketTracer | None:
    """The hop tracer of ``svc``'s socket ``socket``, or None when tracing is off."""
    tr = svc.tracer
    return tr.for_socket(socket, kind) if tr is not None and tr.on else None


def send_numbered(
    svc: Service, socket: str, kind: str, count: int, pause: float, event: str, field: str
) -> None:
    """Send b"1" .. ``count`` on ``socket`` with random pauses up to ``pause`` s.

    Each send is traced (a hop) and logged as ``event`` with the number as
    ``field``; a stopping service sends no more.
    """
    sock = svc.socks[socket]
    st = socket_tracer(svc, socket, kind)
    for i in range(1, count + 1):
        if svc.stopping.is_set():
            break
        gevent.sleep(random.random() * pause)
        body = str(i).encode()
        sock.send(body)
        if st is not None:
            st.hop("send", [body])
        svc.log.info(event, **{field: i})
