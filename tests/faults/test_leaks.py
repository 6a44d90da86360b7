"""Leaks: 300 dial/close cycles, clean and failing, leave nothing behind.

One listener (in this process, so that its side is measured too) and four kinds of cycle, in
blocks of 15 (20 blocks after 5 blocks of warm-up; 5 blocks run at once):

* 12 clean cycles: dial, one 4 KiB echo, close;
* a protocol violation towards the listener: a raw aioquic client sends a valid record, then
  a malformed one (header type 7) on the transport stream; the listener must close the
  connection (with an error code);
* a protocol violation towards a kwik client: a raw aioquic server answers the client's first
  record with a malformed one; the client's session must close with an error;
* a handshake timeout: a dial (``handshake_timeout=0.2``) to a UDP socket that never answers
  must raise ``HandshakeTimeoutError``.

Afterwards RSS, open fds, asyncio tasks and live ``kwik.Session`` objects are back to the
baseline taken after the warm-up (with a tolerance for RSS only), the global worker pool is
gone once the listener is closed, and nothing was logged at ERROR or above.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import kwik
from kwik.protocol import PingFrame, encode_record

from .lab import Certificates
from .peer import pattern, process_stats, request, start_fault_server

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

BLOCKS = 20
CLEAN_PER_BLOCK = 12
CYCLES = BLOCKS * (CLEAN_PER_BLOCK + 3)
#: blocks run at once (each block's cycles run one after the other)
CONCURRENT_BLOCKS = 5
#: RSS growth tolerated over the 300 cycles (allocator noise; a per-cycle leak of ~30 KB or
#: more breaks it)
RSS_TOLERANCE_KIB = 10 * 1024
#: a record whose packet header type (7) is invalid: a protocol violation for any KWIK peer
MALFORMED = encode_record(2, [PingFrame()], header_type=7)
FIRST = encode_record(1, [PingFrame()])


class _Watcher(QuicConnectionProtocol):
    """A raw aioquic client remembering how the connection ended."""

    terminated: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
        super().quic_event_received(event)


class _GarbagePeer(QuicConnectionProtocol):
    """A raw aioquic server answering the first bytes of any stream with a malformed record."""

    answered = False

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and not self.answered:
            self.answered = True
            self._quic.send_stream_data(event.stream_id, MALFORMED)
            self.transmit()


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def _live_sessions() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kwik.Session))


def _snapshot() -> dict[str, int]:
    stats = process_stats()
    stats["sessions"] = _live_sessions()
    return stats


class Cycles:
    """The four kinds of cycle against one listener, one garbage peer and one mute socket."""

    def __init__(self, certs: Certificates, listener_addr: str, garbage: str, mute: str):
        self.tls = certs.client_tls()
        self.listener_addr = listener_addr
        self.garbage = garbage
        self.mute = mute
        self.counts = {"clean": 0, "violation-at-listener": 0, "violation-at-client": 0}
        self.counts["handshake-timeout"] = 0
        self.payload = pattern(5, 0, 4096)

    async def clean(self) -> None:
        session = await kwik.dial_addr(self.listener_addr, self.tls)
        try:
            stream = await request(session, "ECHO")
            await stream.write(self.payload)
            await stream.close()
            echoed = bytearray()
            while data := await stream.read():
                echoed += data
            assert echoed == self.payload
        finally:
            await session.close()
        self.counts["clean"] += 1

    async def violation_at_listener(self) -> None:
        host, port = _host_port(self.listener_addr)
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=["kwik"], verify_mode=ssl.CERT_NONE
        )
        async with connect(host, port, configuration=configuration, create_protocol=_Watcher) as c:
            assert isinstance(c, _Watcher)
            stream_id = c._quic.get_next_available_stream_id()
            c._quic.send_stream_data(stream_id, FIRST + MALFORMED)
            c.transmit()
            async with asyncio.timeout(10):
                await c.wait_closed()
            assert c.terminated is not None and c.terminated.error_code != 0, c.terminated
        self.counts["violation-at-listener"] += 1

    async def violation_at_client(self) -> None:
        session = await kwik.dial_addr(self.garbage, self.tls)
        try:
            async with asyncio.timeout(10):
                await session.wait_closed()
            with pytest.raises(kwik.SessionClosedError) as info:
                await session.open_stream()
            assert info.value.code != 0
            del info
        finally:
            await session.close()
        self.counts["violation-at-client"] += 1

    async def handshake_timeout(self) -> None:
        started = time.monotonic()
        with pytest.raises(kwik.HandshakeTimeoutError):
            await kwik.dial_addr(self.mute, self.tls, kwik.Config(handshake_timeout=0.2))
        assert time.monotonic() - started < 5
        self.counts["handshake-timeout"] += 1

    async def block(self) -> None:
        """One block: 12 clean cycles with the three failing kinds spread among them."""
        kinds: list[Callable[[], Awaitable[None]]] = [self.clean] * CLEAN_PER_BLOCK
        kinds[3:3] = [self.violation_at_listener]
        kinds[8:8] = [self.violation_at_client]
        kinds[12:12] = [self.handshake_timeout]
        for kind in kinds:
            async with asyncio.timeout(15):
                await kind()


@pytest.fixture
async def garbage_peer(certs: Certificates) -> AsyncIterator[str]:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["kwik"])
    configuration.certificate = x509.load_pem_x509_certificate(certs.cert_pem)
    configuration.private_key = serialization.load_pem_private_key(certs.key_pem, None)  # type: ignore[assignment]
    server = await serve("127.0.0.1", 0, configuration=configuration, create_protocol=_GarbagePeer)
    sockname: Any = server._transport.get_extra_info("sockname")  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{sockname[1]}"
    finally:
        server.close()


@pytest.fixture
def mute_port() -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


async def _settle(baseline: dict[str, int]) -> dict[str, int]:
    """Measure again once tasks and fds had a chance to go back (bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        await asyncio.sleep(0.1)
        now = _snapshot()
        if (now["tasks"] <= baseline["tasks"] and now["fds"] <= baseline["fds"]) or (
            time.monotonic() > deadline
        ):
            return now


async def test_dial_close_cycles_leak_nothing(
    certs: Certificates, garbage_peer: str, mute_port: str, caplog: pytest.LogCaptureFixture
) -> None:
    """300 cycles (240 clean, 20 of each failing kind): RSS, fds, tasks and Session objects
    back to baseline, the pool gone after the listener closes, no ERROR log line."""
    caplog.set_level(logging.WARNING)
    server = await start_fault_server("127.0.0.1:0", certs.server_tls())
    try:
        cycles = Cycles(certs, server.addr, garbage_peer, mute_port)
        # warm-up at the same concurrency: caches, pools, lazily imported modules, the heap's
        # high-water mark
        await asyncio.gather(*(cycles.block() for _ in range(CONCURRENT_BLOCKS)))
        baseline = await _settle(_snapshot())
        started = time.monotonic()
        for _ in range(BLOCKS // CONCURRENT_BLOCKS):  # a graceful close takes ~0.1 s: overlap
            await asyncio.gather(*(cycles.block() for _ in range(CONCURRENT_BLOCKS)))
        elapsed = time.monotonic() - started
        after = await _settle(baseline)
    finally:
        async with asyncio.timeout(20):
            await server.close()
    async with asyncio.timeout(10):
        while kwik.get_global_worker_pool() is not None:
            await asyncio.sleep(0.05)
    print(
        f"\n[faults] leaks: {CYCLES} cycles ({cycles.counts}) in {elapsed:.1f} s; "
        f"RSS {baseline['rss']} -> {after['rss']} KiB, fds {baseline['fds']} -> {after['fds']}, "
        f"tasks {baseline['tasks']} -> {after['tasks']}, "
        f"live sessions {baseline['sessions']} -> {after['sessions']}"
    )
    assert cycles.counts["clean"] == (BLOCKS + CONCURRENT_BLOCKS) * CLEAN_PER_BLOCK
    assert after["fds"] <= baseline["fds"]
    assert after["tasks"] <= baseline["tasks"]
    # at most the listener's last accepted session may still be referenced; 300 cycles
    # leaking would leave dozens
    assert after["sessions"] <= baseline["sessions"] <= 1
    assert after["rss"] - baseline["rss"] < RSS_TOLERANCE_KIB
    assert server.errors == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
