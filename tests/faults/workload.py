"""Dial/close cycles, clean and failing, shared by the leak test and the soak.

* :meth:`Cycles.clean`: dial a fault server, echo ``payload`` on one stream, close;
* :meth:`Cycles.violation_at_listener`: a raw aioquic client sends a valid record, then a
  malformed one (packet header type 7) on its transport stream; the listener must close the
  QUIC connection with an error code;
* :meth:`Cycles.violation_at_client`: a kwik client dials a raw aioquic server
  (:func:`start_garbage_peer`) that answers its first record with a malformed one; the
  client's session must close with an error;
* :meth:`Cycles.handshake_timeout`: a dial with ``handshake_timeout=0.2`` to a UDP socket that
  never answers (:func:`mute_socket`) must raise ``HandshakeTimeoutError``.

Each method raises ``AssertionError`` (or the unexpected exception) when the outcome is wrong.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import time
from typing import Any

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import kwik
from kwik.protocol import PingFrame, encode_record

from .peer import echo_over, pattern

__all__ = ["Cycles", "live_sessions", "mute_socket", "start_garbage_peer"]

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


async def start_garbage_peer(cert_pem: bytes, key_pem: bytes) -> tuple[QuicServer, str]:
    """A raw aioquic server (ALPN ``kwik``) on 127.0.0.1 that answers with garbage; returns the
    server (``close()`` it) and its address."""
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["kwik"])
    configuration.certificate = x509.load_pem_x509_certificate(cert_pem)
    configuration.private_key = serialization.load_pem_private_key(key_pem, None)  # type: ignore[assignment]
    server = await serve("127.0.0.1", 0, configuration=configuration, create_protocol=_GarbagePeer)
    sockname: Any = server._transport.get_extra_info("sockname")  # type: ignore[union-attr]
    return server, f"127.0.0.1:{sockname[1]}"


def mute_socket() -> tuple[socket.socket, str]:
    """A bound UDP socket nobody reads (``close()`` it) and its address: dials there time out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def live_sessions() -> int:
    """``kwik.Session`` objects still alive after a full garbage collection."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kwik.Session))


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


class Cycles:
    """The four kinds of cycle against one fault server, one garbage peer and one mute port;
    ``counts`` tells how many of each completed as expected."""

    def __init__(
        self, tls: kwik.TLSConfig, listener_addr: str, garbage_addr: str, mute_addr: str
    ) -> None:
        self.tls = tls
        self.listener_addr = listener_addr
        self.garbage_addr = garbage_addr
        self.mute_addr = mute_addr
        self.counts = dict.fromkeys(
            ("clean", "violation-at-listener", "violation-at-client", "handshake-timeout"), 0
        )
        self.payload = pattern(5, 0, 4096)

    async def clean(self, payload: bytes | None = None) -> int:
        """Dial, echo ``payload`` (default 4 KiB), close; returns the bytes echoed."""
        data = self.payload if payload is None else payload
        session = await kwik.dial_addr(self.listener_addr, self.tls)
        try:
            await echo_over(session, data)
        finally:
            await session.close()
        self.counts["clean"] += 1
        return len(data)

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
        session = await kwik.dial_addr(self.garbage_addr, self.tls)
        try:
            async with asyncio.timeout(10):
                await session.wait_closed()
            try:
                await session.open_stream()
            except kwik.SessionClosedError as exc:
                assert exc.code != 0, exc
            else:
                raise AssertionError("open_stream() worked on a session closed by garbage")
        finally:
            await session.close()
        self.counts["violation-at-client"] += 1

    async def handshake_timeout(self) -> None:
        started = time.monotonic()
        try:
            await kwik.dial_addr(self.mute_addr, self.tls, kwik.Config(handshake_timeout=0.2))
        except kwik.HandshakeTimeoutError:
            pass
        else:
            raise AssertionError("a dial to a mute port succeeded")
        assert time.monotonic() - started < 5, "the handshake timeout took too long"
        self.counts["handshake-timeout"] += 1
