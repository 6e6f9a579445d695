"""Run one service in this process: ``greenzmq [OPTIONS] MODULE:APP`` with one worker.

Order matters (rule 7): logging first, then the app import, then the context
and sockets inside :meth:`Service.serve`. Every expected failure (bad spec,
unknown endpoint name, malformed endpoint, port in use) becomes one line on
stderr and a non-zero exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from .appspec import as_service, load_app
from .errors import GreenZMQError

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "run_service"]

EXIT_FAILED = 1
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """Print ``greenzmq: error: message`` on stderr and return ``code``."""
    print(f"greenzmq: error: {message}", file=sys.stderr, flush=True)
    return code


def run_service(
    spec: str,
    *,
    endpoints: Mapping[str, str] | None = None,
    log_format: str | None = None,
    log_file: str | None = None,
    log_level: str = "info",
    trace_sample: float = 1.0,
) -> int:
    """Load ``spec`` and serve it until it stops; return the exit code."""
    import zmq

    from .sockets import apply_endpoints
    from .tracing import configure_logging

    try:
        app = load_app(spec)
        service = as_service(app)
        configure_logging(
            service.name, fmt=log_format, log_file=log_file, level=log_level, trace_sample=trace_sample
        )
        apply_endpoints(service.specs, endpoints or {})  # names and syntax, before any socket
        return int(service.serve(endpoints))
    except (GreenZMQError, ValueError) as e:
        return fail(str(e))
    except zmq.ZMQError as e:
        return fail(str(e), EXIT_FAILED)
