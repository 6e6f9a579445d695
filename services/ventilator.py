"""The task ventilator: PUSH bind tcp://127.0.0.1:5557, sends 1..N with random pauses.

PUSH waits (green) until a puller is connected, and the socket's linger lets
the last tasks reach it before the process exits: nothing is lost.
"""

from __future__ import annotations

import random

import gevent

from greenzmq import Service, SocketSpec

from ._common import TASKS


class Ventilator(Service):
    """Sends ``count`` tasks (b"1", b"2", ...) with pauses up to ``pause`` s, then exits."""

    name = "ventilator"
    specs = (SocketSpec("tasks", "PUSH", bind=(TASKS,), linger=5000),)

    def __init__(self, count: int = 5, pause: float = 0.3) -> None:
        super().__init__()
        self.count, self.pause = count, pause

    def on_stop(self) -> None:
        """Stop sending now: a send parked until a puller connects would hold the exit."""
        main = self._main
        if main is not None and not main.dead and main is not gevent.getcurrent():
            main.kill(block=False)

    def run(self) -> None:
        """Send the tasks."""
        sock = self.socks["tasks"]
        tr = self.tracer
        st = tr.for_socket("tasks", "PUSH") if tr is not None and tr.on else None
        for i in range(1, self.count + 1):
            if self.stopping.is_set():
                break
            gevent.sleep(random.random() * self.pause)
            body = str(i).encode()
            sock.send(body)
            if st is not None:
                st.hop("send", [body])
            self.log.info("ventilator.sent", task=i)


def make(count: int = 5, pause: float = 0.3) -> Ventilator:
    """Factory: ``services.ventilator:make(count=100, pause=0)``."""
    return Ventilator(count, pause)


app = Ventilator
