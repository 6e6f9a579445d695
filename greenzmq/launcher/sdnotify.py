"""systemd's ``sd_notify`` protocol from the master: readiness, reload, stop, status, watchdog.

Stdlib only (the master imports it). When ``NOTIFY_SOCKET`` is set (systemd
sets it for ``Type=notify`` units), :class:`Notifier` sends datagrams of
``KEY=VALUE`` lines to that unix socket (a path, or ``@name`` for the
abstract namespace). The master says:

- ``READY=1`` once every worker has booted, and again when a HUP's new
  workers have all booted;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` (``Type=notify-reload`` wants both)
  when a HUP starts;
- ``STOPPING=1`` when a stop starts (TERM, INT, QUIT);
- ``STATUS=`` lines with the worker count, whenever it changes;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while at least one worker's
  heartbeat is live: a master whose workers are all stuck stops feeding the
  watchdog, and systemd restarts the unit.

The variables are removed from the environment once read, so workers and
the programs they start do not talk to systemd in the master's name (what
``sd_notify(unset_environment=1)`` does).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

__all__ = ["Notifier"]

STATE_WAIT = 0.2  # seconds READY, RELOADING and STOPPING may wait for room in systemd's queue


class Notifier:
    """One ``NOTIFY_SOCKET``; every method does nothing when there is none."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.set_inheritable(False)
        # systemd wants a keep-alive at least every WATCHDOG_USEC: every half, as its docs advise
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec > 0 else 0.0
        self.next_watchdog = 0.0
        self.status: str | None = None
        self.errors = 0

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` ask for; they leave ``environ``."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", "")
        pid_text = env.pop("WATCHDOG_PID", "")
        try:
            usec = int(usec_text) if usec_text else 0
        except ValueError:
            usec = 0
        if pid_text and pid_text != str(os.getpid()):
            usec = 0  # the watchdog is some other process's
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True if there is a socket to notify."""
        return self.sock is not None

    def send(self, *lines: str, wait: float = 0.0) -> bool:
        """Send one datagram of ``lines``; False if it could not be sent (never raises).

        The master must not block on a reader that does not read (a unix
        datagram queue holds 10 datagrams by default): it waits at most
        ``wait`` seconds for room, 0 for the periodic WATCHDOG and STATUS,
        a little for the state changes systemd must not miss.
        """
        if self.sock is None or self.address is None:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self.sock.settimeout(wait)
            self.sock.sendto("\n".join(lines).encode(), addr)
        except OSError:  # BlockingIOError and TimeoutError are OSErrors
            self.errors += 1  # systemd gone or its queue full: never stop the master for it
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """``READY=1`` (with a status line)."""
        self.send("READY=1", *self._status_lines(status), wait=STATE_WAIT)

    def reloading(self) -> None:
        """``RELOADING=1`` and ``MONOTONIC_USEC`` (the clock systemd compares with)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", wait=STATE_WAIT)

    def stopping(self) -> None:
        """``STOPPING=1``."""
        self.send("STOPPING=1", wait=STATE_WAIT)

    def set_status(self, status: str) -> None:
        """``STATUS=...`` if it changed since the last one sent."""
        if status != self.status:
            self.send(*self._status_lines(status))

    def _status_lines(self, status: str | None) -> list[str]:
        if status is None:
            return []
        self.status = status
        return [f"STATUS={status}"]

    def watchdog(self, now: float, alive: bool) -> None:
        """Feed the watchdog if it is due and ``alive`` (some worker's heartbeat is live)."""
        if not self.watchdog_interval or now < self.next_watchdog or not alive:
            return
        if self.send("WATCHDOG=1"):
            self.next_watchdog = now + self.watchdog_interval

    def close(self) -> None:
        """Close the socket."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
