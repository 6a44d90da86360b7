"""The worker-pool example and its benchmark run as documented (as subprocesses).

No thresholds on the figures: only that both finish, pass their own checks, and report what
they promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m args...`` from the repository root, with the repository importable."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.timeout(TIMEOUT + 10)
def test_worker_pool_check_passes() -> None:
    """50 concurrent sessions share one pool; tasks stay flat; everything is gone at the end."""
    result = run_module("examples.worker_pool_test")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "FAIL" not in result.stdout, output
    assert "Established 50 sessions in" in result.stdout
    assert "Pool stats with every session open:" in result.stdout
    assert "reuse_ratio=" in result.stdout
    for check in (
        "PASS: every session shares the one pool",
        "PASS: pool reference count >= 50 while the sessions are open",
        "PASS: short exchange: 50 x 65536 bytes echoed intact",
        "PASS: task count does not grow with the number of packets",
        "PASS: the pool is gone once every session closed",
        "PASS: a listener without sessions holds no pool",
        "PASS: the first session created the worker pool",
        "PASS: task count back where it started",
    ):
        assert check in result.stdout, output
    assert "Worker pool test completed successfully" in result.stdout


@pytest.mark.timeout(TIMEOUT + 10)
def test_worker_pool_check_fails_loudly() -> None:
    """A check that cannot pass (no time at all) prints FAIL and exits non-zero."""
    result = run_module("examples.worker_pool_test", "--sessions", "2", "--timeout", "0.001")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: check finished within" in result.stdout


@pytest.mark.timeout(TIMEOUT + 10)
def test_bench_quick_writes_both_modes(tmp_path: Path) -> None:
    """--quick runs both modes and writes every promised figure to --json."""
    out = tmp_path / "bench.json"
    result = run_module("examples.worker_pool_test.bench", "--quick", "--json", str(out))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "pool/inline" in result.stdout
    assert f"JSON written to {out.resolve()}" in result.stdout
    data = json.loads(out.read_text())
    assert data["settings"]["size_mib"] == 2
    assert data["settings"]["repeat"] == 1
    figures = (
        "throughput_mb_s",
        "alloc_bytes_per_mib",
        "peak_tasks",
        "rtt_p50_ms",
        "rtt_p99_ms",
        "reuse_ratio",
    )
    for mode in ("pool", "inline"):
        runs = data["modes"][mode]["runs"]
        assert len(runs) == 1
        assert runs[0]["mode"] == mode
        assert runs[0]["size_bytes"] == 2 * 1024 * 1024
        summary = data["modes"][mode]["summary"]
        for key in figures:
            if mode == "inline" and key == "reuse_ratio":
                assert summary[key] is None  # no pool, no buffers to reuse
                continue
            assert set(summary[key]) == {"median", "min", "max"}, key
            assert summary[key]["min"] <= summary[key]["median"] <= summary[key]["max"]
        assert summary["throughput_mb_s"]["median"] > 0
        assert summary["alloc_bytes_per_mib"]["median"] > 0
    assert data["modes"]["pool"]["runs"][0]["pool_stats"]["workers"] >= 1
    assert data["modes"]["inline"]["runs"][0]["pool_stats"] is None
    assert set(figures) <= set(data["ratio_pool_over_inline"])
    assert data["ratio_pool_over_inline"]["throughput_mb_s"] > 0
