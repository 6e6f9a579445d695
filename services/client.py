"""The client (tutorial case 2): frontend REQ connect tcp://127.0.0.1:5560.

Sends 1..i and checks each reply is the square; exits 0 when all are right,
1 (with the wrong reply logged) otherwise, or when a reply takes longer than
``timeout`` seconds. ``services.client:app(i=5)`` sets them (``app`` is the
class: its arguments are the constructor's).
"""

from __future__ import annotations

import gevent

from greenzmq import RequestTimeout, Service, SocketSpec

from ._common import FRONTEND, kill_main, socket_tracer


class Client(Service):
    """Sends ``1..i`` through the broker and checks every square."""

    name = "client"
    specs = (SocketSpec("frontend", "REQ", connect=(FRONTEND,)),)

    def __init__(self, i: int = 3, timeout: float = 10.0) -> None:
        super().__init__(name=f"client-{i}")
        self.i, self.timeout = i, timeout
        self.checked = 0

    def on_stop(self) -> None:
        """Stop now: a request still waiting for its reply is abandoned."""
        kill_main(self)

    def run(self) -> None:
        """Send, receive, check."""
        sock = self.socks["frontend"]
        st = socket_tracer(self, "frontend", "REQ")
        for j in range(1, self.i + 1):
            if self.stopping.is_set():
                break
            req = [str(j).encode()]
            sock.send_multipart(req)
            key = st.hop("send", req) if st else None
            try:
                with gevent.Timeout(self.timeout):
                    reply = sock.recv_multipart()
            except gevent.Timeout:
                raise RequestTimeout(f"no reply to {j} within {self.timeout} s") from None
            if st:
                st.hop("recv", reply, reply_to=key)
            if reply != [str(j * j).encode()]:
                raise ValueError(f"client {self.i}: {j} -> {reply!r}, expected {j * j}")
            self.checked += 1
        self.log.info("client.done", i=self.i, checked=self.checked)


app = Client
