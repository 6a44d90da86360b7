"""A raw engine baseline with kwik's UDP I/O: the benchmark application on an engine's public
``QuicConnection`` API (aioquic or qh3), driven sans-IO over :class:`kwik._udp.UdpEndpoint`
(batched receive and send, GRO/GSO where Linux has them) with the listener-side connection id
routing of :mod:`kwik._demux`. It is what "raw qh3 with the same I/O" means in the engine
comparison (``python -m benchmarks --engine qh3``): the same QUIC engine and the same socket
code as kwik, without kwik's session layer.

One benchmark stream is one QUIC stream; writes are not back-pressured (as in
:mod:`benchmarks.peer_aioquic`).
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from kwik._demux import encode_version_negotiation, parse_header
from kwik._udp import UdpEndpoint

from .app import ServerContext, serve_stream
from .common import QuicSettings

__all__ = ["RawConnection", "RawStream", "dial", "establish_sessions", "start_server"]

ALPN = ["kwik-bench"]


def _engine(settings: QuicSettings) -> tuple[Any, Any, Any]:
    """(QuicConfiguration, QuicConnection, events) of the settings' engine."""
    package = "qh3" if settings.engine == "qh3" else "aioquic"
    configuration = importlib.import_module(f"{package}.quic.configuration")
    connection = importlib.import_module(f"{package}.quic.connection")
    events = importlib.import_module(f"{package}.quic.events")
    return configuration.QuicConfiguration, connection.QuicConnection, events


def quic_configuration(
    settings: QuicSettings,
    *,
    is_client: bool,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    cadata: bytes | None = None,
) -> Any:
    """The engine's configuration with the shared settings (what kwik's Config maps to)."""
    QuicConfiguration, _, _ = _engine(settings)
    options: dict[str, Any] = {
        "is_client": is_client,
        "alpn_protocols": ALPN,
        "idle_timeout": settings.idle_timeout,
        "max_datagram_size": settings.max_datagram_size,
        "max_stream_data": settings.max_stream_data,
        "max_data": settings.max_data,
    }
    if settings.engine == "qh3":
        options["probe_datagram_size"] = False  # kwik sends max_datagram_size, as here
    else:
        options["congestion_control_algorithm"] = settings.congestion_control
    qc = QuicConfiguration(**options)
    if cert_pem is not None and key_pem is not None:
        if settings.engine == "qh3":
            qc.load_cert_chain(cert_pem, key_pem)
        else:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            qc.certificate = x509.load_pem_x509_certificate(cert_pem)
            qc.private_key = serialization.load_pem_private_key(key_pem, password=None)
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
        if self._connection.terminated:
            raise ConnectionError("QUIC connection terminated")
        self._connection.quic.send_stream_data(self.stream_id, bytes(data))
        self._connection.transmit()
        return len(data)

    async def close(self) -> None:
        if not self._connection.terminated:
            self._connection.quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self._connection.transmit()


class RawConnection:
    """An engine ``QuicConnection`` driven sans-IO: receive a batch, handle its events,
    transmit once; one non-decreasing ``time.monotonic`` clock; its timer on the loop."""

    def __init__(self, quic: Any, events: Any, send: Callable[[list[bytes], Any], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self.quic = quic
        self._events = events
        self._send = send
        self.streams: dict[int, RawStream] = {}
        self.terminated = False
        self.on_stream: Callable[[RawStream], None] | None = None
        self.on_cid: Callable[[bytes, bool], None] | None = None
        self.on_terminated: Callable[[], None] | None = None
        self._clock = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.connected: asyncio.Future[None] = self._loop.create_future()
        self._many = getattr(quic, "receive_many_datagrams", None)
        self._gro = getattr(quic, "receive_gro_buffer", None)

    def _now(self) -> float:
        now = time.monotonic()
        if now < self._clock:
            return self._clock
        self._clock = now
        return now

    def open_stream(self) -> RawStream:
        stream_id = self.quic.get_next_available_stream_id()
        stream = self.streams[stream_id] = RawStream(self, stream_id)
        return stream

    async def open_stream_async(self) -> RawStream:
        return self.open_stream()

    def udp_received(self, items: list[tuple[bytes, Any, int]]) -> None:
        now = self._now()
        run: list[bytes] = []
        run_addr: Any = None
        for data, addr, segment in items:
            if segment or (run and addr != run_addr):
                self._receive_run(run, run_addr, now)
                run = []
            if segment and self._gro is not None:
                self._gro(data, segment, addr, now=now)
            elif segment:
                run = [data[i : i + segment] for i in range(0, len(data), segment)]
                run_addr = addr
            else:
                run.append(data)
                run_addr = addr
        self._receive_run(run, run_addr, now)
        self._process()
        self.transmit()

    def _receive_run(self, run: list[bytes], addr: Any, now: float) -> None:
        if not run:
            return
        if len(run) > 1 and self._many is not None:
            self._many(run, addr, now=now)  # as kwik's path does on qh3
            return
        for data in run:
            self.quic.receive_datagram(data, addr, now=now)

    def udp_error(self, exc: OSError) -> None:
        pass

    def transmit(self) -> None:
        batch: list[bytes] = []
        batch_addr: Any = None
        for data, addr in self.quic.datagrams_to_send(now=self._now()):
            if batch and addr != batch_addr:
                self._send(batch, batch_addr)
                batch = []
            batch.append(data)
            batch_addr = addr
        if batch:
            self._send(batch, batch_addr)
        timer_at = self.quic.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if timer_at is not None and not self.terminated:
                self._timer = self._loop.call_at(timer_at, self._on_timer)
            self._timer_at = timer_at

    def _on_timer(self) -> None:
        timer_at = self._timer_at
        self._timer = None
        self._timer_at = None
        now = self._now()
        if timer_at is not None and timer_at > now:
            now = self._clock = timer_at
        self.quic.handle_timer(now=now)
        self._process()
        self.transmit()

    def _process(self) -> None:
        events = self._events
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, events.StreamDataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    stream = self.streams[event.stream_id] = RawStream(self, event.stream_id)
                    if self.on_stream is not None:
                        self.on_stream(stream)
                stream._feed(event.data, event.end_stream)
            elif isinstance(event, events.HandshakeCompleted):
                if not self.connected.done():
                    self.connected.set_result(None)
            elif isinstance(event, events.ConnectionIdIssued) and self.on_cid is not None:
                self.on_cid(event.connection_id, True)
            elif isinstance(event, events.ConnectionIdRetired) and self.on_cid is not None:
                self.on_cid(event.connection_id, False)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if not self.connected.done():
                    self.connected.set_exception(ConnectionError(event.reason_phrase))
                    self.connected.exception()
                for stream in self.streams.values():
                    stream._wake()
                if self.on_terminated is not None:
                    self.on_terminated()
            event = self.quic.next_event()

    def close(self) -> None:
        if not self.terminated:
            self.quic.close()
            self.transmit()


class _Server:
    """Connection id routing of one UDP socket (kwik's demultiplexer, without kwik)."""

    def __init__(self, settings: QuicSettings, qc: Any, ctx: ServerContext) -> None:
        self._settings = settings
        self._qc = qc
        self._ctx = ctx
        _, self._QuicConnection, self._events = _engine(settings)
        self._connections: dict[bytes, RawConnection] = {}
        self.endpoint: UdpEndpoint | None = None

    def udp_received(self, items: list[tuple[bytes, Any, int]]) -> None:
        assert self.endpoint is not None
        batches: dict[RawConnection, list[tuple[bytes, Any, int]]] = {}
        for item in items:
            data, addr, segment = item
            header = parse_header(data, self._qc.connection_id_length)
            if header is None:
                continue
            versions = tuple(int(v) for v in self._qc.supported_versions)
            if header.version is not None and header.version not in versions:
                if header.version:
                    self.endpoint.send(
                        [encode_version_negotiation(header.scid, header.dcid, versions)], addr
                    )
                continue
            connection = self._connections.get(header.dcid)
            if connection is None:
                if not header.is_initial or (segment or len(data)) < 1200:
                    continue
                quic = self._QuicConnection(
                    configuration=self._qc, original_destination_connection_id=header.dcid
                )
                connection = RawConnection(quic, self._events, self.endpoint.send)
                connection.on_stream = lambda s: self._ctx.spawn(serve_stream(s, self._ctx))
                self._attach(connection, header.dcid)
            batches.setdefault(connection, []).append(item)
        for connection, batch in batches.items():
            connection.udp_received(batch)

    def _attach(self, connection: RawConnection, odcid: bytes) -> None:
        cids = {odcid, connection.quic.host_cid}
        for cid in cids:
            self._connections[cid] = connection

        def on_cid(cid: bytes, issued: bool) -> None:
            if issued:
                cids.add(cid)
                self._connections[cid] = connection
            else:
                cids.discard(cid)
                self._connections.pop(cid, None)

        def on_terminated() -> None:
            for cid in cids:
                if self._connections.get(cid) is connection:
                    del self._connections[cid]

        connection.on_cid = on_cid
        connection.on_terminated = on_terminated

    def udp_error(self, exc: OSError) -> None:
        pass

    def close(self) -> None:
        for connection in set(self._connections.values()):
            connection.close()
        if self.endpoint is not None:
            self.endpoint.close()


async def start_server(
    host: str, settings: QuicSettings, cert_pem: bytes, key_pem: bytes, ctx: ServerContext
) -> tuple[str, _Server]:
    """Serve the benchmark application; return the bound "host:port" and the server."""
    qc = quic_configuration(settings, is_client=False, cert_pem=cert_pem, key_pem=key_pem)
    server = _Server(settings, qc, ctx)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, 0))
    server.endpoint = UdpEndpoint(asyncio.get_running_loop(), sock, server)
    port = sock.getsockname()[1]
    return f"{host}:{port}", server


@asynccontextmanager
async def dial(address: str, settings: QuicSettings, cadata: bytes) -> AsyncIterator[RawConnection]:
    """Connect to ``address`` ("host:port"); close the connection on exit."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    family, _, _, _, addr = infos[0]
    _, QuicConnection, events = _engine(settings)
    qc = quic_configuration(settings, is_client=True, cadata=cadata)
    qc.server_name = host
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("0.0.0.0", 0) if family == socket.AF_INET else ("::", 0))
    sock.connect(addr)
    connection = RawConnection(QuicConnection(configuration=qc), events, lambda d, a: None)
    endpoint = UdpEndpoint(loop, sock, connection, connected=True)
    connection._send = endpoint.send
    try:
        connection.quic.connect(addr, now=connection._now())
        connection.transmit()
        await connection.connected
        yield connection
    finally:
        connection.close()
        endpoint.close()


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
            waited.result()
        elapsed = all_done.result() - start
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"seconds": elapsed, "sessions": count}
