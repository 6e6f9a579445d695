"""The wheel (issue 9.3): greenzmq is the only top-level package it installs.

A wheel is built from a copy of the source (the build writes ``build/`` and
an ``.egg-info`` beside ``setup.py``), offline: ``--no-build-isolation`` uses
this environment's setuptools and wheel (the ``test`` extra has ``wheel``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .helpers import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    for d in ("greenzmq", "services"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # without the wheel package, setuptools < 70.1 has no bdist_wheel: pip install wheel
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("greenzmq-*.whl")
    return whl


def _names(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        return z.namelist()


class TestWheel:
    @pytest.mark.deadline(180)
    def test_only_greenzmq_at_the_top(self, wheel: Path) -> None:
        """Every file (RECORD and the archive agree) is under greenzmq/ or its dist-info."""
        names = _names(wheel)
        with zipfile.ZipFile(wheel) as z:
            info = next(n for n in names if n.endswith(".dist-info/RECORD")).rpartition("/")[0]
            record = [line.split(",")[0] for line in z.read(f"{info}/RECORD").decode().splitlines()]
            top_level = z.read(f"{info}/top_level.txt").decode().split()
        assert sorted(record) == sorted(names)
        assert {n.split("/")[0] for n in names} == {"greenzmq", info}
        assert top_level == ["greenzmq"]

    @pytest.mark.deadline(180)
    def test_roles_ship_inside_greenzmq(self, wheel: Path) -> None:
        """services/ is greenzmq/services (its __init__, not the stand-in); bench scripts too."""
        names = set(_names(wheel))
        for p in sorted((ROOT / "services").glob("*.py")):
            assert f"greenzmq/services/{p.name}" in names
        bench = ("broker_anchors.py", "mux.py", "mux_anchors.py", "reliable.py")
        for name in (*bench, "reliable_anchors.py"):  # greenzmq bench's
            assert f"greenzmq/tools/benchmarks/{name}" in names
        with zipfile.ZipFile(wheel) as z:
            init = z.read("greenzmq/services/__init__.py")
        assert init == (ROOT / "services" / "__init__.py").read_bytes()

    @pytest.mark.deadline(180)
    def test_installed_roles_work_beside_a_users_services(
        self, wheel: Path, tmp_path: Path
    ) -> None:
        """Installed, `greenzmq greenzmq.services.broker:app` and the user's own
        `services.mine:app` both load from a project that has a services/ package."""
        site = tmp_path / "site"
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
             str(site), str(wheel)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == [
            "bin",  # the console script
            "greenzmq",
        ]
        project = tmp_path / "project"
        (project / "services").mkdir(parents=True)
        (project / "services" / "__init__.py").write_text("")
        (project / "services" / "mine.py").write_text(
            "from greenzmq import Service\n\n\nclass Mine(Service):\n"
            "    name = 'mine'\n\n    def run(self) -> None:\n        pass\n\n\napp = Mine\n"
        )
        env = {**os.environ, "PYTHONPATH": str(site)}

        def check(spec: str) -> str:
            p = subprocess.run(
                [sys.executable, "-m", "greenzmq", "--check-config", spec],
                cwd=project, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert p.returncode == 0, p.stdout + p.stderr
            return p.stdout + p.stderr

        assert "(broker)" in check("greenzmq.services.broker:app")
        assert "(mine)" in check("services.mine:app")
        where = subprocess.run(
            [sys.executable, "-c", "import greenzmq.services.broker as m; print(m.__file__)"],
            cwd=project, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert where.stdout.strip() == str(site / "greenzmq" / "services" / "broker.py")
