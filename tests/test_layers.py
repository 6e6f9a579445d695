"""The package's layers: what each part may import, and what the master's modules never load.

The rules (``greenzmq/**/*.py``, read with :mod:`ast`; "any level" counts the
imports inside functions too, "module level" the ones that run on import,
those under ``if TYPE_CHECKING:`` included):

- ``core`` (the green runtime) imports only ``core`` and ``errors``, at any level.
- ``patterns`` imports only ``core``, ``patterns`` and ``errors``, at any level.
- ``rpc`` sits on ``patterns``: it imports only ``core``, ``patterns``, ``rpc`` and ``errors``.
- ``launcher`` never imports ``patterns`` or ``tools``. At module level it
  imports only ``launcher``, ``errors`` and the stdlib-only part of ``core``
  (:data:`FORK_SAFE_CORE`): the master forks, so its modules must not bring
  zmq or gevent (rule 7). Inside functions it may import the rest of
  ``core``: those functions run in a worker (``workerproc``), in the
  short-lived check process (``appspec``) or in ``--check-config``, which
  never forks; the one the master calls, ``runner.validate_start``, imports
  ``core.stats`` (its stdlib helpers), which is probed below like the
  launcher's modules. It may also import ``greenzmq`` and ``cli`` there: the
  command's parser shows their version and usage line.
- ``tools``, ``cli`` and the package itself may import anything; ``errors``
  nothing of greenzmq.
- The launcher's modules form no import loop, lazy imports included: the
  master imports the worker's module (``workerproc``) after the fork, one way.

:data:`KNOWN_EXCEPTIONS` lists the imports that break a rule today, each with
its reason; one that goes away must leave the list too.

Separately, each launcher module but ``workerproc`` (the worker, which runs
the app), and the other modules the master imports (:func:`master_modules`),
are imported in a fresh interpreter that must end with neither zmq nor
gevent loaded. The checks are tested on sources made to break them
(:class:`TestTheCheckerCatches`), so a check that could never fail fails.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest

from .helpers import ROOT

PACKAGE = ROOT / "greenzmq"

FORK_SAFE_CORE = frozenset({"greenzmq.core.endpoints"})
"""The ``core`` modules the master may import: stdlib only."""

KNOWN_EXCEPTIONS: Mapping[tuple[str, str], str] = {}

FORBIDDEN_IN_MASTER = ("zmq", "gevent")  # zmq.green is under zmq


# -- reading the imports --------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One import of a greenzmq module by a greenzmq module."""

    path: str  # of the importing file, relative to the repository
    importer: str
    target: str
    line: int
    module_level: bool

    def __str__(self) -> str:
        where = "" if self.module_level else " (in a function)"
        return f"{self.path}:{self.line} {self.importer} imports {self.target}{where}"


def module_name(path: str) -> str:
    """``greenzmq/launcher/arbiter.py`` -> ``greenzmq.launcher.arbiter``."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(
    node: ast.AST, in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, not in_function
        nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _import_nodes(child, in_function or nested)


def collect(sources: Mapping[str, str]) -> list[Import]:
    """Every greenzmq-to-greenzmq import in ``sources`` (relative path -> text)."""
    modules = {module_name(p) for p in sources}
    found = []
    for path, text in sources.items():
        importer = module_name(path)
        package = importer if path.endswith("__init__.py") else importer.rpartition(".")[0]
        for node, module_level in _import_nodes(ast.parse(text, path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(x for x in (base, node.module) if x)
                # `from . import protocol` names a module; `from .. import __version__` does not
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            found.extend(
                Import(path, importer, t, node.lineno, module_level)
                for t in dict.fromkeys(targets)
                if t == "greenzmq" or t.startswith("greenzmq.")
            )
    return found


def layer(module: str) -> str:
    """``greenzmq.core.sockets`` -> ``core``; ``greenzmq`` -> ``greenzmq``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


# -- the rules --------------------------------------------------------------------
ONLY = {
    "core": {"core", "errors"},
    "patterns": {"core", "patterns", "errors"},
    "rpc": {"core", "patterns", "rpc", "errors"},
    "errors": set(),
}


def direction_violations(imports: list[Import]) -> list[str]:
    """The imports that break the module docstring's rules, as readable lines."""
    bad = []
    for imp in imports:
        src, dst = layer(imp.importer), layer(imp.target)
        if src in ONLY and dst not in ONLY[src]:
            bad.append(f"{imp}: {src} may import only {sorted(ONLY[src])}")
        elif src == "launcher" and dst in ("patterns", "tools"):
            bad.append(f"{imp}: the launcher never imports {dst}")
        elif (
            src == "launcher"
            and imp.module_level
            and dst not in ("launcher", "errors")
            and imp.target not in FORK_SAFE_CORE
        ):
            allowed = ["launcher", "errors", *sorted(FORK_SAFE_CORE)]
            bad.append(f"{imp}: at module level the launcher imports only {allowed} (rule 7)")
    return bad


def launcher_loops(imports: list[Import]) -> list[list[str]]:
    """Import loops among the launcher's modules (lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if layer(imp.importer) == layer(imp.target) == "launcher" and imp.importer != imp.target:
            graph.setdefault(imp.importer, set()).add(imp.target)
    loops: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            loop = path[path.index(node) :]
            if min(loop) == loop[0]:  # each loop once, from its smallest name
                loops.add((*loop, node))
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])

    for start in sorted(graph):
        visit(start, [])
    return [list(loop) for loop in sorted(loops)]


def package_sources() -> dict[str, str]:
    """Every module of the package: relative path -> text."""
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


# -- fresh interpreters ------------------------------------------------------------
PROBE = """\
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2:])))
"""


def loaded_after_import(module: str) -> list[str]:
    """The zmq and gevent modules a fresh interpreter holds after ``import module``."""
    r = subprocess.run(
        [sys.executable, "-c", PROBE, module, *FORBIDDEN_IN_MASTER],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def master_modules() -> list[str]:
    """Each launcher module but the worker's, and the other modules the master imports."""
    launcher = sorted(
        module_name(p.relative_to(ROOT).as_posix())
        for p in (PACKAGE / "launcher").glob("*.py")
        if p.stem != "workerproc"
    )
    # core.stats: runner.validate_start, in the master, reads GREENZMQ_STATS with it
    master_core = [*FORK_SAFE_CORE, "greenzmq.core.stats"]
    return ["greenzmq", "greenzmq.cli", "greenzmq.errors", *master_core, *launcher]


# -- the tests ------------------------------------------------------------------------
class TestForkSafeImports:
    @pytest.mark.parametrize("module", master_modules())
    def test_no_zmq_no_gevent(self, module: str) -> None:
        """Importing the module in a fresh interpreter loads neither zmq nor gevent."""
        assert loaded_after_import(module) == []

    def test_the_probe_sees_zmq(self) -> None:
        """The probe reports zmq and gevent where they are imported (core.sockets)."""
        loaded = loaded_after_import("greenzmq.core.sockets")
        assert {"zmq", "zmq.green", "gevent"} <= set(loaded), loaded

    def test_every_launcher_module_is_probed(self) -> None:
        """A new launcher module is probed without editing this file."""
        probed = set(master_modules())
        on_disk = {
            module_name(p.relative_to(ROOT).as_posix()) for p in (PACKAGE / "launcher").glob("*.py")
        }
        assert on_disk - probed == {"greenzmq.launcher.workerproc"}


class TestImportDirection:
    def test_imports_flow_down(self) -> None:
        """No import breaks the rules of the module docstring (known exceptions aside)."""
        imports = collect(package_sources())
        assert len(imports) > 50, "too few imports found: the reader is broken"
        known = {(i.path, i.target) for i in imports}
        stale = sorted(k for k in KNOWN_EXCEPTIONS if k not in known)
        assert not stale, f"fixed: remove from KNOWN_EXCEPTIONS: {stale}"
        bad = direction_violations(
            [i for i in imports if (i.path, i.target) not in KNOWN_EXCEPTIONS]
        )
        assert not bad, "\n".join(bad)

    def test_launcher_has_no_import_loop(self) -> None:
        """No two launcher modules import each other, even lazily (arbiter -> workerproc only)."""
        loops = launcher_loops(collect(package_sources()))
        assert not loops, "\n".join(" -> ".join(loop) for loop in loops)

    def test_the_master_imports_the_worker_only_lazily(self) -> None:
        """arbiter imports workerproc inside a function (after the fork), never on import."""
        edges = [
            i
            for i in collect(package_sources())
            if i.importer == "greenzmq.launcher.arbiter"
            and i.target == "greenzmq.launcher.workerproc"
        ]
        assert edges and not [i for i in edges if i.module_level]


class TestTheCheckerCatches:
    """Sources made to break each rule: each check can fail."""

    def violations(self, **files: str) -> list[str]:
        """The direction violations of ``files`` (``core__x`` names greenzmq/core/x.py)."""
        sources = {"greenzmq/" + k.replace("__", "/") + ".py": v for k, v in files.items()}
        return direction_violations(collect(sources))

    def test_core_importing_patterns(self) -> None:
        """core -> patterns, even inside a function."""
        src = "def f():\n    from ..patterns.broker import Broker\n"
        assert self.violations(core__sockets=src, patterns__broker="")

    def test_core_importing_the_command(self) -> None:
        """core -> cli, absolute."""
        assert self.violations(core__stats="from greenzmq.cli import plain\n", cli="")

    def test_patterns_importing_the_launcher(self) -> None:
        """patterns -> launcher."""
        assert self.violations(patterns__ppp="from ..launcher import config\n", launcher__config="")

    def test_launcher_importing_the_runtime_on_import(self) -> None:
        """launcher -> core.sockets on import (TYPE_CHECKING too); fine in a function."""
        core = {"core__sockets": "", "core__endpoints": ""}
        assert self.violations(launcher__config="from ..core import sockets\n", **core)
        typing_only = "if TYPE_CHECKING:\n    from ..core.sockets import Socket\n"
        assert self.violations(launcher__config=typing_only, **core)
        lazy = "def f():\n    from ..core.sockets import Socket\n"
        assert not self.violations(launcher__config=lazy, **core)
        assert not self.violations(launcher__config="from ..core.endpoints import x\n", **core)

    def test_launcher_importing_tools_lazily(self) -> None:
        """launcher -> tools inside a function."""
        src = "def f():\n    from ..tools import bench\n"
        assert self.violations(launcher__runner=src, tools__bench="")

    def test_errors_importing_anything(self) -> None:
        """errors -> core."""
        assert self.violations(errors="from .core import endpoints\n", core__endpoints="")

    def test_launcher_loop(self) -> None:
        """arbiter -> workerproc (lazy) and workerproc -> arbiter (lazy) is a loop."""
        sources = {
            "greenzmq/launcher/arbiter.py": "def f():\n    from .workerproc import run\n",
            "greenzmq/launcher/workerproc.py": "def g():\n    from . import arbiter\n",
        }
        assert launcher_loops(collect(sources)) == [
            [
                "greenzmq.launcher.arbiter",
                "greenzmq.launcher.workerproc",
                "greenzmq.launcher.arbiter",
            ]
        ]
