"""The worker side of the heartbeated protocols (PPP, Majordomo): one loop, one socket.

:class:`HeartbeatWorker` owns a DEALER, heartbeats, reconnects on a fresh
socket when its peer goes silent, and runs the handler in its own greenlet;
a protocol subclass says what the frames are (:class:`~greenzmq.patterns.ppp.PPPWorker`,
:class:`~greenzmq.patterns.mdp.MDPWorker`). :class:`HeartbeatWorkerService`
serves ``pool`` of them as a :class:`~greenzmq.core.service.Service`, their
handler calls run inline, in threads or in processes
(``offload``, :mod:`greenzmq.core.offload`).
"""

from __future__ import annotations

import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.pool
import zmq

from ..core.offload import Offload
from ..core.poller import GreenPoller
from ..core.service import Service, kill_spec
from ..core.sockets import Context, Socket, SocketSpec, apply_endpoints
from ..core.stats import SocketCounters
from ..core.tracing import SocketTracer, Tracer, get_logger
from ._send import SENT, recv_bytes, send

__all__ = ["Handler", "HeartbeatWorker", "HeartbeatWorkerService", "Parsed"]

Handler = Callable[[list[bytes]], Sequence[bytes]]
"""A worker's job: request body frames in, reply body frames out."""

# what a worker protocol's parse() returns: (kind, reply envelope, body) or a drop reason
Parsed = tuple[str, list[bytes], list[bytes]]


class HeartbeatWorker:
    """The worker side of a heartbeated protocol (PPP, and MDP in :mod:`greenzmq.patterns.mdp`).

    One greenlet (the one calling :meth:`run`) owns the DEALER socket and
    waits on a :class:`~greenzmq.core.poller.GreenPoller`; the handler runs in a
    second greenlet and hands its reply back through a deque plus
    :meth:`GreenPoller.wake` (rule 1). Subclasses say what the frames are.
    """

    kind = "worker"
    batch = 256  # messages read per wake-up at most, like the queues

    def __init__(
        self,
        ctx: Context,
        spec: SocketSpec,
        handler: Handler,
        *,
        heartbeat: float = 1.0,
        liveness: int = 3,
        reconnect: float = 1.0,
        reconnect_max: float = 32.0,
        sock: Socket | None = None,
        on_socket: Callable[[Socket], None] | None = None,
        on_answer: Callable[[], Any] | None = None,
        tracer: Tracer | None = None,
        counters: SocketCounters | None = None,
    ) -> None:
        if heartbeat <= 0 or liveness < 1:
            raise ValueError("heartbeat must be positive and liveness at least 1")
        self.ctx, self.spec, self.handler = ctx, spec, handler
        self.heartbeat, self.liveness = heartbeat, liveness
        self.reconnect, self.reconnect_max = reconnect, reconnect_max
        self.sock = sock
        self.on_socket = on_socket
        self.on_answer = on_answer
        #: the socket's message counters (the service's Stats), counted per batch
        self.counters = counters if counters is not None else SocketCounters()
        self.tracer = tracer or Tracer()
        self.trace: SocketTracer = self.tracer.for_socket(spec.name, "DEALER")
        self.log = get_logger(socket=spec.name, role=self.kind)
        self.poller = GreenPoller()
        self.answered = 0
        self.reconnects = 0
        self._stopping = False
        self._acked = False
        self._wake = gevent.event.Event()
        # (envelope, frames, the request's hop key: the reply's reply_to when traced)
        self._done: deque[tuple[list[bytes], list[bytes], str | None]] = deque()
        self._backlog: deque[tuple[list[bytes], list[bytes], str | None]] = deque()
        self._busy: gevent.Greenlet[..., Any] | None = None
        self._group = gevent.pool.Group()
        self._heard = time.monotonic()
        self._alive = False  # heard the peer since the last reconnect: backoff starts over

    # -- protocol: subclasses define the frames ----------------------------
    def ready_msg(self) -> list[bytes]:
        """The first message on a fresh socket."""
        raise NotImplementedError

    def heartbeat_msg(self) -> list[bytes]:
        """The heartbeat."""
        raise NotImplementedError

    def disconnect_msg(self) -> list[bytes] | None:
        """What to send when leaving (None: nothing)."""
        return None

    def reply_msg(self, envelope: list[bytes], body: list[bytes]) -> list[bytes]:
        """The reply to a request that came with ``envelope``."""
        raise NotImplementedError

    def parse(self, frames: list[bytes]) -> Parsed | str:
        """``(kind, envelope, body)`` (request/heartbeat/disconnect/ack) or a drop reason."""
        raise NotImplementedError

    # -- control -----------------------------------------------------------
    def stop(self) -> None:
        """Finish the request in hand, say goodbye, return from run(). Any greenlet may call it."""
        self._stopping = True
        self._wake.set()
        self.poller.wake()

    @property
    def busy(self) -> bool:
        """True while a request is being handled."""
        return self._busy is not None

    def _send(self, msg: list[bytes]) -> bool:
        assert self.sock is not None
        if send(self.sock.raw, msg) != SENT:
            return False  # no peer (queue gone, not yet reconnected)
        self.counters.add_out(1)
        return True

    def _close(self) -> None:
        if self.sock is not None and not self.sock.closed:
            if self.sock in dict(self.poller.sockets):
                self.poller.unregister(self.sock)
            self.sock.close(linger=0)

    def _connect(self) -> None:
        self._close()
        self.sock = self.ctx.build(self.spec)
        self._attach()

    def _attach(self) -> None:
        assert self.sock is not None
        self.sock.claim()
        self.poller.register(self.sock, zmq.POLLIN)
        if self.on_socket is not None:
            self.on_socket(self.sock)
        self._heard = time.monotonic()
        # a fresh DEALER queues the message until the TCP connection is up
        self._send(self.ready_msg())

    def _work(self, envelope: list[bytes], body: list[bytes], key: str | None) -> None:
        try:
            reply = [bytes(f) for f in self.handler(body)]
        except Exception as e:
            # the protocol's error reply; the worker keeps serving
            self.log.error(
                "worker.handler_failed",
                error=repr(e),
                # a pool process's traceback comes along as the __cause__
                traceback="".join(traceback.format_exception(e)),
            )
            reply = [b"error: " + type(e).__name__.encode()]
        self._done.append((envelope, reply, key))
        self.poller.wake()

    def _start(self, envelope: list[bytes], body: list[bytes], key: str | None) -> None:
        if self._busy is not None:
            self._backlog.append((envelope, body, key))  # only after a queue restart
            return
        self._busy = self._group.spawn(self._work, envelope, body, key)

    def _flush(self) -> None:
        while self._done:
            envelope, reply, key = self._done.popleft()
            msg = self.reply_msg(envelope, reply)
            if self._send(msg):
                self.answered += 1
                if self.on_answer is not None:
                    self.on_answer()
                if self.trace.on:
                    self.trace.hop("send", msg, reply_to=key)
            else:
                self.trace.drop(msg, "queue not reachable")
            self._busy = None
            if self._backlog:
                self._start(*self._backlog.popleft())

    def _drain(self) -> None:
        assert self.sock is not None
        raw = self.sock.raw
        n = 0
        try:
            while n < self.batch:
                frames = recv_bytes(raw)
                n += 1
                self._take(frames)
        except zmq.Again:
            pass
        self.counters.add_in(n)

    def _take(self, frames: list[bytes]) -> None:
        self._heard = time.monotonic()
        self._alive = True
        parsed = self.parse(frames)
        if isinstance(parsed, str):
            self.trace.drop(frames, parsed)
            self.counters.drop(parsed)
            return
        kind, envelope, body = parsed
        if kind == "request":
            key = self.trace.hop("recv", frames) if self.trace.on else None
            self._start(envelope, body, key)
        elif kind == "ack":
            self._acked = True
        elif kind == "disconnect":
            # the broker forgot us (MDP): start again on a fresh socket
            self.log.info("worker.disconnected_by_peer")
            self._heard = 0.0

    def run(self) -> None:
        """Serve until :meth:`stop`; in-flight work is answered before this returns."""
        if self.sock is None:
            self._connect()
        else:
            self._attach()
        backoff = self.reconnect
        hb, patience = self.heartbeat, self.heartbeat * self.liveness
        next_hb = time.monotonic() + hb
        leaving_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stopping and self._busy is None and not self._done:
                    if leaving_since is None:
                        bye = self.disconnect_msg()
                        if bye is None or not self._send(bye):
                            break
                        leaving_since = now
                    elif self._acked or now - leaving_since >= patience:
                        break
                wait = next_hb - now
                if leaving_since is not None:
                    wait = min(wait, leaving_since + patience - now)
                self.poller.poll(max(0, int(wait * 1000)))
                self._flush()
                self._drain()
                self._flush()
                now = time.monotonic()
                if now >= next_hb:
                    self._send(self.heartbeat_msg())
                    next_hb = now + hb
                if now - self._heard > patience and leaving_since is None:
                    if self._stopping and self._busy is None:
                        break
                    self.log.warning(
                        "worker.peer_lost",
                        silent_for=round(now - self._heard, 3),
                        reconnect_in=backoff,
                    )
                    # Close the old socket now, not after the backoff: left open, it
                    # reconnects to a restarted queue meanwhile and delivers its
                    # queued READY and heartbeats there (a ghost worker, rule 9).
                    self._close()
                    self._wake.clear()
                    if not self._stopping:
                        self._wake.wait(backoff)
                    backoff = min(backoff * 2, self.reconnect_max)
                    self.reconnects += 1
                    self._connect()
                    next_hb = time.monotonic() + hb
                elif self._alive:
                    self._alive = False
                    backoff = self.reconnect
        finally:
            self._group.kill(block=True)
            if self.sock is not None:
                self.poller.close_watchers()
        self.log.info("worker.done", answered=self.answered, reconnects=self.reconnects)


class HeartbeatWorkerService(Service):
    """A service around ``pool`` heartbeat workers: their DEALER sockets and ``kill``.

    A protocol's service names its ``worker_class`` and its defaults
    (``default_endpoint``, ``default_socket``); ``endpoint`` and ``socket``
    override them.

    ``offload`` says where the handler runs (:class:`~greenzmq.core.offload.Offload`):
    ``None`` in the worker's greenlet (handlers that wait green), ``"thread"``
    in a thread pool (blocking calls, CPU work: the hub keeps heartbeating),
    ``"process"`` in a process pool (CPU-bound Python in parallel). ``pool``
    requests are handled at once: that many protocol workers (a socket and
    heartbeats each; the queue sees ``pool`` workers) share ``pool`` threads
    or processes.
    """

    worker_class: type[HeartbeatWorker]
    default_endpoint = ""
    default_socket = "backend"

    def __init__(
        self,
        handler: Handler,
        *,
        endpoint: str | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        reconnect: float = 1.0,
        reconnect_max: float = 32.0,
        options: Mapping[int, Any] | None = None,
        name: str | None = None,
        socket: str | None = None,
        offload: str | None = None,
        pool: int = 1,
    ) -> None:
        endpoint = endpoint or self.default_endpoint
        socket = socket or self.default_socket
        super().__init__(
            name=name,
            specs=(
                SocketSpec(socket, "DEALER", connect=(endpoint,), options=dict(options or {})),
                kill_spec(),
            ),
        )
        self.socket_name = socket
        self.handler = handler
        # an inline handler that holds the hub past one heartbeat interval is logged
        self.offload = Offload(handler, offload, pool, warn_after=heartbeat)
        self.pool = pool
        self.worker_args: dict[str, Any] = {
            "heartbeat": heartbeat,
            "liveness": liveness,
            "reconnect": reconnect,
            "reconnect_max": reconnect_max,
        }
        self.worker: HeartbeatWorker | None = None
        self.workers: list[HeartbeatWorker] = []
        self._resolved: dict[str, SocketSpec] = {}

    def open(self, endpoints: Mapping[str, str] | None = None) -> None:
        """Keep the resolved specs: a reconnect builds a fresh socket from them."""
        self._resolved = {s.name: s for s in apply_endpoints(self.specs, endpoints or {})}
        super().open(endpoints)

    def make_worker(self, slot: int = 0, **extra: Any) -> HeartbeatWorker:
        """The worker object for ``slot`` (0: the service's socket; others make their own).

        ``extra`` goes to the worker class (MDP: service, version).
        """
        assert self.ctx is not None
        name = self.socket_name
        key = name if slot == 0 else f"{name}.{slot}"

        def on_socket(sock: Socket) -> None:
            self.socks[key] = sock  # close() closes the current socket

        return self.worker_class(
            self.ctx,
            self._resolved[name],
            self.offload,
            sock=self.socks[name] if slot == 0 else None,
            on_socket=on_socket,
            on_answer=self.request_done,
            counters=self.stats.socket(name),
            tracer=self.tracer,
            **self.worker_args,
            **extra,
        )

    def on_stop(self) -> None:
        """Let the workers finish their requests and leave."""
        for w in self.workers:
            w.stop()

    def run(self) -> None:
        """Start the offload pool, serve until stopped, end the pool."""
        self.offload.start()
        try:
            self.workers = [self.make_worker(slot) for slot in range(self.pool)]
            self.worker = self.workers[0]
            if self.stopping.is_set():
                self.on_stop()
            others = [
                self.spawn(w.run, name=f"worker-{slot}")
                for slot, w in enumerate(self.workers)
                if slot
            ]
            self.worker.run()
            gevent.joinall(others)
        finally:
            self.offload.close()
