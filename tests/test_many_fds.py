"""Many file descriptors: the brokers, the PPP queue and the readers keep working in a process
that already holds 1,100 open files, where zmq.green.Poller's select() fails (pyzmq#844)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import zmq
import zmq.green as gzmq

from greenzmq import Broker, ClosedError, PollerListener, Readers
from greenzmq.patterns.lazypirate import LazyPirate
from greenzmq.patterns.mdp import MDPBroker, MDPClient, MDPWorkerService
from greenzmq.patterns.ppp import PPPQueue, PPPWorkerService

OPEN_FILES = 1100


@pytest.fixture
def many_fds() -> Iterator[list[int]]:
    """Hold 1,100 open files for the test, so every new socket's FD is >= 1024."""
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(OPEN_FILES)]
    yield fds
    for fd in fds:
        os.close(fd)


def serve(svc: Any, endpoints: dict[str, str]) -> gevent.Greenlet:
    g = gevent.spawn(svc.serve, endpoints, install_signals=False)
    gevent.sleep(0)
    return g


class TestManyFds:
    def test_plain_green_poller_fails_here(
        self, many_fds: list[int], ctx: Any, endpoint: Any
    ) -> None:
        """The control: zmq.green.Poller cannot wait on a socket whose FD is >= 1024."""
        s = ctx.socket(zmq.PULL)
        s.bind(endpoint())
        assert s.getsockopt(zmq.FD) >= 1024
        p = gzmq.Poller()
        p.register(s, zmq.POLLIN)
        with pytest.raises(ValueError, match="filedescriptor out of range"):
            p.poll(50)
        s.close(linger=0)

    def test_broker(self, many_fds: list[int], ctx: Any, endpoint: Any) -> None:
        """The tutorial broker (GreenPoller) forwards 100 requests with FDs >= 1024."""
        fe, be = endpoint(), endpoint()
        broker = Broker()
        g = serve(broker, {"frontend": fe, "backend": be, "kill": endpoint()})
        rep = ctx.socket(zmq.REP)
        rep.connect(be)

        def work() -> None:
            while True:
                rep.send(str(int(rep.recv()) ** 2).encode())

        w = gevent.spawn(work)
        with LazyPirate(fe, timeout=5, retries=1, ctx=ctx) as c:
            for i in range(100):
                assert c.request(str(i).encode()) == [str(i * i).encode()]
            assert c.sock is not None and c.sock.getsockopt(zmq.FD) >= 1024
        broker.stop()
        assert g.get(timeout=10) == 0
        assert broker.forwarded["frontend->backend"] == 100
        w.kill()
        rep.close(linger=0)

    def test_ppp_queue_and_worker(self, many_fds: list[int], ctx: Any, endpoint: Any) -> None:
        """The PPP queue and a PPP worker (both GreenPoller loops) answer 100 requests."""
        fe, be = endpoint(), endpoint()
        queue = PPPQueue(heartbeat=0.2)
        qg = serve(queue, {"frontend": fe, "backend": be, "kill": endpoint()})
        worker = PPPWorkerService(lambda body: [body[0] * 2], endpoint=be, heartbeat=0.2)
        wg = serve(worker, {"kill": endpoint()})
        with LazyPirate(fe, timeout=5, retries=1, ctx=ctx) as c:
            for i in range(100):
                assert c.request(str(i).encode()) == [str(i).encode() * 2]
        assert worker.socks["backend"].getsockopt(zmq.FD) >= 1024
        worker.stop()
        assert wg.get(timeout=10) == 0
        queue.stop()
        assert qg.get(timeout=10) == 0
        assert queue.counts["replies"] == 100

    def test_majordomo(self, many_fds: list[int], ctx: Any, endpoint: Any) -> None:
        """The Majordomo broker and an MDP worker answer 0.1 and 0.2 clients."""
        ep = endpoint()
        broker = MDPBroker(heartbeat=0.2)
        bg = serve(broker, {"broker": ep, "kill": endpoint()})
        worker = MDPWorkerService("rev", lambda body: [body[0][::-1]], endpoint=ep, heartbeat=0.2)
        wg = serve(worker, {"kill": endpoint()})
        for version in (1, 2):
            with MDPClient(ep, version=version, timeout=5, retries=1, ctx=ctx) as c:
                for i in range(50):
                    assert c.request("rev", b"ab%d" % i) == [(b"ab%d" % i)[::-1]]
        assert broker.socks["broker"].getsockopt(zmq.FD) >= 1024
        worker.stop()
        assert wg.get(timeout=10) == 0
        broker.stop()
        assert bg.get(timeout=10) == 0
        assert broker.counts["replies"] == 100

    @pytest.mark.parametrize("mux", [Readers, PollerListener])
    def test_readers(self, mux: Any, many_fds: list[int], ctx: Any, endpoint: Any) -> None:
        """Readers and PollerListener read 2 x 200 messages from PULL sockets with FDs >= 1024."""
        eps = [endpoint(), endpoint()]
        pulls, pushes = [], []
        for i, ep in enumerate(eps):
            p = ctx.socket(zmq.PULL)
            p.name = f"in{i}"
            p.bind(ep)
            pulls.append(p)
            s = ctx.socket(zmq.PUSH)
            s.connect(ep)
            pushes.append(s)
        assert min(p.getsockopt(zmq.FD) for p in pulls) >= 1024
        m = mux(pulls)
        if isinstance(m, Readers):
            m.start()
        for s in pushes:
            for j in range(200):
                s.send(str(j).encode())
        got: dict[str, int] = {"in0": 0, "in1": 0}
        with gevent.Timeout(10):
            for _ in range(400):
                name, _frames = m.get()
                got[name] += 1
        assert got == {"in0": 200, "in1": 200}
        m.stop()
        with pytest.raises(ClosedError):
            m.get(timeout=1)
        for s in pushes:
            s.close(linger=0)
        for p in pulls:
            p.close(linger=0)
