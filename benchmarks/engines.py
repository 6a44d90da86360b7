"""``python -m benchmarks --engines aioquic,qh3``: kwik and the raw engine on every engine, in
one table and one chart.

Each engine's run is an ordinary run of the selected scenarios (``--engine E``): kwik on E
against the raw baseline on E (raw aioquic: :mod:`benchmarks.peer_aioquic`; raw qh3: the same
raw peer on qh3 with kwik's UDP I/O, :mod:`benchmarks.peer_raw`). The engines run one after
the other, so machine drift between them is not interleaved away; the kwik/raw ratio within an
engine is.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import QuicSettings
from .report import _figure

__all__ = ["combined_rows", "compare_engines", "format_engine_table", "plot_engines"]

Run = tuple[dict[str, dict[str, Any]], dict[str, Any], float]


def _median(summary: dict[str, Any] | None) -> float | None:
    if not summary:
        return None
    value = summary.get("median")
    return float(value) if value is not None else None


def combined_rows(by_engine: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (scenario, what) present in any engine's results: each engine's kwik and
    raw summaries."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for engine, scenarios in by_engine.items():
        for name, result in scenarios.items():
            for row in result.get("rows", []):
                if row.get("derived") or row.get("kwik") is None:
                    continue
                key = (name, row["what"])
                entry = rows.setdefault(key, {"scenario": name, "what": row["what"]})
                entry[engine] = {"kwik": row["kwik"], "raw": row["aioquic"]}
    return list(rows.values())


def format_engine_table(rows: list[dict[str, Any]], engines: list[str]) -> str:
    header = ["scenario", "what"]
    for engine in engines:
        header += [f"kwik on {engine}", f"raw {engine}", f"kwik/raw {engine}"]
    if len(engines) > 1:
        header.append(f"kwik {engines[-1]} / kwik {engines[0]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["scenario"], row["what"]]
        for engine in engines:
            pair = row.get(engine) or {}
            k, r = _median(pair.get("kwik")), _median(pair.get("raw"))
            cells += [
                _figure(pair.get("kwik")) if pair.get("kwik") else "",
                _figure(pair.get("raw")) if pair.get("raw") else "",
                f"{k / r:.2f}x" if k is not None and r else "",
            ]
        if len(engines) > 1:
            first = _median((row.get(engines[0]) or {}).get("kwik"))
            last = _median((row.get(engines[-1]) or {}).get("kwik"))
            cells.append(f"{last / first:.2f}x" if first and last is not None else "")
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def _short(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot_engines(rows: list[dict[str, Any]], engines: list[str], out_dir: Path) -> Path:
    """One chart: for every row, the medians of kwik and the raw engine on every engine
    (each row normalised to its largest bar, the figure written on the bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not r["what"].startswith("CPU")]
    series = [
        (label, e, system)
        for e in engines
        for label, system in ((f"kwik on {e}", "kwik"), (f"raw {e}", "raw"))
    ]
    fig, ax = plt.subplots(figsize=(max(8, 1.8 * len(shown)), 5))
    width = 0.8 / len(series)
    for i, (label, engine, system) in enumerate(series):
        heights, texts = [], []
        for row in shown:
            values = [_median((row.get(e) or {}).get(s)) for _, e, s in series]
            top = max((v for v in values if v is not None), default=None)
            value = _median((row.get(engine) or {}).get(system))
            heights.append(value / top if value is not None and top else 0.0)
            texts.append("" if value is None else _short(value))
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(shown))]
        bars = ax.bar(xs, heights, width, label=label)
        for bar, text in zip(bars, texts, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height(),
                text,
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels(
        [f"{r['scenario']}\n" + "\n".join(textwrap.wrap(r["what"], 24)) for r in shown],
        fontsize=7,
    )
    ax.set_ylabel("relative to the best of the row (figure on each bar)")
    ax.set_ylim(0, 1.35)
    ax.set_title("kwik and the raw QUIC engine, per engine (medians)")
    ax.legend(fontsize=8, ncol=len(series))
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "engines.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_engines(
    args: argparse.Namespace,
    engines: list[str],
    selected: list[str],
    run_suite: Callable[[argparse.Namespace, QuicSettings, list[str]], Run],
) -> int:
    """Run the selected scenarios on every engine; print the combined table (and chart)."""
    by_engine: dict[str, dict[str, dict[str, Any]]] = {}
    machine: dict[str, Any] = {}
    failed = False
    for engine in engines:
        print(f"== engine {engine}", file=sys.stderr, flush=True)
        settings = QuicSettings(
            max_datagram_size=args.max_datagram_size,
            congestion_control=args.congestion_control,
            engine=engine,
        )
        results, machine, _ = run_suite(args, settings, selected)
        by_engine[engine] = results
        failed = failed or any(r["status"] == "error" for r in results.values())
    rows = combined_rows(by_engine)
    print(format_engine_table(rows, engines))
    print(
        "\nFigures: median (min–max) over the runs; kwik/raw divides the medians within one "
        "engine; the last column divides kwik's medians across engines."
    )
    if args.json:
        report = {"machine": machine, "engines": engines, "scenarios": by_engine, "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        print(f"chart: {plot_engines(rows, engines, Path(args.plot))}", file=sys.stderr)
    return 1 if failed else 0
