"""The ``greenzmq`` command: run a service, or one of the subcommands.

``greenzmq [OPTIONS] MODULE:APP`` runs an app; ``greenzmq demo`` runs the
tutorial end to end. This module imports neither zmq nor gevent: a master
process that forks must not have them (rule 7).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

__all__ = ["USAGE", "main", "plain"]

SUBCOMMANDS = {
    "demo": "greenzmq.tools.demo",
    "keygen": "greenzmq.tools.curve",
    "bench": "greenzmq.tools.bench",
    "trace": "greenzmq.tools.trace",
    "stats": "greenzmq.tools.stats",
    "health": "greenzmq.tools.health",
    "mmi": "greenzmq.tools.mmi",
    "call": "greenzmq.tools.call",
}


USAGE = "%(prog)s [OPTIONS] MODULE:APP\n       %(prog)s {" + ",".join(SUBCOMMANDS) + "} ..."
_ROLE = re.compile(r":[a-z]+:`~?([^`]*)`")


def plain(text: str) -> str:
    """A docstring's reStructuredText (``literal``, :func:`x`) as plain text for --help."""
    return _ROLE.sub(r"\1", text).replace("`", "")


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``greenzmq [OPTIONS] MODULE:APP`` (from greenzmq.launcher.config)."""
    from .launcher.config import build_parser as settings_parser

    p = settings_parser()
    p.description = "Run a greenzmq app (MODULE:APP) under a pre-fork master, or: " + ", ".join(
        f"greenzmq {c}" for c in SUBCOMMANDS
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenzmq`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        import importlib

        mod = importlib.import_module(SUBCOMMANDS[args[0]])
        return int(mod.main(args[1:]))
    if args and args[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    from .launcher.runner import main as run_main

    return run_main(args)
