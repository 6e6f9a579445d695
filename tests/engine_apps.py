"""Workers for the engine tests (run by ``greenzmq tests.engine_apps:NAME(...)``)."""

from __future__ import annotations

import time

import gevent

from greenzmq.patterns.mdp import MDPWorkerService
from greenzmq.patterns.ppp import PPPWorkerService


def mdp_slow(
    service: str = "slow", delay: float = 30.0, heartbeat: float = 0.2
) -> MDPWorkerService:
    """An MDP/0.2 worker whose handler takes ``delay`` seconds (green: it heartbeats meanwhile)."""

    def handler(body: list[bytes]) -> list[bytes]:
        gevent.sleep(delay)
        return [b"slow " + body[0]]

    return MDPWorkerService(service, handler, heartbeat=heartbeat, reconnect=0.2)


def ppp_blocking(
    block: float = 0.8, heartbeat: float = 0.2, reconnect: float = 2.0
) -> PPPWorkerService:
    """A PPP worker whose handler blocks the hub for ``block`` seconds, then squares.

    ``reconnect``: a worker the queue forgot comes back only after its
    silence plus this backoff, which a client's timeout can tell apart.
    """

    def handler(body: list[bytes]) -> list[bytes]:
        time.sleep(block)  # the whole process is silent meanwhile: no heartbeats
        return [str(int(body[0]) ** 2).encode()]

    return PPPWorkerService(handler, heartbeat=heartbeat, reconnect=reconnect)
