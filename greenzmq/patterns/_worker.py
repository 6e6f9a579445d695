"""The worker side of the heartbeated protocols (PPP, Majordomo): one loop, a socket per broker.

:class:`HeartbeatWorker` owns one DEALER per broker it is given (a spec with
several connect endpoints registers with each), heartbeats each, reconnects
one on a fresh socket when its broker goes silent (the others keep serving),
sends each reply back through the broker that sent the request, and runs the
handler in its own greenlet; a protocol subclass says what the frames are
(:class:`~greenzmq.patterns.ppp.PPPWorker`, :class:`~greenzmq.patterns.mdp.MDPWorker`).
:class:`HeartbeatWorkerService` serves ``pool`` of them as a
:class:`~greenzmq.core.service.Service`, their handler calls run inline, in
threads or in processes (``offload``, :mod:`greenzmq.core.offload`).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent
import gevent.pool
import zmq

from ..core.endpoints import EndpointMap, Endpoints, endpoint_list
from ..core.offload import Offload
from ..core.poller import GreenPoller
from ..core.service import Service, kill_spec
from ..core.sockets import Context, Socket, SocketSpec, apply_endpoints
from ..core.stats import SocketCounters
from ..core.tracing import SocketTracer, Tracer, body_key, get_logger
from ._send import SENT, recv_bytes, send

__all__ = ["Handler", "HeartbeatWorker", "HeartbeatWorkerService", "Parsed"]

Handler = Callable[[list[bytes]], Sequence[bytes]]
"""A worker's job: request body frames in, reply body frames out."""

# what a worker protocol's parse() returns: (kind, reply envelope, body) or a drop reason
Parsed = tuple[str, list[bytes], list[bytes]]


class _Link:
    """One broker: its endpoint, its current socket and its heartbeat clock."""

    def __init__(self, index: int, spec: SocketSpec, reconnect: float) -> None:
        self.index = index
        self.spec = spec  # connects to this broker only
        self.endpoint = spec.connect[0] if spec.connect else "?"
        self.sock: Socket | None = None
        self.heard = time.monotonic()
        self.next_hb = 0.0
        self.backoff = reconnect
        self.retry_at = 0.0  # while sock is None: when to open a fresh one
        self.alive = False  # heard since the last reconnect: backoff starts over
        self.acked = False  # leaving: the broker acknowledged our DISCONNECT


class _Routed(list[bytes]):
    """A reply envelope that remembers the broker link its request came through.

    It travels through the handler code as the plain envelope list, so the
    reply goes back to the broker holding that request (the others never
    heard of it).
    """

    link: _Link


class HeartbeatWorker:
    """The worker side of a heartbeated protocol (PPP, and MDP in :mod:`greenzmq.patterns.mdp`).

    One greenlet (the one calling :meth:`run`) owns the DEALER sockets, one
    per endpoint in ``spec.connect`` (one per broker), and waits on a
    :class:`~greenzmq.core.poller.GreenPoller`; the handler runs in a second
    greenlet and hands its reply back through a deque plus
    :meth:`GreenPoller.wake` (rule 1). Each broker link heartbeats, times out
    and reconnects on its own. ``sock`` (already built, e.g. by the service)
    is used for the first endpoint. Subclasses say what the frames are.
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
        eps = list(spec.connect) or list(spec.bind)
        # one spec per broker: each gets its own socket (a DEALER connected to
        # all would round-robin requests' replies and heartbeats across them)
        self.links = [
            _Link(i, dataclasses.replace(spec, connect=(ep,)) if spec.connect else spec, reconnect)
            for i, ep in enumerate(eps or ["?"])
        ]
        self.links[0].sock = sock
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
        # (envelope, frames, the request's hop key: the reply's reply_to when traced)
        self._done: deque[tuple[list[bytes], list[bytes], str | None]] = deque()
        self._backlog: deque[tuple[list[bytes], list[bytes], str | None]] = deque()
        self._busy: gevent.Greenlet[..., Any] | None = None
        self._group = gevent.pool.Group()

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
        self.poller.wake()

    @property
    def busy(self) -> bool:
        """True while a request is being handled."""
        return self._busy is not None

    @property
    def sock(self) -> Socket | None:
        """The first broker's current socket (None while it reconnects)."""
        return self.links[0].sock

    def _send(self, msg: list[bytes], link: _Link | None = None) -> bool:
        sock = (link or self.links[0]).sock
        if sock is None or send(sock.raw, msg) != SENT:
            return False  # no peer (queue gone, not yet reconnected)
        self.counters.add_out(1)
        return True

    def _close(self, link: _Link) -> None:
        sock, link.sock = link.sock, None
        if sock is not None and not sock.closed:
            if sock in dict(self.poller.sockets):
                self.poller.unregister(sock)
            sock.close(linger=0)

    def _connect(self, link: _Link) -> None:
        self._close(link)
        link.sock = self.ctx.build(link.spec)
        self._attach(link)

    def _attach(self, link: _Link) -> None:
        sock = link.sock
        assert sock is not None
        sock.claim()
        self.poller.register(sock, zmq.POLLIN)
        if self.on_socket is not None and link.index == 0:
            self.on_socket(sock)  # the service's socket: the first broker's
        link.heard = time.monotonic()
        link.next_hb = link.heard + self.heartbeat
        # a fresh DEALER queues the message until the TCP connection is up
        self._send(self.ready_msg(), link)

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
            if self._send(msg, getattr(envelope, "link", None)):
                self.answered += 1
                if self.on_answer is not None:
                    self.on_answer()
                if self.trace.on:
                    # keyed over the body: the broker's frames around it differ at every hop
                    self.trace.hop("send", msg, key=body_key(reply), reply_to=key)
            else:
                self.trace.drop(msg, "queue not reachable")
            self._busy = None
            if self._backlog:
                self._start(*self._backlog.popleft())

    def _drain(self, link: _Link) -> None:
        if link.sock is None:
            return
        raw = link.sock.raw
        n = 0
        try:
            while n < self.batch:
                frames = recv_bytes(raw)
                n += 1
                self._take(frames, link)
        except zmq.Again:
            pass
        self.counters.add_in(n)

    def _take(self, frames: list[bytes], link: _Link) -> None:
        link.heard = time.monotonic()
        link.alive = True
        parsed = self.parse(frames)
        if isinstance(parsed, str):
            self.trace.drop(frames, parsed)
            self.counters.drop(parsed)
            return
        kind, envelope, body = parsed
        if kind == "request":
            key = self.trace.hop("recv", frames, key=body_key(body)) if self.trace.on else None
            routed = _Routed(envelope)
            routed.link = link
            self._start(routed, body, key)
        elif kind == "ack":
            link.acked = True
        elif kind == "disconnect":
            # the broker forgot us (MDP): start again on a fresh socket
            self.log.info("worker.disconnected_by_peer", endpoint=link.endpoint)
            link.heard = 0.0

    def run(self) -> None:
        """Serve until :meth:`stop`; in-flight work is answered before this returns."""
        for link in self.links:
            if link.sock is None:
                self._connect(link)
            else:
                self._attach(link)
        patience = self.heartbeat * self.liveness
        leaving_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stopping and self._busy is None and not self._done:
                    if leaving_since is None:
                        if not self._say_goodbye():
                            break
                        leaving_since = now
                    elif all(k.acked for k in self.links) or now - leaving_since >= patience:
                        break
                wait = min(self._next_due(k, patience) for k in self.links) - now
                if leaving_since is not None:
                    wait = min(wait, leaving_since + patience - now)
                self.poller.poll(max(0, int(wait * 1000)))
                self._flush()
                for link in self.links:
                    self._drain(link)
                self._flush()
                now = time.monotonic()
                for link in self.links:
                    self._tend(link, now, leaving_since is not None)
        finally:
            self._group.kill(block=True)
            self.poller.close_watchers()
            for link in self.links[1:]:
                # the first socket is the service's (it closes it); the others
                # linger as it would, so a reply sent just now still leaves
                if link.sock is not None:
                    link.sock.close(linger=link.spec.effective_linger)
        self.log.info("worker.done", answered=self.answered, reconnects=self.reconnects)

    def _say_goodbye(self) -> bool:
        """Send DISCONNECT to every connected broker; False if there is nobody to wait for."""
        bye = self.disconnect_msg()
        waiting = False
        for link in self.links:
            link.acked = bye is None or link.sock is None or not self._send(bye, link)
            waiting = waiting or not link.acked
        return waiting

    def _next_due(self, link: _Link, patience: float) -> float:
        """When ``link`` needs the loop next: a heartbeat, its expiry, or its reconnect."""
        if link.sock is None:
            return link.retry_at if not self._stopping else time.monotonic() + patience
        return min(link.next_hb, link.heard + patience + 0.001)

    def _tend(self, link: _Link, now: float, leaving: bool) -> None:
        """Heartbeat ``link``, give it up when silent, reopen it when its backoff is over."""
        if link.sock is None:
            if not self._stopping and now >= link.retry_at:
                self.reconnects += 1
                self._connect(link)
            return
        if now >= link.next_hb:
            self._send(self.heartbeat_msg(), link)
            link.next_hb = now + self.heartbeat
        silent = now - link.heard
        if silent > self.heartbeat * self.liveness and not leaving:
            if self._stopping and self._busy is None:
                self._close(link)
                return
            self.log.warning(
                "worker.peer_lost",
                endpoint=link.endpoint,
                silent_for=round(silent, 3),
                reconnect_in=link.backoff,
            )
            # Close the old socket now, not after the backoff: left open, it
            # reconnects to a restarted queue meanwhile and delivers its
            # queued READY and heartbeats there (a ghost worker, rule 9).
            self._close(link)
            link.retry_at = now + link.backoff
            link.backoff = min(link.backoff * 2, self.reconnect_max)
        elif link.alive:
            link.alive = False
            link.backoff = self.reconnect


class HeartbeatWorkerService(Service):
    """A service around ``pool`` heartbeat workers: their DEALER sockets and ``kill``.

    A protocol's service names its ``worker_class`` and its defaults
    (``default_endpoint``, ``default_socket``); ``endpoint`` (one address or
    a list: one per broker) and ``socket`` override them, and so does
    ``--endpoint NAME=ADDR`` given once per broker. Each worker registers
    with every broker.

    ``offload`` says where the handler runs (:class:`~greenzmq.core.offload.Offload`):
    ``None`` in the worker's greenlet (handlers that wait green), ``"thread"``
    in a thread pool (blocking calls, CPU work: the hub keeps heartbeating),
    ``"process"`` in a process pool (CPU-bound Python in parallel). ``pool``
    requests are handled at once: that many protocol workers (sockets and
    heartbeats each; a queue sees ``pool`` workers) share ``pool`` threads
    or processes.
    """

    worker_class: type[HeartbeatWorker]
    default_endpoint = ""
    default_socket = "backend"

    def __init__(
        self,
        handler: Handler,
        *,
        endpoint: Endpoints | None = None,
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
        endpoints = endpoint_list(endpoint or self.default_endpoint)
        socket = socket or self.default_socket
        super().__init__(
            name=name,
            specs=(
                SocketSpec(socket, "DEALER", connect=endpoints, options=dict(options or {})),
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

    def open(self, endpoints: EndpointMap | None = None) -> None:
        """Keep the resolved specs: a reconnect builds a fresh socket from them.

        The service builds the socket to the first broker; the worker builds
        one for each other broker (a DEALER connected to all of them would
        spread one broker's conversation over the others).
        """
        self._resolved = {s.name: s for s in apply_endpoints(self.specs, endpoints or {})}
        first = self._resolved[self.socket_name]
        super().open({**(endpoints or {}), self.socket_name: first.endpoints[:1]})

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

    def make_workers(self) -> list[HeartbeatWorker]:
        """The workers :meth:`run` serves: ``pool`` of them (a subclass may add its own)."""
        return [self.make_worker(slot) for slot in range(self.pool)]

    def run(self) -> None:
        """Start the offload pool, serve until stopped, end the pool."""
        self.offload.start()
        try:
            self.workers = self.make_workers()
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
