"""How multi-server streams end (issue 17, items 3, 4 and 6): the primary or the client closing
while relays still write, a relay dying mid-stream, relay data scheduled fairly."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import kwik

from ..conftest import read_all, wait_until
from .apps import (
    PrimaryApp,
    SecondaryApp,
    content,
    encode_message,
    gaps,
    split,
    split_request,
)

MIB = 1024 * 1024


async def servers(make_server, cfg: kwik.Config | None = None):
    secondary_app = SecondaryApp()
    secondary = await make_server(secondary_app, cfg)
    primary_app = PrimaryApp()
    primary = await make_server(primary_app, cfg)
    return primary, primary_app, secondary, secondary_app


async def send_request(session: kwik.Session, request: dict, *, fin: bool = True) -> kwik.Stream:
    stream = await session.open_stream_sync()
    await stream.write(encode_message(request))
    if fin:
        await stream.close()
    return stream


def covers(stream: kwik.Stream, start: int, end: int) -> bool:
    return any(a <= start and end <= b for a, b in stream.received_ranges())


# --- graceful closes while relays write ---------------------------------------------------------


async def test_the_primary_closing_while_a_relay_writes_loses_nothing(
    make_server, client_tls, config
):
    """r3-18: the primary writes its half, the FIN at the true end, and closes its session
    (graceful) while the secondary has written only half of its part; the secondary writes
    the rest after the primary's close() returned. The client reads every byte, then EOF;
    then its session ends with code 0."""
    primary, primary_app, secondary, secondary_app = await servers(make_server)
    half = 2 * MIB
    request = split_request(
        5,
        [("", 0, half), (secondary.addr, half, 2 * half)],
        relay={secondary.addr: {"pause_at": half // 2}},
        close_session=True,
    )
    async with asyncio.timeout(40):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        stream = await send_request(session, request)
        reader = asyncio.create_task(read_all(stream))
        await primary_app.closed.wait()  # the primary's close() returned
        await secondary_app.paused.wait()
        assert primary.sessions[0].is_closed and not session.is_closed
        secondary_app.gate.set()  # the rest of the secondary's part, after the close
        assert await reader == content(5, 0, 2 * half)
        await session.wait_closed()
        error = session.close_error
        assert error is not None and error.code == 0 and error.remote, error
        assert secondary_app.written == [stream.stream_id]  # its writes all succeeded


async def test_after_the_primarys_graceful_end_the_secondary_reads_eof(
    make_server, client_tls, config
):
    """The r3-18 scenario, small: once the client has the whole stream, the secondary that
    wrote part of it should read EOF (the client FINs what it forwarded), as it does when the
    primary stays, rather than have its session closed under its reader."""
    primary, primary_app, secondary, secondary_app = await servers(make_server)
    request = split_request(
        15,
        [("", 0, 10), (secondary.addr, 10, 20)],
        relay={secondary.addr: {"pause_at": 0}},
        close_session=True,
    )
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        stream = await send_request(session, request)
        reader = asyncio.create_task(read_all(stream))
        await primary_app.closed.wait()
        secondary_app.gate.set()
        assert await reader == content(15, 0, 20)
        await session.wait_closed()
        await wait_until(lambda: bool(secondary_app.eof))  # its reader saw EOF
        assert secondary_app.eof == [stream.stream_id]
        error = session.close_error
        assert error is not None and error.code == 0 and error.remote, error


async def test_the_client_closing_waits_for_what_relays_still_write(
    make_server, client_tls, config
):
    """The client calls close() while a stream it reads is still being written by a relay:
    the close waits for the relay's part (the stream completes), then the session ends with
    code 0, and the reader gets every byte and EOF. (The reader keeps reading: the relay's
    part lies beyond the stream's window until the reader takes the primary's.)"""
    primary, _, secondary, secondary_app = await servers(make_server)
    half = MIB
    request = split_request(
        6,
        [("", 0, half), (secondary.addr, half, 2 * half)],
        relay={secondary.addr: {"pause_at": half // 2}},
    )
    async with asyncio.timeout(40):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        stream = await send_request(session, request)
        reader = asyncio.create_task(read_all(stream))
        await secondary_app.paused.wait()
        await wait_until(lambda: covers(stream, 0, half + half // 2))  # all but the rest
        closing = asyncio.create_task(session.close())
        await wait_until(lambda: session._core.closing)
        await asyncio.sleep(0.05)  # not a wait for a condition: the close must not end now
        assert not closing.done() and not reader.done()
        secondary_app.gate.set()  # the rest of the relay's part, during the close
        await closing
        error = session.close_error
        assert error is not None and error.code == 0 and not error.remote
        assert await reader == content(6, 0, 2 * half)
        # the client's close delivered its FIN of the forwarded stream: the secondary read EOF
        await wait_until(lambda: secondary_app.eof == [stream.stream_id])


async def test_the_client_close_gives_up_on_a_silent_relay_after_close_timeout(
    make_server, client_tls, config
):
    """Within close_timeout: a relay that stops writing mid-part does not hold the client's
    close() longer than close_timeout; the reader then gets what arrived and an error."""
    cfg = config.replace(close_timeout=1.0)
    primary, _, secondary, secondary_app = await servers(make_server, cfg)
    half = 256 * 1024
    request = split_request(
        7,
        [("", 0, half), (secondary.addr, half, 2 * half)],
        relay={secondary.addr: {"pause_at": half // 2, "chunk": 16384}},
    )
    async with asyncio.timeout(40):
        session = await kwik.dial_addr(primary.addr, client_tls, cfg)
        stream = await send_request(session, request)
        await secondary_app.paused.wait()
        await wait_until(lambda: covers(stream, 0, half + half // 2))
        started = time.monotonic()
        await session.close()
        elapsed = time.monotonic() - started
        assert 0.8 <= elapsed <= cfg.close_timeout + 4, elapsed
        assert stream.received_ranges() == [(0, half + half // 2)]
        assert await stream.readexactly(half + half // 2) == content(7, 0, half + half // 2)
        with pytest.raises(kwik.SessionClosedError):
            await stream.read()
        secondary_app.gate.set()


# --- a relay's death ------------------------------------------------------------------------------


@pytest.mark.parametrize("death", ["abort", "listener-close"])
async def test_a_relay_dying_mid_stream_is_recovered_through_the_primary(
    make_server, client_tls, config, death
):
    """The secondary dies (its session aborted, or its listener closed) after writing part of
    its share. The client's path-closed callback fires, received_ranges() shows exactly the
    gap, the client asks the primary for it on the same stream (as examples/file_transfer
    does), the primary writes it there and then the FIN: the stream is exact, and the session
    stays up and serves the next request."""
    primary, _, secondary, secondary_app = await servers(make_server)
    total, cut, stall = 600_000, 200_000, 100_000
    request = split_request(
        8,
        [("", 0, cut), (secondary.addr, cut, total)],
        relay={secondary.addr: {"pause_at": stall, "chunk": 20_000}},
        end="ack",
    )
    ended: list[kwik.PathInfo] = []
    async with asyncio.timeout(40):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        session.add_path_closed_callback(ended.append)
        stream = await send_request(session, request, fin=False)
        await secondary_app.paused.wait()
        await wait_until(lambda: stream.received_ranges() == [(0, cut + stall)])
        if death == "abort":
            await secondary.sessions[0].abort("relay crashed")
        else:
            await secondary.listener.close()
        await wait_until(lambda: bool(ended))
        [info] = ended
        assert not info.is_primary and info.address == secondary.addr
        assert info.state == ("failed" if death == "abort" else "closed"), info
        assert not session.is_closed
        missing = gaps(stream.received_ranges(), total)
        assert missing == [(cut + stall, total)]
        await stream.write(encode_message({"recover": [list(g) for g in missing]}))
        assert await stream.readexactly(total) == content(8, 0, total)
        await stream.write(encode_message({"done": True}))
        await stream.close()
        assert await read_all(stream) == b""
        # the session goes on without the relay
        assert [p.state for p in session.paths if p.is_primary] == ["active"]
        await split(session, split_request(9, [("", 0, 50_000)]))
        assert not session.is_closed and len(ended) == 1
        await wait_until(lambda: primary.sessions[0].statistics().open_streams == 0)
        await session.close()


# --- fairness ---------------------------------------------------------------------------------


async def test_relay_data_is_not_serialised_behind_the_primarys_bulk(
    make_server, client_tls, config
):
    """r3-8: a 4-byte command relayed while the primary streams 10 MiB of its own reaches the
    secondary within about one flight of the primary's data, long before the bulk is half
    read (before the rework it waited for the whole bulk: 1.2 s behind 10 MiB)."""
    bulk_size = 10 * MIB
    got_command: list[tuple[float, int]] = []
    bulk_read = 0

    async def secondary_side(session: kwik.Session, stream: kwik.Stream) -> None:
        assert await stream.readexactly(4) == b"GO!!"
        got_command.append((time.perf_counter(), bulk_read))

    secondary = await make_server(secondary_side)
    primary = await make_server(None)
    async with asyncio.timeout(40):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        request = await session.open_stream_sync()
        await request.write(b"GET")
        await primary.session_arrived.wait()
        server = primary.sessions[0]
        accepted = await server.accept_stream()
        relay = await server.add_relay(secondary.addr)
        bulk = await server.open_stream_sync()
        chunk = b"b" * 65536

        async def bulk_writer() -> None:
            for _ in range(bulk_size // len(chunk)):
                await bulk.write(chunk)
            await bulk.close()

        async def bulk_reader(stream: kwik.Stream) -> None:
            nonlocal bulk_read
            with contextlib.suppress(kwik.StreamClosedError):
                while data := await stream.read():
                    assert data == chunk[: len(data)]
                    bulk_read += len(data)

        writer = asyncio.create_task(bulk_writer())
        client_bulk = await session.accept_stream()
        reader = asyncio.create_task(bulk_reader(client_bulk))
        # the bulk is flowing and the primary's send buffer is full
        await wait_until(lambda: bulk_read >= 256 * 1024 and bulk.bytes_written >= 2 * MIB)
        sent_at, read_then = time.perf_counter(), bulk_read
        await relay.send_raw_data(b"GO!!", accepted.stream_id)
        await wait_until(lambda: bool(got_command))
        arrived_at, read_at_arrival = got_command[0]
        behind = read_at_arrival - read_then
        print(
            f"\nrelayed command: {1000 * (arrived_at - sent_at):.1f} ms, "
            f"{behind / 1024:.0f} KiB of the primary's bulk read meanwhile"
        )
        assert read_at_arrival < bulk_size // 2, (read_then, read_at_arrival)
        # the rest of the bulk proves nothing more: stop it
        writer.cancel()
        client_bulk.cancel_read()
        await asyncio.gather(writer, reader, return_exceptions=True)
        # the relayed-into stream ends (else the client's close waits for the relay's part)
        await accepted.close()
        assert await read_all(request) == b""
        await session.close()
