"""What ``--metrics`` costs, piece by piece, in-process (no zmq traffic, no noise from peers).

usage: python greenzmq/tools/benchmarks/metrics_cost.py

- per request, always on (the engine's latency histogram): a ``time.monotonic()``
  in ``Job()`` and one ``Histogram.observe``;
- per worker every 0.5 s with ``--metrics``: the stats snapshot, encoded;
- in the master: parsing one worker's line, and one scrape (4 workers).

The end-to-end comparison is ``reliable.py ppp/greenzmq ppp/greenzmq+metrics``.
"""

from __future__ import annotations

import json
import time
import timeit

import orjson

from greenzmq.core.stats import Stats
from greenzmq.launcher import protocol
from greenzmq.launcher.metrics import Metrics
from greenzmq.patterns._engine import Job

# a PPP queue-like Stats: 3 sockets, drops, engine gauges, histogram, services table
st = Stats("ppqueue")
for n, t in (("frontend", "ROUTER"), ("backend", "ROUTER"), ("kill", "SUB")):
    c = st.socket(n, t)
    c.add_in(123456, 0)
    c.add_out(12345, 0)
st.socket("frontend").drop("no envelope delimiter", 3)
for g in ("workers:idle", "workers:busy", "pending", "workers:expired", "requests:requeued"):
    st.gauge(g, lambda: 2)
h = st.histogram("request_latency")
for i in range(1000):
    h.observe(i * 1e-5)
st.table("services", lambda: {"default": {"idle": 2, "busy": 0, "pending": 0}})
N = 20000
snap_us = timeit.timeit(lambda: protocol.stats(orjson.dumps(st.snapshot())), number=N) / N * 1e6
line = protocol.stats(orjson.dumps(st.snapshot()))
parse_us = timeit.timeit(lambda: protocol.parse(line[:-1].decode()), number=N) / N * 1e6
m = Metrics()
for pid in range(4):
    m.update(pid, json.loads(line[6:]))
scrape_us = timeit.timeit(m.exposition, number=2000) / 2000 * 1e6
obs_us = timeit.timeit(lambda: h.observe(0.0012), number=10**6)
mono_us = timeit.timeit(time.monotonic, number=10**6)
job_us = timeit.timeit(lambda: Job(b"c", b"", [b"x"]), number=10**6)
print(f"worker snapshot+encode: {snap_us:.1f} us ({len(line)} bytes), every 0.5 s")
print(f"master parse of one line: {parse_us:.1f} us")
print(f"scrape of 4 workers (exposition): {scrape_us:.0f} us ({len(m.exposition())} bytes)")
print(
    f"per request, always on: histogram observe {obs_us:.3f} us"
    f" + time.monotonic {mono_us:.3f} us (Job() total {job_us:.3f} us)"
)
