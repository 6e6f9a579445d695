"""Several brokers on one machine: multi-endpoint sockets, workers on every broker, failover.

The cross-host version of these (hosts as network namespaces, links cut and
lossy) is tests/test_cluster.py; here everything is on 127.0.0.1 and fast.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest

from greenzmq import SocketSpec
from greenzmq.core.sockets import apply_endpoints
from greenzmq.errors import ConfigError, RequestTimeout
from greenzmq.patterns.lazypirate import LazyPirate
from greenzmq.patterns.mdp import C_CLIENT02, FINAL02, MDPClient
from greenzmq.patterns.ppp import PPPWorker, PPPWorkerService

from .helpers import ServiceProcess, green_wait_for

HB = 0.2
QUEUE = f"services.ppqueue:make(heartbeat={HB})"


class TestSpecs:
    def test_several_connect_endpoints(self) -> None:
        """A socket name given several addresses connects to all; one address twice is refused."""
        spec = SocketSpec("backend", "DEALER", connect=("tcp://127.0.0.1:1",))
        (out,) = apply_endpoints([spec], {"backend": ["tcp://127.0.0.1:2", "tcp://10.0.0.2:2"]})
        assert out.connect == ("tcp://127.0.0.1:2", "tcp://10.0.0.2:2") and out.bind == ()
        with pytest.raises(ConfigError, match=r"endpoint tcp://127\.0\.0\.1:2 is given twice"):
            spec.with_endpoint(["tcp://127.0.0.1:2", "tcp://127.0.0.1:2"])
        wild = spec.with_endpoint(["tcp://*:3", "ipc:///tmp/x"])
        assert wild.bind == ("tcp://*:3", "ipc:///tmp/x") and wild.connect == ()

    def test_host_name_goes_to_libzmq(self, ctx: Any, endpoint: Any) -> None:
        """``tcp://localhost:PORT`` connects through name resolution (libzmq's)."""
        ep = endpoint()
        rep = ctx.build(SocketSpec("rep", "REP", bind=(ep,)))
        port = ep.rsplit(":", 1)[1]
        with LazyPirate(f"tcp://localhost:{port}", timeout=3, retries=1, ctx=ctx) as c:
            g = gevent.spawn(lambda: rep.send_multipart(rep.recv_multipart()))
            assert c.request(b"x") == [b"x"]
            g.get(timeout=3)
        rep.close(linger=0)


def answer_forever(sock: Any, prefix: bytes) -> None:
    """A REP-like DEALER/ROUTER stand-in: echo every request with ``prefix``."""
    while True:
        m = sock.recv_multipart()
        sock.send_multipart([*m[:-1], prefix + m[-1]])


class TestClientFailover:
    def test_lazypirate_moves_on_and_remembers(self, ctx: Any, endpoint: Any) -> None:
        """A silent first broker: the next try goes to the second, which is kept afterwards."""
        silent_ep, live = endpoint(), endpoint()
        silent = ctx.build(SocketSpec("silent", "ROUTER", bind=(silent_ep,)))
        server = ctx.build(SocketSpec("srv", "ROUTER", bind=(live,)))
        heard: list[list[bytes]] = []

        def swallow() -> None:
            while True:
                heard.append(silent.recv_multipart())

        gs = [gevent.spawn(answer_forever, server, b"live:"), gevent.spawn(swallow)]
        try:
            with LazyPirate([silent_ep, live], timeout=0.3, retries=2, ctx=ctx) as c:
                assert c.request(b"1") == [b"live:1"]
                assert (c.endpoint, c.failovers, c.resent) == (live, 1, 1)
                t0 = time.monotonic()
                for i in range(5):
                    assert c.request(str(i).encode()) == [b"live:" + str(i).encode()]
                assert time.monotonic() - t0 < 0.3, "remembered broker: no timeout paid again"
                assert c.failovers == 1
            # one broker at a time: the silent one saw the first try only
            assert [m[-1] for m in heard] == [b"1"]
        finally:
            for g in gs:
                g.kill()
            silent.close(linger=0)
            server.close(linger=0)

    def test_lazypirate_every_broker_silent(self, ctx: Any, endpoint: Any) -> None:
        """No broker answers: RequestTimeout naming all of them and the tries."""
        a, b = endpoint(), endpoint()
        with LazyPirate([a, b], timeout=0.1, retries=3, ctx=ctx) as c:
            with pytest.raises(RequestTimeout, match=f"no reply from {a}, {b} after 3 tries"):
                c.request(b"x")
            assert c.failovers == 3

    def test_mdp_client_moves_on(self, ctx: Any, endpoint: Any) -> None:
        """The Majordomo client fails over the same way (one broker at a time)."""
        dead, live = endpoint(), endpoint()
        broker = ctx.build(SocketSpec("broker", "ROUTER", bind=(live,)))
        seen: list[list[bytes]] = []

        def serve() -> None:
            while True:
                m = broker.recv_multipart()
                seen.append(m)
                broker.send_multipart([m[0], b"", C_CLIENT02, FINAL02, b"ok:" + m[-1]])

        g = gevent.spawn(serve)
        try:
            with MDPClient([dead, live], timeout=0.3, retries=2, ctx=ctx) as c:
                assert c.request("echo", b"a") == [b"ok:a"]
                assert c.request("echo", b"b") == [b"ok:b"]
                assert c.endpoint == live and c.failovers == 1
            assert len(seen) == 2  # the second request went straight to the live broker
        finally:
            g.kill()
            broker.close(linger=0)


class TestWorkerOnTwoQueues:
    @pytest.mark.slow
    @pytest.mark.deadline(60)
    def test_one_queue_lost_and_back(self, service: Any, endpoint: Any, ctx: Any) -> None:
        """A worker on two queues serves both; SIGKILL one: the other link is untouched."""
        fe1, be1, fe2, be2 = endpoint(), endpoint(), endpoint(), endpoint()
        queues: list[ServiceProcess] = [
            service(QUEUE, "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}")
            for fe, be in ((fe1, be1), (fe2, be2))
        ]
        for q in queues:
            q.wait_started()
        spec = SocketSpec("backend", "DEALER", connect=(be1, be2))
        w = PPPWorker(ctx, spec, lambda body: [b"w:" + body[0]], heartbeat=HB, liveness=3,
                      reconnect=HB, reconnect_max=HB)  # fmt: skip
        g = gevent.spawn(w.run)
        c1 = LazyPirate(fe1, timeout=2, retries=3, ctx=ctx)
        c2 = LazyPirate(fe2, timeout=2, retries=3, ctx=ctx)
        try:
            assert c1.request(b"a") == [b"w:a"]
            assert c2.request(b"b") == [b"w:b"]
            second = w.links[1].sock
            queues[0].stop()  # SIGKILL to the process group
            t0 = time.monotonic()
            green_wait_for(lambda: w.links[0].sock is None or w.reconnects, 5, "link 1 given up")
            lost_after = time.monotonic() - t0
            assert lost_after < HB * 3 + 1.0
            for i in range(20):  # meanwhile queue 2 serves as before, on the same socket
                assert c2.request(str(i).encode()) == [b"w:" + str(i).encode()]
            assert w.links[1].sock is second and not second.closed
            # queue 1 comes back on the same address: the worker re-registers there
            back = service(QUEUE, "--endpoint", f"frontend={fe1}", "--endpoint", f"backend={be1}")
            back.wait_started()
            c1.close()
            c1 = LazyPirate(fe1, timeout=2, retries=3, ctx=ctx)
            assert c1.request(b"again") == [b"w:again"]
            assert w.links[1].sock is second
        finally:
            c1.close()
            c2.close()
            w.stop()
            g.get(timeout=10)
            if w.sock is not None:
                w.sock.close(linger=0)
        assert all(k.sock is None or k.sock.closed for k in w.links[1:])

    def test_reply_goes_back_through_its_broker(self, ctx: Any, endpoint: Any) -> None:
        """Two raw queues send one request each at once: each reply returns to its sender."""
        be1, be2 = endpoint(), endpoint()
        qs = [
            ctx.build(SocketSpec(f"q{i}", "ROUTER", bind=(be,))) for i, be in enumerate((be1, be2))
        ]
        spec = SocketSpec("backend", "DEALER", connect=(be1, be2))
        w = PPPWorker(ctx, spec, lambda body: [b"r:" + body[0]], heartbeat=HB)
        g = gevent.spawn(w.run)
        try:
            ids = []
            for q in qs:
                with gevent.Timeout(5):
                    wid, ready = q.recv_multipart()
                assert ready == b"\x01"  # READY on each queue: registered with both
                ids.append(wid)
            for i, (q, wid) in enumerate(zip(qs, ids, strict=True)):
                q.send_multipart([wid, b"client", b"", f"from q{i}".encode()])
            for i, (q, wid) in enumerate(zip(qs, ids, strict=True)):
                with gevent.Timeout(5):
                    while True:
                        m = q.recv_multipart()
                        if len(m) > 2:
                            break
                assert m == [wid, b"client", b"", f"r:from q{i}".encode()]
        finally:
            w.stop()
            g.get(timeout=10)
            for s in (*qs, w.sock):
                if s is not None:
                    s.close(linger=0)

    @pytest.mark.deadline(60)
    def test_a_pool_of_workers_on_two_queues(self, ctx: Any, endpoint: Any) -> None:
        """``pool=2`` with two brokers: each of the two workers registers with each queue,
        and both workers of one queue serve it at once (offload in threads)."""
        be1, be2 = endpoint(), endpoint()
        qs = [
            ctx.build(SocketSpec(f"q{i}", "ROUTER", bind=(be,))) for i, be in enumerate((be1, be2))
        ]
        app = PPPWorkerService(
            slow_echo, endpoint=[be1, be2], heartbeat=HB, offload="thread", pool=2
        )
        g = gevent.spawn(app.serve, {"kill": endpoint()}, install_signals=False)
        try:
            ids: list[set[bytes]] = []
            for q in qs:
                seen: set[bytes] = set()
                with gevent.Timeout(10):
                    while len(seen) < 2:
                        wid, *rest = q.recv_multipart()
                        if rest == [b"\x01"]:  # READY
                            seen.add(wid)
                ids.append(seen)
            for wid in ids[0]:
                qs[0].send_multipart([wid, b"client", b"", wid])
            RAN.clear()
            replies: set[bytes] = set()
            with gevent.Timeout(10):
                while len(replies) < 2:
                    m = qs[0].recv_multipart()
                    if len(m) > 2:
                        assert m[1:3] == [b"client", b""]
                        replies.add(m[3])
            assert replies == {b"slow:" + w for w in ids[0]}
            (s1, e1), (s2, e2) = RAN
            assert max(s1, s2) < min(e1, e2), RAN  # side by side in two threads
        finally:
            app.stop()
            assert g.get(timeout=10) == 0
            for q in qs:
                q.close(linger=0)
        assert all(s.closed for s in app.socks.values())
        for w in app.workers:
            assert all(k.sock is None or k.sock.closed for k in w.links)


RAN: list[tuple[float, float]] = []  # slow_echo's runs: (start, end)


def slow_echo(body: list[bytes]) -> list[bytes]:
    """Blocks its thread for 0.5 s (offload="thread"), then echoes."""
    start = time.monotonic()
    time.sleep(0.5)
    RAN.append((start, time.monotonic()))
    return [b"slow:" + body[0]]
