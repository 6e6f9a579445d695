"""``greenzmq call [--broker ENDPOINT] SERVICE METHOD [ARGS...]``: one RPC call from the shell.

Each ARG is a JSON literal (``1``, ``'"text"'``, ``'[1, 2]'``), or
``NAME=JSON`` for a keyword argument. The result is printed as JSON (a
streaming method's items one per line; bytes as text, undecodable bytes
escaped). Exit 0 on a result; 1 with the remote error (``TYPE: message``) or
the timeout in one line; 2 for a bad command line. ``--list`` prints the
service's methods with their signatures and docstrings instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from ..cli import plain
from ..core.endpoints import parse_endpoint

__all__ = ["main", "parse_args"]

BROKER = "tcp://127.0.0.1:5555"
_KEYWORD = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.DOTALL)


def build_parser() -> argparse.ArgumentParser:
    """Options of ``greenzmq call``."""
    p = argparse.ArgumentParser(prog="greenzmq call", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("service", metavar="SERVICE", help="the RPC service (its class name)")
    p.add_argument("method", metavar="METHOD", nargs="?", help="the method to call")
    p.add_argument(
        "args", metavar="ARGS", nargs=argparse.REMAINDER, help="JSON literals, or NAME=JSON"
    )
    p.add_argument(
        "--broker",
        default=BROKER,
        metavar="ENDPOINT",
        help=f"the Majordomo broker, or several comma-separated (default {BROKER})",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds for the call (default 10)"
    )
    p.add_argument("--list", action="store_true", help="list the service's methods and exit")
    p.add_argument(
        "--traceback", action="store_true", help="print a remote error's traceback to stderr"
    )
    return p


def parse_args(args: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from JSON literals; ValueError names a bad one."""
    pos: list[Any] = []
    kw: dict[str, Any] = {}
    for a in args:
        m = _KEYWORD.match(a)
        text = m.group(2) if m else a
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(
                f"argument {a!r} is not a JSON literal (strings need quotes: '\"text\"')"
            ) from None
        if m:
            kw[m.group(1)] = value
        elif kw:
            raise ValueError(f"positional argument {a!r} after a keyword argument")
        else:
            pos.append(value)
    return pos, kw


def _text(value: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, bytes):
            return o.decode("utf-8", "backslashreplace")
        raise TypeError(f"{type(o).__name__} is not JSON")

    return json.dumps(value, default=default, ensure_ascii=False)


def _listing(methods: list[dict[str, Any]]) -> str:
    lines = []
    for m in methods:
        lines.append(f"{m['name']}{m['signature']}" + ("  [stream]" if m["stream"] else ""))
        lines.extend(f"    {line}" if line else "" for line in m["doc"].splitlines())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``greenzmq call``: 0 result, 1 remote error or timeout, 2 bad input."""
    ns = build_parser().parse_args(argv)
    try:
        brokers = [b.strip() for b in ns.broker.split(",") if b.strip()]
        if not brokers:
            raise ValueError("--broker needs an endpoint")
        for b in brokers:
            parse_endpoint(b, bind=False)
        if not ns.timeout > 0:
            raise ValueError(f"--timeout must be positive, got {ns.timeout}")
        if not ns.list and not ns.method:
            raise ValueError("give METHOD (or --list)")
        args, kwargs = parse_args(ns.args)
    except ValueError as e:
        print(f"greenzmq call: error: {e}", file=sys.stderr)
        return 2
    from ..errors import RemoteError, RequestTimeout
    from ..rpc import Client, Stream

    client = Client(ns.service, brokers, timeout=ns.timeout, retries=len(brokers))
    try:
        if ns.list:
            print(_listing(client.methods()))
            return 0
        result = client.call(ns.method, args, kwargs)
        if isinstance(result, Stream):
            for item in result:
                print(_text(item), flush=True)
        else:
            print(_text(result))
        return 0
    except RemoteError as e:
        print(f"greenzmq call: {e}".replace("\n", " "), file=sys.stderr)
        if ns.traceback and e.remote_traceback:
            print(e.remote_traceback, file=sys.stderr, end="")
        return 1
    except RequestTimeout as e:
        print(f"greenzmq call: {e}", file=sys.stderr)
        return 1
    except TypeError as e:  # an argument the codec cannot carry
        print(f"greenzmq call: error: {e}", file=sys.stderr)
        return 2
    finally:
        client.close()
