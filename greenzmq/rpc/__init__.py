"""RPC over Majordomo: an object's public methods as a service, called like local ones.

Serve::

    @rpc.service
    class Calculator:
        def add(self, a, b):
            return a + b

    # greenzmq mymodule:Calculator -w 4 --endpoint broker=tcp://127.0.0.1:5555

and call::

    with rpc.Client("Calculator", "tcp://127.0.0.1:5555") as calc:
        calc.add(1, 2)   # 3

through greenzmq's Majordomo broker (:mod:`greenzmq.patterns.mdp`), and so with
its heartbeats, several brokers, offload, CURVE, tracing and stats. Values
travel as msgpack (JSON on request, :mod:`greenzmq.rpc.codec`); a remote
exception is raised as :class:`~greenzmq.errors.RemoteError` (one subclass per
type name, with the remote traceback); a generator method streams, a chunk at a
time as the caller consumes it (backpressure); ``client.methods()`` lists the
methods; a call's ``timeout`` travels as a deadline past which it is not run.
The wire format is in :mod:`greenzmq.rpc._dispatch`.
"""

from __future__ import annotations

from ..errors import RemoteError, RequestTimeout
from ._client import Caller, Client, LocalClient, Stream
from ._dispatch import Dispatcher, describe, public_methods
from ._service import RPCService, RPCWorker, service
from .codec import JSON, MSGPACK, Codec, get_codec

__all__ = [
    "JSON",
    "MSGPACK",
    "Caller",
    "Client",
    "Codec",
    "Dispatcher",
    "LocalClient",
    "RPCService",
    "RPCWorker",
    "RemoteError",
    "RequestTimeout",
    "Stream",
    "describe",
    "get_codec",
    "public_methods",
    "service",
]
