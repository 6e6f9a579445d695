"""The caller's side: ``client.add(1, 2)`` through a Majordomo broker, or straight in-process."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import gevent

from ..core.endpoints import Endpoints
from ..core.sockets import Context, Socket
from ..errors import GreenZMQError, RemoteError, RequestTimeout
from ..patterns.mdp import BROKER, C_CLIENT02, FINAL02, PARTIAL02, REQUEST, MDPClient
from ._dispatch import END, ERR, MORE, OK, Dispatcher
from .codec import CODECS, Codec, get_codec

__all__ = ["Caller", "Client", "LocalClient", "Stream"]

_C = TypeVar("_C", bound="Caller")


class Caller:
    """What both clients share: attribute calls, the wire format, streams.

    ``caller.add(1, 2, z=3)`` calls ``add`` with the caller's default
    ``timeout``; :meth:`call` takes the arguments as values and a ``timeout``
    of its own (so a method's own keyword named ``timeout`` is no problem). A
    generator method returns a :class:`Stream`. A remote exception is raised
    as :class:`~greenzmq.errors.RemoteError` (its subclass for the type name).
    A remote method named like one of the client's own attributes (``call``,
    ``methods``, ``close``, ``timeout``...) is reached with :meth:`call`.
    """

    def __init__(self, codec: str | bytes | Codec = "msgpack", window: int = 64) -> None:
        self.codec = get_codec(codec)
        self.window = window
        self.timeout: float | None = None
        self._open: Stream | None = None  # a stream whose chunk is still arriving

    def _request(self, service: str, frames: list[bytes], timeout: float | None) -> list[bytes]:
        """Send one request to ``service``, return the whole reply's frames (the transport)."""
        raise NotImplementedError

    def _first(
        self, service: str, frames: list[bytes], timeout: float | None
    ) -> tuple[list[bytes], bool]:
        """Send one request; its first reply message's frames, and whether it was the last."""
        return self._request(service, frames, timeout), True

    def _more(self, timeout: float | None) -> tuple[list[bytes], bool]:
        """The next message of the reply :meth:`_first` began, and whether it is the last."""
        raise NotImplementedError

    def _settle(self) -> None:
        """Read the rest of an open stream chunk (into its buffer) before the next request.

        A failure there (a stall, a remote error) belongs to that stream: it is
        raised when the stream gets to it, not by the call that is starting.
        """
        s = self._open
        if s is not None:
            try:
                s._drain()
            except GreenZMQError as e:
                s._failure = e

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else time.time() + timeout

    def call(
        self,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call ``method(*args, **kwargs)``; its result, or a :class:`Stream` if it streams.

        ``timeout`` (seconds; default the client's): past it
        :class:`~greenzmq.errors.RequestTimeout` is raised, and the request
        carries the deadline, so a service that gets it late does not run it.
        """
        t = self.timeout if timeout is None else timeout
        self._settle()  # first: the deadline counts from the sending
        payload = [method, list(args), dict(kwargs or {}), self._deadline(t), self.window]
        frames = [self.codec.name, self.codec.dumps(payload)]
        first, final = self._first(self._service(), frames, t)
        if final:
            return self._result(first, t)
        # a PARTIAL: a stream's first item; the FINAL ending its chunk comes later
        return Stream(self, "", "", first, False, t, reading=True)

    def methods(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The methods: ``name``, ``signature``, ``doc``, ``stream`` (True: it streams)."""
        return list(self.call("_describe", timeout=timeout))

    def _service(self) -> str:
        raise NotImplementedError

    def _result(self, reply: list[bytes], timeout: float | None) -> Any:
        if len(reply) < 3:
            raise RemoteError.named("BadReply")(f"expected 3 frames or more, got {len(reply)}")
        if reply[0] in CODECS:
            head, items = reply[:3], reply[3:]
        else:  # a stream's items came first, as PARTIAL replies (an item is never a codec name)
            head, items = reply[-3:], reply[:-3]
        codec = get_codec(head[0])
        status = head[1]
        if status == OK:
            return codec.loads(head[2])
        if status == ERR:
            name, message, tb = codec.loads(head[2])
            raise RemoteError.named(str(name))(str(message), str(tb))
        if status in (MORE, END):
            service, sid = codec.loads(head[2])
            return Stream(self, str(service), str(sid), items, status == END, timeout)
        raise RemoteError.named("BadReply")(f"unknown status {status[:16]!r}")

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def close(self) -> None:
        """Release the transport (the socket of a :class:`Client`)."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Method:
    """``caller.name``: calling it calls the remote method."""

    def __init__(self, caller: Caller, name: str) -> None:
        self.caller, self.name = caller, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.caller.call(self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self.name}>"


class Stream(Iterator[Any]):
    """The items of a generator method, fetched a chunk at a time as they are consumed.

    Each item is yielded as soon as its PARTIAL reply arrives; the next chunk
    (up to the client's ``window`` items) is asked for when the last one is
    used up, so the remote generator runs at most one chunk ahead of this
    iterator. ``timeout`` bounds each wait for an item. A remote exception in
    the generator is raised here, after the items made before it.
    :meth:`close` (or leaving a ``with`` block) ends the remote generator
    early. Another call on the same client while a chunk is arriving first
    reads the chunk's rest into this stream's buffer (a window at most).
    """

    def __init__(
        self,
        caller: Caller,
        service: str,
        sid: str,
        items: list[bytes],
        ended: bool,
        timeout: float | None,
        *,
        reading: bool = False,
    ) -> None:
        self.caller, self.service, self.sid = caller, service, sid
        self.timeout = timeout
        self.ended = ended
        self._items: deque[bytes] = deque(items)
        self._reading = reading  # a chunk's FINAL is still to come
        self._failure: GreenZMQError | None = None  # met while another call read ahead
        if reading:
            caller._open = self
        #: chunks fetched after the first reply
        self.fetched = 0

    def __next__(self) -> Any:
        while not self._items:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._reading:
                self._part()
            elif self.ended:
                raise StopIteration
            else:
                self._fetch()
        return self.caller.codec.loads(self._items.popleft())

    def _adopt(self, reply: list[bytes]) -> None:
        """Take a chunk's FINAL (or a whole chunk): where to ask next, whether it ended."""
        try:
            more = self.caller._result(reply, self.timeout)
        except BaseException:
            self.ended = True
            raise
        assert isinstance(more, Stream)
        if more.sid:
            self.service, self.sid = more.service, more.sid
        self._items.extend(more._items)
        self.ended = more.ended

    def _part(self) -> None:
        """Read the next message of the chunk in flight."""
        try:
            frames, final = self.caller._more(self.timeout)
        except BaseException:
            self._reading, self.ended, self.caller._open = False, True, None
            raise
        if not final:
            self._items.extend(frames)
            return
        self._reading, self.caller._open = False, None
        self._adopt(frames)

    def _drain(self) -> None:
        while self._reading:
            self._part()

    def _ask(self, method: str, args: list[Any]) -> tuple[list[bytes], bool]:
        c = self.caller
        c._settle()
        payload: list[Any] = [method, args, {}, c._deadline(self.timeout), None]
        return c._first(self.service, [c.codec.name, c.codec.dumps(payload)], self.timeout)

    def _fetch(self) -> None:
        try:
            first, final = self._ask("_next", [self.sid, self.caller.window])
        except BaseException:
            self.ended = True
            raise
        self.fetched += 1
        if final:
            self._adopt(first)
        else:
            self._items.extend(first)
            self._reading, self.caller._open = True, self

    def close(self) -> None:
        """End the remote generator (nothing to do once it finished)."""
        try:
            self._drain()
        finally:
            if not self.ended:
                self.ended = True
                _, final = self._ask("_close", [self.sid])
                while not final:  # never for _close; keeps the socket in step regardless
                    _, final = self.caller._more(self.timeout)
            self._items.clear()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(Caller):
    """Call ``service``'s methods through a Majordomo broker (or several: failover).

    ``Client("Calculator", "tcp://127.0.0.1:5555").add(1, 2)``. A call is
    sent once by default (``retries=1``: a method need not be idempotent);
    give ``retries`` (at least one per broker) for idempotent ones to fail
    over between brokers. ``options``: socket options (e.g. CURVE client
    keys from :func:`greenzmq.core.auth.client_options`). One greenlet at a
    time uses a client, like the socket it owns.
    """

    def __init__(
        self,
        service: str,
        broker: Endpoints = BROKER,
        *,
        timeout: float = 10.0,
        retries: int = 1,
        codec: str | bytes | Codec = "msgpack",
        window: int = 64,
        ctx: Context | None = None,
        options: Mapping[int, Any] | None = None,
    ) -> None:
        super().__init__(codec, window)
        self.service = service
        self.timeout = timeout
        self.mdp = MDPClient(
            broker, version=2, timeout=timeout, retries=retries, ctx=ctx, options=options
        )

    def _service(self) -> str:
        return self.service

    def _one(self, sock: Socket) -> list[bytes]:
        """The next MDP/0.2 reply message: ``[PARTIAL|FINAL, body...]``, skipping bad ones."""
        while True:
            with gevent.Timeout(self.mdp.timeout):
                r = sock.recv_multipart()
            if len(r) >= 3 and r[0] == b"" and r[1] == C_CLIENT02 and r[2] in (PARTIAL02, FINAL02):
                return r[2:]
            self.mdp.log.warning("mdp.client_bad_reply", frames=len(r))

    def _first(
        self, service: str, frames: list[bytes], timeout: float | None
    ) -> tuple[list[bytes], bool]:
        mdp = self.mdp
        default = mdp.timeout
        mdp.timeout = timeout or default
        msg = [b"", C_CLIENT02, REQUEST, service.encode(), *frames]
        failure = (
            f"no reply from {service!r} at {mdp.where} after {mdp.retries} tries of "
            f"{mdp.timeout} s each"
        )
        try:
            # MDPClient's retries and broker failover, reading one message, not the whole reply
            r = mdp._exchange(msg, self._one, failure)
        finally:
            mdp.timeout = default
        return r[1:], r[0] == FINAL02

    def _more(self, timeout: float | None) -> tuple[list[bytes], bool]:
        mdp = self.mdp
        sock = mdp.sock
        if sock is None:
            raise RequestTimeout("the stream's socket was closed")
        default = mdp.timeout
        mdp.timeout = timeout or default
        try:
            r = self._one(sock)
        except gevent.Timeout:
            # the rest may still come: only a fresh socket cannot mistake it for a reply
            sock.close(linger=0)
            mdp.sock = None
            raise RequestTimeout(
                f"the stream stalled: nothing from the service for {mdp.timeout} s"
            ) from None
        finally:
            mdp.timeout = default
        return r[1:], r[0] == FINAL02

    def _deadline(self, timeout: float | None) -> float | None:
        t = timeout or self.mdp.timeout
        return time.time() + t * self.mdp.retries

    def close(self) -> None:
        """Close the socket (and the context, if the client made it)."""
        self.mdp.close()


class LocalClient(Caller):
    """Call ``obj``'s methods in this process through the same dispatcher and codec.

    No sockets: a test sees what a remote caller sees (values through the
    codec, exceptions as :class:`~greenzmq.errors.RemoteError`, streams
    chunk by chunk). ``obj`` may be a class: it is instantiated.
    """

    def __init__(
        self, obj: Any, *, codec: str | bytes | Codec = "msgpack", window: int = 64
    ) -> None:
        super().__init__(codec, window)
        if isinstance(obj, type):
            obj = obj()
        self.dispatcher = Dispatcher(obj, window=window)
        self.dispatcher.stream_service = "local"

    @property
    def obj(self) -> Any:
        """The object whose methods are called."""
        return self.dispatcher.obj

    def _service(self) -> str:
        return type(self.dispatcher.obj).__name__

    def _request(self, service: str, frames: list[bytes], timeout: float | None) -> list[bytes]:
        return self.dispatcher(frames)
