"""The kill switch: PUB bind tcp://127.0.0.1:5558, publishes the kill signal, then exits.

An XPUB, so it sees its subscribers (the services to stop) come and go
instead of publishing into the void (slow joiner).

With no arguments (``services.killswitch:app``) it stops every service that
is subscribed, also those whose subscriptions arrive a moment later (each
SUB reconnects on its own timer): it waits up to ``wait`` s for a first
subscriber, publishes, and publishes again to every subscriber that joins
after; it exits once ``settle`` s passed without a new subscriber and every
subscriber has left (XPUB_VERBOSER: a disconnecting subscriber is an
unsubscribe message), or ``wait`` s without a new subscriber if some never
leave. Nobody subscribed within ``wait`` s: it logs ``killswitch.nobody``
and exits 0 (nothing to stop).

``services.killswitch:app(expect=N)`` is the old contract: wait (up to
``wait`` s) for N subscribers, publish once, exit. (``app`` is the class: its
arguments, ``app(settle=2.0)`` too, are the constructor's.)
"""

from __future__ import annotations

import time

import gevent
import zmq

from greenzmq import Service, SocketSpec

from ._common import KILL, kill_main, socket_tracer, wait_for_subscribers, xpub_options


def _options() -> dict[int, int]:
    # VERBOSER: every subscribe and every unsubscribe (a subscriber leaving) is passed on
    return {**xpub_options(), zmq.XPUB_VERBOSER: 1}


class KillSwitch(Service):
    """Publishes the kill message to every subscriber (or once ``expect`` are there)."""

    name = "killswitch"
    specs = (SocketSpec("kill", "XPUB", bind=(KILL,), linger=5000, options=_options()),)

    def __init__(self, expect: int | None = None, wait: float = 10.0, settle: float = 1.0) -> None:
        super().__init__()
        self.expect, self.wait, self.settle = expect, wait, settle
        self.sends = 0

    def on_stop(self) -> None:
        """Stopped before publishing (SIGTERM while waiting for subscribers): give up."""
        kill_main(self)

    def _publish(self) -> None:
        self.socks["kill"].send(b"KILL")
        self.sends += 1
        st = socket_tracer(self, "kill", "XPUB")
        if st is not None:
            st.hop("send", [b"KILL"])

    def _recv(self, timeout: float) -> bytes | None:
        """One subscription message, or None after ``timeout`` s."""
        with gevent.Timeout(max(timeout, 0.0), False):  # type: ignore[arg-type]  # False: quiet
            return bytes(self.socks["kill"].recv())
        return None

    def _stop_all(self) -> int:
        """Publish to everyone subscribed and to late joiners; how many subscribed."""
        seen = live = 0
        t0 = time.monotonic()
        while not seen:  # the first subscriber, up to ``wait`` s
            msg = self._recv(self.wait - (time.monotonic() - t0))
            if msg is None:
                self.log.warning("killswitch.nobody", waited=self.wait)
                return 0
            if msg[:1] == b"\x01":
                seen = live = 1
        self._publish()
        last = time.monotonic()  # of the last new subscriber
        while True:
            quiet = time.monotonic() - last
            window = self.settle if live <= 0 else max(self.wait, self.settle)
            if quiet >= window:
                break
            msg = self._recv(window - quiet)
            if msg is None:
                continue
            if msg[:1] == b"\x01":
                seen, live, last = seen + 1, live + 1, time.monotonic()
                self._publish()  # a late joiner: it gets its own kill
            elif msg[:1] == b"\x00":
                live -= 1
        if live > 0:
            self.log.warning("killswitch.still_subscribed", subscribers=live)
        return seen

    def run(self) -> None:
        """Publish ``b"KILL"``: to all (default), or once ``expect`` subscribers are there."""
        if self.expect is None:
            seen = self._stop_all()
        else:
            seen = wait_for_subscribers(self.socks["kill"], self.expect, self.wait)
            self._publish()
        self.log.info("killswitch.sent", subscribers=seen, expected=self.expect, sends=self.sends)


app = KillSwitch
