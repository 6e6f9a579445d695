"""Anchors and peers of the Majordomo and Paranoid Pirate suites (``reliable.py``).

Written for greenzmq, after the zguide's Python examples (``mdbroker.py``,
``mdcliapi.py``, ``mdwrkapi.py``, ``ppqueue.py``, ``ppworker.py``,
``lpclient.py``, examples/Python in github.com/booksbyus/zguide): the same
algorithms, reduced to what a benchmark runs. No code is copied from there.
Kept close to the zguide's shape on purpose (one blocking ``zmq.Poller``
loop, lists, no batching) so that the anchors stay what the issue compares
against; for that reason this file is not held to strict typing.

Run as a script, one role per process (``reliable.py`` starts them)::

  python reliable_anchors.py broker mdbroker ENDPOINT
  python reliable_anchors.py broker ppqueue|minimal FRONTEND BACKEND
  python reliable_anchors.py worker mdp01|mdp02|ppp ENDPOINT
  python reliable_anchors.py client mdp01|mdp02|ppp ENDPOINT N TIMEOUT

Brokers:
  mdbroker   after the zguide's mdbroker.py (MDP/0.1): a services dict, a
             request list and waiting-worker list per service, the broker's
             list of waiting workers in LRU order, heartbeats to waiting
             workers every 2.5 s, expiry after 3 silent intervals.
  ppqueue    after the zguide's ppqueue.py (RFC 6): an ordered dict of idle
             workers (LRU), the frontend polled only while one is idle,
             heartbeats every 1 s, expiry after 3 silent intervals.
  minimal    not an anchor, a floor: the shortest PPP queue in plain pyzmq
             (LRU and heartbeats only, compiled NOBLOCK calls, one zmq_poll
             per wake-up): what a Python broker woken per message costs.
Workers (echo: the reply is the request's body):
  mdp01      after mdwrkapi.py: DEALER, READY, heartbeats, answers REQUESTs.
  mdp02      majortomo's Worker (PyPI ``majortomo``), MDP/0.2.
  ppp        after ppworker.py (without its simulated crashes and sleeps).
Clients (synchronous: one request in flight):
  mdp01      after mdcliapi.py: REQ, ``[MDPC01, service, body]``.
  mdp02      majortomo's Client, MDP/0.2.
  ppp        after lpclient.py: REQ, poll with a timeout, the reply must
             echo the request (no retry: an unanswered request fails the run).

A client connects, answers one warm-up request, prints ``ready``, waits for a
line on stdin, then sends N requests (100 bytes: an 8-digit counter, then
padding) one at a time, stops at the first one not answered within TIMEOUT
seconds (or after 10 minutes), and prints one JSON line: answered, sent,
seconds. Every broker and
worker exits by itself after ``LIFETIME`` seconds, should its parent die.
"""

import json
import sys
import threading
import time
from binascii import hexlify
from collections import OrderedDict

import zmq

LIFETIME = 900.0  # seconds; the driver kills every process long before
SERVICE = b"echo"

# MDP/0.1 (RFC 7), as the zguide's MDP.py numbers it
C_CLIENT = b"MDPC01"
W_WORKER = b"MDPW01"
W_READY, W_REQUEST, W_REPLY, W_HEARTBEAT, W_DISCONNECT = (bytes([i]) for i in range(1, 6))
# Paranoid Pirate (RFC 6)
PPP_READY, PPP_HEARTBEAT = b"\x01", b"\x02"


def _suicide_after(seconds):
    """Exit the process after ``seconds`` whatever it is doing (bounded lifetime)."""
    import os

    t = threading.Timer(seconds, os._exit, (3,))
    t.daemon = True
    t.start()


# ---------------------------------------------------------------- mdbroker


class _Service:
    def __init__(self, name):
        self.name = name
        self.requests = []  # client envelopes + bodies, oldest first
        self.waiting = []  # idle workers of this service, oldest first


class _Worker:
    def __init__(self, identity, address, expiry):
        self.identity = identity
        self.address = address
        self.service = None
        self.expiry = time.time() + expiry


class MDBroker:
    """After the zguide's mdbroker.py: MDP/0.1 broker on one ROUTER."""

    LIVENESS = 3
    INTERVAL = 2.5  # seconds
    EXPIRY = INTERVAL * LIVENESS

    def __init__(self, endpoint):
        self.services = {}
        self.workers = {}
        self.waiting = []
        self.heartbeat_at = time.time() + self.INTERVAL
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.bind(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def mediate(self, until):
        while time.time() < until:
            if self.poller.poll(self.INTERVAL * 1000):
                msg = self.socket.recv_multipart()
                sender, _empty, header = msg[0], msg[1], msg[2]
                if header == C_CLIENT:
                    self.process_client(sender, msg[3:])
                elif header == W_WORKER:
                    self.process_worker(sender, msg[3:])
            self.purge_workers()
            self.send_heartbeats()

    def process_client(self, sender, msg):
        service = msg.pop(0)
        msg = [sender, b"", *msg]
        if service.startswith(b"mmi."):
            code = b"501"  # mmi.service is the only internal service (8/MMI)
            if service == b"mmi.service":
                code = b"200" if msg[-1] in self.services else b"404"
            self.socket.send_multipart([sender, b"", C_CLIENT, service, code])
        else:
            self.dispatch(self.require_service(service), msg)

    def process_worker(self, sender, msg):
        command = msg.pop(0)
        # keyed by the hex of the routing id, as the zguide's broker does
        known = hexlify(sender) in self.workers
        worker = self.require_worker(sender)
        if command == W_READY:
            service = msg.pop(0)
            if known or service.startswith(b"mmi."):
                self.delete_worker(worker, True)
            else:
                worker.service = self.require_service(service)
                self.worker_waiting(worker)
        elif command == W_REPLY:
            if known:
                client = msg.pop(0)
                msg.pop(0)  # the empty delimiter
                self.socket.send_multipart([client, b"", C_CLIENT, worker.service.name, *msg])
                self.worker_waiting(worker)
            else:
                self.delete_worker(worker, True)
        elif command == W_HEARTBEAT:
            if known:
                worker.expiry = time.time() + self.EXPIRY
            else:
                self.delete_worker(worker, True)
        elif command == W_DISCONNECT:
            self.delete_worker(worker, False)

    def delete_worker(self, worker, disconnect):
        if disconnect:
            self.send_to_worker(worker, W_DISCONNECT, [])
        if worker.service is not None and worker in worker.service.waiting:
            worker.service.waiting.remove(worker)
        if worker in self.waiting:
            self.waiting.remove(worker)
        self.workers.pop(worker.identity, None)

    def require_worker(self, address):
        identity = hexlify(address)
        worker = self.workers.get(identity)
        if worker is None:
            worker = self.workers[identity] = _Worker(identity, address, self.EXPIRY)
        return worker

    def require_service(self, name):
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = _Service(name)
        return service

    def send_heartbeats(self):
        if time.time() > self.heartbeat_at:
            for worker in self.waiting:
                self.send_to_worker(worker, W_HEARTBEAT, [])
            self.heartbeat_at = time.time() + self.INTERVAL

    def purge_workers(self):
        # waiting workers are oldest first: stop at the first one alive
        while self.waiting and self.waiting[0].expiry < time.time():
            self.delete_worker(self.waiting[0], False)

    def worker_waiting(self, worker):
        self.waiting.append(worker)
        worker.service.waiting.append(worker)
        worker.expiry = time.time() + self.EXPIRY
        self.dispatch(worker.service, None)

    def dispatch(self, service, msg):
        if msg is not None:
            service.requests.append(msg)
        self.purge_workers()
        while service.waiting and service.requests:
            msg = service.requests.pop(0)
            worker = service.waiting.pop(0)
            self.waiting.remove(worker)
            self.send_to_worker(worker, W_REQUEST, msg)

    def send_to_worker(self, worker, command, msg):
        self.socket.send_multipart([worker.address, b"", W_WORKER, command, *msg])


# ---------------------------------------------------------------- ppqueue


def ppqueue(frontend_ep, backend_ep, until):
    """After the zguide's ppqueue.py: LRU of idle workers, heartbeats, expiry."""
    liveness, interval = 3, 1.0
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    frontend.bind(frontend_ep)
    backend.bind(backend_ep)
    poll_workers = zmq.Poller()
    poll_workers.register(backend, zmq.POLLIN)
    poll_both = zmq.Poller()
    poll_both.register(frontend, zmq.POLLIN)
    poll_both.register(backend, zmq.POLLIN)
    workers = OrderedDict()  # address -> expiry, least recently ready first
    heartbeat_at = time.time() + interval
    while time.time() < until:
        poller = poll_both if workers else poll_workers
        socks = dict(poller.poll(interval * 1000))
        if socks.get(backend) == zmq.POLLIN:
            frames = backend.recv_multipart()
            address, msg = frames[0], frames[1:]
            # any message makes the worker ready again (and most recent)
            workers.pop(address, None)
            workers[address] = time.time() + interval * liveness
            if len(msg) > 1:
                frontend.send_multipart(msg)
            if time.time() >= heartbeat_at:
                for worker in workers:
                    backend.send_multipart([worker, PPP_HEARTBEAT])
                heartbeat_at = time.time() + interval
        if socks.get(frontend) == zmq.POLLIN:
            frames = frontend.recv_multipart()
            address, _expiry = workers.popitem(last=False)
            backend.send_multipart([address, *frames])
        now = time.time()
        for address in [a for a, expiry in workers.items() if now > expiry]:
            workers.pop(address, None)


def minimal(frontend_ep, backend_ep, until):
    """Not an anchor but a floor: the least a Python PPP queue can do per message.

    LRU dispatch to idle workers and heartbeats to them, nothing else: no
    expiry, no validation, no counters, no logs. One blocking ``zmq_poll``
    per wake-up and the compiled NOBLOCK recv/send with int flags. What it
    costs per request is about what any Python broker woken once per message
    costs on this libzmq: libzmq's I/O thread, the wake-ups, the sends.
    """
    from zmq.backend import Socket as C
    from zmq.backend import zmq_poll

    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    frontend.bind(frontend_ep)
    backend.bind(backend_ep)
    recv, send, get = C.recv, C.send, C.get
    nb, nb_more, events = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE), int(zmq.EVENTS)

    def recv_msg(s):
        f = recv(s, nb, False)
        m = [f.bytes]
        while f.more:
            f = recv(s, nb, False)
            m.append(f.bytes)
        return m

    def send_msg(s, m):
        for f in m[:-1]:
            send(s, f, nb_more, False)
        send(s, m[-1], nb, False)

    idle = OrderedDict()  # worker address -> None, least recently ready first
    both, backend_only = [(frontend, 1), (backend, 1)], [(backend, 1)]
    heartbeat_at = time.time() + 1.0
    while time.time() < until:
        moved = True
        while moved:
            moved = False
            while get(backend, events) & 1:
                frames = recv_msg(backend)
                moved = True
                if len(frames) > 2:
                    send_msg(frontend, frames[1:])
                idle[frames[0]] = None
            while idle and get(frontend, events) & 1:
                frames = recv_msg(frontend)
                moved = True
                address, _ = idle.popitem(last=False)
                send_msg(backend, [address, *frames])
        now = time.time()
        if now >= heartbeat_at:
            heartbeat_at = now + 1.0
            for address in idle:
                send_msg(backend, [address, PPP_HEARTBEAT])
            continue
        zmq_poll(both if idle else backend_only, int((heartbeat_at - now) * 1000) + 1)


# ---------------------------------------------------------------- workers


def mdp01_worker(endpoint, until):
    """After mdwrkapi.py: READY, then answer REQUESTs, heartbeat every 2.5 s."""
    liveness_max, interval = 3, 2.5
    ctx = zmq.Context()
    poller = zmq.Poller()
    sock = None

    def connect():
        nonlocal sock
        if sock is not None:
            poller.unregister(sock)
            sock.close(linger=0)
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        sock.send_multipart([b"", W_WORKER, W_READY, SERVICE])
        return liveness_max, time.time() + interval

    liveness, heartbeat_at = connect()
    while time.time() < until:
        if poller.poll(interval * 1000):
            msg = sock.recv_multipart()
            liveness = liveness_max
            command = msg[2]
            if command == W_REQUEST:
                reply_to, body = msg[3], msg[5:]
                sock.send_multipart([b"", W_WORKER, W_REPLY, reply_to, b"", *body])
            elif command == W_DISCONNECT:
                liveness, heartbeat_at = connect()
        else:
            liveness -= 1
            if liveness == 0:
                time.sleep(2.5)
                liveness, heartbeat_at = connect()
        if time.time() > heartbeat_at:
            sock.send_multipart([b"", W_WORKER, W_HEARTBEAT])
            heartbeat_at = time.time() + interval


def mdp02_worker(endpoint, until):
    """The MDP/0.2 worker: majortomo's Worker, echoing."""
    from majortomo import Worker

    w = Worker(endpoint, SERVICE)
    w.connect()
    while time.time() < until:
        client, body = w.wait_for_request()
        w.send_reply_final(client, body)


def ppp_worker(endpoint, until):
    """After ppworker.py: READY, heartbeats every 1 s, reconnect with backoff."""
    liveness_max, interval = 3, 1.0
    ctx = zmq.Context()
    poller = zmq.Poller()
    sock = None

    def connect():
        nonlocal sock
        if sock is not None:
            poller.unregister(sock)
            sock.close(linger=0)
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        sock.send(PPP_READY)
        return liveness_max

    liveness, backoff = connect(), 1.0
    heartbeat_at = time.time() + interval
    while time.time() < until:
        if poller.poll(interval * 1000):
            frames = sock.recv_multipart()
            if len(frames) == 3:
                sock.send_multipart(frames)
            liveness, backoff = liveness_max, 1.0
        else:
            liveness -= 1
            if liveness == 0:
                time.sleep(backoff)
                backoff = min(32.0, backoff * 2)
                liveness = connect()
        if time.time() > heartbeat_at:
            heartbeat_at = time.time() + interval
            sock.send(PPP_HEARTBEAT)


# ---------------------------------------------------------------- clients


def _mdp01_client(endpoint):
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.linger = 0
    s.connect(endpoint)

    def call(body, timeout):
        s.send_multipart([C_CLIENT, SERVICE, body])
        if not s.poll(timeout * 1000):
            return None
        msg = s.recv_multipart()
        return msg[2] if msg[:2] == [C_CLIENT, SERVICE] and len(msg) == 3 else b"?"

    return call


def _mdp02_client(endpoint):
    from majortomo import Client
    from majortomo.error import Timeout

    c = Client(endpoint, zmq_linger=0)
    c.connect()

    def call(body, timeout):
        c.send(SERVICE, body)
        try:
            reply = c.recv_all_as_list(timeout)
        except Timeout:
            return None
        return reply[0] if len(reply) == 1 else b"?"

    return call


def _ppp_client(endpoint):
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.linger = 0
    s.connect(endpoint)

    def call(body, timeout):
        s.send(body)
        if not s.poll(timeout * 1000):
            return None
        return s.recv()

    return call


CLIENTS = {"mdp01": _mdp01_client, "mdp02": _mdp02_client, "ppp": _ppp_client}
WORKERS = {"mdp01": mdp01_worker, "mdp02": mdp02_worker, "ppp": ppp_worker}


def client(proto, endpoint, n, timeout):
    """Warm up, print ``ready``, wait for a stdin line, send n requests; print JSON."""
    call = CLIENTS[proto](endpoint)
    pad = b"x" * 92
    warm = b"warm-up!" + pad
    if call(warm, 30.0) != warm:
        print(json.dumps({"error": f"no warm-up reply through {endpoint} within 30 s"}))
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    answered = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600.0  # a round slower than 10 minutes fails
    for i in range(n):
        if time.monotonic() > deadline:
            break
        body = b"%08d" % i + pad
        reply = call(body, timeout)
        if reply != body:  # unanswered (or a wrong answer): the run fails
            break
        answered += 1
    dt = time.perf_counter() - t0
    print(json.dumps({"answered": answered, "sent": n, "seconds": dt}), flush=True)
    return 0


def main():
    role, kind, *args = sys.argv[1:]
    if role == "client":
        endpoint, n, timeout = args
        return client(kind, endpoint, int(n), float(timeout))
    _suicide_after(LIFETIME)
    until = time.time() + LIFETIME
    if role == "worker":
        WORKERS[kind](args[0], until)
    elif kind == "mdbroker":
        MDBroker(args[0]).mediate(until)
    elif kind == "ppqueue":
        ppqueue(args[0], args[1], until)
    elif kind == "minimal":
        minimal(args[0], args[1], until)
    else:
        raise SystemExit(f"unknown role {role} {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
