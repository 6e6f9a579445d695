"""The reliable-broker engine under the Paranoid Pirate queue and the Majordomo broker.

PPP is Majordomo with one anonymous service, so both are thin codecs (frames
in, frames out) over this one copy of the mechanism:

* a :class:`Pool` per service: its workers, the idle ones LRU first, and its
  requests queued fairly per client (round-robin between clients, so one
  flooding client cannot starve the others);
* the worker registry: ready, heard, answered, left, lost; a request held by
  a worker that leaves, is expired or cannot be reached goes back to the
  front of its client's queue (nothing handed to a worker is lost);
* dispatch to the longest-idle worker, skipping (and forgetting) a worker
  that cannot be reached;
* the heartbeat tick: heartbeat every worker, expire the silent ones. A busy
  worker is given ``busy_timeout`` (zguide and majortomo workers do not
  heartbeat while working) unless it has been seen to heartbeat while busy
  (greenzmq's workers do): then ``liveness`` silent intervals expire it,
  busy or not, so a hung (SIGSTOPped) worker's request moves on;
* an expired worker that speaks again is taken back at once (as the zguide's
  ppqueue does), with its request if nobody else has taken it meanwhile;
* (PPP) a worker not heard from since its READY gets no request once that
  READY is more than one heartbeat old (a ghost: a READY from an abandoned
  socket);
* a reply is accepted only from the worker that holds that client's request.

The codec sends (through :func:`greenzmq.patterns._send.send`) and logs the
drops of what it parses; the engine never touches a socket.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, Protocol

import zmq
from zmq.backend import Socket as _CSocket

from ..core.poller import GreenPoller
from ..core.sockets import Socket
from ._send import FULL, GONE, SENT
from ._send import recv_bytes as _recv_msg

__all__ = ["Codec", "Engine", "Job", "Pool", "Source", "Worker"]

_get: Any = _CSocket.get  # compiled, with int flags: the hot path (see _send)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)

Source = tuple[Socket, Callable[[list[bytes]], None], Callable[[bool], bool] | None, Any]
"""A socket the loop reads: ``(socket, handle(frames), wanted(draining) or None, counters)``."""

_GAUGED_SERVICES = 64  # services with their own pending gauge; the total counts them all


class Job:
    """One client request: who asked (``client``, its routing id), for what, in which version."""

    __slots__ = ("at", "body", "client", "service", "streamed", "tries", "version")

    def __init__(self, client: bytes, service: bytes, body: list[bytes], version: int = 0) -> None:
        # accepted: its age decides whether it is still worth running, and its
        # latency (to the reply) goes in the stats' histogram
        self.at = time.monotonic()
        self.client = client
        self.service = service
        self.body = body  # the codec's: PPP keeps the whole request, MDP the body frames
        self.version = version
        # partial replies already forwarded to the client (MDP/0.2): a worker
        # that takes the request over after another one's death replays them
        self.streamed = 0
        # handed to a worker so far (counted by a codec that traces: a dispatch
        # hop's attempt number; a second one follows a worker's loss)
        self.tries = 0


class Worker:
    """One registered worker and the request it holds."""

    __slots__ = (
        "beats_busy",
        "beats_job",
        "confirmed",
        "id",
        "job",
        "partials",
        "replayed",
        "seen",
        "service",
        "version",
    )

    def __init__(self, wid: bytes, service: bytes, version: int, now: float) -> None:
        self.id = wid
        self.service = service
        self.version = version
        self.seen = now  # last message from it, or the dispatch of its request
        self.confirmed = False  # heard from since its READY
        self.job: Job | None = None
        self.partials: list[bytes] = []  # MDP/0.2 PARTIAL frames held for an MDP/0.1 client
        self.replayed = 0  # PARTIAL replies it sent for its current request
        self.beats_job = 0  # heartbeats heard while holding the current request
        # Seen heartbeating while busy (two beats in one request: a single one
        # may have been on its way when the request was sent).
        self.beats_busy = False


class Pool:
    """One service: its workers, the idle ones LRU first, its requests fair-queued per client."""

    __slots__ = ("idle", "name", "pinned", "queued", "queues", "timeout", "turn", "workers")

    def __init__(self, name: bytes, pinned: bool = False, timeout: float | None = None) -> None:
        self.name = name
        self.pinned = pinned  # kept when empty (PPP's one service)
        self.timeout = timeout  # seconds a request may wait for a worker (None: no limit)
        self.idle: OrderedDict[bytes, None] = OrderedDict()
        self.workers: set[bytes] = set()
        self.queues: dict[bytes, deque[Job]] = {}
        self.turn: deque[bytes] = deque()  # clients with requests queued, next first
        self.queued = 0

    def push(self, job: Job, front: bool = False) -> None:
        """Queue ``job``; ``front``: it was handed out and comes back first."""
        q = self.queues.get(job.client)
        if q is None:
            q = self.queues[job.client] = deque()
            if front:
                self.turn.appendleft(job.client)
            else:
                self.turn.append(job.client)
        elif front:
            self.turn.remove(job.client)
            self.turn.appendleft(job.client)
        if front:
            q.appendleft(job)
        else:
            q.append(job)
        self.queued += 1

    def pop(self) -> Job:
        """The next request, taking clients in turn."""
        client = self.turn.popleft()
        q = self.queues[client]
        job = q.popleft()
        self.queued -= 1
        if q:
            self.turn.append(client)
        else:
            del self.queues[client]
        return job

    def stale(self, now: float) -> list[Job]:
        """Take out the requests that waited longer than ``timeout``, each client's oldest first."""
        if self.timeout is None or not self.queued:
            return []
        limit = now - self.timeout
        out: list[Job] = []
        for client, q in list(self.queues.items()):
            while q and q[0].at < limit:
                out.append(q.popleft())
            if not q:
                del self.queues[client]
                self.turn.remove(client)
        self.queued -= len(out)
        return out

    def remove(self, job: Job) -> bool:
        """Take ``job`` out of the queue; False if it is not queued (handed out again)."""
        q = self.queues.get(job.client)
        if q is None:
            return False
        try:
            q.remove(job)  # Job has no __eq__: by identity
        except ValueError:
            return False
        self.queued -= 1
        if not q:
            del self.queues[job.client]
            self.turn.remove(job.client)
        return True


class Codec(Protocol):
    """What the engine needs from a protocol: send a request, a heartbeat, a DISCONNECT."""

    def send_request(self, w: Worker, job: Job) -> int:
        """Send ``job`` to ``w``: SENT, FULL or GONE."""

    def send_heartbeat(self, w: Worker) -> int:
        """Send a heartbeat to ``w``: SENT, FULL or GONE."""

    def send_disconnect(self, w: Worker) -> None:
        """Tell ``w`` it is forgotten (best effort)."""

    def drop_job(self, job: Job, reason: str) -> None:
        """Log (and count) a queued request dropped for ``reason``."""


class Engine:
    """Workers, pools and the rules between them; see the module docstring.

    ``busy_timeout`` None means ``heartbeat * liveness`` (every PPP worker
    heartbeats while busy). ``max_queue`` caps the requests queued for one
    service, ``client_queue`` those of one client in it. ``tell_expired``: send
    DISCONNECT to an expired worker (MDP). ``service_key``: the log key naming a
    worker's service (None: do not name it). ``confirm``: route nothing to a
    worker heard only through a READY over one heartbeat old (PPP).
    ``request_timeout``: seconds a request may wait for a worker before it is
    dropped (logged, counted: its client has given up or retried by then, and
    a restarted service should not work through stale requests); None: no
    limit. ``service_timeouts`` overrides it per service.
    """

    def __init__(
        self,
        codec: Codec,
        log: Any,
        prefix: str,
        *,
        heartbeat: float,
        liveness: int,
        busy_timeout: float | None = None,
        max_queue: int = 10000,
        client_queue: int | None = None,
        max_services: int = 10000,
        tell_expired: bool = False,
        service_key: str | None = None,
        counts: Counter[str] | None = None,
        remember: int = 4096,
        confirm: bool = True,
        request_timeout: float | None = None,
        service_timeouts: Mapping[bytes, float | None] | None = None,
    ) -> None:
        self.codec, self.log, self.prefix = codec, log, prefix
        self.heartbeat = heartbeat
        self.patience = heartbeat * liveness
        self.busy_timeout = self.patience if busy_timeout is None else busy_timeout
        # A worker heard only through its READY gets no request once that is this
        # old: a live one heartbeats within one interval (half more for the trip).
        # A READY queued in an abandoned socket that reconnected to a restarted
        # queue (a ghost) says nothing more. Off (inf) for protocols whose
        # workers keep their own heartbeat pace (majortomo's first heartbeat
        # after READY comes two of the broker's intervals later).
        self.unconfirmed = heartbeat * 1.5 if confirm else float("inf")
        self.max_queue = max_queue
        self.client_queue = max_queue if client_queue is None else client_queue
        self.max_services = max_services
        self.request_timeout = request_timeout
        self.service_timeouts = dict(service_timeouts or {})
        self.tell_expired = tell_expired
        self.service_key = service_key
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.workers: dict[bytes, Worker] = {}
        self.pools: dict[bytes, Pool] = {}
        # expired workers, newest last: one that speaks again is taken back
        self._expired: OrderedDict[bytes, Worker] = OrderedDict()
        self._remember = remember
        self._stats: Any = None
        self._gauged: set[bytes] = set()
        self.latency: Any = None  # a core.stats.Histogram once watched

    def _gauge_pending(self, name: bytes) -> None:
        # bounded: clients choose service names, and a gauge is never removed
        if name in self._gauged or len(self._gauged) >= _GAUGED_SERVICES:
            return
        self._gauged.add(name)

        def pending() -> int:
            p = self.pools.get(name)
            return 0 if p is None else p.queued

        self._stats.gauge(f"pending:{name.decode(errors='replace')}", pending)

    # -- pools --------------------------------------------------------------
    def pool(self, name: bytes, pinned: bool = False) -> Pool | None:
        """The pool of service ``name``, made on first use; None past ``max_services``."""
        p = self.pools.get(name)
        if p is None:
            if len(self.pools) >= self.max_services:
                return None
            timeout = self.service_timeouts.get(name, self.request_timeout)
            p = self.pools[name] = Pool(name, pinned, timeout)
            if self._stats is not None and name:
                self._gauge_pending(name)
        return p

    def tidy(self, p: Pool) -> None:
        """Forget a pool with no workers and no requests."""
        if not p.workers and not p.queued and not p.pinned:
            self.pools.pop(p.name, None)

    def busy(self) -> int:
        """Workers holding a request."""
        return sum(w.job is not None for w in self.workers.values())

    def idle(self) -> int:
        """Workers waiting for a request."""
        return sum(len(p.idle) for p in self.pools.values())

    def queued(self) -> int:
        """Requests waiting for a worker, all services."""
        return sum(p.queued for p in self.pools.values())

    def watch(self, stats: Any) -> None:
        """Report idle and busy workers, queued requests (all, and per service) and expiries.

        They are gauges of ``stats`` (read when a snapshot is taken: free otherwise).
        """
        self._stats = stats
        stats.gauge("workers:idle", self.idle)
        stats.gauge("workers:busy", self.busy)
        stats.gauge("pending", self.queued)
        stats.gauge("workers:expired", lambda: self.counts["workers expired"])
        stats.gauge("requests:requeued", lambda: self.counts["requeued"])
        stats.gauge("requests:timed_out", lambda: self.counts["requests timed out"])
        self.latency = stats.histogram("request_latency")
        stats.table("services", self.by_service)

    def by_service(self) -> dict[str, dict[str, int]]:
        """Idle and busy workers and pending requests per service (the first 64 services)."""
        out: dict[str, dict[str, int]] = {}
        # services with workers first: client-chosen names of empty pools come last
        for p in sorted(self.pools.values(), key=lambda p: not p.workers)[:_GAUGED_SERVICES]:
            busy = sum(self.workers[w].job is not None for w in p.workers if w in self.workers)
            name = p.name.decode(errors="replace") or "default"
            out[name] = {"idle": len(p.idle), "busy": busy, "pending": p.queued}
        return out

    # -- requests -----------------------------------------------------------
    def submit(self, p: Pool, job: Job) -> str | None:
        """Queue ``job`` in ``p`` and dispatch; a drop reason if there is no room.

        A full queue makes room by dropping the newest request of the client
        with the most queued, if that is not this one: a flooding client loses
        its own requests, never the others'.
        """
        q = p.queues.get(job.client)
        mine = 0 if q is None else len(q)
        if mine >= self.client_queue:
            return "client queue full"
        if p.queued >= self.max_queue:
            hog = max(p.queues.values(), key=len)
            if len(hog) <= mine + 1:
                return "service queue full"
            victim = hog.pop()  # its newest (the queue keeps at least one: len > 1)
            p.queued -= 1
            self.codec.drop_job(victim, "service queue full: the longest client's newest")
        p.push(job)
        self.dispatch(p)
        return None

    def dispatch(self, p: Pool) -> None:
        """Hand queued requests to idle workers, LRU first; skip and forget unreachable ones."""
        if not (p.queued and p.idle):
            self.tidy(p)
            return
        now = time.monotonic()
        unsure: list[bytes] | None = None
        while p.queued and p.idle:
            wid, _ = p.idle.popitem(last=False)
            w = self.workers[wid]
            if not w.confirmed and now - w.seen > self.unconfirmed:
                if unsure is None:
                    unsure = []
                unsure.append(wid)  # a READY and silence since: maybe a ghost
                continue
            job = p.pop()
            if p.timeout is not None and now - job.at > p.timeout:
                self._stale(job)
                p.idle[wid] = None  # the worker stays first in line
                p.idle.move_to_end(wid, last=False)
                continue
            outcome = self.codec.send_request(w, job)
            if outcome == SENT:
                w.job, w.seen, w.beats_job, w.replayed, w.partials = job, now, 0, 0, []
                continue
            p.push(job, front=True)  # to the next worker
            self._lose(w, "full" if outcome == FULL else "unreachable")
        for wid in reversed(unsure or ()):  # back in their LRU places, first in line
            p.idle[wid] = None
            p.idle.move_to_end(wid, last=False)
        self.tidy(p)

    def _stale(self, job: Job) -> None:
        self.counts["requests timed out"] += 1
        self.codec.drop_job(job, "request timed out waiting for a worker")

    # -- workers ------------------------------------------------------------
    def ready(self, wid: bytes, p: Pool, version: int = 0) -> Worker:
        """Register a new worker of pool ``p`` and give it work."""
        self._expired.pop(wid, None)
        w = self.workers[wid] = Worker(wid, p.name, version, time.monotonic())
        p.workers.add(wid)
        p.idle[wid] = None
        self.dispatch(p)
        return w

    def heard(self, wid: bytes, beat: bool = False) -> Worker | None:
        """A message from ``wid`` (``beat``: a heartbeat); its worker, or None if unknown.

        An expired worker is taken back here.
        """
        w = self.workers.get(wid)
        if w is None:
            w = self._revive(wid)
            if w is None:
                return None
        w.seen = time.monotonic()
        if not w.confirmed:
            w.confirmed = True
            p = self.pools.get(w.service)
            if w.job is None and p is not None and p.queued:
                self.dispatch(p)  # it may have been passed over as a ghost
        if beat and w.job is not None:
            w.beats_job += 1
            if w.beats_job >= 2 and not w.beats_busy:
                w.beats_busy = True
                # once per worker: from now on it is expired like an idle one
                self.log.info(f"{self.prefix}.worker_beats_busy", worker=wid.hex())
        return w

    def _revive(self, wid: bytes) -> Worker | None:
        w = self._expired.pop(wid, None)
        if w is None:
            return None
        p = self.pool(w.service)
        if p is None:
            return None
        self.workers[wid] = w
        p.workers.add(wid)
        self.counts["workers back"] += 1
        # it keeps its request if no other worker took it meanwhile
        kept = w.job is not None and p.remove(w.job)
        if not kept:
            w.job, w.partials = None, []
            p.idle[wid] = None
        self.log.info(f"{self.prefix}.worker_back", worker=wid.hex(), kept_request=kept)
        if not kept:
            self.dispatch(p)
        return w

    def answer(self, wid: bytes, client: bytes) -> Worker | str:
        """The worker answering ``client``'s request, or why the reply is refused."""
        w = self.heard(wid)
        if w is None:
            return "reply from an unknown worker"
        if w.job is None or w.job.client != client:
            return "reply to no request of this worker"
        return w

    def done(self, w: Worker) -> None:
        """``w`` answered its request: idle again, next request if any."""
        if self.latency is not None and w.job is not None:
            self.latency.observe(time.monotonic() - w.job.at)
        w.job, w.partials = None, []
        p = self.pools.get(w.service)
        if p is not None:
            p.idle[w.id] = None
            self.dispatch(p)

    def forget(self, wid: bytes, why: str, *, tell: bool = False) -> bool:
        """Drop worker ``wid`` (its request goes back to the queue); False if unknown."""
        w = self.workers.get(wid)
        if w is None:
            return False
        p = self._lose(w, why, tell=tell)
        if p is not None:
            self.dispatch(p)
        return True

    def _lose(self, w: Worker, why: str, *, tell: bool = False) -> Pool | None:
        del self.workers[w.id]
        p = self.pools.get(w.service)
        job = w.job
        if p is not None:
            p.idle.pop(w.id, None)
            p.workers.discard(w.id)
            if job is not None:
                p.push(job, front=True)
                self.counts["requeued"] += 1
        if why == "expired":
            self._expired[w.id] = w  # keeps its job: taken back if it answers first
            while len(self._expired) > self._remember:
                self._expired.popitem(last=False)
        else:
            w.job = None
        if tell:
            self.codec.send_disconnect(w)
        self.counts[f"workers {why}"] += 1
        fields: dict[str, Any] = {"worker": w.id.hex(), "why": why}
        if self.service_key is not None:
            fields[self.service_key] = w.service.decode(errors="replace")
        left = why == "left"
        log = self.log.info if left else self.log.warning
        log(
            f"{self.prefix}.worker_left" if left else f"{self.prefix}.worker_lost",
            requeued=job is not None,
            lost_request=job is not None and p is None,
            **fields,
        )
        return p

    def loop(
        self,
        poller: GreenPoller,
        sources: Sequence[Source],
        stopping: Any,
        drain_timeout: float,
        *,
        batch: int,
        in_flight: Callable[[], int],
        on_drain: Callable[[], None],
    ) -> None:
        """The router's loop: hand each source's messages to its handler, tick every heartbeat.

        A source is ``(socket, handle, wanted, counters)``: ``handle(frames)``
        takes one whole message; ``wanted(draining)``, if given, says whether
        to read the socket now (one not wanted keeps its messages in libzmq:
        backpressure); ``counters`` (a stats ``SocketCounters``) counts what is
        read. At most ``batch`` messages of one socket in a row.

        Waiting costs one hub switch: the loop parks on ``poller`` (fresh: the
        loop registers the sockets, keeps the watchers armed and closes them
        on the way out), with no ``zmq_poll`` and no re-registration. Before
        it parks it has read every socket's EVENTS after its last operation on
        that socket (rule 3; a send may take a read edge with it), and it
        reads EVENTS only where something may have changed: a socket whose FD
        signalled, one that was read, one the handlers may have sent on (each
        read marks the others). That is two or three EVENTS reads per wake-up,
        where ``zmq_poll`` before and after a wait cost four to six.

        Once ``stopping`` is set, ``on_drain()`` is called once, and the loop
        goes on while ``in_flight()`` and for up to ``drain_timeout`` s.
        """
        hb = self.heartbeat
        next_hb = time.monotonic() + hb
        next_expiry = float("inf")  # no worker yet; the tick says when
        drain_until: float | None = None
        srcs = [(s.raw, handle, wanted, counters) for s, handle, wanted, counters in sources]
        n_src = len(srcs)
        dirty = [True] * n_src
        by_fd = {int(s.getsockopt(zmq.FD)): i for i, (s, _, _, _) in enumerate(sources)}
        found = True
        with ExitStack() as paused:
            for s, _, _, _ in sources:
                poller.register(s, zmq.POLLIN)
                # nobody waits green on these sockets while this loop owns them
                paused.enter_context(s.green_watcher_paused())
            try:
                while True:
                    if stopping.is_set():
                        if drain_until is None:
                            drain_until = time.monotonic() + drain_timeout
                            on_drain()
                        if not in_flight() or time.monotonic() >= drain_until:
                            return
                    draining = drain_until is not None
                    while True in dirty:
                        for i in range(n_src):
                            if not dirty[i]:
                                continue
                            dirty[i] = False
                            raw, handle, wanted, counters = srcs[i]
                            n = nbytes = 0
                            # bytes only while someone reads them (a stats endpoint, metrics)
                            detailed = self._stats is not None and self._stats.detailed
                            # EVENTS after the handler: its sends may take a read edge
                            while _get(raw, _EVENTS) & _POLLIN:
                                if wanted is not None and not wanted(draining):
                                    break  # stays in libzmq; read again once wanted
                                if n == batch:
                                    dirty[i] = True  # the others' turn first
                                    break
                                m = _recv_msg(raw)
                                if detailed:
                                    nbytes += sum(map(len, m))
                                handle(m)
                                n += 1
                            if n:
                                counters.add_in(n, nbytes)
                                found = True
                                for j in range(n_src):  # they may have sent on any socket
                                    if j != i:
                                        dirty[j] = True
                    now = time.monotonic()
                    if now >= next_hb:
                        next_hb = now + hb
                        next_expiry = self.tick(now)
                        dirty = [True] * n_src  # it sent: read EVENTS again before parking
                        continue
                    if now > next_expiry:
                        next_expiry = self.expire(now)
                        dirty = [True] * n_src  # a DISCONNECT may have gone out
                        continue
                    # a worker registered since the tick is due no sooner than a tick away
                    wake_at = min(next_hb, next_expiry)
                    if drain_until is not None:
                        wake_at = min(wake_at, drain_until)
                    fired = poller.wait(wake_at - now, found=found)
                    found = False
                    if not fired:
                        dirty = [True] * n_src  # a timer or a wake(): look at everything
                    for fd in fired:
                        dirty[by_fd[fd]] = True
            finally:
                poller.close_watchers()

    def tick(self, now: float) -> float:
        """Expire silent workers, heartbeat the others, drop stale requests (every heartbeat).

        Returns when the next worker would expire if it stays silent (see :meth:`expire`).
        """
        for p in list(self.pools.values()):
            stale = p.stale(now)
            for job in stale:
                self._stale(job)
            if stale:
                self.tidy(p)
        next_expiry = self.expire(now)
        for w in list(self.workers.values()):
            if self.codec.send_heartbeat(w) == GONE:
                self.forget(w.id, "unreachable")
        return next_expiry

    def expire(self, now: float) -> float:
        """Forget the workers silent past their limit; when the next one would be.

        The loop calls it at that time too, not only on the heartbeat tick: a
        dead worker is noticed ``liveness`` intervals after its last message,
        not up to one interval later.
        """
        soonest = float("inf")
        for w in list(self.workers.values()):
            limit = self.patience if w.job is None or w.beats_busy else self.busy_timeout
            due = w.seen + limit
            if now > due:
                self.forget(w.id, "expired", tell=self.tell_expired)
            elif due < soonest:
                soonest = due
        return soonest
