"""The worker (tutorial case 2): backend REP connect tcp://127.0.0.1:5561, plus the kill switch.

Replies ``j**2`` to an integer ``j``; to any other body it replies an error
message and keeps serving. ``app`` waits on a GreenPoller; ``tasks_app`` gives
the REP socket its own greenlet. Either way a request being answered when the
stop comes is answered before the worker exits. ``services.worker:app(offload="thread")``
(or ``"process"``) computes the answer off the hub (:mod:`greenzmq.core.offload`).
"""

from __future__ import annotations

from typing import Any

import gevent

from greenzmq import PollerListener, Service, SocketSpec, kill_spec
from greenzmq.core.offload import Offload
from greenzmq.core.tracing import SocketTracer

from ._common import BACKEND, KILL, socket_tracer


def answer(body: list[bytes]) -> list[bytes]:
    """The reply to one request body: the square, or an error message.

    Python refuses to convert integers of over 4,300 digits to and from text
    (``sys.get_int_max_str_digits``, CVE-2020-10735): a longer body, or a
    square too long to print, gets an error reply instead of killing the worker.
    """
    text = b"".join(body)
    try:
        j = int(text)
    except ValueError:
        return [b"error: not an integer: " + text[:64]]
    try:
        return [str(j * j).encode()]
    except ValueError:
        return [b"error: square too long: %d digits" % len(text)]


class Worker(Service):
    """Squares integers from the broker's backend until stopped."""

    specs = (SocketSpec("backend", "REP", connect=(BACKEND,)), kill_spec(KILL))

    def __init__(self, mode: str = "poller", offload: str | None = None) -> None:
        super().__init__(name="worker" if mode == "poller" else "worker-tasks")
        self.mode = mode
        # REP answers one request at a time: one thread or process is enough
        self.offload = Offload(answer, offload, 1)
        self.answered = 0
        self.mux: PollerListener | None = None
        self._idle = True
        self._loop: gevent.Greenlet[..., Any] | None = None
        self._st: SocketTracer | None = None

    def setup(self) -> None:
        """The hop tracer (made once, not per request); poller mode: a listener over REP."""
        self._st = socket_tracer(self, "backend", "REP")
        self.offload.start()  # here, in the serving process (after any fork)
        if self.mode == "poller":
            self.mux = PollerListener([self.socks["backend"]])
            self.stats.watch_mux(self.mux)  # read when a snapshot is taken: free otherwise

    def on_stop(self) -> None:
        """Stop taking requests; one being answered is finished first."""
        if self.mux is not None:
            self.mux.stop()
        elif self._loop is not None and self._idle:
            self._loop.kill(block=False)  # parked in recv: nothing in flight

    def _reply(self, frames: list[bytes]) -> None:
        sock = self.socks["backend"]
        st = self._st
        key = st.hop("recv", frames) if st is not None else None
        reply = self.offload(frames)
        sock.send_multipart(reply)
        if key is not None and st is not None:
            st.hop("send", reply, reply_to=key)
        self.answered += 1
        self.request_done()

    def _serve_backend(self) -> None:
        sock = self.socks["backend"]
        while not self.stopping.is_set():
            self._idle = True
            frames = sock.recv_multipart()
            self._idle = False
            self._reply(frames)

    def run(self) -> None:
        """Answer requests until stopped."""
        try:
            if self.mux is not None:
                for _, frames in self.mux:
                    self._reply(frames)
            else:
                self._loop = self.spawn(self._serve_backend, name="backend")
                self._loop.join()
        finally:
            self.offload.close()
        self.log.info("worker.done", answered=self.answered)


app = Worker
tasks_app = Worker("tasks")
