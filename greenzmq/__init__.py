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
    RemoteError,
    RequestTimeout,
    SocketBusyError,
)

if TYPE_CHECKING:
    from .core.auth import GreenAuthenticator, client_options, generate_keys, secure
    from .core.mux import Message, MuxStatistics, Outbox, PollerListener, Readers
    from .core.poller import GreenPoller
    from .core.service import CallableService, Service, kill_spec
    from .core.sockets import Context, Socket, SocketSpec
    from .core.tracing import Tracer, configure_logging, get_logger, message_key
    from .patterns.broker import Broker
    from .patterns.lazypirate import LazyPirate
    from .patterns.mdp import MDPBroker, MDPClient, MDPWorker, MDPWorkerService
    from .patterns.ppp import HeartbeatWorker, PPPQueue, PPPWorker, PPPWorkerService

__version__ = "0.1.0"

_LAZY = {
    "client_options": "core.auth",
    "configure_logging": "core.tracing",
    "generate_keys": "core.auth",
    "get_logger": "core.tracing",
    "kill_spec": "core.service",
    "message_key": "core.tracing",
    "secure": "core.auth",
    "Broker": "patterns.broker",
    "CallableService": "core.service",
    "Context": "core.sockets",
    "GreenAuthenticator": "core.auth",
    "GreenPoller": "core.poller",
    "HeartbeatWorker": "patterns.ppp",
    "LazyPirate": "patterns.lazypirate",
    "MDPBroker": "patterns.mdp",
    "MDPClient": "patterns.mdp",
    "MDPWorker": "patterns.mdp",
    "MDPWorkerService": "patterns.mdp",
    "Message": "core.mux",
    "MuxStatistics": "core.mux",
    "Outbox": "core.mux",
    "PPPQueue": "patterns.ppp",
    "PPPWorker": "patterns.ppp",
    "PPPWorkerService": "patterns.ppp",
    "PollerListener": "core.mux",
    "Readers": "core.mux",
    "Service": "core.service",
    "Socket": "core.sockets",
    "SocketSpec": "core.sockets",
    "Tracer": "core.tracing",
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
    "RemoteError",
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
