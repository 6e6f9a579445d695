"""A small network of hosts on one machine, and the fleet scenarios run across it.

:class:`Net` makes each host a network namespace joined to a bridge (in a
namespace of its own) by a veth pair, with an address ``10.200.0.N/24`` that
exists only inside those namespaces: no traffic leaves the machine, and
cutting a host's link (``ip link set ... down``) or dropping a share of its
packets (an iptables ``statistic`` match inside the host) touches nothing
else. It needs root and the ``ip`` tool (iproute2); packet loss needs
``iptables``. :func:`unavailable` says why a machine cannot (None if it can).

:class:`Fleet` starts the services of a scenario on those hosts (two brokers
on A1 and A2, workers on B registered with both, clients on C that know both),
each a ``python -m greenzmq`` process run with ``ip netns exec``, logging
JSON to its own file. The load (``python -m greenzmq.tools.cluster load``)
is a process on C: concurrent retrying clients, a bounded number of
requests, each answer checked (the workers square integers); it prints
progress and a summary as JSON lines.

:func:`kill_scenario` is the first scenario of issue 10 (SIGKILL one broker
mid-run); ``greenzmq demo --cluster`` and tests/test_cluster.py run it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .demo import read_events

__all__ = ["HOSTS", "Fleet", "Net", "Proc", "kill_scenario", "unavailable"]

HOSTS = {"a1": 1, "a2": 2, "b": 3, "c": 4}
SUBNET = "10.200.0"
FRONTEND, BACKEND = 5555, 5556
ROLES = "greenzmq.services"  # installed name: imports from any directory
CLIENT_TIMEOUT = 0.5  # s per try: the p99 of a healthy run is ~100x less


def child_env() -> dict[str, str]:
    """The environment for a child: the directory this greenzmq comes from first on the path.

    The processes in the namespaces then run the same greenzmq as this one
    (a source checkout's too, not another installed copy).
    """
    top = str(Path(__file__).resolve().parent.parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": top + (os.pathsep + path if path else "")}


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=20)


def unavailable() -> str | None:
    """Why this machine cannot make the namespaces (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in a container with CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"gzprobe{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    try:
        veth = _run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "p1",
                    check=False)  # fmt: skip
        if veth.returncode != 0:
            return f"cannot make a veth pair: {veth.stderr.strip()}"
        bridge = _run("ip", "-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot make a bridge: {bridge.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


class Net:
    """Hosts as network namespaces on one bridge; see the module docstring.

    Use as a context manager: the namespaces (and with them every veth, the
    bridge and the iptables rules) are deleted on exit.
    """

    def __init__(self, hosts: dict[str, int] | None = None, tag: str | None = None) -> None:
        self.hosts = dict(hosts or HOSTS)
        self.tag = tag or f"gz{os.getpid() % 100000}"
        self.switch = f"{self.tag}sw"
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        """The namespace name of ``host``."""
        return f"{self.tag}{host}"

    def addr(self, host: str) -> str:
        """``host``'s address (inside the namespaces only)."""
        return f"{SUBNET}.{self.hosts[host]}"

    def _port(self, host: str) -> str:
        return f"{self.tag}{host}"[-12:] + "p"  # the switch side of host's veth (<= 15 chars)

    def up(self) -> Net:
        """Make the switch and every host, linked and addressed."""
        try:
            _run("ip", "netns", "add", self.switch)
            self.made.append(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts:
                ns, port = self.ns(host), self._port(host)
                _run("ip", "netns", "add", ns)
                self.made.append(ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", port,
                     "netns", self.switch)  # fmt: skip
                _run("ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
                _run("ip", "-n", self.switch, "link", "set", port, "up")
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Delete every namespace this net made."""
        for ns in reversed(self.made):
            _run("ip", "netns", "del", ns, check=False)
        self.made = []

    def __enter__(self) -> Net:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def link(self, host: str, up: bool) -> None:
        """Plug (``up``) or unplug ``host``'s cable: its switch port up or down."""
        _run("ip", "-n", self.switch, "link", "set", self._port(host), "up" if up else "down")

    def loss(self, host: str, probability: float | None) -> None:
        """Drop ``probability`` of ``host``'s packets each way (None: stop dropping)."""
        ns = self.ns(host)
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", ns, "iptables", "-F", chain)
            if probability:
                _run("ip", "netns", "exec", ns, "iptables", "-A", chain, "-o" if chain ==
                     "OUTPUT" else "-i", "eth0", "-m", "statistic", "--mode", "random",
                     "--probability", str(probability), "-j", "DROP")  # fmt: skip

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``."""
        return ["ip", "netns", "exec", self.ns(host), *argv]


class Proc:
    """One process on one host, in its own process group, logging JSON to a file."""

    def __init__(self, net: Net, host: str, label: str, argv: Sequence[str], logdir: Path) -> None:
        self.label = label
        self.log = logdir / f"{label}.log"
        self.out_path = logdir / f"{label}.out"
        self.killed = False  # on purpose: not a failure to report
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            net.command(host, argv),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_env(),
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        """The logged events called ``name``."""
        return [e for e in read_events(self.log) if e.get("event") == name]

    def output(self) -> str:
        """What it printed outside its log."""
        return self.out_path.read_text(errors="replace").strip()

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Send ``sig`` to its whole process group; the wall time it was sent."""
        t = time.time()
        self.killed = True
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        return t

    def close(self) -> None:
        """Kill it if it still runs."""
        if self.proc.poll() is None:
            self.kill()
            self.proc.wait(10)
        self._out.close()


class Fleet:
    """Two brokers (A1, A2), workers on B registered with both, a load on C.

    ``pattern`` is ``"ppp"`` (Paranoid Pirate queues, LazyPirate clients) or
    ``"mdp"`` (Majordomo brokers, service ``square``). ``heartbeat`` goes to
    brokers and workers alike; workers reconnect after one heartbeat at most.
    """

    def __init__(
        self, net: Net, logdir: Path, pattern: str = "ppp", heartbeat: float = 0.5, workers: int = 4
    ) -> None:
        if pattern not in ("ppp", "mdp"):
            raise ValueError(f"pattern must be 'ppp' or 'mdp', got {pattern!r}")
        self.net, self.logdir, self.pattern = net, logdir, pattern
        self.heartbeat, self.workers = heartbeat, workers
        self.procs: list[Proc] = []
        self.brokers: dict[str, Proc] = {}
        self.worker_proc: Proc | None = None

    def frontend(self, host: str) -> str:
        """The address clients use for the broker on ``host``."""
        port = FRONTEND
        return f"tcp://{self.net.addr(host)}:{port}"

    def backend(self, host: str) -> str:
        """The address workers use for the broker on ``host``."""
        port = BACKEND if self.pattern == "ppp" else FRONTEND
        return f"tcp://{self.net.addr(host)}:{port}"

    def _greenzmq(self, host: str, label: str, spec: str, *extra: str) -> Proc:
        argv = [sys.executable, "-m", "greenzmq", spec, "--log-format", "json",
                "--log-file", str(self.logdir / f"{label}.log"),
                # hop logs off: at full sampling they would cost more than the messages
                "--trace-sample", "0", *extra]  # fmt: skip
        p = Proc(self.net, host, label, argv, self.logdir)
        self.procs.append(p)
        return p

    def start_broker(self, host: str) -> Proc:
        """The broker on ``host`` (A1 or A2), bound on every address (``tcp://*``)."""
        hb = self.heartbeat
        if self.pattern == "ppp":
            p = self._greenzmq(host, f"queue-{host}", f"{ROLES}.ppqueue:make(heartbeat={hb})",
                               "--endpoint", f"frontend=tcp://*:{FRONTEND}",
                               "--endpoint", f"backend=tcp://*:{BACKEND}")  # fmt: skip
        else:
            p = self._greenzmq(host, f"broker-{host}", f"{ROLES}.majordomo:make(heartbeat={hb})",
                               "--endpoint", f"broker=tcp://*:{FRONTEND}")  # fmt: skip
        self.brokers[host] = p
        return p

    def start_workers(self, host: str = "b") -> Proc:
        """``workers`` worker processes on ``host``, each registered with both brokers."""
        hb = self.heartbeat
        if self.pattern == "ppp":
            spec = f"{ROLES}.ppworker:app(heartbeat={hb}, reconnect={hb}, reconnect_max={hb})"
            sock = "backend"
        else:
            spec = f"{ROLES}.majordomo:worker(heartbeat={hb}, reconnect={hb}, reconnect_max={hb})"
            sock = "broker"
        eps = [a for h in ("a1", "a2") for a in ("--endpoint", f"{sock}={self.backend(h)}")]
        self.worker_proc = self._greenzmq(host, "workers", spec, "-w", str(self.workers), *eps)
        return self.worker_proc

    def ready_events(self) -> list[dict[str, Any]]:
        """Every worker registration the brokers logged so far."""
        name = "ppqueue.worker_ready" if self.pattern == "ppp" else "mdp.worker_ready"
        back = "ppqueue.worker_back" if self.pattern == "ppp" else "mdp.worker_back"
        return [e for p in self.brokers.values() for n in (name, back) for e in p.events(n)]

    def lost_events(self) -> list[dict[str, Any]]:
        """Every worker expiry the brokers logged so far."""
        name = "ppqueue.worker_lost" if self.pattern == "ppp" else "mdp.worker_lost"
        return [e for p in self.brokers.values() for e in p.events(name)]

    def start(self, timeout: float = 30.0) -> None:
        """Both brokers and the workers, until every worker is registered with both."""
        for host in ("a1", "a2"):
            self.start_broker(host)
        self.start_workers()
        self.wait(lambda: len(self.ready_events()) >= 2 * self.workers, timeout,
                  f"{self.workers} workers registered with both brokers")  # fmt: skip

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``cond`` until true; RuntimeError (with the processes' output) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            dead = [p for p in self.procs if p.proc.poll() is not None and not p.killed]
            if time.monotonic() > deadline or (dead and not cond()):
                detail = "\n".join(f"{p.label}: {p.output()[-2000:]}" for p in dead)
                raise RuntimeError(f"timed out waiting for {what}\n{detail}".strip())
            time.sleep(0.02)

    def load(self, requests: int, *, concurrency: int = 8, rate: float = 0.0,
             timeout: float = 1.0, retries: int = 6, progress: int = 100,
             latencies: bool = False) -> Load:  # fmt: skip
        """Start the load on C; read it with :class:`Load`."""
        argv = [sys.executable, "-m", "greenzmq.tools.cluster", "load", "--pattern", self.pattern,
                "--requests", str(requests), "--concurrency", str(concurrency),
                "--rate", str(rate), "--timeout", str(timeout), "--retries", str(retries),
                "--progress", str(progress), *(["--latencies"] if latencies else []),
                *(a for h in ("a1", "a2") for a in ("--endpoint", self.frontend(h)))]  # fmt: skip
        # unbuffered: a line read is a line the select() in Load.until saw arrive
        return Load(subprocess.Popen(self.net.command("c", argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     env=child_env(), bufsize=0))  # fmt: skip

    def executions(self, timeout: float = 20.0) -> int:
        """Stop the workers (SIGTERM) and add up the requests they say they answered."""
        w = self.worker_proc
        assert w is not None
        w.kill(signal.SIGTERM)
        w.proc.wait(timeout)
        return sum(int(e.get("answered", 0)) for e in w.events("worker.done"))

    def close(self) -> None:
        """Kill every process still running."""
        for p in self.procs:
            p.close()


class Load:
    """The load process's JSON lines: progress as it comes, then the summary."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.done = 0

    def until(self, answered: int, timeout: float) -> None:
        """Read progress until ``answered`` requests are done."""
        deadline = time.monotonic() + timeout
        out = self.proc.stdout
        assert out is not None
        while self.done < answered:
            left = deadline - time.monotonic()
            # a silent, hung load must not hang the reader: wait for a line with a deadline
            if left <= 0 or not select.select([out], [], [], left)[0]:
                raise RuntimeError(f"load: {self.done} answered after {timeout} s")
            line = out.readline()
            if not line:
                raise RuntimeError(f"load ended early: {self._err()}")
            self.done = int(json.loads(line).get("done", self.done))

    def summary(self, timeout: float) -> dict[str, Any]:
        """Wait for the end; the summary (RuntimeError if it failed)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            raise RuntimeError(f"load still running after {timeout} s") from None
        for line in reversed(out.splitlines()):
            rec = json.loads(line)
            if "summary" in rec:
                summary: dict[str, Any] = rec["summary"]
                return summary
        raise RuntimeError(f"load gave no summary (exit {self.proc.returncode}): {self._err()}")

    def _err(self) -> str:
        err = self.proc.stderr
        return err.read().decode(errors="replace")[-2000:] if err is not None else ""

    def close(self) -> None:
        """Kill it if it still runs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def kill_scenario(net: Net, logdir: Path, pattern: str = "ppp", requests: int = 2000,
                  out: IO[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """SIGKILL broker A1 half way through ``requests``; the numbers of the run.

    ``failover_s``: from the kill until every client that lost its broker had
    an answer through the other one; ``duplicated``: requests the workers
    executed more than once (at-least-once: a retried request whose first
    copy was already worked on).
    """
    fleet = Fleet(net, logdir, pattern)
    try:
        t0 = time.monotonic()
        fleet.start()
        started = time.monotonic() - t0
        load = fleet.load(requests, concurrency=8, timeout=CLIENT_TIMEOUT, retries=6)
        try:
            load.until(requests // 2, 60)
            killed_at = fleet.brokers["a1"].kill()
            summary = load.summary(60)
        finally:
            load.close()
        executed = fleet.executions()
    finally:
        fleet.close()
    after = [t - killed_at for t in summary.pop("failed_over_at") if t >= killed_at]
    result = {
        "pattern": pattern,
        "requests": requests,
        **summary,
        "failover_s": round(max(after), 3) if after else None,
        "executed": executed,
        "duplicated": executed - summary["answered"],
        "startup_s": round(started, 2),
    }
    if out is not None:
        print(json.dumps(result), file=out)
    return result


# -- the load process (runs on host C) ---------------------------------------
def _load(ns: argparse.Namespace) -> int:
    import gevent

    from ..errors import RequestTimeout
    from ..patterns.lazypirate import LazyPirate
    from ..patterns.mdp import MDPClient

    eps: list[str] = ns.endpoint
    n, conc = ns.requests, ns.concurrency
    todo = iter(range(1, n + 1))
    lat: list[tuple[float, float]] = []  # (wall time sent, seconds to the answer)
    stats = {"answered": 0, "wrong": 0, "failed": 0, "stale": 0, "resent": 0, "failovers": 0}
    failed_over_at: list[float] = []
    interval = conc / ns.rate if ns.rate > 0 else 0.0
    report = max(1, int(ns.progress))

    def client(k: int) -> None:
        order = eps[k % len(eps) :] + eps[: k % len(eps)]  # both brokers carry load
        c: LazyPirate | MDPClient
        if ns.pattern == "ppp":
            c = LazyPirate(order, timeout=ns.timeout, retries=ns.retries)
        else:
            c = MDPClient(order, timeout=ns.timeout, retries=ns.retries)
        next_at = time.monotonic()
        try:
            for i in todo:
                if interval:
                    gevent.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                before = c.failovers
                sent, t0 = time.time(), time.monotonic()
                try:
                    body = str(i).encode()
                    r = c.request(body) if isinstance(c, LazyPirate) else c.request("square", body)
                except RequestTimeout:
                    stats["failed"] += 1  # the client knows: nothing is lost silently
                    continue
                lat.append((sent, time.monotonic() - t0))
                stats["answered" if r == [str(i * i).encode()] else "wrong"] += 1
                if c.failovers != before:
                    failed_over_at.append(time.time())
                done = stats["answered"] + stats["wrong"] + stats["failed"]
                if done % report == 0:
                    print(json.dumps({"done": done, "t": time.time()}), flush=True)
        finally:
            stats["stale"] += getattr(c, "stale", 0)
            stats["resent"] += c.resent
            stats["failovers"] += c.failovers
            c.close()

    gevent.joinall([gevent.spawn(client, k) for k in range(conc)], raise_error=True)
    took = sorted(x for _, x in lat)

    def pct(q: float) -> float | None:
        return round(took[min(len(took) - 1, int(q * len(took)))], 4) if took else None

    summary = {
        **stats,
        "lost": n - stats["answered"] - stats["wrong"] - stats["failed"],
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "max_s": pct(1.0),
        "failed_over_at": failed_over_at,
        "latencies": [(round(s, 4), round(x, 4)) for s, x in lat] if ns.latencies else [],
    }
    print(json.dumps({"summary": summary}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m greenzmq.tools.cluster load ...``: the load process of a scenario."""
    p = argparse.ArgumentParser(prog="greenzmq.tools.cluster")
    sub = p.add_subparsers(dest="cmd", required=True)
    ld = sub.add_parser("load", help="retrying clients against the brokers; JSON lines out")
    ld.add_argument("--pattern", choices=("ppp", "mdp"), default="ppp")
    ld.add_argument("--endpoint", action="append", required=True)
    ld.add_argument("--requests", type=int, default=2000)
    ld.add_argument("--concurrency", type=int, default=8)
    ld.add_argument("--rate", type=float, default=0.0, help="requests/s in all (0: no limit)")
    ld.add_argument("--timeout", type=float, default=1.0)
    ld.add_argument("--retries", type=int, default=6)
    ld.add_argument("--progress", type=int, default=100)
    ld.add_argument("--latencies", action="store_true", help="every (sent, seconds) pair")
    ns = p.parse_args(argv)
    return _load(ns)


if __name__ == "__main__":
    sys.exit(main())
