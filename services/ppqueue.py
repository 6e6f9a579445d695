"""The Paranoid Pirate queue: frontend ROUTER bind :5555, backend ROUTER bind :5556.

Endpoints: frontend ROUTER bind tcp://127.0.0.1:5555, backend ROUTER bind
tcp://127.0.0.1:5556, plus the kill switch.

``services.ppqueue:make(heartbeat=0.2)`` sets the heartbeat interval (seconds);
``liveness`` is how many silent intervals make a worker dead (default 3);
``maxmsgsize`` caps the size of a message either router accepts;
``request_timeout`` drops a request that waited that long for a worker;
``secret_key``/``allowed_keys`` (paths) turn on CURVE on the frontend
(see :func:`greenzmq.core.auth.secure`).
"""

from __future__ import annotations

from greenzmq.patterns.ppp import PPPQueue


def make(
    heartbeat: float = 1.0,
    liveness: int = 3,
    maxmsgsize: int = -1,
    secret_key: str | None = None,
    allowed_keys: str | None = None,
    request_timeout: float | None = None,
) -> PPPQueue:
    """Factory: ``services.ppqueue:make(heartbeat=0.2)``."""
    queue = PPPQueue(
        heartbeat=heartbeat,
        liveness=liveness,
        maxmsgsize=maxmsgsize,
        request_timeout=request_timeout,
    )
    if secret_key is not None:
        from greenzmq.core.auth import secure

        secure(queue, secret_key=secret_key, allowed_keys=allowed_keys, sockets=("frontend",))
    return queue


app = PPPQueue
