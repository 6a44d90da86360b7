"""The raw aioquic baseline: the benchmark application on aioquic's own public API.

``aioquic.asyncio.serve`` / ``aioquic.asyncio.connect`` with a ``QuicConnectionProtocol``
subclass that consumes QUIC events itself, writes with ``send_stream_data`` and calls
``transmit()``, as aioquic's HTTP/3 layer does. One benchmark stream is one QUIC stream.

Writes are not back-pressured: aioquic has no send-side limit (its ``StreamWriter.drain()``
never waits), so the baseline queues what the application writes and lets aioquic's flow and
congestion control pace it. That is the fastest a plain aioquic application goes; kwik bounds
its buffers, and what that costs is part of what the comparison shows.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from .app import ServerContext, serve_stream
from .common import QuicSettings

__all__ = ["RawConnection", "RawStream", "dial", "quic_configuration", "start_server"]

ALPN = ["kwik-bench"]


def quic_configuration(
    settings: QuicSettings,
    *,
    is_client: bool,
    certfile: str | None = None,
    keyfile: str | None = None,
    cadata: bytes | None = None,
) -> QuicConfiguration:
    """The aioquic configuration with the shared settings (what kwik's Config maps to)."""
    qc = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=ALPN,
        idle_timeout=settings.idle_timeout,
        max_datagram_size=settings.max_datagram_size,
        congestion_control_algorithm=settings.congestion_control,
        max_stream_data=settings.max_stream_data,
        max_data=settings.max_data,
    )
    if certfile is not None:
        qc.load_cert_chain(certfile, keyfile)
    if cadata is not None:
        qc.load_verify_locations(cadata=cadata)
    return qc


class RawStream:
    """One QUIC stream seen through the benchmark's :class:`~benchmarks.common.ByteStream`."""

    def __init__(self, connection: RawConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def _feed(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._chunks.append(data)
        if end_stream:
            self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes (at most one received chunk, without copying); b"" at FIN."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._connection.terminated:
                raise ConnectionError("QUIC connection terminated")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks[0]
        if len(chunk) <= n:
            self._chunks.popleft()
            return chunk
        self._chunks[0] = chunk[n:]
        return chunk[:n]

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Queue ``data`` in aioquic and transmit what congestion control allows."""
        if self._connection.terminated:
            raise ConnectionError("QUIC connection terminated")
        self._connection._quic.send_stream_data(self.stream_id, bytes(data))
        self._connection.transmit()
        return len(data)

    async def close(self) -> None:
        """Send FIN."""
        if not self._connection.terminated:
            self._connection._quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self._connection.transmit()


class RawConnection(QuicConnectionProtocol):
    """A QUIC connection that hands out :class:`RawStream` objects.

    Streams the peer opens are passed to ``on_stream`` (servers set it).
    """

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.streams: dict[int, RawStream] = {}
        self.terminated = False
        self.on_stream: Any = None

    def open_stream(self) -> RawStream:
        """A new bidirectional stream (the peer learns of it with its first bytes)."""
        stream_id = self._quic.get_next_available_stream_id()
        stream = self.streams[stream_id] = RawStream(self, stream_id)
        return stream

    async def open_stream_async(self) -> RawStream:
        """:meth:`open_stream` as a coroutine, the shape the benchmark clients use."""
        return self.open_stream()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                stream = self.streams[event.stream_id] = RawStream(self, event.stream_id)
                if self.on_stream is not None:
                    self.on_stream(stream)
            stream._feed(event.data, event.end_stream)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = True
            for stream in self.streams.values():
                stream._wake()


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def start_server(
    host: str, settings: QuicSettings, certfile: str, keyfile: str, ctx: ServerContext
) -> tuple[str, Any]:
    """Serve the benchmark application; return the bound "host:port" and the server."""

    def create_protocol(quic: QuicConnection, stream_handler: Any = None) -> RawConnection:
        connection = RawConnection(quic, stream_handler)
        connection.on_stream = lambda stream: ctx.spawn(serve_stream(stream, ctx))
        return connection

    port = _free_udp_port(host)
    server = await serve(
        host,
        port,
        configuration=quic_configuration(
            settings, is_client=False, certfile=certfile, keyfile=keyfile
        ),
        create_protocol=create_protocol,
    )
    return f"{host}:{port}", server


@asynccontextmanager
async def dial(address: str, settings: QuicSettings, cadata: bytes) -> AsyncIterator[RawConnection]:
    """Connect to ``address`` ("host:port"); close the connection on exit."""
    host, _, port = address.rpartition(":")
    async with connect(
        host,
        int(port),
        configuration=quic_configuration(settings, is_client=True, cadata=cadata),
        create_protocol=RawConnection,
    ) as protocol:
        assert isinstance(protocol, RawConnection)
        yield protocol


async def establish_sessions(
    address: str, settings: QuicSettings, cadata: bytes, count: int
) -> dict[str, Any]:
    """Complete ``count`` concurrent handshakes; seconds until the last one is done."""
    done = 0
    all_done = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def one() -> None:
        nonlocal done
        async with dial(address, settings, cadata):
            done += 1
            if done == count and not all_done.done():
                all_done.set_result(time.perf_counter())
            await release.wait()

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    try:
        waited = asyncio.ensure_future(asyncio.gather(*tasks))
        finished, _ = await asyncio.wait({all_done, waited}, return_when=asyncio.FIRST_COMPLETED)
        if all_done not in finished:
            waited.result()  # a connection failed: raise its error
        elapsed = all_done.result() - start
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"seconds": elapsed, "sessions": count}
