"""The examples run as documented (as subprocesses, the way users start them)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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


@contextlib.contextmanager
def pingpong_server(*args: str) -> Iterator[tuple[str, IO[str]]]:
    """``--mode server`` on a free port: its address, and its stdout to read what follows."""
    server = subprocess.Popen(
        [sys.executable, "-m", "examples.pingpong", "--mode", "server", "--addr", "127.0.0.1:0"]
        + list(args),
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
        yield match.group(1), server.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_pingpong_client_says_how_to_trust_a_self_signed_server(tmp_path: Path) -> None:
    """A client refused by the server's own self-signed certificate is told how to fix it, and
    both fixes it is told of work: ``-k``, and ``--cert-out`` on the server with ``--ca``."""
    ping = ("--count", "1", "--interval", "0.01")
    with pingpong_server() as (addr, out):
        refused = run("examples.pingpong", "--mode", "client", "--addr", addr, *ping)
        assert refused.returncode == 1
        assert "Traceback" not in refused.stderr, refused.stderr
        hint = refused.stderr[refused.stderr.index("error: ") :]
        assert "certificate" in hint
        assert "-k" in hint and "--cert-out FILE" in hint and "--ca FILE" in hint, hint
        insecure = run("examples.pingpong", "--mode", "client", "--addr", addr, "-k", *ping)
        assert insecure.returncode == 0, insecure.stderr
        assert "1 pings: min" in insecure.stdout
        note = out.readline()  # the server says it too, under its address
        assert "-k" in note and "--cert-out" in note, note

    cert = tmp_path / "server-cert.pem"
    with pingpong_server("--cert-out", str(cert)) as (addr, out):
        assert str(cert) in out.readline()
        assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        trusted = run(
            "examples.pingpong", "--mode", "client", "--addr", addr, "--ca", str(cert), *ping
        )
        assert trusted.returncode == 0, trusted.stderr
        assert "1 pings: min" in trusted.stdout


def test_pingpong_cert_out_needs_a_generated_certificate() -> None:
    result = run("examples.pingpong", "--mode", "server", "--cert", "c.pem", "--cert-out", "x.pem")
    assert result.returncode == 2 and "--cert-out" in result.stderr


def test_closure() -> None:
    """The listener shutdown check passes and reports the session counts."""
    result = run("examples.closure", "--sessions", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Active sessions: 3" in result.stdout
    assert "Final active sessions: 0" in result.stdout
    assert "completed successfully" in result.stdout
