"""The service side of an RPC call, without sockets: request frames in, reply frames out.

The frames (each value one frame in the request's codec, :mod:`greenzmq.rpc.codec`):

* request: ``[codec, [method, args, kwargs, deadline, window]]``; ``deadline``
  is a wall-clock time (``time.time()``) after which the caller has given up
  (None: none), ``window`` the most items the caller wants in a stream's
  first chunk (None: the service's).
* reply: ``[codec, "ok", result]``, ``[codec, "err", [type name, message,
  traceback]]``, or a stream chunk: each item one MDP/0.2 PARTIAL reply
  ``[item]``, sent as the generator makes it, then the FINAL ``[codec,
  "more" | "end", [stream service, stream id]]``. Where no PARTIAL can be
  sent (an MDP/0.1 worker, a process pool, :class:`~greenzmq.rpc.LocalClient`)
  the items follow in the FINAL: ``[codec, "more" | "end", ref, item...]``.

A generator method streams: the first reply carries up to ``window`` items
and where to ask for the next ones (``more``). The generator is kept here and
runs only when asked: each ``_next`` request (``[stream id, n]``, sent to the
stream service, a Majordomo service only this process serves) makes at most
``n`` (capped at the service's ``window``) more items, and ``end`` says it
finished. A consumer that stops asking stops the generator: the worker runs at
most one chunk ahead of its consumer (that is the backpressure). ``_close``
ends a stream early; a stream nobody asked for in ``stream_idle`` seconds is
closed. ``_describe`` lists the methods.
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..core.tracing import get_logger
from .codec import CODECS, JSON, Codec

__all__ = ["Dispatcher", "describe", "public_methods"]

OK, ERR, MORE, END = b"ok", b"err", b"more", b"end"
RESERVED = ("_describe", "_next", "_close")
"""Method names the dispatcher answers itself (never an object's: those are private names)."""


def public_methods(obj: Any) -> dict[str, Callable[..., Any]]:
    """``obj``'s callable attributes whose names do not start with ``_``, bound.

    Read statically first: a property is not run to find out what it is.
    """
    found: dict[str, Callable[..., Any]] = {}
    for name in dir(obj):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(obj, name)
        if isinstance(static, (property, type)) or not (
            callable(static) or isinstance(static, (staticmethod, classmethod))
        ):
            continue
        found[name] = getattr(obj, name)
    return found


def describe(methods: dict[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    """Each method's name, signature, docstring and whether it streams, sorted by name."""
    out = []
    for name, fn in sorted(methods.items()):
        try:
            sig = str(inspect.signature(fn))
        except (TypeError, ValueError):  # some builtins have none
            sig = "(...)"
        out.append(
            {
                "name": name,
                "signature": sig,
                "doc": inspect.getdoc(fn) or "",
                "stream": inspect.isgeneratorfunction(fn),
            }
        )
    return out


@dataclass
class _Stream:
    gen: Generator[Any, Any, Any]
    codec: Codec
    used: float = field(default_factory=time.monotonic)
    failed: BaseException | None = None  # raised by the generator after items already sent


class Dispatcher:
    """Calls ``obj``'s public methods from request frames (see the module docstring).

    The Majordomo handler of :class:`~greenzmq.rpc.RPCService`, and the whole
    of :class:`~greenzmq.rpc.LocalClient`. A method's exception becomes an
    ``err`` reply (and a log line); nothing a method does fails the caller of
    the dispatcher. Thread-safe (``offload="thread"``); picklable
    (``offload="process"``, where streaming is off: a generator cannot
    outlive the pool process's call).
    """

    def __init__(
        self,
        obj: Any,
        *,
        window: int = 64,
        stream_idle: float = 60.0,
        streaming: bool = True,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self.obj = obj
        self.methods = public_methods(obj)
        self.window, self.stream_idle, self.streaming = window, stream_idle, streaming
        #: the Majordomo service a stream's ``_next`` requests go to (set by the service)
        self.stream_service = ""
        #: calls answered, methods that raised, and requests past their deadline (not run)
        self.calls = self.errors = self.expired = 0
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self.log = get_logger(rpc=type(obj).__name__)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_streams", "log"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._streams, self._lock = {}, threading.Lock()
        self.log = get_logger(rpc=type(self.obj).__name__)

    @property
    def open_streams(self) -> int:
        """Streams started and not yet finished, closed or expired."""
        return len(self._streams)

    def __call__(self, body: list[bytes]) -> list[bytes]:
        """Answer one request (the frames of the module docstring)."""
        codec = CODECS.get(bytes(body[0])) if body else None
        if codec is None or len(body) != 2:
            return self._error(
                JSON, "BadRequest", "expected [codec, call] frames (msgpack or json)"
            )
        try:
            method, args, kwargs, deadline, window = codec.loads(body[1])
            args, kwargs = list(args), dict(kwargs or {})
        except (ValueError, TypeError):
            return self._error(
                codec, "BadRequest", "expected [method, args, kwargs, deadline, window]"
            )
        if deadline is not None and time.time() > deadline:
            # the caller has given up: running it now would be work nobody reads
            self.expired += 1
            self.log.warning("rpc.expired", method=str(method)[:64])
            return self._error(codec, "DeadlineExceeded", f"{method}: the caller's deadline passed")
        self._sweep()
        if method == "_describe":
            return [codec.name, OK, codec.dumps(describe(self.methods))]
        if method in ("_next", "_close"):
            try:
                sid, n = str(args[0]), int(args[1]) if method == "_next" else 0
            except (IndexError, TypeError, ValueError):
                return self._error(codec, "BadRequest", f"{method} takes [stream id, n]")
            if method == "_next":
                return self._next(codec, sid, n, getattr(body, "emit", None))
            self._close(sid)
            return [codec.name, OK, codec.dumps(None)]
        fn = self.methods.get(method) if isinstance(method, str) else None
        if fn is None:
            return self._error(
                codec, "AttributeError", f"{type(self.obj).__name__} has no method {method!r}"
            )
        self.calls += 1
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            return self._failed(codec, method, e)
        if inspect.isgenerator(result):
            return self._start(codec, method, result, window, getattr(body, "emit", None))
        try:
            return [codec.name, OK, codec.dumps(result)]
        except TypeError as e:
            return self._failed(codec, method, e)

    # -- replies ---------------------------------------------------------------
    def _error(self, codec: Codec, type_name: str, message: str, tb: str = "") -> list[bytes]:
        return [codec.name, ERR, codec.dumps([type_name, message, tb])]

    def _failed(self, codec: Codec, method: str, e: BaseException) -> list[bytes]:
        self.errors += 1
        tb = "".join(traceback.format_exception(e))
        self.log.warning("rpc.method_failed", method=method, error=repr(e))
        return self._error(codec, type(e).__name__, str(e), tb)

    # -- streams ---------------------------------------------------------------
    def _start(
        self,
        codec: Codec,
        method: str,
        gen: Generator[Any, Any, Any],
        window: Any,
        emit: Callable[[list[bytes]], None] | None,
    ) -> list[bytes]:
        if not self.streaming:
            gen.close()
            return self._error(
                codec, "TypeError", f"{method} streams, and streams need offload=None or 'thread'"
            )
        sid = uuid.uuid4().hex
        with self._lock:
            self._streams[sid] = _Stream(gen, codec)
        n = int(window) if isinstance(window, int) and window > 0 else self.window
        return self._next(codec, sid, n, emit, method)

    def _next(
        self,
        codec: Codec,
        sid: str,
        n: int,
        emit: Callable[[list[bytes]], None] | None,
        method: str = "_next",
    ) -> list[bytes]:
        with self._lock:
            st = self._streams.get(sid)
        if st is None:
            return self._error(codec, "LookupError", f"no stream {sid!r} (finished or expired)")
        if st.failed is not None:
            self._close(sid)
            return self._failed(codec, method, st.failed)
        items: list[bytes] = []
        sent = 0
        end = False
        try:
            for _ in range(max(1, min(n, self.window))):
                item = codec.dumps(next(st.gen))
                if emit is None:
                    items.append(item)
                else:  # an MDP/0.2 PARTIAL reply, on its way now
                    emit([item])
                sent += 1
        except StopIteration:
            end = True
        except Exception as e:
            if not sent:
                self._close(sid)
                return self._failed(codec, method, e)
            st.failed = e  # the items made before it go out first; the error with the next chunk
        st.used = time.monotonic()
        if end:
            self._close(sid)
        ref = codec.dumps([self.stream_service, sid])
        return [codec.name, END if end else MORE, ref, *items]

    def _close(self, sid: str) -> None:
        with self._lock:
            st = self._streams.pop(sid, None)
        if st is not None:
            try:
                st.gen.close()
            except ValueError:  # running in another thread right now: it ends with its chunk
                pass

    def _sweep(self) -> None:
        """Close the streams nobody asked for in ``stream_idle`` seconds."""
        if not self._streams:
            return
        old = time.monotonic() - self.stream_idle
        with self._lock:
            stale = [sid for sid, st in self._streams.items() if st.used < old]
        for sid in stale:
            self.log.info("rpc.stream_expired", stream=sid)
            self._close(sid)
