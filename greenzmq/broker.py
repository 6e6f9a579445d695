"""The request-reply broker (the tutorial's case 2): ROUTER frontend, DEALER backend.

It waits on a :class:`~greenzmq.poller.GreenPoller` (a ``zmq.green.Poller``
without select()'s FD limit) and moves whole multipart messages through raw
shadow sockets with NOBLOCK, at most ``batch`` per ready socket per wake-up,
so one busy side cannot starve the other (rules 3 and 4).

When a destination is full (EAGAIN at HWM), the message waits in a small
pending queue, the broker stops reading the source (backpressure) and polls
the destination for POLLOUT: the loop never blocks, so the kill switch and
SIGTERM are always seen.

On a stop (kill switch, SIGTERM) the broker takes no new requests but keeps
forwarding replies to the requests it already accepted, for up to 80% of
``graceful_timeout``, then exits.

A malformed message (no envelope delimiter, empty body) or a reply to a client
that has gone (EHOSTUNREACH, with ROUTER_MANDATORY) is logged as a ``drop`` hop
with its reason, counted, and the broker keeps serving.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, cast

import zmq
from zmq.backend import Socket as _CSocket

from .poller import GreenPoller
from .service import Service, kill_spec
from .sockets import Socket, SocketSpec, type_name

__all__ = ["Broker", "envelope_problem"]

# The hot path calls the compiled socket methods with plain int flags: pyzmq's
# Python-level send/recv_multipart (type checks, IntFlag arithmetic, RCVMORE via
# the sugar layer) cost about 2x the libzmq calls themselves (benchmarks/).
_recv, _send, _get = _CSocket.recv, _CSocket.send, _CSocket.get
_NB, _NB_MORE, _EVENTS = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE), int(zmq.EVENTS)
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)

FRONTEND = "tcp://127.0.0.1:5560"
BACKEND = "tcp://127.0.0.1:5561"


def envelope_problem(frames: Sequence[bytes]) -> str | None:
    """Why ``frames`` (routing id(s), empty delimiter, body) cannot be routed, or None."""
    if len(frames) >= 3 and not frames[1]:
        return None  # the common case: one hop of envelope (REQ through ROUTER)
    for i in range(1, len(frames)):
        if not frames[i]:
            return None if i < len(frames) - 1 else "empty body"
    if len(frames) < 2:
        return "no envelope"
    return "no envelope delimiter"


class Broker(Service):
    """ROUTER/DEALER broker over one GreenPoller; stops on the kill switch or SIGTERM."""

    name = "broker"
    batch = 256
    specs = (
        SocketSpec("frontend", "ROUTER", bind=(FRONTEND,), hwm=10000),
        SocketSpec("backend", "DEALER", bind=(BACKEND,), hwm=10000),
        kill_spec(),
    )

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.forwarded: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self._poller: GreenPoller | None = None

    def on_stop(self) -> None:
        """Wake the poll so the loop sees the stop."""
        if self._poller is not None:
            self._poller.wake()

    def run(self) -> None:
        """Forward both ways until stopped; report the counts."""
        fe, be = self.socks["frontend"], self.socks["backend"]
        fe.claim()
        be.claim()
        # persistent watchers: closed in the finally below, before the sockets close
        poller = self._poller = GreenPoller(persistent=True)
        poller.register(fe, zmq.POLLIN)
        poller.register(be, zmq.POLLIN)
        other = {fe: be, be: fe}
        pending: dict[Socket, deque[list[Any]]] = {fe: deque(), be: deque()}
        label = {fe: "frontend->backend", be: "backend->frontend"}
        tracer = self.tracer
        assert tracer is not None  # open() made it
        trace = {s: tracer.for_socket(s.name, type_name(s.type)) for s in (fe, be)}
        # drops are always logged; other hops only when tracing is on
        hop_tr = {s: (t if t.on else None) for s, t in trace.items()}
        flags: dict[Socket, int] = {fe: _POLLIN, be: _POLLIN}
        again, batch = zmq.Again, self.batch
        stats = self.stats
        count = {s: stats.socket(s.name) for s in (fe, be)}  # added to once per batch
        for s in (fe, be):
            stats.gauge(f"pending:{s.name}", lambda s=s: len(pending[s]))  # type: ignore[misc]

        draining = False  # stopped: no new requests, replies still flow

        def set_flags(s: Socket) -> None:
            closed = pending[other[s]] or (draining and s is fe)
            want = (0 if closed else _POLLIN) | (_POLLOUT if pending[s] else 0)
            if want != flags[s]:
                flags[s] = want
                poller.modify(s, want)

        def send(dst: Socket, m: list[Any]) -> bool:
            """Send raw; False if dst is full (the caller queues)."""
            rdst = dst.raw
            try:
                # EAGAIN (HWM) and EHOSTUNREACH come on the first frame; once
                # it is taken libzmq accepts the rest of the message.
                for f in m[:-1]:
                    _send(rdst, f, _NB_MORE, False)
                _send(rdst, m[-1], _NB, False)
            except again:
                return False
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                self.drops["unknown peer"] += 1
                count[dst].drop("unknown peer")
                trace[dst].drop(m, "unknown peer")
            return True

        def pump(src: Socket) -> None:
            dst, rsrc, taken, dropped, nbytes = other[src], src.raw, 0, 0, 0
            tr, q, detailed = hop_tr[src], pending[dst], stats.detailed
            while taken < batch and not q:
                if taken == 1 and not cast(int, _get(rsrc, _EVENTS)) & _POLLIN:
                    # at low load a wake-up brings one message: asking EVENTS
                    # (~1 us) beats ending the drain on EAGAIN (an exception, ~7 us)
                    break
                # zmq.Frame (copy=False) knows whether more frames follow
                # without a getsockopt(RCVMORE) through pyzmq's option enum;
                # Frames are buffers, so hop keys and the envelope check work.
                try:
                    f = _recv(rsrc, _NB, False)
                except again:
                    break
                m: list[Any] = [f]
                while f.more:
                    f = _recv(rsrc, _NB, False)
                    m.append(f)
                taken += 1
                problem = envelope_problem(m)
                if problem is not None:
                    self.drops[problem] += 1
                    count[src].drop(problem)
                    dropped += 1
                    trace[src].drop(m, problem)
                    continue
                if detailed:  # bytes only while someone watches the stats
                    nbytes += sum(map(len, m))
                if tr is not None:
                    tr.hop("forward", m, dest=dst.name)
                if not send(dst, m):
                    q.append(m)
            self.forwarded[label[src]] += taken - dropped
            count[src].add_in(taken, nbytes)
            count[dst].add_out(taken - dropped, nbytes)
            if q:
                set_flags(src)
                set_flags(dst)

        def flush(dst: Socket) -> None:
            q = pending[dst]
            while q and send(dst, q[0]):
                q.popleft()
            if not q:
                set_flags(dst)
                set_flags(other[dst])

        def in_flight() -> int:
            return self.forwarded["frontend->backend"] - self.forwarded["backend->frontend"]

        def serve(timeout: float = -1) -> None:
            for sock, ev in poller.poll(timeout):
                if ev & _POLLOUT:
                    flush(sock)
                if ev & _POLLIN:
                    pump(sock)

        stopping = self.stopping
        # Nobody waits green on these sockets while the loop owns them: pause
        # pyzmq's own per-socket watcher, which would read EVENTS on every
        # edge for nothing (a few us per wake-up).
        paused = [w for w in (getattr(s, "_state_event", None) for s in (fe, be)) if w]
        for w in paused:
            w.stop()
        try:
            while not stopping.is_set():
                serve()
            # Stopped: take no new requests, but forward the replies to requests
            # already accepted, for most of the graceful timeout.
            if in_flight() > 0:
                draining = True
                set_flags(fe)
                self.log.info("broker.draining", in_flight=in_flight())
                deadline = time.monotonic() + self.graceful_timeout * 0.8
                while in_flight() > 0 and (left := deadline - time.monotonic()) > 0:
                    serve(left * 1000)
        finally:
            poller.close_watchers()
            for s in (fe, be):
                g: Any = s  # pyzmq's green internals (zmq/green/core.py), untyped
                if not g.closed and getattr(g, "_state_event", None) in paused:
                    g._state_event.start(g._Socket__state_changed)
        self.log.info(
            "broker.stats",
            forwarded=dict(self.forwarded),
            drops=dict(self.drops),
            pending=sum(map(len, pending.values())),
            in_flight=in_flight(),
        )
