"""The service side: an object's public methods as a Majordomo service."""

from __future__ import annotations

import functools
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import gevent

from ..core.endpoints import Endpoints
from ..patterns._worker import HeartbeatWorker, HeartbeatWorkerService
from ..patterns.mdp import BROKER, PARTIAL02, MDPWorker, MDPWorkerService
from ._dispatch import Dispatcher

__all__ = ["RPCService", "RPCWorker", "service"]

T = TypeVar("T", bound=type)


class _Body(list[bytes]):
    """Request frames that carry how to send a PARTIAL reply to them.

    They reach the dispatcher as the plain frames list, inline or through a
    thread pool (``offload="thread"`` hands the same object over).
    """

    emit: Callable[[list[bytes]], None]


class RPCWorker(MDPWorker):
    """An MDP/0.2 worker whose handler may send PARTIAL replies while it runs.

    The dispatcher sends a stream's items this way, each as it is made. The
    handler (its greenlet, or a pool thread) only queues them; this worker's
    loop, the sockets' owner, sends them (rule 1), before the request's FINAL.
    """

    def __init__(self, *args: Any, partials: bool = True, **kw: Any) -> None:
        super().__init__(*args, **kw)
        #: False: the frames go as they are (a process pool pickles them)
        self.partials = partials and self.version == 2
        self._partials: deque[tuple[list[bytes], list[bytes]]] = deque()
        self._hub = gevent.get_hub()
        self._thread = threading.get_ident()

    def _work(self, envelope: list[bytes], body: list[bytes], key: str | None) -> None:
        if self.partials:
            carrying = _Body(body)
            carrying.emit = functools.partial(self._emit, envelope)
            body = carrying
        super()._work(envelope, body, key)

    def _emit(self, envelope: list[bytes], frames: list[bytes]) -> None:
        self._partials.append((envelope, frames))
        if threading.get_ident() == self._thread:
            self.poller.wake()
        else:  # a pool thread: the wake-up must run in the hub's own thread
            self._hub.loop.run_callback_threadsafe(self.poller.wake)

    def _flush(self) -> None:
        while self._partials:  # a request's partials were queued before its final
            envelope, frames = self._partials.popleft()
            msg = [b"", self.header, PARTIAL02, *envelope, b"", *frames]
            if not self._send(msg, getattr(envelope, "link", None)):
                self.trace.drop(msg, "queue not reachable")
            elif self.trace.on:
                self.trace.hop("send", msg)
        super()._flush()


class RPCService(MDPWorkerService):
    """Serve ``obj``'s public methods as the Majordomo service ``service`` (default: class name).

    Sockets: ``broker`` (a DEALER per broker: ``endpoint`` may list several;
    ``--endpoint broker=ADDR`` under the launcher) and ``kill``. Everything
    of :class:`~greenzmq.patterns.mdp.MDPWorkerService` applies: heartbeats,
    several brokers, ``offload``/``pool``, CURVE ``options``, tracing and
    stats. Generator methods stream (``window`` items a chunk at most, each
    an MDP/0.2 PARTIAL reply, see :mod:`greenzmq.rpc._dispatch`; its
    workers are :class:`RPCWorker`) through one more worker registered as the
    private service ``SERVICE.~ID`` (the stream's follow-up requests must
    reach the process holding the generator); with ``offload="process"``
    they are refused (a generator cannot leave its pool process).
    """

    name = "rpc"
    worker_class = RPCWorker

    def __init__(
        self,
        obj: Any,
        *,
        service: str | None = None,
        endpoint: Endpoints = BROKER,
        window: int = 64,
        stream_idle: float = 60.0,
        version: int | str = 2,
        heartbeat: float = 2.5,
        liveness: int = 3,
        reconnect: float = 1.0,
        reconnect_max: float = 32.0,
        options: Mapping[int, Any] | None = None,
        name: str | None = None,
        offload: str | None = None,
        pool: int = 1,
    ) -> None:
        svc = service or type(obj).__name__
        self.dispatcher = Dispatcher(
            obj, window=window, stream_idle=stream_idle, streaming=offload != "process"
        )
        super().__init__(
            svc,
            self.dispatcher,
            endpoint=endpoint,
            version=version,
            heartbeat=heartbeat,
            liveness=liveness,
            reconnect=reconnect,
            reconnect_max=reconnect_max,
            options=options,
            name=name or f"rpc.{svc}",
            offload=offload,
            pool=pool,
        )
        self.obj = obj

    def make_worker(self, slot: int = 0, **extra: Any) -> Any:
        """An :class:`RPCWorker` (PARTIAL replies unless a process pool runs the methods)."""
        extra.setdefault("partials", self.dispatcher.streaming)
        return super().make_worker(slot, **extra)

    @property
    def service(self) -> str:
        """The Majordomo service name callers use."""
        s = self.mdp_service
        return s.decode() if isinstance(s, bytes) else s

    def make_workers(self) -> list[HeartbeatWorker]:
        """``pool`` workers, plus the stream worker when streaming is on."""
        workers = super().make_workers()
        if self.dispatcher.streaming:
            # a name only this process serves: a stream's generator lives here
            private = f"{self.service}.~{uuid.uuid4().hex[:12]}"
            self.dispatcher.stream_service = private
            workers.append(
                HeartbeatWorkerService.make_worker(
                    self, self.pool, service=private, version=self.version, partials=True
                )
            )
        return workers


class _Launch:
    """``Cls.__greenzmq_service__()``: how the launcher serves a class marked by :func:`service`.

    On the class it makes an instance (``greenzmq mod:Calculator``); on an
    instance (``greenzmq 'mod:Calculator(2)'``) it serves that one.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __get__(self, inst: Any, owner: type) -> Callable[[], RPCService]:
        return lambda: RPCService(owner() if inst is None else inst, **self.options)


@overload
def service(cls: T, /) -> T: ...
@overload
def service(**options: Any) -> Callable[[T], T]: ...
def service(cls: Any = None, /, **options: Any) -> Any:
    """Mark a plain class as an RPC app: ``greenzmq mymodule:Calculator`` serves it.

    ``@rpc.service`` or ``@rpc.service(offload="thread", pool=4, window=16)``
    (options of :class:`RPCService`). The class is left as it is (tests
    still make plain instances); it gains only ``__greenzmq_service__``,
    which the launcher calls to get the service.
    """

    def mark(c: T) -> T:
        setattr(c, "__greenzmq_service__", _Launch(dict(options)))  # noqa: B010 (a dunder hook)
        return c

    return mark(cls) if cls is not None else mark
