"""End to end over loopback: each defect of the session-core issue, reproduced and held fixed.

Each test names the reproducer in ``shared/repro`` it stands for. The rules themselves are
tested interleaving by interleaving in ``tests/protocol/test_session.py``; these prove the
asyncio wiring over real QUIC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import socket

import pytest

import kwik
from kwik._path import Path
from kwik.protocol import PingFrame, encode_record

from .conftest import CERT, KEY, read_all, wait_until

MIB = 1024 * 1024
SERVER_TLS = kwik.TLSConfig(certificate=CERT, private_key=KEY)
CLIENT_TLS = kwik.TLSConfig(cadata=CERT)


class LoopErrors:
    """Collects what reaches the event loop's exception handler (unretrieved futures,
    exceptions in callbacks): a documented outcome must produce none."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __enter__(self) -> LoopErrors:
        loop = asyncio.get_running_loop()
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, ctx: self.messages.append(str(ctx)))
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().set_exception_handler(self._previous)


def no_error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- r1: a graceful close loses nothing --------------------------------------------------------


@pytest.mark.parametrize("size", [int(1.5 * MIB), int(2.7 * MIB), 12 * MIB])
async def test_slow_reader_gets_everything_after_a_graceful_close(config, size: int) -> None:
    """r1_close_loses_data: the server writes, closes the stream and the session; the client
    starts reading 2 s later and gets every byte, then EOF (records inline and through the
    pool, whose queued records go back to their path when its connection ends)."""
    payload = os.urandom(size)
    cfg = config.replace(close_timeout=30.0)
    async with asyncio.timeout(60):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg)

        async def serve() -> None:
            session = await listener.accept()
            stream = await session.accept_stream()
            assert await stream.readexactly(3) == b"GET"
            await stream.write(payload)
            await stream.close()
            await session.close()  # graceful: delivers what was written first

        server = asyncio.create_task(serve())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg)
        stream = await client.open_stream_sync()
        await stream.write(b"GET")
        await asyncio.sleep(0.5)  # the application is busy elsewhere
        assert await read_all(stream) == payload
        await server
        await client.wait_closed()
        assert client.close_error is not None and client.close_error.code == 0
        await listener.close()


# --- r2: back-pressure never kills a live session ----------------------------------------------


@pytest.mark.parametrize("alpn", [("kwik-credit-1", "kwik"), ("kwik",)], ids=["credit", "v2"])
async def test_a_client_that_does_not_read_keeps_its_session(config, alpn) -> None:
    """r2_heartbeat_kills_slow_reader: 12 heartbeat intervals (4 times the failure bound)
    without reading, while the server's data fills every window; the session survives and
    every byte arrives."""
    # a short bound (0.75 s) that is still longer than the loop's stalls on a loaded CI machine
    cfg = config.replace(heartbeat_interval=0.25, heartbeat_miss_threshold=3)
    payload = os.urandom(6 * MIB)
    tls = dataclasses.replace(CLIENT_TLS, alpn_protocols=alpn)
    async with asyncio.timeout(60):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg)

        async def serve() -> None:
            session = await listener.accept()
            stream = await session.accept_stream()
            await stream.readexactly(1)
            await stream.write(payload)
            await stream.close()

        server = asyncio.create_task(serve())
        client = await kwik.dial_addr(listener.addr, tls, cfg)
        stream = await client.open_stream_sync()
        await stream.write(b"?")
        await wait_until(lambda: stream._state.receiver.buffered >= cfg.stream_receive_buffer)
        pings = client.paths[0].pings_sent
        await wait_until(lambda: client.paths[0].pings_sent >= pings + 12 or client.is_closed)
        assert not client.is_closed, client.close_error
        assert await read_all(stream) == payload
        assert not client.is_closed
        await server
        await client.close()
        await listener.close()


# --- r3: ids are never reused into a live stream -----------------------------------------------


async def test_new_server_stream_never_lands_in_an_old_one(config) -> None:
    """r3_stream_id_reuse: the server retires stream 1 while the client still holds it, then
    opens a new stream: it gets its own stream at the client, never merged into stream 1."""
    async with asyncio.timeout(30):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        done = asyncio.Event()

        async def serve() -> None:
            session = await listener.accept()
            stream = await session.accept_stream()
            assert await read_all(stream) == b"req"
            await stream.write(b"resp")
            await stream.close()
            await asyncio.sleep(0.3)
            pushed = await session.open_stream_sync()
            await pushed.write(b"PUSH")
            await pushed.close()
            done.set()
            await session.wait_closed()

        server = asyncio.create_task(serve())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        stream = await client.open_stream_sync()
        await stream.write(b"req")
        await stream.close()
        await done.wait()  # the client has not read its response yet
        assert await read_all(stream) == b"resp"
        pushed = await asyncio.wait_for(client.accept_stream(), 5)
        assert pushed.stream_id != stream.stream_id
        assert await read_all(pushed) == b"PUSH"
        await client.close()
        await server
        await listener.close()


# --- r12: a refused open surfaces as an error ---------------------------------------------------


async def test_refused_stream_raises_instead_of_hanging(config, caplog) -> None:
    """r12_refused_open_hangs_writer: the server refuses a stream beyond its max_streams; the
    client's write/read/close raise StreamClosedError; nothing is left unretrieved."""
    server_cfg = config.replace(max_streams=1)
    with LoopErrors() as errors:
        async with asyncio.timeout(30):
            listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, server_cfg)
            accepted = asyncio.create_task(listener.accept())
            client = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
            first = await client.open_stream_sync()
            await first.write(b"x")
            refused = await client.open_stream()
            with pytest.raises(kwik.StreamClosedError):
                await refused.write(b"y" * (3 * MIB))  # would wait for the open: it fails
            with pytest.raises(kwik.StreamClosedError):
                await refused.read()
            with pytest.raises(kwik.StreamClosedError):
                await refused.close()
            with pytest.raises(kwik.StreamClosedError):
                await client.open_stream_sync()
            server = await accepted
            assert (await server.accept_stream()).stream_id == first.stream_id
            await client.close()
            await listener.close()
        gc.collect()
        await asyncio.sleep(0.05)
    assert errors.messages == []
    assert no_error_logs(caplog) == []


# --- r11: close() is cancellation-safe; close_with_error() wins --------------------------------


async def test_cancelled_close_still_closes(config) -> None:
    """r11_cancelled_close: close() cancelled while delivering does not leave the session half
    closed: a second close() finishes and wait_closed() returns."""
    cfg = config.replace(close_timeout=5.0)
    async with asyncio.timeout(30):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg)
        hold = asyncio.Event()

        async def serve() -> None:
            session = await listener.accept()
            await session.accept_stream()
            await hold.wait()  # never reads: the client's data stays unacknowledged

        server = asyncio.create_task(serve())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg)
        stream = await client.open_stream_sync()
        writer = asyncio.create_task(stream.write(os.urandom(6 * MIB)))
        await asyncio.sleep(0.3)
        closer = asyncio.create_task(client.close())
        await asyncio.sleep(0.3)
        closer.cancel()
        await asyncio.gather(closer, return_exceptions=True)
        await asyncio.wait_for(client.close_with_error(9, "shutting down"), 10)
        assert client.is_closed
        await asyncio.wait_for(client.wait_closed(), 5)
        await asyncio.gather(writer, return_exceptions=True)
        hold.set()
        await server
        await listener.close()


async def test_close_with_error_during_graceful_close_wins(config) -> None:
    """close_with_error() while a graceful close waits for delivery: the peer sees its code."""
    async with asyncio.timeout(30):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        hold = asyncio.Event()
        server_session: list[kwik.Session] = []

        async def serve() -> None:
            session = await listener.accept()
            server_session.append(session)
            await session.accept_stream()
            await hold.wait()

        server = asyncio.create_task(serve())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        stream = await client.open_stream_sync()
        writer = asyncio.create_task(stream.write(os.urandom(6 * MIB)))
        await asyncio.sleep(0.3)
        graceful = asyncio.create_task(client.close())
        await asyncio.sleep(0.2)
        assert not graceful.done()
        await client.close_with_error(42, "abort")
        await graceful
        assert client.close_error is not None and client.close_error.code == 42
        await asyncio.wait_for(server_session[0].wait_closed(), 10)
        error = server_session[0].close_error
        assert error is not None and error.code == 42 and error.remote
        await asyncio.gather(writer, return_exceptions=True)
        hold.set()
        await server
        await listener.close()


# --- r14: u64 bounds on the send side -----------------------------------------------------------


async def test_write_offsets_beyond_u64_raise_value_error(make_server, client_tls, config) -> None:
    """r14_u64_write_offset: ValueError, never struct.error out of write() or close()."""
    server = await make_server()
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(server.addr, client_tls, config)
        stream = await session.open_stream_sync()
        with pytest.raises(ValueError):
            stream.set_write_offset(2**64)
        stream.set_write_offset(2**64 - 2)
        with pytest.raises(ValueError):
            await stream.write(b"abc")
        await stream.close()  # final offset 2**64-2: encodable
        await session.close()


# --- r16b: a reset transport stream fails the path with a kwik error -----------------------------


def _refuse_writes(path: Path) -> None:
    """Make ``path``'s engine refuse writes on the transport stream as it does once the peer
    sent STOP_SENDING (each engine raises its own error; both are a ValueError/RuntimeError)."""
    connection = path.connection

    def refuse(stream_id: int, data: bytes) -> None:
        raise ValueError("cannot write after RESET_STREAM")

    connection.send_stream_data = refuse  # type: ignore[method-assign]


async def test_transport_stream_reset_fails_the_path(config, caplog) -> None:
    """r16b_sender_reset: STOP_SENDING on the transport stream (aioquic resets our sender):
    write() raises a kwik error, the path is failed with a protocol violation."""
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        accepted = asyncio.create_task(listener.accept())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        server = await accepted
        stream = await client.open_stream_sync()
        path = client._primary
        assert path is not None
        path.connection.stop_stream(0, 1)  # the server will reset its side
        path.transmit()
        # what a STOP_SENDING from the peer does: the engine refuses further writes
        _refuse_writes(path)
        with pytest.raises(kwik.KwikError):
            for _ in range(50):
                await stream.write(b"x" * 1000)
                await asyncio.sleep(0.02)
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.paths[0].state == "failed"
        assert "protocol violation" in client.paths[0].close_reason
        await server.close()
        await listener.close()
    assert no_error_logs(caplog) == []


# --- r17 and the listener's count ---------------------------------------------------------------


async def test_violation_closing_the_last_session_mid_batch_keeps_the_pool_sane() -> None:
    """r17_pool_reentrant_shutdown: a protocol violation closes the pool's last session while a
    worker is mid-batch: no IndexError, no loop error, the pool is gone afterwards."""
    server_cfg = kwik.Config(worker_pool=False)
    client_cfg = kwik.Config(worker_pool=True)
    with LoopErrors() as errors:
        async with asyncio.timeout(20):
            listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, server_cfg)
            accepted = asyncio.create_task(listener.accept())
            client = await kwik.dial_addr(listener.addr, CLIENT_TLS, client_cfg)
            server = await accepted
            pool = kwik.get_global_worker_pool()
            assert pool is not None
            good = [encode_record(1000 + i, [PingFrame()]) for i in range(8)]
            bad = (
                b"\x00\x00\x00\x16\x00\x00\x00\x12\x00"
                + (999).to_bytes(8, "big")
                + (1).to_bytes(8, "big")
                + b"\x77"
            )
            assert server._primary is not None
            server._primary.connection.send_stream_data(0, b"".join(good[:2] + [bad] + good[2:]))
            server._primary.transmit()
            await asyncio.wait_for(client.wait_closed(), 5)
            assert "protocol violation" in (client.close_error.reason if client.close_error else "")
            await pool.wait_closed()
            assert kwik.get_global_worker_pool() is None
            await listener.close()
    assert errors.messages == []


async def test_listener_forgets_a_session_that_fails_on_its_first_record(caplog) -> None:
    """A client whose first record is malformed: the listener's count returns to 0."""
    cfg = kwik.Config(worker_pool=False)
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg)
        client_cfg = kwik.Config(worker_pool=False)
        original = Path.send_records
        garbage = (20).to_bytes(4, "big") + b"\xff" * 20

        def corrupt_first(self: Path, records: list[bytes]) -> None:
            if self.is_client and self.bytes_sent == 0:
                records = [garbage]
            original(self, records)

        Path.send_records = corrupt_first  # type: ignore[method-assign]
        try:
            client = await kwik.dial_addr(listener.addr, CLIENT_TLS, client_cfg)
        finally:
            Path.send_records = original  # type: ignore[method-assign]
        await asyncio.wait_for(client.wait_closed(), 5)
        for _ in range(100):
            if listener.active_session_count() == 0:
                break
            await asyncio.sleep(0.02)
        assert listener.active_session_count() == 0
        await listener.close()


# --- lifecycle ----------------------------------------------------------------------------------


async def test_handshake_timeout_leaves_nothing_unretrieved(caplog) -> None:
    """A handshake timeout raises HandshakeTimeoutError and logs nothing at ERROR (no "Future
    exception was never retrieved")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        with LoopErrors() as errors:
            cfg = kwik.Config(handshake_timeout=0.5)
            with pytest.raises(kwik.HandshakeTimeoutError):
                await kwik.dial_addr(f"127.0.0.1:{sock.getsockname()[1]}", CLIENT_TLS, cfg)
            await asyncio.sleep(1.0)  # aioquic's own timers run out meanwhile
            gc.collect()
            await asyncio.sleep(0.05)
        assert errors.messages == []
        assert no_error_logs(caplog) == []
        assert kwik.get_global_worker_pool() is None
    finally:
        sock.close()


async def test_dial_spends_one_handshake_timeout_in_total(monkeypatch) -> None:
    """Name resolution and the handshake share one handshake_timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def slow_resolve(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(0.7)
        return await resolve(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", slow_resolve)
    try:
        cfg = kwik.Config(handshake_timeout=1.0)
        started = loop.time()
        with pytest.raises(kwik.HandshakeTimeoutError):
            await kwik.dial_addr(f"127.0.0.1:{sock.getsockname()[1]}", CLIENT_TLS, cfg)
        assert loop.time() - started < 1.6  # not 0.7 + 1.0
    finally:
        sock.close()


async def test_pool_is_held_by_sessions_not_listeners() -> None:
    """r15_pool_refcount: an open listener with no session holds no pool."""
    cfg = kwik.Config(worker_pool=True)
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg) as listener:
        assert kwik.get_global_worker_pool() is None
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, cfg)
        server = await listener.accept()
        pool = kwik.get_global_worker_pool()
        assert pool is not None and pool.stats().sessions == 2
        await client.close()
        await server.wait_closed()
        await pool.wait_closed()
        assert kwik.get_global_worker_pool() is None


def test_a_changed_aioquic_internal_is_named(monkeypatch) -> None:
    """Every aioquic private name kwik relies on is checked; a missing one is named."""
    from aioquic.quic.connection import QuicConnection

    from kwik._engines import aioquic as engine

    engine.check_hooks()
    monkeypatch.delattr(QuicConnection, "_write_stream_limits")
    with pytest.raises(engine.AioquicHookError, match="_write_stream_limits"):
        engine.check_hooks()
    assert issubclass(engine.AioquicHookError, kwik.EngineError)


def test_a_changed_qh3_internal_is_named(monkeypatch) -> None:
    """Every qh3 private name kwik relies on is checked; a missing one is named."""
    pytest.importorskip("qh3", reason="qh3 is not installed (pip install 'kwik[qh3]')")
    from qh3.quic.connection import QuicConnection

    from kwik._engines import qh3 as engine

    engine.check_hooks()
    monkeypatch.delattr(QuicConnection, "_drain_core")
    with pytest.raises(engine.Qh3HookError, match="_drain_core"):
        engine.check_hooks()


async def test_credit_hook_bounds_what_a_non_reading_receiver_holds(config) -> None:
    """The credit hook is what bounds memory: a server that never reads, a client writing as
    fast as it can; the server holds at most its stream window plus its path's credit."""
    small = config.replace(
        stream_receive_buffer=128 * 1024,
        path_receive_window=256 * 1024,
        max_record_size=256 * 1024 - 8,
    )
    async with asyncio.timeout(30):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, small)
        accepted = asyncio.create_task(listener.accept())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, small)
        stream = await client.open_stream_sync()
        writer = asyncio.create_task(stream.write(os.urandom(8 * MIB)))
        server = await accepted
        samples = []
        for _ in range(10):
            await asyncio.sleep(0.1)
            path = server._primary
            assert path is not None
            # what the peer could send beyond what the reader took is bounded by QUIC credit:
            # measured through kwik's own counters, on either engine
            samples.append(server.statistics().receive_buffered + path.records_buffered)
        bound = small.stream_receive_buffer + 2 * small.path_receive_window
        assert max(samples) <= bound
        assert not writer.done()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await client.abort()
        await listener.close()


# --- r6: relay data awaiting a secondary's confirmation is bounded ------------------------------


class _SilentKwikServer:
    """A raw aioquic server speaking no KWIK at all: it completes handshakes and acknowledges
    (QUIC does), but never answers an OpenStream."""

    @staticmethod
    async def start() -> tuple[object, str]:
        from aioquic.asyncio import serve
        from aioquic.quic.configuration import QuicConfiguration
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        configuration = QuicConfiguration(is_client=False, alpn_protocols=["kwik"])
        configuration.certificate = x509.load_pem_x509_certificate(CERT)
        configuration.private_key = serialization.load_pem_private_key(KEY, None)  # type: ignore[assignment]
        held: list[object] = []  # keep each stream's reader/writer: dropping them sends a FIN
        server = await serve(
            "127.0.0.1",
            0,
            configuration=configuration,
            stream_handler=lambda reader, writer: held.append((reader, writer)),
        )
        port = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("alpn", [("kwik-credit-1", "kwik"), ("kwik",)], ids=["credit", "v2"])
async def test_relay_data_for_an_unconfirmed_stream_is_bounded(config, alpn) -> None:
    """r6_relay_pending_unbounded: a primary relays 20 MB for a stream the secondary never
    confirms. The client holds at most relay_buffer of it; the primary's send_raw_data waits
    instead of returning (on any machine: the condition is waited for, not slept on), and the
    session stays up."""
    # close_timeout: the client's close gives up on what it cannot forward after 1 s
    cfg = config.replace(relay_buffer=256 * 1024, close_timeout=1.0)
    silent, silent_addr = await _SilentKwikServer.start()
    tls = dataclasses.replace(CLIENT_TLS, alpn_protocols=alpn)
    try:
        async with asyncio.timeout(30):
            listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg)
            accepted = asyncio.create_task(listener.accept())
            client = await kwik.dial_addr(listener.addr, tls, cfg)
            primary = await accepted
            relay = await primary.add_relay(silent_addr)
            sender = asyncio.create_task(relay.send_raw_data(b"r" * 20_000_000, 9))
            await wait_until(lambda: client._core.relay_backlog(relay.path_id) >= cfg.relay_buffer)
            assert not sender.done()  # back-pressure reached the primary
            assert client._core.relay_backlog(relay.path_id) <= cfg.relay_buffer + 64 * 1024
            buffered = primary._core.relay_buffered(relay.path_id)
            assert buffered is not None and buffered > cfg.stream_send_buffer
            assert not client.is_closed and not primary.is_closed
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await client.close()
            await listener.close()
    finally:
        silent.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("alpn", [("kwik-credit-1", "kwik"), ("kwik",)], ids=["credit", "v2"])
async def test_a_path_kwik_fails_itself_delivers_what_had_arrived(config, alpn) -> None:
    """r3-2: the peer goes silent (no CONNECTION_CLOSE: power loss, a dead network) after
    writing 2.5 MB and a FIN; the client's application was slow. kwik fails the path on its
    liveness bound, and the reader still gets every byte that had reached the client (records
    in the path's reader, backlog and pool queue), then the error."""
    payload = bytes(range(256)) * 10_000
    cfg = config.replace(heartbeat_interval=0.5, heartbeat_miss_threshold=3)
    tls = dataclasses.replace(CLIENT_TLS, alpn_protocols=alpn)
    async with asyncio.timeout(60):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, cfg)
        served: list[kwik.Stream] = []

        async def serve() -> None:
            session = await listener.accept()
            stream = await session.accept_stream()
            served.append(stream)
            await stream.readexactly(1)
            await stream.write(payload)
            await stream.close()

        server = asyncio.create_task(serve())
        client = await kwik.dial_addr(listener.addr, tls, cfg)
        stream = await client.open_stream_sync()
        await stream.write(b"?")
        path = client._primary
        assert path is not None
        await wait_until(lambda: bool(served))
        sender = served[0]._state.sender

        def everything_sendable_arrived() -> bool:
            # all of it (KWIK v2), or up to the stream's credit (the extension), handed to QUIC,
            # acknowledged, and every byte of it in the client's transport; the application
            # has read nothing
            sp = served[0]._session._primary
            return (
                sender.bytes_written == len(payload)
                and not sender.sendable
                and (sender.done or alpn != ("kwik",))  # v2: the FIN went too
                and sp is not None
                and sp.unacked_bytes() == 0
                and sp.bytes_sent == path.bytes_received
            )

        await wait_until(everything_sendable_arrived)
        expected = sender.bytes_written - sender.buffered  # the payload bytes that went
        assert expected >= (len(payload) if alpn == ("kwik",) else cfg.stream_receive_buffer)
        held = path.records_buffered
        assert path._endpoint is not None
        path._endpoint.pause_reading()  # the peer is gone: not one more datagram
        await wait_until(lambda: client.is_closed)
        assert "no echo" in client.close_error.reason or "silent" in client.close_error.reason
        got = bytearray()
        with pytest.raises(kwik.SessionClosedError) if expected < len(payload) else _no_error():
            while data := await stream.read():
                got += data
        assert bytes(got) == payload[: len(got)]
        assert len(got) >= expected  # every byte that had arrived, none lost
        assert held or len(got) == expected
        server.cancel()  # with credit its writer still waits for the dead client
        await asyncio.gather(server, return_exceptions=True)
        await client.close()
        await listener.close()


class _no_error:
    """A context manager that expects nothing to be raised (the read ends at EOF)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


async def test_no_timer_spins_after_the_peer_finishes_the_transport_stream(config) -> None:
    """r3-13: the client finishes the transport stream (QUIC FIN) while the server owes an Ack;
    the server's path is over at once for its session, whose timer does not fire again and
    again during the QUIC draining period (it fired ~100,000 times a second)."""
    server_cfg = config.replace(ack_interval=0.02)  # the Ack falls due inside the draining
    listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, server_cfg)
    async with asyncio.timeout(30):
        accepted = asyncio.create_task(listener.accept())
        client = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        server = await accepted
        fired = 0
        original = server._on_timer

        def counting() -> None:
            nonlocal fired
            fired += 1
            original()

        server._on_timer = counting  # type: ignore[method-assign]
        path = client._primary
        assert path is not None
        core_path = client._core._paths[path.path_id]
        records = [core_path.encode([PingFrame()]) for _ in range(3)]  # an Ack is now owed
        path.send_records(records)
        path.connection.raw.send_stream_data(0, b"", end_stream=True)
        path.transmit()
        await wait_until(lambda: server.is_closed)
        started = asyncio.get_running_loop().time()
        served = server._ended_paths[0] if server._ended_paths else None
        await wait_until(lambda: served is None or served.terminated, 10.0)
        drained = asyncio.get_running_loop().time() - started
        assert fired <= 3 + drained / server_cfg.ack_interval, f"{fired} firings in {drained} s"
        await client.abort()
    await listener.close()
