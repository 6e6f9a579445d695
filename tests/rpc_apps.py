"""RPC services for tests/test_rpc.py (launcher processes import them from the repo root)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import gevent

from greenzmq import rpc


@rpc.service
class Calculator:
    """Arithmetic, remotely."""

    def __init__(self) -> None:
        self.calls = 0
        self.produced = 0  # items made by count(): the backpressure test reads it

    def add(self, a: Any, b: Any = 0) -> Any:
        """a + b."""
        self.calls += 1
        return a + b

    def div(self, a: float, b: float) -> float:
        """a / b."""
        self.calls += 1
        return a / b

    def echo(self, value: Any) -> Any:
        """The value itself (round trips)."""
        return value

    def count(
        self, n: int | None = None, fail_at: int | None = None, delay: float = 0.0
    ) -> Iterator[int]:
        """0, 1, 2... (n of them; None: without end), raising ValueError at ``fail_at``;
        ``delay`` seconds (green) before each item."""
        i = 0
        while n is None or i < n:
            if i == fail_at:
                raise ValueError(f"no {i}")
            if delay:
                gevent.sleep(delay)
            self.produced += 1
            yield i
            i += 1

    def ticks(self, delays: list[float]) -> Iterator[int]:
        """0, 1, 2..., each after its delay (seconds, green)."""
        for i, d in enumerate(delays):
            gevent.sleep(d)
            yield i

    def nap(self, seconds: float) -> float:
        """Sleep green ``seconds``, return them."""
        self.calls += 1
        gevent.sleep(seconds)
        return seconds

    def pid(self) -> int:
        """The serving process's id."""
        return os.getpid()

    def opaque(self) -> object:
        """A value no codec carries."""
        return object()

    def _private(self) -> None:
        """Not exposed."""


@rpc.service(service="Calc", window=8, offload="thread", pool=2)
class Tuned:
    """A class marked with options."""

    def __init__(self, base: int = 0) -> None:
        self.base = base

    def add(self, a: int) -> int:
        """base + a."""
        return self.base + a
