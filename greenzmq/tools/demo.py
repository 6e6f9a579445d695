"""``greenzmq demo``: both tutorial scenarios end to end, one process per role.

Scenario 1 (many sockets, one loop): a ventilator (PUSH) and a weather server
(PUB) feed two listeners, one per way of reading many sockets (poller and
greenlet-per-socket); the kill switch stops both listeners.

Scenario 2 (request-reply through a broker): a ROUTER/DEALER broker, four
workers (two poller, two greenlet-per-socket) and three clients sending
1..i (i = 1, 2, 3); the kill switch stops the broker and the workers.

``greenzmq demo --cluster`` runs a fleet across hosts instead (root only:
the hosts are network namespaces, see :mod:`greenzmq.tools.cluster`): two
Paranoid Pirate queues on hosts A1 and A2, four workers on B registered with
both, eight clients on C that know both; queue A1 is SIGKILLed half way
through the requests, and the summary says how many were answered, wrong,
failed and run twice, and how long the clients took to fail over.

Every process is a real ``python -m greenzmq SPEC`` on free loopback ports,
logging JSON to its own file; the demo reads those logs to check that nothing
was lost, and exits non-zero if anything was lost or wrong. Nothing here
imports zmq: the demo is only a parent of services.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..cli import plain

__all__ = ["main"]

# The roles by their installed name: they import from any directory, also
# one whose own services/ package would shadow the repository's.
ROLES = "greenzmq.services"
TASKS = 5
UPDATES = 5
CLIENTS = (1, 2, 3)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a process's log (a line still being written is skipped)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class DemoFailed(Exception):
    """Something was lost, wrong, or too slow."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One service process with its JSON log file."""

    def __init__(
        self,
        label: str,
        spec: str,
        endpoints: dict[str, str],
        logdir: Path,
        extra: Sequence[str] = (),
    ) -> None:
        self.label = label
        self.log = logdir / f"{label}.log"
        args = [
            sys.executable,
            "-m",
            "greenzmq",
            spec,
            "--log-format",
            "json",
            "--log-file",
            str(self.log),
            *extra,
        ]
        for name, addr in endpoints.items():
            args += ["--endpoint", f"{name}={addr}"]
        self.out = open(logdir / f"{label}.out", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            args, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        """The logged events called ``name``."""
        return [e for e in read_events(self.log) if e.get("event") == name]

    def last(self, name: str) -> dict[str, Any] | None:
        """The last event called ``name``, if any."""
        evs = self.events(name)
        return evs[-1] if evs else None

    def output(self) -> str:
        """What it printed outside its log (tracebacks, errors)."""
        self.out.flush()
        return (self.log.parent / f"{self.label}.out").read_text(errors="replace").strip()

    def close(self) -> None:
        """Kill it if it still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.out.close()


class Demo:
    """Runs the two scenarios concurrently and checks their results."""

    def __init__(self, logdir: Path, deadline: float, trace_sample: float) -> None:
        self.logdir = logdir
        self.deadline = time.monotonic() + deadline
        self.seconds = deadline
        self.extra = ["--trace-sample", str(trace_sample)]
        self.procs: list[Proc] = []

    def start(self, label: str, spec: str, **endpoints: str) -> Proc:
        """Start one service process (killed in :meth:`close` if still running)."""
        p = Proc(label, spec, endpoints, self.logdir, self.extra)
        self.procs.append(p)
        return p

    def wait(self, what: str, cond: Callable[[], bool], watch: Sequence[Proc] = ()) -> None:
        """Wait for ``cond`` until the demo's deadline; fail early if a watched process dies."""
        delay = 0.01
        while not cond():
            for p in watch:
                code = p.proc.poll()
                if code is not None and code != 0:
                    raise DemoFailed(
                        f"{p.label} exited {code} while waiting for {what}:\n{p.output()}"
                    )
            if time.monotonic() > self.deadline:
                raise DemoFailed(
                    f"--deadline of {self.seconds:g} s passed while waiting for {what}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def expect_exit(self, procs: Sequence[Proc], what: str) -> None:
        """Wait until every process exited; fail unless each exited 0."""
        self.wait(what, lambda: all(p.proc.poll() is not None for p in procs))
        bad = [p for p in procs if p.proc.returncode != 0]
        if bad:
            p = bad[0]
            raise DemoFailed(f"{p.label} exited {p.proc.returncode}:\n{p.output()}")

    def stop_by_switch(self, label: str, kill: str, procs: Sequence[Proc], what: str) -> float:
        """Pull the kill switch at ``kill``; wait for ``procs`` to exit; seconds it took."""
        t0 = time.monotonic()
        switch = self.start(label, f"{ROLES}.killswitch:app(expect={len(procs)})", kill=kill)
        self.expect_exit([switch, *procs], what)
        return time.monotonic() - t0

    def check_killed_by_switch(self, procs: Sequence[Proc]) -> None:
        """Fail unless every process exited 0 because of the kill switch."""
        wrong = []
        for p in procs:
            ev = p.last("service.exit")
            if p.proc.returncode != 0 or not ev or ev.get("reason") != "kill switch":
                wrong.append(p.label)
        if wrong:
            raise DemoFailed(f"not stopped cleanly by the kill switch: {', '.join(wrong)}")

    # -- scenario 1 ---------------------------------------------------------
    def listeners_received(self, listeners: Sequence[Proc]) -> dict[str, dict[str, list[str]]]:
        """Per listener, the bodies it logged, by source (``tasks``, ``weather``)."""
        got: dict[str, dict[str, list[str]]] = {}
        for p in listeners:
            got[p.label] = {"tasks": [], "weather": []}
            for e in p.events("listener.received"):
                got[p.label][e["source"]].append(e["body"])
        return got

    def scenario_one(self) -> list[str]:
        """Many sockets, one loop; the report lines, or DemoFailed."""
        ep = {n: f"tcp://127.0.0.1:{_free_port()}" for n in ("tasks", "weather", "kill")}
        listeners = [
            self.start("listener-poller", f"{ROLES}.listener:app", **ep),
            self.start("listener-tasks", f"{ROLES}.listener:tasks_app", **ep),
        ]
        self.wait(
            "the listeners to start",
            lambda: all(p.events("service.start") for p in listeners),
            listeners,
        )
        producers = [
            self.start("ventilator", f"{ROLES}.ventilator:app(count={TASKS})", tasks=ep["tasks"]),
            self.start(
                "weather",
                f"{ROLES}.weather:app(count={UPDATES}, expect={len(listeners)})",
                updates=ep["weather"],
            ),
        ]
        self.expect_exit(producers, "the ventilator and the weather server to finish")

        def all_in() -> bool:
            got = self.listeners_received(listeners).values()
            return sum(len(g["tasks"]) for g in got) >= TASKS and all(
                len(g["weather"]) >= UPDATES for g in got
            )

        self.wait("every task and weather update to arrive", all_in, listeners)
        stop_s = self.stop_by_switch("killswitch-1", ep["kill"], listeners, "the listeners to stop")
        got = self.listeners_received(listeners)
        lines = ["scenario 1: many sockets, one loop (ventilator + weather -> 2 listeners)"]
        all_tasks: list[str] = []
        for label, g in got.items():
            all_tasks += g["tasks"]
            lines.append(
                f"  {label:16s} tasks {','.join(g['tasks']) or '-':10s} "
                f"weather updates {len(g['weather'])}/{UPDATES}"
            )
            if sorted(g["weather"], key=int) != [str(i) for i in range(1, UPDATES + 1)]:
                raise DemoFailed(f"{label} got weather updates {g['weather']}")
        if sorted(all_tasks, key=int) != [str(i) for i in range(1, TASKS + 1)]:
            raise DemoFailed(f"tasks received {all_tasks}, expected 1..{TASKS} once each")
        self.check_killed_by_switch(listeners)
        lines.append(
            f"  tasks received {len(all_tasks)}/{TASKS}; both listeners stopped by "
            f"the kill switch with exit code 0 ({stop_s:.1f} s incl. start-up)"
        )
        return lines

    # -- scenario 2 ---------------------------------------------------------
    def scenario_two(self) -> list[str]:
        """Request-reply through a broker; the report lines, or DemoFailed."""
        ep = {n: f"tcp://127.0.0.1:{_free_port()}" for n in ("frontend", "backend", "kill")}
        broker = self.start("broker", f"{ROLES}.broker:app", **ep)
        workers = [
            self.start(f"worker-{i}", spec, backend=ep["backend"], kill=ep["kill"])
            for i, spec in enumerate(
                [f"{ROLES}.worker:app"] * 2 + [f"{ROLES}.worker:tasks_app"] * 2, start=1
            )
        ]
        servers = [broker, *workers]
        self.wait(
            "the broker and workers to start",
            lambda: all(p.events("service.start") for p in servers),
            servers,
        )
        clients = [
            self.start(f"client-{i}", f"{ROLES}.client:app(i={i})", frontend=ep["frontend"])
            for i in CLIENTS
        ]
        self.expect_exit(clients, "the clients to get their replies")
        lines = ["scenario 2: request-reply through a broker (3 clients, broker, 4 workers)"]
        for i, c in zip(CLIENTS, clients, strict=True):
            done = c.last("client.done")
            if not done or done.get("checked") != i:
                raise DemoFailed(
                    f"client {i} checked {done and done.get('checked')} of {i} replies"
                )
            lines.append(f"  client-{i}: {i}/{i} replies checked (j -> j^2)")
        stop_s = self.stop_by_switch(
            "killswitch-2", ep["kill"], servers, "the broker and workers to stop"
        )
        self.check_killed_by_switch(servers)
        stats = broker.last("broker.stats") or {}
        answered = [int((w.last("worker.done") or {}).get("answered", 0)) for w in workers]
        total = sum(CLIENTS)
        fwd = stats.get("forwarded", {})
        if sum(answered) != total or fwd.get("backend->frontend") != total:
            raise DemoFailed(
                f"workers answered {answered}, broker forwarded {fwd}; expected {total}"
            )
        lines.append(
            f"  broker forwarded {fwd.get('frontend->backend')} requests and "
            f"{fwd.get('backend->frontend')} replies; workers answered {answered}"
        )
        lines.append(
            f"  broker and 4 workers stopped by the kill switch with exit code 0 "
            f"({stop_s:.1f} s incl. start-up)"
        )
        return lines

    def close(self) -> None:
        """Kill every process still running."""
        for p in self.procs:
            p.close()


def cluster_demo(requests: int, log_dir: str | None) -> int:
    """``--cluster``: the queue-kill scenario across hosts; 0 if every request got its answer."""
    from .cluster import Net, kill_scenario, unavailable

    why = unavailable()
    if why is not None:
        print(f"demo --cluster: cannot make the hosts here: {why}", file=sys.stderr)
        return 1
    if requests < 2:
        print("demo --cluster: --requests must be at least 2", file=sys.stderr)
        return 2
    logdir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="greenzmq-cluster-"))
    logdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(
        "hosts (network namespaces, 10.200.0.0/24): A1, A2 queues; B 4 workers on both; "
        f"C 8 clients knowing both; {requests} requests, queue A1 SIGKILLed after {requests // 2}",
        flush=True,
    )
    try:
        with Net() as net:
            r = kill_scenario(net, logdir, "ppp", requests)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"demo --cluster: FAILED: {e}; logs in {logdir}", file=sys.stderr)
        return 1
    ok = r["answered"] == requests and r["wrong"] == 0 and r["failed"] == 0
    print(
        f"  answered {r['answered']} of {requests}, wrong {r['wrong']}, failed {r['failed']}, "
        f"executed twice {r['duplicated']}\n"
        f"  clients that lost A1 moved to A2: {r['failovers']} (fail-over took "
        f"{r['failover_s']} s: one client timeout)\n"
        f"  latency p50 {r['p50_s']} s, p99 {r['p99_s']} s, max {r['max_s']} s"
    )
    if ok and not log_dir:
        shutil.rmtree(logdir, ignore_errors=True)
    where = "" if ok and not log_dir else f"; logs in {logdir}"
    print(f"demo --cluster: {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s{where}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when everything arrived and every process stopped cleanly."""
    ap = argparse.ArgumentParser(prog="greenzmq demo", description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument(
        "--deadline",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds for both scenarios, start-up included (default 30 s)",
    )
    ap.add_argument(
        "--log-dir",
        default=None,
        metavar="DIR",
        help="keep every process's JSON hop log here (for greenzmq trace)",
    )
    ap.add_argument(
        "--trace-sample",
        type=float,
        default=1.0,
        metavar="RATE",
        help="share of messages whose hops are logged (default 1)",
    )
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="the fleet scenario across hosts (network namespaces; needs root)",
    )
    ap.add_argument(
        "--requests",
        type=int,
        default=2000,
        metavar="N",
        help="--cluster: requests in all, queue A1 killed after half (default 2000)",
    )
    a = ap.parse_args(argv)
    if a.cluster:
        return cluster_demo(a.requests, a.log_dir)
    logdir = Path(a.log_dir) if a.log_dir else Path(tempfile.mkdtemp(prefix="greenzmq-demo-"))
    logdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(logdir, a.deadline, a.trace_sample)
    t0 = time.monotonic()
    code = 0
    # both scenarios at once: their start-ups overlap, which halves the wall time
    results: dict[int, list[str] | BaseException] = {}

    def run(n: int, fn: Callable[[], list[str]]) -> None:
        try:
            results[n] = fn()
        except BaseException as e:
            results[n] = e

    threads = [
        threading.Thread(target=run, args=(n, fn), daemon=True)
        for n, fn in ((1, demo.scenario_one), (2, demo.scenario_two))
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        demo.close()
    for n in (1, 2):
        r = results.get(n)
        if isinstance(r, list):
            print("\n".join(r))
        else:
            code = 1
            print(f"scenario {n}: FAILED: {r}", file=sys.stderr)
    keep = code != 0 or a.log_dir
    if not keep:
        shutil.rmtree(logdir, ignore_errors=True)
    verdict = "OK" if code == 0 else "FAILED"
    where = f"; logs in {logdir}" if keep else ""
    print(f"demo: {verdict} in {time.monotonic() - t0:.1f} s{where}", flush=True)
    return code
