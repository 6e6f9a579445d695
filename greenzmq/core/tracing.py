"""structlog set up once per process, and hop events that trace every message.

Every hop is one event named ``hop``: ``recv`` from a socket, ``put`` into and
``take`` from a queue, ``send``, the broker's ``forward``, and ``drop`` (with
``reason``); the reliable patterns add a queue's ``dispatch`` to a worker and
a client's ``retry``, both with ``attempt``. Fields: ``timestamp``,
``service``, ``pid``, ``socket``, ``sock_type``, ``op``, ``frames``,
``bytes``, ``peer``, ``key`` and ``reply_to`` where a reply is paired with
its request.

``key`` is a digest of the body frames (the frames after the envelope), so the
same message has the same key at every hop in every process without anything
added to the wire. Protocols with frames of their own around the body
(Majordomo) pass the key of the body they parsed (:func:`body_key`).
Sampling is decided from the key too, so a sampled message is sampled in
every process it crosses.

Cost (rule 10): with ``trace_sample=0`` a hop site is one attribute test
(``if tr.on``); ``hop()`` itself is never called. Drops are logged whatever
the sample rate.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import orjson
import structlog

__all__ = [
    "SocketTracer",
    "Tracer",
    "body_key",
    "configure_logging",
    "get_logger",
    "logging_configured",
    "message_key",
    "reopen_log_files",
]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
LOG_FORMATS = ("json", "console")


def level_number(level: str) -> int:
    """``"info"`` -> ``logging.INFO``; ValueError names the bad level."""
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(_LEVELS)})") from None


class _ReopenableFile:
    """A binary append-mode file that USR1 can reopen (for logrotate)."""

    # hops are flushed once per gevent loop turn (_HopWriter): a large buffer
    # turns a busy turn's hundreds of lines into a few write syscalls
    BUFFER = 1 << 16

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._f: IO[bytes] = open(path, "ab", buffering=self.BUFFER)  # noqa: SIM115 - process lifetime

    def write(self, data: bytes) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def reopen(self) -> None:
        with self._lock:
            old, self._f = self._f, open(self.path, "ab", buffering=self.BUFFER)  # noqa: SIM115
            old.close()


_files: list[_ReopenableFile] = []
_state: dict[str, Any] = {"level": logging.INFO, "sample": 1.0, "service": "greenzmq"}


def _flush_log_files() -> None:
    """Flush every log file at exit.

    Hops are flushed on the next turn of the gevent loop, which a short
    program (a client's script) may end before.
    """
    for f in _files:
        try:
            f.flush()
        except (OSError, ValueError):
            pass


def reopen_log_files() -> None:
    """Reopen every log file opened by configure_logging (SIGUSR1)."""
    for f in _files:
        f.reopen()


def _json_renderer(_: Any, __: str, event_dict: dict[str, Any]) -> bytes:
    # BytesLogger adds the newline; default=str keeps odd values (exceptions) loggable
    return orjson.dumps(event_dict, default=str)


def _hub_loop() -> Any:
    """The gevent loop of a hub already running in this thread, else None (never makes one)."""
    hub_local = sys.modules.get("gevent._hub_local")
    hub = hub_local.get_hub_if_exists() if hub_local is not None else None
    return None if hub is None else hub.loop


class _HopWriter:
    """JSON hop lines straight to the log file, flushed once per turn of the gevent loop.

    structlog's BytesLogger flushes (one write syscall) per event; a busy
    broker logs hundreds of hops per wake-up, so hops are buffered and flushed
    by one loop callback, i.e. as soon as the logging greenlet yields. Other
    events still flush at once (and carry buffered hops out with them).
    Without a gevent hub every hop is flushed at once.
    """

    __slots__ = ("_file", "_pending")

    def __init__(self, file: Any) -> None:
        self._file = file
        self._pending = False

    def write(self, line: bytes) -> None:
        self._file.write(line)
        if self._pending:
            return
        loop = _hub_loop()
        if loop is None:
            self._file.flush()
            return
        self._pending = True
        loop.run_callback(self._flush)

    def _flush(self) -> None:
        self._pending = False
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass  # closed or broken pipe: the events after it report nothing either


def configure_logging(
    service: str = "greenzmq",
    *,
    fmt: str | None = None,
    log_file: str | None = None,
    level: str = "info",
    trace_sample: float = 1.0,
    stream: IO[str] | None = None,
) -> None:
    """Configure structlog for this process (call once, after fork).

    ``fmt`` None means console on a TTY, json otherwise. JSON lines are
    rendered by orjson and written as bytes; console output uses structlog's
    ConsoleRenderer.
    """
    if fmt is None:
        target = stream or sys.stderr
        fmt = "console" if (log_file is None and target.isatty()) else "json"
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (json or console)")
    if not 0.0 <= trace_sample <= 1.0:
        raise ValueError(f"trace sample {trace_sample!r} is not between 0 and 1")
    lvl = level_number(level)
    _state.update(level=lvl, sample=trace_sample, service=service)
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt=None if fmt == "json" else "iso", utc=True),
    ]
    factory: Any
    _state["hops"] = None
    if fmt == "json":
        processors.append(_json_renderer)
        out_file: Any
        if log_file:
            out_file = _ReopenableFile(log_file)
            if not _files:
                atexit.register(_flush_log_files)
            _files.append(out_file)
        else:
            out_file = (stream or sys.stderr).buffer  # type: ignore[union-attr]
        factory = structlog.BytesLoggerFactory(file=out_file)
        _state["hops"] = _HopWriter(out_file)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=log_file is None))
        out: Any = stream or sys.stderr
        if log_file:
            out = open(log_file, "a", buffering=1)  # noqa: SIM115 - process lifetime
        factory = structlog.PrintLoggerFactory(file=out)
    _state["processors"] = processors
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def logging_configured() -> bool:
    """Whether :func:`configure_logging` ran in this process.

    A library object that traces on its own (a client) traces only then: in a
    program that set up no logging, structlog's default would print every
    hop to stdout.
    """
    return "processors" in _state


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``service`` (the process's, unless given) and ``pid`` bound."""
    return structlog.get_logger().bind(
        **{"service": _state["service"], "pid": os.getpid(), **bound}
    )


def _envelope_end(frames: Sequence[bytes]) -> int:
    """Index of the first body frame: just after the first empty frame, else 0."""
    for i, f in enumerate(frames):
        if not f:
            return i + 1
    return 0


def message_key(frames: Sequence[bytes], *, routed: bool = False) -> str:
    """The hop key: blake2b-64 of the body frames (after the envelope), hex.

    ``routed`` says frame 0 is a routing id added by a ROUTER socket, so it is
    not part of the body even when no empty delimiter follows it.
    """
    start = _envelope_end(frames)
    if start == 0 and routed:
        start = 1
    if start == len(frames) - 1:  # one body frame, the usual case: one call
        return hashlib.blake2b(frames[start], digest_size=8).hexdigest()
    h = hashlib.blake2b(digest_size=8)
    for f in frames[start:]:
        h.update(f)
    return h.hexdigest()


def body_key(body: Sequence[bytes]) -> str:
    """The hop key of a message whose body (application frames, no envelope) is ``body``.

    The same digest as :func:`message_key` of the whole message, for protocols
    whose frames before the body are not one envelope (Majordomo: a header, a
    command, a service name): each hop passes the body it parsed, so a request
    has one key at the client, the broker and the worker. Every frame counts,
    empty ones too.
    """
    if len(body) == 1:
        return hashlib.blake2b(body[0], digest_size=8).hexdigest()
    h = hashlib.blake2b(digest_size=8)
    for f in body:
        h.update(f)
    return h.hexdigest()


class _DropWindow:
    """One (socket, reason)'s drops in the current window: logged, and held back."""

    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class Tracer:
    """Hop events for one service: which hops are on, and a logger per socket.

    Drops are logged one by one up to ``drop_burst`` per socket and reason in
    any ``drop_window`` seconds; past that they are counted, and one
    ``drops_suppressed`` warning gives the count when the window ends (at the
    next such drop, or at :meth:`flush_drops`, which the service calls as it
    closes). A hostile or broken peer costs the log a few lines a second, not
    one line per message; the stats counters still count every drop.
    """

    drop_burst = 20
    drop_window = 1.0

    def __init__(self, service: str | None = None, sample: float | None = None) -> None:
        self.service = service or _state["service"]
        self.sample = _state["sample"] if sample is None else sample
        # hops are INFO events: a level above INFO switches them off entirely
        self.on = self.sample > 0 and _state["level"] <= logging.INFO
        self._threshold = int(self.sample * 0xFFFFFFFF)
        # its own name: several services in one process (tests, an embedding
        # program) each log their hops under theirs
        self.log = get_logger(service=self.service)
        self._drops: dict[tuple[str, str], _DropWindow] = {}

    def drop_allowed(self, socket: str, reason: str) -> bool:
        """Whether to log this drop now (see the class docstring); counts it if not."""
        now = time.monotonic()
        w = self._drops.get((socket, reason))
        if w is None:
            w = self._drops[(socket, reason)] = _DropWindow(now)
        elif now - w.start >= self.drop_window:
            self._report(socket, reason, w, now)
            w.start, w.logged, w.suppressed = now, 0, 0
        if w.logged < self.drop_burst:
            w.logged += 1
            return True
        w.suppressed += 1
        return False

    def _report(self, socket: str, reason: str, w: _DropWindow, now: float) -> None:
        if w.suppressed:
            self.log.warning(
                "drops_suppressed",
                socket=socket,
                reason=reason,
                count=w.suppressed,
                logged=w.logged,
                seconds=round(now - w.start, 3),
            )

    def flush_drops(self) -> None:
        """Log what is held back (the service calls it as it closes)."""
        now = time.monotonic()
        for (socket, reason), w in self._drops.items():
            self._report(socket, reason, w, now)
        self._drops.clear()

    def sampled(self, key: str) -> bool:
        """Same decision for the same key in every process."""
        return self.sample >= 1.0 or int(key[:8], 16) <= self._threshold

    def for_socket(self, name: str, sock_type: str) -> SocketTracer:
        """A tracer with the socket's name and type bound."""
        return SocketTracer(self, name, sock_type)


_NO_FIELDS: dict[str, Any] = {}  # never mutated: _fields copies it


class SocketTracer:
    """Hop events for one socket. Call sites test ``on`` before ``hop``."""

    __slots__ = ("_base", "_log", "_name", "_parent", "_routed", "_writer", "on")

    def __init__(self, parent: Tracer, name: str, sock_type: str) -> None:
        self._parent = parent
        self._name = name
        self.on = parent.on
        self._routed = sock_type == "ROUTER"
        self._log = parent.log.bind(socket=name, sock_type=sock_type)
        # JSON output: hops skip structlog's processor chain (same fields, one
        # orjson call, buffered writes), but only while our configuration is
        # the one in force (a test may be capturing logs).
        writer = _state.get("hops")
        if writer is not None and structlog.get_config()["processors"] is _state.get("processors"):
            self._writer: _HopWriter | None = writer
            self._base = {
                **structlog.get_context(self._log),
                "event": "hop",
                "level": "info",
            }
        else:
            self._writer = None
            self._base = {}

    def key(self, frames: Sequence[bytes]) -> str:
        """The hop key of ``frames`` on this socket."""
        return message_key(frames, routed=self._routed)

    def _fields(
        self,
        op: str,
        frames: Sequence[bytes],
        key: str | None,
        base: dict[str, Any] = _NO_FIELDS,
        reply_to: str | None = None,
    ) -> dict[str, Any]:
        """A hop's fields, in one new dict that starts with ``base``."""
        fields: dict[str, Any] = {
            **base,
            "op": op,
            "frames": len(frames),
            "bytes": sum(map(len, frames)),
            "key": key,
        }
        if frames and (self._routed or (len(frames) > 1 and not frames[1])):
            fields["peer"] = bytes(frames[0]).hex()
        if reply_to is not None:
            fields["reply_to"] = reply_to
        return fields

    def hop(
        self,
        op: str,
        frames: Sequence[bytes],
        *,
        reply_to: str | None = None,
        key: str | None = None,
        **extra: Any,
    ) -> str | None:
        """Log one hop if its key is sampled; return the key (None if not sampled)."""
        if key is None:
            key = self.key(frames)
        parent = self._parent
        if parent.sample < 1.0 and not parent.sampled(key):
            return None
        writer = self._writer
        if writer is None:
            self._log.info("hop", **self._fields(op, frames, key, reply_to=reply_to), **extra)
            return key
        # the JSON fast path: the bound context and the fields in one dict
        ev = self._fields(op, frames, key, self._base, reply_to)
        ev["timestamp"] = time.time()
        if extra:
            ev.update(extra)
        writer.write(orjson.dumps(ev, default=str, option=orjson.OPT_APPEND_NEWLINE))
        return key

    def drop(
        self, frames: Sequence[bytes], reason: str, *, key: str | None = None, **extra: Any
    ) -> None:
        """Log a dropped message with its reason, whatever the sample rate.

        ``key``: the message's hop key, if not the one of ``frames`` (a body
        parsed out of protocol frames, :func:`body_key`). Rate-limited per
        socket and reason (:class:`Tracer`): past the burst a drop is counted
        into one ``drops_suppressed`` line instead.
        """
        if not self._parent.drop_allowed(self._name, reason):
            return
        if key is None:
            key = self.key(frames)
        self._log.warning("hop", **self._fields("drop", frames, key), reason=reason, **extra)
