"""Small apps for the launcher tests (run by ``greenzmq tests.launcher_apps:NAME``)."""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from typing import Any

import gevent
import gevent.pool
import zmq

from greenzmq import GreenPoller, Service, SocketSpec, kill_spec


class Echo(Service):
    """A DEALER worker behind the tutorial broker; each request in its own greenlet.

    Bodies: ``slow:S[:ID]`` replies after S seconds (green sleep), ``block:S`` blocks
    the hub for S seconds (time.sleep), anything else is echoed at once. One
    loop owns the socket (GreenPoller wait, raw NOBLOCK moves); handlers hand
    replies back through a deque and ``wake()``. A graceful stop stops reading
    and waits for every accepted request to be answered.
    """

    name = "echo"
    specs = (SocketSpec("backend", "DEALER", connect=("tcp://127.0.0.1:5561",)), kill_spec())

    def __init__(self) -> None:
        super().__init__()
        self.handlers = gevent.pool.Group()
        self.replies: deque[list[bytes]] = deque()
        self.poller = GreenPoller()

    def on_stop(self) -> None:
        """Wake the loop: it stops taking requests."""
        self.poller.wake()

    def _handle(self, frames: list[bytes]) -> None:
        body = frames[-1]
        if body.startswith(b"slow:"):
            gevent.sleep(float(body.split(b":")[1]))
        elif body.startswith(b"block:"):
            time.sleep(float(body.split(b":")[1]))  # blocks the hub on purpose
        self.replies.append([*frames[:-1], b"ok:" + body])
        self.poller.wake()

    def _flush(self, raw: Any) -> None:
        while self.replies:
            raw.send_multipart(self.replies.popleft())
            self.request_done()

    def run(self) -> None:
        """Read requests until stopped, then answer what is in flight."""
        sock = self.socks["backend"]
        sock.claim()
        raw = sock.raw
        self.poller.register(sock, zmq.POLLIN)
        while not self.stopping.is_set():
            self.poller.poll()
            while not self.stopping.is_set():
                try:
                    frames = raw.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.log.info("echo.accepted", body=frames[-1].decode(errors="replace"))
                self.handlers.spawn(self._handle, frames)
            self._flush(raw)
        self.poller.close_watchers()
        while self.handlers or self.replies:  # answer what is in flight
            self._flush(raw)
            gevent.sleep(0.01)


class BootFails(Service):
    """Fails in setup(), i.e. while the worker boots (after the pre-fork check)."""

    name = "bootfails"

    def setup(self) -> None:
        """Raise."""
        raise RuntimeError("boom in setup")

    def run(self) -> None:
        """Never reached."""


class Crasher(Service):
    """Boots, then its run() raises at once: a crash loop."""

    name = "crasher"

    def run(self) -> None:
        """Raise."""
        raise RuntimeError("crash after boot")


class Idle(Service):
    """Does nothing until stopped (no sockets)."""

    name = "idle"

    def run(self) -> None:
        """Wait for the stop."""
        self.stopping.wait()


class GatedBoot(Idle):
    """Idles; while the file named by ``$GATE`` exists, setup() waits (green) before serving.

    The test holds a worker inside its boot window (``gate.waiting`` logged with
    its pid, beats still flowing) for as long as the file exists.
    """

    name = "gated"

    def setup(self) -> None:
        """Wait while the gate file exists."""
        gate = os.environ.get("GATE", "")
        if gate and os.path.exists(gate):
            self.log.info("gate.waiting", gate=gate)
            while os.path.exists(gate) and not self.stopping.is_set():
                gevent.sleep(0.02)


class Orphaner(Service):
    """Leaves an orphan (``sleep 1`` whose parent shell has exited) behind, then idles.

    Under PID 1 the orphan is re-parented to the master, which must reap it.
    """

    name = "orphaner"

    def setup(self) -> None:
        """Start a shell that backgrounds a sleep and exits at once."""
        subprocess.run(["sh", "-c", "sleep 1 &"], check=True)

    def run(self) -> None:
        """Wait for the stop."""
        self.stopping.wait()


echo = Echo
orphaner = Orphaner
bootfails = BootFails
crasher = Crasher
idle = Idle
gated = GatedBoot
