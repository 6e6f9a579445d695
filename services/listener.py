"""The listener (tutorial case 1): tasks PULL, weather SUB and the kill switch, one loop.

``app`` reads through one GreenPoller (the poller way); ``tasks_app`` through
one greenlet per socket feeding a queue (the tasks way). Both feed the same
loop. On stop it logs ``listener.done`` with everything it received.
"""

from __future__ import annotations

from greenzmq import PollerListener, Readers, Service, SocketSpec, kill_spec

from ._common import KILL, TASKS, WEATHER


class Listener(Service):
    """Receives tasks and weather updates until the kill switch fires."""

    specs = (
        SocketSpec("tasks", "PULL", connect=(TASKS,)),
        SocketSpec("weather", "SUB", connect=(WEATHER,)),
        kill_spec(KILL),
    )

    def __init__(self, mode: str = "poller") -> None:
        super().__init__(name="listener" if mode == "poller" else "listener-tasks")
        self.mode = mode
        self.received: dict[str, list[str]] = {"tasks": [], "weather": []}
        self.mux: PollerListener | Readers | None = None

    def setup(self) -> None:
        """Build the mux over the tasks and weather sockets."""
        socks = [self.socks["tasks"], self.socks["weather"]]
        if self.mode == "poller":
            self.mux = PollerListener(socks, tracer=self.tracer)
        else:
            self.mux = Readers(socks, tracer=self.tracer, group=self.group)

    def on_stop(self) -> None:
        """Stop taking messages; what was read is still handled."""
        if self.mux is not None:
            self.mux.stop()

    def run(self) -> None:
        """Handle every message, then report."""
        assert self.mux is not None
        for name, frames in self.mux:
            body = b"".join(frames).decode(errors="replace")
            self.received[name].append(body)
            self.log.info("listener.received", source=name, body=body)
        self.log.info(
            "listener.done", tasks=self.received["tasks"], weather=self.received["weather"]
        )


app = Listener
tasks_app = Listener("tasks")
