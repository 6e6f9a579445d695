"""The request-reply broker (the tutorial's case 2): ROUTER frontend, DEALER backend.

It waits on a :class:`~greenzmq.core.poller.GreenPoller` (a ``zmq.green.Poller``
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

import ctypes
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, cast

import zmq
from zmq.backend import Socket as _CSocket

from ..core.poller import GreenPoller
from ..core.service import Service, kill_spec
from ..core.sockets import Socket, SocketSpec, type_name
from ._send import FULL as _FULL
from ._send import GONE as _GONE
from ._send import send as send_outcome

__all__ = ["Broker", "envelope_problem"]

# The hot path calls the compiled socket methods with plain int flags: pyzmq's
# Python-level send/recv_multipart (type checks, IntFlag arithmetic, RCVMORE via
# the sugar layer) cost about 2x the libzmq calls themselves (greenzmq bench).
# Sends go through _send.send, the one send-outcome helper of every router.
_recv, _get = _CSocket.recv, _CSocket.get
_NB, _EVENTS = int(zmq.NOBLOCK), int(zmq.EVENTS)
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
# A client that does not read is retried on a timer, not on POLLOUT: a ROUTER
# with ROUTER_MANDATORY reports POLLOUT when any peer can take a message, so
# one stuck peer beside a live one would make the loop spin.
_RETRY_MIN, _RETRY_MAX = 0.005, 0.2  # seconds, doubled while nobody reads
_SWEEP = 5.0  # seconds between looks for lost requests (only while some are out)
# After a burst, glibc keeps the freed message buffers (libzmq's pipes, our
# queues) in its arenas: a broker that held 100 MB for a client that never
# read stayed at 100 MB after it left. Once the broker has moved this many
# messages and then been quiet for _QUIET seconds, malloc_trim(0) hands the
# free pages back (measured: 136 MB -> 37 MB, baseline 35 MB).
_TRIM_AFTER, _QUIET = 10_000, 1.0


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only; musl and macOS have none
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS (glibc ``malloc_trim``); False if absent."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


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


class _Client:
    """One client's books while it has requests in flight or messages waiting."""

    __slots__ = ("held", "inflight", "replies", "since")

    def __init__(self, now: float) -> None:
        self.inflight = 0  # requests at the workers, not yet answered
        self.held: deque[list[Any]] = deque()  # requests over ``peer_inflight``, in order
        self.replies: deque[list[Any]] = deque()  # replies its full pipe could not take
        self.since = now  # last forward or reply: an old count means lost requests


class Broker(Service):
    """ROUTER/DEALER broker over one GreenPoller; stops on the kill switch or SIGTERM.

    One client cannot hold up the others. Each client may have ``peer_inflight``
    requests at the workers; more wait in the broker (up to ``peer_held``, then
    they are dropped, logged with their reason), so a flood from one client
    never queues ahead of everyone at the workers. A reply to a client whose
    pipe is full (it does not read) waits in that client's own queue (up to
    ``peer_replies``, then it is dropped): the backend is never blocked for
    everyone by one peer. A client whose requests went unanswered for
    ``request_ttl`` seconds (their worker died) has its count forgotten.
    """

    name = "broker"
    batch = 256
    peer_inflight = 1000
    peer_held = 5000
    peer_replies = 1000
    request_ttl = 60.0
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
        # Requests wait here when every worker pipe is full (backpressure: the
        # frontend is not read until they are gone). Replies never wait for
        # everyone: a full client pipe is that client's problem (``_Client``).
        pending: deque[list[Any]] = deque()
        clients: dict[bytes, _Client] = {}
        slow: set[bytes] = set()  # clients with replies waiting

        def held() -> int:
            return sum(len(c.held) for c in clients.values())

        tracer = self.tracer
        assert tracer is not None  # open() made it
        trace = {s: tracer.for_socket(s.name, type_name(s.type)) for s in (fe, be)}
        # drops are always logged; other hops only when tracing is on
        hop_tr = {s: (t if t.on else None) for s, t in trace.items()}
        flags: dict[Socket, int] = {fe: _POLLIN, be: _POLLIN}
        again, batch = zmq.Again, self.batch
        peer_inflight, peer_held, peer_replies = (
            self.peer_inflight,
            self.peer_held,
            self.peer_replies,
        )
        stats = self.stats
        count = {s: stats.socket(s.name) for s in (fe, be)}  # added to once per batch
        # replies waiting for clients that do not read; requests waiting for
        # room at the workers; requests held over their client's in-flight limit
        stats.gauge("pending:frontend", lambda: sum(len(clients[c].replies) for c in slow))
        stats.gauge("pending:backend", lambda: len(pending))
        stats.gauge("held:frontend", held)
        forwarded = self.forwarded
        moved = 0  # messages taken since the allocator was last trimmed
        retry_at, retry_delay = 0.0, _RETRY_MIN

        draining = False  # stopped: no new requests, replies still flow

        def set_flags() -> None:
            want = 0 if pending or draining else _POLLIN
            if want != flags[fe]:
                flags[fe] = want
                poller.modify(fe, want)
            want = _POLLIN | (_POLLOUT if pending else 0)
            if want != flags[be]:
                flags[be] = want
                poller.modify(be, want)

        def drop(s: Socket, m: list[Any], reason: str) -> None:
            self.drops[reason] += 1
            count[s].drop(reason)
            trace[s].drop(m, reason)

        def send(dst: Socket, m: list[Any]) -> int:
            """Send raw: SENT, FULL (dst cannot take it now) or GONE (no such peer)."""
            return send_outcome(dst.raw, m)

        def to_backend(m: list[Any]) -> None:
            forwarded["frontend->backend"] += 1
            if pending or send(be, m) == _FULL:
                pending.append(m)

        def release(c: _Client) -> None:
            """Send held requests while the client is under its limit (stopping too)."""
            while c.held and c.inflight < peer_inflight:
                c.inflight += 1
                to_backend(c.held.popleft())

        def forget(cid: bytes, c: _Client, m: list[Any]) -> None:
            """The client has gone: drop what waits for it and its books."""
            drop(fe, m, "unknown peer")
            for r in c.replies:
                drop(fe, r, "unknown peer")
            for h in c.held:
                drop(fe, h, "unknown peer")
            c.replies.clear()
            c.held.clear()
            slow.discard(cid)
            if c.inflight == 0:
                del clients[cid]

        def to_client(m: list[Any], now: float) -> None:
            nonlocal retry_at
            cid = m[0].bytes
            c = clients.get(cid)
            if c is None or not c.inflight:
                # nobody asked: a stray, late (past request_ttl) or forged reply
                # from a backend peer that guessed a client id
                drop(fe, m, "no request outstanding")
                return
            forwarded["backend->frontend"] += 1  # a reply owed: in_flight() goes down
            c.since = now
            c.inflight -= 1
            release(c)
            if c.replies:  # keep the client's order: behind what already waits
                if len(c.replies) < peer_replies:
                    c.replies.append(m)
                else:
                    drop(fe, m, "slow peer")
                return
            outcome = send(fe, m)
            if outcome == _FULL:
                c.replies.append(m)
                if not slow:
                    retry_at = now + retry_delay
                slow.add(cid)
            elif outcome == _GONE:
                forget(cid, c, m)
            elif not c.inflight and not c.held:
                del clients[cid]

        def to_workers(m: list[Any], now: float) -> None:
            cid = m[0].bytes
            c = clients.get(cid)
            if c is None:
                c = clients[cid] = _Client(now)
            elif c.held or c.inflight >= peer_inflight:
                if len(c.held) < peer_held:
                    c.held.append(m)  # sent when one of its replies comes back
                else:
                    drop(fe, m, "client over its limit")
                return
            c.inflight += 1
            c.since = now
            to_backend(m)

        def pump(src: Socket) -> None:
            nonlocal moved
            rsrc, taken, dropped, nbytes = src.raw, 0, 0, 0
            tr, detailed = hop_tr[src], stats.detailed
            from_fe = src is fe
            dst = be if from_fe else fe
            now = time.monotonic()
            while taken < batch and not (from_fe and pending):
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
                    drop(src, m, problem)
                    dropped += 1
                    continue
                if detailed:  # bytes only while someone watches the stats
                    nbytes += sum(map(len, m))
                if tr is not None:
                    tr.hop("forward", m, dest=dst.name)
                if from_fe:
                    to_workers(m, now)
                else:
                    to_client(m, now)
            count[src].add_in(taken, nbytes)
            count[dst].add_out(taken - dropped, nbytes)
            moved += taken
            if pending:
                set_flags()

        def flush_backend() -> None:
            while pending and send(be, pending[0]) != _FULL:
                pending.popleft()
            if not pending:
                set_flags()

        def flush_slow(now: float) -> None:
            """Retry the clients that did not read, backing off while none does."""
            nonlocal retry_at, retry_delay
            moved = False
            for cid in list(slow):
                c = clients[cid]
                q = c.replies
                while q:
                    outcome = send(fe, q[0])
                    if outcome == _FULL:
                        break
                    moved = True
                    if outcome == _GONE:
                        forget(cid, c, q.popleft())
                        break
                    q.popleft()
                if not q:
                    slow.discard(cid)
                    if cid in clients and not c.inflight and not c.held:
                        del clients[cid]
            retry_delay = _RETRY_MIN if moved else min(retry_delay * 2, _RETRY_MAX)
            retry_at = now + retry_delay

        def sweep(now: float) -> None:
            """Forget request counts nobody will answer (their worker died)."""
            old = now - self.request_ttl
            for cid, c in list(clients.items()):
                if c.since < old and c.inflight:
                    c.inflight = 0
                    release(c)
                    c.since = now
                    if not c.inflight and not c.held and not c.replies:
                        del clients[cid]

        def in_flight() -> int:
            return forwarded["frontend->backend"] - forwarded["backend->frontend"]

        next_sweep = time.monotonic() + self.request_ttl

        def serve(deadline: float | None = None) -> None:
            nonlocal next_sweep, moved
            now = time.monotonic()
            # wake for: the stop's deadline, a retry of slow clients, a sweep
            # of lost counts, a quiet second after a burst; else sleep
            wake = deadline
            if slow:
                wake = retry_at if wake is None else min(wake, retry_at)
            if clients:
                wake = next_sweep if wake is None else min(wake, next_sweep)
            quiet = now + _QUIET if moved >= _TRIM_AFTER and not slow and not pending else None
            if quiet is not None:
                wake = quiet if wake is None else min(wake, quiet)
            timeout = -1.0 if wake is None else max(0.0, (wake - now) * 1000)
            events = poller.poll(timeout)
            for sock, ev in events:
                if ev & _POLLOUT:
                    flush_backend()
                if ev & _POLLIN:
                    pump(sock)
            if not events and quiet is not None and time.monotonic() >= quiet:
                release_free_memory()
                self.log.debug("broker.trim", moved=moved)
                moved = 0
            if slow or clients:
                now = time.monotonic()
                if slow and now >= retry_at:
                    flush_slow(now)
                if now >= next_sweep:
                    sweep(now)
                    next_sweep = now + min(self.request_ttl, _SWEEP)

        stopping = self.stopping
        # nobody waits green on these sockets while this loop owns them
        with fe.green_watcher_paused(), be.green_watcher_paused():
            try:
                while not stopping.is_set():
                    serve()
                # Stopped: take no new requests, but forward the replies to requests
                # already accepted (held ones too), for most of the graceful timeout.
                if in_flight() > 0 or held() or slow:
                    draining = True
                    set_flags()
                    self.log.info("broker.draining", in_flight=in_flight(), held=held())
                    deadline = time.monotonic() + self.graceful_timeout * 0.8
                    while (in_flight() > 0 or slow) and time.monotonic() < deadline:
                        serve(deadline)
            finally:
                poller.close_watchers()
        for cid in slow:  # a client that never read: its replies die with the broker
            for r in clients[cid].replies:
                drop(fe, r, "slow peer")
        self.log.info(
            "broker.stats",
            forwarded=dict(forwarded),
            drops=dict(self.drops),
            pending=len(pending),
            held=held(),
            in_flight=in_flight(),
        )
