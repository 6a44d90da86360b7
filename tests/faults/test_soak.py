"""The soak runs on demand (``python -m benchmarks soak``); here only a few seconds of it, to
keep its command line, progress line and summary table working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .lab import REPO_ROOT

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def test_soak_runs_and_reports() -> None:
    """A 3-second soak prints progress (stderr) and the summary table (stdout)
    with every figure for every process."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "soak", "--minutes", "0.05", "--workers", "3"]
        + ["--interval", "1"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=REPO_ROOT,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: an ERROR log line
    assert "] sessions " in proc.stderr and " error-logs " in proc.stderr  # progress lines
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("soak: 0.05 min, 3 workers: ")
    # ERROR log lines are the leak test's business (test_leaks.py checks them
    # deterministically); here the few random operations must all succeed
    assert " 0 failed operations, " in lines[0]
    for process in ("client", "primary", "relay"):
        for figure in ("rss MiB", "fds", "tasks", "sessions"):
            rows = [line for line in lines if line.startswith(f"{process:8} {figure:9} ")]
            assert len(rows) == 1, (process, figure, proc.stdout)
