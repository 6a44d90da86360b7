"""Multi-server sessions over loopback: relays, offset merging, path health and failure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable

import pytest

import kwik

from .conftest import CERT, KEY, Server, read_all

PAYLOAD = os.urandom(3 * 1024 * 1024 + 12345)  # both servers know the file
CHUNK = 64 * 1024
COMMAND = struct.Struct(">QQQQ")  # total length, chunk size, modulus, residue


def chunks_for(modulus: int, residue: int) -> list[tuple[int, bytes]]:
    return [
        (offset, PAYLOAD[offset : offset + CHUNK])
        for index, offset in enumerate(range(0, len(PAYLOAD), CHUNK))
        if index % modulus == residue
    ]


async def write_chunks(stream: kwik.Stream, chunks: list[tuple[int, bytes]]) -> None:
    for offset, data in chunks:
        stream.set_write_offset(offset)
        await stream.write(data)


async def secondary_handler(session: kwik.Session, stream: kwik.Stream) -> None:
    """A secondary server: reads the relayed command, writes its share at its offsets."""
    total, chunk, modulus, residue = COMMAND.unpack(await stream.readexactly(COMMAND.size))
    assert total == len(PAYLOAD) and chunk == CHUNK
    await write_chunks(stream, chunks_for(modulus, residue))
    await session.wait_closed()  # never FINs: the primary owns the final offset


def primary_handler(
    relay_addrs: list[str], relays_out: list[kwik.Relay] | None = None
) -> Callable[[kwik.Session, kwik.Stream], Awaitable[None]]:
    """A primary server: recruits the relays, has them write their chunks, writes its own."""

    async def handle(session: kwik.Session, stream: kwik.Stream) -> None:
        assert await stream.readexactly(3) == b"GET"
        relays = await asyncio.gather(*(session.add_relay(a) for a in relay_addrs))
        if relays_out is not None:
            relays_out.extend(relays)
        modulus = len(relays) + 1
        for residue, relay in enumerate(relays, start=1):
            command = COMMAND.pack(len(PAYLOAD), CHUNK, modulus, residue)
            assert await relay.send_raw_data(command, stream.stream_id) == COMMAND.size
        await write_chunks(stream, chunks_for(modulus, 0))
        stream.set_write_offset(len(PAYLOAD))
        await stream.close()

    return handle


async def start_servers(
    make_server: Callable[..., Awaitable[Server]], relays: int, cfg: kwik.Config | None = None
) -> tuple[Server, list[Server]]:
    secondaries = [await make_server(secondary_handler, cfg) for _ in range(relays)]
    primary = await make_server(primary_handler([s.addr for s in secondaries]), cfg)
    return primary, secondaries


@pytest.mark.parametrize("relays", [1, 2])
async def test_multi_server_download_is_byte_exact(make_server, client_tls, config, relays) -> None:
    """One client stream filled by the primary and 1 or 2 secondary servers (on their own
    ports) reads back as the exact file; every path carried its share."""
    primary, secondaries = await start_servers(make_server, relays)
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"GET")
        data = await read_all(stream)
        assert data == PAYLOAD
        paths = session.paths
        assert [p.path_id for p in paths] == list(range(1, relays + 2))
        assert paths[0].is_primary and not any(p.is_primary for p in paths[1:])
        assert {p.address for p in paths[1:]} == {s.addr for s in secondaries}
        share = len(PAYLOAD) // (relays + 1)
        for info in paths:
            assert info.state == "active"
            assert info.bytes_received > share * 0.9, info
        for secondary in secondaries:
            assert secondary.listener.active_session_count() == 1
            # the secondary's stream carries the id the primary relayed on
            assert secondary.sessions[0].statistics().open_streams == 1
        stats = session.statistics()
        assert stats.active_paths == relays + 1
        await session.close()


async def test_relay_stream_id_matches(make_server, client_tls, config) -> None:
    """The secondary's accept_stream() returns a stream whose id is the relayed stream id,
    and relayed bytes arrive in order at growing offsets."""
    got: list[tuple[int, bytes]] = []

    async def recorder(session: kwik.Session, stream: kwik.Stream) -> None:
        got.append((stream.stream_id, await stream.readexactly(11)))

    secondary = await make_server(recorder)
    relays: list[kwik.Relay] = []

    async def primary_side(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(1)
        relay = await session.add_relay(secondary.addr)
        relays.append(relay)
        await relay.send_raw_data(b"hello ", stream.stream_id)
        await relay.send_raw_data(b"world", stream.stream_id)

    primary = await make_server(primary_side)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        await session.open_stream_sync()  # id 1, unused
        stream = await session.open_stream_sync()  # id 2
        await stream.write(b"x")
        while not got:
            await asyncio.sleep(0.02)
        assert got == [(2, b"hello world")]
        relay = relays[0]
        assert relay.path_id == 2 and relay.address == secondary.addr and relay.is_active
        await session.close()


async def test_relay_killed_mid_session(make_server, client_tls, config) -> None:
    """A secondary that dies mid-session leaves the session working on the primary: the
    primary's data still arrives and the relay path shows failed."""
    secondary = await make_server(secondary_handler)
    release = asyncio.Event()

    async def primary_side(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(3)
        await session.add_relay(secondary.addr)
        await release.wait()
        await stream.write(PAYLOAD[:500_000])
        await stream.close()

    primary = await make_server(primary_side)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"GET")
        while len(session.paths) < 2 or not secondary.sessions:
            await asyncio.sleep(0.02)
        await secondary.sessions[0].close_with_error(1, "killed")
        while session.paths[1].state == "active":
            await asyncio.sleep(0.02)
        assert session.paths[1].state == "failed"
        assert not session.is_closed
        release.set()
        assert await read_all(stream) == PAYLOAD[:500_000]
        assert session.paths[0].state == "active"
        await session.close()


async def test_silent_relay_fails_by_heartbeat(make_server, client_tls, config) -> None:
    """A secondary that goes silent (no close, no answers, not even QUIC acknowledgements) is
    failed within heartbeat_interval * heartbeat_miss_threshold; the session stays open on the
    primary."""
    fast = config.replace(heartbeat_interval=0.1, heartbeat_miss_threshold=3)
    secondary = await make_server(None, fast)
    primary = await make_server(primary_handler([secondary.addr]), fast)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(primary.addr, client_tls, fast)
        stream = await session.open_stream_sync()
        await stream.write(b"GET")
        while len(session.paths) < 2:
            await asyncio.sleep(0.02)
        server = secondary.listener._server
        assert server is not None
        server.endpoint.pause_reading()  # the secondary hears nothing any more
        while session.paths[1].state == "active":
            await asyncio.sleep(0.05)
        info = session.paths[1]
        assert info.state == "failed"
        assert "silent" in info.close_reason
        assert not session.is_closed and session.paths[0].state == "active"
        server.endpoint.resume_reading()
        await session.close()


async def test_primary_killed_closes_client_session(make_server, client_tls, config) -> None:
    """When the primary dies, the client's session closes (in bounded time) and a pending
    read raises SessionClosedError, even with a relay path still up."""
    secondary = await make_server(None)
    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        await primary.session_arrived.wait()
        server_session = primary.sessions[0]
        await server_session.add_relay(secondary.addr)
        stream = await session.open_stream_sync()
        pending = asyncio.create_task(stream.read())
        await asyncio.sleep(0.05)
        await server_session.close_with_error(1, "primary crashed")
        with pytest.raises(kwik.SessionClosedError) as info:
            await pending
        assert info.value.code == 1 and info.value.remote is True
        await session.wait_closed()
        for path in session.paths:
            assert path.state != "active"


async def test_wrong_certificate_name_refused(server_tls, make_server, config) -> None:
    """A secondary whose certificate does not name its host is refused: add_relay raises
    PathError, and the client does not keep the path."""
    bad_cert, bad_key = kwik.generate_self_signed_cert(["wrong.example"])
    bad = await kwik.listen_addr(
        "127.0.0.1:0", kwik.TLSConfig(certificate=bad_cert, private_key=bad_key), config
    )
    primary = await make_server(None)
    trust_both = kwik.TLSConfig(cadata=CERT + bad_cert)
    async with bad, asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, trust_both, config)
        await primary.session_arrived.wait()
        with pytest.raises(kwik.PathError):
            await primary.sessions[0].add_relay(bad.addr)
        assert len(session.paths) == 1
        await session.close()


async def test_path_policy_refusal_is_never_dialed(make_server, client_tls, config) -> None:
    """path_policy refusing an address surfaces as PathError on the server; the address is
    never dialed."""
    secondary = await make_server(None)
    asked: list[str] = []

    def policy(address: str) -> bool:
        asked.append(address)
        return False

    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config.replace(path_policy=policy))
        await primary.session_arrived.wait()
        with pytest.raises(kwik.PathError, match="refused"):
            await primary.sessions[0].add_relay(secondary.addr)
        assert asked == [secondary.addr]
        assert secondary.listener.active_session_count() == 0
        assert len(session.paths) == 1
        await session.close()


async def test_max_paths_refusal(make_server, client_tls, config) -> None:
    """A client at max_paths refuses more paths."""
    secondary = await make_server(None)
    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config.replace(max_paths=1))
        await primary.session_arrived.wait()
        with pytest.raises(kwik.PathError):
            await primary.sessions[0].add_relay(secondary.addr)
        assert secondary.listener.active_session_count() == 0
        await session.close()


async def test_unreachable_relay_is_path_error(make_server, client_tls, config) -> None:
    """An address nobody answers at makes add_relay fail with PathError (not hang)."""
    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(
            primary.addr, client_tls, config.replace(handshake_timeout=0.5)
        )
        await primary.session_arrived.wait()
        with pytest.raises(kwik.PathError):
            await primary.sessions[0].add_relay("127.0.0.1:9")
        await session.close()


async def test_duplicated_add_path_dials_once(make_server, client_tls, config) -> None:
    """Two AddPath for the same address (concurrent add_relay calls) dial once and are both
    answered with the same path id."""
    secondary = await make_server(None)
    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        await primary.session_arrived.wait()
        server_session = primary.sessions[0]
        first, second = await asyncio.gather(
            server_session.add_relay(secondary.addr), server_session.add_relay(secondary.addr)
        )
        assert first.path_id == second.path_id == 2
        third = await server_session.add_relay(secondary.addr)  # already connected
        assert third.path_id == 2
        await asyncio.sleep(0.2)
        assert secondary.listener.active_session_count() == 1
        assert len(session.paths) == 2
        await session.close()


async def test_concurrent_relays_to_different_servers(make_server, client_tls, config) -> None:
    """Several relays added concurrently get distinct client path ids."""
    secondaries = [await make_server(None) for _ in range(3)]
    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        await primary.session_arrived.wait()
        relays = await asyncio.gather(*(primary.sessions[0].add_relay(s.addr) for s in secondaries))
        assert sorted(r.path_id for r in relays) == [2, 3, 4]
        assert {r.address for r in relays} == {s.addr for s in secondaries}
        assert len(session.paths) == 4
        await session.close()


async def test_remove_path(make_server, client_tls, config) -> None:
    """remove_path closes one secondary path cleanly; the session goes on; the primary
    path cannot be removed."""
    secondary = await make_server(None)
    primary = await make_server()
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        await primary.session_arrived.wait()
        relay = await primary.sessions[0].add_relay(secondary.addr)
        await session.remove_path(relay.path_id)
        assert session.paths[1].state == "closed"
        with pytest.raises(kwik.PathError):
            await session.remove_path(1)
        with pytest.raises(kwik.PathError):
            await session.remove_path(99)
        stream = await session.open_stream_sync()
        await stream.write(b"still here")
        await stream.close()
        assert await read_all(stream) == b"still here"
        await primary.sessions[0].remove_path(relay.path_id)
        assert not relay.is_active
        with pytest.raises(kwik.PathError):
            await relay.send_raw_data(b"x", 1)
        await session.close()


async def test_add_relay_is_for_servers(make_server, client_tls, config) -> None:
    """A client session cannot add relays."""
    primary = await make_server(None)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        with pytest.raises(kwik.PathError):
            await session.add_relay("127.0.0.1:1")
        await session.close()


def test_certificates_differ() -> None:
    """Sanity: the shared test certificate is the one the fixtures serve."""
    assert CERT != KEY


async def test_late_fin_of_finished_stream_is_not_a_new_stream(make_server, client_tls, config):
    """A secondary's FIN that arrives after the client finished the stream both ways is
    dropped, not taken for the peer opening a new stream."""
    relay_streams: list[kwik.Stream] = []

    async def keep(session: kwik.Session, stream: kwik.Stream) -> None:
        relay_streams.append(stream)

    secondary = await make_server(keep)

    async def primary_side(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(1)
        relay = await session.add_relay(secondary.addr)
        await relay.send_raw_data(b"!", stream.stream_id)
        await stream.write(b"0123456789")
        await stream.close()

    primary = await make_server(primary_side)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"x")
        assert await read_all(stream) == b"0123456789"
        await stream.close()
        while not relay_streams:
            await asyncio.sleep(0.02)
        late = relay_streams[0]
        late.set_write_offset(10)
        await late.close()  # FIN at the same final offset, on the other path
        await asyncio.sleep(0.3)
        assert session._core.streams_pending_accept == 0
        assert session.paths[1].packets_received >= 2
        await session.close()


# --- the session-core issue: multi-server streams and paths that end ------------------------


async def test_two_servers_each_write_half_beyond_the_window(make_server, client_tls, config):
    """r9_split_halves: the primary writes the first half and ends its part without a FIN
    (end_part), the secondary writes the second half, far beyond the client's receive window,
    and sends the FIN at the true end. The relay path back-pressures instead of failing; the
    stream arrives byte-exact and the secondary's FIN gives EOF."""
    size = 6 * 1024 * 1024
    data = os.urandom(size)
    half = size // 2
    cfg = config.replace(stream_receive_buffer=256 * 1024)

    async def second_half(session: kwik.Session, stream: kwik.Stream) -> None:
        assert await stream.readexactly(5) == b"half!"
        stream.set_write_offset(half)
        await stream.write(data[half:])
        await stream.close()  # the FIN, at the true end
        await session.wait_closed()

    secondary = await make_server(second_half, cfg)

    async def first_half(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(3)
        relay = await session.add_relay(secondary.addr)
        await relay.send_raw_data(b"half!", stream.stream_id)
        await asyncio.sleep(0.3)  # the secondary's half is on its way first
        await stream.write(data[:half])
        await stream.end_part()  # no FIN from this writer

    primary = await make_server(first_half, cfg)
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(primary.addr, client_tls, cfg)
        stream = await session.open_stream_sync()
        await stream.write(b"GET")
        assert await read_all(stream) == data
        assert [p.state for p in session.paths] == ["active", "active"]
        assert stream.received_ranges() == [(0, size)]
        await session.close()


async def test_relay_path_ending_while_congested_unblocks_the_primary(
    make_server, client_tls, config
):
    """r4_relay_death_blocks_primary: the relay path is congested (the client holds relayed
    data for it, the primary path waits); the relay path ends; the primary path goes on."""
    cfg = config.replace(relay_buffer=64 * 1024, path_send_window=64 * 1024)
    ready, go = asyncio.Event(), asyncio.Event()

    async def secondary_side(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(1)
        ready.set()
        await session.wait_closed()

    secondary = await make_server(secondary_side, cfg)

    async def primary_side(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(3)
        relay = await session.add_relay(secondary.addr)
        await relay.send_raw_data(b"a", stream.stream_id)
        await go.wait()
        with contextlib.suppress(kwik.KwikError):
            async with asyncio.timeout(2):
                await relay.send_raw_data(b"r" * 1_000_000, stream.stream_id)
        await stream.write(b"HELLO-FROM-PRIMARY")
        await stream.close()

    primary = await make_server(primary_side, cfg)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(primary.addr, client_tls, cfg)
        stream = await session.open_stream_sync()
        await stream.write(b"GET")
        await ready.wait()
        server = secondary.listener._server
        assert server is not None
        server.endpoint.pause_reading()  # the secondary stops acknowledging
        go.set()
        await asyncio.sleep(0.5)
        await session.remove_path(2)  # the relay path goes away
        server.endpoint.resume_reading()
        assert await read_all(stream) == b"HELLO-FROM-PRIMARY"
        assert not session.is_closed
        await session.close()


async def test_terminated_paths_leave_the_session(make_server, client_tls, config):
    """r8_dead_paths_accumulate: relay paths that end leave the session (their statistics are
    kept in a bounded history); the path-closed callback reports each one."""
    secondary = await make_server(None)
    primary = await make_server(None)
    closed: list[kwik.PathInfo] = []
    async with asyncio.timeout(60):
        session = await kwik.dial_addr(primary.addr, client_tls, config)
        session.add_path_closed_callback(closed.append)
        await primary.session_arrived.wait()
        server_session = primary.sessions[0]
        for _ in range(20):
            relay = await server_session.add_relay(secondary.addr)
            await session.remove_path(relay.path_id)
            await server_session.remove_path(relay.path_id)
        assert len(session._paths) == 1  # only the primary is held
        assert len(session.paths) <= 1 + 16  # live + bounded history
        assert [info.state for info in closed] == ["closed"] * 20
        assert len({info.path_id for info in closed}) == 20
        assert server_session.relays == []
        await session.close()
