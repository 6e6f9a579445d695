"""The Majordomo broker: broker ROUTER bind tcp://127.0.0.1:5555, MDP/0.1 and 0.2.

Plus the kill switch.

``services.majordomo:make(heartbeat=0.2)`` sets the heartbeat interval
(seconds); ``liveness``, ``busy_timeout``, ``maxmsgsize``, ``request_timeout`` and CURVE
(``secret_key``/``allowed_keys``, see :func:`greenzmq.core.auth.secure`) likewise.

``services.majordomo:worker(service="square", version="0.1")`` is a worker
that squares integers (broker DEALER connect tcp://127.0.0.1:5555);
``offload="process", pool=2`` squares in two processes.
"""

from __future__ import annotations

from greenzmq.patterns.mdp import MDPBroker, MDPWorkerService

from .worker import answer


def make(
    heartbeat: float = 2.5,
    liveness: int = 3,
    busy_timeout: float = 900.0,
    maxmsgsize: int = -1,
    secret_key: str | None = None,
    allowed_keys: str | None = None,
    request_timeout: float | None = None,
) -> MDPBroker:
    """Factory: ``services.majordomo:make(heartbeat=0.2)``."""
    broker = MDPBroker(
        heartbeat=heartbeat,
        liveness=liveness,
        busy_timeout=busy_timeout,
        maxmsgsize=maxmsgsize,
        request_timeout=request_timeout,
    )
    if secret_key is not None:
        from greenzmq.core.auth import secure

        secure(broker, secret_key=secret_key, allowed_keys=allowed_keys, sockets=("broker",))
    return broker


def worker(
    service: str = "square",
    version: str = "0.2",
    heartbeat: float = 2.5,
    reconnect: float = 1.0,
    reconnect_max: float = 32.0,
    offload: str | None = None,
    pool: int = 1,
) -> MDPWorkerService:
    """Factory: a squaring worker, ``services.majordomo:worker(version="0.1")``.

    ``offload="thread"`` or ``"process"`` (and ``pool=N``) as in
    :class:`~greenzmq.patterns.mdp.MDPWorkerService`.
    """
    return MDPWorkerService(
        service,
        answer,
        version=version,
        heartbeat=heartbeat,
        reconnect=reconnect,
        reconnect_max=reconnect_max,
        name=f"mdpworker-{service}",
        offload=offload,
        pool=pool,
    )


app = MDPBroker
