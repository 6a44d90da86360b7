"""Hostile raw peer harness: a kwik server in a subprocess, a raw aioquic peer crafting records.

* :class:`ServerProcess` runs :mod:`tests.hostile.server` and reports its memory (RSS read
  from ``/proc/PID/status``, untouched by the client's own buffers) and the longest stall of
  its event loop (a ticker inside the server).
* :class:`RawPeer` is an aioquic client protocol speaking ALPN ``kwik`` that writes arbitrary
  bytes on QUIC stream 0 (the transport stream) and parses every record the server sends back,
  without any of kwik's checks: an oversized Ack is recorded, not refused.
* :func:`echo_roundtrip` is the well-behaved session: a real kwik client that must still be
  served while an attack runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

import kwik
from kwik._addr import parse_address
from kwik.protocol import (
    AckFrame,
    Frame,
    OpenStreamRespFrame,
    Packet,
    PingFrame,
    decode_packet,
    encode_record,
)

from ..conftest import CERT, KEY

__all__ = [
    "MIB",
    "RawPeer",
    "Received",
    "ServerProcess",
    "echo_roundtrip",
    "raw_connect",
]

MIB = 1024 * 1024
TRANSPORT_STREAM = 0
REPO = Path(__file__).resolve().parents[2]
_U32 = struct.Struct(">I")


@dataclass
class Received:
    """One record the server sent: its outer length L1 and the decoded packet."""

    length: int
    packet: Packet


@dataclass
class ServerStats:
    rss: int
    hwm: int
    max_lag: float
    sessions: int


class ServerProcess:
    """A kwik listener in a child process (see :mod:`tests.hostile.server`).

    ``config`` holds :class:`kwik.Config` keyword arguments (JSON-serialisable); ``mode`` is
    ``"echo"`` or ``"idle"``. Use as an async context manager.
    """

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, mode: str = "echo"):
        self.workdir = workdir
        self.config = dict(config or {})
        self.mode = mode
        self.addr = ""
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ServerProcess:
        certfile, keyfile = self.workdir / "cert.pem", self.workdir / "key.pem"
        certfile.write_bytes(CERT)
        keyfile.write_bytes(KEY)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.hostile.server",
            str(certfile),
            str(keyfile),
            json.dumps(self.config),
            self.mode,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        line = await self._readline(30.0)
        if not line.startswith("ADDR "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.addr = line.split()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(Exception):
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
            proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._proc = None

    async def _readline(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        async with asyncio.timeout(timeout):
            return (await self._proc.stdout.readline()).decode()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def rss(self) -> int:
        """The server's resident memory now, bytes (read from /proc, no help from its loop)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    async def stats(self, timeout: float = 60.0) -> ServerStats:
        """Ask the server's loop for its figures; resets its max_lag."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(b"stats\n")
        await self._proc.stdin.drain()
        report = json.loads(await self._readline(timeout))
        return ServerStats(**report)


class RawPeer(QuicConnectionProtocol):
    """A raw QUIC client of a kwik server: writes any bytes on the transport stream and keeps
    every record the server sends (parsed without limits)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[Received] = []
        self.terminated: ConnectionTerminated | None = None
        self.next_packet_number = 1
        self.extended = False  # the credit extension was negotiated (its frames decode)
        self._buf = bytearray()
        self._changed = asyncio.Event()

    # --- receiving ------------------------------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == TRANSPORT_STREAM:
            self._buf += event.data
            self._parse()
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
        self._changed.set()

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if len(buf) - pos - 4 < length:
                break
            record = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if length == 0:
                continue
            if length >= 4 and _U32.unpack_from(record, 0)[0] == length - 4:
                record = record[4:]
            self.records.append(Received(length, decode_packet(record, extended=self.extended)))
        del buf[:pos]

    def frames(self, kind: type[Frame]) -> list[tuple[Received, Frame]]:
        """Every received frame of type ``kind``, with the record it came in."""
        return [(r, f) for r in self.records for f in r.packet.frames if isinstance(f, kind)]

    @property
    def acks(self) -> list[tuple[Received, AckFrame]]:
        return self.frames(AckFrame)  # type: ignore[return-value]

    @property
    def ping_records(self) -> int:
        """Records that carried at least one Ping (the server's echoes)."""
        return sum(any(isinstance(f, PingFrame) for f in r.packet.frames) for r in self.records)

    @property
    def open_stream_resps(self) -> list[OpenStreamRespFrame]:
        return [f for _, f in self.frames(OpenStreamRespFrame)]  # type: ignore[misc]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked on every event); False on timeout or when
        the connection ended first."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.terminated is not None:
                        return predicate()
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # --- sending --------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Queue ``data`` on the transport stream as is and transmit."""
        self._quic.send_stream_data(TRANSPORT_STREAM, data)
        self.transmit()

    def send_frames(self, frames: Sequence[Frame], packet_number: int | None = None) -> int:
        """Send one record of ``frames``; return its size."""
        if packet_number is None:
            packet_number = self.next_packet_number
            self.next_packet_number += 1
        record = encode_record(packet_number, frames)
        self.send_raw(record)
        return len(record)

    async def send_blob(self, blob: bytes, chunk: int = 256 * 1024) -> None:
        """Send a large run of records in chunks, yielding between them so that aioquic paces
        the data out as the server's flow control allows."""
        for i in range(0, len(blob), chunk):
            self.send_raw(blob[i : i + chunk])
            await asyncio.sleep(0)

    def send_bytes_on_stream(self, stream_id: int, offset: int, data: bytes) -> None:
        """Send ``data`` at ``offset`` of another QUIC stream (not the transport stream),
        leaving a gap below it, as a hostile peer may within the credit it was given."""
        stream = self._quic._get_or_create_stream_for_send(stream_id)
        sender = stream.sender
        if sender._buffer_stop < offset:
            sender._buffer_start = sender._buffer_stop = offset
        sender.write(data)
        self.transmit()

    async def settle(self, timeout: float, quiet: float = 2.0) -> bool:
        """Wait until everything queued on the transport stream has been sent (True), or until
        nothing more could be sent for ``quiet`` seconds (False: the server withholds flow-control
        credit, i.e. back-pressures) or ``timeout`` passed (False)."""
        sender = self._quic._get_or_create_stream_for_send(TRANSPORT_STREAM).sender
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last, last_change = sender.highest_offset, loop.time()
        while loop.time() < deadline:
            if sender.highest_offset >= sender._buffer_stop:
                return True
            await asyncio.sleep(0.1)
            if sender.highest_offset != last:
                last, last_change = sender.highest_offset, loop.time()
            elif loop.time() - last_change >= quiet:
                return False
        return False

    async def ping_barrier(self, timeout: float) -> bool:
        """Send a Ping and wait for its echo: everything sent before was processed. False if no
        echo came in ``timeout``."""
        before = self.ping_records
        self.send_frames([PingFrame()])
        return await self.wait_until(lambda: self.ping_records > before, timeout)


@contextlib.asynccontextmanager
async def raw_connect(
    addr: str, *, timeout: float = 10.0, alpn: Sequence[str] = ("kwik",)
) -> AsyncIterator[RawPeer]:
    """Complete a QUIC handshake with the kwik server at ``addr`` (verifying the test
    certificate), open the transport stream with a first Ping record (which creates the
    session) and wait for its echo. ``alpn``: what the peer offers (``("kwik-credit-1",)``
    speaks the credit extension)."""
    host, port = parse_address(addr)
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(alpn),
        server_name="localhost",
        verify_mode=ssl.CERT_REQUIRED,
        cadata=CERT,
        idle_timeout=60.0,
    )
    async with asyncio.timeout(timeout):
        client = connect(host, port, configuration=configuration, create_protocol=RawPeer)
        peer: RawPeer = await client.__aenter__()  # type: ignore[assignment]
    peer.extended = peer._quic.tls.alpn_negotiated == kwik.config.EXTENSION_ALPN
    try:
        if not await peer.ping_barrier(timeout):
            raise RuntimeError("the kwik server never echoed the first Ping")
        yield peer
    finally:
        peer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.__aexit__(None, None, None)


async def echo_roundtrip(addr: str, size: int = 64 * 1024, timeout: float = 15.0) -> bool:
    """A well-behaved kwik session: open a stream, send ``size`` bytes, read them back."""
    payload = bytes(range(256)) * (size // 256)
    config = kwik.Config(handshake_timeout=5.0, worker_pool=False)
    async with asyncio.timeout(timeout):
        session = await kwik.dial_addr(addr, kwik.TLSConfig(cadata=CERT), config)
        try:
            stream = await session.open_stream_sync()
            await stream.write(payload)
            await stream.close()
            chunks = []
            while data := await stream.read(65536):
                chunks.append(data)
            return b"".join(chunks) == payload
        finally:
            await session.close()


@dataclass
class Budget:
    """Memory figures of one attack, for assertions and the report."""

    before: int
    after: int
    sent: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        return self.after - self.before

    def __str__(self) -> str:
        return (
            f"sent {self.sent:,} B; server RSS {self.before / MIB:.1f} -> {self.after / MIB:.1f}"
            f" MiB (+{self.growth / MIB:.1f}) {self.notes}"
        )
