"""A Paranoid Pirate worker: backend DEALER connect tcp://127.0.0.1:5556, plus the kill switch.

Squares integers like the tutorial's worker (an error reply for anything
else). ``services.ppworker:app(heartbeat=0.2, delay=0.5)`` sets the
heartbeat interval and an artificial time per request (seconds);
``offload="thread"`` or ``"process"`` (with ``pool=N``) runs the squaring
off the hub (:mod:`greenzmq.core.offload`). ``app`` is the class, its
arguments are the constructor's.
"""

from __future__ import annotations

import functools
import time

import gevent

from greenzmq.patterns.ppp import PPPWorkerService

from .worker import answer


def square_after(delay: float, green: bool, body: list[bytes]) -> list[bytes]:
    """``[b"7"]`` -> ``[b"49"]`` after ``delay`` seconds (a green sleep when ``green``)."""
    if delay:
        # off the hub (a pool thread or process) a plain sleep is the honest stand-in
        (gevent.sleep if green else time.sleep)(delay)
    return answer(body)


class PPWorker(PPPWorkerService):
    """Squares integers behind a Paranoid Pirate queue."""

    name = "ppworker"

    def __init__(
        self,
        heartbeat: float = 1.0,
        liveness: int = 3,
        reconnect: float = 1.0,
        reconnect_max: float = 32.0,
        delay: float = 0.0,
        offload: str | None = None,
        pool: int = 1,
    ) -> None:
        super().__init__(
            # a module-level function: offload="process" pickles the handler
            functools.partial(square_after, delay, offload is None),
            heartbeat=heartbeat,
            liveness=liveness,
            reconnect=reconnect,
            reconnect_max=reconnect_max,
            offload=offload,
            pool=pool,
        )
        self.delay = delay


app = PPWorker
