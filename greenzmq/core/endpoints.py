"""Endpoint syntax, checked without importing zmq (the master may not import it)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import ConfigError

__all__ = ["EndpointMap", "Endpoints", "endpoint_list", "parse_endpoint"]

Endpoints = str | Sequence[str]
"""One socket's endpoints: one address, or several (a connect socket reaches all of them)."""

EndpointMap = Mapping[str, Endpoints]
"""Socket name -> its endpoints: what ``--endpoint NAME=ADDR`` (repeated) gives a service."""


def endpoint_list(value: Endpoints) -> list[str]:
    """``"tcp://a:1"`` -> ``["tcp://a:1"]``; a sequence of endpoints -> a list of them."""
    return [value] if isinstance(value, str) else list(value)


_TCP = re.compile(r"^tcp://(?P<host>\*|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\*|\d{1,5})$")


def parse_endpoint(endpoint: str, *, bind: bool = True) -> str:
    """Check an endpoint's syntax and return it, or raise ConfigError.

    Accepted: ``tcp://HOST:PORT`` (``*`` as host or port only when binding),
    ``ipc://PATH``, ``inproc://NAME``.
    """
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ConfigError(f"malformed endpoint {endpoint!r}: expected TRANSPORT://ADDRESS")
    transport, _, address = endpoint.partition("://")
    if transport == "tcp":
        m = _TCP.match(endpoint)
        if not m:
            raise ConfigError(f"malformed endpoint {endpoint!r}: expected tcp://HOST:PORT")
        port, host = m.group("port"), m.group("host")
        if port != "*" and not 0 < int(port) < 65536:
            raise ConfigError(f"malformed endpoint {endpoint!r}: port {port} out of range")
        if not bind and "*" in (host, port):
            raise ConfigError(f"malformed endpoint {endpoint!r}: '*' is only for binding")
        return endpoint
    if transport in ("ipc", "inproc"):
        if not address:
            raise ConfigError(f"malformed endpoint {endpoint!r}: empty {transport} address")
        return endpoint
    raise ConfigError(
        f"malformed endpoint {endpoint!r}: unknown transport {transport!r} (tcp, ipc, inproc)"
    )
