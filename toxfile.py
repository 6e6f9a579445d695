"""tox inline plugin: let tox find every pyenv-installed CPython.

On these machines Python 3.10-3.13 are installed through pyenv but only one
is active, so ``py310``... would be skipped as missing. Appending each pyenv
version's ``bin`` to PATH (for tox's interpreter discovery only) makes them
visible; a machine without pyenv is left alone.
"""

from __future__ import annotations

import glob
import os

from tox.plugin import impl


def _pyenv_bins() -> list[str]:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    return sorted(glob.glob(os.path.join(root, "versions", "3.1[0-9]*", "bin")))


@impl
def tox_on_install(tox_env, arguments, section, of_type) -> None:  # type: ignore[no-untyped-def]
    """Nothing to do per install; the hook only makes tox load this module."""


_extra = [b for b in _pyenv_bins() if b not in os.environ.get("PATH", "").split(os.pathsep)]
if _extra:
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *_extra])
