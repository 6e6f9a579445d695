"""CURVE security: key pairs, a ZAP handler in a greenlet, and secured service sockets.

libzmq encrypts and authenticates with CURVE; who may connect is decided by a
ZAP handler, a REP socket bound to ``inproc://zeromq.zap.01`` in the same
context. pyzmq ships thread and asyncio authenticators only;
:class:`GreenAuthenticator` is the same thing as one greenlet that owns its
REP socket (rule 1). It allows a CURVE client whose public key is in a
directory of ``*.key`` files (re-read when the directory changes, so keys can
be added while the service runs) and refuses any other, logging
``auth.refused`` with the peer's address and key.

Plaintext stays the default: nothing here is used unless a service is made
secure with :func:`secure` (or a socket gets :func:`server_options`)::

    greenzmq keygen keys server client        # keys/server.key, keys/server.key_secret, ...
    mkdir allowed && cp keys/client.key allowed/

    queue = PPPQueue()
    secure(queue, secret_key="keys/server.key_secret", allowed_keys="allowed",
           sockets=("frontend",))
    LazyPirate(FRONTEND, options=client_options("keys/server.key", "keys/client.key_secret"))

``greenzmq keygen DIR NAME...`` is :func:`main`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent
import zmq
import zmq.auth
from zmq.utils import z85

from ..errors import ConfigError
from .monitor import RateLimit
from .service import Service
from .sockets import Context, Socket
from .tracing import get_logger

__all__ = [
    "DOMAIN",
    "ZAP_ENDPOINT",
    "GreenAuthenticator",
    "client_options",
    "generate_keys",
    "load_allowed",
    "load_keypair",
    "load_public",
    "secure",
    "server_options",
]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"greenzmq"


def generate_keys(
    directory: str | os.PathLike[str], name: str, *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) in ``directory``."""
    d = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad key name {name!r}: a plain file name is needed")
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise ConfigError(f"{public} or {secret} exists already (use --force to replace)")
    d.mkdir(parents=True, exist_ok=True)
    pub, sec = zmq.auth.create_certificates(d, name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def load_keypair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` file; ConfigError if unusable."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read CURVE key file {os.fspath(path)!r}: {e}") from None
    if secret is None:
        raise ConfigError(f"{os.fspath(path)!r} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The z85 public key in a ``.key`` (or ``.key_secret``) file."""
    try:
        return zmq.auth.load_certificate(path)[0]
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read CURVE key file {os.fspath(path)!r}: {e}") from None


def load_allowed(directory: str | os.PathLike[str]) -> set[bytes]:
    """Every z85 public key in ``directory/*.key``."""
    if not os.path.isdir(directory):
        raise ConfigError(f"allowed keys directory {os.fspath(directory)!r} does not exist")
    return set(zmq.auth.load_certificates(directory))


def server_options(secret_key: str | os.PathLike[str]) -> dict[int, Any]:
    """Socket options that make a socket a CURVE server with this key pair."""
    public, secret = load_keypair(secret_key)
    return {
        zmq.CURVE_SERVER: 1,
        zmq.CURVE_PUBLICKEY: public,
        zmq.CURVE_SECRETKEY: secret,
        zmq.ZAP_DOMAIN: DOMAIN,
    }


def client_options(
    server_public: str | os.PathLike[str], client_secret: str | os.PathLike[str]
) -> dict[int, Any]:
    """Socket options for a CURVE client of the server whose public key file is given."""
    public, secret = load_keypair(client_secret)
    return {
        zmq.CURVE_SERVERKEY: load_public(server_public),
        zmq.CURVE_PUBLICKEY: public,
        zmq.CURVE_SECRETKEY: secret,
    }


class GreenAuthenticator:
    """A ZAP handler owned by one greenlet; see the module docstring.

    ``allowed`` is a directory of ``*.key`` files or a set of z85 public keys.
    NULL connections (plaintext sockets in the same context) are allowed;
    PLAIN and unknown CURVE keys are refused. Refusals are logged up to
    ``burst`` lines per address in any ``window`` seconds, the rest counted
    into one ``auth.refusals_suppressed`` line (a client reconnecting in a loop
    must not flood the log); ``refused_count`` counts them all.
    """

    burst = 20
    window = 1.0

    def __init__(self, ctx: Context, allowed: str | os.PathLike[str] | set[bytes]) -> None:
        self.ctx = ctx
        self.log = get_logger(role="zap")
        self.sock: Socket | None = None
        self.greenlet: gevent.Greenlet[..., Any] | None = None
        self.allowed_count = 0
        self.refused_count = 0
        self._limit = RateLimit(self._suppressed)
        if isinstance(allowed, set):
            self._dir: str | None = None
            self._keys = set(allowed)
        else:
            self._dir = os.fspath(allowed)
            self._keys = load_allowed(self._dir)
        self._stamp = self._dir_stamp()

    def _dir_stamp(self) -> float:
        return os.stat(self._dir).st_mtime if self._dir else 0.0

    def _refresh(self) -> None:
        if self._dir is None:
            return
        try:
            stamp = self._dir_stamp()
            if stamp != self._stamp:
                self._keys, self._stamp = load_allowed(self._dir), stamp
                self.log.info("auth.keys_reloaded", keys=len(self._keys))
        except (OSError, ConfigError) as e:
            self.log.error("auth.keys_unreadable", directory=self._dir, error=str(e))

    def start(
        self, spawn: Callable[..., gevent.Greenlet[..., Any]] | None = None
    ) -> GreenAuthenticator:
        """Bind the ZAP endpoint (before any secured socket binds) and start serving it."""
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.name = "zap"
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        if spawn is None:
            self.greenlet = gevent.spawn(self._serve)
        else:
            self.greenlet = spawn(self._serve, name="zap")
        return self

    def _suppressed(self, address: str, count: int, logged: int, seconds: float) -> None:
        self.log.warning(
            "auth.refusals_suppressed", address=address, count=count, logged=logged, seconds=seconds
        )

    def flush(self) -> None:
        """Log the refusals the rate limit held back (the handler's greenlet does as it ends)."""
        self._limit.flush()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self.greenlet is not None:
            self.greenlet.kill()
        if self.sock is not None:
            self.sock.close(linger=0)

    def _serve(self) -> None:
        assert self.sock is not None
        sock = self.sock
        sock.claim()
        try:
            while True:
                try:
                    frames = sock.recv_multipart()
                except zmq.ZMQError as e:
                    if e.errno in (zmq.ENOTSOCK, zmq.ETERM):
                        return  # closed: the service is stopping
                    raise
                sock.send_multipart(self.handle(frames))
        finally:
            self.flush()

    def handle(self, frames: Sequence[bytes]) -> list[bytes]:
        """The ZAP reply to one ZAP request (RFC 27)."""
        if len(frames) < 6:
            self.log.warning("auth.bad_request", reason="too few frames", frames=len(frames))
            rid = frames[1] if len(frames) > 1 else b""
            return [b"1.0", rid, b"500", b"malformed ZAP request", b"", b""]
        version, rid, domain, address, _identity, mechanism = frames[:6]
        creds = list(frames[6:])
        peer = address.decode(errors="replace")
        if version != b"1.0":
            self.log.warning("auth.bad_request", reason="unsupported ZAP version", address=peer)
            return [b"1.0", rid, b"500", b"unsupported ZAP version", b"", b""]
        if mechanism == b"NULL":
            return [version, rid, b"200", b"OK", b"anonymous", b""]
        if mechanism == b"CURVE" and creds and len(creds[0]) == 32:
            self._refresh()
            key = z85.encode(creds[0])
            if key in self._keys:
                self.allowed_count += 1
                self.log.info("auth.allowed", address=peer, client_key=key.decode())
                return [version, rid, b"200", b"OK", key, b""]
            self.refused_count += 1
            if self._limit.allow(peer, self.burst, self.window):
                self.log.warning(
                    "auth.refused",
                    address=peer,
                    mechanism="CURVE",
                    client_key=key.decode(),
                    domain=domain.decode(errors="replace"),
                    reason="client key not allowed",
                )
            return [version, rid, b"400", b"client key not allowed", b"", b""]
        self.refused_count += 1
        if self._limit.allow(peer, self.burst, self.window):
            self.log.warning(
                "auth.refused",
                address=peer,
                mechanism=mechanism.decode(errors="replace"),
                # a CURVE request gets here only without a 32-byte client key
                reason="malformed CURVE credentials"
                if mechanism == b"CURVE"
                else "mechanism not allowed",
            )
        return [version, rid, b"400", b"mechanism not allowed", b"", b""]


def secure(
    service: Service,
    *,
    secret_key: str | os.PathLike[str],
    allowed_keys: str | os.PathLike[str] | None,
    sockets: Sequence[str],
) -> Service:
    """Make ``service``'s named sockets CURVE servers that only ``allowed_keys`` may use.

    Keys are read now, so a bad path fails before anything is bound. The ZAP
    handler must be listening before a secured socket takes a connection
    (libzmq lets every client in when no handler is bound): it is bound and
    started (in the service's greenlet group) by a before-bind callback
    (:meth:`~greenzmq.core.service.Service.add_before_bind_callback`), before
    the service makes any socket. ``allowed_keys=None`` allows no client at all.
    """
    names = set(sockets)
    unknown = names - {s.name for s in service.specs}
    if unknown:
        raise ConfigError(f"secure(): {service.name} has no socket {sorted(unknown)[0]!r}")
    opts = server_options(secret_key)
    allowed: str | os.PathLike[str] | set[bytes] = set() if allowed_keys is None else allowed_keys
    if not isinstance(allowed, set):
        load_allowed(allowed)  # fail now, not at the first connection
    service.specs = tuple(
        dataclasses.replace(s, options={**s.options, **opts}) if s.name in names else s
        for s in service.specs
    )

    def start_auth(svc: Service) -> None:
        # before any socket is made: libzmq lets every client in while no
        # ZAP handler is bound
        assert svc.ctx is not None
        auth = GreenAuthenticator(svc.ctx, allowed).start(svc.spawn)
        assert auth.sock is not None
        svc.socks["zap"] = auth.sock  # closed with the others
        svc.log.info("auth.secured", sockets=sorted(names), mechanism="CURVE")

    service.add_before_bind_callback(start_auth)
    return service
