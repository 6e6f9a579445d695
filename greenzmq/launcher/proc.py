"""Process-level helpers of the launcher: the pidfile, process titles, a child's environment.

Stdlib only (rule 7): the master uses all three, a worker only the title.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["Pidfile", "child_env", "title_setter"]


class Pidfile:
    """A file naming the master's pid while it runs (``--pid``).

    Written atomically (a temporary file, then a rename), so a reader never
    sees a half-written pid; removed at exit only while it still names this
    process (a second master may have taken it over).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> None:
        """Write this process's pid; ConfigError if the file names another live process."""
        conflict = self._conflict()
        if conflict is not None:
            raise ConfigError(conflict)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.path)

    def _conflict(self) -> str | None:
        try:
            with open(self.path) as f:
                old = int(f.read().strip() or 0)
            if old and old != os.getpid():
                os.kill(old, 0)
                return f"pidfile {self.path} names a running process ({old})"
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass  # no file, no pid in it, or a stale pid: ours to take
        except PermissionError:
            # the process lives but is not ours to signal
            return f"pidfile {self.path} names a running process"
        return None

    def remove(self) -> None:
        """Remove the file if it still names this process; never raises."""
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) == os.getpid():
                    os.unlink(self.path)
        except (OSError, ValueError):
            pass


def title_setter() -> Callable[[str], None]:
    """``setproctitle`` with a ``greenzmq:`` prefix, or a no-op without it."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # optional: titles are a nicety
        return lambda _title: None
    return lambda t: setproctitle(f"greenzmq: {t}")


def child_env() -> dict[str, str]:
    """The environment for a fresh ``python -m greenzmq...`` interpreter.

    The app is found where the command was started, greenzmq where it was
    imported (both may be missing from ``sys.path`` of a new interpreter).
    """
    # greenzmq/launcher/proc.py -> the directory that holds greenzmq/
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.getcwd(), pkg_parent, env.get("PYTHONPATH", "")) if p
    )
    return env
