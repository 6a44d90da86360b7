"""The benchmark suite runs and reports: ``python -m benchmarks --quick --json FILE``.

Benchmarks are not tests: nothing here checks a figure against a value, only that every
scenario produced figures (or says why it was skipped) and that the JSON is well formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

QuickRun = tuple[subprocess.CompletedProcess[str], dict[str, Any]]

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("bulk", "bulk-down", "streams", "rtt", "sessions", "pool", "loop", "multipath")


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> QuickRun:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_run_reports_every_scenario(
    quick_run: QuickRun,
) -> None:
    proc, report = quick_run
    assert set(report) >= {"machine", "settings", "scenarios"}
    assert report["settings"]["quick"] is True
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, result in report["scenarios"].items():
        assert result["status"] in ("ok", "skipped"), (name, result.get("reason"))
        if result["status"] == "skipped":
            assert result["reason"], name
            continue
        assert result["rows"], name
        for row in result["rows"]:
            if row.get("derived"):
                assert row["ratio"] is None or row["ratio"] > 0, (name, row)
                continue
            for system in ("kwik", "aioquic"):
                figure = row[system]
                assert figure["n"] >= 1 and figure["median"] is not None, (name, row["what"])
                assert figure["min"] <= figure["median"] <= figure["max"]
                assert len(figure["samples"]) == figure["n"]
    assert report["scenarios"]["multipath"]["status"] == "skipped"
    # the table names every scenario
    for name in SCENARIOS:
        assert f"| {name} |" in proc.stdout


@pytest.mark.timeout(150)
def test_machine_description(quick_run: QuickRun) -> None:
    machine = quick_run[1]["machine"]
    for key in ("cpu", "cpus", "python", "aioquic", "os"):
        assert machine[key], key


def test_unknown_scenario_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "no-such-scenario"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr


@pytest.mark.timeout(150)
def test_engines_comparison_puts_every_engine_in_one_table(tmp_path: Path) -> None:
    """``--engines aioquic,qh3``: kwik and the raw engine on each engine, in one table and the
    JSON (raw qh3 is the raw peer on qh3 with kwik's UDP I/O)."""
    pytest.importorskip("qh3", reason="qh3 is not installed (pip install 'kwik[qh3]')")
    out = tmp_path / "engines.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "bulk", "--quick", "--engines", "aioquic,qh3"]
        + ["--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    header = proc.stdout.splitlines()[0]
    for column in ("kwik on aioquic", "raw aioquic", "kwik on qh3", "raw qh3"):
        assert column in header, header
    report = json.loads(out.read_text())
    assert report["engines"] == ["aioquic", "qh3"]
    (row, *_) = [r for r in report["rows"] if r["what"].endswith("MB/s")]
    for engine in ("aioquic", "qh3"):
        assert row[engine]["kwik"]["median"] > 0 and row[engine]["raw"]["median"] > 0
