"""CURVE: keygen, the green ZAP handler, an allowed client talks, others get nothing (and are
logged), and the bytes on the wire are not the plaintext."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq
from zmq.utils import z85

from greenzmq import RequestTimeout, Service, SocketSpec
from greenzmq.core.auth import GreenAuthenticator, client_options, generate_keys, load_keypair
from greenzmq.patterns.lazypirate import LazyPirate

from .helpers import ROOT, ServiceProcess, free_endpoint, free_port, wait_for

MARKER = b"31415926535"  # the request body; its square is the reply
SQUARE = str(int(MARKER) ** 2).encode()


class Relay:
    """A TCP relay to ``port`` that records every byte it carries, both ways."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [c, s]
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.lsock.close()
        for s in self._conns:
            s.close()


def _port(ep: str) -> int:
    return int(ep.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """server, client and intruder key pairs; only client's public key is allowed."""
    d = tmp_path_factory.mktemp("keys")
    allowed = d / "allowed"
    allowed.mkdir()
    out = {"dir": d, "allowed": allowed}
    for name in ("server", "client", "intruder"):
        out[name + ".key"], out[name + ".key_secret"] = generate_keys(d, name)
    (allowed / "client.key").write_bytes(out["client.key"].read_bytes())
    return out


@pytest.fixture(scope="module")
def queues(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A CURVE-secured PPP queue and a plaintext one, each with a worker, shared by the tests."""
    logs = tmp_path_factory.mktemp("logs")
    procs: list[ServiceProcess] = []
    out: dict[str, Any] = {}
    for kind in ("curve", "plain"):
        fe, be = free_endpoint(), free_endpoint()
        spec = "services.ppqueue:make(heartbeat=0.2"
        if kind == "curve":
            spec += f", secret_key={str(keys['server.key_secret'])!r}"
            spec += f", allowed_keys={str(keys['allowed'])!r}"
        q = ServiceProcess(
            [spec + ")", "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}"],
            logs / f"{kind}-queue.log",
        )
        w = ServiceProcess(
            ["services.ppworker:app(heartbeat=0.2)", "--endpoint", f"backend={be}"],
            logs / f"{kind}-worker.log",
        )
        procs += [q, w]
        out[kind] = (q, fe)
    for q, _ in (out["curve"], out["plain"]):
        wait_for(lambda q=q: q.events("ppqueue.worker_ready"), 15, "worker ready")
    yield out
    for p in procs:
        p.stop()


class TestKeygen:
    def test_keygen_command(self, tmp_path: Path) -> None:
        """`greenzmq keygen` writes loadable pairs, secret 0600, and will not overwrite."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "greenzmq", "keygen", str(tmp_path / "k"), "a", "b"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        for name in ("a", "b"):
            public, secret = load_keypair(tmp_path / "k" / f"{name}.key_secret")
            assert len(z85.decode(public)) == len(z85.decode(secret)) == 32
            assert (tmp_path / "k" / f"{name}.key_secret").stat().st_mode & 0o077 == 0
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "exists already" in r.stderr


class TestZAP:
    def test_decisions(self, ctx: Any, keys: dict[str, Path]) -> None:
        """Allowed CURVE key: 200; other key: 400; NULL: 200; PLAIN: 400; malformed: 500."""
        auth = GreenAuthenticator(ctx, keys["allowed"])
        good = z85.decode(load_keypair(keys["client.key_secret"])[0])
        bad = z85.decode(load_keypair(keys["intruder.key_secret"])[0])
        base = [b"1.0", b"7", b"greenzmq", b"127.0.0.1", b""]
        assert auth.handle([*base, b"CURVE", good])[2] == b"200"
        assert auth.handle([*base, b"CURVE", bad])[2:4] == [b"400", b"client key not allowed"]
        assert auth.handle([*base, b"NULL"])[2] == b"200"
        assert auth.handle([*base, b"PLAIN", b"u", b"p"])[2] == b"400"
        assert auth.handle([b"1.0", b"7"])[:3] == [b"1.0", b"7", b"500"]
        assert (auth.allowed_count, auth.refused_count) == (1, 2)

    def test_keys_reloaded(self, ctx: Any, tmp_path: Path, keys: dict[str, Path]) -> None:
        """A key copied into the allowed directory is allowed from then on."""
        allowed = tmp_path / "allowed"
        allowed.mkdir()
        auth = GreenAuthenticator(ctx, allowed)
        key = z85.decode(load_keypair(keys["intruder.key_secret"])[0])
        req = [b"1.0", b"1", b"greenzmq", b"127.0.0.1", b"", b"CURVE", key]
        assert auth.handle(req)[2] == b"400"
        (allowed / "intruder.key").write_bytes(keys["intruder.key"].read_bytes())
        os.utime(allowed, (1, 1))  # a new mtime even within the same clock tick
        assert auth.handle(req)[2] == b"200"


class TestCurve:
    def test_allowed_client_talks_encrypted(
        self, queues: Any, keys: dict[str, Path], ctx: Any
    ) -> None:
        """An allowed key is answered, and neither request nor reply is readable on the wire."""
        q, fe = queues["curve"]
        relay = Relay(_port(fe))
        opts = client_options(keys["server.key"], keys["client.key_secret"])
        with LazyPirate(relay.endpoint, timeout=3, retries=2, ctx=ctx, options=opts) as c:
            assert c.request(MARKER) == [SQUARE]
        relay.close()
        assert len(relay.captured) > len(MARKER)
        assert MARKER not in relay.captured and SQUARE not in relay.captured
        allowed = q.wait_event("auth.allowed")
        assert allowed["client_key"] == load_keypair(keys["client.key_secret"])[0].decode()

    def test_plaintext_is_readable_on_the_wire(self, queues: Any, ctx: Any) -> None:
        """The control: without CURVE the same exchange shows the plaintext (plaintext default)."""
        _, fe = queues["plain"]
        relay = Relay(_port(fe))
        with LazyPirate(relay.endpoint, timeout=3, retries=2, ctx=ctx) as c:
            assert c.request(MARKER) == [SQUARE]
        relay.close()
        assert MARKER in relay.captured and SQUARE in relay.captured

    def test_unknown_key_gets_nothing_and_is_logged(
        self, queues: Any, keys: dict[str, Path], ctx: Any
    ) -> None:
        """A key not in the allowed directory gets no reply; the refusal names address and key."""
        q, fe = queues["curve"]
        opts = client_options(keys["server.key"], keys["intruder.key_secret"])
        with (
            LazyPirate(fe, timeout=0.5, retries=2, ctx=ctx, options=opts) as c,
            pytest.raises(RequestTimeout),
        ):
            c.request(MARKER)
        refused = q.wait_event("auth.refused")
        assert refused["address"] == "127.0.0.1"
        assert refused["client_key"] == load_keypair(keys["intruder.key_secret"])[0].decode()
        assert refused["reason"] == "client key not allowed"

    def test_plaintext_client_gets_nothing(self, queues: Any, ctx: Any) -> None:
        """A client without CURVE cannot talk to the secured queue."""
        _, fe = queues["curve"]
        with LazyPirate(fe, timeout=0.5, retries=1, ctx=ctx) as c, pytest.raises(RequestTimeout):
            c.request(MARKER)

    def test_bad_key_path_is_one_line(self, tmp_path: Path) -> None:
        """A missing secret key file fails before anything binds, naming the file."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        missing = str(tmp_path / "nope.key_secret")
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "greenzmq",
                f"services.ppqueue:make(secret_key={missing!r})",
                "--endpoint",
                f"frontend=tcp://127.0.0.1:{free_port()}",
                "--endpoint",
                f"backend=tcp://127.0.0.1:{free_port()}",
                "--log-format",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode != 0
        errors = [line for line in r.stderr.splitlines() if line.startswith("greenzmq: error:")]
        assert len(errors) == 1 and "nope.key_secret" in errors[0], r.stderr
        assert zmq.CURVE_SERVER  # CURVE is compiled in (else the tests above could not pass)


class _Echo(Service):
    """A REP echo service whose ``open`` override records the endpoints it is given."""

    name = "echo"
    specs = (SocketSpec("rep", "REP", bind=("tcp://127.0.0.1:1",)),)

    def __init__(self) -> None:
        super().__init__()
        self.opened_with: list[Any] = []

    def open(self, endpoints: Any = None) -> None:
        self.opened_with.append(endpoints)
        super().open(endpoints)

    def on_stop(self) -> None:
        self.kill_run()

    def run(self) -> None:
        sock = self.socks["rep"]
        while True:
            sock.send_multipart(sock.recv_multipart())


class TestSecureInProcess:
    def test_secure_uses_the_before_bind_hook(
        self, keys: dict[str, Path], ctx: Any, endpoint: Any, logs: Any
    ) -> None:
        """secure() replaces no method: the service's own open() is called with its endpoints,
        the ZAP handler is up before the secured socket exists, CURVE is enforced."""
        from greenzmq.core.auth import secure

        events = logs(trace_sample=0)
        svc = _Echo()
        secure(
            svc,
            secret_key=keys["server.key_secret"],
            allowed_keys=keys["allowed"],
            sockets=("rep",),
        )
        assert "open" not in vars(svc)  # nothing shadows the class's methods
        order: list[list[str]] = []
        svc.add_before_bind_callback(lambda s: order.append(sorted(s.socks)))
        ep = endpoint()
        run = gevent.spawn(svc.serve, {"rep": ep}, install_signals=False)
        try:
            opts = client_options(keys["server.key"], keys["client.key_secret"])
            with LazyPirate(ep, timeout=3, retries=2, ctx=ctx, options=opts) as c:
                assert c.request(MARKER) == [MARKER]
            with (
                LazyPirate(ep, timeout=0.3, retries=1, ctx=ctx) as c,
                pytest.raises(RequestTimeout),
            ):
                c.request(MARKER)
        finally:
            svc.stop("test over")
            assert run.get(timeout=10) == 0
        assert svc.opened_with == [{"rep": ep}]
        assert order == [["zap"]]  # secure's callback ran first: ZAP before any service socket
        names = [e["event"] for e in events()]
        assert names.index("auth.secured") < names.index("service.start")
        assert "auth.allowed" in names


class TestSecuredAnyApp:
    def test_tutorial_broker_secured_from_the_command_line(
        self, service: Any, endpoint: Any, keys: dict[str, Path], ctx: Any
    ) -> None:
        """greenzmq.tools.curve:secured(...) wraps any app: the tutorial broker, CURVE frontend."""
        fe, be = endpoint(), endpoint()
        spec = (
            f"greenzmq.tools.curve:secured('services.broker:app', sockets=['frontend'], "
            f"secret_key={str(keys['server.key_secret'])!r}, "
            f"allowed_keys={str(keys['allowed'])!r})"
        )
        b = service(spec, "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}")
        service("services.worker:app", "--endpoint", f"backend={be}")
        b.wait_event("auth.secured")
        opts = client_options(keys["server.key"], keys["client.key_secret"])
        with LazyPirate(fe, timeout=3, retries=2, ctx=ctx, options=opts) as c:
            assert c.request(b"7") == [b"49"]
        with LazyPirate(fe, timeout=0.5, retries=1, ctx=ctx) as c, pytest.raises(RequestTimeout):
            c.request(b"7")


def test_refusals_are_rate_limited(tmp_path: Path, logs: Any, monkeypatch: Any) -> None:
    """A stranger reconnecting in a loop: every refusal counted, a few lines logged."""
    from greenzmq.core.auth import GreenAuthenticator
    from greenzmq.core.sockets import Context

    events = logs()
    monkeypatch.setattr(GreenAuthenticator, "burst", 3)
    ctx = Context()
    try:
        auth = GreenAuthenticator(ctx, set())
        key = zmq.curve_keypair()[0]
        request = [b"1.0", b"1", b"greenzmq", b"10.0.0.9", b"", b"CURVE", z85.decode(key)]
        for _ in range(10):
            assert auth.handle(request)[2] == b"400"
        auth.flush()
    finally:
        ctx.term()
    assert auth.refused_count == 10
    assert len(events("auth.refused", address="10.0.0.9")) == 3
    (held,) = events("auth.refusals_suppressed")
    assert held["count"] == 7 and held["logged"] == 3
