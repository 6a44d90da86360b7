"""kwik's version, read from the installed distribution's metadata.

The version has one source of truth, ``pyproject.toml``. An installed kwik (wheel or
``pip install -e``) reports its distribution metadata; a checkout used without installing it
(``PYTHONPATH=.``) falls back to reading ``pyproject.toml`` beside the package.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

__all__ = ["__version__"]

#: Reported when neither the metadata nor a ``pyproject.toml`` names a version.
UNKNOWN_VERSION = "0+unknown"


def _from_checkout() -> str | None:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    version = project.get("version")
    if project.get("name") == "kwik" and isinstance(version, str):
        return version
    return None


def _find_version() -> str:
    try:
        return metadata.version("kwik")
    except metadata.PackageNotFoundError:
        return _from_checkout() or UNKNOWN_VERSION


__version__ = _find_version()
