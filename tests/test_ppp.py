"""Paranoid Pirate: the queue's routing and expiry, the worker API, and nothing lost under faults.

Heartbeat intervals are short (0.2 s) so dead workers are found within a second.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import gevent
import pytest
import zmq

from greenzmq import SocketSpec
from greenzmq.patterns.lazypirate import LazyPirate
from greenzmq.patterns.ppp import DISCONNECT, HEARTBEAT, READY, PPPWorker, PPPWorkerService

from .helpers import ServiceProcess, wait_for

HB = 0.2
QUEUE = f"services.ppqueue:make(heartbeat={HB})"
WORKER = f"services.ppworker:app(heartbeat={HB}, reconnect=0.2)"


def start_queue(service: Any, fe: str, be: str) -> ServiceProcess:
    q: ServiceProcess = service(
        QUEUE, "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}"
    )
    q.wait_started()
    return q


def sigkill(p: ServiceProcess) -> None:
    """SIGKILL the whole process group: the launcher's master and the serving process."""
    os.killpg(p.pid, signal.SIGKILL)


def ready_workers(q: ServiceProcess, n: int) -> None:
    wait_for(lambda: len(q.events("ppqueue.worker_ready")) >= n, 15, f"{n} workers ready")


class FakeWorker:
    """A raw DEALER speaking PPP by hand, to see exactly what the queue sends."""

    def __init__(self, ctx: Any, be: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.connect(be)
        self.sock.send(READY)

    def next_request(self, timeout: float = 5.0) -> tuple[list[bytes], int]:
        """The next request, answering heartbeats; also how many heartbeats came before it."""
        beats = 0
        with gevent.Timeout(timeout):
            while True:
                m = self.sock.recv_multipart()
                if m == [HEARTBEAT]:
                    beats += 1
                    self.sock.send(HEARTBEAT)
                    continue
                return m, beats

    def beats_without_request(self, n: int, timeout: float = 5.0) -> None:
        """Answer ``n`` heartbeats; fail if a request comes meanwhile."""
        self.sock.claim()  # runs in its own greenlet: the test handed the socket over
        with gevent.Timeout(timeout):
            for _ in range(n):
                m = self.sock.recv_multipart()
                assert m == [HEARTBEAT], f"busy worker was sent {m!r}"
                self.sock.send(HEARTBEAT)


class TestQueue:
    def test_lru_idle_only_and_heartbeats(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """Requests go to the longest-idle worker, never to a busy one; heartbeats flow."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        a = FakeWorker(ctx, be)
        ready_workers(q, 1)
        b = FakeWorker(ctx, be)
        ready_workers(q, 2)
        clients = [ctx.socket(zmq.REQ) for _ in range(3)]
        for c in clients:
            c.connect(fe)
        # one at a time: three connections' requests may reach the queue in any order
        clients[0].send(b"r0")
        ra, _ = a.next_request()
        clients[1].send(b"r1")
        rb, _ = b.next_request()
        clients[2].send(b"r2")
        assert (ra[-1], rb[-1]) == (b"r0", b"r1")  # A was idle first
        # both busy: r2 waits in the queue; both answer heartbeats at once, so neither expires
        both = []
        for w in (a, b):
            g = gevent.spawn(w.beats_without_request, 3)
            w.sock.hand_over(g)  # claim() never takes a socket from a live owner
            both.append(g)
        gevent.joinall(both, raise_error=True)
        a.sock.send_multipart([*ra[:-1], b"done0"])
        ra2, _ = a.next_request()  # A is idle again, and first in line
        assert ra2[-1] == b"r2"
        with gevent.Timeout(5):
            assert clients[0].recv() == b"done0"
        for s in (*clients, a.sock, b.sock):
            s.close(linger=0)

    def test_silent_worker_expires(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A worker silent for 3 intervals is dropped; its socket stays open."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        mute = ctx.socket(zmq.DEALER)
        mute.connect(be)
        mute.send(READY)
        ready = q.wait_event("ppqueue.worker_ready")
        lost = q.wait_event("ppqueue.worker_lost", timeout=5, why="expired")
        took = lost["timestamp"] - ready["timestamp"]
        print(f"silent worker expired after {took:.3f} s (3 x {HB} s)")
        assert took >= 3 * HB * 0.9
        mute.close(linger=0)

    def test_disconnect_is_acknowledged(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """DISCONNECT (the greenzmq extension) removes the worker and is acknowledged."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        w = FakeWorker(ctx, be)
        ready_workers(q, 1)
        w.sock.send(DISCONNECT)
        with gevent.Timeout(5):
            while (m := w.sock.recv_multipart()) == [HEARTBEAT]:
                pass
        assert m == [DISCONNECT]
        q.wait_event("ppqueue.worker_left")
        w.sock.close(linger=0)


class TestWorkerAPI:
    def test_worker_in_a_few_lines(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A PPPWorkerService from a lambda serves through the queue and leaves cleanly."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        app = PPPWorkerService(lambda body: [body[0].upper()], endpoint=be, heartbeat=HB)
        g = gevent.spawn(app.serve, install_signals=False)
        with LazyPirate(fe, timeout=2, retries=3, ctx=ctx) as c:
            assert c.request(b"abc") == [b"ABC"]
            assert c.request([b"x", b"y"]) == [b"X"]
        app.stop()
        assert g.get(timeout=10) == 0
        q.wait_event("ppqueue.worker_left")
        assert app.requests == 2

    def test_handler_error_and_slow_handler(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A failing handler sends an error reply; a slow one keeps heartbeating and lives."""

        def handler(body: list[bytes]) -> list[bytes]:
            if body[0] == b"boom":
                raise ZeroDivisionError
            gevent.sleep(float(body[0]))  # longer than 3 heartbeat intervals
            return [b"slept"]

        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        app = PPPWorkerService(handler, endpoint=be, heartbeat=HB)
        g = gevent.spawn(app.serve, install_signals=False)
        with LazyPirate(fe, timeout=5, retries=1, ctx=ctx) as c:
            assert c.request(b"boom") == [b"error: ZeroDivisionError"]
            assert c.request(str(5 * HB).encode()) == [b"slept"]
        assert not q.events("ppqueue.worker_lost")
        app.stop()
        assert g.get(timeout=10) == 0


class TestReconnect:
    def test_backoff_doubles_on_fresh_sockets(self, ctx: Any, endpoint: Any) -> None:
        """With no queue, the worker reconnects on a fresh socket each time, backoff doubling."""
        from structlog.testing import capture_logs

        spec = SocketSpec("backend", "DEALER", connect=(endpoint(),))
        socks: list[Any] = []
        with capture_logs() as logs:
            w = PPPWorker(
                ctx,
                spec,
                lambda body: body,
                heartbeat=0.05,
                liveness=2,
                reconnect=0.05,
                reconnect_max=0.2,
                on_socket=socks.append,
            )
            g = gevent.spawn(w.run)
            with gevent.Timeout(20):
                while w.reconnects < 5:
                    gevent.sleep(0.05)
            w.stop()
            g.get(timeout=5)
        waits = [e["reconnect_in"] for e in logs if e["event"] == "worker.peer_lost"]
        assert waits[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]
        assert len({id(s) for s in socks}) == len(socks) >= 6
        assert all(s.closed for s in socks[:-1])
        socks[-1].close(linger=0)


def run_200(c: LazyPirate, at: dict[int, Any]) -> list[float]:
    """Send 1..200, check every square, call ``at[i]()`` after request i; per-request latency."""
    took = []
    for i in range(1, 201):
        t0 = time.monotonic()
        assert c.request(str(i).encode()) == [str(i * i).encode()], f"request {i}"
        took.append(time.monotonic() - t0)
        if i in at:
            at[i]()
    return took


class TestFaults:
    @pytest.mark.deadline(90)
    def test_200_requests_kill_and_term(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """4 workers, one SIGKILLed after 50, one SIGTERMed after 100: all 200 answered."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        workers = [service(WORKER, "--endpoint", f"backend={be}") for _ in range(4)]
        ready_workers(q, 4)
        killed_at: list[float] = []

        def kill() -> None:
            killed_at.append(time.time())
            sigkill(workers[0])

        with LazyPirate(fe, timeout=1.0, retries=5, ctx=ctx) as c:
            took = run_200(c, {50: kill, 100: lambda: workers[1].signal(signal.SIGTERM)})
            resent = c.resent
        assert workers[1].wait(10) == 0
        assert workers[1].events("worker.done")
        lost = q.wait_event("ppqueue.worker_lost")
        print(
            f"200/200 answered, {resent} resent, slowest {max(took):.3f} s; "
            f"SIGKILLed worker dropped after {lost['timestamp'] - killed_at[0]:.3f} s "
            f"({lost['why']})"
        )
        q.wait_event("ppqueue.worker_left")

    @pytest.mark.deadline(90)
    def test_200_requests_queue_restart(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """The queue is SIGKILLed and restarted after request 100: all 200 answered."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        workers = [service(WORKER, "--endpoint", f"backend={be}") for _ in range(4)]
        ready_workers(q, 4)
        restarted: list[ServiceProcess] = []

        def restart() -> None:
            sigkill(q)
            q.wait()
            restarted.append(start_queue(service, fe, be))

        with LazyPirate(fe, timeout=1.0, retries=10, ctx=ctx) as c:
            took = run_200(c, {100: restart})
        ready_workers(restarted[0], 4)  # every worker found the new queue
        assert all(w.events("worker.peer_lost") for w in workers)
        print(f"200/200 answered across a queue restart; slowest request {max(took):.3f} s")

    def test_queue_sigterm_forwards_replies_in_flight(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A queue SIGTERMed while a worker holds a request still forwards its reply, exits 0."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        w = service(
            f"services.ppworker:app(heartbeat={HB}, delay=1.0)", "--endpoint", f"backend={be}"
        )
        ready_workers(q, 1)
        req = ctx.socket(zmq.REQ)
        req.connect(fe)
        req.send(b"12")
        w.wait_event("hop", op="recv")
        q.signal(signal.SIGTERM)
        with gevent.Timeout(5):
            assert req.recv() == b"144"
        assert q.wait(10) == 0
        assert q.wait_event("ppqueue.draining")["busy"] == 1
        req.close(linger=0)

    def test_sigterm_with_request_in_flight(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A worker SIGTERMed while handling a request answers it, then exits 0."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        w = service(
            f"services.ppworker:app(heartbeat={HB}, delay=1.0)", "--endpoint", f"backend={be}"
        )
        ready_workers(q, 1)
        req = ctx.socket(zmq.REQ)
        req.connect(fe)
        req.send(b"9")
        recv = w.wait_event("hop", op="recv")  # the worker holds the request
        w.signal(signal.SIGTERM)
        with gevent.Timeout(5):
            assert req.recv() == b"81"
        assert w.wait(10) == 0
        assert w.wait_event("hop", op="send")["reply_to"] == recv["key"]  # trace joins them
        assert w.wait_event("worker.done")["answered"] == 1
        q.wait_event("ppqueue.worker_left")
        req.close(linger=0)


class TestTakenBack:
    def test_expired_worker_that_speaks_again_is_taken_back(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """An expired worker's next heartbeat re-admits it at once (the zguide's ppqueue)."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        w = FakeWorker(ctx, be)
        ready_workers(q, 1)
        q.wait_event("ppqueue.worker_lost", why="expired")  # silent for 3 intervals
        w.sock.send(HEARTBEAT)
        q.wait_event("ppqueue.worker_back")
        req = ctx.socket(zmq.REQ)
        req.connect(fe)
        req.send(b"again")
        m, _ = w.next_request()
        assert m[-1] == b"again"
        w.sock.send_multipart([*m[:-1], b"answered"])
        with gevent.Timeout(5):
            assert req.recv() == b"answered"
        assert not [d for d in q.events("hop", op="drop") if "unknown worker" in d["reason"]]
        for s in (req, w.sock):
            s.close(linger=0)

    @pytest.mark.deadline(60)
    def test_worker_blocking_past_expiry_answers_every_request(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A handler that blocks the hub longer than the expiry: each reply is still taken."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        service(f"tests.engine_apps:ppp_blocking(block={5 * HB}, heartbeat={HB})",
                "--endpoint", f"backend={be}")  # fmt: skip
        ready_workers(q, 1)
        # taken back at once, each request takes about the block (1 s); forgotten, the
        # worker would come back only after 3 silent intervals + its 2 s backoff
        with LazyPirate(fe, timeout=2.0, retries=1, ctx=ctx) as c:
            for i in range(1, 6):
                assert c.request(str(i).encode()) == [str(i * i).encode()]
        assert q.events("ppqueue.worker_lost", why="expired")  # it was expired, and taken back
        assert q.events("ppqueue.worker_back")


class TestForgedReplies:
    def test_reply_only_from_the_worker_holding_the_request(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """Replies forged by an unregistered peer or another worker never reach the client."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        holder = FakeWorker(ctx, be)
        ready_workers(q, 1)
        other = FakeWorker(ctx, be)  # registered, idle
        ready_workers(q, 2)
        stranger = ctx.socket(zmq.DEALER)  # never said READY
        stranger.connect(be)
        req = ctx.socket(zmq.REQ)
        req.connect(fe)
        req.send(b"question")
        m, _ = holder.next_request()
        envelope = m[:-1]  # the client's routing id and the delimiter: guessable
        stranger.send_multipart([*envelope, b"forged by a stranger"])
        other.sock.send_multipart([*envelope, b"forged by another worker"])
        wait_for(lambda: len(q.events("hop", op="drop")) >= 2, 10, "two forged replies dropped")
        holder.sock.send_multipart([*envelope, b"real"])
        with gevent.Timeout(5):
            assert req.recv() == b"real"
        reasons = {d["reason"] for d in q.events("hop", op="drop")}
        assert reasons == {"reply from an unknown worker", "reply to no request of this worker"}
        for s in (req, stranger, holder.sock, other.sock):
            s.close(linger=0)


class TestGhosts:
    def test_old_socket_closed_before_the_backoff(self, ctx: Any, endpoint: Any) -> None:
        """A worker that lost its queue closes the old socket at once, not after the backoff."""
        from .helpers import green_wait_for

        spec = SocketSpec("backend", "DEALER", connect=(endpoint(),))
        socks: list[Any] = []
        w = PPPWorker(ctx, spec, lambda body: body, heartbeat=0.05, liveness=2,
                      reconnect=5.0, on_socket=socks.append)  # fmt: skip
        g = gevent.spawn(w.run)
        try:
            # lost after 0.1 s; the next socket comes 5 s later
            green_wait_for(lambda: socks and socks[0].closed, 3, "old socket closed in the backoff")
            assert len(socks) == 1
        finally:
            w.stop()
            g.get(timeout=5)
            for s in socks:
                s.close(linger=0)

    def test_no_request_to_a_worker_silent_since_its_ready(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A READY not followed by a word within one heartbeat (a ghost's) gets no request."""
        fe, be = endpoint(), endpoint()
        q: ServiceProcess = service(
            f"services.ppqueue:make(heartbeat={HB}, liveness=20)",
            *("--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}"),
        )
        q.wait_started()
        ghost = ctx.socket(zmq.DEALER)
        ghost.connect(be)
        ghost.send(READY)
        ready_workers(q, 1)
        with gevent.Timeout(5):
            for _ in range(2):  # two heartbeats unanswered: its READY is over one interval old
                assert ghost.recv_multipart() == [HEARTBEAT]
        live = FakeWorker(ctx, be)
        ready_workers(q, 2)
        req = ctx.socket(zmq.REQ)
        req.connect(fe)
        req.send(b"for the living")
        try:
            m, _ = live.next_request()  # the ghost is first in LRU order, and skipped
            assert m[-1] == b"for the living"
            live.sock.send_multipart([*m[:-1], b"ok"])
            with gevent.Timeout(5):
                assert req.recv() == b"ok"
        finally:
            for s in (req, ghost, live.sock):
                s.close(linger=0)


class TestHungWorker:
    @pytest.mark.deadline(60)
    def test_sigstopped_busy_worker_request_goes_to_another(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A worker SIGSTOPped while holding a request is expired; another answers the request."""
        fe, be = endpoint(), endpoint()
        q = start_queue(service, fe, be)
        hung = service(f"services.ppworker:app(heartbeat={HB}, delay=30)",
                       "--endpoint", f"backend={be}")  # fmt: skip
        ready_workers(q, 1)
        req = ctx.socket(zmq.REQ)  # no retry: the queue itself must not lose the request
        req.connect(fe)
        try:
            req.send(b"7")
            hung.wait_event("hop", op="recv")  # it holds the request
            os.killpg(hung.pid, signal.SIGSTOP)
            service(WORKER, "--endpoint", f"backend={be}")
            with gevent.Timeout(15):
                assert req.recv() == b"49"
            lost = q.wait_event("ppqueue.worker_lost", why="expired")
            assert lost["requeued"] is True
        finally:
            os.killpg(hung.pid, signal.SIGKILL)
            req.close(linger=0)
