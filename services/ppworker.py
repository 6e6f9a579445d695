"""A Paranoid Pirate worker: backend DEALER connect tcp://127.0.0.1:5556, plus the kill switch.

Squares integers like the tutorial's worker (an error reply for anything
else). ``services.ppworker:app(heartbeat=0.2, delay=0.5)`` sets the
heartbeat interval and an artificial time per request (seconds); ``app`` is
the class, its arguments are the constructor's.
"""

from __future__ import annotations

import gevent

from greenzmq.patterns.ppp import PPPWorkerService

from .worker import answer


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
    ) -> None:
        super().__init__(
            self.square,
            heartbeat=heartbeat,
            liveness=liveness,
            reconnect=reconnect,
            reconnect_max=reconnect_max,
        )
        self.delay = delay

    def square(self, body: list[bytes]) -> list[bytes]:
        """``[b"7"]`` -> ``[b"49"]`` after ``delay`` seconds."""
        if self.delay:
            gevent.sleep(self.delay)
        return answer(body)


app = PPWorker
