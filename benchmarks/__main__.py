"""``python -m benchmarks``: run the scenarios, print the table, optionally write JSON.

Usage::

    python -m benchmarks                       # every scenario, ~10 minutes
    python -m benchmarks --quick               # short pass (< 60 s), multipath skipped
    python -m benchmarks bulk rtt --repeat 5   # a subset
    python -m benchmarks --json results.json --loop uvloop
    python -m benchmarks --quick --plot charts/    # and PNG charts (the 'bench' extra)
    python -m benchmarks --from-json results.json --plot charts/   # charts only, no run
    python -m benchmarks soak --minutes 10      # long mixed workload, leaks and errors (soak.py)

The table goes to stdout, progress to stderr. Exit status 1 when a scenario produced no figure
(its error is in the table and the JSON), 2 on bad arguments and on ``--plot`` without
matplotlib (checked before anything runs).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import QuicSettings
from .harness import PACKAGE_ROOT
from .report import format_table, format_targets, machine_info
from .scenarios import SCENARIOS, Suite


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="kwik against raw aioquic, side by side: each scenario runs both systems "
        "(client and server in separate processes) under the same QUIC settings.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short pass: small sizes, one run each"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure and sample as JSON")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of every process (the 'loop' scenario runs both; default: asyncio)",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, metavar="N", help="runs per figure (default: 5)"
    )
    parser.add_argument(
        "--max-datagram-size",
        type=int,
        default=QuicSettings.max_datagram_size,
        metavar="BYTES",
        help="QUIC max_datagram_size for both systems (default: 1200)",
    )
    parser.add_argument(
        "--congestion-control",
        choices=("reno", "cubic"),
        default=QuicSettings.congestion_control,
        help="congestion control for both systems (default: reno)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="total time the run may spend waiting for other processes' load to drop before "
        "samples (default: 120, 0 with --quick)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run every worker under cProfile and write its profile to DIR "
        "(<scenario>-<variant>-<run>-client.prof / -server1.prof); slows everything down",
    )
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="write PNG charts into DIR: kwik vs aioquic per scenario, ratios, and the "
        "multipath run's throughput per path (needs matplotlib: the 'bench' extra)",
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="with --plot: draw the charts from a results file written by --json, without "
        "running anything",
    )
    parser.add_argument(
        "--engine",
        choices=("aioquic", "qh3"),
        default="aioquic",
        help="QUIC engine of both systems: kwik's Config.engine and the raw baseline (qh3: "
        "the raw peer on qh3 with kwik's UDP I/O, benchmarks/peer_raw.py; default aioquic)",
    )
    parser.add_argument(
        "--engines",
        metavar="LIST",
        help="comma-separated engines, e.g. aioquic,qh3: run the scenarios on each and print "
        "one table (and with --plot one chart, engines.png) of kwik and the raw engine on "
        "every engine",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def _terminate(signum: int, frame: Any) -> None:
    # let finally blocks (namespace cleanup, worker shutdown) run
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark suite (or the soak, ``soak ...``); return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:
        from . import soak

        return soak.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.list:
        for name, function in SCENARIOS.items():
            print(f"{name:10} {(function.__doc__ or '').strip()}")
        return 0
    if args.plot:
        from .plot import NO_MATPLOTLIB, have_matplotlib

        if not have_matplotlib():  # now, not after a run of many minutes
            print(f"--plot: {NO_MATPLOTLIB}", file=sys.stderr)
            return 2
    if args.from_json:
        if not args.plot:
            print("--from-json needs --plot DIR", file=sys.stderr)
            return 2
        from .plot import plot_json

        for chart in plot_json(Path(args.from_json), Path(args.plot)):
            print(chart)
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        print(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    if args.repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return 2
    selected = args.scenarios or list(SCENARIOS)
    signal.signal(signal.SIGTERM, _terminate)
    if args.engines:
        from .engines import compare_engines

        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        if not engines or any(e not in ("aioquic", "qh3") for e in engines):
            print("--engines takes a comma-separated list of aioquic, qh3", file=sys.stderr)
            return 2
        return compare_engines(args, engines, selected, _run_suite)
    settings = QuicSettings(
        max_datagram_size=args.max_datagram_size,
        congestion_control=args.congestion_control,
        engine=args.engine,
    )
    return _report(args, settings, selected, _run_suite(args, settings, selected))


def _run_suite(
    args: argparse.Namespace, settings: QuicSettings, selected: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], float]:
    """Run the selected scenarios; return their results, the machine and the duration."""
    quiet = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 120.0)
    started = time.monotonic()
    machine = machine_info(PACKAGE_ROOT)  # before the run: the revision measured
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kwik-bench-") as workdir:
        suite = Suite(
            quick=args.quick,
            loop=args.loop,
            repeat=args.repeat,
            settings=settings,
            workdir=Path(workdir),
            quiet_budget=quiet,
            profile_dir=Path(args.profile).resolve() if args.profile else None,
        )
        if suite.profile_dir is not None:
            suite.profile_dir.mkdir(parents=True, exist_ok=True)
        for name, scenario in SCENARIOS.items():
            if name not in selected:
                results[name] = {"status": "skipped", "reason": "not selected", "selected": False}
                continue
            scenario_start = time.monotonic()
            try:
                results[name] = scenario(suite)
            except Exception as exc:  # a broken scenario must not hide the others
                results[name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            results[name]["seconds"] = round(time.monotonic() - scenario_start, 1)
            suite.log(f"{name}: {results[name]['status']} in {results[name]['seconds']} s")
    return results, machine, time.monotonic() - started


def _report(
    args: argparse.Namespace,
    settings: QuicSettings,
    selected: list[str],
    run: tuple[dict[str, dict[str, Any]], dict[str, Any], float],
) -> int:
    results, machine, duration = run
    report = {
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "loop": args.loop,
            "repeat": 1 if args.quick else args.repeat,
            "quic": settings.to_dict(),
            "selected": selected,
        },
        "duration_seconds": round(duration, 1),
        "scenarios": results,
    }
    raw = "aioquic" if settings.engine == "aioquic" else f"raw {settings.engine}"
    if settings.engine != "aioquic":
        print(f"Engine: {settings.engine} (kwik on {settings.engine}, and the raw baseline on it)")
    print(format_table(results, raw_label=raw))
    targets = format_targets(results)
    if targets:
        print("\nTargets:\n" + targets)
    notes = [f"- {name}: {note}" for name, r in results.items() for note in r.get("notes", [])]
    if notes:
        print("\nNotes:\n" + "\n".join(notes))
    print(
        "\nFigures: median (min–max) over the runs. ratio = kwik / aioquic of the medians; in "
        "rows ending in (x) each column is that system's own ratio; rows marked (ratio only) "
        "compare two kwik variants, with the spread of the per-run ratios."
    )
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        from .plot import plot_report

        for chart in plot_report(report, Path(args.plot)):
            print(f"chart: {chart}", file=sys.stderr)
    return 1 if any(r["status"] == "error" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
