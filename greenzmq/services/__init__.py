"""The tutorial's roles as ``greenzmq.services``, in a source checkout.

A wheel installs the repository's top-level ``services/`` folder as this
package (``package_dir`` in setup.py), so ``greenzmq greenzmq.services.broker:app``
works from any directory and nothing but ``greenzmq`` is installed at the top
level. In a checkout this file stands in for that package: its path is the
repository's ``services/`` folder, so the same modules import as
``services.broker`` (from the repository root, like gunicorn apps) and as
``greenzmq.services.broker`` (wherever greenzmq imports). The wheel does not
ship this file: it ships ``services/__init__.py`` in its place.
"""

from __future__ import annotations

import os

# the package's submodules are found in <repository>/services, not beside this file
__path__ = [
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "services"
    )
]
