"""Majordomo: greenzmq's broker with majortomo's client and worker, greenzmq's client and
worker with majortomo's broker, MDP/0.1 and 0.2 side by side, mmi.service, expiry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import zmq

# majortomo is a declared test dependency (setup.py "test" extra): a missing
# one must fail the suite, not skip the interop tests silently.
from majortomo import Client as MajortomoClient

from greenzmq.patterns.mdp import (
    C_CLIENT01,
    C_CLIENT02,
    W_WORKER02,
    MDPClient,
    MDPWorkerService,
)

from .helpers import ROOT, ServiceProcess

HB = 0.2
BROKER = f"services.majordomo:make(heartbeat={HB})"

# majortomo's own worker: squares, and sends a PARTIAL first when asked for "p<N>"
MAJORTOMO_WORKER = """
import sys
from majortomo import Worker, WorkerRequestsIterator
it = WorkerRequestsIterator(Worker(sys.argv[1], b"square", heartbeat_interval=0.2,
                                   heartbeat_timeout=3.0))
for req in it:
    text = req[0].decode()
    if text.startswith("p"):
        it.send_reply_partial([b"partial"])
        text = text[1:]
    it.send_reply_final([str(int(text) ** 2).encode()])
"""

# majortomo's worker for service "slow": one second per request
SLOW_WORKER = """
import sys, time
from majortomo import Worker, WorkerRequestsIterator
it = WorkerRequestsIterator(Worker(sys.argv[1], b"slow", heartbeat_interval=0.2))
for req in it:
    time.sleep(1.0)
    it.send_reply_final([b"done " + req[0]])
"""

MAJORTOMO_BROKER = """
import sys
from majortomo.broker import Broker
Broker(bind=sys.argv[1], heartbeat_interval=0.2, heartbeat_timeout=3.0).run()
"""


@pytest.fixture
def python() -> Iterator[Any]:
    """Start ``python -c SCRIPT ARGS`` processes; all are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(script: str, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def start_broker(service: Any, ep: str) -> ServiceProcess:
    b: ServiceProcess = service(BROKER, "--endpoint", f"broker={ep}")
    b.wait_started()
    return b


def mdp_worker(service: Any, ep: str, version: str) -> ServiceProcess:
    w: ServiceProcess = service(
        f"services.majordomo:worker(version={version!r}, heartbeat={HB})",
        "--endpoint",
        f"broker={ep}",
    )
    return w


def ready(b: ServiceProcess, n: int) -> None:
    from .helpers import wait_for

    wait_for(lambda: len(b.events("mdp.worker_ready")) >= n, 15, f"{n} MDP workers ready")


class TestWithMajortomo:
    def test_majortomo_client_and_worker_on_greenzmq_broker(
        self, service: Any, endpoint: Any, python: Any
    ) -> None:
        """majortomo's Client and Worker talk MDP/0.2 through greenzmq's broker, PARTIAL too."""
        ep = endpoint()
        b = start_broker(service, ep)
        python(MAJORTOMO_WORKER, ep)
        ready(b, 1)
        with MajortomoClient(ep) as c:
            for i in (3, 4):
                c.send(b"square", str(i).encode())
                assert c.recv_all_as_list(timeout=5) == [str(i * i).encode()]
            c.send(b"square", b"p5")
            assert list(c.recv_all(timeout=5)) == [[b"partial"], [b"25"]]
            c.send(b"mmi.service", b"square")
            assert c.recv_all_as_list(timeout=5) == [b"200"]

    def test_greenzmq_client_and_worker_on_majortomo_broker(
        self, endpoint: Any, python: Any, ctx: Any
    ) -> None:
        """greenzmq's MDP/0.2 client and worker talk through majortomo's broker."""
        ep = endpoint()
        python(MAJORTOMO_BROKER, ep)
        app = MDPWorkerService(
            "echo", lambda body: [b"echo:", *body], endpoint=ep, heartbeat=HB, reconnect=0.2
        )
        g = gevent.spawn(app.serve, install_signals=False)
        with MDPClient(ep, timeout=1.0, retries=10, ctx=ctx) as c:
            assert c.request("echo", b"a", b"b") == [b"echo:", b"a", b"b"]
            assert c.request(b"echo", b"") == [b"echo:", b""]
        app.stop()
        assert g.get(timeout=10) == 0
        assert app.requests == 2


class TestVersions:
    def test_both_versions_one_socket(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """0.1 and 0.2 clients are served by 0.1 and 0.2 workers of one service, translated."""
        ep = endpoint()
        b = start_broker(service, ep)
        w1 = mdp_worker(service, ep, "0.1")
        ready(b, 1)
        with (
            MDPClient(ep, version="0.1", timeout=2, retries=1, ctx=ctx) as c1,
            MDPClient(ep, version="0.2", timeout=2, retries=1, ctx=ctx) as c2,
        ):
            assert c1.request("square", b"6") == [b"36"]  # 0.1 -> 0.1
            assert c2.request("square", b"7") == [b"49"]  # 0.2 -> 0.1
            w1.signal(15)
            b.wait_event("mdp.worker_left")
            mdp_worker(service, ep, "0.2")
            ready(b, 2)
            assert c1.request("square", b"8") == [b"64"]  # 0.1 -> 0.2
            assert c2.request("square", b"9") == [b"81"]  # 0.2 -> 0.2
        versions = {e["version"] for e in b.events("mdp.worker_ready")}
        assert versions == {"0.1", "0.2"}

    def test_partial_to_an_old_client(
        self, service: Any, endpoint: Any, python: Any, ctx: Any
    ) -> None:
        """A 0.2 worker's PARTIAL + FINAL reach a 0.1 client as one reply."""
        ep = endpoint()
        b = start_broker(service, ep)
        python(MAJORTOMO_WORKER, ep)
        ready(b, 1)
        with MDPClient(ep, version=1, timeout=3, retries=1, ctx=ctx) as c:
            assert c.request("square", b"p3") == [b"partial", b"9"]

    def test_raw_frames(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """The exact reply frames: 0.1 carries the service name, 0.2 (majortomo) does not."""
        ep = endpoint()
        b = start_broker(service, ep)
        s = ctx.socket(zmq.DEALER)
        s.connect(ep)
        with gevent.Timeout(5):
            s.send_multipart([b"", C_CLIENT01, b"mmi.service", b"nope"])
            assert s.recv_multipart() == [b"", C_CLIENT01, b"mmi.service", b"404"]
            s.send_multipart([b"", C_CLIENT02, b"\x02", b"mmi.service", b"nope"])
            assert s.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"404"]
            s.send_multipart([b"", C_CLIENT02, b"\x02", b"mmi.other", b"x"])
            assert s.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"501"]
        s.close(linger=0)
        assert not b.events("hop", op="drop")

    def test_client_bad_settings(self) -> None:
        """A client with a zero timeout, no tries or an unknown version is refused up front."""
        with pytest.raises(ValueError, match="timeout"):
            MDPClient("tcp://127.0.0.1:1", timeout=0)
        with pytest.raises(ValueError, match="retries"):
            MDPClient("tcp://127.0.0.1:1", retries=0)
        with pytest.raises(ValueError, match="version"):
            MDPClient("tcp://127.0.0.1:1", version="0.3")


class TestWorkers:
    def test_silent_worker_expires(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A worker silent for 3 intervals is dropped, told DISCONNECT, and mmi says 404."""
        ep = endpoint()
        b = start_broker(service, ep)
        mute = ctx.socket(zmq.DEALER)
        mute.connect(ep)
        mute.send_multipart([b"", W_WORKER02, b"\x01", b"mute"])
        got = b.wait_event("mdp.worker_ready")
        lost = b.wait_event("mdp.worker_lost", why="expired")
        took = lost["timestamp"] - got["timestamp"]
        print(f"silent MDP worker expired after {took:.3f} s (3 x {HB} s)")
        assert took >= 3 * HB * 0.9
        with gevent.Timeout(5):
            while (m := mute.recv_multipart())[2] == b"\x05":
                pass  # heartbeats until then
        assert m == [b"", W_WORKER02, b"\x06"]
        with MDPClient(ep, timeout=2, retries=1, ctx=ctx) as c:
            assert c.request("mmi.service", b"mute") == [b"404"]
        mute.close(linger=0)

    def test_unregistered_worker_is_told_to_go(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A heartbeat from an unknown worker is a logged drop and gets DISCONNECT."""
        ep = endpoint()
        b = start_broker(service, ep)
        s = ctx.socket(zmq.DEALER)
        s.connect(ep)
        s.send_multipart([b"", W_WORKER02, b"\x05"])
        with gevent.Timeout(5):
            assert s.recv_multipart() == [b"", W_WORKER02, b"\x06"]
        drop = b.wait_event("hop", op="drop")
        assert drop["reason"] == "command from an unregistered worker"
        s.close(linger=0)

    def test_request_waits_for_a_worker_and_sigterm_leaves(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A request for a service with no worker yet is held until one comes; SIGTERM leaves."""
        ep = endpoint()
        b = start_broker(service, ep)
        s = ctx.socket(zmq.DEALER)
        s.connect(ep)
        s.send_multipart([b"", C_CLIENT02, b"\x02", b"square", b"11"])
        w = mdp_worker(service, ep, "0.2")
        with gevent.Timeout(10):
            assert s.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"121"]
        w.signal(15)
        assert w.wait(10) == 0
        assert b.wait_event("mdp.worker_left")["lost_request"] is False
        s.close(linger=0)


class TestFaults:
    def test_worker_sigkilled_nothing_lost(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """100 requests to two workers (0.1 and 0.2); one SIGKILLed at 30: all answered."""
        ep = endpoint()
        b = start_broker(service, ep)
        doomed = mdp_worker(service, ep, "0.1")
        mdp_worker(service, ep, "0.2")
        ready(b, 2)
        killed_at = 0.0
        with MDPClient(ep, timeout=1.0, retries=5, ctx=ctx) as c:
            for i in range(1, 101):
                assert c.request("square", str(i).encode()) == [str(i * i).encode()]
                if i == 30:
                    killed_at = time.time()
                    os.killpg(doomed.pid, signal.SIGKILL)
            resent = c.resent
        lost = b.wait_event("mdp.worker_lost")
        print(
            f"MDP: 100/100 answered, {resent} resent; SIGKILLed worker dropped after "
            f"{lost['timestamp'] - killed_at:.3f} s ({lost['why']})"
        )
        assert lost["why"] in ("unreachable", "expired")
        with MDPClient(ep, timeout=2, retries=1, ctx=ctx) as c:
            assert c.request("mmi.service", b"square") == [b"200"]  # the other one is there

    def test_broker_sigterm_forwards_replies_in_flight(
        self, service: Any, endpoint: Any, python: Any, ctx: Any
    ) -> None:
        """A broker SIGTERMed while a worker holds a request forwards its reply, then exits 0."""
        ep = endpoint()
        b = start_broker(service, ep)
        python(SLOW_WORKER, ep)
        ready(b, 1)
        s = ctx.socket(zmq.DEALER)
        try:
            s.connect(ep)
            s.send_multipart([b"", C_CLIENT02, b"\x02", b"slow", b"x"])
            b.wait_event("hop", op="dispatch")  # the request went to the worker
            b.signal(signal.SIGTERM)
            with gevent.Timeout(15):  # a hang deadline, generous for a loaded machine
                assert s.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"done x"]
            assert b.wait(15) == 0
            assert b.wait_event("mdp.draining")["busy"] == 1
        finally:
            s.close(linger=0)


class TestNothingLost:
    def test_request_handed_with_last_reply_survives_disconnect(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A worker leaving right after its reply: the request handed to it goes to the next."""
        ep = endpoint()
        b = start_broker(service, ep)
        socks = [ctx.socket(zmq.DEALER) for _ in range(4)]
        leaving, second, a, c = socks
        for s in socks:
            s.connect(ep)
        try:
            leaving.send_multipart([b"", W_WORKER02, b"\x01", b"svc"])
            ready(b, 1)
            with gevent.Timeout(5):
                a.send_multipart([b"", C_CLIENT02, b"\x02", b"svc", b"one"])
                while (m := leaving.recv_multipart())[2] != b"\x02":
                    pass  # heartbeats
                # c's request waits in the broker: the mmi answer behind it on the same
                # pipe says the broker has read it
                c.send_multipart([b"", C_CLIENT02, b"\x02", b"svc", b"two"])
                c.send_multipart([b"", C_CLIENT02, b"\x02", b"mmi.service", b"svc"])
                assert c.recv_multipart()[-1] == b"200"
                # the last reply and the goodbye, back to back: "two" is handed over between
                leaving.send_multipart([b"", W_WORKER02, b"\x04", m[3], b"", b"ONE"])
                leaving.send_multipart([b"", W_WORKER02, b"\x06"])
                assert a.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"ONE"]
            b.wait_event("mdp.worker_left")
            second.send_multipart([b"", W_WORKER02, b"\x01", b"svc"])
            with gevent.Timeout(5):
                while (m := second.recv_multipart())[2] != b"\x02":
                    pass
                assert m[-1] == b"two"
                second.send_multipart([b"", W_WORKER02, b"\x04", m[3], b"", b"TWO"])
                assert c.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"TWO"]
        finally:
            for s in socks:
                s.close(linger=0)

    def test_partials_are_not_repeated_when_another_worker_takes_over(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """MDP/0.2: a worker leaves mid-stream; its successor's replay of the partials the
        client already has is not forwarded again: each partial once, in order, then FINAL."""
        ep = endpoint()
        b = start_broker(service, ep)
        socks = [ctx.socket(zmq.DEALER) for _ in range(3)]
        first, second, client = socks
        for s in socks:
            s.connect(ep)

        def request(w: Any) -> list[bytes]:
            while (m := w.recv_multipart())[2] != b"\x02":
                pass  # heartbeats
            return m

        try:
            first.send_multipart([b"", W_WORKER02, b"\x01", b"svc"])
            ready(b, 1)
            with gevent.Timeout(5):
                client.send_multipart([b"", C_CLIENT02, b"\x02", b"svc", b"count"])
                m = request(first)
                first.send_multipart([b"", W_WORKER02, b"\x03", m[3], b"", b"one"])
                assert client.recv_multipart() == [b"", C_CLIENT02, b"\x03", b"one"]
                first.send_multipart([b"", W_WORKER02, b"\x06"])  # gone mid-stream
            b.wait_event("mdp.worker_left")
            second.send_multipart([b"", W_WORKER02, b"\x01", b"svc"])
            with gevent.Timeout(5):
                m = request(second)
                assert m[-1] == b"count"
                for part in (b"one", b"two"):  # the handler runs again from the start
                    second.send_multipart([b"", W_WORKER02, b"\x03", m[3], b"", part])
                second.send_multipart([b"", W_WORKER02, b"\x04", m[3], b"", b"done"])
                assert client.recv_multipart() == [b"", C_CLIENT02, b"\x03", b"two"]
                assert client.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"done"]
            assert client.poll(200) == 0
        finally:
            for s in socks:
                s.close(linger=0)

    def test_stale_request_is_not_run(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """``request_timeout``: a request that waited too long for a worker is dropped with its
        reason, never handed to the worker that turns up later; a fresh one is served."""
        ep = endpoint()
        b: ServiceProcess = service(
            f"services.majordomo:make(heartbeat={HB}, request_timeout=0.5)",
            "--endpoint",
            f"broker={ep}",
        )
        b.wait_started()
        worker, client = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for s in (worker, client):
            s.connect(ep)
        try:
            client.send_multipart([b"", C_CLIENT02, b"\x02", b"svc", b"stale"])
            b.wait_event("hop", op="drop", reason="request timed out waiting for a worker")
            worker.send_multipart([b"", W_WORKER02, b"\x01", b"svc"])
            ready(b, 1)
            client.send_multipart([b"", C_CLIENT02, b"\x02", b"svc", b"fresh"])
            with gevent.Timeout(5):
                while (m := worker.recv_multipart())[2] != b"\x02":
                    pass  # heartbeats
            assert m[-1] == b"fresh"
        finally:
            for s in (worker, client):
                s.close(linger=0)

    @pytest.mark.deadline(60)
    def test_hung_busy_worker_is_expired_and_its_request_answered(
        self, service: Any, endpoint: Any, ctx: Any
    ) -> None:
        """A SIGSTOPped worker that heartbeats while busy is expired in 3 intervals, not 900 s."""
        ep = endpoint()
        b = start_broker(service, ep)  # busy_timeout 900 s
        hung = service(f"tests.engine_apps:mdp_slow(service='square', heartbeat={HB})",
                       "--endpoint", f"broker={ep}")  # fmt: skip
        ready(b, 1)
        client = ctx.socket(zmq.DEALER)
        client.connect(ep)
        try:
            client.send_multipart([b"", C_CLIENT02, b"\x02", b"square", b"7"])
            hung.wait_event("hop", op="recv")  # it holds the request
            # and heartbeats while busy: the broker noted it (liveness applies from now on)
            b.wait_event("mdp.worker_beats_busy")
            os.killpg(hung.pid, signal.SIGSTOP)
            stopped = time.time()
            mdp_worker(service, ep, "0.2")
            with gevent.Timeout(15):
                assert client.recv_multipart() == [b"", C_CLIENT02, b"\x04", b"49"]
            lost = b.wait_event("mdp.worker_lost", why="expired")
            print(f"hung busy worker expired {lost['timestamp'] - stopped:.3f} s after SIGSTOP")
            assert lost["requeued"] is True
        finally:
            os.killpg(hung.pid, signal.SIGKILL)
            client.close(linger=0)


class TestFairness:
    @pytest.mark.deadline(60)
    def test_flooding_client_does_not_starve_others(self, endpoint: Any, ctx: Any) -> None:
        """One client floods a 100-slot service queue; another's requests are all answered."""
        from greenzmq.patterns.mdp import MDPBroker

        from .helpers import green_wait_for

        ep = endpoint()
        broker = MDPBroker(heartbeat=HB, max_queue=100)
        bg = gevent.spawn(broker.serve, {"broker": ep, "kill": endpoint()}, install_signals=False)

        def handler(body: list[bytes]) -> list[bytes]:
            gevent.sleep(0.002)
            return [body[0] + b"!"]

        worker = MDPWorkerService("svc", handler, endpoint=ep, heartbeat=HB)
        wg = gevent.spawn(worker.serve, {"kill": endpoint()}, install_signals=False)
        flooding = True
        flooded = [0]

        def flood() -> None:
            """Keep the service queue full for as long as the good client runs."""
            s = ctx.socket(zmq.DEALER)
            s.connect(ep)
            try:
                while flooding:
                    for _ in range(100):
                        s.send_multipart([b"", C_CLIENT02, b"\x02", b"svc", b"flood"])
                    flooded[0] += 100
                    gevent.sleep(0.001)
            finally:
                s.close(linger=0)

        fg = gevent.spawn(flood)
        try:
            green_wait_for(lambda: broker.drops, 10, "the flood over the queue dropped")
            with MDPClient(ep, timeout=5, retries=1, ctx=ctx) as good:
                for i in range(20):
                    assert good.request("svc", b"good%d" % i) == [b"good%d!" % i]
            print(f"flooded {flooded[0]}, dropped {dict(broker.drops)}")
        finally:
            flooding = False
            fg.get(timeout=10)
            worker.stop()
            assert wg.get(timeout=10) == 0
            broker.stop()
            assert bg.get(timeout=10) == 0
