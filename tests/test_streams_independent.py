"""No stream blocks another, kwik to kwik over real QUIC, with the default Config.

Every test runs against a kwik peer that speaks the credit extension (``credit``) and against
one forced to plain KWIK v2 (``v2``: the client offers only ``"kwik"``), inline and through the
worker pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

import kwik

from .conftest import CERT, Server, read_all, wait_until

MIB = 1024 * 1024


@pytest.fixture(params=["credit", "v2"])
def client_tls(request: pytest.FixtureRequest) -> kwik.TLSConfig:
    alpn = ("kwik",) if request.param == "v2" else kwik.TLSConfig().alpn_protocols
    return kwik.TLSConfig(cadata=CERT, alpn_protocols=alpn)


def _extension(session: kwik.Session, client_tls: kwik.TLSConfig) -> None:
    """The mode the test meant is the one the path negotiated."""
    wanted = "kwik-credit-1" in client_tls.alpn_protocols
    assert session.paths[0].credit_extension is wanted


async def test_a_stream_never_read_does_not_stop_another_streams_echo(
    make_server, client_tls, config
) -> None:
    """(a) The server never reads the first stream (2 MiB written to it); a second stream's
    4 MiB echo completes meanwhile."""
    held: list[kwik.Stream] = []

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        if not held:
            held.append(stream)  # never read
            return
        while data := await stream.read():
            await stream.write(data)
        await stream.close()

    server: Server = await make_server(handler)
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        _extension(session, client_tls)
        stuck = await session.open_stream_sync()
        stuck_writer = asyncio.create_task(stuck.write(os.urandom(2 * MIB)))
        await wait_until(lambda: bool(held))
        echo = await session.open_stream_sync()
        payload = os.urandom(4 * MIB)
        writer = asyncio.create_task(echo.write(payload))
        got = await read_all_after(echo, writer)
        assert got == payload
        stuck_writer.cancel()
        await asyncio.gather(stuck_writer, return_exceptions=True)
        await session.close()


async def read_all_after(stream: kwik.Stream, writer: asyncio.Task[int]) -> bytes:
    """Read ``stream`` to EOF while ``writer`` writes it; FIN once written."""

    async def finish() -> None:
        await writer
        await stream.close()

    closer = asyncio.create_task(finish())
    data = await read_all(stream)
    await closer
    return data


async def test_concurrent_responses_read_one_after_the_other_all_arrive(
    make_server, client_tls, config
) -> None:
    """(b) r3-5: three 2 MiB responses written concurrently by the server (64 KiB at a time,
    each from its own task), read by the client one after the other."""
    payloads = [os.urandom(2 * MIB) for _ in range(3)]

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        index = int(await stream.readexactly(1))
        payload = payloads[index]
        for start in range(0, len(payload), 64 * 1024):
            await stream.write(payload[start : start + 64 * 1024])
        await stream.close()

    server = await make_server(handler)
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        _extension(session, client_tls)
        streams = []
        for index in range(3):
            stream = await session.open_stream_sync()
            await stream.write(str(index).encode())
            await stream.close()
            streams.append(stream)
        for stream, payload in zip(streams, payloads, strict=True):
            assert await read_all(stream) == payload
        await session.close()


async def test_a_stream_written_far_out_of_order_is_delivered(
    make_server, client_tls, config
) -> None:
    """(c) One writer writes 2 MiB starting 4 MiB in (3 MiB beyond the 1 MiB window) first,
    then the first 4 MiB: the reader gets all 6 MiB in order."""
    data = os.urandom(6 * MIB)

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(1)
        stream.set_write_offset(4 * MIB)
        await stream.write(data[4 * MIB :])
        stream.set_write_offset(0)
        await stream.write(data[: 4 * MIB])
        await stream.close()

    server = await make_server(handler)
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        _extension(session, client_tls)
        stream = await session.open_stream_sync()
        await stream.write(b"?")
        await stream.close()
        assert await read_all(stream) == data
        await session.close()


async def test_a_v2_server_whose_reader_is_slow_still_echoes_pings(make_server, config) -> None:
    """r3-7: a KWIK v2 path whose server application does not read an upload (its session
    budget spent, the upload's frames waiting) still echoes the client's Pings, as a KWIK-Go
    client requires."""
    release = asyncio.Event()

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await release.wait()
        await read_all(stream)

    small = config.replace(session_receive_buffer=256 * 1024, heartbeat_interval=0.3)
    server = await make_server(handler, small)
    v2 = kwik.TLSConfig(cadata=CERT, alpn_protocols=("kwik",))
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(server.addr, v2, small)
        stream = await session.open_stream_sync()
        # within what the server holds (budget + waiting frames + its reader's window): past
        # that, QUIC flow control stops the client's records, Pings included, and the client
        # then judges the server by QUIC acknowledgements instead
        writer = asyncio.create_task(stream.write(os.urandom(MIB)))
        await wait_until(lambda: bool(server.sessions))
        served = server.sessions[0]
        await wait_until(lambda: served.statistics().receive_buffered >= 256 * 1024)
        pongs = session.paths[0].pongs_received
        await wait_until(lambda: session.paths[0].pongs_received >= pongs + 5)
        # the upload really waits for the server's reader meanwhile
        assert served.statistics().receive_buffered == 256 * 1024
        assert served._core.table_sizes()["waiting_frames"] > 0
        release.set()
        await writer
        await stream.close()
        await session.close()


async def test_credit_frames_cost_little(make_server, config) -> None:
    """Measured, not asserted beyond a bound a regression would break: credit frames per
    MiB moved on a 16 MiB download."""
    payload = os.urandom(16 * MIB)

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(1)
        await stream.write(payload)
        await stream.close()

    server = await make_server(handler)
    tls = kwik.TLSConfig(cadata=CERT)
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(server.addr, tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"?")
        await stream.close()
        assert await read_all(stream) == payload
        info = session.paths[0]
        per_mib = info.credit_bytes_sent / 16
        print(f"\ncredit frames: {info.credit_frames_sent} ({per_mib:.0f} B of frames per MiB)")
        assert 0 < per_mib < 1024
        await session.close()


def test_client_tls_fixture_modes() -> None:
    """Both modes are what they claim (the extension's token first, then KWIK v2's)."""
    default = kwik.TLSConfig()
    assert tuple(default.alpn_protocols) == ("kwik-credit-1", "kwik")
    assert dataclasses.replace(default, alpn_protocols=("kwik",)).alpn_protocols == ("kwik",)
