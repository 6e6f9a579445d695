"""Many sockets, one consumer loop (the tutorial's case 1), and outboxes for sending.

Two ways to read many sockets from one loop, with one interface
(:class:`Mux`): iterate, ``get(timeout)``, ``stop()``, ``statistics()``.

* :class:`Readers`: one greenlet per socket. Each blocks green on its socket,
  then drains it raw with NOBLOCK (at most ``batch`` messages before it lets
  the others run) into one bounded gevent Queue of ``(socket name, frames)``.
* :class:`PollerListener`: the consumer itself waits on a
  :class:`~greenzmq.core.poller.GreenPoller` and drains the ready sockets raw.

Replying on a socket the mux reads: ``mux.send(name, frames)`` on either.
The greenlet that owns the socket sends (a ``Readers`` socket's reader, which
then waits on its own socket and its send queue; the ``PollerListener``
consumer's poll loop, which also polls POLLOUT for sockets with a backlog):
rule 1 and rule 2, only one greenlet ever waits on a socket. Sends are whole
messages, in order, through a bounded queue (``send_maxsize``) that holds the
caller back green when full; libzmq's EAGAIN makes the owner wait, never drop.

:class:`Outbox` is the other direction for a socket nobody reads: any number
of greenlets hand frames to one writer greenlet that owns the socket.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, cast

import gevent
import gevent.pool
import gevent.queue
import greenlet
import zmq
from zmq.backend import Socket as _CSocket

from ..errors import ClosedError, ReaderError
from .poller import GreenPoller
from .sockets import Socket, type_name
from .tracing import SocketTracer, Tracer

__all__ = ["Message", "Mux", "MuxStatistics", "Outbox", "PollerListener", "Readers"]

Message = tuple[str, list[bytes]]
_WAKE: Any = object()
_LOCKSTEP = (zmq.REQ, zmq.REP)
_recv, _send, _get = _CSocket.recv, _CSocket.send, _CSocket.get
_NB, _NB_MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS, _POLLIN, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)
# sockets a mux only reads; every other type it reads may also be sent on (mux.send)
_RECV_ONLY = (zmq.PULL, zmq.SUB)


def _can_send(sock: Socket) -> bool:
    return int(sock.type) not in _RECV_ONLY


def _mux_hint(name: str, tool: str) -> str:
    return (
        f"It is read by a greenzmq.{tool}: send through its owner with "
        f"mux.send({name!r}, frames) (one greenlet reads and writes the socket)."
    )


class _Outgoing:
    """One socket's accepted but unsent messages: a bounded queue and the head in flight.

    The queue's ``put`` holds a sender back green when it is full; ``pending``
    is the message its owner took off the queue and libzmq refused (EAGAIN).
    Only the socket's owner calls :meth:`flush`.
    """

    __slots__ = ("name", "pending", "queue", "sent", "spins", "tracer", "unroutable")

    def __init__(self, name: str, maxsize: int, tracer: SocketTracer | None) -> None:
        self.name = name
        self.queue: gevent.queue.Queue[list[bytes]] = gevent.queue.Queue(maxsize)
        self.pending: list[bytes] | None = None
        self.sent = 0
        self.unroutable = 0
        self.spins = 0
        self.tracer = tracer

    def __len__(self) -> int:
        return self.queue.qsize() + (self.pending is not None)

    def flush(self, raw: zmq.Socket[bytes], limit: int) -> int:
        """Send raw (NOBLOCK) up to ``limit`` messages; return how many went to libzmq.

        Stops at EAGAIN with the refused message kept as ``pending``. A ROUTER
        with ROUTER_MANDATORY refusing a peer it no longer knows (EHOSTUNREACH)
        is counted in ``unroutable`` and traced as a drop (rule 8), not fatal.
        """
        q, tr, k = self.queue, self.tracer, 0
        while k < limit:
            frames = self.pending
            if frames is None:
                if not q.qsize():
                    break
                frames = q.get_nowait()
            try:
                _send_raw(raw, frames)
            except zmq.Again:
                self.pending = frames
                break
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    self.pending = frames
                    raise
                self.pending = None
                self.unroutable += 1
                if tr is not None:
                    tr.drop(frames, "unroutable")
                continue
            self.pending = None
            k += 1
            if tr is not None:
                tr.hop("send", frames)
        self.sent += k
        return k

    def backoff(self) -> None:
        """A poll said POLLOUT and the send still got EAGAIN: wait a little, more each time.

        A ROUTER with ROUTER_MANDATORY is writable when any peer has room, not
        the one the head message is for: without this the owner would spin.
        """
        self.spins += 1
        gevent.sleep(min(0.0005 * (1 << min(self.spins, 7)), 0.05))


def _sendable(outs: dict[str, _Outgoing], name: str, stopped: str | None) -> _Outgoing:
    """``name``'s outgoing queue, or KeyError (not sendable) / ClosedError (``stopped``)."""
    out = outs.get(name)
    if out is None:
        raise KeyError(
            f"{name!r}: not a socket this mux reads and may send on "
            f"({', '.join(sorted(outs)) or 'none'})"
        )
    if stopped is not None:
        raise ClosedError(f"{stopped} is stopped: cannot send on {name!r}")
    return out


def _more_waiting(raw: zmq.Socket[bytes]) -> bool:
    """Whether another message is ready on ``raw``.

    One EVENTS read (~1 us) where ending a drain on EAGAIN costs an exception
    (~7 us): asked after a wake-up's first message, at low load often the only one.
    """
    return bool(cast(int, _get(raw, _EVENTS)) & _POLLIN)


def _recv_raw(raw: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message, NOBLOCK (zmq.Again if none), as bytes frames.

    The hot drain path: a zmq.Frame carries its RCVMORE flag, which saves the
    getsockopt through pyzmq's option enum that ``recv_multipart`` pays per
    message (about 2x cheaper per message; greenzmq/tools/benchmarks/mux.py).
    """
    f = _recv(raw, _NB, False)
    m = [f.bytes]
    while f.more:
        f = _recv(raw, _NB, False)
        m.append(f.bytes)
    return m


def _send_raw(raw: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """One whole message, NOBLOCK (zmq.Again if the socket is at its HWM).

    The hot send path: the compiled send with int flags, not pyzmq's
    ``send_multipart`` with its per-frame checks and IntFlag arithmetic (about
    5x cheaper for a 3-frame message). EAGAIN comes on the first frame: once
    it is taken, libzmq accepts the rest of the message. Every frame is
    checked first, as ``send_multipart`` does: a TypeError on a later frame
    would leave a partial message on the socket.
    """
    for f in frames:
        if type(f) is not bytes:
            memoryview(f)  # TypeError unless a buffer (bytearray, zmq.Frame, ...)
    for f in frames[:-1]:
        _send(raw, f, _NB_MORE, True)
    _send(raw, frames[-1], _NB, True)


def _until_closed(get: Callable[[], Message]) -> Iterator[Message]:
    """Yield ``get()`` until it raises ClosedError (stopped and drained)."""
    while True:
        try:
            yield get()
        except ClosedError:
            return


def _close_sockets(sockets: Iterable[Socket]) -> None:
    for s in sockets:
        s.close()  # with the socket's own LINGER: replies already sent still go out


@dataclasses.dataclass(frozen=True)
class MuxStatistics:
    """A snapshot of a mux: what it took from each socket and what it holds."""

    received: dict[str, int]
    delivered: int
    queued: int
    maxsize: int
    stopped: bool
    # mux.send: messages handed to libzmq, accepted but not yet sent, and
    # replies a ROUTER could not route (its peer is gone: EHOSTUNREACH)
    sent: dict[str, int] = dataclasses.field(default_factory=dict)
    send_queued: int = 0
    unroutable: int = 0


class Mux(Protocol):
    """What both ways of reading many sockets offer to the consumer."""

    def get(self, timeout: float | None = None) -> Message:
        """The next ``(socket name, frames)``: ClosedError once stopped and drained."""

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until stopped and drained."""

    def send(self, name: str, frames: Sequence[bytes], timeout: float | None = None) -> None:
        """Queue a whole message for socket ``name``; its owning greenlet sends it."""

    def send_nowait(self, name: str, frames: Sequence[bytes]) -> None:
        """Like ``send`` but raise ``gevent.queue.Full`` instead of waiting."""

    def stop(self) -> None:
        """Stop reading and close the sockets; what was already read is still delivered."""

    def statistics(self) -> MuxStatistics:
        """A frozen snapshot of counts and depth."""


def _tracers(sockets: Sequence[Socket], tracer: Tracer | None) -> dict[str, SocketTracer | None]:
    if tracer is None or not tracer.on:
        return {s.name: None for s in sockets}
    return {s.name: tracer.for_socket(s.name, type_name(s.type)) for s in sockets}


class Readers:
    """One reader greenlet per socket feeding one bounded queue (see module doc).

    A reader that fails surfaces as :class:`~greenzmq.errors.ReaderError` (with
    the original as ``__cause__``) in the consumer's next ``get``. ``stop()``
    kills every reader and closes every socket; a message a reader had already
    taken off its socket is still delivered, never dropped.
    """

    def __init__(
        self,
        sockets: Iterable[Socket],
        *,
        maxsize: int = 1000,
        batch: int = 256,
        tracer: Tracer | None = None,
        group: gevent.pool.Group | None = None,
        send_maxsize: int = 1000,
    ) -> None:
        self.sockets = list(sockets)
        self.batch = batch
        self._queue: gevent.queue.Queue[Any] = gevent.queue.Queue(maxsize)
        self._maxsize = maxsize
        self._group = gevent.pool.Group()
        self._parent_group = group
        self._overflow: deque[Message] = deque()
        self._failures: deque[tuple[str, BaseException]] = deque()
        self._received = dict.fromkeys((s.name for s in self.sockets), 0)
        self._delivered = 0
        self._stopped = False
        self._trace = _tracers(self.sockets, tracer)
        self._take_trace = tracer.for_socket("mux", "queue") if tracer and tracer.on else None
        self._started = False
        # sockets that may be sent on: their reader also sends (mux.send)
        self._out = {
            s.name: _Outgoing(s.name, send_maxsize, self._trace[s.name])
            for s in self.sockets
            if _can_send(s)
        }
        self._pollers: dict[str, GreenPoller] = {}
        self._want_room: set[str] = set()  # duplex readers parked on a full queue

    def start(self) -> Readers:
        """Spawn the readers (idempotent); returns self.

        Each socket is handed over to its reader: SocketBusyError, and no
        reader started, if another live greenlet owns one of them.
        """
        if not self._started:
            readers = []
            for sock in self.sockets:
                duplex = sock.name in self._out
                g: gevent.Greenlet[..., object] = gevent.Greenlet(
                    self._duplex if duplex else self._read, sock
                )
                g.name = f"reader-{sock.name}"
                readers.append((sock, g))
            for sock, g in readers:
                sock.hand_over(g)
            self._started = True
            for sock, g in readers:
                sock.busy_hint = _mux_hint(sock.name, "Readers")
                if sock.name in self._out:
                    self._pollers[sock.name] = GreenPoller()
                self._group.start(g)
                if self._parent_group is not None:
                    self._parent_group.add(g)
        return self

    def send(self, name: str, frames: Sequence[bytes], timeout: float | None = None) -> None:
        """Queue a whole message for socket ``name``; its reader greenlet sends it.

        Blocks green while ``send_maxsize`` messages wait (TimeoutError after
        ``timeout`` s). An accepted message is sent in order, whatever
        libzmq's HWM: the reader waits for POLLOUT. Raises KeyError for a
        socket the mux does not read or cannot send on, ClosedError once stopped.
        """
        out = self._outgoing(name)
        try:
            out.queue.put(list(frames), timeout=timeout)
        except gevent.queue.Full:
            raise TimeoutError(f"send queue of {name!r} full for {timeout} s") from None
        self._pollers[name].wake()

    def send_nowait(self, name: str, frames: Sequence[bytes]) -> None:
        """Queue a whole message for ``name`` or raise ``gevent.queue.Full`` at once."""
        out = self._outgoing(name)
        out.queue.put_nowait(list(frames))
        self._pollers[name].wake()

    def _outgoing(self, name: str) -> _Outgoing:
        out = _sendable(self._out, name, "mux" if self._stopped else None)
        if not self._started:
            self.start()
        failed = self._group_failed(name)
        if failed is not None:
            raise ClosedError(f"the reader of {name!r} failed: {failed!r}") from failed
        return out

    def _group_failed(self, name: str) -> BaseException | None:
        for n, exc in self._failures:
            if n == name:
                return exc
        return None

    def _duplex(self, sock: Socket) -> None:
        """Read ``sock`` and send what ``send`` queued for it: the one greenlet on it.

        It waits on a GreenPoller of its own socket (POLLIN while the consumer's
        queue has room, POLLOUT while a message waits for the HWM), which
        ``send`` and the consumer's ``get`` wake: rule 2, nobody else waits on it.
        """
        raw, name, batch = sock.raw, sock.name, self.batch
        out, poller, tr = self._out[name], self._pollers[name], self._trace[name]
        put, full, again = self._queue.put_nowait, gevent.queue.Full, zmq.Again
        item: Any = None  # read off the socket, not yet in the queue
        flags = _POLLIN
        # REQ/REP alternate: EVENTS says POLLIN only when a recv is allowed
        lockstep = int(sock.type) in _LOCKSTEP
        poller.register(sock, flags)
        try:
            while True:
                k = out.flush(raw, batch)
                m = 0
                while m < batch:
                    if item is None:
                        if lockstep and not _more_waiting(raw):
                            break
                        try:
                            frames = _recv_raw(raw)
                        except again:
                            break
                        self._received[name] += 1
                        if tr is None:
                            item = (name, frames)
                        else:
                            key = tr.hop("recv", frames)
                            if key:
                                tr.hop("put", frames, key=key)
                            item = (name, frames, key)
                    try:
                        put(item)
                    except full:
                        break
                    item = None
                    m += 1
                if k >= batch or m >= batch:
                    gevent.sleep(0)  # a busy socket must not starve the others
                    continue
                want = (_POLLIN if item is None else 0) | (
                    _POLLOUT if out.pending is not None else 0
                )
                if want != flags:
                    if want:
                        poller.register(sock, want)
                    else:
                        poller.unregister(sock)
                    flags = want
                if out.pending is None and out.queue.qsize():
                    continue  # queued while we sent
                if item is not None:
                    self._want_room.add(name)
                    if self._queue.qsize() < self._maxsize:
                        continue  # room appeared meanwhile
                ready = poller.poll(-1)
                self._want_room.discard(name)
                if out.pending is not None and ready and ready[0][1] & _POLLOUT:
                    if not out.flush(raw, batch):
                        out.backoff()
                    else:
                        out.spins = 0
        except gevent.GreenletExit:
            if item is not None:
                self._overflow.append(item)
        except zmq.ZMQError as e:
            if self._stopped and e.errno in (zmq.ENOTSOCK, zmq.ETERM):
                return
            self._fail(name, e, None)
            if item is not None:
                self._overflow.append(item)
        except Exception as e:
            self._fail(name, e, None)
            if item is not None:
                self._overflow.append(item)
        finally:
            self._want_room.discard(name)
            poller.close_watchers()

    def _read(self, sock: Socket) -> None:
        sock.claim()
        raw, name, batch = sock.raw, sock.name, self.batch
        put, tr = self._queue.put, self._trace[name]
        again, recv_raw = zmq.Again, _recv_raw
        held: list[bytes] | None = None
        n = 0  # taken in this batch and not yet counted
        try:
            while True:
                held = sock.recv_multipart()  # block green
                while True:
                    if tr is None:
                        put((name, held))
                    else:
                        if k := tr.hop("recv", held):
                            tr.hop("put", held, key=k)
                        # the key (None: not sampled) rides along for the take
                        # hop, so a message is digested once, not twice
                        put((name, held, k))
                    held = None
                    n += 1
                    if n >= batch or (n == 1 and not _more_waiting(raw)):
                        break
                    try:
                        held = recv_raw(raw)  # move data raw
                    except again:
                        break
                full, self._received[name], n = n >= batch, self._received[name] + n, 0
                if full:
                    gevent.sleep(0)  # a busy socket must not starve the others
        except gevent.GreenletExit:
            if held is not None:
                self._overflow.append((name, held))
        except zmq.ZMQError as e:
            if self._stopped and e.errno in (zmq.ENOTSOCK, zmq.ETERM):
                return  # closed under us by stop(): not a failure
            self._fail(name, e, held)
        except Exception as e:
            self._fail(name, e, held)
        finally:
            # killed or failed mid-batch: count what was put and the message held
            self._received[name] += n + (held is not None)

    def _fail(self, name: str, exc: BaseException, held: list[bytes] | None) -> None:
        if held is not None:
            self._overflow.append((name, held))
        self._failures.append((name, exc))
        self._wake()

    def _wake(self) -> None:
        """Wake a consumer parked in ``get`` so it sees a failure or the stop."""
        try:
            self._queue.put_nowait(_WAKE)
        except gevent.queue.Full:
            pass  # the consumer is not parked: it sees the news on its next get

    def get(self, timeout: float | None = None) -> Message:
        """The next ``(socket name, frames)``.

        Raises ReaderError if a reader failed, ClosedError once stopped and
        drained, TimeoutError when ``timeout`` seconds pass with nothing.
        """
        while True:
            if self._failures:
                name, exc = self._failures.popleft()
                raise ReaderError(f"reader of socket {name!r} failed: {exc!r}") from exc
            if self._queue.qsize() == 0:
                if self._overflow:
                    item = self._overflow.popleft()
                    break
                if self._stopped:
                    raise ClosedError("mux is stopped and drained")
            try:
                item = self._queue.get(timeout=timeout)
            except gevent.queue.Empty:
                raise TimeoutError(f"no message within {timeout} s") from None
            if item is not _WAKE:
                break
        self._delivered += 1
        if self._want_room:  # a duplex reader holds a message for the queue
            for n in list(self._want_room):
                self._pollers[n].wake()
        take = self._take_trace
        if take is not None:
            if len(item) == 3:  # traced by its reader: (name, frames, key or None)
                name, frames, key = item
                item = (name, frames)
            else:  # held back at a stop or failure: digest it here
                name, frames = item
                # the source socket's key (a ROUTER's routing id is not body)
                src = self._trace[name]
                key = src.key(frames) if src is not None else None
            if key is not None:
                take.hop("take", frames, key=key, source=name)
        return item

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until stopped and drained; ReaderError propagates."""
        self.start()
        yield from _until_closed(self.get)

    def stop(self) -> None:
        """Stop reading, close the sockets; what is queued stays readable."""
        if self._stopped:
            return
        self._stopped = True
        self._flush_out(1.0)
        self._group.kill(block=True)
        _close_sockets(self.sockets)
        self._wake()

    def _flush_out(self, seconds: float) -> None:
        """Give the readers up to ``seconds`` to hand accepted messages to libzmq."""
        if not self._started:
            return
        with gevent.Timeout(seconds, False):  # type: ignore[arg-type]  # False: silent
            while any(len(o) and not self._group_failed(n) for n, o in self._out.items()):
                for n, o in self._out.items():
                    if len(o):
                        self._pollers[n].wake()
                gevent.sleep(0.005)

    def statistics(self) -> MuxStatistics:
        """A frozen snapshot of counts and depth."""
        return MuxStatistics(
            received=dict(self._received),
            delivered=self._delivered,
            queued=self._queue.qsize() + len(self._overflow),
            maxsize=self._maxsize,
            stopped=self._stopped,
            **_send_stats(self._out),
        )


def _send_stats(out: dict[str, _Outgoing]) -> dict[str, Any]:
    return {
        "sent": {n: o.sent for n, o in out.items() if o.sent},
        "send_queued": sum(len(o) for o in out.values()),
        "unroutable": sum(o.unroutable for o in out.values()),
    }


class PollerListener:
    """The same consumer interface over one GreenPoller (the tutorial's poller way).

    The consumer greenlet owns every socket; ``stop()`` may be called from any
    greenlet: it wakes the poll instead of touching the sockets.
    """

    def __init__(
        self,
        sockets: Iterable[Socket],
        *,
        batch: int = 256,
        tracer: Tracer | None = None,
        send_maxsize: int = 1000,
    ) -> None:
        self.sockets = list(sockets)
        self.batch = batch
        self._poller = GreenPoller()
        for s in self.sockets:
            self._poller.register(s, zmq.POLLIN)
        self._buf: deque[Message] = deque()
        self._received = dict.fromkeys((s.name for s in self.sockets), 0)
        self._delivered = 0
        self._stopped = False
        self._closed = False
        self._trace = _tracers(self.sockets, tracer)
        self._polling = False
        self._consumer: Any = None  # the greenlet that polls (and owns the sockets)
        # REQ/REP must alternate recv and send: one message, then the reply
        self._lockstep = {s.name for s in self.sockets if s.type in _LOCKSTEP}
        self._by_name = {s.name: s for s in self.sockets}
        self._out = {
            s.name: _Outgoing(s.name, send_maxsize, self._trace[s.name])
            for s in self.sockets
            if _can_send(s)
        }
        self._flags = dict.fromkeys(self._by_name, _POLLIN)
        self._out_pollers: dict[str, GreenPoller] = {}  # the consumer's wait in a full send

    def send(self, name: str, frames: Sequence[bytes], timeout: float | None = None) -> None:
        """Queue a whole message for socket ``name``; the consumer's poll loop sends it.

        From the consumer itself it goes straight to libzmq when nothing waits
        before it; a full queue makes the consumer wait for POLLOUT (TimeoutError
        after ``timeout`` s). Another greenlet blocks green while
        ``send_maxsize`` messages wait, and the message leaves on the
        consumer's next ``get``. KeyError for a socket it cannot send on,
        ClosedError once stopped.
        """
        out = self._outgoing(name)
        msg = list(frames)
        if self._consumer is greenlet.getcurrent():
            sock = self._by_name[name]
            raw = sock.raw
            if len(out) or out.queue.full():
                out.flush(raw, self.batch)
            if not len(out):
                out.pending = msg
                out.flush(raw, 1)
                return
            if out.queue.full():
                self._wait_room(sock, out, timeout)
            out.queue.put_nowait(msg)
            return
        try:
            out.queue.put(msg, timeout=timeout)
        except gevent.queue.Full:
            raise TimeoutError(f"send queue of {name!r} full for {timeout} s") from None
        self._poller.wake()

    def send_nowait(self, name: str, frames: Sequence[bytes]) -> None:
        """Queue a whole message for ``name`` or raise ``gevent.queue.Full`` at once."""
        out = self._outgoing(name)
        if self._consumer is greenlet.getcurrent() and out.queue.full():
            out.flush(self._by_name[name].raw, self.batch)
        out.queue.put_nowait(list(frames))
        self._poller.wake()

    def _outgoing(self, name: str) -> _Outgoing:
        return _sendable(self._out, name, "listener" if self._stopped else None)

    def _wait_room(self, sock: Socket, out: _Outgoing, timeout: float | None) -> None:
        """The consumer's own send found the queue full: wait for POLLOUT and flush."""
        poller = self._out_pollers.get(sock.name)
        if poller is None:
            poller = self._out_pollers[sock.name] = GreenPoller()
            poller.register(sock, zmq.POLLOUT)
        try:
            with gevent.Timeout(timeout, TimeoutError(f"send queue of {sock.name!r} full")):
                while out.queue.full():
                    if poller.poll(-1) and not out.flush(sock.raw, self.batch):
                        out.backoff()
                    else:
                        out.spins = 0
        finally:
            poller.close_watchers()
            del self._out_pollers[sock.name]

    def _flush_all(self) -> None:
        """Send what waits (consumer only); POLLOUT for the sockets still backed up."""
        for name, out in self._out.items():
            if len(out):
                out.flush(self._by_name[name].raw, self.batch)
            want = _POLLIN | (_POLLOUT if out.pending is not None else 0)
            if want != self._flags[name]:
                self._flags[name] = want
                self._poller.modify(self._by_name[name], want)

    def _fill(self, timeout: float | None) -> None:
        if self._consumer is None:  # the first poll: its greenlet owns the sockets
            self._consumer = greenlet.getcurrent()
            for s in self.sockets:
                s.claim(self._consumer)
                s.busy_hint = _mux_hint(s.name, "PollerListener")
        if self._out:
            self._flush_all()
        ms = -1 if timeout is None else int(timeout * 1000)
        self._polling = True
        try:
            ready = self._poller.poll(ms)
        finally:
            self._polling = False
        again, buf, batch, recv_raw = zmq.Again, self._buf, self.batch, _recv_raw
        for sock, ev in ready:
            if ev & _POLLOUT:
                out = self._out[sock.name]
                if out.pending is not None:
                    if out.flush(sock.raw, batch):
                        out.spins = 0
                    else:
                        out.backoff()
                if not ev & _POLLIN:
                    continue
            raw, name, tr, n = sock.raw, sock.name, self._trace[sock.name], 0
            limit = 1 if name in self._lockstep else batch
            while n < limit:
                if n == 1 and not _more_waiting(raw):
                    break
                try:
                    frames = recv_raw(raw)
                except again:
                    break
                n += 1
                if tr is not None:
                    tr.hop("recv", frames)
                buf.append((name, frames))
            self._received[name] += n

    def get(self, timeout: float | None = None) -> Message:
        """The next ``(socket name, frames)``; ClosedError once stopped and drained."""
        while not self._buf:
            if self._stopped:
                self._close()
                raise ClosedError("listener is stopped and drained")
            self._fill(timeout)
            if not self._buf and timeout is not None and not self._stopped:
                raise TimeoutError(f"no message within {timeout} s")
        self._delivered += 1
        return self._buf.popleft()

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until stopped and drained."""
        yield from _until_closed(self.get)

    def stop(self) -> None:
        """Stop polling and close the sockets; what was already read is still delivered.

        Called by the consumer (or before anyone polled), it closes the sockets
        at once. Called by another greenlet, it only wakes the consumer, which
        closes them once drained: the consumer may be parked in the poll or
        still handling a message (a REP's reply must still go out).
        """
        self._stopped = True
        consumer = self._consumer
        if self._polling or (
            consumer is not None and consumer is not greenlet.getcurrent() and not consumer.dead
        ):
            self._poller.wake()
        else:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if any(len(o) for o in self._out.values()):
                self._flush_out(1.0)
            self._poller.close_watchers()
            _close_sockets(self.sockets)

    def _flush_out(self, seconds: float) -> None:
        """Hand accepted messages to libzmq for up to ``seconds`` (the consumer, closing)."""
        with gevent.Timeout(seconds, False):  # type: ignore[arg-type]  # False: silent
            for name, out in self._out.items():
                sock = self._by_name[name]
                while len(out):
                    if not out.flush(sock.raw, self.batch):
                        sock.poll(50, zmq.POLLOUT)

    def statistics(self) -> MuxStatistics:
        """A frozen snapshot of counts and depth."""
        return MuxStatistics(
            received=dict(self._received),
            delivered=self._delivered,
            queued=len(self._buf),
            maxsize=self.batch * len(self.sockets),
            stopped=self._stopped,
            **_send_stats(self._out),
        )


class Outbox:
    """One writer greenlet owns ``sock``; any greenlet may ``send`` through it.

    For a socket that is only sent on. A socket a mux also reads is sent on
    with the mux's ``send``: the Outbox refuses it (SocketBusyError).

    Sends go raw with NOBLOCK and fall back to a green (blocking) send when
    libzmq says EAGAIN (HWM reached), so order is kept and nothing is dropped.
    """

    def __init__(
        self,
        sock: Socket,
        *,
        maxsize: int = 1000,
        tracer: Tracer | None = None,
        group: gevent.pool.Group | None = None,
    ) -> None:
        self.sock = sock
        self._queue: gevent.queue.Queue[Any] = gevent.queue.Queue(maxsize)
        self._closed = False
        self._error: BaseException | None = None
        self.sent = 0
        self._tr = (
            tracer.for_socket(sock.name, type_name(sock.type))
            if tracer is not None and tracer.on
            else None
        )
        self._writer: gevent.Greenlet[..., object] = gevent.Greenlet(self._write)
        self._writer.name = f"writer-{sock.name}"
        # an explicit hand-over: SocketBusyError here if another live greenlet
        # (a mux's reader, say) owns the socket, never a silent steal
        sock.hand_over(self._writer)
        sock.busy_hint = f"Send through its greenzmq.Outbox (writer {self._writer.name!r})."
        if group is not None:
            group.add(self._writer)
        self._writer.start()

    def _check_open(self) -> None:
        if self._error is not None:
            raise ClosedError(
                f"outbox of socket {self.sock.name!r} is closed: its writer failed: {self._error!r}"
            ) from self._error
        if self._closed:
            raise ClosedError(f"outbox of socket {self.sock.name!r} is closed")

    def send(self, frames: Sequence[bytes], timeout: float | None = None) -> None:
        """Queue ``frames`` for sending; blocks green while the outbox is full.

        Raises ClosedError once closed, or once the writer failed (the
        failure is its ``__cause__``).
        """
        self._check_open()
        try:
            self._queue.put(list(frames), timeout=timeout)
        except gevent.queue.Full:
            raise TimeoutError(f"outbox of {self.sock.name!r} full for {timeout} s") from None

    def send_nowait(self, frames: Sequence[bytes]) -> None:
        """Queue ``frames`` or raise ``gevent.queue.Full`` at once."""
        self._check_open()
        self._queue.put_nowait(list(frames))

    def _write(self) -> None:
        try:
            self._pump()
        except Exception as e:
            self._error = e
            # free senders parked on a full queue; every later send raises
            # ClosedError with this failure as its cause
            while True:
                try:
                    self._queue.get_nowait()
                except gevent.queue.Empty:
                    break
            raise  # and the hub reports it: a writer failure is never silent

    def _pump(self) -> None:
        sock = self.sock
        sock.claim()
        raw, get, tr = sock.raw, self._queue.get, self._tr
        again, send_raw = zmq.Again, _send_raw
        while True:
            frames = get()
            if frames is _WAKE:
                return
            try:
                send_raw(raw, frames)
            except again:
                sock.send_multipart(frames)  # wait green for room
            self.sent += 1
            if tr is not None:
                tr.hop("send", frames)

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (up to ``timeout`` seconds), then stop the writer."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_WAKE, timeout=timeout)
        except gevent.queue.Full:
            pass
        self._writer.join(timeout)
        if not self._writer.dead:
            self._writer.kill()

    @property
    def queued(self) -> int:
        """Messages waiting for the writer."""
        return self._queue.qsize()
