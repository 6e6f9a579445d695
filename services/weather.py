"""The weather server: PUB bind tcp://127.0.0.1:5556, publishes N updates, then exits.

The socket is an XPUB (a PUB that also sees subscriptions): it waits until
``expect`` subscribers have joined before publishing, so none of the updates
it claims to deliver is lost to the slow-joiner problem.
``services.weather:app(count=5, expect=2)`` sets them (``app`` is the class:
its arguments are the constructor's).
"""

from __future__ import annotations

from greenzmq import Service, SocketSpec

from ._common import WEATHER, kill_main, send_numbered, wait_for_subscribers, xpub_options


class Weather(Service):
    """Publishes ``count`` updates to at least ``expect`` subscribers."""

    name = "weather"
    specs = (SocketSpec("updates", "XPUB", bind=(WEATHER,), linger=5000, options=xpub_options()),)

    def __init__(self, count: int = 5, expect: int = 1, pause: float = 0.3, wait: float = 10.0):
        super().__init__()
        self.count, self.expect, self.pause, self.wait = count, expect, pause, wait

    def on_stop(self) -> None:
        """Stop now: waiting for subscribers or pausing between updates holds no work."""
        kill_main(self)

    def run(self) -> None:
        """Wait for the subscribers, then publish."""
        sock = self.socks["updates"]
        seen = wait_for_subscribers(sock, self.expect, self.wait)
        self.log.info("weather.subscribers", seen=seen, expected=self.expect)
        send_numbered(self, "updates", "XPUB", self.count, self.pause, "weather.sent", "update")


app = Weather
