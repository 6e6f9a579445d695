"""The reliable-broker engine on its own: a fake codec records what it would send."""

from __future__ import annotations

import time
from typing import Any

from greenzmq.patterns._engine import Engine, Job, Pool, Worker
from greenzmq.patterns._send import GONE, SENT


class Log:
    """Collects (event, fields) like a structlog logger."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = info


class Codec:
    """Records requests; ``gone`` workers are unreachable."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []  # (worker, client)
        self.gone: set[bytes] = set()
        self.dropped: list[tuple[bytes, str]] = []

    def send_request(self, w: Worker, job: Job) -> int:
        if w.id in self.gone:
            return GONE
        self.requests.append((w.id, job.client))
        return SENT

    def send_heartbeat(self, w: Worker) -> int:
        return GONE if w.id in self.gone else SENT

    def send_disconnect(self, w: Worker) -> None:
        pass

    def drop_job(self, job: Job, reason: str) -> None:
        self.dropped.append((job.client, reason))


def engine(**kw: Any) -> tuple[Engine, Codec, Pool]:
    codec = Codec()
    eng = Engine(codec, Log(), "test", heartbeat=0.1, liveness=3, **kw)
    pool = eng.pool(b"svc")
    assert pool is not None
    return eng, codec, pool


def job(client: bytes) -> Job:
    return Job(client, b"svc", [b"body"])


class TestEngine:
    def test_lru_and_unreachable_skipped(self) -> None:
        """The longest-idle worker first; an unreachable one is forgotten, the next one serves."""
        eng, codec, pool = engine()
        for wid in (b"a", b"b", b"c"):
            eng.ready(wid, pool)
        codec.gone.add(b"a")
        assert eng.submit(pool, job(b"c1")) is None
        assert codec.requests == [(b"b", b"c1")]
        assert b"a" not in eng.workers and eng.counts["workers unreachable"] == 1

    def test_leaving_worker_requeues_its_request(self) -> None:
        """A request held by a worker that leaves goes to the next worker."""
        eng, codec, pool = engine()
        eng.ready(b"a", pool)
        eng.submit(pool, job(b"c1"))
        eng.forget(b"a", "left")
        assert pool.queued == 1
        eng.ready(b"b", pool)
        assert codec.requests == [(b"a", b"c1"), (b"b", b"c1")]

    def test_only_the_holder_may_answer(self) -> None:
        """A reply from another worker, or for another client, is refused with a reason."""
        eng, _, pool = engine()
        eng.ready(b"a", pool)
        eng.ready(b"b", pool)
        eng.submit(pool, job(b"c1"))
        assert eng.answer(b"b", b"c1") == "reply to no request of this worker"
        assert eng.answer(b"x", b"c1") == "reply from an unknown worker"
        assert eng.answer(b"a", b"c2") == "reply to no request of this worker"
        w = eng.answer(b"a", b"c1")
        assert isinstance(w, Worker) and w.id == b"a"

    def test_expired_worker_taken_back_with_its_request(self) -> None:
        """Expired while busy, it answers before anyone took the request: accepted."""
        eng, _, pool = engine()
        eng.ready(b"a", pool)
        eng.submit(pool, job(b"c1"))
        eng.tick(time.monotonic() + 1.0)  # silent for over 3 intervals
        assert b"a" not in eng.workers and pool.queued == 1
        w = eng.answer(b"a", b"c1")
        assert isinstance(w, Worker) and pool.queued == 0
        eng.done(w)
        assert list(pool.idle) == [b"a"]

    def test_hung_busy_worker_that_heartbeats(self) -> None:
        """busy_timeout for a worker silent while busy; liveness once it heartbeats while busy."""
        eng, _, pool = engine(busy_timeout=100.0)
        eng.ready(b"a", pool)
        eng.submit(pool, job(b"c1"))
        eng.tick(time.monotonic() + 1.0)
        assert b"a" in eng.workers  # never heard busy: busy_timeout
        eng.heard(b"a", beat=True)
        eng.heard(b"a", beat=True)
        eng.tick(time.monotonic() + 1.0)
        assert b"a" not in eng.workers and pool.queued == 1

    def test_ghost_ready_passed_over_until_heard(self) -> None:
        """A READY over one heartbeat old and silence since: no request until it speaks."""
        eng, codec, pool = engine()
        eng.ready(b"ghost", pool)
        eng.workers[b"ghost"].seen -= 0.5
        eng.submit(pool, job(b"c1"))
        assert codec.requests == [] and list(pool.idle) == [b"ghost"]
        eng.heard(b"ghost", beat=True)
        assert codec.requests == [(b"ghost", b"c1")]

    def test_fair_queue_and_flood(self) -> None:
        """Clients take turns; a full queue drops the flooder's newest, not a newcomer's."""
        eng, codec, pool = engine(max_queue=4)
        for _ in range(4):
            assert eng.submit(pool, job(b"flood")) is None
        assert eng.submit(pool, job(b"good")) is None
        assert codec.dropped == [(b"flood", "service queue full: the longest client's newest")]
        assert eng.submit(pool, job(b"flood")) == "service queue full"
        eng.ready(b"a", pool)
        w = eng.answer(b"a", b"flood")
        assert isinstance(w, Worker)
        eng.done(w)
        assert [c for _, c in codec.requests] == [b"flood", b"good"]


class TestRequestTimeout:
    def test_stale_requests_are_dropped_on_the_tick(self) -> None:
        """Past ``request_timeout``: dropped on the tick and counted; the fresh one is kept."""
        eng, codec, pool = engine(request_timeout=1.0)
        old, new = job(b"c1"), job(b"c1")
        for j in (old, new):
            assert eng.submit(pool, j) is None  # no worker yet: both wait
        old.at -= 2.0
        eng.tick(time.monotonic())
        assert codec.dropped == [(b"c1", "request timed out waiting for a worker")]
        assert pool.queued == 1 and eng.counts["requests timed out"] == 1
        eng.ready(b"a", pool)
        assert codec.requests == [(b"a", b"c1")] and eng.workers[b"a"].job is new

    def test_stale_request_is_not_run_and_the_worker_stays_first(self) -> None:
        """Found stale at dispatch: dropped, and the worker it would have gone to takes the next."""
        eng, codec, pool = engine(request_timeout=1.0)
        stale, fresh = job(b"c1"), job(b"c2")
        eng.submit(pool, stale)
        stale.at -= 2.0
        eng.ready(b"a", pool)
        assert codec.requests == [] and list(pool.idle) == [b"a"]
        eng.ready(b"b", pool)
        eng.submit(pool, fresh)
        assert codec.requests == [(b"a", b"c2")]  # a still the longest idle

    def test_per_service_timeout(self) -> None:
        """``service_timeouts`` overrides the default per service, None meaning no limit."""
        eng, codec, _ = engine(request_timeout=1.0, service_timeouts={b"batch": None})
        batch = eng.pool(b"batch")
        assert batch is not None and batch.timeout is None
        j = Job(b"c1", b"batch", [b"x"])
        eng.submit(batch, j)
        j.at -= 60.0
        eng.tick(time.monotonic())
        assert codec.dropped == [] and batch.queued == 1
