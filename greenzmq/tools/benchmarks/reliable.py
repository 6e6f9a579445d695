"""Majordomo and Paranoid Pirate brokers under the same load, in one run.

usage: python greenzmq/tools/benchmarks/reliable.py [-n N] [-r ROUNDS] [--json] RUN...

A RUN is ``PEERS/BROKER``:

* ``mdp02/greenzmq``, ``mdp02/majortomo``: MDP/0.2, majortomo's Client and
  Worker as peers, greenzmq's broker or majortomo's (``python -m majortomo.broker``);
* ``mdp01/greenzmq``, ``mdp01/mdbroker``: MDP/0.1, peers after the zguide's
  mdcliapi/mdwrkapi, greenzmq's broker or the anchor after the zguide's mdbroker;
* ``ppp/greenzmq``, ``ppp/ppqueue``: Paranoid Pirate workers (RFC 6) and REQ
  clients, greenzmq's PPP queue or the anchor after the zguide's ppqueue;
  ``ppp/minimal``: the same peers and a floor, not an anchor (the least a
  Python PPP queue woken once per message can do: LRU and heartbeats, nothing
  else);
* ``ppp/greenzmq+metrics``, ``mdp02/greenzmq+metrics``: greenzmq's broker
  with ``--metrics`` and a scrape of ``/metrics`` every second during the
  round (what the metrics cost per request, beside the run without).

The anchors and peers are in ``reliable_anchors.py`` beside this file.
greenzmq's brokers are the real commands (``greenzmq
greenzmq.services.majordomo:app`` / ``greenzmq.services.ppqueue:app``,
``--trace-sample 0``) on free loopback ports.

Load, the same for every run: 2 echo workers and 4 synchronous clients (one
request in flight each, 100-byte bodies), each sending N requests after one
warm-up request. Counted from the moment every client has its warm-up answer
to the last client's last reply: requests per second, and the CPU of the
broker's whole process tree (launcher included, read from /proc) per request.
Every request must be answered with its own body: a round with one request
unanswered (5 s) or answered wrongly fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

HERE = os.path.abspath(__file__)
ANCHORS = os.path.join(os.path.dirname(HERE), "reliable_anchors.py")
CLIENTS = 4
WORKERS = 2
TIMEOUT = 5.0  # seconds a client waits for one reply before the run fails
RUNS = (
    "mdp02/greenzmq",
    "mdp02/majortomo",
    "mdp01/greenzmq",
    "mdp01/mdbroker",
    "ppp/greenzmq",
    "ppp/ppqueue",
    "ppp/minimal",
    "ppp/greenzmq+metrics",
    "mdp02/greenzmq+metrics",
)
METRICS = "+metrics"


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(name))
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def broker_argv(run: str, fe: str, be: str, kill: str) -> list[str]:
    """The broker's command line; ``fe`` is the clients' endpoint, ``be`` the workers'."""
    peers, broker = run.split("/")
    extra: list[str] = []
    if broker.endswith(METRICS):
        broker = broker.removesuffix(METRICS)
        extra = ["--metrics", metrics_address(kill)]
    if broker == "greenzmq":
        if peers == "ppp":
            app, eps = "ppqueue", [f"frontend={fe}", f"backend={be}"]
        else:
            app, eps = "majordomo", [f"broker={fe}"]
        argv = [sys.executable, "-m", "greenzmq", f"greenzmq.services.{app}:app"]
        for ep in [*eps, f"kill={kill}"]:
            argv += ["--endpoint", ep]
        argv += ["--trace-sample", "0", "--log-format", "json", "--log-file", os.devnull]
        return [*argv, *extra]
    if broker == "majortomo":
        return [sys.executable, "-m", "majortomo.broker", "-b", fe]
    if broker == "mdbroker":
        return [sys.executable, ANCHORS, "broker", "mdbroker", fe]
    return [sys.executable, ANCHORS, "broker", broker, fe, be]


def metrics_address(kill: str) -> str:
    """``--metrics``'s address: the port after the kill switch's (each round has 4)."""
    port = int(kill.rsplit(":", 1)[1]) + 1
    return f"127.0.0.1:{port}"


def scrape_every(address: str, interval: float, stop: Any) -> list[int]:
    """GET /metrics every ``interval`` s until ``stop`` (a threading.Event) is set; sizes."""
    import urllib.request

    sizes: list[int] = []
    while not stop.wait(interval):
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as r:
                sizes.append(len(r.read()))
        except OSError:
            sizes.append(-1)
    return sizes


def _kill(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def run_once(run: str, n: int, port: int) -> dict[str, Any]:
    """One round of one run; its numbers. Raises SystemExit if a request went unanswered."""
    peers, _ = run.split("/")
    fe, be, kill = (f"tcp://127.0.0.1:{port + i}" for i in range(3))
    if not peers.startswith("ppp"):
        be = fe  # Majordomo: clients and workers share the broker's one ROUTER
    procs: list[subprocess.Popen[Any]] = []
    try:
        # own sessions: killpg ends each one's whole tree (the launcher's workers too)
        for argv in [broker_argv(run, fe, be, kill)] + [
            [sys.executable, ANCHORS, "worker", peers, be] for _ in range(WORKERS)
        ]:
            procs.append(
                subprocess.Popen(
                    argv,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        broker = procs[0]
        clients = [
            subprocess.Popen(
                [sys.executable, ANCHORS, "client", peers, fe, str(n), str(TIMEOUT)],
                start_new_session=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(CLIENTS)
        ]
        procs += clients
        for c in clients:  # each client's warm-up request is answered (or it gives up, 30 s)
            assert c.stdout is not None
            line = c.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"{run}: a client did not start: {line or 'no output'}")
        scraper = None
        if run.endswith(METRICS):
            import threading

            stop = threading.Event()
            th = threading.Thread(
                target=scrape_every, args=(metrics_address(kill), 1.0, stop), daemon=True
            )
            scraper = (stop, th)
        cpu0 = tree_cpu(broker.pid)
        t0 = time.perf_counter()
        if scraper is not None:
            scraper[1].start()
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        answers = []
        for c in clients:
            assert c.stdout is not None
            answers.append(json.loads(c.stdout.readline() or "{}"))
        dt = time.perf_counter() - t0
        cpu = tree_cpu(broker.pid) - cpu0
        if scraper is not None:
            scraper[0].set()
            scraper[1].join()
    finally:
        _kill(procs)
    sent = CLIENTS * n
    answered = check_answered(run, answers, sent)
    return {"rps": sent / dt, "cpu_us": cpu * 1e6 / sent, "answered": answered, "sent": sent}


def check_answered(run: str, answers: list[dict[str, Any]], sent: int) -> int:
    """The clients' answered requests; SystemExit (the run fails) unless all ``sent`` were.

    A client that died or timed out on its warm-up reports nothing (``{}``) or
    an ``error``: it answered none.
    """
    answered = sum(int(a.get("answered", 0)) for a in answers)
    if answered != sent:
        errors = sorted({str(a["error"]) for a in answers if "error" in a})
        why = f" ({'; '.join(errors)})" if errors else ""
        raise SystemExit(f"{run}: {answered} of {sent} requests answered{why}")
    return answered


def main() -> None:
    """Run every RUN ROUNDS times (interleaved); print one line (or JSON object) per RUN."""
    if sys.platform != "linux":
        raise SystemExit("reliable.py reads CPU times from /proc: Linux only")
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=1000, help="requests per client (4 clients)")
    ap.add_argument("-r", type=int, default=2, help="rounds (runs interleaved)")
    ap.add_argument("--port", type=int, default=0, help="first port (default: random)")
    ap.add_argument("--json", action="store_true", help="one JSON object per run")
    ap.add_argument("runs", nargs="+", choices=RUNS, metavar="RUN")
    a = ap.parse_args()
    # below Linux's ephemeral range (32768+), where "free port" picks cannot collide
    port = a.port or random.randrange(20000, 32000, 3)
    res: dict[str, list[dict[str, Any]]] = {}
    for _ in range(a.r):
        for run in a.runs:
            port += 4  # frontend, backend, kill, metrics
            res.setdefault(run, []).append(run_once(run, a.n, port))
    for run in a.runs:
        v = res[run]
        if a.json:
            print(json.dumps({"run": run, "n": a.n, "clients": CLIENTS, "rounds": v}))
        else:
            print(
                f"{run:16s} req/s={max(r['rps'] for r in v):8.0f} "
                f"broker_cpu_us/req={min(r['cpu_us'] for r in v):7.1f}"
            )


if __name__ == "__main__":
    main()
