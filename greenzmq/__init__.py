"""greenzmq: ZeroMQ services on gevent green threads.

The public API is re-exported here lazily: ``import greenzmq`` (and the CLI's
master process) must not import zmq or gevent before a fork (rule 7; the
numbered design rules the code cites are in docs/design.md), so each name is
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AppImportError,
    ClosedError,
    ConfigError,
    GreenZMQError,
    ReaderError,
    RequestTimeout,
    SocketBusyError,
)

if TYPE_CHECKING:
    from .auth import GreenAuthenticator, client_options, generate_keys, secure
    from .broker import Broker
    from .lazypirate import LazyPirate
    from .mdp import MDPBroker, MDPClient, MDPWorker, MDPWorkerService
    from .mux import Message, MuxStatistics, Outbox, PollerListener, Readers
    from .poller import GreenPoller
    from .ppp import HeartbeatWorker, PPPQueue, PPPWorker, PPPWorkerService
    from .service import CallableService, Service, kill_spec
    from .sockets import Context, Socket, SocketSpec
    from .tracing import Tracer, configure_logging, get_logger, message_key

__version__ = "0.1.0"

_LAZY = {
    "client_options": "auth",
    "configure_logging": "tracing",
    "generate_keys": "auth",
    "get_logger": "tracing",
    "kill_spec": "service",
    "message_key": "tracing",
    "secure": "auth",
    "Broker": "broker",
    "CallableService": "service",
    "Context": "sockets",
    "GreenAuthenticator": "auth",
    "GreenPoller": "poller",
    "HeartbeatWorker": "ppp",
    "LazyPirate": "lazypirate",
    "MDPBroker": "mdp",
    "MDPClient": "mdp",
    "MDPWorker": "mdp",
    "MDPWorkerService": "mdp",
    "Message": "mux",
    "MuxStatistics": "mux",
    "Outbox": "mux",
    "PPPQueue": "ppp",
    "PPPWorker": "ppp",
    "PPPWorkerService": "ppp",
    "PollerListener": "mux",
    "Readers": "mux",
    "Service": "service",
    "Socket": "sockets",
    "SocketSpec": "sockets",
    "Tracer": "tracing",
}

__all__ = [
    "AppImportError",
    "Broker",
    "CallableService",
    "ClosedError",
    "ConfigError",
    "Context",
    "GreenAuthenticator",
    "GreenPoller",
    "GreenZMQError",
    "HeartbeatWorker",
    "LazyPirate",
    "MDPBroker",
    "MDPClient",
    "MDPWorker",
    "MDPWorkerService",
    "Message",
    "MuxStatistics",
    "Outbox",
    "PPPQueue",
    "PPPWorker",
    "PPPWorkerService",
    "PollerListener",
    "ReaderError",
    "Readers",
    "RequestTimeout",
    "Service",
    "Socket",
    "SocketBusyError",
    "SocketSpec",
    "Tracer",
    "client_options",
    "configure_logging",
    "generate_keys",
    "get_logger",
    "kill_spec",
    "message_key",
    "secure",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'greenzmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
