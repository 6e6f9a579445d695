"""Handlers and workers for the offload tests (``greenzmq tests.offload_apps:NAME(...)``).

The handlers are module-level functions (and ``functools.partial`` of them):
``offload="process"`` pickles them by reference and imports this module in
each pool process.
"""

from __future__ import annotations

import functools
import os
import time

from greenzmq.patterns.mdp import MDPWorkerService
from greenzmq.patterns.ppp import PPPWorkerService


def spin(rounds: int) -> int:
    """Pure-Python CPU work that holds the GIL throughout: ``rounds`` loop turns."""
    x = 0
    for i in range(rounds):
        x = (x + i * i) % 1000003
    return x


def burn(seconds: float, record: str | None, body: list[bytes]) -> list[bytes]:
    """``seconds`` of this thread's CPU time in pure Python, then ``done BODY``.

    A fixed amount of work whatever the machine's load (the wall time grows
    with the load, the CPU time does not). Each run is appended to
    ``record`` as ``BODY PID START END`` (wall clock), so a test counts
    executions per request (duplicates) and sees which ran at the same time.
    """
    t0, cpu0 = time.time(), time.thread_time()
    while time.thread_time() - cpu0 < seconds:
        spin(20000)
    if record:
        with open(record, "a") as f:  # one short O_APPEND write per run
            f.write(f"{body[0].decode()} {os.getpid()} {t0:.6f} {time.time():.6f}\n")
    return [b"done " + body[0]]


def burn_for(seconds: float, body: list[bytes]) -> list[bytes]:
    """Pure-Python CPU work for ``seconds`` of wall time (the GIL held between switches)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        spin(2000)
    return [b"burnt " + body[0]]


def trouble(body: list[bytes]) -> list[bytes]:
    """``boom``: raise; ``crash``: the process dies on the spot; anything else: echoed."""
    if body[0] == b"boom":
        raise ZeroDivisionError("boom")
    if body[0] == b"crash":
        os._exit(7)
    return [b"ok " + body[0]]


def ppp(
    offload: str | None = "process",
    pool: int = 2,
    seconds: float = 3.5,
    record: str | None = None,
    heartbeat: float = 1.0,
) -> PPPWorkerService:
    """A PPP worker whose handler is :func:`burn` (``seconds`` of CPU, recorded in ``record``)."""
    return PPPWorkerService(
        functools.partial(burn, seconds, record),
        heartbeat=heartbeat,
        reconnect=0.2,
        offload=offload,
        pool=pool,
    )


def mdp(
    service: str = "burn",
    offload: str | None = "thread",
    pool: int = 1,
    seconds: float = 1.0,
    record: str | None = None,
    heartbeat: float = 1.0,
) -> MDPWorkerService:
    """An MDP/0.2 worker for ``service`` whose handler is :func:`burn`."""
    return MDPWorkerService(
        service,
        functools.partial(burn, seconds, record),
        heartbeat=heartbeat,
        reconnect=0.2,
        offload=offload,
        pool=pool,
    )
