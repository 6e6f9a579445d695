"""Declarative socket specs and green sockets that one greenlet owns.

A :class:`Socket` is a ``zmq.green`` socket that remembers which greenlet owns
it. The owner is the first greenlet that sends or receives (or the one that
calls :meth:`Socket.claim`; :meth:`Socket.hand_over` passes it on, claim
never takes it from a live owner). Any other greenlet that sends or receives gets
:class:`~greenzmq.errors.SocketBusyError` at once, naming the socket and both
greenlets, instead of pyzmq's "Only one greenlet can be waiting" assert, a
deadlock, or the 11.6 s fallback stall (docs/design.md, rule 1).

Hot loops wait green and then move data through :attr:`Socket.raw`, a plain
``zmq.Socket`` shadow of the same libzmq socket (rule 3: block green, move
data raw).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import gevent
import greenlet
import zmq
import zmq.green as gzmq

from ..errors import ConfigError, SocketBusyError
from .endpoints import EndpointMap, Endpoints, endpoint_list, parse_endpoint

__all__ = [
    "Context",
    "Socket",
    "SocketSpec",
    "apply_endpoints",
    "attach_endpoints",
    "describe_greenlet",
    "parse_endpoint",
    "socket_type",
    "with_maxmsgsize",
]

_TYPES = {
    name: getattr(zmq, name)
    for name in (
        "PAIR",
        "PUB",
        "SUB",
        "REQ",
        "REP",
        "DEALER",
        "ROUTER",
        "PULL",
        "PUSH",
        "XPUB",
        "XSUB",
    )
}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


def socket_type(kind: str | int) -> int:
    """Return the zmq socket type for ``"ROUTER"`` / ``zmq.ROUTER``."""
    if isinstance(kind, int):
        if kind not in _TYPE_NAMES:
            raise ConfigError(f"unknown socket type {kind!r}")
        return kind
    try:
        return int(_TYPES[kind.upper()])
    except KeyError:
        raise ConfigError(
            f"unknown socket type {kind!r} (one of {', '.join(sorted(_TYPES))})"
        ) from None


def type_name(kind: int | str | bytes) -> str:
    """``zmq.ROUTER`` (or ``sock.type``, which pyzmq types loosely) -> ``"ROUTER"``."""
    return _TYPE_NAMES.get(int(kind), str(kind))


@dataclasses.dataclass(frozen=True)
class SocketSpec:
    """What a socket is, declared once: the service creates it after fork.

    ``bind``/``connect`` are endpoints; ``subscribe`` topics for SUB sockets
    (default: everything); ``router_mandatory`` defaults to on for ROUTER
    sockets, which route replies and must not drop them silently (rule 8).
    ``hwm`` is both high-water marks, except a REP's SNDHWM, which is
    unlimited: libzmq's REP drops a reply at its SNDHWM without a word.
    ``linger`` None means 1 s for sockets that send and 0 for SUB/PULL; a
    :class:`~greenzmq.core.service.Service` lets its REP/ROUTER sockets linger for
    its graceful timeout. ``monitor`` True logs and counts the socket's
    connection events (:mod:`greenzmq.core.monitor`), False never; None (the
    default) follows the service's ``monitor`` (the launcher's ``--monitor``).
    """

    name: str
    type: str | int
    bind: Sequence[str] = ()
    connect: Sequence[str] = ()
    subscribe: Sequence[bytes] = (b"",)
    identity: bytes | None = None
    hwm: int = 1000
    # ms a closed socket keeps trying to deliver what was already sent: a reply
    # "sent" just before a graceful stop must not be discarded by close().
    # None: 1000 for sockets that send, 0 for receive-only SUB/PULL (their only
    # outbound traffic, subscriptions to an absent peer, would stall term()).
    linger: int | None = None
    router_mandatory: bool | None = None
    maxmsgsize: int = -1
    options: Mapping[int, Any] = dataclasses.field(default_factory=dict)
    # log and count this socket's connection events (core.monitor); None: as the
    # service says (Service(monitor=...), the launcher's --monitor)
    monitor: bool | None = None

    def __post_init__(self) -> None:
        socket_type(self.type)
        if isinstance(self.bind, str) or isinstance(self.connect, str):
            raise ConfigError(f"socket {self.name!r}: bind/connect take a sequence of endpoints")
        for ep in self.bind:
            parse_endpoint(ep, bind=True)
        for ep in self.connect:
            parse_endpoint(ep, bind=False)

    @property
    def zmq_type(self) -> int:
        """The numeric zmq socket type."""
        return socket_type(self.type)

    @property
    def effective_linger(self) -> int:
        """The LINGER the socket gets: ``linger``, or the default for its type."""
        if self.linger is not None:
            return self.linger
        return 0 if self.zmq_type in (zmq.SUB, zmq.PULL) else 1000

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint, bind first."""
        return [*self.bind, *self.connect]

    def with_endpoint(self, endpoint: Endpoints) -> SocketSpec:
        """A copy whose endpoints are ``endpoint`` (one or several), bound or connected as before.

        A ``tcp://*:PORT`` or ``tcp://HOST:*`` address always binds (all of
        them, then). Several connect endpoints mean one socket reaching every
        one of them; a host name goes to libzmq as is (it resolves
        ``tcp://host:port`` through DNS).
        """
        eps = endpoint_list(endpoint)
        if not eps:
            raise ConfigError(f"socket {self.name!r}: no endpoint given")
        if len(set(eps)) != len(eps):
            dup = next(e for e in eps if eps.count(e) > 1)
            raise ConfigError(f"socket {self.name!r}: endpoint {dup} is given twice")
        binds = bool(self.bind) or any("*" in e for e in eps)
        for ep in eps:
            parse_endpoint(ep, bind=binds)
        if binds:
            return dataclasses.replace(self, bind=tuple(eps), connect=())
        return dataclasses.replace(self, bind=(), connect=tuple(eps))


def apply_endpoints(specs: Sequence[SocketSpec], overrides: EndpointMap) -> list[SocketSpec]:
    """Replace the endpoints of the named sockets; unknown names are a ConfigError.

    A name may map to one endpoint or to several (a connect socket reaches all).
    """
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ConfigError(
            f"unknown endpoint name {unknown[0]!r} (this service has: "
            f"{', '.join(sorted(by_name)) or 'no sockets'})"
        )
    return [s.with_endpoint(overrides[s.name]) if s.name in overrides else s for s in specs]


def attach_endpoints(sock: zmq.Socket[Any], spec: SocketSpec) -> None:
    """Bind and connect ``sock`` to ``spec``'s endpoints.

    A bind failure is re-raised as a ZMQError naming the socket and endpoint.
    """
    for ep in spec.bind:
        try:
            sock.bind(ep)
        except zmq.ZMQError as e:
            raise zmq.ZMQError(
                e.errno, f"cannot bind socket {spec.name!r} to {ep}: {e.strerror}"
            ) from None
    for ep in spec.connect:
        sock.connect(ep)


def with_maxmsgsize(
    specs: Sequence[SocketSpec], maxmsgsize: int, which: Callable[[SocketSpec], bool]
) -> list[SocketSpec] | None:
    """``specs`` with ``maxmsgsize`` set on those ``which`` accepts; None if it is negative.

    None (no limit asked for) lets a :class:`~greenzmq.core.service.Service` keep its
    class ``specs``.
    """
    if maxmsgsize < 0:
        return None
    return [dataclasses.replace(s, maxmsgsize=maxmsgsize) if which(s) else s for s in specs]


def describe_greenlet(g: Any) -> str:
    """A short human name for a greenlet: its gevent name, or 'main'/'hub'."""
    if g is None:
        return "nobody"
    if isinstance(g, gevent.Greenlet):
        return f"greenlet {g.name!r}"
    if g.parent is None:
        return "the main greenlet"
    if isinstance(g, gevent.hub.Hub):
        return "the gevent hub"
    return f"greenlet {g!r}"


class Socket(gzmq.Socket):  # type: ignore[type-arg]
    """A ``zmq.green`` socket owned by one greenlet (see module docstring)."""

    # pyzmq maps unknown attributes to socket options: declare ours on the class.
    name: str = "?"
    _owner: Any = None
    _raw: zmq.Socket[bytes] | None = None
    # what SocketBusyError tells an intruder to use instead (set by a mux or outbox)
    busy_hint: str | None = None
    # a core.stats.PeerWatch when the context monitors connections (greenzmq health)
    peer_watch: Any = None

    def claim(self, owner: Any = None) -> None:
        """Make ``owner`` (default: the current greenlet) the only user of this socket.

        It never takes a socket away: if another live greenlet owns it,
        SocketBusyError. The owner passes it on with :meth:`hand_over`.
        """
        target = owner if owner is not None else greenlet.getcurrent()
        cur = self._owner
        if cur is not None and cur is not target and not cur.dead:
            raise self._busy(cur, greenlet.getcurrent(), "claim")
        self._owner = target

    def hand_over(self, to: Any) -> None:
        """Give the socket to greenlet ``to``: only its owner may (or anyone, if unowned)."""
        me = greenlet.getcurrent()
        cur = self._owner
        if cur is not None and cur is not me and cur is not to and not cur.dead:
            raise self._busy(cur, me, "hand over")
        self._owner = to

    def release(self) -> None:
        """Forget the owner: the next greenlet that uses the socket owns it."""
        self._owner = None

    @property
    def owner(self) -> Any:
        """The owning greenlet, or None."""
        return self._owner

    def _busy(self, owner: Any, cur: Any, op: str) -> SocketBusyError:
        hint = self.busy_hint or (
            "One greenlet owns a socket: read it and reply through one mux "
            "(mux.send(name, frames) on Readers/PollerListener), or give a socket "
            "that only sends a greenzmq.Outbox."
        )
        return SocketBusyError(
            f"socket {self.name!r} ({type_name(int(self.type))}) is owned by "
            f"{describe_greenlet(owner)}; {describe_greenlet(cur)} tried to {op}"
            f"{' it' if op in ('claim', 'hand over') else ' on it'}. " + hint
        )

    def check_owner(self, op: str = "use") -> None:
        """Raise SocketBusyError unless the current greenlet owns (or may claim) us."""
        cur = greenlet.getcurrent()
        owner = self._owner
        if owner is cur:
            return
        if owner is None or owner.dead:
            self._owner = cur
            return
        raise self._busy(owner, cur, op)

    @property
    def raw(self) -> zmq.Socket[bytes]:
        """A plain (blocking, non-green) shadow of this socket for NOBLOCK drains."""
        if self._raw is None:
            self._raw = zmq.Socket.shadow(self.underlying)
        return self._raw

    @contextmanager
    def green_watcher_paused(self) -> Iterator[None]:
        """Pause pyzmq's own io watcher on this socket for the ``with`` block.

        For a loop that owns the socket, waits on its FD some other way (a
        :class:`~greenzmq.core.poller.GreenPoller`) and moves data raw: nobody
        waits green on the socket meanwhile, and the watcher would read EVENTS
        on every edge for nothing (a few us per wake-up). The watcher and the
        callback that restarts it are pyzmq's private names (zmq/green/core.py):
        both are looked up before anything is paused, so a pyzmq release that
        renames them only loses this saving (the watcher keeps running), never
        the clean stop.
        """
        watcher: Any = getattr(self, "_state_event", None)
        resume: Any = getattr(self, "_Socket__state_changed", None)
        if not (
            callable(resume)
            and callable(getattr(watcher, "stop", None))
            and callable(getattr(watcher, "start", None))
        ):
            yield
            return
        watcher.stop()
        try:
            yield
        finally:
            # a closed socket's watcher is gone (pyzmq drops it on close)
            current: Any = getattr(self, "_state_event", None)
            if not self.closed and current is watcher:
                watcher.start(resume)

    def send(  # type: ignore[override]  # one signature for pyzmq's overloads
        self, data: Any, flags: int = 0, copy: bool = True, track: bool = False, **kw: Any
    ) -> Any:
        """``zmq.green`` send, for the owner only (SocketBusyError otherwise)."""
        self.check_owner("send")
        return super().send(data, flags, copy=copy, track=track, **kw)

    def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        """``zmq.green`` recv, for the owner only (SocketBusyError otherwise)."""
        self.check_owner("recv")
        return super().recv(flags, copy=copy, track=track)

    def poll(self, timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
        """``zmq.Socket.poll`` for the owner only.

        A poll by another greenlet would consume the edge-triggered wakeup the
        owner is parked on, stalling it until pyzmq's 11.6 s fallback (rule 2).
        """
        self.check_owner("poll")
        return int(super().poll(timeout, flags))

    def close(self, linger: int | None = None) -> None:
        """Close (idempotent); the raw shadow goes with it, and a monitor nobody reads."""
        self._raw = None
        super().close(linger)
        if self.peer_watch is not None:
            self.peer_watch.close()


class Context(gzmq.Context):  # type: ignore[type-arg]
    """A green context whose sockets are owned :class:`Socket` objects.

    Make it inside the process that uses it, never before a fork (rule 7).
    """

    _socket_class = Socket
    #: monitor the connections of connecting sockets (``greenzmq health`` reads them)
    monitor_peers = False
    #: log and count the connection events of sockets whose spec leaves it open
    monitor_events = False

    def build(self, spec: SocketSpec) -> Socket:
        """Create, configure, bind and connect the socket ``spec`` describes.

        On a bind failure the socket is closed and the ZMQError is re-raised
        with the endpoint and socket name in its message.
        """
        kind = spec.zmq_type
        sock: Socket = self.socket(kind)
        sock.name = spec.name
        try:
            sock.setsockopt(zmq.LINGER, spec.effective_linger)
            # A REP socket drops a reply silently when its pipe is at SNDHWM
            # (libzmq's router semantics; ROUTER_MANDATORY on a REP asserts in
            # rep.cpp). One reply per request received keeps an unlimited
            # SNDHWM bounded by the requests in flight, so nothing is dropped.
            sock.setsockopt(zmq.SNDHWM, 0 if kind == zmq.REP else spec.hwm)
            sock.setsockopt(zmq.RCVHWM, spec.hwm)
            if spec.maxmsgsize >= 0:
                sock.setsockopt(zmq.MAXMSGSIZE, spec.maxmsgsize)
            if spec.identity is not None:
                sock.setsockopt(zmq.IDENTITY, spec.identity)
            mandatory = spec.router_mandatory
            if mandatory is None:
                mandatory = kind == zmq.ROUTER
            if mandatory and kind == zmq.ROUTER:
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            for opt, val in spec.options.items():
                sock.setsockopt(opt, val)
            if kind == zmq.SUB:
                for topic in spec.subscribe:
                    sock.setsockopt(zmq.SUBSCRIBE, topic)
            events = self.monitor_events if spec.monitor is None else spec.monitor
            if events or (self.monitor_peers and spec.connect):
                from .monitor import attach_monitor

                # before binding and connecting: an event before the monitor is
                # connected is lost
                attach_monitor(self, sock, spec.connect, events=events)
            try:
                attach_endpoints(sock, spec)
            except zmq.ZMQError as e:
                # libzmq 4.3 sends a monitored socket's bind_failed event before
                # returning, and the send leaves EAGAIN in errno: the event has
                # the real error
                if e.errno == zmq.EAGAIN and sock.peer_watch is not None:
                    raise sock.peer_watch.bind_error(e) from None
                raise
        except BaseException:
            sock.close(0)  # and its monitor
            raise
        return sock

    def build_all(self, specs: Iterable[SocketSpec]) -> dict[str, Socket]:
        """Build every spec; on any failure close what was built and re-raise."""
        built: dict[str, Socket] = {}
        try:
            for spec in specs:
                built[spec.name] = self.build(spec)
        except BaseException:
            for s in built.values():
                s.close(0)
            raise
        return built
