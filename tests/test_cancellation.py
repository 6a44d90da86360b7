"""Calls that are cancelled, time out or get refused lose nothing and leave nothing behind.

Each test is a user's idiom over real QUIC (127.0.0.1), inline and through the pool.
"""

from __future__ import annotations

import array
import asyncio
import socket

import pytest

import kwik

from .conftest import Server, read_all, wait_until


async def test_readexactly_cancelled_by_a_timeout_keeps_what_it_read(
    make_server, client_tls, config
) -> None:
    """r3-1: ``wait_for(readexactly(n), t)`` then a retry, as with asyncio's StreamReader:
    the bytes the cancelled call had taken are returned by the next read."""
    go_on = asyncio.Event()

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.write(b"HEAD")  # half of the 8-byte header
        await go_on.wait()
        await stream.write(b"ER!!body")
        await stream.close()

    server: Server = await make_server(handler)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"?")
        await wait_until(lambda: stream._state.receiver.readable == 4)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.readexactly(8), 0.2)
        assert stream.get_read_offset() == 0  # nothing was lost
        go_on.set()
        assert await stream.readexactly(8) == b"HEADER!!"
        assert await read_all(stream) == b"body"
        await session.close()


async def test_an_open_stream_sync_that_gives_up_leaves_no_stream_behind(
    make_server, client_tls, config
) -> None:
    """r3-3 and r3-19: open_stream_sync times out (OpenStreamTimeoutError, a KwikError and a
    TimeoutError) or is cancelled; the peer's confirmation comes later: the peer's stream reads
    EOF at once instead of waiting for ever, and neither side keeps the stream."""
    accepted: list[kwik.Stream] = []
    eofs: list[bytes] = []

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        accepted.append(stream)
        eofs.append(await stream.read())
        await stream.close()

    server = await make_server(handler)
    impatient = config.replace(open_stream_timeout=1e-6)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, impatient)
        with pytest.raises(kwik.OpenStreamTimeoutError) as exc:
            await session.open_stream_sync()
        assert isinstance(exc.value, kwik.KwikError) and isinstance(exc.value, TimeoutError)
        patient = await kwik.dial_addr(server.addr, client_tls, config)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(patient.open_stream_sync(), 1e-6)  # a cancellation inside
        await wait_until(lambda: len(eofs) == 2)
        assert eofs == [b"", b""]
        for client in (session, patient):
            await wait_until(lambda c=client: c.statistics().open_streams == 0)
        await wait_until(lambda: all(s.statistics().open_streams == 0 for s in server.sessions))
        await session.close()
        await patient.close()


async def test_write_counts_bytes_of_a_multi_byte_memoryview(
    make_server, client_tls, config
) -> None:
    """r3-11: a memoryview of 32-bit items is written whole (its bytes, not its items)."""
    server = await make_server()
    data = array.array("I", range(4))
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        stream = await session.open_stream_sync()
        assert await stream.write(memoryview(data)) == 16
        await stream.close()
        assert await read_all(stream) == data.tobytes()
        await session.close()


async def test_a_refused_lazy_open_is_reported_by_close(make_server, client_tls, config) -> None:
    """r3-15: a stream from open_stream() that the peer refuses: close() raises
    StreamClosedError (it waits for the answer), so the application learns its bytes never
    went; later writes raise too."""
    server = await make_server(cfg=config.replace(max_streams=1))
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        first = await session.open_stream_sync()  # the server's one stream
        lazy = await session.open_stream()
        assert await lazy.write(b"important record") == 16
        with pytest.raises(kwik.StreamClosedError, match="refused"):
            await lazy.close()
        with pytest.raises(kwik.StreamClosedError):
            await lazy.write(b"more")
        await first.close()
        await session.close()


async def test_a_cancelled_listener_close_still_releases_the_socket(
    server_tls, client_tls, config
) -> None:
    """r3-16: Listener.close() cancelled while its sessions close gracefully: the close goes
    on; a second close() and wait_closed() return, and the UDP port is released."""
    cfg = config.replace(close_timeout=2.0, listener_close_timeout=1.0)
    listener = await kwik.listen_addr("127.0.0.1:0", server_tls, cfg)
    async with asyncio.timeout(30):
        accepted = asyncio.create_task(listener.accept())
        client = await kwik.dial_addr(listener.addr, client_tls, cfg)
        served = await accepted
        stream = await served.open_stream_sync()
        writer = asyncio.create_task(stream.write(b"x" * 4_000_000))  # the client never reads
        await wait_until(lambda: stream._state.sender.buffered > 0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(listener.close(), 0.1)
        await listener.close()
        await listener.wait_closed()
        host, port = listener.addr.rsplit(":", 1)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((host, int(port)))  # raises if the port is still bound
        finally:
            probe.close()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await client.abort()


async def test_sessions_that_closed_before_accept_do_not_fill_the_backlog(
    server_tls, client_tls, config
) -> None:
    """r3-10: clients that connect and go away before the application accepts them (health
    checks, scanners) never make the listener refuse a live client."""
    cfg = config.replace(accept_backlog=4)
    async with (
        asyncio.timeout(30),
        await kwik.listen_addr("127.0.0.1:0", server_tls, cfg) as listener,
    ):
        for _ in range(6):
            gone = await kwik.dial_addr(listener.addr, client_tls, cfg)
            await gone.close()
        await wait_until(lambda: listener.active_session_count() == 0)
        live = await kwik.dial_addr(listener.addr, client_tls, cfg)
        stream = await live.open_stream_sync()
        session = await listener.accept()
        assert not session.is_closed
        served = await session.accept_stream()
        await stream.write(b"ok")
        await stream.close()
        assert await read_all(served) == b"ok"
        await live.close()


def test_config_refuses_a_receive_window_that_cannot_hold_a_record() -> None:
    """r3-17: a path_receive_window below a whole record could never complete one."""
    with pytest.raises(ValueError, match="path_receive_window"):
        kwik.Config(path_receive_window=64 * 1024)
    kwik.Config(path_receive_window=128 * 1024, max_record_size=128 * 1024 - 8)
