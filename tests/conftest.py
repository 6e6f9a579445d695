"""Fixtures: free endpoints, green contexts that fail on leaked sockets,
service processes that are always stopped, and a per-test deadline."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import ServiceProcess, free_endpoint

TEST_DEADLINE = 120  # seconds: a hung test fails instead of hanging the suite


@pytest.fixture(autouse=True)
def _deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail (with a traceback of where it hung) any test that runs over its deadline."""
    marker = request.node.get_closest_marker("deadline")
    seconds = int(marker.args[0]) if marker else TEST_DEADLINE

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test ran over its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deadline(seconds): per-test deadline")
    config.addinivalue_line(
        "markers",
        "slow: a scenario of seconds (processes, idle windows); tox runs it on py311 only",
    )


# Whole-system scenarios: many processes, seconds each. tox runs them on one
# interpreter (py311) and the rest of the suite on every interpreter, which
# keeps all tox environments together under ten minutes on 2 cores.
SLOW_MODULES = frozenset(
    {"test_auth", "test_bench", "test_demo", "test_hostile", "test_launcher", "test_mdp",
     "test_packaging", "test_ppp", "test_readme", "test_stats"}
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def endpoint() -> Callable[[], str]:
    """A factory of free ``tcp://127.0.0.1:PORT`` endpoints."""
    return free_endpoint


@pytest.fixture
def ctx() -> Iterator[Any]:
    """A greenzmq Context; the test fails if it leaves a socket open."""
    from greenzmq.core.sockets import Context

    c = Context()
    yield c
    leaked = [s for s in list(c._sockets) if not s.closed]
    for s in leaked:
        s.close(linger=0)
    c.term()
    assert not leaked, f"test left {len(leaked)} socket(s) open"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``greenzmq ARGS`` processes; every one is killed at teardown."""
    procs: list[ServiceProcess] = []
    counter = itertools.count()

    def start(*args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        p = ServiceProcess(args, tmp_path / f"svc{next(counter)}.log", env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def logs(tmp_path: Path) -> Callable[..., Callable[..., list[dict[str, Any]]]]:
    """Configure this process's structlog to JSON lines in a tmp file.

    ``logs(trace_sample=1.0, level="info")`` configures and returns
    ``events(event=None, **match)``, which reads what was logged so far.
    In-process services then log hops to a file instead of the terminal.
    """
    from greenzmq.core.tracing import configure_logging

    from .helpers import read_events

    counter = itertools.count()

    def configure(
        trace_sample: float = 1.0, level: str = "info"
    ) -> Callable[..., list[dict[str, Any]]]:
        path = tmp_path / f"inproc{next(counter)}.log"
        configure_logging(
            "test", fmt="json", log_file=str(path), level=level, trace_sample=trace_sample
        )

        def events(event: str | None = None, **match: Any) -> list[dict[str, Any]]:
            return [
                e
                for e in read_events(path)
                if (event is None or e.get("event") == event)
                and all(e.get(k) == v for k, v in match.items())
            ]

        return events

    return configure
