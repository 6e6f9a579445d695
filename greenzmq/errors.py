"""The greenzmq error tree: one root, exact names, stdlib bases where they fit."""

from __future__ import annotations


class GreenZMQError(Exception):
    """Root of every error greenzmq raises on purpose."""


class SocketBusyError(GreenZMQError, RuntimeError):
    """A greenlet used a socket that another greenlet owns.

    This is the tutorial's "broken broker" turned into an error: two greenlets
    on one socket would otherwise trip pyzmq's assert, deadlock, or stall for
    the 11.6 s fallback timeout.
    """


class ClosedError(GreenZMQError):
    """The resource (socket, queue, mux, outbox) was closed by its owner."""


class ReaderError(GreenZMQError):
    """A reader greenlet failed; the original exception is ``__cause__``."""


class ConfigError(GreenZMQError, ValueError):
    """A setting, endpoint or config file is invalid."""


class AppImportError(GreenZMQError, ImportError):
    """An app spec (``module:attr``) could not be parsed, imported or resolved."""


class RequestTimeout(GreenZMQError, TimeoutError):
    """A request got no reply in time (after every retry, for retrying clients)."""


__all__ = [
    "AppImportError",
    "ClosedError",
    "ConfigError",
    "GreenZMQError",
    "ReaderError",
    "RequestTimeout",
    "SocketBusyError",
]
