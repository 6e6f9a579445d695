"""``greenzmq bench``: the benchmark suite against the anchors, in one run, as ratios.

Runs ``broker_anchors.py`` (greenzmq's broker beside libzmq's
``zmq.proxy``, a plain pyzmq Poller broker, a naive ``zmq.green`` broker and a
``zmq.asyncio`` broker) for each load scenario, and ``mux.py``
(Readers and PollerListener beside plain pyzmq, threads + queue.Queue,
asyncio and the naive green consumers), then prints one table per suite with
ratios to the anchors and checks the targets of issue 5. ``reliable.py``
runs the Majordomo suite (greenzmq's broker beside majortomo's with MDP/0.2
peers, and beside an anchor after the zguide's mdbroker with MDP/0.1 peers)
and the Paranoid Pirate suite (greenzmq's queue beside an anchor after the
zguide's ppqueue), and checks the targets of issue 9. Absolute numbers
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

__all__ = ["BrokerRow", "MuxRow", "ReliableRow", "main"]

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

SUITES = ("broker", "mux", "mdp", "ppp")
MDP_KINDS = ("greenzmq", "majortomo", "mdbroker")
PPP_KINDS = ("greenzmq", "ppqueue", "minimal")
# each anchor of the reliable suites, with the peers every broker of its run uses
ANCHOR_PEERS = {"majortomo": "mdp02", "mdbroker": "mdp01", "ppqueue": "ppp"}
# floors: not anchors, the least a Python broker of those peers can cost (reliable_anchors.py)
FLOOR_PEERS = {"minimal": "ppp"}
PEERS_LABEL = {
    "mdp02": "MDP/0.2 (majortomo peers)",
    "mdp01": "MDP/0.1 (zguide peers)",
    "ppp": "PPP (zguide peers)",
}
CPU_TARGET = 0.6  # issue 9: greenzmq's broker CPU per request <= 0.6x each anchor's


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


@dataclasses.dataclass(frozen=True)
class ReliableRow:
    """One broker under one set of peers (Majordomo or PPP suite): best of the rounds."""

    suite: str
    peers: str
    kind: str
    rps: float
    cpu_us: float
    answered: int
    sent: int


# the scripts, shipped in the package; and the folder holding the greenzmq
# package, put on the children's path so they import this very greenzmq
PACKAGED = Path(__file__).resolve().parent / "benchmarks"
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


SCRIPTS = {
    "broker": ("broker_anchors.py",),
    "mux": ("mux.py", "mux_anchors.py"),
    "mdp": ("reliable.py", "reliable_anchors.py"),
    "ppp": ("reliable.py", "reliable_anchors.py"),
}


def find_bench_dir(given: str | None, suites: Sequence[str] = SUITES) -> Path:
    """The benchmark scripts' directory: ``given`` (``--dir``) or the packaged one.

    It must hold the scripts of ``suites`` (an older copy may lack the newer suites').
    """
    c = Path(given) if given else PACKAGED
    scripts = dict.fromkeys(name for s in suites for name in SCRIPTS[s])
    missing = [name for name in scripts if not (c / name).is_file()]
    if not missing:
        return c
    raise FileNotFoundError(
        f"benchmark scripts not found in {c} ({', '.join(missing)}; "
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


def reliable_runs(suite: str, kinds: Sequence[str]) -> list[str]:
    """``reliable.py``'s runs for a suite's kinds: greenzmq beside each anchor, same peers.

    Majordomo: greenzmq runs once with majortomo's peers (MDP/0.2) and once
    with the zguide's (MDP/0.1), each beside the anchor of that version; with
    no anchor chosen, greenzmq runs with both.
    """
    anchors = [k for k in kinds if k in ANCHOR_PEERS]
    peers = [ANCHOR_PEERS[a] for a in anchors] or ["mdp02", "mdp01"]
    if suite == "ppp":
        peers = ["ppp"]
    runs = []
    for p in peers:
        if "greenzmq" in kinds:
            runs.append(f"{p}/greenzmq")
        runs += [f"{p}/{a}" for a in anchors if ANCHOR_PEERS[a] == p]
        runs += [f"{p}/{f}" for f in kinds if FLOOR_PEERS.get(f) == p]
    return runs


def run_reliable(
    bench: Path, suite: str, kinds: Sequence[str], calls: int, rounds: int
) -> list[ReliableRow]:
    """The Majordomo or PPP suite: every run in every round (runs interleaved)."""
    runs = reliable_runs(suite, kinds)
    out = _run_json(
        [
            sys.executable,
            str(bench / "reliable.py"),
            "--json",
            "-n",
            f"{calls}",
            "-r",
            f"{rounds}",
            *runs,
        ]
    )
    rows = []
    for rec in out:
        peers, kind = rec["run"].split("/")
        rs = rec["rounds"]
        rows.append(
            ReliableRow(
                suite=suite,
                peers=peers,
                kind=kind,
                rps=max(r["rps"] for r in rs),
                cpu_us=min(r["cpu_us"] for r in rs),
                answered=min(r["answered"] for r in rs),
                sent=rs[0]["sent"],
            )
        )
    return rows


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


def _anchor_of(rows: Sequence[ReliableRow], r: ReliableRow) -> ReliableRow | None:
    """The anchor that ran with the same peers as ``r`` (None if it did not run)."""
    return next((x for x in rows if x.peers == r.peers and x.kind in ANCHOR_PEERS), None)


def _floor_of(rows: Sequence[ReliableRow], r: ReliableRow) -> ReliableRow | None:
    """The floor that ran with the same peers as ``r`` (None if it did not run)."""
    return next((x for x in rows if x.peers == r.peers and x.kind in FLOOR_PEERS), None)


def reliable_table(rows: Sequence[ReliableRow]) -> list[str]:
    """Markdown table: throughput and broker CPU per request vs the anchor with the same peers."""
    out = [
        "| peers | broker | req/s | x anchor | CPU us/req | x anchor | answered |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        a = _anchor_of(rows, r)
        kind = f"{r.kind} (floor)" if r.kind in FLOOR_PEERS else r.kind
        out.append(
            f"| {PEERS_LABEL[r.peers]} | {kind} | {r.rps:.0f} "
            f"| {_ratio(r.rps, a.rps if a else None)} | {r.cpu_us:.1f} "
            f"| {_ratio(r.cpu_us, a.cpu_us if a else None)} | {r.answered}/{r.sent} |"
        )
    return out


def check_targets(
    broker: Sequence[BrokerRow],
    mux: Sequence[MuxRow],
    reliable: Sequence[ReliableRow] = (),
) -> list[tuple[str, bool]]:
    """The targets of issues 5 (section 2) and 9 that this run can judge: (description, met)."""
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
    for r in reliable:
        a = _anchor_of(reliable, r)
        # 0 is below the clock tick (a tiny run): not a measurement to judge
        if r.kind != "greenzmq" or a is None or not a.cpu_us or not r.cpu_us:
            continue
        v = r.cpu_us / a.cpu_us
        text = (
            f"{PEERS_LABEL[r.peers]}: greenzmq CPU/request <= {CPU_TARGET}x {a.kind}'s: "
            f"{v:.2f}x ({r.cpu_us:.1f} against {a.cpu_us:.1f} us; req/s {r.rps / a.rps:.2f}x)"
        )
        f = _floor_of(reliable, r)
        if f is not None and f.cpu_us:
            text += f"; the {f.kind} Python floor is {f.cpu_us / a.cpu_us:.2f}x {a.kind}'s"
        res.append((text, v <= CPU_TARGET))
    return res


def plot(
    broker: Sequence[BrokerRow],
    mux: Sequence[MuxRow],
    path: str,
    reliable: Sequence[ReliableRow] = (),
) -> bool:
    """Bar charts of the ratios to ``path`` (PNG); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scen = [s for s in SCENARIOS if any(r.scenario == s for r in broker)]
    panels = (2 if broker else 0) + (1 if mux else 0) + (1 if reliable else 0)
    if not panels:
        return True
    fig, grid = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes: list[Any] = list(grid[0])
    if reliable:
        ax = axes.pop()
        labels: list[str] = []
        cpu_r: list[float] = []
        thr_r: list[float] = []
        for g in reliable:
            anchor = _anchor_of(reliable, g)
            if g.kind == "greenzmq" and anchor and anchor.cpu_us and anchor.rps:
                labels.append(f"{g.peers}\nx {anchor.kind}")
                cpu_r.append(g.cpu_us / anchor.cpu_us)
                thr_r.append(g.rps / anchor.rps)
        ticks = list(range(len(labels)))
        ax.bar([t - 0.2 for t in ticks], cpu_r, 0.4, label="broker CPU/req")
        ax.bar([t + 0.2 for t in ticks], thr_r, 0.4, label="req/s")
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(CPU_TARGET, color="red", linewidth=0.8)
        ax.set_title("greenzmq MDP/PPP, x anchor")
        ax.legend(fontsize=7)
    if not broker:
        if mux:
            _mux_panel(axes[0], mux)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return True
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
        _mux_panel(axes[2], mux)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _mux_panel(ax: Any, mux: Sequence[MuxRow]) -> None:
    ax.barh([kind_label(r.kind) for r in mux], [r.cpu_us for r in mux])
    ax.axvline(0.6, color="red", linewidth=0.8)
    ax.set_title("mux consumer CPU us/msg")
    ax.invert_yaxis()


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
    p.add_argument(
        "--calls",
        type=int,
        default=1000,
        metavar="N",
        help="Majordomo and PPP suites: requests per client, 4 clients (default 1000)",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds, kinds interleaved (default 2)")
    p.add_argument(
        "--only",
        type=_csv,
        metavar="SUITES",
        help=f"run these suites, comma-separated ({', '.join(SUITES)}; default all)",
    )
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
    p.add_argument(
        "--mdp-kinds",
        type=_csv,
        default=list(MDP_KINDS),
        help=f"Majordomo brokers (default {','.join(MDP_KINDS)})",
    )
    p.add_argument(
        "--ppp-kinds",
        type=_csv,
        default=list(PPP_KINDS),
        help=f"Paranoid Pirate queues (default {','.join(PPP_KINDS)})",
    )
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
    suites = list(SUITES) if ns.only is None else ns.only
    for what, given, known in (
        ("suite", suites, SUITES),
        ("Majordomo kind", ns.mdp_kinds, MDP_KINDS),
        ("PPP kind", ns.ppp_kinds, PPP_KINDS),
    ):
        bad = [k for k in given if k not in known]
        if bad or not given:
            name = repr(bad[0]) if bad else "(none)"
            print(
                f"greenzmq bench: error: unknown {what} {name} (one of {', '.join(known)})",
                file=sys.stderr,
            )
            return 2
    if "mdp" in suites and any(r.startswith("mdp02/") for r in reliable_runs("mdp", ns.mdp_kinds)):
        import importlib.util

        # MDP/0.2's anchor and peers are majortomo's: say so now, not after the other suites
        if importlib.util.find_spec("majortomo") is None:
            print(
                "greenzmq bench: error: the MDP/0.2 runs need majortomo (pip install "
                "'greenzmq[bench]'), or leave them out: --mdp-kinds greenzmq,mdbroker",
                file=sys.stderr,
            )
            return 2
    for opt in ("requests", "messages", "calls", "rounds"):
        if getattr(ns, opt) < 1:  # no rounds: no "best of" to report
            print(f"greenzmq bench: error: --{opt} must be at least 1", file=sys.stderr)
            return 2
    try:
        bench = find_bench_dir(ns.dir, suites)
    except FileNotFoundError as e:
        print(f"greenzmq bench: error: {e}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# greenzmq bench, {stamp}\n{machine()}\n", flush=True)
    broker: list[BrokerRow] = []
    mux: list[MuxRow] = []
    reliable: list[ReliableRow] = []
    try:
        if "broker" in suites:
            broker = run_broker(bench, ns.scenarios, ns.broker_kinds, ns.requests, ns.rounds)
            print(f"## Broker ({ns.rounds} rounds, best of each)\n")
            print("\n".join(broker_table(broker)) + "\n", flush=True)
        if "mux" in suites:
            mux = run_mux(bench, ns.mux_kinds, ns.messages, ns.rounds)
            print(f"## Many sockets into one consumer ({3 * ns.messages} messages)\n")
            print("\n".join(mux_table(mux)) + "\n", flush=True)
        for suite, kinds, title in (
            ("mdp", ns.mdp_kinds, "Majordomo"),
            ("ppp", ns.ppp_kinds, "Paranoid Pirate"),
        ):
            if suite in suites:
                rows = run_reliable(bench, suite, kinds, ns.calls, ns.rounds)
                reliable += rows
                print(
                    f"## {title} (4 synchronous clients x {ns.calls} requests, 2 echo workers; "
                    f"{ns.rounds} round{'s' if ns.rounds > 1 else ''}, best of each)\n"
                )
                print("\n".join(reliable_table(rows)) + "\n", flush=True)
    except RuntimeError as e:
        print(f"greenzmq bench: error: {e}", file=sys.stderr)
        return 1
    targets = check_targets(broker, mux, reliable)
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
                    "reliable": [dataclasses.asdict(r) for r in reliable],
                    "targets": [{"target": t, "met": m} for t, m in targets],
                },
                indent=1,
            )
        )
    if ns.plot:
        if plot(broker, mux, ns.plot, reliable):
            print(f"plot: {ns.plot}")
        else:
            print("plot: skipped (matplotlib is not installed: pip install 'greenzmq[plot]')")
    return 0
