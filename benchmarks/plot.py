"""PNG charts of benchmark results (``python -m benchmarks --plot DIR``), with matplotlib.

* ``<scenario>.png``: for every scenario that ran, one panel per measured figure, kwik and raw
  aioquic side by side: the bar is the median, the whisker the spread (min to max) and the
  dots the individual runs.
* ``ratios.png``: every figure's kwik / aioquic ratio in one chart (1.0 = parity), with the
  spread of the per-run ratios.
* ``multipath-paths.png``: when the ``multipath`` scenario ran, the two-server download's
  throughput over time on each path (stacked: the primary's and the relay's share), against
  the single-path rate.

:func:`plot_path_throughput` draws the last chart from any :class:`benchmarks.paths.PathSampler`
series; ``python -m examples.file_transfer.client --plot`` uses it too.

matplotlib comes with the ``bench`` extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NO_MATPLOTLIB",
    "comparison_figure",
    "have_matplotlib",
    "plot_comparison",
    "plot_multipath",
    "plot_path_throughput",
    "plot_ratios",
    "plot_report",
    "ratios_figure",
]

KWIK_COLOR = "#2b6cb0"
AIOQUIC_COLOR = "#a0aec0"
PATH_COLORS = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096")
#: Small charts: they are committed under docs/ and shown on a web page.
DPI = 80


#: Why there are no charts, when matplotlib is missing.
NO_MATPLOTLIB = "charts need matplotlib: pip install -e '.[bench]' (the 'bench' extra)"


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (``python -m benchmarks --plot`` asks before it runs
    anything, rather than fail after the whole run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(NO_MATPLOTLIB) from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _measured_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows with figures for both systems (derived ratio-only rows have none)."""
    return [
        row
        for row in result.get("rows", [])
        if (row.get("kwik") or {}).get("n") and (row.get("aioquic") or {}).get("n")
    ]


def _fit_suptitle(figure: Any, text: str, fontsize: float) -> Any:
    """``figure``'s title, wrapped onto as many lines as it needs to fit the figure's width (a
    chart with one narrow panel would clip it on both sides otherwise)."""
    renderer = figure.canvas.get_renderer()
    available = figure.get_figwidth() * figure.dpi * 0.96
    width = len(text)
    while True:
        title = figure.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=fontsize)
        if title.get_window_extent(renderer).width <= available or width <= 12:
            return title
        width -= 4


def comparison_figure(name: str, result: dict[str, Any]) -> Any:
    """The figure :func:`plot_comparison` saves (None when the scenario has no figure); the
    caller closes it."""
    rows = _measured_rows(result)
    if not rows:
        return None
    plt = _pyplot()
    columns = min(3, len(rows))
    lines = (len(rows) + columns - 1) // columns
    figure, axes = plt.subplots(
        lines, columns, figsize=(3.6 * columns, 3.0 * lines), squeeze=False, dpi=DPI
    )
    for index, row in enumerate(rows):
        axis = axes[index // columns][index % columns]
        for position, (system, color) in enumerate(
            (("kwik", KWIK_COLOR), ("aioquic", AIOQUIC_COLOR))
        ):
            summary = row[system]
            median = summary["median"]
            axis.bar(position, median, color=color, width=0.6, label=system)
            axis.errorbar(
                position,
                median,
                yerr=[[median - summary["min"]], [summary["max"] - median]],
                color="black",
                capsize=6,
                linewidth=1,
            )
            samples = summary.get("samples", [])
            axis.plot([position] * len(samples), samples, "o", color="black", markersize=3)
        axis.set_xticks([0, 1], ["kwik", "aioquic"])
        axis.set_ylabel(row["unit"])
        ratio = row.get("ratio")
        title = "\n".join(textwrap.wrap(row["what"], 34))
        if ratio is not None:
            title += f"\nkwik / aioquic = {ratio:.2f}x"
        axis.set_title(title, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.set_ylim(bottom=0)
    for index in range(len(rows), lines * columns):
        axes[index // columns][index % columns].axis("off")
    _fit_suptitle(figure, f"{name}: kwik vs raw aioquic (median, min–max, runs)", 10)
    figure.tight_layout()
    return figure


def plot_comparison(name: str, result: dict[str, Any], out: Path) -> Path | None:
    """``out``: one panel per figure of scenario ``name``; None when it has no figure."""
    figure = comparison_figure(name, result)
    if figure is None:
        return None
    figure.savefig(out)
    _pyplot().close(figure)
    return out


def _pairwise_ratios(row: dict[str, Any]) -> list[float]:
    kwik, aioquic = row["kwik"].get("samples", []), row["aioquic"].get("samples", [])
    if len(kwik) != len(aioquic):
        return []
    return [k / a for k, a in zip(kwik, aioquic, strict=True) if a]


#: Characters per line of a label in the ratios chart (longer ones take two lines or more).
RATIO_LABEL_WIDTH = 62


def _ratio_label(name: str, what: str) -> str:
    """A row's label in the ratios chart: the whole description, wrapped (two rows that differ
    only at the end of a long description, e.g. ``worker_pool=True`` and ``=False``, must not
    look alike)."""
    return "\n".join(textwrap.wrap(f"{name}: {what}", RATIO_LABEL_WIDTH))


def ratios_figure(scenarios: dict[str, Any]) -> Any:
    """The figure :func:`plot_ratios` saves (None without any ratio); the caller closes it."""
    labels: list[str] = []
    ratios: list[float] = []
    spreads: list[tuple[float, float]] = []
    better: list[bool] = []
    for name, result in scenarios.items():
        for row in _measured_rows(result):
            if row.get("ratio") is None:
                continue
            labels.append(_ratio_label(name, row["what"]))
            ratios.append(row["ratio"])
            runs = _pairwise_ratios(row) or [row["ratio"]]
            spreads.append((row["ratio"] - min(runs), max(runs) - row["ratio"]))
            better.append(bool(row.get("higher_is_better", True)))
    if not ratios:
        return None
    plt = _pyplot()
    lines = sum(label.count("\n") + 1 for label in labels)
    figure, axis = plt.subplots(figsize=(8.5, 0.2 * lines + 0.12 * len(ratios) + 1.2), dpi=DPI)
    positions = list(range(len(ratios)))[::-1]
    colors = [KWIK_COLOR if up else "#c05621" for up in better]
    axis.barh(positions, ratios, color=colors, height=0.6)
    axis.errorbar(
        ratios,
        positions,
        xerr=[[s[0] for s in spreads], [s[1] for s in spreads]],
        fmt="none",
        color="black",
        capsize=3,
        linewidth=1,
    )
    axis.axvline(1.0, color="black", linestyle="--", linewidth=1)
    axis.set_yticks(positions, labels, fontsize=7)
    axis.set_xlabel(
        "kwik / aioquic (blue: higher is better for kwik; orange: lower is better)", fontsize=8
    )
    axis.set_title("kwik relative to raw aioquic, per figure (spread: per-run ratios)", fontsize=9)
    figure.tight_layout()
    return figure


def plot_ratios(scenarios: dict[str, Any], out: Path) -> Path | None:
    """``out``: the kwik / aioquic ratio of every figure, one bar each; None without any."""
    figure = ratios_figure(scenarios)
    if figure is None:
        return None
    figure.savefig(out)
    _pyplot().close(figure)
    return out


def _rates(times: Sequence[float], counts: Sequence[int]) -> tuple[list[float], list[float]]:
    """Mid-interval times and MB/s between consecutive cumulative counts."""
    mids: list[float] = []
    rates: list[float] = []
    for i in range(1, len(times)):
        span = times[i] - times[i - 1]
        if span <= 0:
            continue
        mids.append((times[i] + times[i - 1]) / 2)
        rates.append((counts[i] - counts[i - 1]) / span / 1e6)
    return mids, rates


def plot_path_throughput(
    series: dict[str, Any],
    out: Path,
    *,
    title: str = "throughput per path",
    baseline: float | None = None,
    baseline_label: str = "one path",
) -> Path:
    """``out``: MB/s received on each path over time, stacked, from a ``PathSampler`` series.

    The legend gives each path's share of all bytes received; ``baseline`` (MB/s), when given,
    is drawn as a dashed line for comparison.
    """
    plt = _pyplot()
    times: list[float] = series["t"]
    paths: list[dict[str, Any]] = series["paths"]
    total = sum(p["bytes"][-1] - p["bytes"][0] for p in paths) or 1
    figure, axis = plt.subplots(figsize=(7, 3.4), dpi=DPI)
    stacked: list[list[float]] = []
    labels: list[str] = []
    mids: list[float] = []
    for path in paths:
        mids, rates = _rates(times, path["bytes"])
        stacked.append(rates)
        role = "primary" if path.get("is_primary") else "relay"
        share = (path["bytes"][-1] - path["bytes"][0]) / total * 100
        labels.append(f"path {path['path_id']} ({role}, {path['address']}): {share:.0f}%")
    if mids:
        axis.stackplot(
            mids, *stacked, labels=labels, colors=PATH_COLORS[: len(stacked)], alpha=0.85
        )
    if baseline is not None:
        axis.axhline(baseline, color="black", linestyle="--", linewidth=1, label=baseline_label)
    elapsed = times[-1] - times[0] if len(times) > 1 else 0.0
    rate = total / elapsed / 1e6 if elapsed > 0 else 0.0
    axis.set_title(f"{title}: {total / 1e6:.1f} MB in {elapsed:.1f} s, {rate:.2f} MB/s", fontsize=9)
    axis.set_xlabel("seconds")
    axis.set_ylabel("MB/s received")
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=7, loc="upper left", framealpha=0.9)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out


def _median_sample(samples: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    usable = [s for s in samples if metric in s.get("values", {})]
    if not usable:
        return None
    middle = statistics.median_low([s["values"][metric] for s in usable])
    return next(s for s in usable if s["values"][metric] == middle)


def plot_multipath(result: dict[str, Any], out: Path) -> Path | None:
    """``out``: per-path throughput of the median two-server kwik run; None without one."""
    samples = result.get("samples", {})
    dual = _median_sample(samples.get("kwik-dual", []), "mbps")
    if dual is None or "path_samples" not in dual.get("result", {}):
        return None
    single = [s["values"]["mbps"] for s in samples.get("kwik-single", []) if "mbps" in s["values"]]
    return plot_path_throughput(
        dual["result"]["path_samples"],
        out,
        title="kwik, primary + relay, one stream",
        baseline=statistics.median(single) if single else None,
        baseline_label="primary alone (median)",
    )


def plot_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """Every chart the report allows, written into ``directory``; the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    scenarios: dict[str, Any] = report["scenarios"]
    written: list[Path] = []
    for name, result in scenarios.items():
        if result.get("status") != "ok":
            continue
        chart = plot_comparison(name, result, directory / f"{name}.png")
        if chart is not None:
            written.append(chart)
    ratios = plot_ratios(
        {n: r for n, r in scenarios.items() if r.get("status") == "ok"}, directory / "ratios.png"
    )
    if ratios is not None:
        written.append(ratios)
    multipath = scenarios.get("multipath", {})
    if multipath.get("status") == "ok":
        chart = plot_multipath(multipath, directory / "multipath-paths.png")
        if chart is not None:
            written.append(chart)
    return written


def plot_json(path: Path, directory: Path) -> list[Path]:
    """:func:`plot_report` on a results file written by ``python -m benchmarks --json``."""
    return plot_report(json.loads(path.read_text()), directory)
