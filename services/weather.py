"""The weather server: PUB bind tcp://127.0.0.1:5556, publishes N updates, then exits.

The socket is an XPUB (a PUB that also sees subscriptions): it waits until
``expect`` subscribers have joined before publishing, so none of the updates
it claims to deliver is lost to the slow-joiner problem.
"""

from __future__ import annotations

import random

import gevent

from greenzmq import Service, SocketSpec

from ._common import WEATHER, wait_for_subscribers, xpub_options


class Weather(Service):
    """Publishes ``count`` updates to at least ``expect`` subscribers."""

    name = "weather"
    specs = (SocketSpec("updates", "XPUB", bind=(WEATHER,), linger=5000, options=xpub_options()),)

    def __init__(self, count: int = 5, expect: int = 1, pause: float = 0.3, wait: float = 10.0):
        super().__init__()
        self.count, self.expect, self.pause, self.wait = count, expect, pause, wait

    def on_stop(self) -> None:
        """Stop now: waiting for subscribers or pausing between updates holds no work."""
        main = self._main
        if main is not None and not main.dead and main is not gevent.getcurrent():
            main.kill(block=False)

    def run(self) -> None:
        """Wait for the subscribers, then publish."""
        sock = self.socks["updates"]
        seen = wait_for_subscribers(sock, self.expect, self.wait)
        self.log.info("weather.subscribers", seen=seen, expected=self.expect)
        tr = self.tracer
        st = tr.for_socket("updates", "XPUB") if tr is not None and tr.on else None
        for i in range(1, self.count + 1):
            if self.stopping.is_set():
                break
            gevent.sleep(random.random() * self.pause)
            body = str(i).encode()
            sock.send(body)
            if st is not None:
                st.hop("send", [body])
            self.log.info("weather.sent", update=i)


def make(count: int = 5, expect: int = 1, pause: float = 0.3, wait: float = 10.0) -> Weather:
    """Factory: ``services.weather:make(expect=2)``."""
    return Weather(count, expect, pause, wait)


app = Weather
