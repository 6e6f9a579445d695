"""RPC call round trip beside the raw Majordomo round trip it rides on, in one run.

usage: python -m greenzmq.tools.benchmarks.rpc [-n CALLS] [-r ROUNDS] [--json]

Starts a greenzmq Majordomo broker, a raw MDP echo worker
(``MDPWorkerService("echo", lambda body: body)``) and an RPC service with one
``echo`` method (:class:`greenzmq.rpc.RPCService`), each in its own process
on free loopback ports, and, where ``zerorpc`` imports, a zerorpc server with
the same method. One synchronous client in this process then times
``CALLS`` x ``ROUNDS`` sequential calls of each (100-byte bodies, one call
in flight), the kinds taking turns call by call; it prints the median time
of a call and the RPC call's ratio to the raw MDP round trip (and to zerorpc:
note that zerorpc's client talks to its server directly, one hop, while
both greenzmq rows go through the broker, two). Absolute numbers depend on
the machine and its load: compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

BODY = b"x" * 100


class Echo:
    """The benchmark's service."""

    def echo(self, value: Any) -> Any:
        """The value itself."""
        return value


def _free() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _quiet() -> None:
    # no hop events, no info lines: the launcher's --trace-sample 0 --log-level warning
    from greenzmq.core.tracing import configure_logging

    configure_logging(level="warning", trace_sample=0.0)


def serve(role: str, ep: str) -> None:
    """Run one of the benchmark's servers until killed."""
    if role == "zerorpc":
        import zerorpc

        server = zerorpc.Server(Echo())
        server.bind(ep)
        server.run()
        return
    from greenzmq.patterns.mdp import MDPBroker, MDPWorkerService
    from greenzmq.rpc import RPCService

    _quiet()
    svc: Any
    if role == "broker":
        svc = MDPBroker()
        svc.serve({"broker": ep, "kill": _free()})
    elif role == "mdpecho":
        svc = MDPWorkerService("echo", lambda body: body, endpoint=ep)
        svc.serve({"kill": _free()})
    elif role == "rpcecho":
        svc = RPCService(Echo(), endpoint=ep)
        svc.serve({"kill": _free()})


def _time(call: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t0) / n


def measure(calls: int, rounds: int) -> dict[str, Any]:
    """Start the servers, time each kind, stop them; the medians in microseconds and ratios."""
    from greenzmq.patterns.mdp import MDPClient
    from greenzmq.rpc import Client

    _quiet()
    try:
        import zerorpc
    except ImportError:
        zerorpc = None
    broker = _free()
    roles = [("broker", broker), ("mdpecho", broker), ("rpcecho", broker)]
    zaddr = _free()
    if zerorpc is not None:
        roles.append(("zerorpc", zaddr))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "greenzmq.tools.benchmarks.rpc", "--serve", role, ep],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, ep in roles
    ]
    try:
        mdp = MDPClient(broker, timeout=10, retries=1)
        rpc = Client("Echo", broker, timeout=10)
        kinds: dict[str, Callable[[], Any]] = {
            "mdp": lambda: mdp.request("echo", BODY),
            "rpc": lambda: rpc.echo(BODY),
        }
        if zerorpc is not None:
            zc = zerorpc.Client(timeout=10, heartbeat=None)
            zc.connect(zaddr)
            kinds["zerorpc"] = lambda: zc.echo(BODY)
        for call in kinds.values():  # every server up and warm
            assert call() == [BODY] or call() == BODY
            _time(call, max(1, calls // 10))
        times: dict[str, list[float]] = {k: [] for k in kinds}
        clock = time.perf_counter
        for _ in range(rounds * calls):
            # the kinds take turns call by call: a load that comes and goes on the
            # machine falls on all of them alike
            for kind, call in kinds.items():
                t0 = clock()
                call()
                times[kind].append(clock() - t0)
        mdp.close()
        rpc.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    out: dict[str, Any] = {
        "calls": calls,
        "rounds": rounds,
        "us_per_call": {k: round(v, 1) for k, v in us.items()},
        "rpc_x_mdp": round(us["rpc"] / us["mdp"], 2),
        "rpc_overhead_us": round(us["rpc"] - us["mdp"], 1),
    }
    if "zerorpc" in us:
        out["rpc_x_zerorpc"] = round(us["rpc"] / us["zerorpc"], 2)
    return out


def table(r: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    mdp = r["us_per_call"]["mdp"]
    label = {
        "mdp": "raw MDP/0.2 echo (client, broker, worker)",
        "rpc": "greenzmq.rpc echo (same broker)",
        "zerorpc": "zerorpc echo (client to server, no broker)",
    }
    lines = ["| call | us per call | x raw MDP |", "| --- | ---: | ---: |"]
    for kind, us in r["us_per_call"].items():
        lines.append(f"| {label[kind]} | {us:.0f} | {us / mdp:.2f} |")
    lines.append(
        f"\nRPC per-call overhead over the raw Majordomo round trip: "
        f"{r['rpc_overhead_us']:.0f} us, {r['rpc_x_mdp']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve ROLE EP``, one of its servers)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--calls", type=int, default=2000, help="calls per round and kind")
    p.add_argument("-r", "--rounds", type=int, default=5, help="rounds (the median is reported)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--serve", nargs=2, metavar=("ROLE", "EP"), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.serve:
        serve(*ns.serve)
        return 0
    r = measure(ns.calls, ns.rounds)
    print(json.dumps(r) if ns.json else table(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
