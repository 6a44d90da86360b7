"""The engine seam: choosing an engine, both engines interoperating, the receive bound on each,
certificates both accept, kwik's own UDP I/O and the listener's demultiplexer."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

import kwik
from kwik import _engines
from kwik._demux import encode_version_negotiation, parse_header
from kwik._udp import UdpEndpoint

from .conftest import CERT, KEY, read_all

MIB = 1024 * 1024
HAVE_QH3 = importlib.util.find_spec("qh3") is not None
ENGINES = ["aioquic", "qh3"] if HAVE_QH3 else ["aioquic"]
needs_qh3 = pytest.mark.skipif(not HAVE_QH3, reason="qh3 is not installed: pip install 'kwik[qh3]'")

SERVER_TLS = kwik.TLSConfig(certificate=CERT, private_key=KEY)
CLIENT_TLS = kwik.TLSConfig(cadata=CERT)


# --- choosing an engine ---------------------------------------------------------------------------


def test_engine_default_follows_kwik_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KWIK_ENGINE", raising=False)
    assert kwik.Config().engine == "aioquic"
    if HAVE_QH3:
        monkeypatch.setenv("KWIK_ENGINE", "qh3")
        assert kwik.Config().engine == "qh3"
        assert kwik.Config(engine="aioquic").engine == "aioquic"  # explicit wins


def test_unknown_engine_is_refused_at_config_time() -> None:
    with pytest.raises(kwik.EngineError, match="'quiche'.*'aioquic', 'qh3'"):
        kwik.Config(engine="quiche")


def test_engine_not_installed_is_named_at_config_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine asked for but not installed: the error comes from Config, names the engine
    and how to install it (never at the first packet)."""
    real = importlib.import_module

    def without_qh3(name: str, package: str | None = None) -> object:
        if name.endswith("_engines.qh3"):
            raise ModuleNotFoundError("No module named 'qh3'", name="qh3")
        return real(name, package)

    monkeypatch.setattr(_engines, "_loaded", {})
    monkeypatch.setattr(_engines.importlib, "import_module", without_qh3)
    with pytest.raises(kwik.EngineError) as info:
        kwik.Config(engine="qh3")
    message = str(info.value)
    assert "'qh3'" in message and "kwik[qh3]" in message and "No module named 'qh3'" in message
    assert isinstance(info.value, ImportError)


def test_engine_whose_checks_fail_is_named_at_config_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioquic.quic.connection import QuicConnection

    monkeypatch.setattr(_engines, "_loaded", {})
    monkeypatch.delitem(sys.modules, "kwik._engines.aioquic")
    monkeypatch.delattr(QuicConnection, "_write_stream_limits")
    with pytest.raises(kwik.EngineError, match="'aioquic'.*_write_stream_limits"):
        kwik.Config(engine="aioquic")


def test_doctor_reports_every_engine() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kwik", "doctor"], capture_output=True, check=False
    ).stdout.decode()
    assert "aioquic: QuicConnection._write_stream_limits" in out
    if HAVE_QH3:
        assert "ok    qh3  " in out or "ok    qh3 " in out, out
        assert "qh3: QuicConnection._drain_core" in out
    else:
        assert "qh3" in out and "kwik[qh3]" in out


# --- both engines on the wire ---------------------------------------------------------------------


async def _echo_server(listener: kwik.Listener) -> None:
    async def echo(stream: kwik.Stream) -> None:
        while data := await stream.read():
            await stream.write(data)
        await stream.close()

    async with asyncio.TaskGroup() as tasks:
        async for session in listener:
            stream = await session.accept_stream()
            tasks.create_task(echo(stream))


@needs_qh3
@pytest.mark.parametrize(("client", "server"), [("aioquic", "qh3"), ("qh3", "aioquic")])
async def test_engines_interoperate(client: str, server: str) -> None:
    """A kwik client on one engine and a kwik server on the other: byte-exact both ways."""
    payload = os.urandom(MIB)
    async with asyncio.timeout(30):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, kwik.Config(engine=server))
        serving = asyncio.create_task(_echo_server(listener))
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, kwik.Config(engine=client))
        stream = await session.open_stream_sync()
        writer = asyncio.create_task(stream.write(payload))
        await writer
        await stream.close()
        reply = await read_all(stream)
        assert reply == payload
        assert session.paths[0].rtt is not None
        await session.close()
        await listener.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize("engine", ENGINES)
async def test_self_signed_certificate_is_a_leaf_every_engine_accepts(engine: str) -> None:
    """generate_self_signed_cert makes a CA:FALSE leaf (rustls refuses a CA as a server's
    identity), trusted through cadata, and a name it does not carry is refused."""
    cert = x509.load_pem_x509_certificate(CERT)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    config = kwik.Config(engine=engine, handshake_timeout=5.0)
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        await session.close()
        wrong = kwik.TLSConfig(cadata=CERT, server_name="not-this-host.example")
        with pytest.raises(kwik.HandshakeError):
            await kwik.dial_addr(listener.addr, wrong, config)
        await listener.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_tls_material_from_pem_files(engine: str, tmp_path: Path) -> None:
    """certfile/keyfile and cafile are read as PEM on either engine."""
    (tmp_path / "cert.pem").write_bytes(CERT)
    (tmp_path / "key.pem").write_bytes(KEY)
    server_tls = kwik.TLSConfig(certfile=tmp_path / "cert.pem", keyfile=tmp_path / "key.pem")
    client_tls = kwik.TLSConfig(cafile=tmp_path / "cert.pem")
    config = kwik.Config(engine=engine)
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", server_tls, config)
        session = await kwik.dial_addr(listener.addr, client_tls, config)
        await session.close()
        await listener.close()


# --- the receive bound ----------------------------------------------------------------------------


async def _held_by_a_non_reader(
    engine: str, *, gate: bool = True, v2: bool = False
) -> tuple[int, bool]:
    """A server that never reads, a client writing 8 MiB: the most the server's stack took
    (what the client saw acknowledged) and whether the writer finished. ``v2``: the client
    speaks plain KWIK v2 (no per-stream credit: the server's session budget, 128 KiB here, and
    the transport's receive bound are what stop it)."""
    small = kwik.Config(
        engine=engine,
        worker_pool=False,
        stream_receive_buffer=128 * 1024,
        session_receive_buffer=128 * 1024,
        path_receive_window=256 * 1024,
        max_record_size=256 * 1024 - 8,
    )
    tls = dataclasses.replace(CLIENT_TLS, alpn_protocols=("kwik",)) if v2 else CLIENT_TLS
    async with asyncio.timeout(30):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, small)
        accepted = asyncio.create_task(listener.accept())
        client = await kwik.dial_addr(listener.addr, tls, small)
        stream = await client.open_stream_sync()
        server = await accepted
        if not gate:
            server_path = server._primary
            assert server_path is not None
            server_path.connection._gated = lambda: False  # type: ignore[attr-defined]
        writer = asyncio.create_task(stream.write(os.urandom(8 * MIB)))
        path = client._primary
        assert path is not None
        held = 0
        for _ in range(30):
            await asyncio.sleep(0.05)
            # every byte the server's QUIC acknowledged is held by the server: it reads none
            held = max(held, path.bytes_sent - path.unacked_bytes())
        finished = writer.done()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await client.abort()
        await listener.close()
    return held, finished


@pytest.mark.parametrize("v2", [False, True], ids=["credit", "v2"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_peer_that_never_reads_holds_a_bounded_amount(engine: str, v2: bool) -> None:
    """At most stream_receive_buffer (or, with a KWIK v2 peer, the session budget) + 2 x
    path_receive_window of what a client writes is ever taken by a server that never reads,
    and the writer waits."""
    held, finished = await _held_by_a_non_reader(engine, v2=v2)
    print(f"\n{engine}: a non-reading server took {held} bytes of 8 MiB")
    if v2:
        # no credit: the session budget, the frames that wait (up to a window, the last one
        # may overshoot by a frame) and what the transport holds (a window and a credit step;
        # up to a window more behind qh3's drain gate, which closes between native events)
        transport = 256 * 1024 * 2 if engine == "qh3" else 256 * 1024 * 5 // 4  # + a credit step
        assert held <= 128 * 1024 + 256 * 1024 + 64 * 1024 + transport
    else:
        assert held <= 128 * 1024 + 2 * 256 * 1024
    assert held > 0
    assert not finished


@needs_qh3
async def test_qh3_drain_gate_is_what_bounds_it() -> None:
    """Without kwik's drain gate qh3 takes (nearly) everything offered: the bound above comes
    from the gate."""
    held, _ = await _held_by_a_non_reader("qh3", gate=False, v2=True)
    assert held > 2 * MIB


# --- kwik's UDP I/O -------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, object, int]] = []
        self.errors: list[OSError] = []
        self.arrived = asyncio.Event()

    def udp_received(self, items: list[tuple[bytes, object, int]]) -> None:
        self.items.extend(items)
        self.arrived.set()

    def udp_error(self, exc: OSError) -> None:
        self.errors.append(exc)
        self.arrived.set()

    def datagrams(self) -> list[bytes]:
        out = []
        for data, _, segment in self.items:
            if segment:
                out.extend(data[i : i + segment] for i in range(0, len(data), segment))
            else:
                out.append(data)
        return out


def _pair(
    loop: asyncio.AbstractEventLoop, *, batching: bool
) -> tuple[UdpEndpoint, UdpEndpoint, _Collector]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    collector = _Collector()
    sender = UdpEndpoint(loop, a, _Collector(), connected=True, batching=batching)
    receiver = UdpEndpoint(loop, b, collector, batching=batching)
    return sender, receiver, collector


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "plain"])
async def test_udp_endpoint_sends_and_receives_in_order(batching: bool) -> None:
    """A burst of datagrams (equal sizes then a shorter one, as QUIC sends them) arrives
    complete and in order, batched (GSO/GRO where the kernel has them) or not."""
    loop = asyncio.get_running_loop()
    sender, receiver, collector = _pair(loop, batching=batching)
    burst = [bytes([i]) * 1200 for i in range(40)] + [b"tail" * 10]
    try:
        sender.send(burst, None)
        async with asyncio.timeout(5):
            while len(collector.datagrams()) < len(burst):
                collector.arrived.clear()
                await collector.arrived.wait()
        assert collector.datagrams() == burst
        assert sender.datagrams_sent == len(burst)
        assert receiver.datagrams_received == len(burst)
        if batching and sys.platform.startswith("linux"):
            assert sender.gso and receiver.gro
            # GSO on loopback reaches a GRO socket as a few buffers, not 41 datagrams
            assert len(collector.items) < len(burst)
        else:
            assert len(collector.items) == len(burst)
    finally:
        sender.close()
        receiver.close()


async def test_udp_endpoint_reports_port_unreachable() -> None:
    loop = asyncio.get_running_loop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()
    probe.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(closed_port)
    collector = _Collector()
    endpoint = UdpEndpoint(loop, sock, collector, connected=True)
    try:
        endpoint.send([b"x" * 1200], None)
        async with asyncio.timeout(2):
            await collector.arrived.wait()
        assert isinstance(collector.errors[0], ConnectionRefusedError)
    finally:
        endpoint.close()


# --- the listener's demultiplexer -----------------------------------------------------------------


def test_parse_header() -> None:
    long = bytes([0xC0]) + (1).to_bytes(4, "big") + b"\x04abcd" + b"\x02xy" + b"\x00" * 20
    header = parse_header(long, 8)
    assert header is not None
    assert (header.version, header.is_initial, header.dcid, header.scid) == (
        1,
        True,
        b"abcd",
        b"xy",
    )
    handshake = bytes([0xE0]) + long[1:]
    assert parse_header(handshake, 8).is_initial is False  # type: ignore[union-attr]
    short = bytes([0x40]) + b"12345678" + b"payload"
    header = parse_header(short, 8)
    assert header is not None and header.version is None and header.dcid == b"12345678"
    assert parse_header(b"", 8) is None
    assert parse_header(bytes([0xC0, 0, 0, 0, 1, 30]) + b"x" * 40, 8) is None  # cid too long
    vn = encode_version_negotiation(b"dc", b"sc", (1, 0x6B3343CF))
    header = parse_header(vn, 8)
    assert header is not None and header.version == 0 and not header.is_initial
    assert vn.endswith((1).to_bytes(4, "big") + (0x6B3343CF).to_bytes(4, "big"))


async def test_listener_answers_an_unknown_version_with_version_negotiation() -> None:
    async with await kwik.listen_addr("127.0.0.1:0", SERVER_TLS) as listener:
        host, port = listener.addr.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        try:
            packet = bytes([0xC0]) + b"\x1a\x2a\x3a\x4a" + b"\x08" + b"D" * 8 + b"\x04SCID"
            sock.sendto(packet + b"\x00" * (1200 - len(packet)), (host, int(port)))
            reply = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 2048)
        finally:
            sock.close()
    header = parse_header(reply, 8)
    assert header is not None and header.version == 0
    assert header.dcid == b"SCID" and header.scid == b"D" * 8  # ids swapped back
    engine = _engines.load(kwik.Config().engine)
    versions = {
        int.from_bytes(reply[i : i + 4], "big")
        for i in range(len(reply) - 4 * len(engine.supported_versions), len(reply), 4)
    }
    assert versions == set(engine.supported_versions)


# --- facts the session needs from every engine ----------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_path_reports_pto_rtt_and_send_state(engine: str) -> None:
    """Path.pto includes QUIC's backoff and is never below the base PTO; rttvar is the
    engine's where it has one; send_blocked is False on an idle path."""
    config = kwik.Config(engine=engine)
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        stream = await session.open_stream_sync()
        await stream.write(b"x")
        path = session._primary
        assert path is not None
        assert path.rtt is not None and path.rtt > 0
        assert path.pto >= path.base_pto > 0
        assert (path.rttvar is None) == (engine == "qh3")
        assert path.send_blocked is False
        await session.close()
        await listener.close()


async def test_aioquic_probe_leaves_with_a_full_congestion_window() -> None:
    """On aioquic a liveness probe is sent even when the congestion window is full (a user
    PING alone would wait for room: reliability-turn3.md, root cause 2)."""
    config = kwik.Config(engine="aioquic")
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        session = await kwik.dial_addr(listener.addr, CLIENT_TLS, config)
        path = session._primary
        assert path is not None and path._endpoint is not None
        await asyncio.sleep(0.05)  # the handshake's last acknowledgements settle
        path.transmit()
        loss = path.quic._loss
        loss._cc.congestion_window = loss.bytes_in_flight  # no room at all
        sent = path._endpoint.datagrams_sent
        path.quic.send_ping(999)  # what a plain PING does: it waits
        path.transmit()
        assert path._endpoint.datagrams_sent == sent
        path.send_probe()
        path.transmit()
        assert path._endpoint.datagrams_sent > sent
        loss._cc.congestion_window = 12000
        await session.close()
        await listener.close()


async def test_udp_endpoint_small_receive_size_turns_gro_off() -> None:
    """The allocation meter's mode: small receives and no GRO, and a GSO burst still arrives
    whole (the kernel splits it for a socket without GRO)."""
    loop = asyncio.get_running_loop()
    sender, receiver, collector = _pair(loop, batching=True)
    burst = [bytes([i]) * 1200 for i in range(20)]
    try:
        receiver.set_receive_size(2048)
        assert receiver.gro is False and receiver.recv_size == 2048
        sender.send(burst, None)
        async with asyncio.timeout(5):
            while len(collector.datagrams()) < len(burst):
                collector.arrived.clear()
                await collector.arrived.wait()
        assert collector.datagrams() == burst
        assert all(segment == 0 for _, _, segment in collector.items)
        receiver.set_receive_size(None)
        assert receiver.gro == sys.platform.startswith("linux")
    finally:
        sender.close()
        receiver.close()
