# ruff: noqa
"""Anchor consumers for the multi-socket receive pattern (tutorial case 1).

Copied from the project's shared reference ``shared/bench/mux_anchors.py``
(the anchor definitions of issue 5) so the repository carries its own
benchmark; ``mux.py`` beside it runs these consumers beside greenzmq's
Readers and PollerListener, one fresh process per run. The definitions below
are unchanged.


Three producer processes PUSH N messages each (100 bytes) to three PULL
sockets of one consumer; the consumer takes every message into one loop.
Consumer kinds: plain pyzmq Poller, zmq.green Poller, one greenlet per socket
feeding a gevent Queue (naive and shadow-drain), threads + queue.Queue,
asyncio tasks + asyncio.Queue. Prints msgs/s and consumer CPU-us per message.
usage: python mux_anchors.py N KINDS...
"""
import os, sys, time, subprocess, resource
HERE = os.path.abspath(__file__)

def producer(addr, n):
    import zmq
    s = zmq.Context().socket(zmq.PUSH); s.sndhwm = 0; s.connect(addr)
    body = b"x" * 100
    for _ in range(n): s.send(body)
    s.send(b"END")
    time.sleep(5)

def consume(kind, addrs, n_total):
    if kind in ("plain_poll", "threads"):
        import zmq
    elif kind == "asyncio":
        import zmq, zmq.asyncio
    else:
        import zmq.green as zmq
    got = 0; ends = 0
    if kind == "asyncio":
        import asyncio
        async def main():
            ctx = zmq.asyncio.Context(); q = asyncio.Queue(1000)
            socks = []
            for a in addrs:
                s = ctx.socket(zmq.PULL); s.rcvhwm = 0; s.bind(a); socks.append(s)
            async def reader(s):
                while True:
                    m = await s.recv(); await q.put(m)
                    if m == b"END": return
            ts = [asyncio.create_task(reader(s)) for s in socks]
            ends = 0; got = 0
            while ends < len(addrs):
                m = await q.get()
                if m == b"END": ends += 1
                else: got += 1
            return got
        return asyncio.run(main())
    ctx = zmq.Context(); socks = []
    for a in addrs:
        s = ctx.socket(zmq.PULL); s.rcvhwm = 0; s.bind(a); socks.append(s)
    if kind in ("plain_poll", "green_poll"):
        p = zmq.Poller()
        for s in socks: p.register(s, zmq.POLLIN)
        while ends < len(addrs):
            for s, _ in p.poll():
                m = s.recv()
                if m == b"END": ends += 1
                else: got += 1
        return got
    if kind == "threads":
        import threading, queue
        q = queue.Queue(1000)
        def reader(s):
            while True:
                m = s.recv(); q.put(m)
                if m == b"END": return
        for s in socks: threading.Thread(target=reader, args=(s,), daemon=True).start()
        while ends < len(addrs):
            m = q.get()
            if m == b"END": ends += 1
            else: got += 1
        return got
    import gevent, gevent.queue
    q = gevent.queue.Queue(1000)
    if kind == "green_tasks":
        def reader(s):
            while True:
                m = s.recv(); q.put(m)
                if m == b"END": return
    else:  # green_tasks_drain: block green, then drain raw socket
        import zmq as raw
        def reader(s):
            r = raw.Socket.shadow(s.underlying)
            while True:
                m = s.recv(); q.put(m)
                if m == b"END": return
                while True:
                    try: m = r.recv(raw.NOBLOCK)
                    except raw.Again: break
                    q.put(m)
                    if m == b"END": return
    for s in socks: gevent.spawn(reader, s)
    while ends < len(addrs):
        m = q.get()
        if m == b"END": ends += 1
        else: got += 1
    return got

if __name__ == "__main__":
    if sys.argv[1] == "_prod":
        producer(sys.argv[2], int(sys.argv[3])); sys.exit()
    n = int(sys.argv[1]); kinds = sys.argv[2:]; port = 26000
    for k in kinds:
        addrs = [f"tcp://127.0.0.1:{port+i}" for i in range(3)]; port += 3
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, HERE, "_prod", a, str(n)]) for a in addrs]
        got = consume(k, addrs, 3 * n)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        for p in procs: p.kill(); p.wait()
        assert got == 3 * n, (k, got)
        print(f"{k:18s} msgs/s={got/dt:9.0f} consumer_cpu_us/msg={1e6*cpu/got:6.2f}")
