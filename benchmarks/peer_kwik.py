"""The kwik side: the benchmark application on kwik's public API.

A kwik server is a listener whose sessions hand every accepted stream to
:func:`benchmarks.app.serve_stream`. A primary server also understands ``RELAY <host:port>``
(recruit a secondary server with :meth:`kwik.Session.add_relay`) and ``SPLIT <n>`` (serve ``n``
bytes on this stream: the first half itself, the second half from the secondary, which it asks
for through :meth:`kwik.Relay.send_raw_data` on the same stream id; both halves are placed with
``set_write_offset`` and both sides finish the stream at offset ``n``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import kwik

from .app import ServerContext, serve_stream
from .common import ByteStream, QuicSettings, gather_all, read_to_eof, write_zeros

__all__ = ["establish_sessions", "kwik_config", "pool_stats", "start_server"]


def kwik_config(settings: QuicSettings, *, worker_pool: bool = True) -> kwik.Config:
    """``kwik.Config`` carrying the shared QUIC settings.

    kwik gives the transport stream ``path_receive_window`` of credit and the connection
    ``max(2 * path_receive_window, 1 MiB)``, which is how ``QuicSettings`` defines both.
    """
    config = kwik.Config(
        engine=settings.engine,
        max_datagram_size=settings.max_datagram_size,
        congestion_control=settings.congestion_control,
        idle_timeout=settings.idle_timeout,
        path_receive_window=settings.max_stream_data,
        worker_pool=worker_pool,
    )
    if max(2 * config.path_receive_window, 1024 * 1024) != settings.max_data:
        raise ValueError("QuicSettings.max_data must be max(2 * max_stream_data, 1 MiB) for kwik")
    return config


def pool_stats() -> dict[str, Any] | None:
    """The global worker pool's stats as a dict; None without a pool (or before kwik has one)."""
    getter: Callable[[], Any] | None = getattr(kwik, "get_global_worker_pool", None)
    if getter is None:
        return None
    pool = getter()
    if pool is None:
        return None
    stats = pool.stats()
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    if isinstance(stats, dict):
        return dict(stats)
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}


class _Primary:
    """State of a primary server: one relay per session, recruited by ``RELAY``."""

    def __init__(self) -> None:
        self.relays: dict[int, kwik.Relay] = {}

    async def command(self, stream: ByteStream, command: str, args: list[str]) -> None:
        assert isinstance(stream, kwik.Stream)
        session = stream.session
        if command == "RELAY":
            self.relays[session.session_id] = await session.add_relay(args[0])
            await stream.write(b"OK\n")
            await stream.close()
            return
        # SPLIT n: [0, half) from here, [half, n) from the secondary
        total = int(args[0])
        half = total // 2
        relay = self.relays[session.session_id]
        request = f"PART {half} {total - half} {total}\n".encode()
        await relay.send_raw_data(request, stream.stream_id)
        await write_zeros(stream, half)
        stream.set_write_offset(total)
        await stream.close()


async def start_server(
    host: str, settings: QuicSettings, cert_pem: bytes, key_pem: bytes, worker_pool: bool
) -> tuple[str, kwik.Listener, ServerContext]:
    """Listen on ``host`` (any port) and serve every session's streams."""
    primary = _Primary()
    ctx = ServerContext(pool_stats=pool_stats, kwik_command=primary.command)
    listener = await kwik.listen_addr(
        f"{host}:0",
        kwik.TLSConfig(certificate=cert_pem, private_key=key_pem),
        kwik_config(settings, worker_pool=worker_pool),
    )

    async def serve_session(session: kwik.Session) -> None:
        try:
            while True:
                stream = await session.accept_stream()
                ctx.spawn(serve_stream(stream, ctx))
        except kwik.SessionClosedError:
            pass

    async def accept_loop() -> None:
        async for session in listener:
            ctx.spawn(serve_session(session))

    ctx.spawn(accept_loop())
    return listener.addr, listener, ctx


async def relay_setup(session: kwik.Session, relay_address: str) -> None:
    """Ask the primary server to recruit ``relay_address`` for this session."""
    stream = await session.open_stream_sync()
    await stream.write(f"RELAY {relay_address}\n".encode())
    await stream.close()
    reply = await read_to_eof(stream)
    if reply != b"OK\n":
        raise RuntimeError(f"RELAY answered {reply!r}")


async def establish_sessions(
    address: str, settings: QuicSettings, cadata: bytes, count: int, worker_pool: bool
) -> dict[str, Any]:
    """Dial ``count`` kwik sessions concurrently; seconds until the last ``dial_addr`` returned
    (QUIC handshake done and first record sent). The sessions are then closed concurrently."""
    tls = kwik.TLSConfig(cadata=cadata)
    config = kwik_config(settings, worker_pool=worker_pool)
    start = time.perf_counter()
    sessions = await gather_all([kwik.dial_addr(address, tls, config) for _ in range(count)])
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return {"seconds": elapsed, "sessions": count}
