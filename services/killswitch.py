"""The kill switch: PUB bind tcp://127.0.0.1:5558, publishes the kill signal, then exits.

An XPUB, so it can wait until ``expect`` subscribers (the services to stop)
have joined instead of publishing into the void (slow joiner).
"""

from __future__ import annotations

from greenzmq import Service, SocketSpec

from ._common import KILL, kill_main, socket_tracer, wait_for_subscribers, xpub_options


class KillSwitch(Service):
    """Publishes one kill message once ``expect`` subscribers are there (or ``wait`` s passed)."""

    name = "killswitch"
    specs = (SocketSpec("kill", "XPUB", bind=(KILL,), linger=5000, options=xpub_options()),)

    def __init__(self, expect: int = 1, wait: float = 10.0) -> None:
        super().__init__()
        self.expect, self.wait = expect, wait

    def on_stop(self) -> None:
        """Stopped before publishing (SIGTERM while waiting for subscribers): give up."""
        kill_main(self)

    def run(self) -> None:
        """Wait for subscribers, publish ``b"KILL"``."""
        sock = self.socks["kill"]
        seen = wait_for_subscribers(sock, self.expect, self.wait)
        sock.send(b"KILL")
        st = socket_tracer(self, "kill", "XPUB")
        if st is not None:
            st.hop("send", [b"KILL"])
        self.log.info("killswitch.sent", subscribers=seen, expected=self.expect)


def make(expect: int = 1, wait: float = 10.0) -> KillSwitch:
    """Factory: ``services.killswitch:make(expect=7)``."""
    return KillSwitch(expect, wait)


app = KillSwitch
