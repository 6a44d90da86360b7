"""The machine description and the results table."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["format_table", "format_targets", "machine_info"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_revision(root: str) -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev.stdout.strip() or None


def machine_info(root: str) -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "aioquic": _version("aioquic"),
        "uvloop": _version("uvloop"),
        "cryptography": _version("cryptography"),
        "kwik": _version("kwik"),
        "kwik_revision": _git_revision(root),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _number(value: float, unit: str) -> str:
    if unit == "µs":
        return f"{value:.0f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:.0f}"
    return f"{value:.2f}"


def _figure(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return ""
    if summary["median"] is None:
        return "n/a"
    unit = summary["unit"]
    text = _number(summary["median"], unit)
    if summary["n"] > 1:
        text += f" ({_number(summary['min'], unit)}–{_number(summary['max'], unit)})"
    return text


def _ratio(row: dict[str, Any]) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "n/a"
    text = f"{ratio:.2f}x"
    spread = row.get("ratio_spread")
    if spread and spread["n"] > 1:
        text += f" ({spread['min']:.2f}–{spread['max']:.2f})"
    return text


def table_rows(scenarios: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows of the results table: scenario, what, kwik, aioquic, ratio."""
    rows: list[list[str]] = []
    for name, result in scenarios.items():
        if result.get("selected") is False:
            continue
        if result["status"] == "skipped":
            rows.append([name, f"skipped: {result['reason']}", "", "", ""])
            continue
        if not result.get("rows"):
            rows.append([name, f"error: {result.get('reason', '?')}", "", "", ""])
            continue
        for row in result["rows"]:
            rows.append(
                [name, row["what"], _figure(row["kwik"]), _figure(row["aioquic"]), _ratio(row)]
            )
        if result["status"] == "error":
            rows.append([name, f"error: {result.get('reason', '?')}", "", "", ""])
    return rows


def format_table(scenarios: dict[str, dict[str, Any]], raw_label: str = "aioquic") -> str:
    """A markdown table; figures are "median (min–max)" over the runs, ratio is kwik/raw."""
    header = ["scenario", "what", "kwik", raw_label, "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table_rows(scenarios):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(lines)


def format_targets(scenarios: dict[str, dict[str, Any]]) -> str:
    """One line per target of the issue: measured value and whether it is met."""
    lines = []
    for name, result in scenarios.items():
        for row in result.get("rows", []):
            target = row.get("target")
            if not target:
                continue
            subject = "kwik/aioquic" if target["on"] == "ratio" else "kwik"
            measured = target["measured"]
            shown = "n/a" if measured is None else f"{measured:.2f}"
            verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
            lines.append(
                f"- {name}: {row['what']}: {subject} = {shown}, "
                f"target {target['op']} {target['value']}: {verdict}"
            )
    return "\n".join(lines)
