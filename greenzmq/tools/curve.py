"""CURVE from the command line: ``greenzmq keygen`` and the ``secured(...)`` app spec.

The runtime side (the ZAP handler in a greenlet, :func:`~greenzmq.core.auth.secure`)
is :mod:`greenzmq.core.auth`; these two are for a person at a shell.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.auth import generate_keys, secure
from ..core.service import Service
from ..errors import ConfigError
from ..launcher.appspec import as_service, load_app

__all__ = ["main", "secured"]


def secured(
    app: str,
    *,
    secret_key: str,
    allowed_keys: str | None,
    sockets: Sequence[str],
) -> Service:
    """An app spec factory that secures any other app (for the command line).

    For example::

    greenzmq "greenzmq.tools.curve:secured('services.broker:app', sockets=['frontend'],
              secret_key='keys/server.key_secret', allowed_keys='allowed')"
    """
    service = as_service(load_app(app))
    return secure(service, secret_key=secret_key, allowed_keys=allowed_keys, sockets=sockets)


def main(argv: Sequence[str]) -> int:
    """``greenzmq keygen DIR NAME...``: write CURVE key pairs."""
    p = argparse.ArgumentParser(
        prog="greenzmq keygen",
        description="write CURVE key pairs: "
        "NAME.key (public, give it out) and NAME.key_secret (keep it)",
    )
    p.add_argument("directory", help="where to write the keys (created if missing)")
    p.add_argument("names", nargs="+", metavar="NAME", help="one key pair per name")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    ns = p.parse_args(list(argv))
    for name in ns.names:
        try:
            pub, sec = generate_keys(ns.directory, name, force=ns.force)
        except (ConfigError, OSError) as e:
            print(f"greenzmq keygen: error: {e}", file=sys.stderr, flush=True)
            return 2
        print(f"{pub}\n{sec}")
    return 0
