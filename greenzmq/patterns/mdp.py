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

Like the PPP queue, the broker heartbeats every worker, drops a worker silent
for ``liveness`` intervals (``busy_timeout`` while it holds a request, since
zguide and majortomo workers do not heartbeat while working), drops a worker
it cannot reach (EHOSTUNREACH) and gives the request to the next one, and
acknowledges a worker's DISCONNECT with DISCONNECT. Every malformed message is
logged as a drop with its reason. Stopping, it refuses new requests (a logged
drop, "broker stopping") and forwards the replies of busy workers for up to
``drain_timeout`` seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from typing import Any

import gevent
import zmq

from ..core.poller import GreenPoller
from ..core.service import Service, kill_spec
from ..core.sockets import Context, Socket, SocketSpec, with_maxmsgsize
from ..core.tracing import SocketTracer
from .lazypirate import RetryingClient
from .ppp import Handler, HeartbeatWorker, Parsed, PPPWorkerService

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


@dataclasses.dataclass
class _Job:
    client: bytes
    version: int
    service: bytes
    body: list[bytes]


@dataclasses.dataclass
class _Worker:
    id: bytes
    service: bytes
    version: int
    expiry: float
    job: _Job | None = None
    partials: list[bytes] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Service:
    name: bytes
    requests: deque[_Job] = dataclasses.field(default_factory=deque)
    idle: OrderedDict[bytes, None] = dataclasses.field(default_factory=OrderedDict)
    workers: set[bytes] = dataclasses.field(default_factory=set)


class MDPBroker(Service):
    """The Majordomo broker (see the module docstring). Sockets: ``broker`` ROUTER, ``kill``."""

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
        max_services: int = 10000,
        maxmsgsize: int = -1,
        drain_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        specs = with_maxmsgsize(self.specs, maxmsgsize, lambda s: s.name == "broker")
        super().__init__(name=name, specs=specs)
        self.heartbeat, self.liveness, self.busy_timeout = heartbeat, liveness, busy_timeout
        self.max_queue, self.max_services = max_queue, max_services
        #: seconds a stopping broker keeps forwarding replies from busy workers
        self.drain_timeout = min(drain_timeout, self.graceful_timeout)
        self._draining = False
        self.services: dict[bytes, _Service] = {}
        self.workers: dict[bytes, _Worker] = {}
        self.drops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._poller: GreenPoller | None = None
        self._sock: Socket | None = None
        self._tr: SocketTracer | None = None

    def on_stop(self) -> None:
        """Wake the poll so the loop sees the stop."""
        if self._poller is not None:
            self._poller.wake()

    # -- sending ------------------------------------------------------------
    def _send(self, msg: list[bytes]) -> bool:
        """Send raw; False (and a logged drop) if the peer is gone or full."""
        assert self._sock is not None and self._tr is not None
        try:
            self._sock.raw.send_multipart(msg, zmq.NOBLOCK)
        except zmq.Again:
            self._drop(msg, "peer full")
            return False
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self._drop(msg, "unknown peer")
            return False
        if self._tr.on:
            self._tr.hop("send", msg)
        return True

    def _drop(self, frames: list[bytes], reason: str) -> None:
        assert self._tr is not None
        self.drops[reason] += 1
        self._tr.drop(frames, reason)

    def _to_client(self, job: _Job, body: list[bytes], partial: bool = False) -> None:
        if job.version == 1:
            msg = [job.client, b"", C_CLIENT01, job.service, *body]
        else:
            msg = [job.client, b"", C_CLIENT02, PARTIAL02 if partial else FINAL02, *body]
        if self._send(msg) and not partial:
            self.counts["replies"] += 1

    def _to_worker(self, w: _Worker, command: bytes, *frames: bytes) -> bool:
        return self._send([w.id, b"", _WORKER_HEADER[w.version], command, *frames])

    # -- workers ------------------------------------------------------------
    def _service(self, name: bytes) -> _Service | None:
        svc = self.services.get(name)
        if svc is None:
            if len(self.services) >= self.max_services:
                return None
            svc = self.services[name] = _Service(name)
        return svc

    def _forget(self, wid: bytes, why: str, *, tell: bool = False) -> None:
        w = self.workers.pop(wid, None)
        if w is None:
            return
        svc = self.services.get(w.service)
        if svc is not None:
            svc.idle.pop(wid, None)
            svc.workers.discard(wid)
            self._tidy(svc)
        if tell:
            self._to_worker(w, _DISCONNECT[w.version])
        self.counts[f"workers {why}"] += 1
        self.log.info(
            "mdp.worker_lost" if why != "left" else "mdp.worker_left",
            worker=wid.hex(),
            mdp_service=w.service.decode(errors="replace"),
            why=why,
            lost_request=w.job is not None,
        )

    def _tidy(self, svc: _Service) -> None:
        if not svc.workers and not svc.requests:
            self.services.pop(svc.name, None)

    def _idle(self, w: _Worker) -> None:
        w.job = None
        w.partials = []
        w.expiry = time.monotonic() + self.heartbeat * self.liveness
        svc = self.services.get(w.service)
        if svc is not None:
            svc.idle[w.id] = None
            self._dispatch(svc)

    def _dispatch(self, svc: _Service) -> None:
        while svc.requests and svc.idle:
            wid, _ = svc.idle.popitem(last=False)
            w = self.workers[wid]
            job = svc.requests.popleft()
            if self._to_worker(w, REQUEST, job.client, b"", *job.body):
                w.job = job
                w.expiry = time.monotonic() + self.busy_timeout
            else:
                svc.requests.appendleft(job)  # to the next worker
                self._forget(wid, "unreachable")
        self._tidy(svc)

    def _from_worker(self, m: list[bytes], version: int) -> None:
        wid, cmd, rest = m[0], m[3], m[4:]
        w = self.workers.get(wid)
        if cmd == READY:
            if w is not None:
                self._drop(m, "READY from a registered worker")
                self._forget(wid, "protocol error", tell=True)
            elif len(rest) != 1 or not rest[0]:
                self._drop(m, "READY without a service name")
            elif rest[0].startswith(b"mmi."):
                self._drop(m, "READY for a reserved mmi. service")
                self._send([wid, b"", _WORKER_HEADER[version], _DISCONNECT[version]])
            else:
                svc = self._service(rest[0])
                if svc is None:
                    self._drop(m, "too many services")
                    return
                w = self.workers[wid] = _Worker(wid, rest[0], version, 0.0)
                svc.workers.add(wid)
                self.log.info(
                    "mdp.worker_ready",
                    worker=wid.hex(),
                    version=f"0.{version}",
                    mdp_service=rest[0].decode(errors="replace"),
                )
                self._idle(w)
            return
        if w is None:
            self._drop(m, "command from an unregistered worker")
            if cmd != _DISCONNECT[version]:
                self._send([wid, b"", _WORKER_HEADER[version], _DISCONNECT[version]])
            return
        if w.version != version:
            self._drop(m, "worker changed protocol version")
            return
        if cmd == _HEARTBEAT[version]:
            if w.job is None:
                w.expiry = time.monotonic() + self.heartbeat * self.liveness
            else:
                w.expiry = time.monotonic() + max(self.busy_timeout, self.heartbeat * self.liveness)
            return
        if cmd == _DISCONNECT[version]:
            self._forget(wid, "left", tell=True)  # the DISCONNECT back says "nothing more"
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
        if version == 2 and cmd == PARTIAL02:
            if job.version == 2:
                self._to_client(job, body, partial=True)
            else:
                w.partials.extend(body)  # 0.1 clients get it all in one reply
            w.expiry = time.monotonic() + self.busy_timeout
            return
        self._to_client(job, [*w.partials, *body])
        self._idle(w)

    # -- clients ------------------------------------------------------------
    def _from_client(self, m: list[bytes], version: int) -> None:
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
        job = _Job(m[0], version, service, body)
        self.counts["requests"] += 1
        if service.startswith(b"mmi."):
            if service == b"mmi.service":
                known = body and self.services.get(body[0])
                code = b"200" if known and known.workers else b"404"
            else:
                code = b"501"
            self._to_client(job, [code])
            return
        svc = self._service(service)
        if svc is None:
            self._drop(m, "too many services")
            return
        if len(svc.requests) >= self.max_queue:
            self._drop(m, "service queue full")
            self._tidy(svc)
            return
        svc.requests.append(job)
        self._dispatch(svc)

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
        sock = self._sock = self.socks["broker"]
        sock.claim()
        assert self.tracer is not None
        self._tr = tr = self.tracer.for_socket("broker", "ROUTER")
        poller = self._poller = GreenPoller()
        poller.register(sock, zmq.POLLIN)
        raw, nb, again = sock.raw, zmq.NOBLOCK, zmq.Again
        next_hb = time.monotonic() + self.heartbeat
        drain_until: float | None = None
        while True:
            if self.stopping.is_set():
                # graceful stop: refuse new requests, forward the replies of busy workers
                busy = sum(w.job is not None for w in self.workers.values())
                if drain_until is None:
                    drain_until = time.monotonic() + self.drain_timeout
                    self._draining = True
                    self.log.info("mdp.draining", busy=busy)
                if not busy or time.monotonic() >= drain_until:
                    break
            wake_at = next_hb if drain_until is None else min(next_hb, drain_until)
            if poller.poll(max(0, int((wake_at - time.monotonic()) * 1000))):
                for _ in range(self.batch):
                    try:
                        m = raw.recv_multipart(nb)
                    except again:
                        break
                    if tr.on:
                        tr.hop("recv", m)
                    self._handle(m)
            now = time.monotonic()
            if now >= next_hb:
                next_hb = now + self.heartbeat
                for w in list(self.workers.values()):
                    if w.expiry < now:
                        self._forget(w.id, "expired", tell=True)
                    elif not self._to_worker(w, _HEARTBEAT[w.version]):
                        self._forget(w.id, "unreachable")
        poller.close_watchers()
        self.log.info(
            "mdp.stats",
            counts=dict(self.counts),
            drops=dict(self.drops),
            workers=len(self.workers),
            queued=sum(len(s.requests) for s in self.services.values()),
        )


class MDPClient(RetryingClient):
    """A Majordomo client (0.1 or 0.2) over a DEALER: timeout, retries on a fresh socket.

    :meth:`request` returns the reply body; for MDP/0.2 the frames of every
    PARTIAL reply come first, then the FINAL's. After ``retries`` tries of
    ``timeout`` seconds it raises :class:`~greenzmq.errors.RequestTimeout`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        version: int | str = 2,
        timeout: float = 2.5,
        retries: int = 3,
        ctx: Context | None = None,
        options: Mapping[int, Any] | None = None,
    ) -> None:
        self.version = _version(version)
        spec = SocketSpec("mdpclient", "DEALER", connect=(endpoint,), options=dict(options or {}))
        super().__init__(endpoint, spec, timeout=timeout, retries=retries, ctx=ctx, client="mdp")

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
            f"no reply from {name.decode(errors='replace')!r} at {self.endpoint} after "
            f"{self.retries} tries of {self.timeout} s each",
        )


class MDPWorker(HeartbeatWorker):
    """A Majordomo worker (0.1 or 0.2) on the heartbeating loop of :mod:`greenzmq.patterns.ppp`."""

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


class MDPWorkerService(PPPWorkerService):
    """A service around one :class:`MDPWorker`: sockets ``broker`` (DEALER) and ``kill``.

    ``app = MDPWorkerService("echo", lambda body: body)`` is a complete worker.
    """

    name = "mdpworker"
    worker_class = MDPWorker

    def __init__(
        self,
        service: bytes | str,
        handler: Handler,
        *,
        endpoint: str = BROKER,
        version: int | str = 2,
        heartbeat: float = 2.5,
        liveness: int = 3,
        reconnect: float = 1.0,
        reconnect_max: float = 32.0,
        options: Mapping[int, Any] | None = None,
        name: str | None = None,
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
        )
        self.mdp_service = service
        self.version = _version(version)

    def make_worker(self, **extra: Any) -> HeartbeatWorker:
        return super().make_worker(service=self.mdp_service, version=self.version, **extra)
