"""QUIC engines kwik can run on, selected by ``Config.engine`` (or ``KWIK_ENGINE``).

Each engine is one module (``kwik._engines.aioquic``, ``kwik._engines.qh3``) holding every
private name of its QUIC implementation that kwik relies on, checked when the module is
imported. :func:`load` imports one on first use and raises :class:`EngineError` naming the
engine and what is missing; :func:`report` is what ``python -m kwik doctor`` prints.
"""

from __future__ import annotations

import importlib
import os

from .base import Engine, EngineError, HookCheck

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "Engine",
    "EngineError",
    "default_engine",
    "load",
    "report",
]

#: every engine kwik knows, the default first
ENGINES = ("aioquic", "qh3")
DEFAULT_ENGINE = "aioquic"

#: what installs each engine
_INSTALL = {"aioquic": "pip install kwik", "qh3": "pip install 'kwik[qh3]'"}

_loaded: dict[str, Engine] = {}


def default_engine() -> str:
    """``KWIK_ENGINE`` when set (and not empty), else :data:`DEFAULT_ENGINE`."""
    return os.environ.get("KWIK_ENGINE", "").strip() or DEFAULT_ENGINE


def load(name: str) -> Engine:
    """The engine named ``name``, imported (and checked) on first use.

    Raises:
        EngineError: ``name`` is no engine kwik knows, its package is not installed, or its
            checks failed; the message names the engine and the missing piece.
    """
    engine = _loaded.get(name)
    if engine is not None:
        return engine
    if name not in ENGINES:
        raise EngineError(
            f"unknown QUIC engine {name!r}: kwik runs on {', '.join(map(repr, ENGINES))}"
        )
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except EngineError:
        raise
    except ImportError as exc:
        raise EngineError(
            f"kwik cannot use engine {name!r}: {exc}; install it with: {_INSTALL[name]}"
        ) from exc
    loaded: Engine = module.ENGINE
    _loaded[name] = loaded
    return loaded


def report() -> list[tuple[str, str, list[HookCheck]]]:
    """For each engine: ``(name, status, checks)``; status is ``"ok"``, ``"missing"`` (not
    installed: the checks are empty and the reason is in the one check) or ``"broken"``."""
    out: list[tuple[str, str, list[HookCheck]]] = []
    for name in ENGINES:
        try:
            engine = load(name)
        except EngineError as exc:
            missing = "not installed" in str(exc) or "No module named" in str(exc)
            out.append(
                (name, "missing" if missing else "broken", [HookCheck(name, False, str(exc))])
            )
            continue
        checks = engine.hook_report()
        out.append((name, "ok" if all(c.ok for c in checks) else "broken", checks))
    return out
