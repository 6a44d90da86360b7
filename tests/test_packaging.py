"""Packaging: the version has one source, and the wheel and sdist carry what users need."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import kwik
from kwik import _version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_version_comes_from_pyproject() -> None:
    assert kwik.__version__ == PYPROJECT["version"]
    assert _version._from_checkout() == PYPROJECT["version"]


def test_metadata_is_complete() -> None:
    assert PYPROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "Typing :: Typed" in PYPROJECT["classifiers"]
    assert (ROOT / "kwik" / "py.typed").exists()


@pytest.mark.timeout(240)
@pytest.mark.skipif(
    importlib.util.find_spec("build") is None, reason="needs the 'build' package (dev extra)"
)
def test_wheel_and_sdist_build_and_carry_py_typed(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = PYPROJECT["version"]
    wheel = tmp_path / f"kwik-{version}-py3-none-any.whl"
    sdist = tmp_path / f"kwik-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"kwik-{version}.dist-info/METADATA").decode()
        entry_points = archive.read(f"kwik-{version}.dist-info/entry_points.txt").decode()
    assert "kwik/py.typed" in names
    assert "kwik/__main__.py" in names and "kwik/_cli.py" in names
    assert f"kwik-{version}.dist-info/licenses/LICENSE" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/")) for name in names)
    assert "License-Expression: MIT" in metadata
    assert f"Version: {version}" in metadata
    assert "kwik = kwik._cli:main" in entry_points
    with tarfile.open(sdist) as archive:
        members = set(archive.getnames())
    prefix = f"kwik-{version}/"
    for required in ("kwik/py.typed", "LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"):
        assert prefix + required in members, required
