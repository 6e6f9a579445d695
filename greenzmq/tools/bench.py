"""``greenzmq bench``: the benchmark suite against the anchors, in one run, as ratios.

Runs ``broker_anchors.py`` (greenzmq's broker beside libzmq's
``zmq.proxy``, a plain pyzmq Poller broker, a naive ``zmq.green`` broker and a
``zmq.asyncio`` broker) for each load scenario, and ``mux.py``
(Readers and PollerListener beside plain pyzmq, threads + queue.Queue,
asyncio and the naive green consumers), then prints one table per suite with
ratios to the anchors and checks the targets of issue 5. Absolute numbers
depend on the machine and its load; compare only within one run.

The benchmark scripts ship inside the package (``greenzmq/tools/benchmarks/``),
so an installed greenzmq runs them from any directory; ``--dir`` names
another copy. Each run is its own set of processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import site
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli import plain

__all__ = ["BrokerRow", "MuxRow", "main"]

# (label, window, body size, requests per round as a share of --requests)
SCENARIOS = {
    "64x100B": (64, 100, 1.0),
    "1x100B": (1, 100, 0.1),
    "64x10kB": (64, 10_000, 0.5),
    "1x10kB": (1, 10_000, 0.1),
}
BROKER_KINDS = (
    "proxy",
    "pypoll",
    "green_poll",
    "asyncio",
    "greenzmq",
    "greenzmq@0.01",
    "greenzmq@1",
)
MUX_KINDS = (
    "plain_poll",
    "green_poll",
    "green_tasks",
    "green_tasks_drain",
    "threads",
    "asyncio",
    "readers",
    "poller",
    "readers@0.01",
    "readers@1",
)


def kind_label(kind: str) -> str:
    """``greenzmq@0.01`` -> ``greenzmq trace 1%``; anchors keep their names."""
    base, sep, rate = kind.partition("@")
    if not sep:
        return kind
    share = float(rate)
    return f"{base} trace {'all' if share >= 1 else f'{share * 100:g}%'}"


@dataclasses.dataclass(frozen=True)
class BrokerRow:
    """One broker kind under one scenario: best of the rounds."""

    scenario: str
    kind: str
    rps: float
    cpu_us: float
    p50_us: float
    p99_us: float


@dataclasses.dataclass(frozen=True)
class MuxRow:
    """One consumer kind: best of the rounds."""

    kind: str
    msgs_s: float
    cpu_us: float


# the scripts, shipped in the package; and the folder holding the greenzmq
# package, put on the children's path so they import this very greenzmq
PACKAGED = Path(__file__).resolve().parent / "benchmarks"
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


def find_bench_dir(given: str | None) -> Path:
    """The benchmark scripts' directory: ``given`` (``--dir``) or the packaged one."""
    c = Path(given) if given else PACKAGED
    if (c / "broker_anchors.py").is_file() and (c / "mux.py").is_file():
        return c
    raise FileNotFoundError(
        f"benchmark scripts not found in {c} (broker_anchors.py and mux.py; "
        f"the packaged ones are in {PACKAGED})"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_command(kind: str, kill_port: int, logdir: str) -> str:
    """The anchors' ``cmd=`` kind that runs greenzmq's broker; anchors pass through."""
    base, _, rate = kind.partition("@")
    if base != "greenzmq":
        return kind
    sample = float(rate or 0)
    log = os.path.join(logdir, f"broker-{rate or 0}.log") if sample else os.devnull
    return (
        f"cmd={shlex.quote(sys.executable)} -m greenzmq greenzmq.services.broker:app"
        " --endpoint frontend={fe} --endpoint backend={be}"
        f" --endpoint kill=tcp://127.0.0.1:{kill_port} --trace-sample {sample:g}"
        f" --log-format json --log-file {shlex.quote(log)}"
    )


def _child_env() -> dict[str, str]:
    """The children's environment: they import this very greenzmq.

    A checkout's greenzmq (found through the current directory, which a script
    run by path does not get, or PYTHONPATH) goes on PYTHONPATH; an installed
    one is on the children's path already (and a site directory on PYTHONPATH
    would go before the standard library).
    """
    env = dict(os.environ)
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if _IMPORT_ROOT not in sites:
        path = [str(_IMPORT_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    return env


def _run_json(cmd: list[str]) -> list[dict[str, Any]]:
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed ({proc.returncode}): {' | '.join(tail)}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run_broker(
    bench: Path, scenarios: Sequence[str], kinds: Sequence[str], requests: int, rounds: int
) -> list[BrokerRow]:
    """Every scenario with every kind (kinds interleaved per round)."""
    rows: list[BrokerRow] = []
    kill_port = _free_port()  # nobody publishes there: the broker only stops when killed
    with tempfile.TemporaryDirectory(prefix="greenzmq-bench-") as logdir:
        cmds = {broker_command(k, kill_port, logdir): k for k in kinds}
        for name in scenarios:
            window, size, share = SCENARIOS[name]
            n = max(50, int(requests * share))
            out = _run_json(
                [
                    sys.executable,
                    str(bench / "broker_anchors.py"),
                    "--json",
                    "-n",
                    str(n),
                    "-w",
                    str(window),
                    "-s",
                    str(size),
                    "-r",
                    str(rounds),
                    *cmds,
                ]
            )
            for rec in out:
                rs = rec["rounds"]
                rows.append(
                    BrokerRow(
                        scenario=name,
                        kind=cmds[rec["kind"]],
                        rps=max(r["rps"] for r in rs),
                        cpu_us=min(r["cpu_us"] for r in rs),
                        p50_us=min(r["p50_us"] for r in rs),
                        p99_us=min(r["p99_us"] for r in rs),
                    )
                )
    return rows


def run_mux(bench: Path, kinds: Sequence[str], messages: int, rounds: int) -> list[MuxRow]:
    """Every consumer kind, each run in a fresh process."""
    out = _run_json(
        [
            sys.executable,
            str(bench / "mux.py"),
            "--json",
            "-n",
            str(messages),
            "-r",
            str(rounds),
            *kinds,
        ]
    )
    return [
        MuxRow(
            kind=rec["kind"],
            msgs_s=max(r["msgs_s"] for r in rec["rounds"]),
            cpu_us=min(r["cpu_us"] for r in rec["rounds"]),
        )
        for rec in out
    ]


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "-"


def broker_table(rows: Sequence[BrokerRow]) -> list[str]:
    """Markdown table: throughput vs the proxy, CPU and p50 vs pypoll, per scenario."""
    out = [
        "| load | broker | req/s | x proxy | CPU us/req | x pypoll | p50 us | x pypoll | p99 us |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        same = {x.kind: x for x in rows if x.scenario == r.scenario}
        proxy, pyp = same.get("proxy"), same.get("pypoll")
        out.append(
            f"| {r.scenario} | {kind_label(r.kind)} | {r.rps:.0f} "
            f"| {_ratio(r.rps, proxy.rps if proxy else None)} | {r.cpu_us:.1f} "
            f"| {_ratio(r.cpu_us, pyp.cpu_us if pyp else None)} | {r.p50_us:.0f} "
            f"| {_ratio(r.p50_us, pyp.p50_us if pyp else None)} | {r.p99_us:.0f} |"
        )
    return out


def mux_table(rows: Sequence[MuxRow]) -> list[str]:
    """Markdown table: consumer CPU per message vs the plain pyzmq Poller."""
    base = {r.kind: r for r in rows}.get("plain_poll")
    out = [
        "| consumer | msgs/s | CPU us/msg | x plain_poll |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {kind_label(r.kind)} | {r.msgs_s:.0f} | {r.cpu_us:.2f} "
            f"| {_ratio(r.cpu_us, base.cpu_us if base else None)} |"
        )
    return out


def check_targets(broker: Sequence[BrokerRow], mux: Sequence[MuxRow]) -> list[tuple[str, bool]]:
    """The targets of issue 5 section 2 that this run can judge: (description, met)."""
    res: list[tuple[str, bool]] = []
    b = {(r.scenario, r.kind): r for r in broker}
    load, lat = "64x100B", "1x100B"  # the throughput scenario, the latency one
    gz, pyp, prx = b.get((load, "greenzmq")), b.get((load, "pypoll")), b.get((load, "proxy"))
    if gz and prx and prx.rps:
        v = gz.rps / prx.rps
        res.append((f"broker untraced throughput >= 0.6x proxy: {v:.2f}x", v >= 0.6))
    if gz and pyp and pyp.cpu_us:
        v = gz.cpu_us / pyp.cpu_us
        res.append((f"broker untraced CPU/request <= pypoll's: {v:.2f}x", v <= 1.0))
    tr = b.get((load, "greenzmq@1"))
    if gz and tr and gz.rps:
        v = tr.rps / gz.rps
        res.append((f"broker traced (every hop, JSON file) >= 0.5x untraced: {v:.2f}x", v >= 0.5))
    gz1, pyp1 = b.get((lat, "greenzmq")), b.get((lat, "pypoll"))
    if gz1 and pyp1 and pyp1.p50_us:
        v = gz1.p50_us / pyp1.p50_us
        res.append((f"p50 at 1 in flight <= 1.1x pypoll's: {v:.2f}x", v <= 1.1))
    m = {r.kind: r for r in mux}
    for kind in ("readers", "poller"):
        if kind in m:
            cpu = m[kind].cpu_us
            base = m.get("plain_poll")
            rel = f", {cpu / base.cpu_us:.2f}x plain_poll" if base and base.cpu_us else ""
            res.append((f"mux {kind} untraced <= 0.6 us CPU/msg: {cpu:.2f} us{rel}", cpu <= 0.6))
    return res


def plot(broker: Sequence[BrokerRow], mux: Sequence[MuxRow], path: str) -> bool:
    """Bar charts of the ratios to ``path`` (PNG); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scen = [s for s in SCENARIOS if any(r.scenario == s for r in broker)]
    panels = 2 + (1 if mux else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    kinds = list(dict.fromkeys(r.kind for r in broker))
    width = 0.8 / max(1, len(kinds))
    b = {(r.scenario, r.kind): r for r in broker}
    for i, k in enumerate(kinds):
        xs = [j + i * width for j in range(len(scen))]
        thr = []
        cpu = []
        for s in scen:
            r, p, q = b.get((s, k)), b.get((s, "proxy")), b.get((s, "pypoll"))
            thr.append(r.rps / p.rps if r and p and p.rps else 0.0)
            cpu.append(r.cpu_us / q.cpu_us if r and q and q.cpu_us else 0.0)
        axes[0].bar(xs, thr, width, label=kind_label(k))
        axes[1].bar(xs, cpu, width, label=kind_label(k))
    for ax, title in ((axes[0], "broker req/s, x proxy"), (axes[1], "broker CPU/req, x pypoll")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scen))], scen)
        ax.set_title(title)
        ax.axhline(1.0, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=7)
    if mux:
        ax = axes[2]
        ax.barh([kind_label(r.kind) for r in mux], [r.cpu_us for r in mux])
        ax.axvline(0.6, color="red", linewidth=0.8)
        ax.set_title("mux consumer CPU us/msg")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def machine() -> str:
    """One line: CPU model, cores, Python, pyzmq/libzmq, gevent."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import gevent
    import zmq

    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"CPython {platform.python_version()}, pyzmq {zmq.__version__} "
        f"(libzmq {zmq.zmq_version()}), gevent {gevent.__version__}"
    )


def _csv(text: str) -> list[str]:
    return [t for t in (x.strip() for x in text.split(",")) if t]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``greenzmq bench``."""
    p = argparse.ArgumentParser(prog="greenzmq bench", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument(
        "--requests",
        type=int,
        default=20000,
        metavar="N",
        help="broker requests per round at 64 in flight (default 20000)",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=100000,
        metavar="N",
        help="mux messages per producer, 3 producers (default 100000)",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds, kinds interleaved (default 2)")
    p.add_argument("--only", choices=("broker", "mux"), help="run one suite")
    p.add_argument(
        "--scenarios",
        type=_csv,
        default=list(SCENARIOS),
        help=f"broker loads, comma-separated (default {','.join(SCENARIOS)})",
    )
    p.add_argument(
        "--broker-kinds",
        type=_csv,
        default=list(BROKER_KINDS),
        help="broker kinds; greenzmq@RATE traces a share of the hops",
    )
    p.add_argument("--mux-kinds", type=_csv, default=list(MUX_KINDS), help="consumer kinds")
    p.add_argument("--plot", metavar="PNG", help="also draw the ratios (needs greenzmq[plot])")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    p.add_argument(
        "--dir", help="the benchmark scripts' directory (default: the ones shipped in greenzmq)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print the tables and the targets; 0 unless a run failed."""
    ns = build_parser().parse_args(argv)
    bad = [s for s in ns.scenarios if s not in SCENARIOS]
    if bad:
        print(
            f"greenzmq bench: error: unknown scenario {bad[0]!r} (one of {', '.join(SCENARIOS)})",
            file=sys.stderr,
        )
        return 2
    for opt in ("requests", "messages", "rounds"):
        if getattr(ns, opt) < 1:  # no rounds: no "best of" to report
            print(f"greenzmq bench: error: --{opt} must be at least 1", file=sys.stderr)
            return 2
    try:
        bench = find_bench_dir(ns.dir)
    except FileNotFoundError as e:
        print(f"greenzmq bench: error: {e}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# greenzmq bench, {stamp}\n{machine()}\n", flush=True)
    broker: list[BrokerRow] = []
    mux: list[MuxRow] = []
    try:
        if ns.only in (None, "broker"):
            broker = run_broker(bench, ns.scenarios, ns.broker_kinds, ns.requests, ns.rounds)
            print(f"## Broker ({ns.rounds} rounds, best of each)\n")
            print("\n".join(broker_table(broker)) + "\n", flush=True)
        if ns.only in (None, "mux"):
            mux = run_mux(bench, ns.mux_kinds, ns.messages, ns.rounds)
            print(f"## Many sockets into one consumer ({3 * ns.messages} messages)\n")
            print("\n".join(mux_table(mux)) + "\n", flush=True)
    except RuntimeError as e:
        print(f"greenzmq bench: error: {e}", file=sys.stderr)
        return 1
    targets = check_targets(broker, mux)
    if targets:
        print("## Targets\n")
        for text, met in targets:
            print(f"- {'met' if met else 'MISSED'}: {text}")
        print()
    if ns.json:
        Path(ns.json).write_text(
            json.dumps(
                {
                    "date": stamp,
                    "machine": machine(),
                    "broker": [dataclasses.asdict(r) for r in broker],
                    "mux": [dataclasses.asdict(r) for r in mux],
                    "targets": [{"target": t, "met": m} for t, m in targets],
                },
                indent=1,
            )
        )
    if ns.plot:
        if plot(broker, mux, ns.plot):
            print(f"plot: {ns.plot}")
        else:
            print("plot: skipped (matplotlib is not installed: pip install 'greenzmq[plot]')")
    return 0
