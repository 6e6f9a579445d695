"""What the master and a worker say to each other, and what a worker's exit code means.

One module for both sides, so :mod:`greenzmq.launcher.arbiter` (the master)
and :mod:`greenzmq.launcher.workerproc` (the worker) cannot drift apart.
Stdlib only: the master imports it (rule 7).

**The channel.** Each worker holds one end of a socketpair (the first
worker, which the master starts with exec, learns its descriptor from
:func:`encode_request`). The worker writes newline-framed UTF-8 lines, a kind
and, for some kinds, one space and an argument; the master writes nothing.
Each side sees EOF when the other dies.

- ``beat``: every :func:`heartbeat_interval` seconds, from a greenlet, so a
  blocked hub stops the beats. The master counts any line as a beat.
- ``checked {json}``: the first worker only. The app checked, its sockets
  are bound and its setup ran; the JSON describes the service. The master
  may fork the other workers now.
- ``ready``: the service serves.
- ``fail {json}``: booting failed, a :class:`Failure`: the code and a
  one-line message for the user, or the code and a traceback. The master
  halts with it.
- ``stats {json}``: with ``--metrics``, every :data:`STATS_INTERVAL` seconds
  and once more before a deliberate exit: the worker's
  :meth:`greenzmq.core.stats.Stats.snapshot` plus ``hub_blocked``; the master
  keeps the latest one per worker (:mod:`greenzmq.launcher.metrics`).
- ``exit REASON``: before a deliberate exit 0. ``recycle``: max-requests,
  the master starts a replacement. ``done STOP_REASON``: the app finished
  (the kill switch, its ``run`` returned), the whole launcher stops.

**Exit codes** (a worker's, and the command's): :data:`EXIT_OK`,
:data:`EXIT_FAILED`, :data:`EXIT_CONFIG`, :data:`EXIT_BOOT`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, TypedDict

__all__ = [
    "BEAT",
    "CHECKED",
    "EXIT",
    "EXIT_BOOT",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "FAIL",
    "READY",
    "RECYCLE",
    "STATS",
    "STATS_INTERVAL",
    "Failure",
    "LineReader",
    "Message",
    "beat",
    "checked",
    "decode_request",
    "done",
    "encode_request",
    "fail",
    "heartbeat_interval",
    "is_done",
    "is_recycle",
    "parse",
    "ready",
    "recycle",
    "stats",
]

EXIT_OK: Final = 0
"""A clean stop: signalled, recycled, or the app finished."""
EXIT_FAILED: Final = 1
"""A runtime failure: the app's own code raised (its traceback is printed), a
socket failed after booting, or the master's heartbeat timeout aborted the worker."""
EXIT_CONFIG: Final = 2
"""What the user asked for is wrong: the spec, an endpoint, a setting, a port in
use. One ``greenzmq: error:`` line; the master halts instead of respawning."""
EXIT_BOOT: Final = 3
"""The worker failed to boot for a reason nobody expected (gunicorn's
``WORKER_BOOT_ERROR``): the master halts with the traceback."""

BEAT: Final = "beat"
CHECKED: Final = "checked"
READY: Final = "ready"
FAIL: Final = "fail"
EXIT: Final = "exit"
STATS: Final = "stats"

STATS_INTERVAL: Final = 0.5
"""Seconds between a worker's ``stats`` lines (a scrape sees counts this old at most)."""

RECYCLE: Final = "recycle"
"""``exit`` reason: max-requests reached."""
DONE: Final = "done"
"""``exit`` reason prefix: the app finished; the service's stop reason follows."""


class Failure(TypedDict, total=False):
    """The argument of ``fail``: an exit code and a message or a traceback."""

    code: int
    message: str
    traceback: str


def heartbeat_interval(timeout: float) -> float:
    """Seconds between beats: a quarter of the timeout, within [0.05, 1]."""
    if timeout <= 0:
        return 1.0
    return min(1.0, max(0.05, timeout / 4))


# -- the worker's side: one encoded line per call ----------------------------
def _line(kind: str, arg: str | None = None) -> bytes:
    return (kind if arg is None else f"{kind} {arg}").encode() + b"\n"


def beat() -> bytes:
    """``beat``: the hub runs."""
    return _line(BEAT)


def checked(description: dict[str, Any]) -> bytes:
    """``checked {json}``: the first worker checked the app and bound its sockets."""
    return _line(CHECKED, json.dumps(description))


def ready() -> bytes:
    """``ready``: the service serves."""
    return _line(READY)


def fail(failure: Failure) -> bytes:
    """``fail {json}``: booting failed; the master halts with this."""
    return _line(FAIL, json.dumps(failure))


def stats(snapshot_json: bytes) -> bytes:
    """``stats {json}``: the worker's counters, already encoded (one line: no newline in it)."""
    return STATS.encode() + b" " + snapshot_json + b"\n"


def recycle() -> bytes:
    """``exit recycle``: max-requests reached, a replacement is welcome."""
    return _line(EXIT, RECYCLE)


def done(stop_reason: str | None) -> bytes:
    """``exit done STOP_REASON``: the app finished; the whole launcher stops."""
    return _line(EXIT, f"{DONE} {stop_reason}")


# -- the master's side ---------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """One parsed line: its kind and its argument.

    ``arg`` is a dict for ``checked`` and ``stats``, a :class:`Failure` for ``fail``, the
    reason string for ``exit``, and None for ``beat`` and ``ready``.
    """

    kind: str
    arg: Any = None


def parse(line: str) -> Message | None:
    """The message of one line (without its newline); None for a line that is none."""
    if line in (BEAT, READY):
        return Message(line)
    kind, sep, rest = line.partition(" ")
    if not sep:
        return None
    if kind == FAIL:
        try:
            return Message(FAIL, json.loads(rest))
        except ValueError:  # still the worker's own words: show them
            return Message(FAIL, {"message": rest})
    if kind == CHECKED:
        # only our own first worker sends it: bad JSON is a bug, not input to forgive
        return Message(CHECKED, json.loads(rest))
    if kind == EXIT:
        return Message(EXIT, rest)
    if kind == STATS:
        try:
            return Message(STATS, json.loads(rest))
        except ValueError:
            return None  # a counter snapshot is not worth a crash: the next one comes soon
    return None


class LineReader:
    """Reassembles lines from the channel's reads (a line may span two reads)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> Iterator[Message]:
        """The messages that ``data`` completes, in order."""
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            msg = parse(raw.decode(errors="replace"))
            if msg is not None:
                yield msg


def is_recycle(reason: str | None) -> bool:
    """The ``exit`` reason says max-requests."""
    return reason == RECYCLE


def is_done(reason: str | None) -> bool:
    """The ``exit`` reason says the app finished."""
    return (reason or "").startswith(DONE)


# -- the first worker's command line ---------------------------------------------
def encode_request(argv: list[str], wid: int, fd: int) -> str:
    """The argument of ``python -m greenzmq.launcher.workerproc``.

    The command line (the worker resolves the settings again from it), the
    worker index and the inherited descriptor of its end of the channel.
    """
    return json.dumps({"argv": argv, "wid": wid, "fd": fd})


def decode_request(request: str) -> tuple[list[str], int, int]:
    """``(argv, wid, fd)`` from :func:`encode_request`'s string."""
    req = json.loads(request)
    return list(req["argv"]), int(req["wid"]), int(req["fd"])
