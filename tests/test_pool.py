"""The global worker pool: lifecycle, per-path order, back-pressure, isolation, event loops."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
import uvloop

import kwik
from kwik import _pool
from kwik._path import Path
from kwik.session import Session

from .conftest import CERT, KEY, read_all, wait_until

MIB = 1024 * 1024
SERVER_TLS = kwik.TLSConfig(certificate=CERT, private_key=KEY)
CLIENT_TLS = kwik.TLSConfig(cadata=CERT)
POOL = kwik.Config(worker_pool=True)


def pool_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and (t.get_name().startswith(("kwik-worker-", "kwik-pool")))
    ]


async def test_lifecycle_lazy_shared_refcounted() -> None:
    """No pool before the first session (a listener holds none); one pool shared by every
    session, holding one reference per session; gone, with no task left, when the last
    session closes, even while the listener stays open."""
    assert kwik.get_global_worker_pool() is None
    listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, POOL)
    assert kwik.get_global_worker_pool() is None
    clients = [await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL) for _ in range(3)]
    pool = kwik.get_global_worker_pool()
    assert pool is not None
    stats = pool.stats()
    assert stats.workers == max(os.cpu_count() or 1, 4)
    assert stats.queue_capacity == stats.workers * 10
    assert stats.buffer_size == 64 * 1024
    servers = [await listener.accept() for _ in range(3)]
    assert kwik.get_global_worker_pool() is pool
    assert pool.stats().sessions == 3 + 3
    assert len(pool_tasks()) == stats.workers + 1  # workers and their owner
    for client in clients:
        await client.close()
    for server in servers:
        await server.wait_closed()
    await pool.wait_closed()
    assert kwik.get_global_worker_pool() is None
    assert pool_tasks() == []
    await listener.close()


async def test_inline_mode_uses_no_pool() -> None:
    """Config(worker_pool=False) processes records inline: no pool is created."""
    inline = kwik.Config(worker_pool=False)
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, inline) as listener:
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, inline)
        assert kwik.get_global_worker_pool() is None
        await session.close()


async def test_records_flow_through_pool_buffers_reused() -> None:
    """Records are copied into reused 64 KiB buffers; every submitted record is processed."""
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, POOL) as listener:
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL)
        pool = kwik.get_global_worker_pool()
        assert pool is not None
        server = await listener.accept()
        stream = await session.open_stream_sync()
        payload = os.urandom(2 * MIB)
        await stream.write(payload)
        await stream.close()
        accepted = await server.accept_stream()
        assert await read_all(accepted) == payload
        await wait_drained(pool)
        stats = pool.stats()
        assert stats.submitted >= 32
        assert stats.processed == stats.submitted
        # buffers are reused: no more are ever made than records can be queued or in a
        # worker's hands at once, however the records arrive (one by one on aioquic, in bursts
        # with batched receive on qh3)
        assert stats.buffers_created <= stats.max_queued + stats.workers
        assert stats.reuse_ratio > 0.5
        assert stats.buffers_reused > stats.buffers_created
        assert stats.oversized_records == 0  # a full Stream packet fits one pooled buffer
        assert stats.buffers_created <= stats.queue_capacity + 1
        assert stats.max_queued <= stats.queue_capacity
        await session.close()


async def wait_drained(pool: kwik.WorkerPool) -> None:
    """Late records (acks, pings) may still be queued when a transfer ends."""
    async with asyncio.timeout(5):
        while pool.stats().queued:
            await asyncio.sleep(0.01)


def _packet_number(record: memoryview | bytes) -> int:
    return int(struct.unpack_from(">Q", record, 1)[0])


async def test_per_path_order_kept_even_when_handling_waits(monkeypatch) -> None:
    """Every path's packets are dispatched in arrival order, across several workers, while
    streams with tiny receive buffers keep blocking their path (records are parked)."""
    order: dict[int, list[int]] = {}
    original = Session._path_record

    def spy(self: Session, path: Path, record: memoryview | bytes) -> None:
        if not path.is_client:
            order.setdefault(id(path), []).append(_packet_number(record))
        original(self, path, record)

    monkeypatch.setattr(Session, "_path_record", spy)
    cfg = kwik.Config(worker_pool=True, stream_receive_buffer=4096, max_stream_frame_data=1024)
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg) as listener:
        clients = [await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg) for _ in range(4)]
        servers = [await listener.accept() for _ in range(4)]

        async def send(session: kwik.Session, tag: int) -> bytes:
            payload = bytes([tag]) * 200_000
            for _ in range(2):
                stream = await session.open_stream_sync()
                await stream.write(payload)
                await stream.close()
            return payload

        async def receive(session: kwik.Session) -> list[bytes]:
            got = []
            for _ in range(2):
                stream = await session.accept_stream()
                await asyncio.sleep(0.05)  # let the buffer fill: the path blocks and parks
                got.append(await read_all(stream))
            return got

        async with asyncio.timeout(60):
            results = await asyncio.gather(
                *(send(c, i) for i, c in enumerate(clients)), *(receive(s) for s in servers)
            )
        sent, received = results[:4], results[4:]
        for payload, got in zip(sent, received, strict=True):
            assert got == [payload, payload]
        assert len(order) == 4
        for numbers in order.values():
            assert numbers == sorted(numbers), "a path's packets were dispatched out of order"
            assert len(numbers) > 100
        pool = kwik.get_global_worker_pool()
        assert pool is not None and pool.stats().processed > 400
        for client in clients:
            await client.close()


async def test_flood_into_slow_consumers_is_bounded_and_lossless() -> None:
    """Four sessions flood slow readers: the queue never exceeds its capacity, what each
    server holds stays bounded, and every byte arrives."""
    cfg = kwik.Config(
        worker_pool=True,
        stream_receive_buffer=64 * 1024,
        path_receive_window=256 * 1024,
        max_record_size=256 * 1024 - 8,
    )
    size = 1 * MIB
    peak_held = 0
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg) as listener:
        clients = [await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg) for _ in range(4)]
        pool = kwik.get_global_worker_pool()
        assert pool is not None
        servers = [await listener.accept() for _ in range(4)]
        payloads = [os.urandom(size) for _ in clients]

        async def flood(session: kwik.Session, payload: bytes) -> None:
            stream = await session.open_stream_sync()
            await stream.write(payload)
            await stream.close()

        async def slow_read(session: kwik.Session) -> bytes:
            nonlocal peak_held
            stream = await session.accept_stream()
            chunks = []
            while True:
                path = session._primary
                assert path is not None
                held = stream._state.receiver.buffered + path.records_buffered
                peak_held = max(peak_held, held)
                data = await stream.read(16 * 1024)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
                await asyncio.sleep(0.002)

        async with asyncio.timeout(90):
            results = await asyncio.gather(
                *(flood(c, p) for c, p in zip(clients, payloads, strict=True)),
                *(slow_read(s) for s in servers),
            )
        assert results[4:] == payloads
        await wait_drained(pool)
        stats = pool.stats()
        assert stats.max_queued <= stats.queue_capacity
        assert stats.processed == stats.submitted
        bound = cfg.stream_receive_buffer + cfg.max_record_size + cfg.path_receive_window
        assert peak_held <= bound
        for client in clients:
            await client.close()


async def test_one_session_not_reading_does_not_stall_others() -> None:
    """A session whose application never reads stops only its own writer (its stream's
    credit; a KWIK v2 path stops as a whole): another session of the same listener transfers
    1 MiB meanwhile."""
    cfg = kwik.Config(worker_pool=True, stream_receive_buffer=64 * 1024)
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg) as listener:
        stuck_client = await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg)
        stuck_server = await listener.accept()
        stuck = await stuck_client.open_stream_sync()
        stuck_writer = asyncio.create_task(stuck.write(os.urandom(4 * MIB)))
        held = (await stuck_server.accept_stream())._state  # accepted, never read
        await wait_until(lambda: held.receiver.buffered == cfg.stream_receive_buffer)

        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg)
        server = await listener.accept()
        payload = os.urandom(MIB)
        async with asyncio.timeout(30):
            stream = await client.open_stream_sync()
            await stream.write(payload)
            await stream.close()
            assert await read_all(await server.accept_stream()) == payload
        # the stuck stream is still stopped: nothing of it was read, no more came in
        assert held.receiver.buffered == cfg.stream_receive_buffer and not stuck_writer.done()
        stuck_writer.cancel()
        await asyncio.gather(stuck_writer, return_exceptions=True)
        await client.close()
        await stuck_client.close_with_error(5, "done")


async def test_forced_close_keeps_sessions_working() -> None:
    """close_global_worker_pool() mid-transfer: open sessions go on inline, losing nothing;
    the next session gets a new pool."""
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, POOL) as listener:
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL)
        old = kwik.get_global_worker_pool()
        assert old is not None
        server = await listener.accept()
        stream = await session.open_stream_sync()
        payload = os.urandom(2 * MIB)

        async def send() -> None:
            await stream.write(payload[:MIB])
            await kwik.close_global_worker_pool()
            assert kwik.get_global_worker_pool() is None
            await stream.write(payload[MIB:])
            await stream.close()

        async with asyncio.timeout(30):
            sender = asyncio.create_task(send())
            got = await read_all(await server.accept_stream())
            await sender
        assert got == payload
        assert old.is_closed and pool_tasks() == []
        other = await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL)
        new = kwik.get_global_worker_pool()
        assert new is not None and new is not old
        await other.close()
        await session.close()


def _roundtrip_in_fresh_loop() -> tuple[bytes, bool]:
    async def main() -> tuple[bytes, bool]:
        async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, POOL) as listener:
            session = await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL)
            server = await listener.accept()
            stream = await session.open_stream_sync()
            await stream.write(b"loop check")
            await stream.close()
            data = await read_all(await server.accept_stream())
            await session.close()
        return data, kwik.get_global_worker_pool() is None

    return asyncio.run(main())


def test_successive_event_loops() -> None:
    """kwik runs under one asyncio.run after another; no pool survives its loop."""
    for _ in range(3):
        assert _roundtrip_in_fresh_loop() == (b"loop check", True)


def test_pool_from_dead_loop_is_discarded() -> None:
    """A pool whose loop ended without closing its sessions is never reused."""

    async def leave_open() -> kwik.WorkerPool:
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, POOL)
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL)
        pool = kwik.get_global_worker_pool()
        assert pool is not None and session.remote_addr
        return pool  # neither the session nor the listener is ever closed

    stale = asyncio.run(leave_open())
    assert _roundtrip_in_fresh_loop() == (b"loop check", True)
    assert stale.is_closed
    assert _pool._global is None or _pool._global is not stale


def test_under_uvloop() -> None:
    """The same round trip under uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:

        async def main() -> bytes:
            assert "uvloop" in type(asyncio.get_running_loop()).__module__
            async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, POOL) as listener:
                session = await kwik.dial_addr(listener.addr, CLIENT_TLS, POOL)
                server = await listener.accept()
                stream = await session.open_stream_sync()
                await stream.write(b"uvloop" * 1000)
                await stream.close()
                data = await read_all(await server.accept_stream())
                await session.close()
            assert kwik.get_global_worker_pool() is None
            return data

        assert runner.run(main()) == b"uvloop" * 1000


@pytest.mark.parametrize("holders", [1, 5])
async def test_release_is_per_holder(holders: int) -> None:
    """Unit check of the reference count: the pool lives while any holder remains."""
    tokens = [object() for _ in range(holders)]
    pools = {id(_pool.acquire_pool(t)) for t in tokens}
    assert len(pools) == 1
    pool = kwik.get_global_worker_pool()
    assert pool is not None and pool.stats().sessions == holders
    for token in tokens[:-1]:
        _pool.release_pool(pool, token)
        assert kwik.get_global_worker_pool() is pool
    _pool.release_pool(pool, tokens[-1])
    assert kwik.get_global_worker_pool() is None
    await pool.wait_closed()
    assert pool_tasks() == []
