"""The ``greenzmq`` command: run a service, or one of the subcommands.

``greenzmq [OPTIONS] MODULE:APP`` runs an app; ``greenzmq demo`` runs the
tutorial end to end. This module imports neither zmq nor gevent: a master
process that forks must not have them (rule 7).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

SUBCOMMANDS = {
    "demo": "greenzmq.demo",
}


def parse_endpoint_option(text: str) -> tuple[str, str]:
    """``NAME=ADDR`` -> (NAME, ADDR), checking ADDR's syntax."""
    from .errors import ConfigError
    from .endpoints import parse_endpoint

    name, sep, addr = text.partition("=")
    if not sep or not name or not addr:
        raise ConfigError(f"malformed --endpoint {text!r}: expected NAME=TRANSPORT://ADDRESS")
    parse_endpoint(addr)
    return name, addr


def _sample(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not between 0 and 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``greenzmq [OPTIONS] MODULE:APP``."""
    p = argparse.ArgumentParser(
        prog="greenzmq",
        description="Run a greenzmq service (MODULE:APP), or: "
        + ", ".join(f"greenzmq {c}" for c in SUBCOMMANDS),
    )
    p.add_argument("app", metavar="MODULE:APP", help="the app, e.g. services.broker:app")
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME=ADDR",
        help="replace socket NAME's endpoint (repeatable; tcp://*:PORT allowed)",
    )
    p.add_argument("--log-format", choices=("json", "console"), default=None,
                   help="default: console on a TTY, json otherwise")
    p.add_argument("--log-file", default=None, metavar="PATH", help="append logs to PATH")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error", "critical"))
    p.add_argument("--trace-sample", type=_sample, default=1.0, metavar="RATE",
                   help="share of messages whose hops are logged: 0 none, 1 all (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenzmq`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        import importlib

        mod = importlib.import_module(SUBCOMMANDS[args[0]])
        return int(mod.main(args[1:]))
    from .errors import GreenZMQError
    from .runner import fail, run_service

    ns = build_parser().parse_args(args)
    try:
        endpoints = dict(parse_endpoint_option(e) for e in ns.endpoint)
    except GreenZMQError as e:
        return fail(str(e))
    return run_service(
        ns.app,
        endpoints=endpoints,
        log_format=ns.log_format,
        log_file=ns.log_file,
        log_level=ns.log_level,
        trace_sample=ns.trace_sample,
    )
