"""GreenPoller: zmq.green.Poller's API, wake(), timeouts, and no select() FD limit."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import zmq
import zmq.green as gzmq

from greenzmq.core.poller import GreenPoller
from greenzmq.core.sockets import SocketSpec


class _NoPrivateMap(GreenPoller):
    """A GreenPoller whose pyzmq-private ``_map`` greenzmq's own code cannot see.

    pyzmq's methods still use it; greenzmq.core.poller gets AttributeError, as
    it would from a pyzmq release that renamed it.
    """

    def __getattribute__(self, name: str) -> Any:
        if name == "_map" and sys._getframe(1).f_globals.get("__name__") == "greenzmq.core.poller":
            raise AttributeError(name)
        return super().__getattribute__(name)


@pytest.fixture
def pair(ctx: Any, endpoint: Callable[[], str]) -> Iterator[tuple[Any, Any]]:
    """A connected (PULL, PUSH) pair, closed afterwards."""
    ep = endpoint()
    pull = ctx.build(SocketSpec("pull", "PULL", bind=(ep,)))
    push = ctx.build(SocketSpec("push", "PUSH", connect=(ep,)))
    yield pull, push
    pull.close()
    push.close()


class TestAPI:
    def test_is_a_green_poller(self) -> None:
        """A GreenPoller is a zmq.green.Poller (drop-in)."""
        assert isinstance(GreenPoller(), gzmq.Poller)

    def test_ready_socket(self, pair: tuple[Any, Any]) -> None:
        """poll() returns (socket, POLLIN) for a readable socket, like zmq.green.Poller."""
        pull, push = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        push.send(b"x")
        with gevent.Timeout(5):
            events = p.poll()
        assert events == [(pull, zmq.POLLIN)]
        assert dict(p.poll(0)) == dict(gzmq.Poller.poll(p, 0))

    def test_same_answers_as_zmq_green(self, pair: tuple[Any, Any]) -> None:
        """Given the same registrations, GreenPoller and zmq.green.Poller report the same."""
        pull, push = pair
        ours, theirs = GreenPoller(), gzmq.Poller()
        for p in (ours, theirs):
            p.register(pull, zmq.POLLIN)
            p.register(push, zmq.POLLOUT)
        push.send(b"x")
        with gevent.Timeout(5):
            while len(theirs.poll(100)) < 2:
                pass
        assert dict(ours.poll(100)) == dict(theirs.poll(100))
        assert ours.sockets == theirs.sockets

    def test_modify_and_unregister(self, pair: tuple[Any, Any]) -> None:
        """modify() and unregister() change what poll() reports."""
        _, push = pair
        p = GreenPoller()
        p.register(push, zmq.POLLIN)
        assert p.poll(0) == []  # a PUSH is never readable
        p.modify(push, zmq.POLLOUT)
        with gevent.Timeout(5):
            assert p.poll() == [(push, zmq.POLLOUT)]
        p.unregister(push)
        assert p.poll(0) == []
        assert p.sockets == []

    def test_register_with_flags_0_through_public_names_only(self, pair: tuple[Any, Any]) -> None:
        """register(sock, 0) unregisters (zmq.Poller's meaning; a no-op if not registered),
        using only pyzmq's public names: greenzmq's code never reads the private ``_map``
        (this poller hides it from greenzmq, as a pyzmq that renamed it would)."""
        pull, push = pair
        p = _NoPrivateMap()
        p.register(pull, zmq.POLLIN)
        p.register(push, zmq.POLLOUT)
        p.register(push, 0)
        assert p.sockets == [(pull, zmq.POLLIN)]
        p.register(push, 0)  # not registered: nothing happens
        assert p.sockets == [(pull, zmq.POLLIN)]
        push.send(b"x")
        with gevent.Timeout(5):
            assert p.poll() == [(pull, zmq.POLLIN)]  # the watchers were rebuilt
        p.register(pull, 0)
        assert p.sockets == [] and p.poll(0) == []

    def test_plain_file_descriptor(self) -> None:
        """Plain FDs (a pipe) can be polled too, and wake a parked poll."""
        r, w = os.pipe()
        try:
            p = GreenPoller()
            p.register(r, zmq.POLLIN)
            gevent.spawn_later(0.05, os.write, w, b"x")
            with gevent.Timeout(5):
                assert p.poll() == [(r, zmq.POLLIN)]
        finally:
            os.close(r)
            os.close(w)

    def test_wakes_on_message(self, pair: tuple[Any, Any]) -> None:
        """A parked poll returns when a message arrives, and other greenlets run meanwhile."""
        pull, push = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        poller = gevent.spawn(p.poll)
        gevent.sleep(0.05)
        assert not poller.dead
        push.send(b"x")
        assert poller.get(timeout=5) == [(pull, zmq.POLLIN)]


class TestTimeouts:
    def test_timeout_returns_empty(self, pair: tuple[Any, Any]) -> None:
        """poll(ms) with nothing ready returns [] after about ms (a generous hang bound)."""
        pull, _ = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        t0 = time.monotonic()
        assert p.poll(50) == []
        elapsed = time.monotonic() - t0
        assert 0.04 <= elapsed < 2.0

    def test_timeout_counts_from_the_call_after_the_hub_was_busy(
        self, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """poll(ms) right after the hub ran code for a while still waits ms, also when a
        wake-up with nothing to read comes meanwhile (a peer connecting): the deadline
        was taken from the loop's cached clock, behind by the busy time (CI saw 28 ms)."""
        ep = endpoint()
        pull = ctx.build(SocketSpec("pull", "PULL", bind=(ep,)))
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        peers: list[Any] = []

        def connect_later() -> None:
            gevent.sleep(0.1)
            peers.append(ctx.build(SocketSpec("push", "PUSH", connect=(ep,))))

        try:
            gevent.sleep(0)  # the loop's clock is read here...
            busy_until = time.monotonic() + 0.3
            while time.monotonic() < busy_until:  # ...then 0.3 s pass without the loop
                pass
            g = gevent.spawn(connect_later)
            t0 = time.monotonic()
            assert p.poll(400) == []
            elapsed = time.monotonic() - t0
            g.get(timeout=5)
            assert elapsed >= 0.39, elapsed
        finally:
            for s in (pull, *peers):
                s.close(linger=0)

    def test_zero_timeout(self, pair: tuple[Any, Any]) -> None:
        """poll(0) never waits."""
        pull, _ = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        with gevent.Timeout(1):
            assert p.poll(0) == []

    def test_gevent_timeout(self, pair: tuple[Any, Any]) -> None:
        """A gevent.Timeout interrupts a parked poll, and the poller still works after."""
        pull, push = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
            p.poll()
        push.send(b"x")
        with gevent.Timeout(5):
            assert p.poll() == [(pull, zmq.POLLIN)]

    def test_poll_longer_than_fallback(self, pair: tuple[Any, Any]) -> None:
        """A message after the internal fallback wait is still seen at once."""
        pull, push = pair
        p = GreenPoller()
        p._gevent_bug_timeout = 0.02
        p.register(pull, zmq.POLLIN)
        gevent.spawn_later(0.1, push.send, b"x")
        with gevent.Timeout(5):
            assert p.poll() == [(pull, zmq.POLLIN)]


class TestWake:
    def test_wake_parked_poll(self, pair: tuple[Any, Any]) -> None:
        """wake() from another greenlet makes a parked poll return [] at once."""
        pull, _ = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        g = gevent.spawn(p.poll)
        gevent.sleep(0.02)
        assert not g.dead
        p.wake()
        assert g.get(timeout=2) == []

    def test_wake_before_poll(self, pair: tuple[Any, Any]) -> None:
        """A wake() before poll() makes the next poll return [] once, then it waits again."""
        pull, _ = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        p.wake()
        with gevent.Timeout(2):
            assert p.poll() == []
        assert p.poll(30) == []  # waited its timeout: the wake was used up

    def test_ready_beats_wake(self, pair: tuple[Any, Any]) -> None:
        """Ready sockets are reported even after a wake(): no message is skipped."""
        pull, push = pair
        p = GreenPoller()
        p.register(pull, zmq.POLLIN)
        push.send(b"x")
        with gevent.Timeout(5):
            while not gzmq.Poller.poll(p, 0):
                gevent.sleep(0.001)
        p.wake()
        assert p.poll() == [(pull, zmq.POLLIN)]


class TestHighFileDescriptors:
    @pytest.mark.deadline(60)
    def test_fd_over_1024(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """With ZMQ_FDs >= 1024, zmq.green.Poller raises ValueError; GreenPoller works."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1300:
            if hard != resource.RLIM_INFINITY and hard < 1300:
                pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1300")
            resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
        files = [open(os.devnull, "rb") for _ in range(1100)]  # noqa: SIM115 - closed below
        ep = endpoint()
        pull = ctx.build(SocketSpec("pull", "PULL", bind=(ep,)))
        push = ctx.build(SocketSpec("push", "PUSH", connect=(ep,)))
        try:
            assert pull.getsockopt(zmq.FD) >= 1024, "premise: the socket's FD is >= 1024"
            theirs = gzmq.Poller()
            theirs.register(pull, zmq.POLLIN)
            with pytest.raises(ValueError, match="filedescriptor out of range"):
                theirs.poll(10)
            ours = GreenPoller()
            ours.register(pull, zmq.POLLIN)
            assert ours.poll(10) == []
            gevent.spawn_later(0.05, push.send, b"x")
            with gevent.Timeout(5):
                assert ours.poll() == [(pull, zmq.POLLIN)]
            assert pull.recv() == b"x"
        finally:
            pull.close()
            push.close()
            for f in files:
                f.close()


class CountingPoller(GreenPoller):
    """A GreenPoller that counts how often its parked poll is woken."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.wakeups = 0

    def _on_ready(self, *args: Any) -> None:
        self.wakeups += 1
        super()._on_ready(*args)


def idle_poll(p: GreenPoller, timeout: float, seconds: float) -> tuple[int, float]:
    """Poll ``p`` in a loop for ``seconds``; (polls that returned, CPU seconds used)."""
    polls = 0

    def loop() -> None:
        nonlocal polls
        while True:
            p.poll(timeout)
            polls += 1

    cpu0 = time.process_time()
    g = gevent.spawn(loop)
    gevent.sleep(seconds)
    g.kill()
    return polls, time.process_time() - cpu0


@pytest.mark.slow
class TestIdle:
    """An idle poll parks: it wakes only for its fallback timer or its timeout."""

    FALLBACK = GreenPoller._gevent_bug_timeout
    WINDOW = 2 * GreenPoller._gevent_bug_timeout + 0.5  # past the fallback twice

    @pytest.mark.parametrize("timeout", [-1, None, 2000])
    def test_idle_router_does_not_spin(
        self, ctx: Any, endpoint: Callable[[], str], timeout: Any
    ) -> None:
        """poll(-1) and poll(timeout > fallback) on an idle ROUTER: a few wake-ups, ~no CPU.

        The fallback timer was one reused libev timer; once it had fired, every
        later start fired at once (libev keeps its expiry relative to 0): 50k+
        wake-ups a second at a full core.
        """
        r = ctx.build(SocketSpec("r", "ROUTER", bind=(endpoint(),)))
        p = CountingPoller()
        p.register(r, zmq.POLLIN)
        polls, cpu = idle_poll(p, timeout, self.WINDOW)
        r.close()
        assert p.wakeups <= self.WINDOW / self.FALLBACK + 2, p.wakeups
        assert polls <= self.WINDOW / min(self.FALLBACK, 2.0) + 2, polls
        assert cpu < 0.1 * self.WINDOW, f"{cpu:.3f} s of CPU in {self.WINDOW} s idle"

    def test_persistent_idle_does_not_spin(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """The broker's persistent watchers park the same way."""
        r = ctx.build(SocketSpec("r", "ROUTER", bind=(endpoint(),)))
        p = CountingPoller(persistent=True)
        p.register(r, zmq.POLLIN)
        try:
            _, cpu = idle_poll(p, -1, self.WINDOW)
        finally:
            p.close_watchers()
            r.close()
        assert p.wakeups <= self.WINDOW / self.FALLBACK + 2, p.wakeups
        assert cpu < 0.1 * self.WINDOW

    def test_after_a_peer_leaves(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A ROUTER whose peers came, talked and left stays quiet (pyzmq PR #2167's case)."""
        ep = endpoint()
        r = ctx.build(SocketSpec("r", "ROUTER", bind=(ep,)))
        p = CountingPoller()
        p.register(r, zmq.POLLIN)
        for i in range(5):
            d = ctx.build(SocketSpec(f"d{i}", "DEALER", connect=(ep,)))
            d.send(b"hi")
            with gevent.Timeout(5):
                assert p.poll(-1)
            r.recv_multipart()
            d.close(linger=0)
        _, cpu = idle_poll(p, -1, self.WINDOW)
        r.close()
        # each leaving peer is a few libzmq commands on the FD (pipe term and
        # its ack): real wake-ups, a handful per peer, not a spin
        assert p.wakeups <= self.WINDOW / self.FALLBACK + 2 + 5 * 5, p.wakeups
        assert cpu < 0.1 * self.WINDOW

    def test_stuck_readable_fd_does_not_spin(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A socket FD that stays readable with no event behind it backs off instead of spinning.

        libzmq's FD can stay readable while the socket has nothing for the
        application (pyzmq PR #2167: 99% CPU after a peer disconnect). Here the
        watched FD is replaced by a pipe that is never drained, which is exactly
        that state; a real message must still be seen promptly.
        """
        ep = endpoint()
        r = ctx.build(SocketSpec("r", "ROUTER", bind=(ep,)))
        rfd, wfd = os.pipe()
        os.write(wfd, b"x")

        class Stuck(CountingPoller):
            def _fds(self) -> list[tuple[int, int]]:
                return [(rfd, 1)]

        p = Stuck()
        p.register(r, zmq.POLLIN)
        try:
            polls, cpu = idle_poll(p, -1, 1.5)
            assert cpu < 0.15, f"{cpu:.3f} s of CPU in 1.5 s with a stuck FD ({polls} polls)"
            d = ctx.build(SocketSpec("d", "DEALER", connect=(ep,)))
            d.send(b"hi")
            t0 = time.monotonic()
            with gevent.Timeout(5):
                assert p.poll(-1) == [(r, zmq.POLLIN)]
            assert time.monotonic() - t0 < 0.5
            r.recv_multipart()
            d.close(linger=0)
        finally:
            p.close_watchers()
            r.close()
            os.close(rfd)
            os.close(wfd)
