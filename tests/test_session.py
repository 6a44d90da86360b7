"""End-to-end tests of sessions and streams over loopback (client and server in one loop)."""

from __future__ import annotations

import asyncio
import os

import pytest

import kwik
from kwik._path import Path
from kwik.protocol import OpenStreamFrame, StreamFrame, encode_record

from .conftest import CERT, KEY, Server, read_all, wait_until

MIB = 1024 * 1024


async def dial(server: Server, tls: kwik.TLSConfig, config: kwik.Config) -> kwik.Session:
    return await kwik.dial_addr(server.addr, tls, config)


async def test_echo_one_mib(make_server, client_tls, config) -> None:
    """1 MiB written on one stream comes back byte-exact, then EOF."""
    server = await make_server()
    payload = os.urandom(MIB)
    async with asyncio.timeout(30):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream_sync()

        async def send() -> None:
            await stream.write(payload)
            await stream.close()

        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            echoed = group.create_task(read_all(stream))
        assert echoed.result() == payload
        stats = session.statistics()
        assert stats.paths[0].bytes_received > MIB
        assert stats.paths[0].acks_sent > 0
        await session.close()


async def test_twenty_concurrent_streams_both_directions(make_server, client_tls, config) -> None:
    """20 client-opened streams echo concurrently without mixing bytes."""
    server = await make_server()
    async with asyncio.timeout(30):
        session = await dial(server, client_tls, config)

        async def one(i: int) -> tuple[bytes, bytes]:
            stream = await session.open_stream_sync()
            payload = bytes([i]) * (20_000 + i * 997)
            await stream.write(payload)
            await stream.close()
            return payload, await read_all(stream)

        results = await asyncio.gather(*(one(i) for i in range(20)))
        for sent, received in results:
            assert received == sent
        await session.close()


async def test_server_opened_streams(make_server, client_tls, config) -> None:
    """Streams opened by the server reach the client's accept_stream, both ways."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        client = await dial(server, client_tls, config)
        await server.session_arrived.wait()
        server_session = server.sessions[0]

        async def server_side() -> bytes:
            streams = [await server_session.open_stream_sync() for _ in range(3)]
            for i, s in enumerate(streams):
                await s.write(f"from server {i}".encode())
                await s.close()
            return b"|".join([await read_all(s) for s in streams])

        async def client_side() -> list[int]:
            ids = []
            for _ in range(3):
                s = await client.accept_stream()
                ids.append(s.stream_id)
                data = await read_all(s)
                await s.write(data.upper())
                await s.close()
            return ids

        async with asyncio.TaskGroup() as group:
            srv = group.create_task(server_side())
            cli = group.create_task(client_side())
        assert srv.result() == b"FROM SERVER 0|FROM SERVER 1|FROM SERVER 2"
        assert cli.result() == [1, 2, 3]
        await client.close()


async def test_eof_both_ways(make_server, client_tls, config) -> None:
    """Each side's close() is a FIN: the other reads b"" and can still write back."""
    received: list[bytes] = []

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        received.append(await read_all(stream))
        assert await stream.read() == b""  # EOF stays EOF
        await stream.write(b"bye")
        await stream.close()

    server = await make_server(handler)
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"hello")
        await stream.close()
        with pytest.raises(kwik.StreamClosedError):
            await stream.write(b"more")
        assert await read_all(stream) == b"bye"
        assert await stream.read() == b""
        assert received == [b"hello"]
        with pytest.raises(asyncio.IncompleteReadError):
            await stream.readexactly(1)
        await session.close()


async def test_readexactly(make_server, client_tls, config) -> None:
    """readexactly gathers exactly n bytes across frames."""
    server = await make_server()
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(b"a" * 70_000 + b"b" * 10)
        assert await stream.readexactly(70_000) == b"a" * 70_000
        assert await stream.readexactly(10) == b"b" * 10
        await session.close()


async def test_read_pending_when_peer_closes_session(make_server, client_tls, config) -> None:
    """A read waiting when the peer closes with an error raises SessionClosedError with its
    code and reason, marked remote; later calls raise too."""

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(4)
        await session.close_with_error(42, "enough")

    server = await make_server(handler)
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream_sync()
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0.05)
        await stream.write(b"ping")
        with pytest.raises(kwik.SessionClosedError) as info:
            await reader
        assert info.value.code == 42
        assert info.value.reason == "enough"
        assert info.value.remote is True
        assert isinstance(info.value, ConnectionError)
        with pytest.raises(kwik.SessionClosedError):
            await session.open_stream_sync()
        with pytest.raises(kwik.SessionClosedError):
            await stream.write(b"x")
        with pytest.raises(kwik.SessionClosedError):
            await session.accept_stream()
        await session.wait_closed()
        await session.close()  # idempotent


async def test_local_close_wakes_pending_calls(make_server, client_tls, config) -> None:
    """close() wakes a pending accept_stream and read with a local SessionClosedError."""
    server = await make_server()
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream_sync()
        reader = asyncio.create_task(stream.read())
        acceptor = asyncio.create_task(session.accept_stream())
        await asyncio.sleep(0.05)
        await session.close()
        for task in (reader, acceptor):
            with pytest.raises(kwik.SessionClosedError) as info:
                await task
            assert info.value.code == 0
            assert info.value.remote is False


async def test_close_delivers_written_data(make_server, client_tls, config) -> None:
    """close() right after a large write still delivers every byte (graceful close)."""
    done = asyncio.Event()
    got: list[bytes] = []

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        got.append(await read_all(stream))
        done.set()

    server = await make_server(handler)
    payload = os.urandom(2 * MIB)
    async with asyncio.timeout(30):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream_sync()
        await stream.write(payload)
        await stream.close()
        await session.close()
        await done.wait()
    assert got == [payload]


async def test_data_before_accept_is_kept(make_server, client_tls, config) -> None:
    """Bytes that arrive before the application accepts the stream are not lost."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        streams = []
        for i in range(3):
            s = await session.open_stream_sync()
            await s.write(f"early {i}".encode())
            await s.close()
            streams.append(s)
        await server.session_arrived.wait()
        server_session = server.sessions[0]
        await asyncio.sleep(0.2)  # everything arrives before anyone accepts
        for i in range(3):
            accepted = await server_session.accept_stream()
            assert accepted.stream_id == streams[i].stream_id
            assert await read_all(accepted) == f"early {i}".encode()
        await session.close()


async def test_open_stream_returns_at_once_and_sends_after_confirmation(
    make_server, client_tls, config
) -> None:
    """open_stream() does not wait; what is written before the peer confirms is delivered."""
    server = await make_server()
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        stream = await session.open_stream()
        assert not stream.is_open
        await stream.write(b"written before confirmation")
        await stream.close()
        assert await read_all(stream) == b"written before confirmation"
        await session.close()


async def test_write_waits_while_send_buffer_full(make_server, client_tls, config) -> None:
    """write() blocks while the stream's send buffer is over its limit, and every byte
    still arrives."""
    release = asyncio.Event()
    got: list[bytes] = []

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await release.wait()
        got.append(await read_all(stream))

    small = config.replace(
        stream_send_buffer=64 * 1024,
        stream_receive_buffer=64 * 1024,
        path_send_window=128 * 1024,
        path_receive_window=128 * 1024,
        max_record_size=128 * 1024 - 8,
    )
    server = await make_server(handler, small)
    payload = os.urandom(3 * MIB)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, small)
        stream = await session.open_stream_sync()
        writer = asyncio.create_task(stream.write(payload))
        # the receiver's window is full: the writer is stopped, the rest stays with it
        await wait_until(lambda: stream._state.sender.credit == small.stream_receive_buffer)
        await wait_until(lambda: stream._state.sender.buffered == len(payload) - 64 * 1024)
        assert not writer.done(), "write must wait while the peer does not read"
        path = session._primary
        assert path is not None and path.unacked_bytes() <= small.path_send_window + 70_000
        release.set()
        await writer
        await stream.close()
        await session.close()
        await wait_until(lambda: bool(got))
    assert got == [payload]


async def test_receiver_that_does_not_read_bounds_memory(make_server, client_tls, config) -> None:
    """A stream nobody reads holds at most its window; its writer waits, its path does not
    stop (another stream goes on), and reading later gets every byte."""
    streams: list[kwik.Stream] = []

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        streams.append(stream)
        if len(streams) == 2:
            await stream.write(await read_all(stream))  # the second stream is an echo
            await stream.close()

    small = config.replace(
        stream_receive_buffer=128 * 1024,
        path_receive_window=256 * 1024,
        max_record_size=256 * 1024 - 8,
        stream_send_buffer=256 * 1024,
        path_send_window=256 * 1024,
    )
    server = await make_server(handler, small)
    payload = os.urandom(3 * MIB)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, small)
        stream = await session.open_stream_sync()
        writer = asyncio.create_task(stream.write(payload))
        await wait_until(lambda: len(streams) == 1)
        server_stream = streams[0]
        state = server_stream._state
        await wait_until(lambda: state.receiver.buffered == small.stream_receive_buffer)
        assert not writer.done()
        # the path goes on: a second stream is echoed while the first waits
        other = await session.open_stream_sync()
        echo = os.urandom(MIB)
        await other.write(echo)
        await other.close()
        assert await read_all(other) == echo
        assert state.receiver.buffered <= small.stream_receive_buffer  # never more than its window
        reader = asyncio.create_task(read_all(server_stream))
        await writer
        await stream.close()
        assert await reader == payload
        await session.close()


async def test_dial_closed_port_fails_fast(client_tls) -> None:
    """Dialing a port nobody listens on: the ICMP port unreachable ends the dial within 1 s
    with a HandshakeError that says so (not a 10 s timeout)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5):
        with pytest.raises(kwik.HandshakeError, match="port unreachable") as info:
            await kwik.dial_addr(f"127.0.0.1:{port}", client_tls, kwik.Config())
    assert loop.time() - started < 1.0
    assert isinstance(info.value, ConnectionError)
    assert not isinstance(info.value, kwik.HandshakeTimeoutError)


async def test_dial_silent_port_times_out(client_tls) -> None:
    """A port where something is bound but never answers fails within handshake_timeout with
    HandshakeTimeoutError, never hangs."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        # the bound is the test: a dial that hangs instead of failing hits this timeout
        async with asyncio.timeout(10):
            with pytest.raises(kwik.HandshakeTimeoutError) as info:
                await kwik.dial_addr(
                    f"127.0.0.1:{port}", client_tls, kwik.Config(handshake_timeout=1.0)
                )
    finally:
        sock.close()
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, kwik.KwikError)


async def test_self_signed_server_refused_by_default_client(make_server, config) -> None:
    """A default client (system trust store) refuses a self-signed server with HandshakeError;
    the same client trusting that CA gets in; insecure_skip_verify also gets in."""
    server = await make_server()
    async with asyncio.timeout(20):
        with pytest.raises(kwik.HandshakeError) as info:
            await kwik.dial_addr(server.addr, None, config)
        assert isinstance(info.value, ConnectionError)
        session = await kwik.dial_addr(server.addr, kwik.TLSConfig(cadata=CERT), config)
        await session.close()
        session = await kwik.dial_addr(
            server.addr, kwik.TLSConfig(insecure_skip_verify=True), config
        )
        await session.close()


async def test_certificate_for_wrong_name_refused(server_tls, config) -> None:
    """A certificate that does not name the dialed host is refused even with its CA trusted."""
    other_cert, other_key = kwik.generate_self_signed_cert(["not-this-host.example"])
    listener = await kwik.listen_addr(
        "127.0.0.1:0", kwik.TLSConfig(certificate=other_cert, private_key=other_key), config
    )
    async with listener, asyncio.timeout(20):
        with pytest.raises(kwik.HandshakeError):
            await kwik.dial_addr(listener.addr, kwik.TLSConfig(cadata=other_cert), config)


async def test_tls_from_files(tmp_path, config) -> None:
    """certfile/keyfile and cafile work like the PEM-bytes options."""
    (tmp_path / "cert.pem").write_bytes(CERT)
    (tmp_path / "key.pem").write_bytes(KEY)
    listener = await kwik.listen_addr(
        "127.0.0.1:0",
        kwik.TLSConfig(certfile=tmp_path / "cert.pem", keyfile=tmp_path / "key.pem"),
        config,
    )
    async with listener, asyncio.timeout(20):
        session = await kwik.dial_addr(
            listener.addr, kwik.TLSConfig(cafile=tmp_path / "cert.pem"), config
        )
        accepted = await listener.accept()
        assert accepted.remote_addr == session.local_addr.replace("0.0.0.0", "127.0.0.1")
        await session.close()


async def test_listener_close_with_sessions_open(make_server, client_tls, config) -> None:
    """Listener.close() closes open sessions with code 0 and counts them down to zero."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        sessions = [await dial(server, client_tls, config) for _ in range(3)]
        for s in sessions:
            await s.open_stream()
        while server.listener.active_session_count() < 3:
            await asyncio.sleep(0.02)
        await server.listener.close()
        assert server.listener.active_session_count() == 0
        for s in sessions:
            await s.wait_closed()
            with pytest.raises(kwik.SessionClosedError) as info:
                await s.open_stream()
            assert info.value.code == 0
            assert info.value.remote is True
        with pytest.raises(kwik.ListenerClosedError):
            await server.listener.accept()


async def test_listener_context_manager_and_async_for(server_tls, client_tls, config) -> None:
    """async with closes the listener; async for ends when it closes."""
    accepted: list[kwik.Session] = []
    async with asyncio.timeout(20):
        async with await kwik.listen_addr("127.0.0.1:0", server_tls, config) as listener:

            async def loop() -> None:
                async for session in listener:
                    accepted.append(session)

            task = asyncio.create_task(loop())
            client = await kwik.dial_addr(listener.addr, client_tls, config)
            while not accepted:
                await asyncio.sleep(0.01)
        await task  # ends by itself once the listener is closed
        assert listener.is_closed
        await client.wait_closed()
    assert len(accepted) == 1


async def test_session_context_manager(make_server, client_tls, config) -> None:
    """async with session closes it on exit."""
    server = await make_server()
    async with asyncio.timeout(20):
        async with await dial(server, client_tls, config) as session:
            stream = await session.open_stream_sync()
            await stream.write(b"x")
            assert await stream.readexactly(1) == b"x"
        assert session.is_closed


async def test_first_record_creates_server_session(make_server, client_tls, config) -> None:
    """The dialer's first record (a Ping) is enough for the server to accept the session,
    and the server echoes it (the heartbeat's pong)."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        await server.session_arrived.wait()
        info = session.paths[0]
        for _ in range(100):
            info = session.paths[0]
            if info.pongs_received:
                break
            await asyncio.sleep(0.02)
        assert info.pongs_received >= 1
        assert info.heartbeat_rtt is not None
        assert info.is_primary and info.path_id == 1 and info.state == "active"
        await session.close()


async def test_duplicate_packet_dispatched_once(make_server, client_tls, config) -> None:
    """A packet number seen twice on a path is dispatched once (no second stream)."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        path = session._primary
        assert path is not None
        core_path = session._core._paths[path.path_id]
        number = core_path.next_packet_number
        record = encode_record(number, [OpenStreamFrame(7), StreamFrame(7, 0, True, b"once")])
        core_path.next_packet_number += 1
        path.send_records([record, record])  # the same packet number twice
        path.transmit()
        await server.session_arrived.wait()
        server_session = server.sessions[0]
        stream = await server_session.accept_stream()
        assert stream.stream_id == 7
        assert await read_all(stream) == b"once"
        await asyncio.sleep(0.2)
        assert server_session._core.streams_pending_accept == 0
        assert server_session.paths[0].duplicates_received == 1
        await session.close()


async def test_malformed_record_closes_only_that_path(make_server, client_tls, config) -> None:
    """Garbage on one session's transport stream closes that session with a protocol error
    (code 1); another session of the same listener carries on."""
    server = await make_server()
    async with asyncio.timeout(20):
        healthy = await dial(server, client_tls, config)
        victim = await dial(server, client_tls, config)
        path = victim._primary
        assert path is not None
        bad = b"\x00\x00\x00\x0c\x00\x00\x00\x08" + b"\x07" * 8  # header type 7: invalid
        path.connection.send_stream_data(0, bad)
        path.transmit()
        await victim.wait_closed()
        with pytest.raises(kwik.SessionClosedError) as info:
            await victim.open_stream()
        assert info.value.code == 1
        assert "protocol violation" in info.value.reason
        assert info.value.remote is True
        stream = await healthy.open_stream_sync()
        await stream.write(b"still fine")
        await stream.close()
        assert await read_all(stream) == b"still fine"
        await healthy.close()


async def test_oversized_record_closes_path(make_server, client_tls, config) -> None:
    """A record over max_record_size closes the path with a protocol violation."""
    server = await make_server(cfg=config.replace(max_record_size=100_000))
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        path = session._primary
        assert path is not None
        path.connection.send_stream_data(0, (200_000).to_bytes(4, "big") + b"\x00" * 64)
        path.transmit()
        await session.wait_closed()
        with pytest.raises(kwik.SessionClosedError) as info:
            await session.open_stream()
        assert "exceeds" in info.value.reason


async def test_stream_id_collision(make_server, client_tls, config) -> None:
    """Both sides open stream 1 at once: the server keeps 1, the client's stream moves to
    another id, and no byte lands in the wrong stream."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        client = await dial(server, client_tls, config)
        await server.session_arrived.wait()
        server_session = server.sessions[0]
        client_stream, server_stream = await asyncio.gather(
            client.open_stream_sync(), server_session.open_stream_sync()
        )
        assert server_stream.stream_id == 1
        assert client_stream.stream_id != 1 or server_stream.stream_id != 1
        await client_stream.write(b"from client")
        await client_stream.close()
        await server_stream.write(b"from server")
        await server_stream.close()
        on_server = await server_session.accept_stream()
        on_client = await client.accept_stream()
        assert on_server.stream_id == client_stream.stream_id
        assert on_client.stream_id == server_stream.stream_id
        assert await read_all(on_server) == b"from client"
        assert await read_all(on_client) == b"from server"
        await client.close()


async def test_qlog_dir_writes_files(server_tls, client_tls, tmp_path) -> None:
    """Config.qlog_dir makes the engine write a qlog file per connection: a JSON trace of
    transport events (client and server, in one process, share the file name: the original
    destination connection id)."""
    config = kwik.Config(qlog_dir=tmp_path / "qlog", worker_pool=False)
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", server_tls, config)
        async with listener:
            session = await kwik.dial_addr(listener.addr, client_tls, config)
            await session.close()
    files = list((tmp_path / "qlog").glob("*.qlog"))
    assert files, "no qlog written"
    import json

    trace = json.loads(files[0].read_bytes())
    assert trace["traces"][0]["events"], "an empty qlog trace"
    assert b"transport" in files[0].read_bytes()


async def test_silent_server_fails_the_path(make_server, client_tls, config, monkeypatch) -> None:
    """A server that goes silent (it neither receives nor sends: killed, unplugged) makes the
    client fail the path within heartbeat_interval * heartbeat_miss_threshold; with its only
    path gone the session closes."""
    fast = config.replace(heartbeat_interval=0.2, heartbeat_miss_threshold=3)
    server = await make_server(handler=None)
    silent = False
    transmit = Path.transmit

    def mute(self: Path) -> None:
        if silent and not self.is_client:
            return
        transmit(self)

    monkeypatch.setattr(Path, "transmit", mute)
    async with asyncio.timeout(20):
        session = await kwik.dial_addr(server.addr, client_tls, fast)
        await server.session_arrived.wait()
        silent = True
        started = asyncio.get_running_loop().time()
        await session.wait_closed()
        elapsed = asyncio.get_running_loop().time() - started
        info = session.paths[0]
        assert info.state == "failed"
        assert "silent" in (info.close_reason or "")
        assert info.packets_received > 0  # its counters outlive it
        # bound: 0.6 s of silence (+ the time the last datagram took); generous for CI
        assert elapsed < 5.0
        with pytest.raises(kwik.SessionClosedError) as exc:
            await session.open_stream()
        assert "silent" in exc.value.reason


async def test_cancel_read_unblocks_a_v2_path(make_server, client_tls, config) -> None:
    """KWIK v2 (no credit): a stream nobody reads spends the session budget and its path
    stops; cancel_read() discards it, the path goes on, later reads raise StreamClosedError."""

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        request = await stream.readexactly(1)
        if request == b"B":  # big answer
            await stream.write(os.urandom(2 * MIB))
        else:
            await stream.write(b"small answer")
        await stream.close()

    small = config.replace(
        session_receive_buffer=128 * 1024,
        path_receive_window=128 * 1024,
        max_record_size=128 * 1024 - 8,
    )
    server = await make_server(handler, small)
    v2 = kwik.TLSConfig(cadata=CERT, alpn_protocols=("kwik",))
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, v2, small)
        big = await session.open_stream_sync()
        await big.write(b"B")
        path = session._primary
        assert path is not None and not session.paths[0].credit_extension
        await wait_until(lambda: path.is_blocked)  # nobody reads the big answer
        big.cancel_read()
        with pytest.raises(kwik.StreamClosedError):
            await big.read()
        other = await session.open_stream_sync()
        await other.write(b"S")
        await other.close()
        assert await read_all(other) == b"small answer"
        assert not path.is_blocked
        assert big._state.receiver.buffered == 0
        await session.close()


async def test_cancel_read_lets_the_writer_finish(make_server, client_tls, config) -> None:
    """With credit, an unread stream stops only its writer; cancel_read() lets the writer
    finish (what it sends is dropped on arrival), so the stream ends on both sides."""
    finished = asyncio.Event()

    async def handler(session: kwik.Session, stream: kwik.Stream) -> None:
        await stream.readexactly(1)
        await stream.write(os.urandom(4 * MIB))
        await stream.close()
        finished.set()

    small = config.replace(stream_receive_buffer=64 * 1024)
    server = await make_server(handler, small)
    async with asyncio.timeout(30):
        session = await kwik.dial_addr(server.addr, client_tls, small)
        big = await session.open_stream_sync()
        await big.write(b"B")
        await big.close()
        state = big._state
        await wait_until(lambda: state.receiver.buffered == small.stream_receive_buffer)
        assert not finished.is_set()
        big.cancel_read()
        await finished.wait()
        await wait_until(lambda: session.statistics().open_streams == 0)
        assert server.sessions[0].statistics().open_streams == 0
        await session.close()


async def test_concurrent_accept_stream_calls(make_server, client_tls, config) -> None:
    """Several coroutines may wait in accept_stream() at once; each gets a distinct stream."""
    server = await make_server(handler=None)
    async with asyncio.timeout(20):
        session = await dial(server, client_tls, config)
        await server.session_arrived.wait()
        server_session = server.sessions[0]
        acceptors = [asyncio.create_task(server_session.accept_stream()) for _ in range(4)]
        await asyncio.sleep(0.05)
        opened = [await session.open_stream_sync() for _ in range(4)]
        accepted = await asyncio.gather(*acceptors)
        assert sorted(s.stream_id for s in accepted) == sorted(s.stream_id for s in opened)
        await session.close()


async def test_concurrent_listener_accept_calls(server_tls, client_tls, config) -> None:
    """Several coroutines may wait in Listener.accept() at once; close() wakes the rest."""
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", server_tls, config)
        acceptors = [asyncio.create_task(listener.accept()) for _ in range(3)]
        await asyncio.sleep(0.05)
        clients = [await kwik.dial_addr(listener.addr, client_tls, config) for _ in range(2)]
        while sum(task.done() for task in acceptors) < 2:
            await asyncio.sleep(0.02)
        await listener.close()
        results = await asyncio.gather(*acceptors, return_exceptions=True)
        sessions = [r for r in results if isinstance(r, kwik.Session)]
        assert len(sessions) == 2
        assert [type(r) for r in results if not isinstance(r, kwik.Session)] == [
            kwik.ListenerClosedError
        ]
        for client in clients:
            await client.wait_closed()
