"""greenzmq bench: a tiny smoke run of the whole code path; the output format, never speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greenzmq.tools.bench import (
    BrokerRow,
    MuxRow,
    ReliableRow,
    broker_command,
    broker_table,
    check_targets,
    find_bench_dir,
    kind_label,
    main,
    reliable_runs,
    reliable_table,
)

from .helpers import ROOT

RATIO = r"\d+\.\d\d"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small run: 2 loads x 4 brokers, 3 consumers, JSON and plot requested."""
    d = tmp_path_factory.mktemp("bench")
    out = subprocess.run(
        [sys.executable, "-m", "greenzmq", "bench", "--only", "broker,mux",
         "--requests", "300", "--messages", "300",
         "--rounds", "1", "--scenarios", "64x100B,1x100B",
         "--broker-kinds", "proxy,pypoll,greenzmq,greenzmq@1",
         "--mux-kinds", "plain_poll,readers,poller",
         "--json", str(d / "bench.json"), "--plot", str(d / "bench.png")],
        # from outside the checkout: the scripts ship in the package
        cwd=d, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return {"proc": out, "dir": d}


@pytest.fixture(scope="module")
def reliable_smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small run of the Majordomo and PPP suites: every broker, 4 clients x 20 requests."""
    d = tmp_path_factory.mktemp("bench-reliable")
    out = subprocess.run(
        [sys.executable, "-m", "greenzmq", "bench", "--only", "mdp,ppp", "--calls", "20",
         "--rounds", "1", "--json", str(d / "bench.json")],
        cwd=d, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return {"proc": out, "dir": d}


class TestReliableSmokeRun:
    @pytest.mark.deadline(180)
    def test_tables(self, reliable_smoke: dict[str, Any]) -> None:
        """One row per broker and peers, numbers in every cell, every request answered."""
        proc = reliable_smoke["proc"]
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "## Majordomo (4 synchronous clients x 20 requests" in out
        assert "## Paranoid Pirate (4 synchronous clients x 20 requests" in out
        rows = [
            ln.strip("|").split("|") for ln in out.splitlines() if re.match(r"\| (MDP|PPP)", ln)
        ]
        got = [(c[0].strip(), c[1].strip()) for c in rows]
        assert got == [
            ("MDP/0.2 (majortomo peers)", "greenzmq"),
            ("MDP/0.2 (majortomo peers)", "majortomo"),
            ("MDP/0.1 (zguide peers)", "greenzmq"),
            ("MDP/0.1 (zguide peers)", "mdbroker"),
            ("PPP (zguide peers)", "greenzmq"),
            ("PPP (zguide peers)", "ppqueue"),
            ("PPP (zguide peers)", "minimal (floor)"),
        ]
        for c in rows:
            cells = [x.strip() for x in c]
            assert float(cells[2]) > 0 and re.fullmatch(RATIO, cells[3])
            assert re.fullmatch(r"\d+\.\d", cells[4])
            # CPU is counted in clock ticks: a tiny run may see 0 (no ratio: "-")
            assert re.fullmatch(f"{RATIO}|-", cells[5])
            assert cells[6] == "80/80"

    @pytest.mark.deadline(180)
    def test_json_and_targets(self, reliable_smoke: dict[str, Any]) -> None:
        """The JSON has every run's numbers; the targets are judged per anchor."""
        proc, d = reliable_smoke["proc"], reliable_smoke["dir"]
        assert proc.returncode == 0, proc.stderr
        data = json.loads((d / "bench.json").read_text())
        assert data["broker"] == [] and data["mux"] == []
        rel = data["reliable"]
        assert len(rel) == 7  # the PPP floor too
        assert all(r["rps"] > 0 and r["answered"] == r["sent"] == 80 for r in rel)
        targets = [ln for ln in proc.stdout.splitlines() if ln.startswith(("- met:", "- MISSED:"))]
        assert len(targets) == len(data["targets"]) <= 3  # an anchor at 0 ticks: not judged
        assert all("greenzmq CPU/request <= 0.6x" in t for t in targets)


class TestSmokeRun:
    @pytest.mark.deadline(240)
    def test_tables(self, smoke: dict[str, Any]) -> None:
        """Both tables come out with one row per kind and ratios to the anchors."""
        proc = smoke["proc"]
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("# greenzmq bench, ")
        assert "cores" in lines[1] and "pyzmq" in lines[1]
        rows = [ln for ln in lines if re.match(r"\| (64|1)x100B \|", ln)]
        assert len(rows) == 8
        labels = [ln.split("|")[2].strip() for ln in rows[:4]]
        assert labels == ["proxy", "pypoll", "greenzmq", "greenzmq trace all"]
        for ln in rows:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            assert re.fullmatch(RATIO, cells[3]) and re.fullmatch(RATIO, cells[7])
            # CPU is counted in clock ticks: a tiny run may see 0 (no ratio: "-")
            assert re.fullmatch(f"{RATIO}|-", cells[5])
        assert rows[0].split("|")[4].strip() == "1.00"  # the proxy against itself
        assert rows[1].split("|")[6].strip() in ("1.00", "-")  # pypoll's CPU against itself
        mux = [ln for ln in lines if re.match(r"\| (plain_poll|readers|poller) \|", ln)]
        assert len(mux) == 3
        assert all(re.fullmatch(f"{RATIO}|-", ln.strip("|").split("|")[3].strip()) for ln in mux)

    @pytest.mark.deadline(240)
    def test_targets_json_and_plot(self, smoke: dict[str, Any]) -> None:
        """Every target is judged (met or MISSED); the JSON has every row; the plot is a PNG."""
        proc, d = smoke["proc"], smoke["dir"]
        assert proc.returncode == 0, proc.stderr
        targets = [ln for ln in proc.stdout.splitlines() if ln.startswith(("- met:", "- MISSED:"))]
        assert len(targets) >= 5  # the CPU target needs pypoll's CPU > 0 (clock ticks)
        data = json.loads((d / "bench.json").read_text())
        assert len(data["broker"]) == 8 and len(data["mux"]) == 3
        assert {r["kind"] for r in data["broker"]} == {"proxy", "pypoll", "greenzmq", "greenzmq@1"}
        assert all(r["rps"] > 0 and r["p50_us"] > 0 for r in data["broker"])
        assert len(data["targets"]) == len(targets)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            assert "plot: skipped (matplotlib is not installed" in proc.stdout
        else:
            assert (d / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestPieces:
    def test_labels_and_commands(self) -> None:
        """Traced kinds are labelled by share; greenzmq kinds become the anchors' cmd= kind."""
        assert kind_label("greenzmq@0.01") == "greenzmq trace 1%"
        assert kind_label("readers@1") == "readers trace all"
        assert kind_label("pypoll") == "pypoll"
        cmd = broker_command("greenzmq@1", 5999, "/tmp/logs")
        assert cmd.startswith("cmd=") and " greenzmq.services.broker:app " in cmd
        assert "{fe}" in cmd and "{be}" in cmd and "--trace-sample 1" in cmd
        assert "kill=tcp://127.0.0.1:5999" in cmd and "/tmp/logs/broker-1.log" in cmd
        assert broker_command("proxy", 1, "/x") == "proxy"

    def test_scripts_ship_in_the_package(self, tmp_path: Path) -> None:
        """By default the scripts come from greenzmq/tools/benchmarks/, not a checkout's folder."""
        import greenzmq.tools

        packaged = Path(greenzmq.tools.__file__).resolve().parent / "benchmarks"
        assert find_bench_dir(None) == packaged
        (tmp_path / "broker_anchors.py").write_text("")
        assert find_bench_dir(str(tmp_path), ["broker"]) == tmp_path  # an older copy
        with pytest.raises(FileNotFoundError, match=r"\(reliable\.py, reliable_anchors\.py;"):
            find_bench_dir(str(tmp_path), ["broker", "ppp"])
        for name in (
            "broker_anchors.py",
            "mux.py",
            "mux_anchors.py",
            "reliable.py",
            "reliable_anchors.py",
        ):
            assert (packaged / name).is_file()
        assert not (ROOT / "benchmarks" / "mux.py").exists()  # only bench.png stays there

    def test_targets_judged_from_rows(self) -> None:
        """The targets compare within the run: met and missed both reported."""
        rows = [
            BrokerRow("64x100B", "proxy", 100.0, 5.0, 10.0, 20.0),
            BrokerRow("64x100B", "pypoll", 50.0, 20.0, 10.0, 20.0),
            BrokerRow("64x100B", "greenzmq", 70.0, 18.0, 10.0, 20.0),
            BrokerRow("64x100B", "greenzmq@1", 30.0, 40.0, 10.0, 20.0),
            BrokerRow("1x100B", "pypoll", 10.0, 20.0, 100.0, 200.0),
            BrokerRow("1x100B", "greenzmq", 10.0, 20.0, 105.0, 200.0),
        ]
        res = dict(
            (t.split(":")[0], m) for t, m in check_targets(rows, [MuxRow("readers", 1, 0.9)])
        )
        assert res == {
            "broker untraced throughput >= 0.6x proxy": True,
            "broker untraced CPU/request <= pypoll's": True,
            "broker traced (every hop, JSON file) >= 0.5x untraced": False,
            "p50 at 1 in flight <= 1.1x pypoll's": True,
            "mux readers untraced <= 0.6 us CPU/msg": False,
        }
        table = broker_table(rows)
        assert table[4] == "| 64x100B | greenzmq | 70 | 0.70 | 18.0 | 0.90 | 10 | 1.00 | 20 |"

    def test_bad_options(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown load, a --dir without the scripts or no rounds: one-line error, exit 2."""
        assert main(["--scenarios", "64x1GB"]) == 2
        assert main(["--dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("greenzmq bench: error: unknown scenario '64x1GB'")
        assert err[1].startswith("greenzmq bench: error: benchmark scripts not found in")
        assert main(["--rounds", "0"]) == 2
        assert capsys.readouterr().err == "greenzmq bench: error: --rounds must be at least 1\n"

    def test_reliable_runs(self) -> None:
        """greenzmq runs with the peers of each anchor chosen (both MDP versions if none)."""
        assert reliable_runs("mdp", ["greenzmq", "majortomo", "mdbroker"]) == [
            "mdp02/greenzmq",
            "mdp02/majortomo",
            "mdp01/greenzmq",
            "mdp01/mdbroker",
        ]
        assert reliable_runs("mdp", ["mdbroker", "greenzmq"]) == [
            "mdp01/greenzmq",
            "mdp01/mdbroker",
        ]
        assert reliable_runs("mdp", ["greenzmq"]) == ["mdp02/greenzmq", "mdp01/greenzmq"]
        assert reliable_runs("ppp", ["greenzmq", "ppqueue"]) == ["ppp/greenzmq", "ppp/ppqueue"]
        assert reliable_runs("ppp", ["ppqueue"]) == ["ppp/ppqueue"]
        assert reliable_runs("ppp", ["minimal", "greenzmq", "ppqueue"]) == [
            "ppp/greenzmq",
            "ppp/ppqueue",
            "ppp/minimal",
        ]

    def test_reliable_targets_and_table(self) -> None:
        """CPU per request against each anchor of the same peers: met and missed both reported."""
        rows = [
            ReliableRow("mdp", "mdp02", "greenzmq", 3000.0, 50.0, 4000, 4000),
            ReliableRow("mdp", "mdp02", "majortomo", 2500.0, 100.0, 4000, 4000),
            ReliableRow("mdp", "mdp01", "greenzmq", 3000.0, 50.0, 4000, 4000),
            ReliableRow("mdp", "mdp01", "mdbroker", 3000.0, 80.0, 4000, 4000),
            ReliableRow("ppp", "ppp", "greenzmq", 3000.0, 50.0, 4000, 4000),
        ]
        # greenzmq at 0 ticks (a tiny run) is not judged
        zero = [ReliableRow("ppp", "ppp", "greenzmq", 1.0, 0.0, 8, 8)]
        assert (
            check_targets([], [], [*zero, ReliableRow("ppp", "ppp", "ppqueue", 1, 9, 8, 8)]) == []
        )
        res = check_targets([], [], rows)
        assert [m for _, m in res] == [True, False]  # 0.50x met, 0.62x missed; no ppqueue row
        assert res[0][0].startswith(
            "MDP/0.2 (majortomo peers): greenzmq CPU/request <= 0.6x majortomo's: 0.50x"
        )
        assert "req/s 1.20x" in res[0][0]
        table = reliable_table(rows)
        assert table[2] == (
            "| MDP/0.2 (majortomo peers) | greenzmq | 3000 | 1.20 | 50.0 | 0.50 | 4000/4000 |"
        )
        assert table[6] == "| PPP (zguide peers) | greenzmq | 3000 | - | 50.0 | - | 4000/4000 |"

    def test_floor_is_no_anchor(self) -> None:
        """The minimal queue is a floor: reported beside the target, never taken as the anchor."""
        rows = [
            ReliableRow("ppp", "ppp", "greenzmq", 3000.0, 90.0, 4000, 4000),
            ReliableRow("ppp", "ppp", "minimal", 3500.0, 75.0, 4000, 4000),
            ReliableRow("ppp", "ppp", "ppqueue", 3000.0, 100.0, 4000, 4000),
        ]
        ((text, met),) = check_targets([], [], rows)
        assert not met
        assert "0.90x (90.0 against 100.0 us" in text
        assert text.endswith("the minimal Python floor is 0.75x ppqueue's")
        table = reliable_table(rows)
        assert table[3] == (
            "| PPP (zguide peers) | minimal (floor) | 3500 | 1.17 | 75.0 | 0.75 | 4000/4000 |"
        )

    @pytest.mark.parametrize(
        ("argv", "error"),
        [
            (["--only", "mdp,zmq"], "unknown suite 'zmq' (one of broker, mux, mdp, ppp)"),
            (["--only", ","], "unknown suite (none) (one of broker, mux, mdp, ppp)"),
            (["--mdp-kinds", "greenzmq,zbroker"], "unknown Majordomo kind 'zbroker' (one of"),
            (
                ["--ppp-kinds", "lpqueue"],
                "unknown PPP kind 'lpqueue' (one of greenzmq, ppqueue, minimal)",
            ),
            (["--calls", "0"], "--calls must be at least 1"),
        ],
    )
    def test_bad_reliable_options(
        self, argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad suite, kind or count: one line on stderr, exit 2, nothing run."""
        assert main(argv) == 2
        cap = capsys.readouterr()
        assert cap.out == ""
        lines = cap.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"greenzmq bench: error: {error}")

    def test_mdp02_needs_majortomo(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without majortomo the MDP/0.2 runs are refused up front; MDP/0.1 alone is not."""
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "majortomo" else real(n, *a)
        )
        assert main(["--only", "mdp", "--mdp-kinds", "greenzmq"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("greenzmq bench: error: the MDP/0.2 runs need majortomo")
        assert main(["--only", "mdp", "--mdp-kinds", "greenzmq,mdbroker", "--calls", "0"]) == 2
        assert capsys.readouterr().err == "greenzmq bench: error: --calls must be at least 1\n"

    def test_a_round_fails_unless_every_request_is_answered(self) -> None:
        """reliable.py fails the run (SystemExit, exit 1) on one unanswered request."""
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "reliable_under_test", find_bench_dir(None) / "reliable.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ok = [{"answered": 3, "sent": 3, "seconds": 0.1}] * 2
        assert mod.check_answered("ppp/ppqueue", ok, 6) == 6
        with pytest.raises(SystemExit, match=r"^ppp/greenzmq: 5 of 6 requests answered$"):
            mod.check_answered("ppp/greenzmq", [ok[0], {"answered": 2, "sent": 3}], 6)
        with pytest.raises(SystemExit, match=r"3 of 6 requests answered \(no warm-up reply"):
            mod.check_answered("mdp01/mdbroker", [ok[0], {"error": "no warm-up reply"}], 6)
