"""``python -m kwik``: end to end in subprocesses over 127.0.0.1, plus the doctor's logic."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kwik
from kwik import _cli

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0


def kwik_cli(
    *args: str, stdin: bytes | None = b"", timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kwik", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


class Server:
    """A ``python -m kwik listen`` process and the address it printed."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kwik", "listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.addr = self._wait_line("listening on ").split()[-1]

    def _wait_line(self, prefix: str) -> str:
        assert self.process.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stderr], [], [], 0.5)
            if not ready:
                assert self.process.poll() is None, f"listener exited: {self.lines}"
                continue
            chunk = os.read(self.process.stderr.fileno(), 4096)
            assert chunk, f"listener closed stderr: {self.lines}"
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.lines.append(line.decode())
                if line.decode().startswith(prefix):
                    return line.decode()
        raise AssertionError(f"no {prefix!r} line within {TIMEOUT} s: {self.lines}")

    def finish(self) -> tuple[int, str]:
        """Wait for the process to exit; its status and everything it wrote on stderr."""
        _, err = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, "\n".join(self.lines) + "\n" + err.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=TIMEOUT)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def test_version() -> None:
    result = kwik_cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"kwik {kwik.__version__}"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ((), ["doctor", "connect", "listen", "--version"]),
        (("doctor",), ["udp_receive_buffer", "Exit status"]),
        (("connect",), ["--insecure", "--ca", "ADDR"]),
        (("listen",), ["--echo", "--discard", "--serve", "--cert-out", "--once"]),
    ],
)
def test_help(command: tuple[str, ...], expected: list[str]) -> None:
    result = kwik_cli(*command, "--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for word in expected:
        assert word in text


def test_doctor_passes_here() -> None:
    result = kwik_cli("doctor")
    out = result.stdout.decode()
    assert result.returncode == 0, out
    assert "verdict: OK" in out
    assert kwik.__version__ in out
    assert "aioquic: QuicConnection._write_stream_limits" in out
    assert "UDP receive buffer" in out


def test_doctor_fails_on_a_missing_hook(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = [("aioquic", "broken", [("QuicConnection._gone", False, "missing")])]
    monkeypatch.setattr(_cli, "engine_report", lambda: report)
    assert _cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "fail  aioquic: QuicConnection._gone" in out
    assert "verdict: BROKEN" in out


def test_udp_buffer_check(tmp_path: Path) -> None:
    wanted = kwik.Config().udp_receive_buffer
    limit = tmp_path / "rmem_max"
    limit.write_text(f"{wanted - 1}\n")
    low = _cli._udp_buffer_check(limit)
    assert low.status == "warn" and f"sysctl -w net.core.rmem_max={wanted}" in low.detail
    limit.write_text(f"{wanted}\n")
    assert _cli._udp_buffer_check(limit).status == "ok"
    assert _cli._udp_buffer_check(tmp_path / "absent").status == "info"


def test_connect_echo_with_ca(tmp_path: Path, servers: list[Server]) -> None:
    cert = tmp_path / "cert.pem"
    server = Server("--echo", "--once", "--cert-out", str(cert))
    servers.append(server)
    payload = os.urandom(300_000)  # several chunks, several records
    result = kwik_cli("connect", server.addr, "--ca", str(cert), stdin=payload)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == payload
    status, log = server.finish()
    assert status == 0, log
    assert "session from 127.0.0.1:" in log and "listener closed" in log


def test_connect_serve_insecure(tmp_path: Path, servers: list[Server]) -> None:
    served = tmp_path / "served.bin"
    served.write_bytes(os.urandom(200_000))
    server = Server("--serve", str(served), "--once")
    servers.append(server)
    result = kwik_cli("connect", server.addr, "--insecure", stdin=None)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == served.read_bytes()
    assert server.finish()[0] == 0


def test_connect_discard(servers: list[Server]) -> None:
    server = Server("--discard", "--once")
    servers.append(server)
    result = kwik_cli("connect", server.addr, "--insecure", stdin=b"x" * 12345)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    status, log = server.finish()
    assert status == 0
    assert "discarded 12345 bytes" in log


def test_connect_refuses_an_unverified_server(servers: list[Server]) -> None:
    server = Server("--echo")
    servers.append(server)
    # no --ca: the generated certificate is not in the system trust store
    result = kwik_cli("connect", server.addr, stdin=b"secret")
    assert result.returncode == 1
    assert b"secret" not in result.stdout
    assert b"cannot connect" in result.stderr


def test_listen_with_given_certificate(tmp_path: Path, servers: list[Server]) -> None:
    cert, key = kwik.generate_self_signed_cert(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = Server(
        "--echo", "--once", "--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")
    )
    servers.append(server)
    result = kwik_cli("connect", server.addr, "--ca", str(tmp_path / "cert.pem"), stdin=b"ping")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"ping"


def test_listen_stops_on_sigterm(servers: list[Server]) -> None:
    server = Server("--echo")
    servers.append(server)
    server.process.send_signal(signal.SIGTERM)
    status, log = server.finish()
    assert status == 0
    assert "listener closed" in log


def test_listen_rejects_bad_arguments(tmp_path: Path) -> None:
    both = kwik_cli("listen", "127.0.0.1:0", "--echo", "--discard")
    assert both.returncode == 2 and b"not allowed with" in both.stderr
    no_key = kwik_cli("listen", "127.0.0.1:0", "--echo", "--cert", str(tmp_path / "c.pem"))
    assert no_key.returncode == 2 and b"--cert and --key go together" in no_key.stderr
    missing = kwik_cli("listen", "127.0.0.1:0", "--serve", str(tmp_path / "absent"))
    assert missing.returncode == 2 and b"not a file" in missing.stderr
