"""Many sockets into one consumer: greenzmq's muxes beside the anchors, in one run.

usage: python greenzmq/tools/benchmarks/mux.py [-n N] [-r ROUNDS] [--json] KIND...

Three producer processes PUSH N messages each (100 bytes, an 8-digit counter
then padding, so hop keys differ and 1% sampling samples 1%) to three PULL
sockets of one consumer process. Every run is a fresh process that imports
everything before it starts counting, so the consumer CPU per message is the
loop's cost, not import time.

Kinds: the anchors of ``mux_anchors.py`` (plain_poll, green_poll,
green_tasks, green_tasks_drain, threads, asyncio), and greenzmq's
``readers`` / ``poller`` (greenzmq.core.mux.Readers / PollerListener) with an
optional tracing suffix: ``readers@0.01`` samples 1% of the hops, ``readers@1``
traces every hop, to a JSON log file in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))

ANCHORS = ("plain_poll", "green_poll", "green_tasks", "green_tasks_drain", "threads", "asyncio")


def producer(addr: str, n: int) -> None:
    """PUSH n numbered 100-byte messages, then END; stay up so nothing is lost."""
    import zmq

    s = zmq.Context().socket(zmq.PUSH)
    s.sndhwm = 0
    s.connect(addr)
    pad = b"x" * 92
    for i in range(n):
        s.send(b"%08d" % i + pad)
    s.send(b"END")
    time.sleep(30)


def consume_greenzmq(kind: str, addrs: list[str], logdir: str) -> int:
    """Take every message through Readers or PollerListener; return the count."""
    from greenzmq.core.mux import PollerListener, Readers
    from greenzmq.core.sockets import Context, SocketSpec
    from greenzmq.core.tracing import Tracer, configure_logging

    base, _, rate = kind.partition("@")
    sample = float(rate or 0)
    log = os.path.join(logdir, f"{base}.log") if sample else os.devnull
    configure_logging("bench", fmt="json", log_file=log, trace_sample=sample)
    tracer = Tracer("bench", sample)
    ctx = Context()
    socks = [ctx.build(SocketSpec(f"in{i}", "PULL", bind=(a,), hwm=0)) for i, a in enumerate(addrs)]
    mux: Any = (
        Readers(socks, tracer=tracer) if base == "readers" else PollerListener(socks, tracer=tracer)
    )
    got = ends = 0
    for _name, frames in mux:
        if frames[0] == b"END":
            ends += 1
            if ends == len(addrs):
                break
        else:
            got += 1
    mux.stop()
    for s in socks:
        s.close(linger=0)
    ctx.term()
    return got


def one(kind: str, n: int, port: int) -> dict[str, Any]:
    """Run one kind in this (fresh) process; the numbers of that run."""
    import asyncio  # noqa: F401 - imported before counting, like every kind's modules
    import queue  # noqa: F401
    import threading  # noqa: F401

    import gevent
    import gevent.queue  # noqa: F401
    import mux_anchors
    import zmq
    import zmq.asyncio
    import zmq.green  # noqa: F401

    import greenzmq.core.mux
    import greenzmq.core.sockets
    import greenzmq.core.tracing  # noqa: F401

    addrs = [f"tcp://127.0.0.1:{port + i}" for i in range(3)]
    with tempfile.TemporaryDirectory(prefix="greenzmq-bench-") as logdir:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, HERE, "_prod", a, str(n)]) for a in addrs]
        try:
            if kind in ANCHORS:
                got = mux_anchors.consume(kind, addrs, 3 * n)
            else:
                got = consume_greenzmq(kind, addrs, logdir)
            dt = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    if got != 3 * n:
        raise SystemExit(f"{kind}: {got} of {3 * n} messages")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"msgs_s": got / dt, "cpu_us": 1e6 * cpu / got}


def main() -> None:
    """Run every kind ROUNDS times (interleaved), each in a fresh process."""
    if sys.argv[1:2] == ["_prod"]:
        producer(sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["_one"]:
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=100000, help="messages per producer (3 producers)")
    ap.add_argument("-r", type=int, default=2, help="rounds (kinds interleaved)")
    ap.add_argument("--port", type=int, default=0, help="first port (default: random)")
    ap.add_argument("--json", action="store_true", help="one JSON object per kind")
    ap.add_argument("kinds", nargs="+")
    a = ap.parse_args()
    port = a.port or random.randrange(20000, 32000, 3)
    res: dict[str, list[dict[str, Any]]] = {}
    for _ in range(a.r):
        for k in a.kinds:
            port += 3
            out = subprocess.run(
                [sys.executable, HERE, "_one", k, str(a.n), str(port)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            res.setdefault(k, []).append(json.loads(out.strip().splitlines()[-1]))
    for k in a.kinds:
        v = res[k]
        if a.json:
            print(json.dumps({"kind": k, "n": a.n, "rounds": v}))
        else:
            print(
                f"{k:20s} msgs/s={max(r['msgs_s'] for r in v):9.0f} "
                f"consumer_cpu_us/msg={min(r['cpu_us'] for r in v):6.2f}"
            )


if __name__ == "__main__":
    main()
