"""The service lifecycle: start, run, graceful stop, in one process.

A :class:`Service` declares its sockets (:class:`~greenzmq.core.sockets.SocketSpec`)
and implements :meth:`Service.run`. :meth:`Service.serve` makes the context
and sockets (after any fork), watches the kill switch and SIGTERM/SIGINT, runs
``run`` in its own greenlet, and shuts down in order: stop taking work
(``on_stop``), let ``run`` finish what is in flight (up to
``graceful_timeout``), kill the remaining greenlets through their group, close
the sockets with their linger, then ``term()`` the context (rule 6).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.pool
import zmq

from .endpoints import EndpointMap
from .sockets import Context, Socket, SocketSpec, apply_endpoints
from .stats import Stats, control_endpoint
from .tracing import Tracer, get_logger

__all__ = ["KILL_ENDPOINT", "CallableService", "Service", "kill_spec"]

KILL_ENDPOINT = "tcp://127.0.0.1:5558"
KILL = "kill"


def kill_spec(endpoint: str = KILL_ENDPOINT) -> SocketSpec:
    """The kill switch subscription every tutorial service listens on."""
    return SocketSpec(KILL, "SUB", connect=(endpoint,))


class Service:
    """Base class for a greenzmq service; subclass and implement :meth:`run`.

    Class attributes: ``name`` (logs, process title), ``specs`` (the sockets),
    ``graceful_timeout`` (seconds ``run`` gets to finish after a stop),
    ``monitor`` (log and count every socket's connection events, for the
    sockets whose spec does not say: :mod:`greenzmq.core.monitor`; off by
    default, the launcher's ``--monitor`` turns it on).

    A socket named ``kill`` (SUB) is the kill switch: the framework owns it
    and any message on it stops the service. Inside ``run``, ``self.socks``
    maps names to the other sockets, ``self.stopping`` is set once a stop is
    asked for, ``self.spawn`` starts greenlets the service owns.
    """

    name: str = "service"
    specs: Sequence[SocketSpec] = ()
    graceful_timeout: float = 10.0
    monitor: bool = False

    def __init__(
        self,
        *,
        name: str | None = None,
        specs: Sequence[SocketSpec] | None = None,
        monitor: bool | None = None,
    ):
        if name is not None:
            self.name = name
        if specs is not None:
            self.specs = tuple(specs)
        if monitor is not None:
            self.monitor = monitor
        self.stopping = gevent.event.Event()
        self.stop_reason: str | None = None
        self.group = gevent.pool.Group()
        self.socks: dict[str, Socket] = {}
        self.ctx: Context | None = None
        self.tracer: Tracer | None = None
        self.stats = Stats(self.name)  # per-socket counters; GREENZMQ_STATS serves them
        self.log: Any = None
        self._failures: list[tuple[str, BaseException]] = []
        self._main: gevent.Greenlet[..., Any] | None = None
        # launcher hooks: called once serving (after setup) and per handled request
        self.requests = 0
        self._ready_callbacks: list[Callable[[Service], Any]] = []
        self._request_callbacks: list[Callable[[Service], Any]] = []
        self._before_bind_callbacks: list[Callable[[Service], Any]] = []

    # -- to override ------------------------------------------------------
    def setup(self) -> None:
        """Called after the sockets exist, before ``run``."""

    def run(self) -> None:
        """The service's main loop: return when ``self.stopping`` is set."""
        raise NotImplementedError

    def on_stop(self) -> None:
        """Called once when a stop is asked for: wake ``run`` (stop a mux, ...)."""

    # -- for run() --------------------------------------------------------
    def spawn(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None
    ) -> gevent.Greenlet[..., Any]:
        """Start a greenlet the service owns; its failure stops the service with exit 1."""
        g = gevent.Greenlet(fn, *args)
        if name:
            g.name = name
        g.link_exception(self._greenlet_failed)
        self.group.add(g)
        g.start()
        return g

    def request_done(self) -> None:
        """Count one handled request (services call it; the launcher's max-requests uses it)."""
        self.requests += 1
        for fn in self._request_callbacks:
            fn(self)

    def add_request_callback(self, fn: Callable[[Service], Any]) -> None:
        """Call ``fn(service)`` after each :meth:`request_done`."""
        self._request_callbacks.append(fn)

    def add_before_bind_callback(self, fn: Callable[[Service], Any]) -> None:
        """Call ``fn(service)`` in :meth:`open` once the context exists, before any socket is made.

        ``self.ctx`` and ``self.log`` are set and no socket of ``specs`` exists
        yet: the place for what must be ready before a socket binds or
        connects (:func:`greenzmq.core.auth.secure` starts its ZAP handler
        here). A socket ``fn`` makes goes in ``self.socks``: it is closed with
        the others; greenlets go through :meth:`spawn`.
        """
        self._before_bind_callbacks.append(fn)

    def add_ready_callback(self, fn: Callable[[Service], Any]) -> None:
        """Call ``fn(service)`` once the sockets exist and ``setup`` returned."""
        self._ready_callbacks.append(fn)

    def kill_run(self) -> bool:
        """Kill the greenlet running :meth:`run` now, without waiting for it; True if it did.

        For an ``on_stop`` whose ``run`` holds no work worth finishing (parked
        in a recv, pausing between sends): ``GreenletExit`` is raised where
        ``run`` waits, so its ``finally`` blocks run, and the exit code stays
        0. Nothing happens before ``run`` started, after it ended, or when
        called from ``run``'s own greenlet (a stop asked inside ``run``, which
        returns by itself).
        """
        main = self._main
        if main is None or main.dead or main is gevent.getcurrent():
            return False
        main.kill(block=False)
        return True

    def stop(self, reason: str = "requested") -> None:
        """Ask the service to stop (idempotent; any greenlet, signal handlers too)."""
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        self.stopping.set()
        if self.log is not None:
            self.log.info("service.stopping", reason=reason)
        self.on_stop()

    @property
    def failed(self) -> bool:
        """True if ``run`` or a spawned greenlet raised."""
        return bool(self._failures)

    # -- lifecycle --------------------------------------------------------
    def _greenlet_failed(self, g: gevent.Greenlet[..., Any]) -> None:
        exc = g.exception
        assert exc is not None
        self._failures.append((g.name, exc))
        if self.log is not None:
            self.log.error(
                "service.greenlet_failed",
                greenlet=g.name,
                error=repr(exc),
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        self.stop(f"greenlet {g.name!r} failed")

    def _watch_kill(self, sock: Socket) -> None:
        frames = sock.recv_multipart()
        tr = self.tracer
        if tr is not None and tr.on:
            tr.for_socket(KILL, "SUB").hop("recv", frames)
        self.stop("kill switch")

    def open(self, endpoints: EndpointMap | None = None) -> None:
        """Make the context, run the before-bind callbacks, make the sockets (endpoints applied)."""
        specs = apply_endpoints(self.specs, endpoints or {})
        self.log = get_logger(service=self.name)
        self.tracer = Tracer(self.name)
        self.ctx = Context()
        self.socks = {}
        try:
            # a served stats endpoint reports live peers: monitor before connecting
            self.ctx.monitor_peers = control_endpoint(self.name) is not None
            self.ctx.monitor_events = bool(self.monitor)
            for fn in self._before_bind_callbacks:
                fn(self)
            self.socks.update(self.ctx.build_all(specs))
        except BaseException:
            # what the callbacks started (build_all closed its own sockets)
            self.group.kill(block=False)
            for sock in self.socks.values():
                sock.close(linger=0)
            self.socks = {}
            self.ctx.term()
            self.ctx = None
            raise
        self._linger = {s.name: s.effective_linger for s in specs}
        # Reply sockets (REP, ROUTER) on the default linger get the graceful
        # timeout when they close: their queued replies are accepted work, and
        # a backed-up peer may need more than a second to take them.
        self._graceful_linger = {
            s.name for s in specs if s.linger is None and s.zmq_type in (zmq.REP, zmq.ROUTER)
        }

    def close(self) -> None:
        """Kill owned greenlets, close sockets with their linger, term the context."""
        self.group.kill(block=True, timeout=self.graceful_timeout)
        if self.tracer is not None:
            self.tracer.flush_drops()  # the drops counted but not logged yet
        grace = int(self.graceful_timeout * 1000)
        for name, sock in self.socks.items():
            linger = self._linger.get(name, 0)
            sock.close(linger=max(linger, grace) if name in self._graceful_linger else linger)
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            # a socket run() made itself and left open would make term() wait
            # forever: close it without linger (here: green sockets stop their
            # io watchers, which only the hub's thread may touch)
            for sock in list(ctx._sockets):
                if not sock.closed:
                    sock.close(linger=0)
            # term() waits for the lingering sockets to deliver: in a thread, so
            # the hub keeps serving signals and the launcher's heartbeat meanwhile
            gevent.get_hub().threadpool.apply(ctx.term)

    def serve(
        self,
        endpoints: EndpointMap | None = None,
        *,
        install_signals: bool = True,
    ) -> int:
        """Run the whole lifecycle; return the exit code (0 clean, 1 failed)."""
        self.open(endpoints)
        handlers = []
        try:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    handlers.append(gevent.signal_handler(sig, self.stop, signal.Signals(sig).name))
            kill = self.socks.get(KILL)
            if kill is not None and kill.type == zmq.SUB:
                self.spawn(self._watch_kill, kill, name="kill-switch")
            self.stats.start_control(self)
            self.log.info("service.start", sockets={n: s.name for n, s in self.socks.items()})
            self.setup()
            for fn in self._ready_callbacks:
                fn(self)
            self._main = main = self.spawn(self.run, name="main")
            gevent.wait([main, self.stopping], count=1)  # type: ignore[type-var]
            if not main.dead:
                # asked to stop: run() gets graceful_timeout to finish in-flight work
                main.join(self.graceful_timeout)
                if not main.dead:
                    self.log.warning("service.graceful_timeout", seconds=self.graceful_timeout)
            if main.dead and main.successful():
                self.stop("run returned")
        finally:
            for h in handlers:
                h.cancel()
            self.close()
        code = 1 if self._failures else 0
        self.log.info("service.exit", code=code, reason=self.stop_reason)
        return code


class CallableService(Service):
    """A plain callable run as a service: it runs until asked to stop.

    Stopping kills its greenlet (GreenletExit runs its ``finally`` blocks).
    """

    def __init__(self, fn: Callable[[], Any], name: str | None = None) -> None:
        super().__init__(name=name or getattr(fn, "__name__", "app"))
        self.fn = fn
        # set when fn returned a Service: the app spec named a factory, a usage error
        self.refused: Exception | None = None

    def run(self) -> None:
        """Call the callable; one that returns a Service was a factory: a failure, not exit 0.

        (A factory with a Service return annotation is refused earlier, by
        :func:`greenzmq.launcher.appspec.load_app`, before anything runs.)
        """
        result = self.fn()
        if isinstance(result, Service) or (
            isinstance(result, type) and issubclass(result, Service)
        ):
            from ..errors import AppImportError

            where = f"{getattr(self.fn, '__module__', '?')}:{self.name}"
            self.refused = AppImportError(
                f"{where!r} is a factory: it returned a Service; call it: '{where}()'"
            )
            # a failure (exit 1; the launcher makes it 2), without gevent's traceback
            self._failures.append(("main", self.refused))
            if self.log is not None:
                self.log.error("service.refused", error=str(self.refused))

    def on_stop(self) -> None:
        """Kill the callable's greenlet, unless it is the one asking."""
        self.kill_run()
