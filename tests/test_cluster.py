"""Fleets across hosts: brokers on A1 and A2, workers on B, clients on C, as network namespaces.

The hosts are made here (greenzmq.tools.cluster.Net: namespaces on one
bridge, 10.200.0.N/24 addresses that exist only inside them; root and
iproute2 needed, iptables for the loss scenario). Where they cannot be made
the module is skipped with the reason, printed. Every load is bounded in
requests and seconds; ``pytest -s`` shows each scenario's numbers.

Shrunk from issue 10's numbers to keep the module short: the lossy link
lasts 10 s (not 15), the Majordomo failover runs 1,000 requests (the PPP one
keeps 2,000). Heartbeats are 0.5 s with liveness 3 in every scenario.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenzmq.tools.cluster import CLIENT_TIMEOUT, Fleet, Net, kill_scenario, unavailable

from .helpers import ROOT

pytestmark = pytest.mark.slow

HB = 0.5
LIVENESS = 3
WORKERS = 4


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    """The four hosts, for the whole module (each test starts its own processes)."""
    why = unavailable()
    if why is not None:
        print(f"\ntest_cluster skipped: {why}", file=sys.stderr)
        pytest.skip(why)
    with Net() as n:
        yield n


def report(name: str, numbers: dict[str, Any]) -> None:
    """The scenario's numbers, on stdout (``pytest -s``)."""
    shown = {k: v for k, v in numbers.items() if k not in ("latencies", "failed_over_at")}
    print(f"\n[cluster] {name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))


def check_kill(r: dict[str, Any], requests: int) -> None:
    assert r["answered"] == requests, r
    assert (r["wrong"], r["failed"], r["lost"]) == (0, 0, 0), r
    assert r["failovers"] >= 1, "the clients on A1 moved to A2"
    # a client pays one timeout on the dead broker, then A2 answers at once
    assert r["failover_s"] is not None and r["failover_s"] < CLIENT_TIMEOUT + 1.5, r
    assert r["duplicated"] >= 0, "every answered request was executed at least once"


@pytest.mark.deadline(60)
def test_ppp_queue_killed(net: Net, tmp_path: Path) -> None:
    """SIGKILL queue A1 half way through 2,000 requests: all answered, none wrong."""
    r = kill_scenario(net, tmp_path, "ppp", 2000)
    report("PPP, queue A1 SIGKILLed mid-run", r)
    check_kill(r, 2000)


@pytest.mark.deadline(60)
def test_mdp_broker_killed(net: Net, tmp_path: Path) -> None:
    """The same with two Majordomo brokers (1,000 requests)."""
    r = kill_scenario(net, tmp_path, "mdp", 1000)
    report("Majordomo, broker A1 SIGKILLed mid-run", r)
    check_kill(r, 1000)


def after(events: list[dict[str, Any]], t: float) -> list[float]:
    return sorted(e["timestamp"] for e in events if e["timestamp"] >= t)


@pytest.mark.deadline(60)
def test_link_to_workers_down_and_up(net: Net, tmp_path: Path) -> None:
    """B unplugged 5 s under load: queues notice within liveness, workers come back at once."""
    fleet = Fleet(net, tmp_path, "ppp", heartbeat=HB, workers=WORKERS)
    try:
        fleet.start()
        # paced load across the outage: 8 clients, ~100 requests/s, ~9 s
        load = fleet.load(900, rate=100, timeout=CLIENT_TIMEOUT, retries=24, latencies=True)
        try:
            load.until(100, 30)
            t_down = time.time()
            net.link("b", up=False)
            fleet.wait(lambda: len(after(fleet.lost_events(), t_down)) >= 2 * WORKERS,
                       LIVENESS * HB + 5, "both queues to expire every worker")  # fmt: skip
            time.sleep(max(0.0, t_down + 5.0 - time.time()))
            t_up = time.time()
            net.link("b", up=True)
            fleet.wait(lambda: len(after(fleet.ready_events(), t_up)) >= 2 * WORKERS,
                       10, "every worker back on both queues")  # fmt: skip
            r = load.summary(60)
        finally:
            load.close()
        executed = fleet.executions()
    finally:
        fleet.close()
    lost = after(fleet.lost_events(), t_down)
    back = after(fleet.ready_events(), t_up)[: 2 * WORKERS]
    stalled = [x for s, x in r.pop("latencies") if t_down - 1 <= s <= t_up]
    numbers = {
        **r,
        "detected_first_s": round(lost[0] - t_down, 3),
        "detected_all_s": round(lost[2 * WORKERS - 1] - t_down, 3),
        "reregistered_all_s": round(back[-1] - t_up, 3),
        "longest_wait_s": round(max(stalled), 3) if stalled else None,
        "executed": executed,
        "duplicated": executed - r["answered"],
    }
    report("PPP, link to B down 5 s", numbers)
    assert r["wrong"] == 0 and r["lost"] == 0, r
    # nothing lost without the client knowing: answered, or a RequestTimeout it saw
    assert r["answered"] + r["failed"] == 900, r
    assert r["failed"] == 0, "24 tries of 0.5 s outlast a 5 s outage"
    # a queue checks expiry once a heartbeat: liveness intervals, plus one
    assert numbers["detected_all_s"] <= (LIVENESS + 1) * HB + 0.5, numbers
    # a worker's socket retries within reconnect_max (= one heartbeat) and
    # libzmq's own 100 ms reconnect: registered again within about one heartbeat
    assert numbers["reregistered_all_s"] <= HB + 0.6, numbers


@pytest.mark.deadline(60)
@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed")
def test_lossy_link(net: Net, tmp_path: Path) -> None:
    """5% of B's packets dropped each way for 10 s: no worker expires; p99 latency reported."""
    fleet = Fleet(net, tmp_path, "ppp", heartbeat=HB, workers=WORKERS)
    seconds = 10.0
    try:
        fleet.start()
        load = fleet.load(int(100 * (seconds + 2)), rate=100, timeout=CLIENT_TIMEOUT, retries=12,
                          latencies=True)  # fmt: skip
        try:
            load.until(100, 30)
            t0 = time.time()
            net.loss("b", 0.05)
            try:
                time.sleep(seconds)
            finally:
                net.loss("b", None)
            t1 = time.time()
            r = load.summary(60)
        finally:
            load.close()
        lost = fleet.lost_events()
        executed = fleet.executions()
    finally:
        fleet.close()
    during = sorted(x for s, x in r.pop("latencies") if t0 <= s <= t1)
    numbers = {
        **r,
        "in_loss": len(during),
        "p50_loss_s": round(during[len(during) // 2], 4),
        "p99_loss_s": round(during[int(0.99 * len(during))], 4),
        "max_loss_s": round(during[-1], 4),
        "worker_expiries": len(lost),
        "executed": executed,
        "duplicated": executed - r["answered"],
    }
    report("PPP, 5% loss on B's link for 10 s", numbers)
    assert not lost, f"false worker expiry under 5% loss: {lost}"
    assert r["wrong"] == 0 and r["lost"] == 0 and r["failed"] == 0, r
    assert len(during) >= 500, "the load ran through the lossy window"


@pytest.mark.deadline(60)
def test_demo_cluster(net: Net) -> None:
    """``greenzmq demo --cluster`` runs the kill scenario on hosts of its own and says OK."""
    r = subprocess.run(
        [sys.executable, "-m", "greenzmq", "demo", "--cluster", "--requests", "400"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "answered 400 of 400, wrong 0, failed 0" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("demo --cluster: OK in ")
