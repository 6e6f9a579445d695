"""The Lazy Pirate client: a request with a timeout, retried on a fresh socket.

A REQ socket whose request (or reply) is lost waits forever, and cannot send
again until it has received. :class:`LazyPirate` waits for each reply with a
``gevent.Timeout`` (rule 5); on a timeout it closes the socket with
``linger=0`` (dropping the lost request and any late reply), opens a fresh one
(rule 9) and sends the request again, up to ``retries`` times in all. After the
last try it raises :class:`~greenzmq.errors.RequestTimeout` naming the
endpoint, the number of tries and the timeout.

Given several brokers (``LazyPirate([a, b])``) it fails over the way the
zguide's Freelance model does: a request goes to one broker at a time, the
one that answered last; on a timeout the next try goes to the next broker in
the list, and the one that answers is remembered for the requests after it.
``retries`` counts tries over all brokers (give at least one per broker).

It speaks what REQ speaks with libzmq's ``ZMQ_REQ_CORRELATE`` on the wire: a
DEALER sends ``[request id, "", body...]``, so a server sees one more
envelope frame before the delimiter and sends it back untouched. It works
against anything that answers REQ: the tutorial broker's ROUTER frontend,
the Paranoid Pirate queue (:mod:`greenzmq.patterns.ppp`) and a plain REP
server. A retried request may be answered twice by the server
(at-least-once), so requests should be idempotent. A reply is returned only
if it carries the current request's id: a stray, duplicate or forged reply
is dropped with a logged reason (``lazypirate.stale_reply``), never taken as
the answer to the next request (libzmq's own REQ_CORRELATE would drop it
silently).

Hops (:mod:`greenzmq.core.tracing`, when the program configured logging):
``send`` (``attempt=1``), ``retry`` for each later try (``attempt=N`` and the
``endpoint`` it went to) and ``recv`` of the reply (``reply_to`` the
request), keyed over the request's and the reply's body frames, so
``greenzmq trace`` joins them with the queue's and the worker's hops.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import gevent

from ..core.endpoints import Endpoints, endpoint_list
from ..core.sockets import Context, Socket, SocketSpec
from ..core.tracing import SocketTracer, Tracer, body_key, get_logger, logging_configured
from ..errors import RequestTimeout

__all__ = ["LazyPirate", "RetryingClient"]

_C = TypeVar("_C", bound="RetryingClient")


class RetryingClient:
    """What the retrying clients share: one owned socket, remade after every timeout.

    A subclass (:class:`LazyPirate`, :class:`greenzmq.patterns.mdp.MDPClient`) builds its
    request and passes :meth:`_exchange` the protocol's way of reading a reply;
    the base sends, waits ``timeout`` seconds per try, and on a timeout opens a
    fresh socket (rule 9) and sends again, up to ``retries`` tries in all.
    With several endpoints (brokers) the socket connects to one at a time: a
    timeout moves the next try to the next one, and a reply keeps the client
    on the broker that gave it (the zguide's Freelance model).

    ``tracer`` logs the hops (default: the process's, if it configured
    logging; none otherwise, so a plain script prints nothing).
    """

    def __init__(
        self,
        endpoint: Endpoints,
        spec: SocketSpec,
        *,
        timeout: float,
        retries: int,
        ctx: Context | None,
        client: str,
        tracer: Tracer | None = None,
    ) -> None:
        # checked before a context is made: nothing to clean up on a bad setting
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if retries < 1:
            raise ValueError(f"retries must be at least 1, got {retries!r}")
        #: every broker, in the order tried
        self.endpoints = endpoint_list(endpoint)
        if not self.endpoints:
            raise ValueError("a client needs at least one endpoint")
        self._at = 0  # the broker in use: the last one that answered, or the next to try
        self.timeout = timeout
        self.retries = retries
        self._own_ctx = ctx is None
        self.ctx: Context = ctx if ctx is not None else Context()
        self.spec = spec
        self.sock: Socket | None = None
        self.log = get_logger(client=client)
        #: requests sent again after a timeout, over this client's life
        self.resent = 0
        #: times a timeout moved the client to another broker
        self.failovers = 0
        if tracer is None:
            tracer = Tracer() if logging_configured() else Tracer(sample=0.0)
        self.trace: SocketTracer = tracer.for_socket(spec.name, "DEALER")

    @property
    def endpoint(self) -> str:
        """The broker in use (the one that answered last, or the next to try)."""
        return self.endpoints[self._at]

    @property
    def where(self) -> str:
        """Every broker, for messages: ``"a"`` or ``"a, b"``."""
        return ", ".join(self.endpoints)

    def _fresh(self) -> Socket:
        if self.sock is not None:
            self.sock.close(linger=0)
        spec = self.spec
        if len(self.endpoints) > 1:
            spec = dataclasses.replace(spec, connect=(self.endpoint,))
        self.sock = self.ctx.build(spec)
        return self.sock

    def _exchange(
        self,
        msg: list[bytes],
        receive: Callable[[Socket], list[bytes]],
        failure: str,
        body: Sequence[bytes] = (),
    ) -> list[bytes]:
        """Send ``msg`` and return ``receive(sock)``; RequestTimeout(``failure``) at the end.

        ``body``: the request's application frames, the hops' key.
        """
        tr = self.trace
        key = body_key(body) if tr.on else None
        for attempt in range(1, self.retries + 1):
            sock = self.sock if self.sock is not None else self._fresh()
            if key is not None:
                # logged before the send, unlike other hops: a green send may
                # switch greenlets, and the request's path starts here
                tr.hop(
                    "send" if attempt == 1 else "retry",
                    body,
                    key=key,
                    attempt=attempt,
                    endpoint=self.endpoint,
                )
            sock.send_multipart(msg)
            try:
                reply = receive(sock)
                if key is not None:
                    tr.hop("recv", reply, key=body_key(reply), reply_to=key)
                return reply
            except gevent.Timeout:
                # The socket may still be owed this reply (REQ is stuck waiting
                # for it): only a fresh socket can send again without mistaking
                # a late reply for the answer to the next try.
                self._timed_out(attempt)
                if len(self.endpoints) > 1:
                    self._at = (self._at + 1) % len(self.endpoints)
                    self.failovers += 1
                self._fresh()
                if attempt < self.retries:
                    self.resent += 1
        raise RequestTimeout(failure)

    def _timed_out(self, attempt: int) -> None:
        """Log that try ``attempt`` had no reply in time (each protocol names its event)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the socket (and the context, if this client made it)."""
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LazyPirate(RetryingClient):
    """A retrying REQ client; see the module docstring.

    ``endpoint`` is one broker or a list of them (failover, one at a time).
    ``options`` are extra socket options applied to every socket it opens (for
    example the CURVE client keys from :func:`greenzmq.core.auth.client_options`).
    The client is used by one greenlet at a time, like the socket it owns.
    ``tracer``: see :class:`RetryingClient`.
    """

    def __init__(
        self,
        endpoint: Endpoints,
        *,
        timeout: float = 2.5,
        retries: int = 3,
        ctx: Context | None = None,
        options: Mapping[int, Any] | None = None,
        name: str = "lazypirate",
        tracer: Tracer | None = None,
    ) -> None:
        spec = SocketSpec(
            name, "DEALER", connect=endpoint_list(endpoint), options=dict(options or {})
        )
        super().__init__(
            endpoint, spec, timeout=timeout, retries=retries, ctx=ctx, client=name, tracer=tracer
        )
        #: replies dropped because they did not answer the request in hand
        self.stale = 0
        # request ids: 4 bytes like REQ_CORRELATE's, from a random start (a
        # restarted client does not reuse its predecessor's first ids)
        self._ids = itertools.count(int.from_bytes(os.urandom(4), "big"))
        self._rid = b""

    def _receive(self, sock: Socket) -> list[bytes]:
        with gevent.Timeout(self.timeout):
            while True:
                reply: list[bytes] = sock.recv_multipart()
                if len(reply) >= 2 and reply[0] == self._rid and reply[1] == b"":
                    return reply[2:]
                self.stale += 1
                self.log.warning(
                    "lazypirate.stale_reply",
                    endpoint=self.endpoint,
                    reason="no request id"
                    if len(reply) < 2 or reply[1] != b""
                    else "not the request in hand",
                    frames=len(reply),
                )

    def _timed_out(self, attempt: int) -> None:
        self.log.warning(
            "lazypirate.timeout",
            endpoint=self.endpoint,
            attempt=attempt,
            retries=self.retries,
            timeout=self.timeout,
        )

    def request(self, frames: bytes | Sequence[bytes]) -> list[bytes]:
        """Send ``frames`` and return the reply; RequestTimeout after the last retry."""
        msg = [frames] if isinstance(frames, bytes) else list(frames)
        if not msg:
            raise ValueError("a request needs at least one frame")
        self._rid = (next(self._ids) & 0xFFFFFFFF).to_bytes(4, "big")
        return self._exchange(
            [self._rid, b"", *msg],
            self._receive,
            f"no reply from {self.where} after {self.retries} "
            f"tr{'y' if self.retries == 1 else 'ies'} of {self.timeout} s each",
            msg,
        )
