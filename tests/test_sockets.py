"""Socket specs, endpoint syntax, Context.build options, and socket ownership."""

from __future__ import annotations

import dataclasses
import socket as pysocket
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import zmq

from greenzmq import ConfigError, SocketBusyError
from greenzmq.core.endpoints import parse_endpoint
from greenzmq.core.sockets import SocketSpec, apply_endpoints, socket_type


class TestSocketSpec:
    def test_type_by_name_or_number(self) -> None:
        """A type is a name (any case) or a zmq constant."""
        assert SocketSpec("a", "router").zmq_type == zmq.ROUTER
        assert SocketSpec("a", zmq.PULL).zmq_type == zmq.PULL
        assert socket_type("XPUB") == zmq.XPUB

    @pytest.mark.parametrize("kind", ["ROUTERR", "", 999])
    def test_unknown_type(self, kind: Any) -> None:
        """An unknown socket type is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="unknown socket type"):
            SocketSpec("a", kind)

    def test_endpoints_must_be_a_sequence(self) -> None:
        """A bare string for bind/connect is refused (it would be split into characters)."""
        with pytest.raises(ConfigError, match="sequence"):
            SocketSpec("a", "PUSH", bind="tcp://127.0.0.1:5000")  # type: ignore[arg-type]

    def test_bad_endpoint_in_spec(self) -> None:
        """A malformed endpoint is refused when the spec is declared, not when used."""
        with pytest.raises(ConfigError, match="malformed endpoint"):
            SocketSpec("a", "PUSH", connect=("tcp://127.0.0.1",))
        with pytest.raises(ConfigError, match="only for binding"):
            SocketSpec("a", "PUSH", connect=("tcp://*:5000",))

    def test_frozen(self) -> None:
        """A spec is immutable."""
        spec = SocketSpec("a", "PUSH")
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.name = "b"  # type: ignore[misc]

    def test_with_endpoint_keeps_direction(self) -> None:
        """Overriding an endpoint keeps bind/connect; a wildcard always binds."""
        b = SocketSpec("a", "PUSH", bind=("tcp://127.0.0.1:1",))
        c = SocketSpec("a", "PULL", connect=("tcp://127.0.0.1:1",))
        assert b.with_endpoint("ipc:///tmp/x").bind == ("ipc:///tmp/x",)
        assert c.with_endpoint("tcp://127.0.0.1:2").connect == ("tcp://127.0.0.1:2",)
        wild = c.with_endpoint("tcp://*:2")
        assert (wild.bind, wild.connect) == (("tcp://*:2",), ())

    def test_apply_endpoints(self) -> None:
        """Overrides replace named sockets; an unknown name lists the known ones."""
        specs = [SocketSpec("x", "PUSH", bind=("tcp://127.0.0.1:1",)), SocketSpec("y", "SUB")]
        out = apply_endpoints(specs, {"x": "tcp://127.0.0.1:9"})
        assert out[0].bind == ("tcp://127.0.0.1:9",)
        assert out[1] is specs[1]
        with pytest.raises(ConfigError, match=r"unknown endpoint name 'z'.*x, y"):
            apply_endpoints(specs, {"z": "tcp://127.0.0.1:9"})


class TestEndpointSyntax:
    @pytest.mark.parametrize(
        "ep",
        [
            "tcp://127.0.0.1:5555",
            "tcp://localhost:1",
            "tcp://[::1]:65535",
            "tcp://*:5555",
            "tcp://127.0.0.1:*",
            "ipc:///tmp/sock",
            "inproc://name",
        ],
    )
    def test_valid(self, ep: str) -> None:
        """Accepted endpoints come back unchanged."""
        assert parse_endpoint(ep) == ep

    @pytest.mark.parametrize(
        ("ep", "why"),
        [
            ("127.0.0.1:5555", "TRANSPORT://ADDRESS"),
            ("tcp://127.0.0.1", "tcp://HOST:PORT"),
            ("tcp://127.0.0.1:0", "out of range"),
            ("tcp://127.0.0.1:70000", "out of range"),
            ("tcp://host name:1", "tcp://HOST:PORT"),
            ("udp://127.0.0.1:1", "unknown transport 'udp'"),
            ("ipc://", "empty ipc address"),
        ],
    )
    def test_malformed(self, ep: str, why: str) -> None:
        """Malformed endpoints are a ConfigError that quotes them and says why."""
        with pytest.raises(ConfigError, match="malformed endpoint") as info:
            parse_endpoint(ep)
        assert why in str(info.value)
        assert repr(ep) in str(info.value)

    def test_wildcard_only_binds(self) -> None:
        """``*`` cannot be connected to."""
        with pytest.raises(ConfigError, match="only for binding"):
            parse_endpoint("tcp://*:1", bind=False)


class TestBuild:
    def test_options(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """hwm, linger and identity from the spec reach the libzmq socket."""
        s = ctx.build(
            SocketSpec("d", "DEALER", connect=(endpoint(),), hwm=7, linger=123, identity=b"me")
        )
        try:
            assert s.name == "d"
            assert s.getsockopt(zmq.SNDHWM) == 7
            assert s.getsockopt(zmq.RCVHWM) == 7
            assert s.getsockopt(zmq.LINGER) == 123
            assert s.getsockopt(zmq.IDENTITY) == b"me"
        finally:
            s.close()

    def test_identity_seen_by_router(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A ROUTER sees the declared identity as the routing id."""
        ep = endpoint()
        r = ctx.build(SocketSpec("r", "ROUTER", bind=(ep,)))
        d = ctx.build(SocketSpec("d", "DEALER", connect=(ep,), identity=b"dealer-1"))
        try:
            d.send_multipart([b"", b"hi"])
            with gevent.Timeout(5):
                assert r.recv_multipart() == [b"dealer-1", b"", b"hi"]
        finally:
            r.close()
            d.close()

    def test_router_mandatory_by_default(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A ROUTER refuses to route to an unknown peer (EHOSTUNREACH), unless told not to."""
        r = ctx.build(SocketSpec("r", "ROUTER", bind=(endpoint(),)))
        quiet = ctx.build(SocketSpec("q", "ROUTER", bind=(endpoint(),), router_mandatory=False))
        try:
            with pytest.raises(zmq.ZMQError) as info:
                r.send_multipart([b"nobody", b"", b"x"])
            assert info.value.errno == zmq.EHOSTUNREACH
            quiet.send_multipart([b"nobody", b"", b"x"])  # silently dropped, as libzmq does
        finally:
            r.close()
            quiet.close()

    def test_subscribe(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A SUB gets only its declared topics; the default is everything."""
        ep = endpoint()
        pub = ctx.build(SocketSpec("p", "XPUB", bind=(ep,)))
        only_a = ctx.build(SocketSpec("a", "SUB", connect=(ep,), subscribe=(b"a",)))
        every = ctx.build(SocketSpec("e", "SUB", connect=(ep,)))
        try:
            with gevent.Timeout(5):
                # both subscriptions have arrived (no slow-joiner guesswork)
                assert sorted(pub.recv() for _ in range(2)) == [b"\x01", b"\x01a"]
                pub.send(b"b1")
                pub.send(b"a1")
                assert only_a.recv() == b"a1"
                assert [every.recv(), every.recv()] == [b"b1", b"a1"]
        finally:
            for s in (pub, only_a, every):
                s.close()

    def test_extra_options(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """``options`` are set as raw socket options."""
        s = ctx.build(SocketSpec("x", "PUSH", bind=(endpoint(),), options={zmq.SNDBUF: 65536}))
        try:
            assert s.getsockopt(zmq.SNDBUF) == 65536
        finally:
            s.close()

    def test_port_in_use(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A bind failure names the socket and endpoint and leaves no socket open."""
        with pysocket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            ep = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
            with pytest.raises(zmq.ZMQError) as info:
                ctx.build(SocketSpec("front", "ROUTER", bind=(ep,)))
        assert info.value.errno == zmq.EADDRINUSE
        assert f"cannot bind socket 'front' to {ep}" in str(info.value)
        # the ctx fixture fails the test if the half-built socket was left open

    def test_build_all_closes_on_failure(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """If one spec fails, the ones built before it are closed."""
        ep = endpoint()
        with pytest.raises(zmq.ZMQError):
            ctx.build_all(
                [SocketSpec("one", "PULL", bind=(ep,)), SocketSpec("two", "PULL", bind=(ep,))]
            )
        assert all(s.closed for s in ctx._sockets)

    def test_raw_shadow(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """``raw`` is a plain zmq socket on the same libzmq socket."""
        ep = endpoint()
        pull = ctx.build(SocketSpec("pull", "PULL", bind=(ep,)))
        push = ctx.build(SocketSpec("push", "PUSH", connect=(ep,)))
        try:
            push.send(b"x")
            with gevent.Timeout(5):
                assert pull.recv() == b"x"
            assert type(pull.raw) is zmq.Socket
            assert pull.raw.underlying == pull.underlying
            with pytest.raises(zmq.Again):
                pull.raw.recv(zmq.NOBLOCK)
        finally:
            pull.close()
            push.close()


def _pair(ctx: Any, endpoint: Callable[[], str]) -> tuple[Any, Any]:
    ep = endpoint()
    pull = ctx.build(SocketSpec("inbox", "PULL", bind=(ep,)))
    push = ctx.build(SocketSpec("outbox", "PUSH", connect=(ep,)))
    return pull, push


class TestOwnership:
    def test_second_receiver_fails_at_once(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """A second greenlet recv on a socket another greenlet waits on: SocketBusyError now."""
        pull, push = _pair(ctx, endpoint)
        try:
            first = gevent.spawn(pull.recv)
            first.name = "first-reader"
            gevent.sleep(0)  # first is parked in recv and owns the socket
            second = gevent.spawn(pull.recv)
            second.name = "second-reader"
            second.join(2)
            assert second.dead, "the second reader hung instead of failing"
            err = second.exception
            assert isinstance(err, SocketBusyError)
            msg = str(err)
            assert "'inbox'" in msg and "PULL" in msg
            assert "'first-reader'" in msg and "'second-reader'" in msg and "recv" in msg
            # the owner is unharmed and still gets the message
            push.send(b"m")
            assert first.get(timeout=5) == b"m"
        finally:
            pull.close()
            push.close()

    def test_second_sender_fails(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """Sending from a greenlet that does not own the socket raises, naming both."""
        pull, push = _pair(ctx, endpoint)
        try:
            push.send(b"from main")  # the main greenlet owns it now
            g = gevent.spawn(push.send, b"from other")
            g.name = "intruder"
            g.join(2)
            assert isinstance(g.exception, SocketBusyError)
            assert "the main greenlet" in str(g.exception)
            assert "'intruder'" in str(g.exception) and "send" in str(g.exception)
            with gevent.Timeout(5):
                assert pull.recv() == b"from main"
        finally:
            pull.close()
            push.close()

    def test_owner_death_frees_socket(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """Once the owner is dead, the next greenlet to use the socket owns it."""
        pull, push = _pair(ctx, endpoint)
        try:
            gevent.spawn(push.send, b"1").join(5)
            g = gevent.spawn(push.send, b"2")
            g.join(5)
            assert g.successful()
            assert push.owner is g
            with gevent.Timeout(5):
                assert [pull.recv(), pull.recv()] == [b"1", b"2"]
        finally:
            pull.close()
            push.close()

    def test_claim_and_release(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """claim() reserves a socket before first use; release() hands it on."""
        pull, push = _pair(ctx, endpoint)
        try:
            owner = gevent.spawn(gevent.sleep, 10)
            push.claim(owner)
            with pytest.raises(SocketBusyError):
                push.send(b"x")
            push.release()
            push.send(b"x")
            assert push.owner is gevent.getcurrent()
            owner.kill()
            with gevent.Timeout(5):
                assert pull.recv() == b"x"
        finally:
            pull.close()
            push.close()

    def test_claim_never_steals(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """claim() while another live greenlet owns the socket raises; hand_over is explicit."""
        pull, push = _pair(ctx, endpoint)
        try:
            owner = gevent.spawn(pull.recv)
            owner.name = "owner"
            gevent.sleep(0)  # parked in recv: owns pull
            thief = gevent.spawn(pull.claim)
            thief.name = "thief"
            thief.join(2)
            assert isinstance(thief.exception, SocketBusyError)
            assert "'owner'" in str(thief.exception) and "claim" in str(thief.exception)
            assert pull.owner is owner
            with pytest.raises(SocketBusyError, match="hand over"):
                pull.hand_over(gevent.getcurrent())  # only the owner may hand it over
            push.send(b"x")
            assert owner.get(timeout=5) == b"x"
            # the owner hands over explicitly; a dead owner's socket is free to claim
            heir = gevent.spawn(pull.recv)
            owner_hands = gevent.spawn(lambda: pull.hand_over(heir))
            assert owner_hands.get(timeout=5) is None  # owner is dead: anyone may hand over
            assert pull.owner is heir
            push.send(b"y")
            assert heir.get(timeout=5) == b"y"
            pull.claim()  # heir is dead now
            assert pull.owner is gevent.getcurrent()
        finally:
            pull.close()
            push.close()

    def test_live_owner_hands_over(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """The owner itself may hand its socket to another greenlet, which may then use it."""
        pull, push = _pair(ctx, endpoint)
        try:
            push.send(b"1")  # main owns push
            g = gevent.spawn(push.send, b"2")
            push.hand_over(g)
            g.get(timeout=5)
            with gevent.Timeout(5):
                assert [pull.recv(), pull.recv()] == [b"1", b"2"]
        finally:
            pull.close()
            push.close()

    def test_broken_broker_raises(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """The tutorial's broken broker (two greenlets pumping one ROUTER/DEALER pair) raises."""
        fe_ep, be_ep = endpoint(), endpoint()
        frontend = ctx.build(SocketSpec("frontend", "ROUTER", bind=(fe_ep,)))
        backend = ctx.build(SocketSpec("backend", "DEALER", bind=(be_ep,)))
        client = ctx.build(SocketSpec("client", "REQ", connect=(fe_ep,)))
        worker = ctx.build(SocketSpec("worker", "REP", connect=(be_ep,)))

        def pump(src: Any, dst: Any) -> None:
            while True:
                dst.send_multipart(src.recv_multipart())

        t1 = gevent.spawn(pump, frontend, backend)
        t1.name = "t1"
        t2 = gevent.spawn(pump, backend, frontend)
        t2.name = "t2"
        try:
            gevent.sleep(0)  # both pumps are parked in recv, each owning its source
            client.send(b"1")
            done = gevent.wait([t1, t2], timeout=5, count=1)
            assert done, "the broken broker hung instead of raising"
            assert t1.dead and isinstance(t1.exception, SocketBusyError)
            msg = str(t1.exception)
            assert "'backend'" in msg and "DEALER" in msg and "'t1'" in msg and "'t2'" in msg
        finally:
            gevent.killall([t1, t2])
            for s in (frontend, backend, client, worker):
                s.close()


class TestPollOwnership:
    def test_poll_by_another_greenlet(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """Polling a socket another greenlet is parked on raises instead of stealing its wakeup."""
        pull, push = _pair(ctx, endpoint)
        try:
            owner = gevent.spawn(pull.recv)
            owner.name = "owner"
            gevent.sleep(0)
            with pytest.raises(SocketBusyError, match="tried to poll"):
                pull.poll(10)
            push.send(b"x")
            assert owner.get(timeout=5) == b"x"
            # the owner itself may poll
            assert pull.poll(0) == 0
        finally:
            pull.close()
            push.close()


class TestTimeouts:
    def test_gevent_timeout_on_recv(self, ctx: Any, endpoint: Callable[[], str]) -> None:
        """gevent.Timeout interrupts a green recv, repeatedly; the socket still works after."""
        pull, push = _pair(ctx, endpoint)
        try:
            for _ in range(2):
                with pytest.raises(gevent.Timeout), gevent.Timeout(0.02):
                    pull.recv()
            push.send(b"x")
            with gevent.Timeout(5):
                assert pull.recv() == b"x"
        finally:
            pull.close()
            push.close()


class TestPublicAPI:
    def test_import_is_light_and_all_resolves(self) -> None:
        """`import greenzmq` imports no zmq/gevent; every name in __all__ resolves."""
        import subprocess
        import sys

        code = (
            "import sys, greenzmq\n"
            "assert 'zmq' not in sys.modules and 'gevent' not in sys.modules\n"
            "missing = [n for n in greenzmq.__all__ if getattr(greenzmq, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert greenzmq.__all__ == sorted(greenzmq.__all__)\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr


class TestRepReplies:
    @pytest.mark.deadline(60)
    def test_rep_keeps_replies_while_its_peer_is_not_reading(
        self, ctx: Any, endpoint: Callable[[], str]
    ) -> None:
        """A REP answering a peer that reads nothing yet loses no reply (libzmq drops at SNDHWM)."""
        ep = endpoint()
        peer = ctx.build(SocketSpec("peer", "DEALER", bind=(ep,), hwm=10))
        rep = ctx.build(SocketSpec("rep", "REP", connect=(ep,)))
        n, body = 5000, b"x" * 2000

        def serve() -> int:
            for _ in range(n):
                rep.send(rep.recv())
            return n

        server = gevent.spawn(serve)
        for i in range(n):
            peer.send_multipart([b"", b"%d" % i + body])
        assert server.get(timeout=30) == n  # every reply was handed to libzmq
        got = 0
        with gevent.Timeout(30, False):
            while got < n:
                peer.recv_multipart()
                got += 1
        assert got == n, f"{n - got} replies dropped"
        peer.close()
        rep.close()
