"""Paranoid Pirate (RFC 6, PPP): a heartbeated LRU queue and workers for it.

The tutorial's DEALER backend hands requests round-robin to workers that may
be busy or dead. Here workers announce themselves instead:

* A worker's DEALER sends ``READY`` (``0x01``) once, then ``HEARTBEAT``
  (``0x02``) every ``heartbeat`` seconds, and replies as
  ``[client envelope..., b"", body...]``.
* :class:`PPPQueue` (frontend ROUTER, backend ROUTER) is a codec over the
  engine the Majordomo broker uses too (:mod:`greenzmq.patterns._engine`,
  one anonymous service). It gives each request to the worker that has been
  idle longest (LRU), only to idle, live workers; it heartbeats every
  worker; a worker silent for ``liveness`` intervals, busy or not, is
  dropped and the request it held goes to the next worker. A send to a
  worker that has gone (EHOSTUNREACH, with ROUTER_MANDATORY) drops that
  worker at once and the request goes to the next one, so it is not lost.
  An expired worker that speaks again is taken back at once (with its
  request, if nobody took it meanwhile); a reply is forwarded only from the
  worker holding that client's request (a logged drop otherwise); a worker
  heard only through a READY over one heartbeat old gets no request. While
  no worker is idle the queue does not read the frontend: requests wait in
  libzmq's queue (backpressure).
* A worker that hears nothing for ``liveness`` intervals closes its socket
  at once (linger 0: nothing it queued reaches a restarted queue later) and
  reconnects on a fresh one after a backoff that doubles up to
  ``reconnect_max`` (rule 9).
* Stopping (SIGTERM, kill switch), the queue reads no new requests but
  still hands out the ones it holds and forwards replies, for up to
  ``drain_timeout`` seconds.
* Hops (when tracing is on): the queue logs a request's ``recv`` on the
  frontend and its ``dispatch`` to a worker on the backend (``attempt`` 2, 3,
  ... after the worker holding it was lost), the reply's ``recv`` on the
  backend and its ``forward`` on the frontend; a request waiting for an idle
  worker waits before the ``recv`` (backpressure). With the worker's and a
  :class:`~greenzmq.patterns.lazypirate.LazyPirate` client's hops,
  ``greenzmq trace`` joins one request into one path.
* Leaving (SIGTERM, kill switch): the worker finishes the request it holds,
  sends ``DISCONNECT`` (``0x03``, a greenzmq extension to RFC 6), answers
  anything the queue had already sent it, and exits when the queue
  acknowledges with ``DISCONNECT`` (or after ``liveness`` intervals). A
  queue that does not know ``0x03`` logs it as a drop; nothing else changes.

Writing a worker takes a handler from request frames to reply frames::

    from greenzmq.patterns.ppp import PPPWorkerService
    app = PPPWorkerService(lambda body: [body[0].upper()], endpoint="tcp://127.0.0.1:5556")

The handler runs in its own greenlet while the socket's owner keeps
heartbeating, so a handler that waits green is not mistaken for a dead
worker. One that computes (or blocks) for longer than a heartbeat interval
stops the hub, heartbeats included: give it ``offload="thread"`` (or
``"process"``, with ``pool=N``, for CPU-bound work in parallel), see
:mod:`greenzmq.core.offload`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..core.poller import GreenPoller
from ..core.service import Service, kill_spec
from ..core.sockets import SocketSpec, with_maxmsgsize
from ..core.tracing import SocketTracer
from ._engine import Engine, Job, Worker
from ._send import FULL, SENT, send
from ._worker import Handler, HeartbeatWorker, HeartbeatWorkerService, Parsed
from .broker import envelope_problem

__all__ = [
    "DISCONNECT",
    "HEARTBEAT",
    "READY",
    "Handler",
    "HeartbeatWorker",
    "PPPQueue",
    "PPPWorker",
    "PPPWorkerService",
]

READY = b"\x01"
HEARTBEAT = b"\x02"
DISCONNECT = b"\x03"  # greenzmq extension: "I am leaving" / "noted, nothing more is coming"

FRONTEND = "tcp://127.0.0.1:5555"
BACKEND = "tcp://127.0.0.1:5556"


class PPPWorker(HeartbeatWorker):
    """A Paranoid Pirate worker (RFC 6 frames, plus the DISCONNECT extension)."""

    kind = "ppworker"

    def ready_msg(self) -> list[bytes]:
        return [READY]

    def heartbeat_msg(self) -> list[bytes]:
        return [HEARTBEAT]

    def disconnect_msg(self) -> list[bytes] | None:
        return [DISCONNECT]

    def reply_msg(self, envelope: list[bytes], body: list[bytes]) -> list[bytes]:
        return [*envelope, *body]

    def parse(self, frames: list[bytes]) -> Parsed | str:
        if len(frames) == 1:
            if frames[0] == HEARTBEAT:
                return ("heartbeat", [], [])
            if frames[0] == DISCONNECT:
                return ("ack", [], [])
            return "unknown command from queue"
        for i, f in enumerate(frames):
            if not f:
                if i == 0:
                    return "no client address"
                if i == len(frames) - 1:
                    return "empty body"
                return ("request", frames[: i + 1], frames[i + 1 :])
        return "no envelope delimiter"


class PPPWorkerService(HeartbeatWorkerService):
    """A service around one :class:`PPPWorker`: sockets ``backend`` (DEALER) and ``kill``.

    ``PPPWorkerService(handler, endpoint=..., heartbeat=..., liveness=...,
    reconnect=..., reconnect_max=..., options=..., name=..., socket=...,
    offload=None | "thread" | "process", pool=1)``.
    """

    name = "ppworker"
    worker_class = PPPWorker
    default_endpoint = BACKEND
    default_socket = "backend"


class PPPQueue(Service):
    """The Paranoid Pirate queue; see the module docstring. Sockets: frontend, backend, kill.

    A codec over :class:`~greenzmq.patterns._engine.Engine` with one anonymous
    service: a reply is forwarded only from the worker holding that client's
    request, a request held by a worker that leaves or dies goes to the next
    one, and an expired worker that speaks again is taken back. A request that
    waited ``request_timeout`` seconds for a worker is dropped (logged,
    counted), not run: its client has given up or retried by then.
    """

    name = "ppqueue"
    batch = 256
    specs = (
        SocketSpec("frontend", "ROUTER", bind=(FRONTEND,), hwm=10000),
        SocketSpec("backend", "ROUTER", bind=(BACKEND,), hwm=10000),
        kill_spec(),
    )

    def __init__(
        self,
        *,
        heartbeat: float = 1.0,
        liveness: int = 3,
        maxmsgsize: int = -1,
        drain_timeout: float = 5.0,
        request_timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        specs = with_maxmsgsize(self.specs, maxmsgsize, lambda s: s.type == "ROUTER")
        super().__init__(name=name, specs=specs)
        self.heartbeat, self.liveness = heartbeat, liveness
        #: seconds a request may wait for a worker before it is dropped (None: no limit)
        self.request_timeout = request_timeout
        #: seconds a stopping queue keeps forwarding replies from busy workers
        self.drain_timeout = min(drain_timeout, self.graceful_timeout)
        self.drops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.engine: Engine | None = None
        self._poller: GreenPoller | None = None
        self._be_raw: Any = None
        self._be_tr: SocketTracer | None = None
        self._trs: dict[str, SocketTracer] = {}

    def on_stop(self) -> None:
        """Wake the poll so the loop sees the stop."""
        if self._poller is not None:
            self._poller.wake()

    def _drop(self, sock: str, frames: list[bytes], reason: str) -> None:
        self.drops[reason] += 1
        self.stats.socket(sock).drop(reason)
        self._trs[sock].drop(frames, reason)

    # -- the codec the engine sends through ----------------------------------
    def send_request(self, w: Worker, job: Job) -> int:
        """Hand ``job`` (the client's whole request) to worker ``w``."""
        msg = [w.id, *job.body]
        outcome = send(self._be_raw, msg)
        if outcome == SENT:
            stats = self.stats
            stats.socket("backend").add_out(1, sum(map(len, msg)) if stats.detailed else 0)
            tr = self._be_tr
            if tr is not None and tr.on:
                # its own hop, apart from the frontend's recv: the time between
                # them is the time the request waited for this worker (peer)
                job.tries += 1
                tr.hop("dispatch", msg, attempt=job.tries)
        return outcome

    def send_heartbeat(self, w: Worker) -> int:
        """Heartbeat worker ``w``."""
        return send(self._be_raw, [w.id, HEARTBEAT])

    def send_disconnect(self, w: Worker) -> None:
        """Acknowledge (or order) a worker's leaving."""
        send(self._be_raw, [w.id, DISCONNECT])

    def drop_job(self, job: Job, reason: str) -> None:
        """Log a queued request the engine dropped."""
        self._drop("frontend", job.body, reason)

    def run(self) -> None:
        """Route requests to idle live workers and replies back, until stopped."""
        fe, be = self.socks["frontend"], self.socks["backend"]
        fe.claim()
        be.claim()
        assert self.tracer is not None
        fe_tr = self.tracer.for_socket("frontend", "ROUTER")
        be_tr = self._be_tr = self.tracer.for_socket("backend", "ROUTER")
        self._trs = {"frontend": fe_tr, "backend": be_tr}
        fe_raw: Any = fe.raw
        be_raw: Any = be.raw
        self._be_raw = be_raw
        fe_count, be_count = self.stats.socket("frontend"), self.stats.socket("backend")
        eng = self.engine = Engine(
            self, self.log, "ppqueue", heartbeat=self.heartbeat, liveness=self.liveness,
            counts=self.counts, request_timeout=self.request_timeout,
        )  # fmt: skip
        eng.watch(self.stats)
        pool = eng.pool(b"", pinned=True)
        assert pool is not None
        poller = self._poller = GreenPoller(persistent=True)
        log = self.log

        def from_backend(m: list[bytes]) -> None:
            if len(m) < 2:
                self._drop("backend", m, "no worker frames")
                return
            wid = m[0]
            if len(m) == 2:
                cmd = m[1]
                if cmd == READY:
                    # a fresh start on the same socket: a request it held goes on
                    if not eng.forget(wid, "ready again"):
                        log.info("ppqueue.worker_ready", worker=wid.hex())
                    eng.ready(wid, pool)
                elif cmd == HEARTBEAT:
                    if eng.heard(wid, beat=True) is None:
                        self._drop("backend", m, "heartbeat from unknown worker")
                elif cmd == DISCONNECT:
                    eng.forget(wid, "left")
                    send(be_raw, [wid, DISCONNECT])  # gone already: nothing to acknowledge
                else:
                    self._drop("backend", m, "unknown worker command")
                return
            reply = m[1:]
            problem = envelope_problem(reply)
            if problem is not None:
                self._drop("backend", m, f"reply: {problem}")
                return
            w = eng.answer(wid, reply[0])
            if isinstance(w, str):
                self._drop("backend", m, w)  # forged, late or duplicate: never to the client
                return
            if be_tr.on:
                be_tr.hop("recv", m)
            outcome = send(fe_raw, reply)
            if outcome == SENT:
                self.counts["replies"] += 1
                fe_count.add_out(1, sum(map(len, reply)) if self.stats.detailed else 0)
                if fe_tr.on:
                    fe_tr.hop("forward", reply, dest="frontend")
            else:
                self._drop("frontend", reply, "client full" if outcome == FULL else "unknown peer")
            eng.done(w)

        def want_frontend(draining: bool) -> bool:
            """Read the frontend only while a worker is idle and nothing waits (backpressure)."""
            return bool(pool.idle) and not pool.queued and not draining

        def from_frontend(m: list[bytes]) -> None:
            problem = envelope_problem(m)
            if problem is not None:
                self._drop("frontend", m, problem)
                return
            if fe_tr.on:
                fe_tr.hop("recv", m)
            self.counts["requests"] += 1
            reason = eng.submit(pool, Job(m[0], b"", m))
            if reason is not None:
                self._drop("frontend", m, reason)

        def on_drain() -> None:
            # graceful stop: take no new requests, forward the replies still coming
            log.info("ppqueue.draining", busy=eng.busy(), unsent=pool.queued)

        eng.loop(
            poller,
            [(be, from_backend, None, be_count), (fe, from_frontend, want_frontend, fe_count)],
            self.stopping,
            self.drain_timeout,
            batch=self.batch,
            in_flight=lambda: pool.queued + eng.busy(),
            on_drain=on_drain,
        )
        log.info(
            "ppqueue.stats",
            counts=dict(self.counts),
            drops=dict(self.drops),
            workers=len(eng.workers),
            pending=pool.queued,
        )
