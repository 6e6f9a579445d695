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
    broker_command,
    broker_table,
    check_targets,
    find_bench_dir,
    kind_label,
    main,
)

from .helpers import ROOT

RATIO = r"\d+\.\d\d"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small run: 2 loads x 4 brokers, 3 consumers, JSON and plot requested."""
    d = tmp_path_factory.mktemp("bench")
    out = subprocess.run(
        [sys.executable, "-m", "greenzmq", "bench", "--requests", "300", "--messages", "300",
         "--rounds", "1", "--scenarios", "64x100B,1x100B",
         "--broker-kinds", "proxy,pypoll,greenzmq,greenzmq@1",
         "--mux-kinds", "plain_poll,readers,poller",
         "--json", str(d / "bench.json"), "--plot", str(d / "bench.png")],
        # from outside the checkout: the scripts ship in the package
        cwd=d, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return {"proc": out, "dir": d}


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

    def test_scripts_ship_in_the_package(self) -> None:
        """By default the scripts come from greenzmq/tools/benchmarks/, not a checkout's folder."""
        import greenzmq.tools

        packaged = Path(greenzmq.tools.__file__).resolve().parent / "benchmarks"
        assert find_bench_dir(None) == packaged
        for name in ("broker_anchors.py", "mux.py", "mux_anchors.py"):
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
