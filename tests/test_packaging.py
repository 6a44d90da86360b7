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
    importlib.util.find_spec("build") is None,
    reason="needs the 'dev' extra (the build package): pip install -e '.[dev]'",
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


# --- documentation ---------------------------------------------------------------------------

DOCS = ROOT / "docs"


def test_api_reference_documents_every_public_name() -> None:
    reference = (DOCS / "reference.md").read_text()
    configuration = (DOCS / "guide" / "configuration.md").read_text()
    for name in kwik.__all__:
        if name == "__version__":
            assert "`kwik.__version__`" in reference
            continue
        directive = f"::: kwik.{name}\n"
        assert directive in reference or directive in configuration, name


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    assert pages
    for page in pages:
        assert f": {page}\n" in nav, page


def _relative_links(markdown: str) -> list[str]:
    import re

    links = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [link for link in links if "://" not in link and not link.startswith("#")]


def test_readme_links_stay_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "shared/spec" not in readme
    links = _relative_links(readme)
    assert "docs/index.md" in links and "CHANGELOG.md" in links
    for link in links:
        target = (ROOT / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), link
        assert target.exists(), link


def test_changelog_has_unreleased_and_first_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "\n## Unreleased\n" in changelog
    assert f"\n## {PYPROJECT['version']}\n" in changelog
