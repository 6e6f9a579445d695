"""Majordomo: a service-oriented broker speaking MDP/0.1 and MDP/0.2 on one ROUTER.

The protocol frame tells the versions apart (frame 2, after the sender's
routing id and the empty delimiter):

MDP/0.1 (RFC 7, the zguide's mdcliapi/mdwrkapi):

* client -> broker ``["", "MDPC01", service, body...]``;
  broker -> client ``["", "MDPC01", service, body...]``
* worker commands: READY ``0x01`` (+ service), REQUEST ``0x02`` and REPLY
  ``0x03`` (+ client, ``""``, body), HEARTBEAT ``0x04``, DISCONNECT ``0x05``.

MDP/0.2 as the PyPI package ``majortomo`` implements it. Its frames differ
from RFC 18's text in two ways, and greenzmq follows majortomo, so that its
clients and workers interoperate:

* client commands share the worker numbering: REQUEST is ``0x02`` (RFC 18:
  ``0x01``), PARTIAL ``0x03`` (RFC: ``0x02``), FINAL ``0x04`` (RFC: ``0x03``);
* replies to the client carry no service frame:
  ``["", "MDPC02", PARTIAL|FINAL, body...]`` (RFC 18 puts the service name
  before the body).

  client -> broker ``["", "MDPC02", 0x02, service, body...]``; worker
  commands READY ``0x01`` (+ service), REQUEST ``0x02`` (+ client, ``""``,
  body), PARTIAL ``0x03`` / FINAL ``0x04`` (+ client, ``""``, body),
  HEARTBEAT ``0x05``, DISCONNECT ``0x06``.

A service may have workers of both versions, and a client of either version
may use it: the broker translates. PARTIAL replies to an MDP/0.1 client (which
has no such thing) are held and sent with the FINAL as one reply.

``mmi.service`` (body: a service name) answers ``200`` if that service has
workers, ``404`` if not; other ``mmi.*`` names answer ``501``.

The broker is a codec over the engine the PPP queue uses too
(:mod:`greenzmq.patterns._engine`). It heartbeats every worker, drops a
worker silent for ``liveness`` intervals (``busy_timeout`` while it holds a
request, since zguide and majortomo workers do not heartbeat while working,
unless the worker has been heard heartbeating while busy, as greenzmq's
workers do), drops a worker it cannot reach (EHOSTUNREACH), and acknowledges
a worker's DISCONNECT with DISCONNECT. A request held by a worker that is
dropped or leaves (even one handed over with its last reply, just before its
DISCONNECT) goes back to the front of the queue for the next worker. An
expired worker that speaks again is taken back. Requests are queued per
client and served round-robin, so one flooding client cannot starve the
others. Every malformed message is logged as a drop with its reason.
Stopping, it refuses new requests (a logged drop, "broker stopping") and
forwards the replies of busy workers for up to ``drain_timeout`` seconds.

Hops (when tracing is on) are keyed over the body, not the protocol frames,
so client, broker and worker log one request under one key: the broker logs
a request's ``recv`` and its ``dispatch`` to a worker apart (the wait for a
worker between them; ``attempt`` 2, 3, ... after a worker holding it was
lost), the reply's ``recv`` and its ``forward`` to the client (the broker's
own ``mmi.*`` answers: ``send``). Heartbeats, READYs and PARTIAL replies are
not hops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import gevent

from ..core.endpoints import Endpoints, endpoint_list
from ..core.poller import GreenPoller
from ..core.service import Service, kill_spec
from ..core.sockets import Context, Socket, SocketSpec, with_maxmsgsize
from ..core.tracing import SocketTracer, Tracer, body_key
from ._engine import Engine, Job, Worker
from ._send import FULL, SENT, send
from ._worker import Handler, HeartbeatWorker, HeartbeatWorkerService, Parsed
from .lazypirate import RetryingClient

__all__ = [
    "C_CLIENT01",
    "C_CLIENT02",
    "W_WORKER01",
    "W_WORKER02",
    "MDPBroker",
    "MDPClient",
    "MDPWorker",
    "MDPWorkerService",
]

BROKER = "tcp://127.0.0.1:5555"

C_CLIENT01 = b"MDPC01"
W_WORKER01 = b"MDPW01"
C_CLIENT02 = b"MDPC02"
W_WORKER02 = b"MDPW02"

READY = b"\x01"  # both versions
REQUEST = b"\x02"  # both versions (worker REQUEST; 0.2 client REQUEST too)
REPLY01 = b"\x03"
HEARTBEAT01 = b"\x04"
DISCONNECT01 = b"\x05"
PARTIAL02 = b"\x03"
FINAL02 = b"\x04"
HEARTBEAT02 = b"\x05"
DISCONNECT02 = b"\x06"

_WORKER_HEADER = {1: W_WORKER01, 2: W_WORKER02}
_CLIENT_HEADER = {1: C_CLIENT01, 2: C_CLIENT02}
_HEARTBEAT = {1: HEARTBEAT01, 2: HEARTBEAT02}
_DISCONNECT = {1: DISCONNECT01, 2: DISCONNECT02}


def _version(v: int | str) -> int:
    n = {1: 1, 2: 2, "0.1": 1, "0.2": 2}.get(v)
    if n is None:
        raise ValueError(f"unknown MDP version {v!r} (0.1 or 0.2)")
    return n


class MDPBroker(Service):
    """The Majordomo broker (see the module docstring). Sockets: ``broker`` ROUTER, ``kill``.

    A codec over :class:`~greenzmq.patterns._engine.Engine`. Requests are
    queued per client and served round-robin between clients; a service
    queue at ``max_queue`` makes room by dropping the newest request of the
    client with the most queued (``client_queue`` caps one client; None: no
    cap but ``max_queue``), so a flooding client cannot starve the others. A
    request that waited ``request_timeout`` seconds for a worker (or its
    service's entry in ``service_timeouts``, by name) is dropped, logged and
    counted, not run: its client has given up or retried by then. A
    request held by a worker that leaves, dies or hangs goes to the next
    worker, and an expired worker that speaks again is taken back.
    """

    name = "majordomo"
    batch = 256
    specs = (SocketSpec("broker", "ROUTER", bind=(BROKER,), hwm=10000), kill_spec())

    def __init__(
        self,
        *,
        heartbeat: float = 2.5,
        liveness: int = 3,
        busy_timeout: float = 900.0,
        max_queue: int = 10000,
        client_queue: int | None = None,
        max_services: int = 10000,
        maxmsgsize: int = -1,
        drain_timeout: float = 5.0,
        request_timeout: float | None = None,
        service_timeouts: Mapping[str, float | None] | None = None,
        name: str | None = None,
    ) -> None:
        specs = with_maxmsgsize(self.specs, maxmsgsize, lambda s: s.name == "broker")
        super().__init__(name=name, specs=specs)
        self.heartbeat, self.liveness, self.busy_timeout = heartbeat, liveness, busy_timeout
        self.max_queue, self.client_queue = max_queue, client_queue
        self.max_services = max_services
        #: seconds a request may wait for a worker (None: no limit); per service names too
        self.request_timeout = request_timeout
        self.service_timeouts = {k.encode(): v for k, v in (service_timeouts or {}).items()}
        #: seconds a stopping broker keeps forwarding replies from busy workers
        self.drain_timeout = min(drain_timeout, self.graceful_timeout)
        self._draining = False
        self.drops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.engine: Engine | None = None
        self._poller: GreenPoller | None = None
        self._raw: Any = None
        self._count = self.stats.socket("broker")
        self._tr: SocketTracer | None = None

    def on_stop(self) -> None:
        """Wake the poll so the loop sees the stop."""
        if self._poller is not None:
            self._poller.wake()

    # -- sending ------------------------------------------------------------
    def _send(self, msg: list[bytes], *, log_drop: bool = True) -> int:
        """Send raw: SENT, FULL or GONE (a logged drop unless ``log_drop`` is False)."""
        assert self._tr is not None
        outcome = send(self._raw, msg)
        if outcome == SENT:
            self._count.add_out(1, sum(map(len, msg)) if self.stats.detailed else 0)
        elif log_drop:
            self._drop(msg, "peer full" if outcome == FULL else "unknown peer")
        return outcome

    def _drop(self, frames: list[bytes], reason: str, body: list[bytes] | None = None) -> None:
        """Count and log a drop; ``body``: a parsed request's (its key: on the request's path)."""
        assert self._tr is not None
        self.drops[reason] += 1
        self.stats.socket("broker").drop(reason)
        self._tr.drop(frames, reason, key=None if body is None else body_key(body))

    def _to_client(
        self, job: Job, body: list[bytes], partial: bool = False, op: str = "forward"
    ) -> None:
        """Send a reply to ``job``'s client; ``op`` names its hop (``send``: the broker's own)."""
        if job.version == 1:
            msg = [job.client, b"", C_CLIENT01, job.service, *body]
        else:
            msg = [job.client, b"", C_CLIENT02, PARTIAL02 if partial else FINAL02, *body]
        if self._send(msg) == SENT and not partial:
            self.counts["replies"] += 1
            tr = self._tr
            if tr is not None and tr.on:
                # a PARTIAL is not a hop: the path ends with the FINAL the client returns
                reply_to = body_key(job.body) if op == "send" else None
                tr.hop(op, msg, key=body_key(body), reply_to=reply_to)

    # -- the codec the engine sends through ----------------------------------
    def send_request(self, w: Worker, job: Job) -> int:
        """Hand ``job`` to worker ``w`` (a failure is not a drop: the engine requeues it)."""
        msg = [w.id, b"", _WORKER_HEADER[w.version], REQUEST, job.client, b"", *job.body]
        outcome = self._send(msg, log_drop=False)
        tr = self._tr
        if outcome == SENT and tr is not None and tr.on:
            # apart from the client's recv: the time between is the wait for a worker
            job.tries += 1
            tr.hop("dispatch", msg, key=body_key(job.body), attempt=job.tries)
        return outcome

    def send_heartbeat(self, w: Worker) -> int:
        """Heartbeat worker ``w``."""
        return self._send([w.id, b"", _WORKER_HEADER[w.version], _HEARTBEAT[w.version]])

    def send_disconnect(self, w: Worker) -> None:
        """Tell worker ``w`` it is forgotten (or acknowledge its leaving)."""
        self._send([w.id, b"", _WORKER_HEADER[w.version], _DISCONNECT[w.version]])

    def drop_job(self, job: Job, reason: str) -> None:
        """Log a queued request the engine dropped."""
        msg = [job.client, b"", _CLIENT_HEADER[job.version], job.service, *job.body]
        self._drop(msg, reason, job.body)

    # -- workers ------------------------------------------------------------
    def _from_worker(self, m: list[bytes], version: int) -> None:
        eng = self.engine
        assert eng is not None
        wid, cmd, rest = m[0], m[3], m[4:]
        if cmd == READY:
            if wid in eng.workers:
                self._drop(m, "READY from a registered worker")
                eng.forget(wid, "protocol error", tell=True)
            elif len(rest) != 1 or not rest[0]:
                self._drop(m, "READY without a service name")
            elif rest[0].startswith(b"mmi."):
                self._drop(m, "READY for a reserved mmi. service")
                self._send([wid, b"", _WORKER_HEADER[version], _DISCONNECT[version]])
            else:
                pool = eng.pool(rest[0])
                if pool is None:
                    self._drop(m, "too many services")
                    return
                self.log.info(
                    "mdp.worker_ready",
                    worker=wid.hex(),
                    version=f"0.{version}",
                    mdp_service=rest[0].decode(errors="replace"),
                )
                eng.ready(wid, pool, version)
            return
        beat = cmd == _HEARTBEAT[version]
        w = eng.heard(wid, beat)
        if w is None:
            self._drop(m, "command from an unregistered worker")
            if cmd != _DISCONNECT[version]:
                self._send([wid, b"", _WORKER_HEADER[version], _DISCONNECT[version]])
            return
        if w.version != version:
            self._drop(m, "worker changed protocol version")
            return
        if beat:
            return
        if cmd == _DISCONNECT[version]:
            # the DISCONNECT back says "nothing more"; a request it held goes on
            eng.forget(wid, "left", tell=True)
            return
        is_reply = cmd == REPLY01 if version == 1 else cmd in (PARTIAL02, FINAL02)
        if not is_reply:
            self._drop(m, "unknown worker command")
            return
        if len(rest) < 2 or rest[1] != b"":
            self._drop(m, "reply without client envelope")
            return
        job = w.job
        if job is None or job.client != rest[0]:
            self._drop(m, "reply to no request of this worker")
            return
        body = rest[2:]
        tr = self._tr
        if tr is not None and tr.on and not (version == 2 and cmd == PARTIAL02):
            tr.hop("recv", m, key=body_key(body))  # the worker's reply, keyed over its body
        if version == 2 and cmd == PARTIAL02:
            if job.version == 2:
                # a request taken over from a worker that died mid-stream: its
                # first partials are the ones the client has (a replay), not news
                w.replayed += 1
                if w.replayed <= job.streamed:
                    self.counts["partials replayed"] += 1
                    return
                job.streamed += 1
                self._to_client(job, body, partial=True)
            else:
                w.partials.extend(body)  # 0.1 clients get it all in one reply
            return
        self._to_client(job, [*w.partials, *body])
        eng.done(w)

    # -- clients ------------------------------------------------------------
    def _from_client(self, m: list[bytes], version: int) -> None:
        eng = self.engine
        assert eng is not None
        if self._draining:
            self._drop(m, "broker stopping")
            return
        if version == 2:
            if len(m) < 4 or m[3] != REQUEST:
                self._drop(m, "unknown client command")
                return
            rest = m[4:]
        else:
            rest = m[3:]
        if not rest or not rest[0]:
            self._drop(m, "request without a service name")
            return
        service, body = rest[0], rest[1:]
        if version == 2 and not body:
            self._drop(m, "request without a body")
            return
        job = Job(m[0], service, body, version)
        self.counts["requests"] += 1
        tr = self._tr
        if tr is not None and tr.on:
            # keyed over the body, not the protocol frames: the same key as at
            # the client and the worker, whose frames around it differ
            tr.hop("recv", m, key=body_key(body))
        if service.startswith(b"mmi."):
            if service == b"mmi.service":
                known = body and eng.pools.get(body[0])
                code = b"200" if known and known.workers else b"404"
            else:
                code = b"501"
            self._to_client(job, [code], op="send")
            return
        pool = eng.pool(service)
        if pool is None:
            self._drop(m, "too many services", body)
            return
        reason = eng.submit(pool, job)
        if reason is not None:
            self._drop(m, reason, body)
            eng.tidy(pool)

    def _handle(self, m: list[bytes]) -> None:
        if len(m) < 4:
            self._drop(m, "too few frames")
        elif m[1] != b"":
            self._drop(m, "no envelope delimiter")
        elif m[2] == C_CLIENT01:
            self._from_client(m, 1)
        elif m[2] == C_CLIENT02:
            self._from_client(m, 2)
        elif m[2] == W_WORKER01:
            self._from_worker(m, 1)
        elif m[2] == W_WORKER02:
            self._from_worker(m, 2)
        else:
            self._drop(m, "unknown protocol header")

    def run(self) -> None:
        """Serve clients and workers until stopped."""
        sock = self.socks["broker"]
        sock.claim()
        assert self.tracer is not None
        self._tr = self.tracer.for_socket("broker", "ROUTER")
        self._raw = sock.raw
        count = self.stats.socket("broker")
        eng = self.engine = Engine(
            self,
            self.log,
            "mdp",
            heartbeat=self.heartbeat,
            liveness=self.liveness,
            busy_timeout=self.busy_timeout,
            max_queue=self.max_queue,
            client_queue=self.client_queue,
            max_services=self.max_services,
            tell_expired=True,
            service_key="mdp_service",
            counts=self.counts,
            confirm=False,  # majortomo's and the zguide's workers heartbeat at their own pace
            request_timeout=self.request_timeout,
            service_timeouts=self.service_timeouts,
        )
        eng.watch(self.stats)
        poller = self._poller = GreenPoller(persistent=True)

        def on_drain() -> None:
            # graceful stop: refuse new requests, forward the replies of busy workers
            self._draining = True
            self.log.info("mdp.draining", busy=eng.busy())

        eng.loop(poller, [(sock, self._handle, None, count)], self.stopping, self.drain_timeout,
                 batch=self.batch, in_flight=eng.busy, on_drain=on_drain)  # fmt: skip
        self.log.info(
            "mdp.stats",
            counts=dict(self.counts),
            drops=dict(self.drops),
            workers=len(eng.workers),
            queued=eng.queued(),
        )


class MDPClient(RetryingClient):
    """A Majordomo client (0.1 or 0.2) over a DEALER: timeout, retries on a fresh socket.

    :meth:`request` returns the reply body; for MDP/0.2 the frames of every
    PARTIAL reply come first, then the FINAL's. After ``retries`` tries of
    ``timeout`` seconds it raises :class:`~greenzmq.errors.RequestTimeout`.
    ``endpoint`` may list several brokers: a timeout moves the next try to
    the next one (the zguide's Freelance model, one broker at a time).
    Its hops (``send``, ``retry``, ``recv``; ``tracer`` as in
    :class:`~greenzmq.patterns.lazypirate.RetryingClient`) are keyed over the
    body, as the broker's and the worker's are.
    """

    def __init__(
        self,
        endpoint: Endpoints,
        *,
        version: int | str = 2,
        timeout: float = 2.5,
        retries: int = 3,
        ctx: Context | None = None,
        options: Mapping[int, Any] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.version = _version(version)
        spec = SocketSpec(
            "mdpclient", "DEALER", connect=endpoint_list(endpoint), options=dict(options or {})
        )
        super().__init__(
            endpoint, spec, timeout=timeout, retries=retries, ctx=ctx, client="mdp", tracer=tracer
        )

    def _timed_out(self, attempt: int) -> None:
        self.log.warning("mdp.client_timeout", endpoint=self.endpoint, attempt=attempt)

    def _receive(self, sock: Socket, name: bytes, header: bytes) -> list[bytes]:
        """The reply to a request for ``name``, skipping (and logging) malformed ones."""
        parts: list[bytes] = []
        while True:
            with gevent.Timeout(self.timeout):
                r = sock.recv_multipart()
            if len(r) < 3 or r[0] != b"" or r[1] != header:
                self.log.warning("mdp.client_bad_reply", frames=len(r))
                continue
            if self.version == 1:
                if r[2] != name:
                    self.log.warning("mdp.client_bad_reply", service=r[2][:64])
                    continue
                return r[3:]
            if r[2] == PARTIAL02:
                parts.extend(r[3:])
                continue
            if r[2] == FINAL02:
                return [*parts, *r[3:]]
            self.log.warning("mdp.client_bad_reply", command=r[2][:8].hex())

    def request(self, service: bytes | str, *body: bytes) -> list[bytes]:
        """Send ``body`` to ``service``; return the reply frames."""
        name = service.encode() if isinstance(service, str) else service
        header = _CLIENT_HEADER[self.version]
        if self.version == 2:
            if not body:
                raise ValueError("an MDP/0.2 request needs at least one body frame")
            msg = [b"", header, REQUEST, name, *body]
        else:
            msg = [b"", header, name, *body]
        return self._exchange(
            msg,
            lambda sock: self._receive(sock, name, header),
            f"no reply from {name.decode(errors='replace')!r} at {self.where} after "
            f"{self.retries} tries of {self.timeout} s each",
            body,
        )


class MDPWorker(HeartbeatWorker):
    """A Majordomo worker (0.1 or 0.2) on the heartbeat loop of :mod:`greenzmq.patterns._worker`."""

    kind = "mdpworker"

    def __init__(self, *args: Any, service: bytes | str, version: int | str = 2, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.service = service.encode() if isinstance(service, str) else service
        self.version = _version(version)
        self.header = _WORKER_HEADER[self.version]

    def ready_msg(self) -> list[bytes]:
        return [b"", self.header, READY, self.service]

    def heartbeat_msg(self) -> list[bytes]:
        return [b"", self.header, _HEARTBEAT[self.version]]

    def disconnect_msg(self) -> list[bytes] | None:
        return [b"", self.header, _DISCONNECT[self.version]]

    def reply_msg(self, envelope: list[bytes], body: list[bytes]) -> list[bytes]:
        cmd = REPLY01 if self.version == 1 else FINAL02
        return [b"", self.header, cmd, *envelope, b"", *body]

    def parse(self, frames: list[bytes]) -> Parsed | str:
        if len(frames) < 3 or frames[0] != b"":
            return "malformed broker message"
        if frames[1] != self.header:
            return "unknown protocol header"
        cmd = frames[2]
        if cmd == _HEARTBEAT[self.version]:
            return ("heartbeat", [], [])
        if cmd == _DISCONNECT[self.version]:
            return ("ack", [], []) if self._stopping else ("disconnect", [], [])
        if cmd == REQUEST:
            if len(frames) < 5 or frames[4] != b"":
                return "request without client envelope"
            return ("request", [frames[3]], frames[5:])
        return "unknown broker command"


class MDPWorkerService(HeartbeatWorkerService):
    """A service around one :class:`MDPWorker`: sockets ``broker`` (DEALER) and ``kill``.

    ``app = MDPWorkerService("echo", lambda body: body)`` is a complete worker;
    ``offload`` and ``pool`` as in :class:`~greenzmq.patterns._worker.HeartbeatWorkerService`.
    """

    name = "mdpworker"
    worker_class = MDPWorker

    def __init__(
        self,
        service: bytes | str,
        handler: Handler,
        *,
        endpoint: Endpoints = BROKER,
        version: int | str = 2,
        heartbeat: float = 2.5,
        liveness: int = 3,
        reconnect: float = 1.0,
        reconnect_max: float = 32.0,
        options: Mapping[int, Any] | None = None,
        name: str | None = None,
        offload: str | None = None,
        pool: int = 1,
    ) -> None:
        super().__init__(
            handler,
            endpoint=endpoint,
            heartbeat=heartbeat,
            liveness=liveness,
            reconnect=reconnect,
            reconnect_max=reconnect_max,
            options=options,
            name=name,
            socket="broker",
            offload=offload,
            pool=pool,
        )
        self.mdp_service = service
        self.version = _version(version)

    def make_worker(self, slot: int = 0, **extra: Any) -> HeartbeatWorker:
        return super().make_worker(slot, service=self.mdp_service, version=self.version, **extra)
