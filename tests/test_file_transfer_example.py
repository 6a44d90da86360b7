"""The file_transfer example: primary + relay serve one stream, the client gets an exact copy."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import kwik
from examples.file_transfer.client import TransferError, TransferResult, download
from examples.file_transfer.protocol import (
    RECORD_HEADER,
    Finish,
    Layout,
    Metadata,
    ProtocolError,
    SendWindow,
    decode_command,
    resolve_file,
)
from examples.file_transfer.relay import run_relay
from examples.file_transfer.server import run_primary

from .conftest import CERT, KEY

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MIB = 1024 * 1024


# --- the protocol module --------------------------------------------------------------------


def test_layout_offsets() -> None:
    """Records follow the metadata back to back; only the last chunk is short."""
    meta = Metadata("f", 3 * 65536 + 5, "0" * 64)
    layout = meta.layout()
    assert layout.data_start == len(meta.encode())
    assert layout.total_chunks == 4
    assert layout.total_windows == 1
    assert [layout.chunk_length(i) for i in range(4)] == [65536, 65536, 65536, 5]
    step = RECORD_HEADER.size + 65536
    assert [layout.record_offset(i) for i in range(4)] == [
        layout.data_start + i * step for i in range(4)
    ]
    assert layout.total_length == layout.record_offset(3) + RECORD_HEADER.size + 5
    with pytest.raises(IndexError):
        layout.record_offset(4)


def test_layout_windows() -> None:
    layout = Layout(data_start=50, file_size=25 * 65536)
    assert layout.total_windows == 3
    assert list(layout.window_chunks(2)) == [20, 21, 22, 23, 24]
    assert layout.window_of(19) == 1
    assert Layout(data_start=50, file_size=0).total_length == 50


def test_metadata_and_commands_round_trip() -> None:
    meta = Metadata("name.bin", 1_000_000, "ab" * 32)
    decoded, layout = Metadata.decode(meta.encode()[4:])
    assert decoded == meta
    assert layout == meta.layout()
    command = SendWindow("name.bin", 1_000_000, 65536, 1, 10, 16, ((11, 123), (13, 456)))
    assert decode_command(command.encode()[4:]) == command
    assert decode_command(Finish(99).encode()[4:]) == Finish(99)
    with pytest.raises(ProtocolError, match="server error"):
        Metadata.decode(b'{"error": "no file"}')
    with pytest.raises(ProtocolError):
        decode_command(b'{"type": "SEND_WINDOW", "chunks": 3}')


def test_resolve_file_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "ok.bin").write_bytes(b"x")
    assert resolve_file(tmp_path, "ok.bin") == tmp_path / "ok.bin"
    for name in ("../ok.bin", "", "..", "sub/ok.bin", "missing.bin"):
        with pytest.raises(FileNotFoundError):
            resolve_file(tmp_path, name)


# --- in process: primary + relay + client ---------------------------------------------------


@asynccontextmanager
async def servers(
    files_dir: Path,
    config: kwik.Config,
    *,
    relay_addr: str | None = None,
    relay_files: Path | None = None,
    ack_timeout: float = 10.0,
) -> AsyncIterator[str]:
    """A relay (unless ``relay_addr`` is given) and a primary on 127.0.0.1:0; yields the
    primary's address. Everything is stopped on exit."""
    tls = kwik.TLSConfig(certificate=CERT, private_key=KEY)
    listeners: list[kwik.Listener] = []
    async with asyncio.TaskGroup() as group:
        try:
            if relay_addr is None:
                relay_listener = await kwik.listen_addr("127.0.0.1:0", tls, config)
                listeners.append(relay_listener)
                relay_addr = relay_listener.addr
                group.create_task(run_relay(relay_listener, relay_files or files_dir, quiet=True))
            primary = await kwik.listen_addr("127.0.0.1:0", tls, config)
            listeners.append(primary)
            group.create_task(
                run_primary(primary, files_dir, relay_addr, quiet=True, ack_timeout=ack_timeout)
            )
            yield primary.addr
        finally:
            for listener in listeners:
                await listener.close()


async def fetch(
    addr: str, name: str, out: Path, config: kwik.Config, timeout: float = 30
) -> TransferResult:
    async with asyncio.timeout(timeout):
        return await download(addr, name, kwik.TLSConfig(cadata=CERT), out=out, config=config)


async def test_primary_and_relay_fill_one_stream(tmp_path: Path, config: kwik.Config) -> None:
    """3 MiB + a partial chunk: exact copy, and the relay path carried about half of it."""
    files = tmp_path / "files"
    files.mkdir()
    content = os.urandom(3 * MIB + 12345)
    (files / "data.bin").write_bytes(content)
    out = tmp_path / "copy.bin"
    async with asyncio.timeout(60), servers(files, config) as addr:
        result = await fetch(addr, "data.bin", out, config)
    assert result.exact
    assert out.read_bytes() == content
    assert result.received_size == len(content)
    assert result.chunks == 49 and result.windows == 5
    by_id = {p.path_id: p for p in result.paths}
    assert set(by_id) == {1, 2}
    assert by_id[1].is_primary and not by_id[2].is_primary
    # the relay wrote the odd chunks: 24 of 49, about 1.5 MiB
    assert by_id[2].bytes_received > 0.4 * len(content)
    assert result.path_share(2) > 0.4


async def test_two_downloads_share_the_relay_path(tmp_path: Path, config: kwik.Config) -> None:
    """Two sequential clients, each its own session: each gets its own relay path 2."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.bin").write_bytes(os.urandom(MIB))
    (files / "b.bin").write_bytes(os.urandom(2 * MIB))
    async with asyncio.timeout(60), servers(files, config) as addr:
        a = await fetch(addr, "a.bin", tmp_path / "a", config)
        b = await fetch(addr, "b.bin", tmp_path / "b", config)
    assert a.exact and b.exact
    assert a.path_share(2) > 0.3 and b.path_share(2) > 0.3


async def test_missing_file(tmp_path: Path, config: kwik.Config) -> None:
    async with asyncio.timeout(30), servers(tmp_path, config) as addr:
        with pytest.raises(TransferError, match="no file 'nope.bin'"):
            await fetch(addr, "nope.bin", tmp_path / "out", config)


async def test_relay_copy_differs(tmp_path: Path, config: kwik.Config) -> None:
    """The relay serves other bytes: the digest check catches it."""
    files, other = tmp_path / "files", tmp_path / "other"
    files.mkdir()
    other.mkdir()
    (files / "f.bin").write_bytes(os.urandom(MIB))
    (other / "f.bin").write_bytes(os.urandom(MIB))
    async with asyncio.timeout(30), servers(files, config, relay_files=other) as addr:
        result = await fetch(addr, "f.bin", tmp_path / "out", config)
    assert result.received_size == MIB
    assert not result.exact


async def test_unreachable_relay_primary_sends_everything(tmp_path: Path) -> None:
    """The client cannot reach the relay: add_relay fails and the primary sends every chunk."""
    config = kwik.Config(handshake_timeout=0.5, add_path_timeout=5.0)
    files = tmp_path / "files"
    files.mkdir()
    content = os.urandom(MIB // 2)
    (files / "f.bin").write_bytes(content)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # swallows the handshake: the dial times out
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        async with asyncio.timeout(30), servers(files, config, relay_addr=dead) as addr:
            result = await fetch(addr, "f.bin", tmp_path / "out", config)
    assert result.exact
    assert (tmp_path / "out").read_bytes() == content
    assert result.path_share(1) == 1.0


# --- as users run it ------------------------------------------------------------------------


def test_demo_subprocess() -> None:
    """``server --demo`` runs all three parts in one process and exits 0 on an exact copy."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.file_transfer.server", "--demo", "--size", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^exact copy: 2097152 bytes, sha256 [0-9a-f]{64}$", result.stdout, re.M)
    relay_line = re.search(r"path 2 relay .* received +(\d+) bytes", result.stdout)
    assert relay_line and int(relay_line.group(1)) > 0.4 * 2 * MIB, result.stdout


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start an example server; return it and the address from its first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+),", line)
    if match is None:
        _stop(process)
        raise AssertionError(f"no address in {line!r}")
    return process, match.group(1)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def test_command_lines(tmp_path: Path) -> None:
    """relay, server and client as separate processes, one certificate verified by --ca."""
    files = tmp_path / "files"
    files.mkdir()
    content = os.urandom(MIB + 1)
    (files / "f.bin").write_bytes(content)
    (tmp_path / "cert.pem").write_bytes(CERT)
    (tmp_path / "key.pem").write_bytes(KEY)
    tls = ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]
    common = ["--addr", "127.0.0.1:0", "--files", str(files), *tls]
    relay, relay_addr = _start(["examples.file_transfer.relay", *common])
    try:
        primary, addr = _start(["examples.file_transfer.server", *common, "--relay", relay_addr])
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "examples.file_transfer.client",
                    "--addr",
                    addr,
                    "--ca",
                    str(tmp_path / "cert.pem"),
                    "--out",
                    str(tmp_path / "copy.bin"),
                    "--progress",
                    "f.bin",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                env=ENV,
            )
        finally:
            _stop(primary)
    finally:
        _stop(relay)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exact copy" in result.stdout
    assert "100.0%" in result.stderr  # the progress bar
    assert (tmp_path / "copy.bin").read_bytes() == content
