"""Benchmark charts (``python -m benchmarks --plot``) and the per-path sampler behind them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import kwik
from benchmarks.paths import PathSampler

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
NEEDS_BENCH = "needs the 'bench' extra (matplotlib): pip install -e '.[bench]'"


def _summary(samples: list[float], unit: str) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "unit": unit,
        "n": len(samples),
        "median": ordered[len(ordered) // 2],
        "min": ordered[0],
        "max": ordered[-1],
        "samples": samples,
    }


def _series() -> dict[str, Any]:
    times = [0.0, 0.1, 0.2, 0.3]
    return {
        "interval": 0.1,
        "t": times,
        "paths": [
            {"path_id": 1, "address": "a:1", "is_primary": True, "bytes": [0, 100, 200, 300]},
            {"path_id": 2, "address": "b:2", "is_primary": False, "bytes": [0, 0, 150, 300]},
        ],
    }


def _report() -> dict[str, Any]:
    """A results file shaped like the one ``--json`` writes (two scenarios and a skip)."""
    mbps = {
        "what": "one stream, MB/s",
        "unit": "MB/s",
        "higher_is_better": True,
        "kwik": _summary([25.0, 26.0, 27.0], "MB/s"),
        "aioquic": _summary([24.0, 26.5, 26.0], "MB/s"),
        "ratio": 26.0 / 26.0,
    }
    ratio_only = {"what": "pool / inline (ratio only)", "kwik": None, "aioquic": None, "ratio": 1.0}
    sample = {"values": {"mbps": 4.6}, "result": {"path_samples": _series()}}
    return {
        "scenarios": {
            "bulk": {"status": "ok", "rows": [mbps, ratio_only]},
            "rtt": {"status": "skipped", "reason": "not selected"},
            "multipath": {
                "status": "ok",
                "rows": [mbps],
                "samples": {
                    "kwik-dual": [sample],
                    "kwik-single": [{"values": {"mbps": 2.3}, "result": {}}],
                },
            },
        }
    }


def test_plot_from_json_writes_every_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason=NEEDS_BENCH)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_report()))
    out = tmp_path / "charts"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--from-json", str(results), "--plot", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in out.iterdir())
    # a chart per scenario that ran, the ratios, and the multipath per-path chart; none for rtt
    assert written == ["bulk.png", "multipath-paths.png", "multipath.png", "ratios.png"]
    for name in written:
        assert (out / name).read_bytes().startswith(PNG), name


def _outside(figure: Any) -> list[str]:
    """The texts of ``figure`` that do not lie wholly inside it (clipped when saved)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    width, height = figure.canvas.get_width_height()
    texts = list(figure.texts)
    for axis in figure.axes:
        texts += [axis.title, axis.xaxis.label, axis.yaxis.label]
        for ticks in (axis.xaxis, axis.yaxis):  # the tick labels drawn: those within the view
            low, high = sorted(ticks.get_view_interval())
            texts += [t.label1 for t in ticks.get_major_ticks() if low <= t.get_loc() <= high]
    clipped = []
    for text in texts:
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            clipped.append(text.get_text())
    return clipped


def test_a_one_panel_chart_keeps_its_title_inside() -> None:
    """The sessions chart (one panel, so a narrow figure) used to cut its title on both
    sides: every text of a chart lies inside it."""
    pytest.importorskip("matplotlib", reason=NEEDS_BENCH)
    import matplotlib.pyplot as plt

    from benchmarks.plot import comparison_figure

    row = {
        "what": "50 concurrent sessions established, s (9 runs)",
        "unit": "s",
        "higher_is_better": False,
        "kwik": _summary([0.15, 0.13, 0.22], "s"),
        "aioquic": _summary([0.13, 0.12, 0.18], "s"),
        "ratio": 1.13,
    }
    figure = comparison_figure("sessions", {"status": "ok", "rows": [row]})
    try:
        assert "sessions: kwik vs raw aioquic" in figure.texts[0].get_text().replace("\n", " ")
        assert _outside(figure) == []
    finally:
        plt.close(figure)


def test_ratio_labels_tell_every_row_apart() -> None:
    """Two rows whose long descriptions differ only at the end (the pool's allocation rows)
    used to get the same shortened label: each label is the whole description."""
    pytest.importorskip("matplotlib", reason=NEEDS_BENCH)
    import matplotlib.pyplot as plt

    from benchmarks.plot import ratios_figure

    def row(what: str) -> dict[str, Any]:
        return {
            "what": what,
            "unit": "MB",
            "higher_is_better": False,
            "kwik": _summary([10.1, 10.0, 10.2], "MB"),
            "aioquic": _summary([6.9, 6.8, 6.9], "MB"),
            "ratio": 1.47,
        }

    whats = [
        "MB allocated per MiB received (tracemalloc, receiver), worker_pool=True",
        "MB allocated per MiB received (tracemalloc, receiver), worker_pool=False",
    ]
    figure = ratios_figure({"pool": {"status": "ok", "rows": [row(what) for what in whats]}})
    try:
        labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
        assert sorted(" ".join(label.split()) for label in labels) == sorted(
            f"pool: {what}" for what in whats
        )
        assert _outside(figure) == []
    finally:
        plt.close(figure)


def test_from_json_needs_plot(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--from-json", str(tmp_path / "x.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "--from-json needs --plot" in proc.stderr


#: ``python -m benchmarks`` in a Python where matplotlib cannot be imported (the 'bench'
#: extra missing): None in sys.modules makes ``import matplotlib`` raise ImportError.
WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; "
    "from benchmarks.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("run", ["scenario", "from-json"])
def test_plot_without_matplotlib_fails_before_running_anything(tmp_path: Path, run: str) -> None:
    """``--plot`` without matplotlib: status 2 and the extra to install, at once; no scenario
    runs first (it used to run them all, then fail)."""
    out = tmp_path / "charts"
    args = ["--quick", "rtt"] if run == "scenario" else ["--from-json", str(tmp_path / "r.json")]
    if run == "from-json":
        (tmp_path / "r.json").write_text(json.dumps(_report()))
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_MATPLOTLIB, *args, "--plot", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "--plot: charts need matplotlib: pip install -e '.[bench]' (the 'bench' extra)"
    ]
    assert proc.stdout == ""  # no table: nothing ran
    assert not out.exists()


def test_path_chart_rates() -> None:
    from benchmarks.plot import _rates

    mids, rates = _rates([0.0, 0.5, 1.0], [0, 1_000_000, 1_500_000])
    assert mids == [0.25, 0.75]
    assert rates == [2.0, 1.0]


@dataclass
class _Path:
    path_id: int
    address: str
    is_primary: bool
    bytes_received: int


class _Session:
    def __init__(self) -> None:
        self.paths = [_Path(1, "p:1", True, 0)]


async def test_sampler_follows_paths_that_appear_later() -> None:
    session = _Session()
    sampler = PathSampler(session, interval=0.01)
    sampler.start()
    session.paths[0].bytes_received = 500
    await asyncio.sleep(0.05)
    session.paths.append(_Path(2, "r:2", False, 0))
    session.paths[1].bytes_received = 700
    await asyncio.sleep(0.05)
    series = await sampler.stop()
    times = series["t"]
    assert times[0] == 0.0 and times == sorted(times) and len(times) >= 3
    primary, relay = series["paths"]
    assert primary["path_id"] == 1 and relay["path_id"] == 2 and relay["is_primary"] is False
    assert len(primary["bytes"]) == len(relay["bytes"]) == len(times)
    assert primary["bytes"][0] == 0 and primary["bytes"][-1] == 500
    assert relay["bytes"][0] == 0 and relay["bytes"][-1] == 700  # zero before it existed


def test_sampler_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError):
        PathSampler(_Session(), interval=0)


async def test_file_transfer_client_plots_its_paths(tmp_path: Path) -> None:
    """``python -m examples.file_transfer.client --plot``: a chart of a real two-server download."""
    pytest.importorskip("matplotlib", reason=NEEDS_BENCH)
    from .conftest import CERT
    from .test_file_transfer_example import servers

    files = tmp_path / "files"
    files.mkdir()
    (files / "data.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CERT)
    chart = tmp_path / "paths.png"
    config = kwik.Config(handshake_timeout=5.0)
    async with asyncio.timeout(90), servers(files, config) as addr:
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "examples.file_transfer.client",
            "data.bin",
            "--addr",
            addr,
            "--ca",
            str(ca),
            "--out",
            str(tmp_path / "copy.bin"),
            "--plot",
            str(chart),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await client.communicate()
    assert client.returncode == 0, err.decode()
    assert b"exact copy" in out and b"throughput per path" in out
    assert chart.read_bytes().startswith(PNG)
    assert (tmp_path / "copy.bin").read_bytes() == (files / "data.bin").read_bytes()
