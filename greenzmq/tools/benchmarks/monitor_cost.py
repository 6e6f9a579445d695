"""What ``--monitor`` costs per connection: a service's CPU, monitor on vs off, in one run.

usage: python greenzmq/tools/benchmarks/monitor_cost.py [CONNECTIONS] [ROUNDS]

A ROUTER echo service (``Service(monitor=...)``) in this process; in another,
a client that CONNECTIONS times connects a REQ socket, sends one request,
reads the reply and closes. Per round (on and off interleaved) it prints
nothing; at the end, the median of the service's CPU per connection
(``os.times`` of this process: the service and its monitor thread), and the
median of the per-round ratios. The logs go to a temporary file.

Per message the monitor costs nothing (libzmq emits events per connection):
that comparison is ``broker_anchors.py`` with ``cmd=`` kinds running
``greenzmq.services.broker:app`` with and without ``--monitor``.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import gevent

from greenzmq import Service, SocketSpec
from greenzmq.core.tracing import configure_logging

CLIENT = """
import sys, zmq
ctx = zmq.Context()
for i in range(int(sys.argv[2])):
    s = ctx.socket(zmq.REQ)
    s.linger = 0
    s.connect(sys.argv[1])
    s.send(b"x")
    s.recv()
    s.close()
"""


class Echo(Service):
    """Replies with the request."""

    def run(self) -> None:
        s = self.socks["clients"]
        while True:
            s.send_multipart(s.recv_multipart())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one(monitor: bool, n: int) -> float:
    """CPU microseconds of this process per connection, for one round."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    svc = Echo(name="echo", specs=[SocketSpec("clients", "ROUTER", bind=(ep,))], monitor=monitor)
    g: Any = gevent.spawn(svc.serve, None, install_signals=False)
    while not svc.socks:
        gevent.sleep(0.01)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, ep, str(n)])
    t0 = os.times()
    while client.poll() is None:
        gevent.sleep(0.005)
    t1 = os.times()
    svc.stop()
    g.get()
    return ((t1.user - t0.user) + (t1.system - t0.system)) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as d:
        configure_logging("monitor-cost", fmt="json", log_file=os.path.join(d, "log"))
        res: dict[bool, list[float]] = {False: [], True: []}
        start = time.strftime("%H:%M UTC", time.gmtime())
        for _ in range(rounds):
            for m in (False, True):
                res[m].append(one(m, n))
    print(f"{start}, {n} connections x {rounds} rounds, load {os.getloadavg()[0]:.1f}")
    for m in (False, True):
        cpu = res[m]
        print(
            f"monitor {'on ' if m else 'off'}: median {statistics.median(cpu):.0f} us CPU per "
            f"connection (rounds {', '.join(f'{c:.0f}' for c in cpu)})"
        )
    ratios = [a / b for a, b in zip(res[True], res[False], strict=True)]
    print(f"on/off, median of the per-round ratios: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
