"""The kill switch started by hand, with no arguments, stops every subscribed service (issue 8.5).

Real ``greenzmq`` processes on free ports: a broker and four workers whose
kill endpoint is the switch's, then ``greenzmq services.killswitch:app``.
Their subscriptions reach the switch one by one (each SUB reconnects on its
own timer), so a switch that publishes once, at its first subscriber, stops
one service of five.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .helpers import ServiceProcess, wait_for

pytestmark = pytest.mark.slow

SERVICES = ("services.broker:app", *["services.worker:app"] * 4)


def _start_targets(
    service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
) -> tuple[list[ServiceProcess], str]:
    kill, fe, be = endpoint(), endpoint(), endpoint()
    broker = service(
        SERVICES[0], "--endpoint", f"frontend={fe}", "--endpoint", f"backend={be}",
        "--endpoint", f"kill={kill}",
    )  # fmt: skip
    workers = [
        service(spec, "--endpoint", f"backend={be}", "--endpoint", f"kill={kill}")
        for spec in SERVICES[1:]
    ]
    targets = [broker, *workers]
    for p in targets:
        p.wait_started()
    return targets, kill


@pytest.mark.deadline(90)
@pytest.mark.parametrize("run", range(5))
def test_no_argument_switch_stops_all_five(
    run: int, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
) -> None:
    """``greenzmq services.killswitch:app``: broker and 4 workers all exit 0, by the switch."""
    targets, kill = _start_targets(service, endpoint)
    ks = service("services.killswitch:app", "--endpoint", f"kill={kill}")
    assert ks.wait(30) == 0, ks.output()
    deadline = time.monotonic() + 10
    for p in targets:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except AssertionError:
            pass
    stopped = [p for p in targets if p.proc.poll() is not None]
    assert len(stopped) == len(targets), f"stopped {len(stopped)} of {len(targets)}"
    for p in targets:
        assert p.proc.returncode == 0, p.output()
        assert p.wait_event("service.exit")["reason"] == "kill switch"
    sent = ks.wait_event("killswitch.sent")
    assert sent["subscribers"] >= len(targets)


@pytest.mark.deadline(60)
def test_no_subscriber_exits_zero_after_wait(
    service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
) -> None:
    """Nobody subscribed: the switch waits ``wait`` s for one, says so, and exits 0."""
    t0 = time.monotonic()
    ks = service("services.killswitch:app(wait=1.0)", "--endpoint", f"kill={endpoint()}")
    assert ks.wait(30) == 0, ks.output()
    assert time.monotonic() - t0 >= 1.0
    ev = ks.wait_event("killswitch.nobody")
    assert ev["waited"] == 1.0
    assert ks.wait_event("killswitch.sent")["subscribers"] == 0


@pytest.mark.deadline(60)
def test_late_subscriber_within_settle_is_stopped(
    service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
) -> None:
    """A service started after the first kill, inside the settle window, is stopped too."""
    kill = endpoint()
    first = service("services.worker:app", "--endpoint", f"backend={endpoint()}",
                    "--endpoint", f"kill={kill}")  # fmt: skip
    first.wait_started()
    ks = service("services.killswitch:app(settle=30.0)", "--endpoint", f"kill={kill}")
    assert first.wait(15) == 0, first.output()
    wait_for(lambda: ks.events("hop", op="send"), 10, "the first kill")
    late = service("services.worker:app", "--endpoint", f"backend={endpoint()}",
                   "--endpoint", f"kill={kill}")  # fmt: skip
    assert late.wait(20) == 0, late.output()
    assert late.wait_event("service.exit")["reason"] == "kill switch"
    assert ks.proc.poll() is None  # still settling (30 s window)
