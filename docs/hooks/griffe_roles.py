"""Griffe extension: turn the Sphinx roles of kwik's docstrings into mkdocstrings links.

kwik's docstrings are written for readers of the source and for IDEs, with roles such as
``:class:`~kwik.SessionClosedError``` or ``:meth:`Session.add_relay```. mkdocstrings does not
understand roles, so this extension rewrites them when the API is loaded: a role naming a public
name of ``kwik`` (or a public member of one) becomes a cross-reference to its documentation;
any other role becomes plain code, so the build never links to something it does not render.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _public_names() -> set[str]:
    """The names of ``kwik.__all__``, read from the source without importing kwik."""
    init = Path(__file__).resolve().parents[2] / "kwik" / "__init__.py"
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


PUBLIC = _public_names()


def rewrite(text: str) -> str:
    """``text`` with every role replaced by a link or by code."""

    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2).strip()
        target = target.removesuffix("()")
        parts = target.split(".")
        if parts[0] == "kwik":
            parts = parts[1:]
        shown = parts[-1] if short and parts else ".".join(parts)
        if match.group(0).startswith((":meth:", ":func:")):
            shown += "()"
        linkable = (
            bool(parts)
            and parts[0] in PUBLIC
            and not any(p.startswith("_") for p in parts)
            and len(parts) <= 2
        )
        if linkable:
            return f"[`{shown}`][kwik.{'.'.join(parts)}]"
        return f"`{shown}`"

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrites roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
