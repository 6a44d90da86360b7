"""The file_transfer example: primary + relay serve one stream, the client gets an exact copy."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import kwik
from examples._common import EndProgressLine, say
from examples.file_transfer.client import (
    ProgressBar,
    TransferError,
    TransferResult,
    download,
    format_report,
)
from examples.file_transfer.protocol import (
    RECORD_HEADER,
    Finish,
    Layout,
    Metadata,
    ProtocolError,
    Recover,
    SendWindow,
    TakenOver,
    chunk_runs,
    decode_command,
    failover_config,
    missing_chunks,
    read_message,
    resolve_file,
)
from examples.file_transfer.relay import run_relay, send_window
from examples.file_transfer.server import _Transfer, run_primary

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


def test_missing_chunks_from_received_ranges() -> None:
    """A chunk counts as here only when its whole record was received."""
    layout = Layout(data_start=100, file_size=5 * 65536 + 3)  # 6 chunks, the last 3 bytes
    step = RECORD_HEADER.size + 65536
    received = [(0, 100 + 2 * step), (100 + 3 * step, 100 + 4 * step + 5)]  # 0, 1 and 3 whole
    assert missing_chunks(layout, received, 0) == [2, 4, 5]
    assert missing_chunks(layout, received, 3) == [4, 5]
    assert missing_chunks(layout, [(0, layout.total_length)], 0) == []
    assert missing_chunks(layout, [], 4) == [4, 5]
    assert chunk_runs([7, 1, 2, 3, 2]) == ((1, 4), (7, 8))
    request = Recover(stream_id=4, path_id=2, missing=((1, 4), (7, 8)))
    assert Recover.decode(request.encode()[4:]) == request
    assert request.chunks() == [1, 2, 3, 7]
    assert TakenOver.decode(TakenOver((1, 3)).encode()[4:]) == TakenOver((1, 3))
    with pytest.raises(ProtocolError):
        Recover.decode(b"file.bin")  # a file name, not a control message
    with pytest.raises(ProtocolError):
        Recover.decode(
            b'\x00{"type": "RECOVER", "stream_id": 1, "path_id": 2, "missing": [[5, 1]]}'
        )


def test_primary_deals_and_takes_over_only_a_dead_relays_chunks(tmp_path: Path) -> None:
    """Round robin over the live writers; a lost relay's missing chunks go to the primary,
    the chunks the primary sent itself or has not dealt yet do not; later windows skip it."""
    layout = Layout(data_start=10, file_size=30 * 65536)
    second, third = object(), object()
    live: dict[int, kwik.Relay] = {2: second, 3: third}  # type: ignore[dict-item]
    transfer = _Transfer(stream=None, path=tmp_path, layout=layout, relays=live)  # type: ignore[arg-type]
    dealt = transfer.deal(layout.window_chunks(0))
    assert dealt == {0: [0, 3, 6, 9], 2: [1, 4, 7], 3: [2, 5, 8]}
    relay, taken = transfer.take_over(3, [5, 6, 8, 9, 10, 11])
    assert relay is third
    assert taken == [5, 8]  # 6 and 9 are the primary's own, 10 and 11 not dealt yet
    assert transfer.owner[5] == 0 and transfer.owner[8] == 0
    assert transfer.deal(layout.window_chunks(1)) == {
        0: list(range(10, 20, 2)),
        2: list(range(11, 20, 2)),
    }
    assert transfer.take_over(3, [12]) == (None, [])  # already gone: nothing more
    assert transfer.taken_over == [5, 8]


# --- in process: primary + relay + client ---------------------------------------------------


@asynccontextmanager
async def servers(
    files_dir: Path,
    config: kwik.Config,
    *,
    relay_addr: str | list[str] | None = None,
    relay_files: Path | None = None,
    ack_timeout: float = 10.0,
) -> AsyncIterator[str]:
    """A relay (unless ``relay_addr`` is given: one address or several) and a primary on
    127.0.0.1:0; yields the primary's address. Everything is stopped on exit."""
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
    addr: str,
    name: str,
    out: Path,
    config: kwik.Config,
    timeout: float = 30,
    on_progress: Callable[[int], None] | None = None,
) -> TransferResult:
    async with asyncio.timeout(timeout):
        return await download(
            addr, name, kwik.TLSConfig(cadata=CERT), out=out, config=config, on_progress=on_progress
        )


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


# --- a relay that goes away mid-download ----------------------------------------------------


async def crashing_relay(listener: kwik.Listener, files_dir: Path, crash_window: int) -> None:
    """A relay that serves its commands until the one for ``crash_window``, then aborts its
    session (the client's path to it ends) without writing any of that window's chunks."""
    async for session in listener:
        stream = await session.accept_stream()
        while (payload := await read_message(stream)) is not None:
            command = decode_command(payload)
            if isinstance(command, SendWindow):
                if command.window == crash_window:
                    await session.abort("relay crashed")
                    return
                await send_window(stream, files_dir, command)


@asynccontextmanager
async def relays(
    files_dir: Path, config: kwik.Config, crash_windows: list[int | None]
) -> AsyncIterator[list[str]]:
    """One relay per entry: a normal one (None) or one crashing at that window."""
    tls = kwik.TLSConfig(certificate=CERT, private_key=KEY)
    listeners = [await kwik.listen_addr("127.0.0.1:0", tls, config) for _ in crash_windows]
    try:
        async with asyncio.TaskGroup() as group:
            for listener, crash in zip(listeners, crash_windows, strict=True):
                if crash is None:
                    group.create_task(run_relay(listener, files_dir, quiet=True))
                else:
                    group.create_task(crashing_relay(listener, files_dir, crash))
            try:
                yield [listener.addr for listener in listeners]
            finally:
                for listener in listeners:
                    await listener.close()
    finally:
        for listener in listeners:
            await listener.close()


async def test_lost_relay_primary_takes_over(tmp_path: Path, config: kwik.Config) -> None:
    """The relay's path ends at window 2 with its chunks of it undelivered: the primary sends
    them (and every chunk after), the copy is exact and the report lists them."""
    files = tmp_path / "files"
    files.mkdir()
    content = os.urandom(2 * MIB + 777)
    (files / "f.bin").write_bytes(content)
    out = tmp_path / "copy.bin"
    async with asyncio.timeout(60), relays(files, config, [2]) as addrs:
        async with servers(files, config, relay_addr=addrs) as addr:
            result = await fetch(addr, "f.bin", out, config)
    assert result.exact
    assert out.read_bytes() == content
    assert len(result.recoveries) == 1
    recovery = result.recoveries[0]
    assert recovery.path_id == 2 and recovery.address == addrs[0]
    assert recovery.taken_over == (21, 23, 25, 27, 29)  # the relay's (odd) chunks of window 2
    assert result.taken_over == [21, 23, 25, 27, 29]
    assert recovery.duration is not None and 0 <= recovery.duration < 30
    by_id = {p.path_id: p for p in result.paths}
    assert by_id[2].bytes_received > 9 * 65536  # the odd chunks of windows 0 and 1 came by it
    assert by_id[2].state != "active"
    report = "\n".join(format_report(result))
    assert "the primary took over 5 chunks [21, 23, 25, 27, 29]" in report, report


async def test_two_relays_one_lost(tmp_path: Path) -> None:
    """Primary + two relays deal chunks round robin; the second relay's path ends at window
    1: the primary takes over its chunks of that window, the other relay keeps working."""
    config = kwik.Config(handshake_timeout=5.0)
    files = tmp_path / "files"
    files.mkdir()
    content = os.urandom(2 * MIB)
    (files / "f.bin").write_bytes(content)
    out = tmp_path / "copy.bin"
    async with asyncio.timeout(60), relays(files, config, [None, 1]) as addrs:
        async with servers(files, config, relay_addr=addrs) as addr:
            result = await fetch(addr, "f.bin", out, config)
    assert result.exact
    assert out.read_bytes() == content
    assert [r.address for r in result.recoveries] == [addrs[1]]
    # writers: primary (index % 3 == 0), first relay (1), second relay (2)
    assert result.taken_over == [11, 14, 17]
    by_address = {p.address: p for p in result.paths}
    # the surviving relay had a third of windows 0..1, then half of every later window
    assert by_address[addrs[0]].bytes_received > 0.3 * len(content)
    assert by_address[addrs[0]].state == "active"


async def test_relay_without_the_file(tmp_path: Path) -> None:
    """A relay that lacks the file closes its session: the primary sends everything."""
    config = kwik.Config(handshake_timeout=5.0)
    files, empty = tmp_path / "files", tmp_path / "empty"
    files.mkdir()
    empty.mkdir()
    content = os.urandom(MIB)
    (files / "f.bin").write_bytes(content)
    async with asyncio.timeout(30), servers(files, config, relay_files=empty) as addr:
        result = await fetch(addr, "f.bin", tmp_path / "out", config)
    assert result.exact
    assert (tmp_path / "out").read_bytes() == content
    assert [r.path_id for r in result.recoveries] == [2]
    assert result.taken_over == [1, 3, 5, 7, 9]  # the relay's chunks of window 0


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


#: One drawing of the progress bar (it redraws in place, each drawing after a carriage return).
PROGRESS = re.compile(r"\[[#.]{30}\] +\d+\.\d% \d+\.\d/\d+\.\d MiB \d+\.\d MiB/s")


def _lines_glued_to_the_bar(output: str) -> list[str]:
    """The lines of ``output`` (progress bar and other text on one screen) in which something
    other than the bar was written after a drawing of the bar, on the same line."""
    glued = []
    for line in output.split("\n"):
        drawings = [part for part in line.split("\r") if part]
        if any(PROGRESS.match(part) for part in drawings) and not all(
            PROGRESS.fullmatch(part) for part in drawings
        ):
            glued.append(line)
    return glued


def test_log_lines_and_messages_do_not_run_into_the_progress_bar() -> None:
    """A log record or a message written while the bar is on screen starts a line of its own;
    the bar goes on below it, and ``finish`` ends its line once."""
    screen = io.StringIO()
    handler = logging.StreamHandler(screen)
    handler.addFilter(EndProgressLine())
    logger = logging.getLogger("test.progress")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        bar = ProgressBar(4 * MIB, screen)
        bar.update(MIB)
        logger.warning("client: relay path 2 closed")
        bar._last_draw = 0.0  # due again: draw at the next update
        bar.update(MIB)
        with contextlib.redirect_stdout(screen):
            say("demo: stopping relay 127.0.0.1:4434")
        bar.update(2 * MIB)
        bar.finish()
    finally:
        logger.removeHandler(handler)
    output = screen.getvalue()
    assert _lines_glued_to_the_bar(output) == [], output
    lines = output.split("\n")
    assert "client: relay path 2 closed" in lines and "demo: stopping relay 127.0.0.1:4434" in lines
    assert PROGRESS.search(lines[-2]) and "100.0%" in lines[-2] and lines[-1] == "", lines


def test_demo_progress_bar_and_log_lines_on_one_screen() -> None:
    """The demo with a relay stopped mid-download, stderr and stdout on one screen (as in a
    terminal): the stop message and the warnings it causes are lines of their own."""
    # the relay must stop while the download runs: qh3 moves 8 MiB in well under 0.3 s
    size = "96" if os.environ.get("KWIK_ENGINE") == "qh3" else "8"
    result = subprocess.run(
        [
            sys.executable, "-m", "examples.file_transfer.server", "--demo", "--size", size,
            "--stop-relay-after", "0.3", "--progress",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=90,
        env=ENV,
    )  # fmt: skip
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert PROGRESS.search(output), output
    assert _lines_glued_to_the_bar(output) == [], output
    lines = output.split("\n")
    assert any(re.fullmatch(r"demo: stopping relay 127\.0\.0\.1:\d+", line) for line in lines)
    assert any(re.match(r"\d{4}-\d\d-\d\d .* WARNING client: relay path", line) for line in lines)


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


def _server_tls_args(tmp_path: Path) -> list[str]:
    (tmp_path / "cert.pem").write_bytes(CERT)
    (tmp_path / "key.pem").write_bytes(KEY)
    return ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]


async def test_relay_killed_mid_download(tmp_path: Path) -> None:
    """kill -9 of the relay's process at a quarter of the download: kwik fails its path
    (within its liveness bound), the primary takes over, the copy is exact."""
    files = tmp_path / "files"
    files.mkdir()
    content = os.urandom(12 * MIB)
    (files / "f.bin").write_bytes(content)
    common = ["--addr", "127.0.0.1:0", "--files", str(files), *_server_tls_args(tmp_path)]
    relay, relay_addr = _start(["examples.file_transfer.relay", *common])
    killed_at: list[float] = []

    def kill_relay(received: int) -> None:
        if not killed_at and received >= len(content) // 4:
            os.kill(relay.pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

    config = failover_config(handshake_timeout=5.0)  # the example's fast-failover bounds
    try:
        async with asyncio.timeout(90), servers(files, config, relay_addr=relay_addr) as addr:
            result = await fetch(
                addr, "f.bin", tmp_path / "copy.bin", config, timeout=60, on_progress=kill_relay
            )
    finally:
        _stop(relay)
    assert killed_at, "the download ended before the relay was killed"
    assert relay.returncode == -signal.SIGKILL
    assert result.exact
    assert (tmp_path / "copy.bin").read_bytes() == content
    assert [r.address for r in result.recoveries] == [relay_addr]
    recovery = result.recoveries[0]
    assert recovery.state == "failed"
    assert recovery.taken_over is not None  # the primary answered
    assert all(index % 2 == 1 for index in recovery.taken_over)  # only the relay's chunks
    assert recovery.duration is not None
    report = "\n".join(format_report(result))
    assert f"relay path 2 ({relay_addr}) failed" in report, report
    by_id = {p.path_id: p for p in result.paths}
    assert by_id[2].bytes_received > 0.05 * len(content)  # it did carry part of the file
    assert by_id[1].bytes_received > 0.7 * len(content)  # the primary sent the rest


async def test_primary_killed_client_fails_promptly(tmp_path: Path) -> None:
    """kill -9 of the primary's process mid-download: the client command exits 1 with a
    clear message within kwik's liveness bound (15 s with default settings), though its
    path to the relay is still alive."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "f.bin").write_bytes(os.urandom(24 * MIB))
    common = ["--addr", "127.0.0.1:0", "--files", str(files), *_server_tls_args(tmp_path)]
    relay, relay_addr = _start(["examples.file_transfer.relay", *common])
    try:
        primary, addr = _start(["examples.file_transfer.server", *common, "--relay", relay_addr])
        try:
            client = await asyncio.create_subprocess_exec(
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
                cwd=ROOT,
                env=ENV,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert client.stderr is not None and client.stdout is not None
            stderr = b""
            try:
                async with asyncio.timeout(60):
                    # the progress bar: kill the primary once a tenth has arrived
                    while not re.search(rb"(?:[1-9]\d|100)\.\d%", stderr):
                        chunk = await client.stderr.read(4096)
                        assert chunk, f"the client ended first: {stderr.decode()}"
                        stderr += chunk
                    primary.send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
                    rest, _ = await asyncio.gather(client.stderr.read(), client.wait())
                    exited_after = time.monotonic() - killed_at
                    stdout = await client.stdout.read()
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()
        finally:
            _stop(primary)
    finally:
        _stop(relay)
    message = (stderr + rest).decode()
    assert client.returncode == 1, message + stdout.decode()
    assert re.search(
        r"error: lost the primary server 127\.0\.0\.1:\d+ after \d+ of 25165824 bytes", message
    ), message
    assert exited_after < 25, f"the client noticed after {exited_after:.1f} s"
    assert b"exact copy" not in stdout
