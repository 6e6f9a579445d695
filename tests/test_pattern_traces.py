"""Traces through the reliable patterns (issue 11, section 4).

LazyPirate, the PPP queue and worker, and the Majordomo client, broker and
worker log their hops, keyed over the body (the application frames), so one
request is one path from the client's send to its receive of the reply; a
retry is a hop with its attempt number, and the queue's receive and dispatch
are separate hops, so the time a request waited for a worker shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from greenzmq import message_key
from greenzmq.core.tracing import body_key
from greenzmq.patterns.lazypirate import LazyPirate
from greenzmq.patterns.mdp import MDPBroker, MDPClient, MDPWorkerService
from greenzmq.patterns.ppp import HEARTBEAT, READY, PPPQueue, PPPWorkerService

from .helpers import ROOT, green_wait_for

# in-process, the client's hops carry the process's service name (the fixture's "test")
PPP_PATH = [
    ("test", "lazypirate", "send"),
    ("ppqueue", "frontend", "recv"),
    ("ppqueue", "backend", "dispatch"),
    ("ppworker", "backend", "recv"),
    ("ppworker", "backend", "send"),
    ("ppqueue", "backend", "recv"),
    ("ppqueue", "frontend", "forward"),
    ("test", "lazypirate", "recv"),
]
MDP_PATH = [
    ("test", "mdpclient", "send"),
    ("majordomo", "broker", "recv"),
    ("majordomo", "broker", "dispatch"),
    ("mdpworker", "broker", "recv"),
    ("mdpworker", "broker", "send"),
    ("majordomo", "broker", "recv"),
    ("majordomo", "broker", "forward"),
    ("test", "mdpclient", "recv"),
]


def upper(body: list[bytes]) -> list[bytes]:
    return [f.upper() for f in body]


def ppp(greenzmq_service: Any, heartbeat: float = 0.5, **queue: Any) -> Any:
    return greenzmq_service(PPPQueue(heartbeat=heartbeat, **queue))


def ppp_worker(greenzmq_service: Any, q: Any, heartbeat: float = 0.5) -> Any:
    be = q.endpoints["backend"]
    return greenzmq_service(PPPWorkerService(upper, endpoint=be, heartbeat=heartbeat))


class TestInProcess:
    @pytest.mark.deadline(60)
    def test_ppp_request_is_one_path(self, greenzmq_service: Any, greenzmq_hops: Any) -> None:
        """Client send, queue recv and dispatch, worker recv and send, queue recv and forward,
        client recv: one path."""
        q = ppp(greenzmq_service)
        ppp_worker(greenzmq_service, q)
        with LazyPirate(q.endpoints["frontend"], timeout=5, retries=1) as c:
            assert c.request([b"abc", b"de"]) == [b"ABC", b"DE"]
        greenzmq_hops.wait(op="recv", service="test")
        assert greenzmq_hops.path([b"abc", b"de"]) == PPP_PATH
        send = greenzmq_hops.events(op="send", service="test")[0]
        assert send["attempt"] == 1 and send["key"] == body_key([b"abc", b"de"])

    @pytest.mark.deadline(60)
    @pytest.mark.parametrize("version", [1, 2])
    def test_mdp_request_is_one_path(
        self, greenzmq_service: Any, greenzmq_hops: Any, version: int
    ) -> None:
        """The same request's hops join across client, broker and worker although every hop's
        protocol frames differ: the key is the body's."""
        b = greenzmq_service(MDPBroker(heartbeat=0.5))
        greenzmq_service(
            MDPWorkerService("up", upper, endpoint=b.endpoints["broker"], version=version,
                             heartbeat=0.5)
        )  # fmt: skip
        with MDPClient(b.endpoints["broker"], version=version, timeout=5, retries=1) as c:
            assert c.request("up", b"abc") == [b"ABC"]
        greenzmq_hops.wait(op="recv", service="test")
        assert greenzmq_hops.path([b"abc"]) == MDP_PATH
        # heartbeats and READY are not hops: only the request and its reply
        keys = {e["key"] for e in greenzmq_hops.events()}
        assert keys == {body_key([b"abc"]), body_key([b"ABC"])}

    @pytest.mark.deadline(60)
    def test_mdp_request_dropped_by_the_broker_ends_its_path(
        self, greenzmq_service: Any, greenzmq_hops: Any, ctx: Any
    ) -> None:
        """A request the broker refuses (its client's queue is full) ends its path with the drop,
        under the body's key."""
        b = greenzmq_service(MDPBroker(heartbeat=0.5, client_queue=1))
        client = ctx.socket(zmq.DEALER)
        try:
            client.connect(b.endpoints["broker"])
            # no worker: the first waits, the second is one too many
            for body in (b"first", b"second"):
                client.send_multipart([b"", b"MDPC02", b"\x02", b"none", body])
            drop = greenzmq_hops.wait(op="drop", service="majordomo")
        finally:
            client.close(linger=0)
        assert drop["key"] == body_key([b"second"]) and drop["reason"] == "client queue full"
        assert greenzmq_hops.path([b"second"]) == [
            ("majordomo", "broker", "recv"),
            ("majordomo", "broker", "drop"),
        ]

    @pytest.mark.deadline(60)
    def test_failover_retry_is_a_hop_with_its_attempt(
        self, greenzmq_service: Any, greenzmq_hops: Any, zmq_endpoint: Any, ctx: Any
    ) -> None:
        """A first broker that never answers: the retry to the next one is on the same path."""
        hole = ctx.socket(zmq.ROUTER)  # takes the request, answers nothing
        hole_ep = zmq_endpoint()
        hole.bind(hole_ep)
        try:
            q = ppp(greenzmq_service)
            ppp_worker(greenzmq_service, q)
            with LazyPirate([hole_ep, q.endpoints["frontend"]], timeout=1.0, retries=2) as c:
                assert c.request(b"abc") == [b"ABC"]
        finally:
            hole.close(linger=0)
        greenzmq_hops.wait(op="recv", service="test")
        assert greenzmq_hops.path([b"abc"]) == [
            ("test", "lazypirate", "send"),
            ("test", "lazypirate", "retry"),
            *PPP_PATH[1:],
        ]
        retry = greenzmq_hops.events(op="retry")
        assert [(e["attempt"], e["endpoint"]) for e in retry] == [(2, q.endpoints["frontend"])]

    @pytest.mark.deadline(60)
    def test_queue_redispatch_is_a_hop_with_its_attempt(
        self, greenzmq_service: Any, greenzmq_hops: Any, ctx: Any
    ) -> None:
        """A worker that takes the request and dies: the queue's dispatch to the next worker
        is on the same path, with attempt 2."""
        q = ppp(greenzmq_service, heartbeat=0.3, liveness=2)
        queue = q.service

        def takes_one_and_dies() -> list[bytes]:
            sock = ctx.socket(zmq.DEALER)
            sock.connect(q.endpoints["backend"])
            sock.send(READY)
            try:
                with gevent.Timeout(10):
                    while True:
                        sock.send(HEARTBEAT)
                        if sock.poll(50):
                            m: list[bytes] = sock.recv_multipart()
                            if len(m) > 1:
                                return m
            finally:
                sock.close(linger=0)

        fake = gevent.spawn(takes_one_and_dies)
        green_wait_for(lambda: queue.engine and len(queue.engine.workers) == 1, 10, "fake worker")
        ppp_worker(greenzmq_service, q, heartbeat=0.3)
        green_wait_for(lambda: len(queue.engine.workers) == 2, 10, "real worker")
        with LazyPirate(q.endpoints["frontend"], timeout=5, retries=1) as c:
            assert c.request(b"abc") == [b"ABC"]
        assert fake.get(timeout=1)[-1] == b"abc"  # the longest idle worker got it first
        greenzmq_hops.wait(op="recv", service="test")
        assert greenzmq_hops.path([b"abc"]) == [
            *PPP_PATH[:3],
            ("ppqueue", "backend", "dispatch"),
            *PPP_PATH[3:],
        ]
        dispatches = greenzmq_hops.events(op="dispatch", key=body_key([b"abc"]))
        assert [e["attempt"] for e in dispatches] == [1, 2]
        assert dispatches[0]["peer"] != dispatches[1]["peer"]

    @pytest.mark.deadline(60)
    def test_wait_for_a_worker_shows_between_recv_and_dispatch(
        self, greenzmq_service: Any, greenzmq_hops: Any
    ) -> None:
        """Majordomo queues a request for a service with no worker: the path's receive and
        dispatch hops are as far apart as the wait."""
        b = greenzmq_service(MDPBroker(heartbeat=0.5))
        with MDPClient(b.endpoints["broker"], timeout=5, retries=1) as c:
            call = gevent.spawn(c.request, "up", b"late")
            greenzmq_hops.wait(op="recv", service="majordomo")
            gevent.sleep(0.3)  # the wait being measured: no worker for 0.3 s
            greenzmq_service(
                MDPWorkerService("up", upper, endpoint=b.endpoints["broker"], heartbeat=0.5)
            )
            assert call.get(timeout=10) == [b"LATE"]
        greenzmq_hops.wait(op="recv", service="test")
        assert greenzmq_hops.path([b"late"]) == MDP_PATH
        evs = greenzmq_hops.events(key=body_key([b"late"]), service="majordomo")
        at = {e["op"]: e["timestamp"] for e in evs}
        assert at["dispatch"] - at["recv"] >= 0.3

    @pytest.mark.deadline(60)
    def test_ppp_wait_shows_before_the_queue_reads(
        self, greenzmq_service: Any, greenzmq_hops: Any
    ) -> None:
        """The PPP queue reads no request while no worker is idle (backpressure): the wait is
        between the client's send and the queue's receive."""
        q = ppp(greenzmq_service)
        with LazyPirate(q.endpoints["frontend"], timeout=5, retries=1) as c:
            call = gevent.spawn(c.request, b"late")
            greenzmq_hops.wait(op="send", service="test")
            gevent.sleep(0.3)  # the wait being measured: no worker for 0.3 s
            ppp_worker(greenzmq_service, q)
            assert call.get(timeout=10) == [b"LATE"]
        greenzmq_hops.wait(op="recv", service="test")
        assert greenzmq_hops.path([b"late"]) == PPP_PATH
        evs = greenzmq_hops.events(key=body_key([b"late"]))
        at = {(e["service"], e["op"]): e["timestamp"] for e in evs}
        assert at[("ppqueue", "recv")] - at[("test", "send")] >= 0.3


README = (ROOT / "README.md").read_text()
README_CLIENT = re.compile(r"<!-- test_pattern_traces: the client.*?-->\n```python\n(.*?)```", re.S)
README_TIMELINE = re.compile(r"<!-- test_pattern_traces: the hops.*?-->\n```text\n(.*?)```", re.S)

MDP_CLIENT = """
import sys
from greenzmq.core.tracing import configure_logging
from greenzmq.patterns.mdp import MDPClient

configure_logging("client", fmt="json", log_file=sys.argv[2])
with MDPClient(sys.argv[1]) as client:
    for i in range(6, 11):
        assert client.request("square", str(i).encode()) == [str(i * i).encode()]
"""


def client_code(kind: str, endpoint: str, log: Path) -> str:
    """The README's Lazy Pirate client (its endpoint and log replaced), or a Majordomo one."""
    if kind == "mdp":
        code = MDP_CLIENT.replace("sys.argv[1]", repr(endpoint))
        return code.replace("sys.argv[2]", repr(str(log)))
    m = README_CLIENT.search(README)
    assert m is not None, "README: the Lazy Pirate client of the Tracing section is missing"
    code = m.group(1)
    assert '"tcp://127.0.0.1:5555"' in code and '"client.log"' in code
    return code.replace('"tcp://127.0.0.1:5555"', repr(endpoint)).replace(
        '"client.log"', repr(str(log))
    )


TIMELINE_ROW = re.compile(r"\(\+[\d.]+\)\s+(\S+?)\[\d+\] (\S+) (\S+) (\S+) key=")


def trace(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "greenzmq", "trace", *args],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def run_client(tmp_path: Path, endpoint: str, kind: str) -> str:
    log = tmp_path / f"{kind}-client.log"
    subprocess.run(
        [sys.executable, "-c", client_code(kind, endpoint, log)],
        cwd=tmp_path, check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return str(log)


def rows(timeline: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in TIMELINE_ROW.finditer(timeline)]


class TestGreenzmqTrace:
    @pytest.mark.deadline(90)
    def test_ppp_processes_every_request_arrives(
        self, greenzmq_service: Any, tmp_path: Path
    ) -> None:
        """Queue, worker and client as processes, `greenzmq trace` over their logs: every request
        arrived, each on one path through the three; the README shows this run's timeline."""
        q = greenzmq_service("greenzmq.services.ppqueue:app", process=True)  # as in the README
        w = greenzmq_service(
            "greenzmq.services.ppworker:app",
            {"backend": q.endpoints["backend"]},
            process=True,
        )
        client = run_client(tmp_path, q.endpoints["frontend"], "ppp")
        green_wait_for(
            lambda: q.events("hop", op="forward", key=message_key([b"100"])), 10, "last reply"
        )
        logs = [str(q.log), str(w.log), client]
        out = trace(*logs)
        assert "40 hops, 5 messages: 5 arrived, 0 stopped" in out, out
        one = trace(*logs, "--key", body_key([b"8"]))
        print(out, one, sep="\n")  # pytest -s: what the README's Tracing section shows
        expected = [
            ("client", "lazypirate", "DEALER", "send"),
            ("ppqueue", "frontend", "ROUTER", "recv"),
            ("ppqueue", "backend", "ROUTER", "dispatch"),
            ("ppworker", "backend", "DEALER", "recv"),
            ("ppworker", "backend", "DEALER", "send"),
            ("ppqueue", "backend", "ROUTER", "recv"),
            ("ppqueue", "frontend", "ROUTER", "forward"),
            ("client", "lazypirate", "DEALER", "recv"),
        ]
        assert rows(one) == expected, one
        assert one.rstrip().endswith("=> arrived")
        # the README's Tracing section shows such a timeline: the same hops in the same order
        readme = README_TIMELINE.search(README)
        assert readme is not None, "README: no PPP trace timeline in the Tracing section"
        assert rows(readme.group(1)) == expected
        assert readme.group(1).rstrip().endswith("=> arrived")

    @pytest.mark.slow
    @pytest.mark.deadline(90)
    def test_mdp_processes_every_request_arrives(
        self, greenzmq_service: Any, tmp_path: Path
    ) -> None:
        """Majordomo broker, worker and client as processes: every request arrived."""
        b = greenzmq_service("greenzmq.services.majordomo:make(heartbeat=0.5)", process=True)
        w = greenzmq_service(
            "greenzmq.services.majordomo:worker(heartbeat=0.5)",
            {"broker": b.endpoints["broker"]},
            process=True,
        )
        client = run_client(tmp_path, b.endpoints["broker"], "mdp")
        green_wait_for(
            lambda: b.events("hop", op="forward", key=body_key([b"100"])), 10, "last reply"
        )
        logs = [str(b.log), str(w.log), client]
        out = trace(*logs)
        assert "40 hops, 5 messages: 5 arrived, 0 stopped" in out, out
        assert rows(trace(*logs, "--key", body_key([b"8"]))) == [
            ("client", "mdpclient", "DEALER", "send"),
            ("majordomo", "broker", "ROUTER", "recv"),
            ("majordomo", "broker", "ROUTER", "dispatch"),
            ("mdpworker-square", "broker", "DEALER", "recv"),
            ("mdpworker-square", "broker", "DEALER", "send"),
            ("majordomo", "broker", "ROUTER", "recv"),
            ("majordomo", "broker", "ROUTER", "forward"),
            ("client", "mdpclient", "DEALER", "recv"),
        ]
