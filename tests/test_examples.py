"""The examples run as documented (as subprocesses, the way users start them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kwik

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_pingpong_demo() -> None:
    """The demo prints one RTT per ping and a summary, and exits 0 by itself."""
    result = run("examples.pingpong", "--count", "4", "--interval", "0.01")
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"PONG #\d+: RTT [\d.]+ ms", result.stdout)) == 4
    assert "4 pings: min" in result.stdout


def test_pingpong_server_and_client(tmp_path: Path) -> None:
    """--mode server and --mode client talk over a real address with a CA file."""
    cert, key = kwik.generate_self_signed_cert(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.pingpong",
            "--mode",
            "server",
            "--addr",
            "127.0.0.1:0",
            "--cert",
            str(tmp_path / "cert.pem"),
            "--key",
            str(tmp_path / "key.pem"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, line
        result = run(
            "examples.pingpong",
            "--mode",
            "client",
            "--addr",
            match.group(1),
            "--ca",
            str(tmp_path / "cert.pem"),
            "--count",
            "3",
            "--interval",
            "0.01",
        )
        assert result.returncode == 0, result.stderr
        assert "3 pings: min" in result.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_closure() -> None:
    """The listener shutdown check passes and reports the session counts."""
    result = run("examples.closure", "--sessions", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Active sessions: 3" in result.stdout
    assert "Final active sessions: 0" in result.stdout
    assert "completed successfully" in result.stdout
