"""Connection events: socket monitors log who connected, who left and who failed the handshake.

Real CURVE servers on free tcp ports; the clients are plain pyzmq sockets in
their own context (their own I/O thread), some with a fixed source port
(libzmq's ``tcp://SRC;DEST`` syntax) so the test knows the address the
server must report.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from greenzmq import Service, SocketSpec
from greenzmq.core.auth import client_options, generate_keys, secure
from greenzmq.core.monitor import SocketMonitor

from .helpers import ROOT, green_wait_for

README = (ROOT / "README.md").read_text()

Events = Callable[..., list[dict[str, Any]]]


# ZMTP 3.0 greeting: signature, version 3.0, mechanism NULL, as-server 0, filler
NULL_GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32


def readme_lines() -> list[dict[str, Any]]:
    """The log lines the README shows under ``<!-- monitor-test: log -->``."""
    m = re.search(r"<!-- monitor-test: log -->\n```text\n(.*?)```", README, re.S)
    assert m, "no monitor-test: log block in the README"
    return [json.loads(line) for line in m.group(1).splitlines()]


class Idle(Service):
    """A service whose sockets only exist: the monitor is what is under test."""

    def run(self) -> None:
        self.stopping.wait()


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    for name in ("server", "client", "stranger", "fake"):
        generate_keys(d, name)
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "client.key").write_bytes((d / "client.key").read_bytes())
    return {"dir": d, "allowed": allowed}


@pytest.fixture
def plain_ctx() -> Iterator[zmq.Context[Any]]:
    """A plain pyzmq context for the clients (its own I/O thread, like another process)."""
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


def serve(svc: Service, endpoints: dict[str, str] | None = None) -> gevent.Greenlet[..., Any]:
    g = gevent.spawn(svc.serve, endpoints, install_signals=False)
    green_wait_for(lambda: svc.socks or g.dead, 10, "the service's sockets")
    assert not g.dead, g.exception
    return g


def stop(svc: Service, g: gevent.Greenlet[..., Any]) -> None:
    svc.stop()
    assert g.get(timeout=10) == 0


def secured(keys: dict[str, Path], port: int, *, monitor: bool | None = True) -> Idle:
    svc = Idle(
        name="vault",
        specs=[SocketSpec("frontend", "ROUTER", bind=(f"tcp://127.0.0.1:{port}",))],
        monitor=monitor,
    )
    return secure(
        svc,
        secret_key=keys["dir"] / "server.key_secret",
        allowed_keys=keys["allowed"],
        sockets=["frontend"],
    )  # type: ignore[return-value]


def connect_from(
    ctx: zmq.Context[Any],
    src: int,
    port: int,
    options: dict[int, Any] | None = None,
    reconnect: int = 60_000,
) -> zmq.Socket[Any]:
    """A DEALER connecting from 127.0.0.1:``src`` to the server's ``port``.

    By default one attempt only: the test looks at that one.
    """
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, reconnect)
    for opt, val in (options or {}).items():
        s.setsockopt(opt, val)
    s.connect(f"tcp://127.0.0.1:{src};127.0.0.1:{port}")
    return s


class TestHandshakeFailures:
    @pytest.mark.deadline(30)
    def test_wrong_server_key_plaintext_and_stranger_are_logged_with_address(
        self, keys: dict[str, Path], logs: Any, plain_ctx: zmq.Context[Any]
    ) -> None:
        """Clients the CURVE server refuses are logged with their own 127.0.0.1:PORT.

        A client that encrypts for the wrong server key and a plaintext peer
        fail in libzmq's handshake, before the ZAP handler is asked: only the
        monitor sees them, and the server hangs up on them, so they are named
        even when the monitor's thread comes late (the kernel's closing
        sockets). A client whose key is not allowed is refused by the ZAP
        handler (status 400): ``auth.refused`` (its IP) and the monitor say so.
        """
        events = logs()
        port, wrong_src, plain_src, stranger_src, ok_src, libzmq_src = free_ports(6)
        svc = secured(keys, port)
        g = serve(svc)
        d = keys["dir"]
        wrong = client_options(d / "fake.key", d / "client.key_secret")
        stranger = client_options(d / "server.key", d / "stranger.key_secret")
        allowed = client_options(d / "server.key", d / "client.key_secret")
        allowed_key = allowed[zmq.CURVE_PUBLICKEY].decode()
        socks = []
        try:

            def failed(src: int) -> list[dict[str, Any]]:
                return events("socket.handshake_failed", address=f"127.0.0.1:{src}")

            def wait_failed(src: int) -> None:
                try:
                    green_wait_for(lambda: failed(src), 10, f"the failure of :{src}")
                except AssertionError as e:
                    seen = [e for e in events() if str(e["event"]).startswith("socket.")]
                    raise AssertionError(f"{e}; logged: {seen}") from None

            # one at a time: two connections that both fail before the monitor
            # reads their events can be told apart by IP only
            socks.append(connect_from(plain_ctx, wrong_src, port, wrong))
            wait_failed(wrong_src)
            socks[-1].close(0)
            # refused by the ZAP handler: libzmq waits for its answer, and the
            # client hangs up once told; the monitor's thread names it unless it
            # was starved of CPU that long ("unknown"; auth.refused has the IP)
            socks.append(connect_from(plain_ctx, stranger_src, port, stranger))
            green_wait_for(lambda: events("socket.handshake_failed", reason="auth"), 10, "auth")
            socks[-1].close(0)
            # a plaintext peer: the ZMTP 3.0 greeting of the NULL mechanism, then it
            # waits for the server, which hangs up (mechanism mismatch)
            raw = socket.create_connection(
                ("127.0.0.1", port), source_address=("127.0.0.1", plain_src)
            )
            raw.sendall(NULL_GREETING)
            wait_failed(plain_src)
            raw.close()
            # libzmq's own plaintext client sees the mismatch too and may hang up
            # first (one attempt: libzmq does not retry after a protocol error); a
            # peer gone before the monitor's thread asked is logged as "unknown"
            socks.append(connect_from(plain_ctx, libzmq_src, port))
            green_wait_for(lambda: len(events("socket.handshake_failed")) == 4, 10, "4 failures")
            last = events("socket.handshake_failed")[-1]
            assert last["address"] in (f"127.0.0.1:{libzmq_src}", "unknown"), last
            socks.append(connect_from(plain_ctx, ok_src, port, allowed))
            (w,) = failed(wrong_src)
            assert w["socket"] == "frontend" and w["reason"] == "protocol"
            assert w["error"] == "ZMTP_CRYPTOGRAPHIC" and w["level"] == "warning"
            (p,) = failed(plain_src)
            assert p["reason"] == "protocol" and p["error"] == "ZMTP_MECHANISM_MISMATCH"
            (st,) = events("socket.handshake_failed", reason="auth")
            assert st["code"] == 400 and st["address"] in (f"127.0.0.1:{stranger_src}", "unknown")
            # the README shows these lines: same fields, same reasons
            for shown in readme_lines():
                like = [e for e in events(shown["event"]) if e.get("error") == shown.get("error")]
                assert like, f"the README shows a line nothing logged: {shown}"
                assert set(like[0]) - {"pid", "timestamp"} == set(shown), (like[0], shown)
            # the ZAP handler's own line (libzmq gives it the IP only)
            assert events("auth.refused", address="127.0.0.1")

            def counts() -> dict[str, int]:
                c = svc.stats.snapshot()["sockets"]["frontend"].get("connections", {})
                return dict(c)

            green_wait_for(
                lambda: counts().get("handshake_succeeded") == 1, 10, "the allowed handshake"
            )
            assert events("socket.accepted", address=f"127.0.0.1:{ok_src}")
            assert not failed(ok_src) and not events("auth.refused", client_key=allowed_key)
            assert counts()["handshake_failed"] == 4 and counts()["accepted"] == 5
        finally:
            for s in socks:
                s.close(0)
            stop(svc, g)


class TestConnections:
    @pytest.mark.deadline(30)
    def test_connect_accept_disconnect_logged_and_counted(
        self, logs: Any, plain_ctx: zmq.Context[Any], endpoint: Callable[[], str]
    ) -> None:
        """A connect socket logs its peer coming and going; a bind socket its client's address."""
        events = logs()
        up, (bind_port, src) = endpoint(), free_ports(2)
        peer = plain_ctx.socket(zmq.ROUTER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.bind(up)
        svc = Idle(
            name="links",
            specs=[
                SocketSpec("upstream", "DEALER", connect=(up,)),
                SocketSpec("clients", "ROUTER", bind=(f"tcp://127.0.0.1:{bind_port}",)),
            ],
            monitor=True,
        )
        g = serve(svc)
        client = None
        try:
            green_wait_for(
                lambda: events("socket.connected", socket="upstream", address=up), 10, "connected"
            )
            client = connect_from(plain_ctx, src, bind_port)
            addr = f"127.0.0.1:{src}"
            green_wait_for(
                lambda: events("socket.accepted", socket="clients", address=addr), 10, "accepted"
            )
            client.close(0)
            peer.close(0)
            green_wait_for(
                lambda: (
                    events("socket.disconnected", socket="clients", address=addr)
                    and events("socket.disconnected", socket="upstream", address=up)
                ),
                10,
                "both disconnects",
            )
            snap = svc.stats.snapshot()["sockets"]
            assert snap["upstream"]["connections"]["connected"] == 1
            assert snap["upstream"]["connections"]["disconnected"] >= 1
            assert snap["clients"]["connections"]["accepted"] == 1
            assert snap["clients"]["connections"]["disconnected"] == 1
            (ev,) = events("socket.accepted", socket="clients")
            assert ev["service"] == "links" and ev["sock_type"] == "ROUTER"
            assert ev["endpoint"] == f"tcp://127.0.0.1:{bind_port}"
        finally:
            if client is not None:
                client.close(0)
            peer.close(0)
            stop(svc, g)

    @pytest.mark.deadline(30)
    def test_off_by_default(
        self, logs: Any, plain_ctx: zmq.Context[Any], endpoint: Callable[[], str]
    ) -> None:
        """No monitor asked for: no monitor socket, no greenlet, no event, no count."""
        events = logs()
        ep = endpoint()
        svc = Idle(name="quiet", specs=[SocketSpec("clients", "ROUTER", bind=(ep,))])
        g = serve(svc)
        client = plain_ctx.socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        try:
            assert svc.socks["clients"].peer_watch is None
            assert os.environ.get("GREENZMQ_STATS") is None
            client.connect(ep)
            client.send(b"hello")
            green_wait_for(
                lambda: svc.socks["clients"].raw.poll(0) or None, 10, "the request to arrive"
            )
            assert not [e for e in events() if str(e.get("event", "")).startswith("socket.")]
            assert "connections" not in svc.stats.snapshot()["sockets"]["clients"]
            assert not [gr for gr in svc.group if (gr.name or "").startswith("monitor:")]
        finally:
            client.close(0)
            stop(svc, g)

    @pytest.mark.deadline(30)
    def test_reconnect_loop_does_not_flood_the_log(
        self,
        keys: dict[str, Path],
        logs: Any,
        plain_ctx: zmq.Context[Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Plaintext clients hammering a CURVE socket: every one counted, a few lines logged."""
        events = logs()
        (port,) = free_ports(1)
        svc = secured(keys, port)
        monkeypatch.setattr(SocketMonitor, "burst", 5)
        g = serve(svc)
        n = 30
        socks = []
        try:
            for _ in range(n):
                s = plain_ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RECONNECT_IVL, 60_000)
                s.connect(f"tcp://127.0.0.1:{port}")
                socks.append(s)

            def failures() -> int:
                c = svc.stats.snapshot()["sockets"]["frontend"].get("connections", {})
                return int(c.get("handshake_failed", 0))

            green_wait_for(lambda: failures() >= n, 15, f"{n} handshake failures counted")
        finally:
            for s in socks:
                s.close(0)
            stop(svc, g)  # closing reports what the window held back
        logged = events("socket.handshake_failed")
        assert 1 <= len(logged) <= 5
        held = sum(e["count"] for e in events("socket.events_suppressed", kind="handshake_failed"))
        assert len(logged) + held == failures_total(svc)


def failures_total(svc: Service) -> int:
    return int(svc.stats.snapshot()["sockets"]["frontend"]["connections"]["handshake_failed"])


class TestBindFailed:
    @pytest.mark.deadline(20)
    def test_a_bind_at_run_time_that_fails_is_logged(
        self, logs: Any, endpoint: Callable[[], str]
    ) -> None:
        """A service that binds one more endpoint while it runs: the failure is an event too."""
        events = logs()
        taken = socket.create_server(("127.0.0.1", 0))
        busy = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        svc = Idle(name="late", specs=[SocketSpec("clients", "ROUTER", bind=(endpoint(),))])
        svc.monitor = True
        g = serve(svc)
        try:
            with pytest.raises(zmq.ZMQError):
                svc.socks["clients"].bind(busy)
            # libzmq names the endpoint without its transport here
            where = busy.removeprefix("tcp://")
            ev = green_wait_for(lambda: events("socket.bind_failed", endpoint=where), 10, "event")
            assert ev[0]["error"] == "EADDRINUSE" and ev[0]["level"] == "error"
            assert svc.stats.snapshot()["sockets"]["clients"]["connections"]["bind_failed"] == 1
        finally:
            taken.close()
            stop(svc, g)

    def test_a_monitored_bind_says_why_it_failed(self, ctx: Any) -> None:
        """libzmq leaves EAGAIN after a monitored bind fails; the error still says why."""
        taken = socket.create_server(("127.0.0.1", 0))
        busy = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        try:
            ctx.monitor_events = True
            with pytest.raises(zmq.ZMQError, match="Address already in use") as err:
                ctx.build(SocketSpec("clients", "ROUTER", bind=(busy,)))
            assert err.value.errno == zmq.EADDRINUSE
        finally:
            taken.close()


class TestLauncher:
    @pytest.mark.deadline(40)
    def test_monitor_setting_logs_and_exports_connection_events(
        self, service: Any, endpoint: Callable[[], str]
    ) -> None:
        """``--monitor`` under the launcher: the events in the log and in ``--metrics``."""
        from .helpers import free_port, wait_for
        from .test_ops import scrape_until, value

        fe, be, kill = endpoint(), endpoint(), endpoint()
        port, (src,) = free_port(), free_ports(1)
        p = service(
            "greenzmq.services.broker:app", "--monitor", "--metrics", f"127.0.0.1:{port}",
            "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}",
            "--endpoint", f"kill={kill}",
        )  # fmt: skip
        p.wait_started()
        ctx: zmq.Context[Any] = zmq.Context()
        c = connect_from(ctx, src, int(fe.rpartition(":")[2]))
        try:
            ev = p.wait_event("socket.accepted", 10, address=f"127.0.0.1:{src}")
            assert ev["socket"] == "frontend" and ev["endpoint"] == fe
            c.close(0)
            wait_for(lambda: p.events("socket.disconnected", socket="frontend"), 10, "gone")

            def counted(s: Any) -> bool:
                labels = {"socket": "frontend"}
                return (
                    value(s, "greenzmq_connection_events_total", event="accepted", **labels) == 1
                    and value(s, "greenzmq_connection_events_total", event="disconnected", **labels)
                    == 1
                )

            scrape_until(port, counted, "the frontend's accept and disconnect")
        finally:
            c.close(0)
            ctx.term()


def test_a_spec_overrides_the_service(ctx: Any, endpoint: Callable[[], str]) -> None:
    """``SocketSpec(monitor=...)`` wins over the service's setting, both ways."""
    ctx.monitor_events = True
    quiet = ctx.build(SocketSpec("quiet", "ROUTER", bind=(endpoint(),), monitor=False))
    ctx.monitor_events = False
    loud = ctx.build(SocketSpec("loud", "ROUTER", bind=(endpoint(),), monitor=True))
    try:
        assert quiet.peer_watch is None
        assert loud.peer_watch is not None and loud.peer_watch.events
    finally:
        quiet.close(0)
        loud.close(0)  # its monitor's PAIR too (nobody started a reader)
