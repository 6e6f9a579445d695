"""Broker anchors: ROUTER/DEALER brokers of several kinds under the same load, in one run.

Copied from the project's shared reference ``shared/bench/broker_anchors.py``
(the anchor definitions of issue 2 section 10 and issue 5) so the repository
carries its own benchmark. Changes to the copy, all applying to every kind alike:
  * the client varies the body per request (an 8-digit counter, then padding),
    so hop keys differ and ``--trace-sample 0.01`` samples 1% of the messages
    instead of all or none of them;
  * ``--json`` prints one JSON object per kind with every round's numbers
    (``greenzmq bench`` reads it);
  * the port base defaults to a random one below Linux's ephemeral range
    (32768+), where other processes' "free port" picks cannot collide.

usage:
  python broker_anchors.py [-n REQUESTS] [-w WINDOW] [-s SIZE] [-r ROUNDS] KIND...

KIND is one of the built-in brokers below, or 'cmd=SHELL COMMAND' where the
command starts a broker whose frontend (ROUTER) binds {fe} and whose backend
(DEALER) binds {be}; both placeholders are filled with tcp://127.0.0.1 ports.

Load: one Python client keeps WINDOW requests of SIZE bytes in flight through a
DEALER on the frontend; an echo worker (libzmq's own proxy loop over one DEALER
socket, i.e. C speed) answers on the backend. With -w 1 the figure is the
round-trip latency.

Prints, per kind: requests/s (best round), the broker's CPU microseconds per
request (whole process tree, counted after the warm-up, lowest round), p50/p99 round trip in
microseconds, and the throughput ratio to the first kind given.

Built-in kinds:
  proxy           libzmq zmq.proxy (C loop): the limit for one broker process
  pypoll          plain pyzmq Poller, one message per ready socket (the tutorial's loop)
  pypoll_drain    plain pyzmq Poller, NOBLOCK drain per ready socket
  green_poll      zmq.green Poller, the tutorial's loop on green sockets
  green_shadow    zmq.green Poller to wait, raw shadow sockets to drain
  green_tasks     two greenlets, one per direction (the tutorial's 'broken broker')
  asyncio         zmq.asyncio Poller
"""
import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def broker(kind, fe_addr, be_addr):
    if kind == "asyncio":
        return asyncio_broker(fe_addr, be_addr)
    if kind.startswith("green"):
        import zmq.green as zmq
    else:
        import zmq
    ctx = zmq.Context()
    fe = ctx.socket(zmq.ROUTER)
    be = ctx.socket(zmq.DEALER)
    for s in (fe, be):
        s.sndhwm = s.rcvhwm = 100000
    fe.bind(fe_addr)
    be.bind(be_addr)
    if kind == "proxy":
        zmq.proxy(fe, be)
        return
    if kind == "green_tasks":
        import gevent

        def pump(a, b):
            while True:
                b.send_multipart(a.recv_multipart())

        gevent.joinall([gevent.spawn(pump, fe, be), gevent.spawn(pump, be, fe)])
        return
    drain = kind in ("pypoll_drain", "green_shadow")
    if kind == "green_shadow":
        import zmq as raw

        rfe, rbe = raw.Socket.shadow(fe.underlying), raw.Socket.shadow(be.underlying)
    else:
        rfe, rbe = fe, be
    poller = zmq.Poller()
    poller.register(fe, zmq.POLLIN)
    poller.register(be, zmq.POLLIN)
    NB, Again = zmq.NOBLOCK, zmq.Again
    pairs = ((be, fe, rbe, rfe), (fe, be, rfe, rbe))
    while True:
        ready = dict(poller.poll())
        for src, dst, rsrc, rdst in pairs:
            if src not in ready:
                continue
            if not drain:
                dst.send_multipart(src.recv_multipart())
                continue
            for _ in range(256):
                try:
                    m = rsrc.recv_multipart(NB)
                except Again:
                    break
                try:
                    rdst.send_multipart(m, NB)
                except Again:
                    dst.send_multipart(m)


def asyncio_broker(fe_addr, be_addr):
    import asyncio

    import zmq
    import zmq.asyncio

    async def main():
        ctx = zmq.asyncio.Context()
        fe = ctx.socket(zmq.ROUTER)
        be = ctx.socket(zmq.DEALER)
        fe.bind(fe_addr)
        be.bind(be_addr)
        poller = zmq.asyncio.Poller()
        poller.register(fe, zmq.POLLIN)
        poller.register(be, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if be in ready:
                await fe.send_multipart(await be.recv_multipart())
            if fe in ready:
                await be.send_multipart(await fe.recv_multipart())

    asyncio.run(main())


def echo(be_addr):
    import zmq

    s = zmq.Context().socket(zmq.DEALER)
    s.sndhwm = s.rcvhwm = 100000
    s.connect(be_addr)
    zmq.proxy(s, s)  # libzmq echoes when frontend is backend


def client(fe_addr, n, window, size, on_start=lambda: None):
    import zmq

    s = zmq.Context().socket(zmq.DEALER)
    s.sndhwm = s.rcvhwm = 100000
    s.linger = 0
    s.connect(fe_addr)
    pad = b"x" * max(0, size - 8)
    s.send_multipart([b"", b"%08d" % 0 + pad])
    if not s.poll(30000):
        raise SystemExit(f"no reply through {fe_addr} within 30 s: is the broker up?")
    s.recv_multipart()
    on_start()
    lat = []
    t0 = time.perf_counter()
    sent = recvd = 0
    stamps = {}
    while recvd < n:
        while sent < n and sent - recvd < window:
            stamps[sent] = time.perf_counter()
            s.send_multipart([b"", b"%08d" % sent + pad])
            sent += 1
        if not s.poll(30000):
            raise SystemExit(f"broker stalled after {recvd} replies")
        s.recv_multipart()
        lat.append(time.perf_counter() - stamps.pop(recvd))
        recvd += 1
    dt = time.perf_counter() - t0
    lat.sort()
    return n / dt, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def tree_cpu(root):
    """CPU seconds (user+sys) of a process and all its descendants."""
    children, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(pid))
        cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def run_kind(kind, n, window, size, port):
    fe, be = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
    if kind.startswith("cmd="):
        cmd = kind[4:].format(fe=fe, be=be)
        b = subprocess.Popen(shlex.split(cmd), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        b = subprocess.Popen([sys.executable, HERE, "_broker", kind, fe, be], start_new_session=True)
    w = subprocess.Popen([sys.executable, HERE, "_echo", be], start_new_session=True)
    cpu0 = []
    try:
        rps, p50, p99 = client(fe, n, window, size, lambda: cpu0.append(tree_cpu(b.pid)))
        cpu = tree_cpu(b.pid) - cpu0[0]
    finally:
        for p in (b, w):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    return rps, cpu * 1e6 / n, p50, p99


def main():
    if sys.argv[1:2] == ["_broker"]:
        return broker(*sys.argv[2:])
    if sys.argv[1:2] == ["_echo"]:
        return echo(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100000, help="requests per round")
    ap.add_argument("-w", type=int, default=64, help="requests in flight")
    ap.add_argument("-s", type=int, default=100, help="body size in bytes")
    ap.add_argument("-r", type=int, default=2, help="rounds (kinds interleaved)")
    ap.add_argument("--port", type=int, default=0, help="first port (default: random)")
    ap.add_argument("--json", action="store_true", help="one JSON object per kind")
    ap.add_argument("kinds", nargs="+")
    a = ap.parse_args()
    res, port = {}, a.port or random.randrange(20000, 32000, 2)
    for _ in range(a.r):
        for k in a.kinds:
            port += 2
            res.setdefault(k, []).append(run_kind(k, a.n, a.w, a.s, port))
    if a.json:
        for k in a.kinds:
            rounds = [dict(zip(("rps", "cpu_us", "p50_us", "p99_us"), r)) for r in res[k]]
            print(json.dumps({"kind": k, "n": a.n, "window": a.w, "size": a.s, "rounds": rounds}))
        return
    base = max(r[0] for r in res[a.kinds[0]])
    for k in a.kinds:
        v = res[k]
        best = max(r[0] for r in v)
        print(f"{k[:40]:40s} req/s={best:9.0f} broker_cpu_us/req={min(r[1] for r in v):6.1f} "
              f"p50_us={min(r[2] for r in v):7.0f} p99_us={min(r[3] for r in v):7.0f} "
              f"ratio={best / base:.2f}")


if __name__ == "__main__":
    main()
