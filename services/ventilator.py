"""The task ventilator: PUSH bind tcp://127.0.0.1:5557, sends 1..N with random pauses.

PUSH waits (green) until a puller is connected, and the socket's linger lets
the last tasks reach it before the process exits: nothing is lost.
``services.ventilator:app(count=100, pause=0)`` sets the count and the longest
pause (``app`` is the class: its arguments are the constructor's).
"""

from __future__ import annotations

from greenzmq import Service, SocketSpec

from ._common import TASKS, kill_main, send_numbered


class Ventilator(Service):
    """Sends ``count`` tasks (b"1", b"2", ...) with pauses up to ``pause`` s, then exits."""

    name = "ventilator"
    specs = (SocketSpec("tasks", "PUSH", bind=(TASKS,), linger=5000),)

    def __init__(self, count: int = 5, pause: float = 0.3) -> None:
        super().__init__()
        self.count, self.pause = count, pause

    def on_stop(self) -> None:
        """Stop sending now: a send parked until a puller connects would hold the exit."""
        kill_main(self)

    def run(self) -> None:
        """Send the tasks."""
        send_numbered(self, "tasks", "PUSH", self.count, self.pause, "ventilator.sent", "task")


app = Ventilator
