"""greenzmq trace: hop logs joined into paths, per-hop latency, stopped messages, timelines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from greenzmq import message_key
from greenzmq.tools.trace import build_paths, hop_latencies, load_hops, main, stopped

from .helpers import ROOT, ServiceProcess

K = message_key([b"3"])
R = message_key([b"9"])
T0 = 1_800_000_000.0


def hop(
    ts: float, key: str, op: str, service: str, pid: int, socket: str, sock_type: str, **extra: Any
) -> dict[str, Any]:
    """One hop event as the services log it (JSON fields of greenzmq.core.tracing)."""
    ev = {
        "event": "hop",
        "level": "info",
        "timestamp": T0 + ts,
        "key": key,
        "op": op,
        "service": service,
        "pid": pid,
        "socket": socket,
        "sock_type": sock_type,
        "frames": 1,
        "bytes": 1,
    }
    ev.update(extra)
    return ev


def write(path: Path, events: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path)


def request_reply(t: float, key: str = K, reply: str = R, pid: int = 10) -> dict[str, list[Any]]:
    """One request and its reply across client, broker and worker logs (ms offsets)."""
    ms = 1e-3
    return {
        "client": [
            hop(t + 0.2 * ms, key, "send", "client", pid, "frontend", "REQ"),
            hop(t + 3.0 * ms, reply, "recv", "client", pid, "frontend", "REQ", reply_to=key),
        ],
        "broker": [
            # logged before the client's send: the client logs after its send returns
            hop(t + 0.1 * ms, key, "forward", "broker", 20, "frontend", "ROUTER", dest="backend"),
            hop(t + 2.5 * ms, reply, "forward", "broker", 20, "backend", "DEALER", dest="frontend"),
        ],
        "worker": [
            hop(t + 0.6 * ms, key, "recv", "worker", 30, "backend", "REP"),
            hop(t + 2.6 * ms, reply, "send", "worker", 30, "backend", "REP", reply_to=key),
        ],
    }


def logs(tmp_path: Path, *groups: dict[str, list[Any]]) -> list[str]:
    merged: dict[str, list[Any]] = {}
    for g in groups:
        for name, evs in g.items():
            merged.setdefault(name, []).extend(evs)
    return [write(tmp_path / f"{name}.log", evs) for name, evs in merged.items()]


class TestPaths:
    def test_request_and_reply_are_one_path_in_causal_order(self, tmp_path: Path) -> None:
        """A request and its reply (joined by reply_to) form one path, ordered send to recv."""
        hops, skipped = load_hops(logs(tmp_path, request_reply(0.0)))
        paths = build_paths(hops)
        assert skipped == 0
        assert len(paths) == 1
        p = paths[0]
        assert p.keys == [K, R]
        assert [(h.service, h.op) for h in p.hops] == [
            ("client", "send"), ("broker", "forward"), ("worker", "recv"),
            ("worker", "send"), ("broker", "forward"), ("client", "recv"),
        ]  # fmt: skip
        assert stopped(p) is None

    def test_hop_with_a_bad_field_is_skipped(self, tmp_path: Path) -> None:
        """A hop whose pid is not an integer or reply_to not a string is skipped, not a crash."""
        good = hop(0.0, K, "send", "client", 10, "frontend", "REQ")
        bad = {**hop(0.1, K, "recv", "worker", 20, "backend", "REP"), "pid": "x"}
        worse = hop(0.2, R, "recv", "client", 10, "frontend", "REQ", reply_to=[K])
        hops, skipped = load_hops([write(tmp_path / "a.log", [good, bad, worse])])
        assert [h.pid for h in hops] == [10]
        assert skipped == 2
        assert len(build_paths(hops)) == 1

    def test_same_body_again_is_a_new_message(self, tmp_path: Path) -> None:
        """The same request body sent twice, one after the other, gives two paths."""
        files = logs(tmp_path, request_reply(0.0), request_reply(0.010))
        paths = build_paths(load_hops(files)[0])
        assert len(paths) == 2
        assert all(len(p.hops) == 6 and stopped(p) is None for p in paths)

    def test_reply_with_the_request_body(self, tmp_path: Path) -> None:
        """An echo (reply body == request body) still splits into request then reply."""
        paths = build_paths(load_hops(logs(tmp_path, request_reply(0.0, reply=K)))[0])
        assert len(paths) == 1
        assert [h.op for h in paths[0].hops][:3] == ["send", "forward", "recv"]
        assert paths[0].hops[-1].op == "recv" and paths[0].hops[-1].service == "client"
        assert stopped(paths[0]) is None

    def test_two_origins_are_two_messages(self, tmp_path: Path) -> None:
        """The same body sent by two producers (PUB and PUSH) is two messages, each received."""
        evs = [
            hop(0.000, K, "send", "weather", 1, "updates", "PUB"),
            hop(0.001, K, "recv", "listener", 3, "weather", "SUB"),
            hop(0.002, K, "recv", "listener", 3, "tasks", "PULL"),  # logged before its sender
            hop(0.003, K, "send", "ventilator", 2, "tasks", "PUSH"),
        ]
        paths = build_paths(load_hops([write(tmp_path / "all.log", evs)])[0])
        assert sorted([(h.service, h.socket) for h in p.hops] for p in paths) == [
            [("ventilator", "tasks"), ("listener", "tasks")],
            [("weather", "updates"), ("listener", "weather")],
        ]

    def test_per_hop_latency(self, tmp_path: Path) -> None:
        """Latency from hop to hop: broker forward -> worker recv is 0.5 ms on every path."""
        groups = [request_reply(i * 0.01, message_key([b"%d" % i]), message_key([b"r%d" % i]))
                  for i in range(20)]  # fmt: skip
        lat = hop_latencies(build_paths(load_hops(logs(tmp_path, *groups))[0]))
        fwd = lat[("broker/frontend forward", "worker/backend recv")]
        assert len(fwd) == 20
        assert all(abs(v - 0.5e-3) < 1e-6 for v in fwd)
        # the client logs its send after the broker's forward: clamped to 0, never negative
        assert lat[("client/frontend send", "broker/frontend forward")] == [0.0] * 20


def ppp_request(t: float, *, retry: bool = False, key: str = K, reply: str = R) -> list[Any]:
    """A LazyPirate request through a PPP queue (pids: client 10, queue 20, worker 30),
    logged the way processes race: the queue's recv before the client's send, the
    worker's recv before the queue's dispatch. ``retry``: the first try went to a
    broker that never answered."""
    ms = 1e-3
    c, q, w = ("client", 10, "lazypirate", "DEALER"), ("ppqueue", 20), ("ppworker", 30)
    evs = [hop(t, key, "send", *c, attempt=1)]
    if retry:
        t += 300 * ms
        evs.append(hop(t, key, "retry", *c, attempt=2))
    evs += [
        hop(t + 0.05 * ms, key, "recv", *q, "frontend", "ROUTER"),
        hop(t + 0.40 * ms, key, "recv", *w, "backend", "DEALER"),
        hop(t + 0.41 * ms, key, "dispatch", *q, "backend", "ROUTER", attempt=1),
        hop(t + 0.80 * ms, reply, "send", *w, "backend", "DEALER", reply_to=key),
        hop(t + 0.90 * ms, reply, "recv", *q, "backend", "ROUTER"),
        hop(t + 0.95 * ms, reply, "forward", *q, "frontend", "ROUTER"),
        hop(t + 1.20 * ms, reply, "recv", *c, reply_to=key),
    ]
    return evs


class TestReliablePatterns:
    def test_queue_hops_in_causal_order(self, tmp_path: Path) -> None:
        """Receive before dispatch in the queue, the client's send first, whatever the log
        order across processes."""
        (p,) = build_paths(load_hops([write(tmp_path / "a.log", ppp_request(0.0))])[0])
        assert [h.where for h in p.hops] == [
            "client/lazypirate send", "ppqueue/frontend recv", "ppqueue/backend dispatch",
            "ppworker/backend recv", "ppworker/backend send", "ppqueue/backend recv",
            "ppqueue/frontend forward", "client/lazypirate recv",
        ]  # fmt: skip
        assert stopped(p) is None

    def test_retry_is_on_the_same_path(self, tmp_path: Path) -> None:
        """A retry (attempt 2) and the hops after it join the first try's path."""
        evs = ppp_request(0.0, retry=True) + ppp_request(1.0)  # the same body again, later
        paths = build_paths(load_hops([write(tmp_path / "a.log", evs)])[0])
        assert len(paths) == 2
        first = paths[0]
        assert [h.where for h in first.hops][:3] == [
            "client/lazypirate send", "client/lazypirate retry", "ppqueue/frontend recv",
        ]  # fmt: skip
        assert first.hops[1].extra["attempt"] == 2
        assert len(first.hops) == 9 and stopped(first) is None
        assert len(paths[1].hops) == 8 and stopped(paths[1]) is None
        lat = hop_latencies(paths)
        assert lat[("client/lazypirate send", "client/lazypirate retry")] == [pytest.approx(0.3)]

    def test_relay_logs_after_the_requester(self, tmp_path: Path) -> None:
        """The queue logs its forward after the client logged the reply's receipt: one path."""
        evs = ppp_request(0.0)
        forward, recv = evs[-2], evs[-1]
        forward["timestamp"], recv["timestamp"] = recv["timestamp"], forward["timestamp"]
        (p,) = build_paths(load_hops([write(tmp_path / "a.log", evs)])[0])
        assert [h.where for h in p.hops][-2:] == [
            "ppqueue/frontend forward", "client/lazypirate recv",
        ]  # fmt: skip
        assert stopped(p) is None

    def test_request_without_reply_has_stopped(self, tmp_path: Path) -> None:
        """A retrying client's request that a DEALER worker took and never answered."""
        evs = ppp_request(0.0)[:4]
        (p,) = build_paths(load_hops([write(tmp_path / "a.log", evs)])[0])
        assert p.last.where == "ppworker/backend recv"
        assert stopped(p) == "no reply after recv at ppworker/backend"


class TestStopped:
    def test_lost_after_forward(self, tmp_path: Path) -> None:
        """A request the broker forwarded that no worker logged is listed with its last hop."""
        g = request_reply(0.0)
        g["worker"], g["client"] = [], g["client"][:1]
        g["broker"] = g["broker"][:1]
        paths = build_paths(load_hops(logs(tmp_path, g))[0])
        assert [stopped(p) for p in paths] == ["not seen after forward"]

    def test_rep_without_reply(self, tmp_path: Path) -> None:
        """A request a REP worker received but never answered has stopped."""
        g = request_reply(0.0)
        g["worker"] = g["worker"][:1]
        g["broker"] = g["broker"][:1]
        g["client"] = g["client"][:1]
        (p,) = build_paths(load_hops(logs(tmp_path, g))[0])
        assert stopped(p) == "no reply after recv on REP"

    def test_drop_with_reason(self, tmp_path: Path) -> None:
        """A dropped message is stopped with the drop's reason."""
        ev = hop(0.0, K, "drop", "broker", 20, "frontend", "ROUTER", reason="no envelope")
        (p,) = build_paths(load_hops([write(tmp_path / "b.log", [ev])])[0])
        assert stopped(p) == "dropped: no envelope"


class TestCommand:
    def test_report(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The report counts messages, has the latency table, and lists the stopped one."""
        lost = request_reply(0.1, message_key([b"7"]), message_key([b"49"]))
        lost["worker"], lost["client"], lost["broker"] = [], lost["client"][:1], lost["broker"][:1]
        files = logs(tmp_path, request_reply(0.0), lost)
        (tmp_path / "client.log").open("a").write("not json\n")
        assert main(files) == 0
        out = capsys.readouterr().out
        assert "2 messages: 1 arrived, 1 stopped" in out
        assert "| broker/frontend forward | worker/backend recv | 1 | 0.500 |" in out
        assert f"{message_key([b'7'])}  not seen after forward; last hop broker/frontend" in out
        assert "(1 lines were not JSON events and were skipped)" in out

    def test_key_timeline(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--key (a prefix is enough) prints every hop in order with the time at each."""
        assert main([*logs(tmp_path, request_reply(0.0)), "--key", K[:6]]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"message {K} -> reply {R} (6 hops)"
        assert "(+0.500)  worker[30] backend REP recv" in lines[3]
        assert lines[-1] == "  => arrived"

    def test_bad_input(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown key exits 1, a missing file or a negative limit 2, each in one line."""
        files = logs(tmp_path, request_reply(0.0))
        assert main([*files, "--key", "ffffffff"]) == 1
        assert main([str(tmp_path / "missing.log")]) == 2
        assert main([*files, "--limit", "-1"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("greenzmq trace: no message with key 'ffffffff'")
        assert err[1].startswith("greenzmq trace: error: cannot read")
        assert err[2:] == ["greenzmq trace: error: --limit must not be negative, got -1"]


HEX32, HEX16 = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{16}")


class TestExports:
    """--otlp, --chrome, --slowest, --plot: the formats' structure, checked field by field."""

    def two_paths(self, tmp_path: Path) -> list[str]:
        slow = request_reply(0.1, message_key([b"7"]), message_key([b"49"]))
        slow["client"][1]["timestamp"] += 0.050  # 50 ms between the broker's and the client's
        return logs(tmp_path, request_reply(0.0), slow)

    def test_otlp(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """OTLP/JSON: a trace per message, a root span and a span per hop interval, hex ids of
        the right lengths, times as nanosecond strings, parents inside their trace."""
        out = tmp_path / "spans.json"
        assert main([*self.two_paths(tmp_path), "--otlp", str(out)]) == 0
        assert f"wrote OpenTelemetry spans (OTLP/JSON) of 2 messages to {out}" in (
            capsys.readouterr().out
        )
        doc = json.loads(out.read_text())
        assert set(doc) == {"resourceSpans"}
        spans: list[dict[str, Any]] = []
        services = set()
        for rs in doc["resourceSpans"]:
            attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            services.add(attrs["service.name"]["stringValue"])
            assert attrs["process.pid"]["intValue"].isdigit()
            (scope,) = rs["scopeSpans"]
            assert scope["scope"]["name"] == "greenzmq.trace"
            spans += scope["spans"]
        assert services == {"client", "broker", "worker"}
        traces: dict[str, list[dict[str, Any]]] = {}
        for sp in spans:
            assert HEX32.fullmatch(sp["traceId"]) and HEX16.fullmatch(sp["spanId"])
            assert sp["kind"] == 1 and sp["name"]
            start, end = sp["startTimeUnixNano"], sp["endTimeUnixNano"]
            assert start.isdigit() and end.isdigit() and int(start) <= int(end)
            traces.setdefault(sp["traceId"], []).append(sp)
        assert len(traces) == 2
        for tspans in traces.values():
            ids = {sp["spanId"] for sp in tspans}
            assert len(ids) == len(tspans) == 6  # the root and 5 intervals between 6 hops
            roots = [sp for sp in tspans if "parentSpanId" not in sp]
            assert len(roots) == 1
            assert all(
                sp["parentSpanId"] == roots[0]["spanId"] for sp in tspans if sp is not roots[0]
            )
            root_start, root_end = (
                int(roots[0]["startTimeUnixNano"]),
                int(roots[0]["endTimeUnixNano"]),
            )
            assert all(
                root_start <= int(sp["startTimeUnixNano"]) <= int(sp["endTimeUnixNano"]) <= root_end
                for sp in tspans
            )

    def test_chrome(self, tmp_path: Path) -> None:
        """Trace Event Format: complete events in microseconds, a name for every process."""
        out = tmp_path / "trace.json"
        assert main([*self.two_paths(tmp_path), "--chrome", str(out)]) == 0
        doc = json.loads(out.read_text())
        events = doc["traceEvents"]
        boxes = [e for e in events if e["ph"] == "X"]
        names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
        assert len(boxes) == 10 and names == {10: "client", 20: "broker", 30: "worker"}
        for e in boxes:
            assert e["pid"] in names and e["dur"] >= 0 and e["ts"] > T0 * 1e6
            assert set(e) == {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
        slowest = max(boxes, key=lambda e: e["dur"])
        assert slowest["name"] == "broker/backend forward -> client/frontend recv"
        assert 50_000 < slowest["dur"] < 51_000

    def test_slowest(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--slowest 1: the slower message, and where its time went."""
        assert main([*self.two_paths(tmp_path), "--slowest", "1"]) == 0
        out = capsys.readouterr().out.splitlines()
        i = out.index("slowest 1 of 2 paths (ms)")
        row = out[i + 3]
        assert row.startswith(f"| {message_key([b'7'])} | 52.800 | 6 |")
        assert "| broker/backend forward -> client/frontend recv | 50.5" in row

    def test_plot(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--plot writes a PNG with matplotlib (tox's py311 has it), else one line, exit 2."""
        out = tmp_path / "lat.png"
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            assert main([*self.two_paths(tmp_path), "--plot", str(out)]) == 2
            assert (
                "--plot needs matplotlib: pip install 'greenzmq[plot]'" in capsys.readouterr().err
            )
            assert not out.exists()
        else:
            assert main([*self.two_paths(tmp_path), "--plot", str(out)]) == 0
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_bad_exports(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A negative --slowest or an unwritable file: one line, exit 2."""
        files = self.two_paths(tmp_path)
        assert main([*files, "--slowest", "-2"]) == 2
        assert main([*files, "--otlp", str(tmp_path / "no" / "such" / "dir.json")]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "greenzmq trace: error: --slowest must not be negative, got -2"
        assert err[1].startswith("greenzmq trace: error: cannot write ")


@pytest.mark.slow
class TestRealLogs:
    @pytest.mark.deadline(60)
    def test_broker_worker_client(
        self, service: Callable[..., ServiceProcess], endpoint: Callable[[], str]
    ) -> None:
        """Real JSON logs of broker, worker and client: 6 requests, every path arrives."""
        eps = {n: endpoint() for n in ("frontend", "backend", "kill")}
        broker = service(
            "services.broker:app", *(a for n in eps for a in ("--endpoint", f"{n}={eps[n]}"))
        )
        worker = service("services.worker:app", "--endpoint", f"backend={eps['backend']}",
                         "--endpoint", f"kill={eps['kill']}")  # fmt: skip
        broker.wait_started()
        worker.wait_started()
        client = service("services.client:app(i=6)", "--endpoint", f"frontend={eps['frontend']}")
        assert client.wait(30) == 0, client.output()
        worker.wait_event("hop", op="send", key=message_key([b"36"]))
        broker.wait_event("hop", op="forward", key=message_key([b"36"]))
        files = [str(p.log) for p in (broker, worker, client)]
        out = subprocess.run(
            [sys.executable, "-m", "greenzmq", "trace", *files],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "36 hops, 6 messages: 6 arrived, 0 stopped" in out
        # 4 -> 16 and 2 -> 4: a reply body that is also a request body stays apart
        one = subprocess.run(
            [sys.executable, "-m", "greenzmq", "trace", *files, "--key", message_key([b"4"])],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
        heads = [line for line in one if line.startswith("message")]
        assert sorted(heads) == sorted([
            f"message {message_key([b'2'])} -> reply {message_key([b'4'])} (6 hops)",
            f"message {message_key([b'4'])} -> reply {message_key([b'16'])} (6 hops)",
        ])  # fmt: skip
