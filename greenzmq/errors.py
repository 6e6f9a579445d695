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


class RemoteError(GreenZMQError):
    """An exception raised by a remote (RPC) method, re-raised on the caller's side.

    Each remote exception type name gets its own subclass (:meth:`named`), so
    ``except RemoteError`` catches them all and ``except
    RemoteError.named("ZeroDivisionError")`` (or a look at :attr:`type_name`)
    catches one. :attr:`remote_traceback` is the traceback text from the
    remote process.
    """

    #: the remote exception's type name (``type(e).__name__``)
    type_name = "Exception"
    _named: dict[str, type[RemoteError]] = {}

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        #: the remote exception's message (``str(e)``)
        self.message = message
        #: the traceback text formatted in the remote process
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    @classmethod
    def named(cls, type_name: str) -> type[RemoteError]:
        """The subclass for remote exceptions called ``type_name`` (one per name)."""
        sub = RemoteError._named.get(type_name)
        if sub is None:
            ident = type_name if type_name.isidentifier() else "RemoteError"
            sub = type(ident, (RemoteError,), {"type_name": type_name})
            sub.__module__ = "greenzmq.errors.remote"
            RemoteError._named[type_name] = sub
        return sub


__all__ = [
    "AppImportError",
    "ClosedError",
    "ConfigError",
    "GreenZMQError",
    "ReaderError",
    "RemoteError",
    "RequestTimeout",
    "SocketBusyError",
]
