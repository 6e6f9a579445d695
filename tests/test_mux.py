"""Many sockets into one consumer (Readers, PollerListener) and the Outbox."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.pool
import pytest
import zmq

from greenzmq import ClosedError, ReaderError, SocketBusyError
from greenzmq.core.mux import Outbox, PollerListener, Readers
from greenzmq.core.sockets import SocketSpec

from .helpers import green_wait_for

N = 10_000
NAMES = ("a", "b", "c")
_inproc = itertools.count()


@pytest.fixture
def sources(ctx: Any, endpoint: Callable[[], str]) -> Iterator[dict[str, tuple[Any, Any]]]:
    """Three (PULL, PUSH) pairs over tcp named a, b, c; closed afterwards."""
    out = {}
    for name in NAMES:
        ep = endpoint()
        pull = ctx.build(SocketSpec(name, "PULL", bind=(ep,)))
        push = ctx.build(SocketSpec(f"push-{name}", "PUSH", connect=(ep,)))
        out[name] = (pull, push)
    yield out
    for pull, push in out.values():
        pull.close()
        push.close()


def inproc_pair(ctx: Any, name: str = "a") -> tuple[Any, Any]:
    """A PULL/PUSH pair over inproc: a send is in the PULL's queue when send returns."""
    ep = f"inproc://mux-{next(_inproc)}"
    pull = ctx.build(SocketSpec(name, "PULL", bind=(ep,)))
    push = ctx.build(SocketSpec(f"push-{name}", "PUSH", connect=(ep,)))
    return pull, push


def make_mux(kind: str, sockets: list[Any], **kw: Any) -> Any:
    if kind == "readers":
        return Readers(sockets, **kw).start()
    kw.pop("maxsize", None)
    kw.pop("group", None)
    return PollerListener(sockets, **kw)


def flood(push: Any, count: int) -> None:
    for i in range(count):
        push.send(b"%d" % i)


@pytest.mark.parametrize("kind", ["readers", "poller"])
class TestManyIntoOne:
    @pytest.mark.deadline(60)
    def test_nothing_lost(self, kind: str, sources: dict[str, tuple[Any, Any]]) -> None:
        """Three sockets x 10,000 messages: every one arrives once, in order per socket."""
        mux = make_mux(kind, [pull for pull, _ in sources.values()], maxsize=100)
        senders = [gevent.spawn(flood, push, N) for _, push in sources.values()]
        got: dict[str, list[int]] = {name: [] for name in NAMES}
        total = 0
        with gevent.Timeout(40):
            for name, frames in mux:
                got[name].append(int(frames[0]))
                total += 1
                if total == N * len(NAMES):
                    mux.stop()
        gevent.joinall(senders, raise_error=True)
        for name in NAMES:
            assert got[name] == list(range(N)), f"socket {name}: lost or reordered messages"
        stats = mux.statistics()
        assert stats.received == dict.fromkeys(NAMES, N)
        assert stats.delivered == N * len(NAMES)
        assert stats.queued == 0
        assert stats.stopped

    def test_statistics_snapshot(self, kind: str, ctx: Any) -> None:
        """statistics() counts what was taken and what waits; it is a frozen record."""
        pull, push = inproc_pair(ctx)
        mux = make_mux(kind, [pull], maxsize=10)
        try:
            for i in range(5):
                push.send(b"%d" % i)
            with gevent.Timeout(5):
                assert mux.get() == ("a", [b"0"])
            green_wait_for(lambda: mux.statistics().received == {"a": 5}, 5, "all 5 taken")
            stats = mux.statistics()
            assert (stats.delivered, stats.queued, stats.stopped) == (1, 4, False)
            assert stats.maxsize >= 10
            with pytest.raises(dataclasses.FrozenInstanceError):
                stats.delivered = 0  # type: ignore[misc]
        finally:
            mux.stop()
            push.close()

    def test_stop_wakes_consumer(self, kind: str, ctx: Any) -> None:
        """stop() from another greenlet ends a parked consumer's iteration and closes sockets."""
        pull, push = inproc_pair(ctx)
        mux = make_mux(kind, [pull])
        consumer = gevent.spawn(lambda: list(mux))
        gevent.sleep(0.02)
        assert not consumer.dead
        mux.stop()
        assert consumer.get(timeout=2) == []
        assert pull.closed
        with pytest.raises(ClosedError):
            mux.get()
        push.close()

    def test_taken_messages_survive_stop(self, kind: str, ctx: Any) -> None:
        """What the mux already took off a socket is delivered after stop(), then it ends."""
        pull, push = inproc_pair(ctx)
        group = gevent.pool.Group()
        mux = make_mux(kind, [pull], maxsize=2, group=group)
        for i in range(20):
            push.send(b"%d" % i)
        with gevent.Timeout(5):
            first = mux.get()
        assert first == ("a", [b"0"])
        if kind == "readers":
            # the reader refilled the queue (2) and now holds a 3rd message, parked in put()
            green_wait_for(lambda: mux.statistics().queued == 2, 5, "a full queue")
        mux.stop()
        rest = [int(frames[0]) for _, frames in mux]
        taken = mux.statistics().received["a"]
        assert [0, *rest] == list(range(taken)), "a message taken off the socket was lost"
        assert taken >= 4  # the queue's 2 and the one the reader held (poller: its batch)
        assert mux.statistics().delivered == taken
        assert pull.closed
        assert len(group) == 0, "a reader greenlet outlived stop()"
        push.close()

    def test_get_timeout(self, kind: str, ctx: Any) -> None:
        """get(timeout) raises TimeoutError; a gevent.Timeout interrupts get(); both recover."""
        pull, push = inproc_pair(ctx)
        mux = make_mux(kind, [pull])
        try:
            with pytest.raises(TimeoutError):
                mux.get(timeout=0.05)
            with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
                mux.get()
            push.send(b"late")
            with gevent.Timeout(5):
                assert mux.get() == ("a", [b"late"])
        finally:
            mux.stop()
            push.close()


class TestReaderFailure:
    def test_failing_reader_surfaces(self, ctx: Any) -> None:
        """A reader that fails raises ReaderError in the consumer, naming the socket."""
        pull, push = inproc_pair(ctx)
        bad = ctx.build(SocketSpec("bad", "PUSH", bind=(f"inproc://bad-{next(_inproc)}",)))
        mux = Readers([pull, bad]).start()
        try:
            with pytest.raises(ReaderError, match="'bad'") as info, gevent.Timeout(5):
                for _ in mux:
                    pass
            assert isinstance(info.value.__cause__, zmq.ZMQError)
            # the other reader is unaffected
            push.send(b"ok")
            with gevent.Timeout(5):
                assert mux.get() == ("a", [b"ok"])
        finally:
            mux.stop()
            push.close()

    def test_parked_consumer_is_woken(self, ctx: Any) -> None:
        """A consumer parked in get() wakes with ReaderError when a reader dies under it."""
        pull, push = inproc_pair(ctx)
        mux = Readers([pull]).start()
        consumer = gevent.spawn(mux.get)
        gevent.sleep(0.02)
        assert not consumer.dead
        pull.close()  # not through stop(): the reader's socket breaks under it
        consumer.join(2)
        assert consumer.dead, "the consumer never heard of the failure"
        assert isinstance(consumer.exception, ReaderError)
        mux.stop()
        push.close()

    def test_reader_owns_its_socket(self, ctx: Any) -> None:
        """Once a reader owns a socket, the consumer receiving on it directly is an error."""
        pull, push = inproc_pair(ctx)
        mux = Readers([pull]).start()
        try:
            gevent.sleep(0)
            with pytest.raises(SocketBusyError, match="reader-a"):
                pull.recv()
        finally:
            mux.stop()
            push.close()


class TestOutbox:
    @pytest.mark.deadline(30)
    def test_many_senders_keep_order(self, ctx: Any) -> None:
        """Ten greenlets send through one outbox; each sender's messages stay in order."""
        ep = f"inproc://outbox-{next(_inproc)}"
        pull = ctx.build(SocketSpec("pull", "PULL", bind=(ep,)))
        # a tiny HWM makes the writer hit EAGAIN and fall back to a green send
        push = ctx.build(SocketSpec("push", "PUSH", connect=(ep,), hwm=5))
        box = Outbox(push, maxsize=50)
        senders, per = 10, 300

        def send(s: int) -> None:
            for i in range(per):
                box.send([b"%d" % s, b"%d" % i])

        greenlets = [gevent.spawn(send, s) for s in range(senders)]
        got: dict[int, list[int]] = {s: [] for s in range(senders)}
        with gevent.Timeout(20):
            for _ in range(senders * per):
                s, i = pull.recv_multipart()
                got[int(s)].append(int(i))
        gevent.joinall(greenlets, raise_error=True)
        for s in range(senders):
            assert got[s] == list(range(per)), f"sender {s} out of order or lost"
        assert box.sent == senders * per
        box.close()
        pull.close()
        push.close()

    def test_close_flushes_and_refuses(self, ctx: Any) -> None:
        """close() sends what is queued; later sends raise ClosedError."""
        pull, push = inproc_pair(ctx)
        box = Outbox(push)
        for i in range(10):
            box.send_nowait([b"%d" % i])
        assert box.queued == 10
        box.close()
        with gevent.Timeout(5):
            assert [pull.recv() for _ in range(10)] == [b"%d" % i for i in range(10)]
        with pytest.raises(ClosedError):
            box.send([b"x"])
        with pytest.raises(ClosedError):
            box.send_nowait([b"x"])
        pull.close()
        push.close()

    def test_writer_owns_socket(self, ctx: Any) -> None:
        """The writer greenlet owns the socket: sending on it directly is SocketBusyError."""
        pull, push = inproc_pair(ctx)
        box = Outbox(push)
        try:
            box.send([b"1"])
            with gevent.Timeout(5):
                assert pull.recv() == b"1"
            with pytest.raises(SocketBusyError, match="writer-push-a"):
                push.send(b"2")
        finally:
            box.close()
            pull.close()
            push.close()

    def test_full_outbox_times_out(self, ctx: Any) -> None:
        """send(timeout) on a full outbox raises TimeoutError; send_nowait raises Full."""
        ep = f"inproc://full-{next(_inproc)}"
        push = ctx.build(SocketSpec("push", "PUSH", bind=(ep,), hwm=1))  # no peer: blocks
        box = Outbox(push, maxsize=1)
        try:
            box.send([b"1"])  # the writer takes it and parks in a green send
            gevent.sleep(0.01)
            box.send([b"2"])  # fills the queue
            with pytest.raises(TimeoutError):
                box.send([b"3"], timeout=0.05)
            with pytest.raises(gevent.queue.Full):
                box.send_nowait([b"3"])
        finally:
            box.close(timeout=0.1)
            push.close()


class TestStopWhileHandling:
    def test_consumer_can_reply_after_stop(self, ctx: Any) -> None:
        """stop() from another greenlet mid-request: the consumer still sends its reply."""
        ep = f"inproc://rep-{next(_inproc)}"
        rep = ctx.build(SocketSpec("rep", "REP", bind=(ep,)))
        req = ctx.build(SocketSpec("req", "REQ", connect=(ep,)))
        mux = PollerListener([rep])
        stopper = gevent.spawn(mux.stop)  # runs while the consumer handles the request
        try:
            req.send(b"q")
            with gevent.Timeout(5):
                name, frames = mux.get()
                assert (name, frames) == ("rep", [b"q"])
                gevent.sleep(0)  # let the stopper run: a service's kill switch, say
                assert stopper.dead
                rep.send(b"a")  # the in-flight request is still answered
                assert req.recv() == b"a"
                assert list(mux) == []
            assert rep.closed
        finally:
            req.close()


class TestOutboxFailure:
    def test_writer_failure_surfaces(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """If the writer dies (a send error), the next send raises instead of queueing forever."""
        ep = f"inproc://fail-{next(_inproc)}"
        pull = ctx.build(SocketSpec("pull", "PULL", bind=(ep,)))
        push = ctx.build(SocketSpec("push", "PUSH", connect=(ep,)))
        box = Outbox(push, maxsize=2)
        try:
            box.send([b"ok"])
            with gevent.Timeout(5):
                assert pull.recv() == b"ok"
            push.close()  # the writer's socket breaks under it
            box.send([b"lost"])  # the writer takes it and fails (ENOTSOCK)
            green_wait_for(lambda: box._writer.dead, 5, "the writer to die")
            with pytest.raises(ClosedError, match="writer") as info, gevent.Timeout(5):
                for _ in range(5):  # more than maxsize: must not block forever
                    box.send([b"x"])
            assert isinstance(info.value.__cause__, zmq.ZMQError)
        finally:
            box.close(timeout=0.1)
            pull.close()


class TestReplyBeforeClose:
    @pytest.mark.deadline(60)
    def test_reply_sent_just_before_stop_is_delivered(
        self, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """A REP reply sent right before stop() closes the socket still reaches its peer.

        stop() closes with the socket's own LINGER (1 s by default for sockets
        that send), not 0, which would discard what libzmq had not written yet.
        """
        rounds, got = 5, []
        for i in range(rounds):
            ep = endpoint()
            rep = ctx.build(SocketSpec(f"rep{i}", "REP", bind=(ep,)))
            req = ctx.build(SocketSpec(f"req{i}", "REQ", connect=(ep,)))
            mux = PollerListener([rep])
            req.send(b"req%d" % i)
            with gevent.Timeout(10):
                _, frames = mux.get()
            rep.send_multipart([frames[0] + b"!" * 5_000_000])  # big: still being written
            mux.stop()  # from the consumer: closes at once
            assert rep.closed
            if req.poll(2000):
                got.append(req.recv())
            req.close(linger=0)
        assert got == [b"req%d" % i + b"!" * 5_000_000 for i in range(rounds)]


REPLIES, REPLY_BODY = 3000, b"r" * 100_000


def _slow_router_peer(ep: str, result: dict[str, Any], deadline: float) -> None:
    """A DEALER in its own thread and plain context: requests in a window, slow reads.

    It keeps up to 200 requests in flight (100 kB replies: far more than the
    ROUTER's HWM and the TCP buffers hold) and sleeps between reads, so the
    service's ROUTER sees EAGAIN for most of the run.
    """
    import time

    c = zmq.Context()
    d = c.socket(zmq.DEALER)
    d.setsockopt(zmq.RCVHWM, 5)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(ep)
    sent = got = 0
    bad: list[int] = []
    end = time.monotonic() + deadline
    try:
        while got < REPLIES and time.monotonic() < end:
            while sent < REPLIES and sent - got < 200:
                d.send(b"%d" % sent)
                sent += 1
            if d.poll(100):
                (body,) = d.recv_multipart()
                head, _, pad = body.partition(b":")
                if int(head) != got or pad != REPLY_BODY:
                    bad.append(got)
                got += 1
                if got % 4 == 0:
                    time.sleep(0.001)  # a peer that reads slowly
    finally:
        result.update(sent=sent, got=got, bad=bad)
        d.close()
        c.term()


def _side_traffic(ctx: Any, endpoint: Callable[[], str]) -> tuple[list[Any], list[Any]]:
    """A bound PULL with its PUSH and a SUB with its bound PUB: (mux sockets, peers)."""
    pull_ep, pub_ep = endpoint(), endpoint()
    pull = ctx.build(SocketSpec("pull", "PULL", bind=(pull_ep,)))
    push = ctx.build(SocketSpec("push", "PUSH", connect=(pull_ep,)))
    pub = ctx.build(SocketSpec("pub", "PUB", bind=(pub_ep,)))
    sub = ctx.build(SocketSpec("sub", "SUB", connect=(pub_ep,)))
    return [pull, sub], [push, pub]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["readers", "poller"])
class TestReadAndReply:
    @pytest.mark.deadline(90)
    def test_replies_under_backpressure(
        self, kind: str, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """PULL + SUB + ROUTER read by one mux, 3,000 100 kB replies to a slow peer: all arrive.

        The replies go through ``mux.send``: the greenlet that owns the ROUTER
        sends them, and a full ROUTER (EAGAIN) or a full send queue holds the
        caller back instead of losing or refusing a reply.
        """
        import threading

        router_ep = endpoint()
        router = ctx.build(SocketSpec("router", "ROUTER", bind=(router_ep,), hwm=5))
        side, (push, pub) = _side_traffic(ctx, endpoint)
        kw: dict[str, Any] = {"send_maxsize": 8}
        if kind == "readers":
            kw["maxsize"] = 50
        mux = make_mux(kind, [router, *side], **kw)
        result: dict[str, Any] = {}
        peer = threading.Thread(target=_slow_router_peer, args=(router_ep, result, 60), daemon=True)
        peer.start()
        pushes = 3000

        def side_load() -> None:
            for i in range(pushes):
                push.send(b"%d" % i)
                if i % 10 == 0:
                    pub.send(b"tick %d" % i)
                    gevent.sleep(0.001)

        loader = gevent.spawn(side_load)
        counts = {"router": 0, "pull": 0, "sub": 0}
        try:
            with gevent.Timeout(70):
                while counts["router"] < REPLIES or counts["pull"] < pushes:
                    name, frames = mux.get()
                    counts[name] += 1
                    if name == "router":
                        ident, req = frames
                        mux.send("router", [ident, req + b":" + REPLY_BODY])
                # every reply was accepted; the peer thread counts what arrived
                while peer.is_alive():
                    try:
                        mux.get(timeout=0.05)  # keep the poll loop turning
                    except TimeoutError:
                        pass
            loader.get(timeout=5)
        finally:
            mux.stop()
            peer.join(10)
            push.close()
            pub.close()
        assert result["got"] == REPLIES, f"{result['got']} of {REPLIES} replies delivered"
        assert result["bad"] == []
        assert counts["pull"] == pushes
        assert mux.statistics().sent == {"router": REPLIES}

    def test_send_from_another_greenlet(
        self, kind: str, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """A handler greenlet replies through mux.send: the socket's owner sends it."""
        ep = endpoint()
        router = ctx.build(SocketSpec("router", "ROUTER", bind=(ep,)))
        dealer = ctx.build(SocketSpec("dealer", "DEALER", connect=(ep,)))
        mux = make_mux(kind, [router])
        try:
            dealer.send(b"ping")
            with gevent.Timeout(5):
                _, (ident, body) = mux.get()
                handler = gevent.spawn(mux.send, "router", [ident, body + b"!"])
                handler.get()
                if kind == "poller":
                    # the consumer's poll loop does the send: keep it turning
                    with pytest.raises(TimeoutError):
                        mux.get(timeout=0.05)
                assert dealer.recv() == b"ping!"
            assert router.owner is not handler
        finally:
            mux.stop()
            dealer.close()

    def test_rep_replies_through_mux(self, kind: str, ctx: Any) -> None:
        """A REP read by a mux answers through mux.send, request after request."""
        ep = f"inproc://rep-send-{next(_inproc)}"
        rep = ctx.build(SocketSpec("rep", "REP", bind=(ep,)))
        req = ctx.build(SocketSpec("req", "REQ", connect=(ep,)))
        mux = make_mux(kind, [rep])
        try:
            with gevent.Timeout(10):
                for i in range(20):
                    req.send(b"%d" % i)
                    name, frames = mux.get()
                    mux.send(name, [frames[0] + b"!"])
                    if kind == "poller":
                        with pytest.raises(TimeoutError):
                            mux.get(timeout=0.001)  # the poll loop sends it
                    assert req.recv() == b"%d!" % i
        finally:
            mux.stop()
            req.close()

    @pytest.mark.deadline(30)
    def test_accepted_replies_survive_stop(
        self, kind: str, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """Replies accepted by mux.send but held back by the HWM still go out at stop()."""
        ep = endpoint()
        router = ctx.build(SocketSpec("router", "ROUTER", bind=(ep,), hwm=2))
        peer = ctx.build(SocketSpec("peer", "DEALER", connect=(ep,), hwm=2))
        mux = make_mux(kind, [router], send_maxsize=100)
        n, got = 30, []

        def slow_reader() -> None:
            while len(got) < n:
                got.append(peer.recv())
                gevent.sleep(0.005)

        try:
            peer.send(b"hello")
            with gevent.Timeout(5):
                _, (ident, _) = mux.get()
            for i in range(n):
                mux.send("router", [ident, b"%d:" % i + REPLY_BODY])
            reader = gevent.spawn(slow_reader)
            peer.hand_over(reader)
            assert mux.statistics().send_queued > 0  # held back by the HWM
            mux.stop()
            reader.get(timeout=10)
            assert [int(m.partition(b":")[0]) for m in got] == list(range(n))
        finally:
            mux.stop()
            peer.close()

    def test_send_errors(self, kind: str, ctx: Any) -> None:
        """mux.send names an unknown or receive-only socket; a stopped mux refuses."""
        pull, push = inproc_pair(ctx)
        router = ctx.build(SocketSpec("router", "ROUTER", bind=(f"inproc://se-{next(_inproc)}",)))
        mux = make_mux(kind, [pull, router])
        try:
            with pytest.raises(KeyError, match="'nope'"):
                mux.send("nope", [b"x"])
            with pytest.raises(KeyError, match="'a'"):
                mux.send("a", [b"x"])  # a PULL
            mux.stop()
            with pytest.raises(ClosedError):
                mux.send("router", [b"x"])
        finally:
            mux.stop()
            push.close()

    def test_busy_hint_names_mux_send(
        self, kind: str, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """Sending directly on a socket a mux reads: the error says to use mux.send."""
        ep = endpoint()
        router = ctx.build(SocketSpec("router", "ROUTER", bind=(ep,)))
        mux = make_mux(kind, [router])
        owner: Any = None
        try:
            if kind == "poller":
                owner = gevent.spawn(lambda: list(mux))  # the consumer owns the sockets
            gevent.sleep(0.01)
            with pytest.raises(SocketBusyError, match=r"mux\.send\('router'"):
                router.send_multipart([b"peer", b"x"])
        finally:
            mux.stop()
            if owner is not None:
                owner.join(2)


class TestOutboxOwnership:
    def test_outbox_does_not_steal_a_read_socket(self, ctx: Any) -> None:
        """An Outbox on a socket a reader owns is refused at once, not a silent steal."""
        pull, push = inproc_pair(ctx)
        mux = Readers([pull]).start()
        try:
            gevent.sleep(0)
            with pytest.raises(SocketBusyError, match="reader-a"):
                Outbox(pull)
            assert pull.owner.name == "reader-a"
        finally:
            mux.stop()
            push.close()
