"""greenzmq: ZeroMQ services on gevent green threads.

The public API is re-exported here lazily: ``import greenzmq`` (and the CLI's
master process) must not import zmq or gevent before a fork (rule 7), so each
name is imported on first use.
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
    from .broker import Broker
    from .mux import Message, MuxStatistics, Outbox, PollerListener, Readers
    from .poller import GreenPoller
    from .service import CallableService, Service, kill_spec
    from .sockets import Context, Socket, SocketSpec
    from .tracing import Tracer, configure_logging, get_logger, message_key

__version__ = "0.1.0"

_LAZY = {
    "Broker": "broker",
    "CallableService": "service",
    "Context": "sockets",
    "GreenPoller": "poller",
    "Message": "mux",
    "MuxStatistics": "mux",
    "Outbox": "mux",
    "PollerListener": "mux",
    "Readers": "mux",
    "Service": "service",
    "Socket": "sockets",
    "SocketSpec": "sockets",
    "Tracer": "tracing",
    "configure_logging": "tracing",
    "get_logger": "tracing",
    "kill_spec": "service",
    "message_key": "tracing",
}

__all__ = [
    "AppImportError",
    "Broker",
    "CallableService",
    "ClosedError",
    "ConfigError",
    "Context",
    "GreenPoller",
    "GreenZMQError",
    "Message",
    "MuxStatistics",
    "Outbox",
    "PollerListener",
    "ReaderError",
    "Readers",
    "RequestTimeout",
    "Service",
    "Socket",
    "SocketBusyError",
    "SocketSpec",
    "Tracer",
    "configure_logging",
    "get_logger",
    "kill_spec",
    "message_key",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'greenzmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
