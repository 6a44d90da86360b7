"""Dialing: one QUIC connection (a path) to a server, and :func:`dial_addr`."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from . import _engines
from ._addr import parse_address
from ._path import Path, PortUnreachableError
from ._udp import UdpEndpoint
from .config import Config, TLSConfig
from .exceptions import HandshakeError, HandshakeTimeoutError, KwikError
from .session import Session
from .tls import TLSMaterial, load_tls_material

__all__ = ["connect_path", "dial_addr"]

logger = logging.getLogger("kwik.client")


async def connect_path(
    address: str,
    tls: TLSConfig,
    config: Config,
    *,
    on_handshake: Callable[[Path], None] | None = None,
    resolved: tuple[socket.AddressFamily, tuple[Any, ...]] | None = None,
) -> Path:
    """Open one QUIC connection to ``address`` and complete its handshake.

    Resolution and handshake share one ``config.handshake_timeout``. ``on_handshake`` is
    called with the path when the handshake completes, before aioquic sends its last flight,
    so that a record written then leaves with it. ``resolved`` (family, socket address) dials
    that address instead of resolving the host again (a relay address already checked); the
    certificate is still verified against the host of ``address``. The returned path owns its
    UDP socket.

    Raises:
        ValueError: ``address`` is not "host:port".
        HandshakeTimeoutError: no handshake within ``config.handshake_timeout``.
        HandshakeError: the peer refused (bad certificate, ALPN, ...) or the name does not
            resolve.
    """
    host, port = parse_address(address)
    if port == 0 and resolved is None:
        raise ValueError(f"invalid address {address!r}: port 0 cannot be dialed")
    material = load_tls_material(tls, is_server=False)
    engine = _engines.load(config.engine)
    loop = asyncio.get_running_loop()
    path: Path | None = None
    try:
        async with asyncio.timeout(config.handshake_timeout):
            if resolved is not None:
                family, addr = resolved
            else:
                family, addr = await _resolve(loop, host, port)
            path = _client_path(engine, material, config, host, family, addr)
            path.dialed_as = address
            path.on_handshake = on_handshake
            path.connect(addr)
            await path.wait_connected()
    except TimeoutError:
        if path is not None:
            path.abort()
        raise HandshakeTimeoutError(
            f"no QUIC handshake with {address} within {config.handshake_timeout} s"
        ) from None
    except KwikError:
        if path is not None:
            path.abort()
        raise
    except PortUnreachableError as exc:
        if path is not None:
            path.abort()
        raise HandshakeError(f"handshake with {address} failed: {exc.strerror}") from exc
    except ConnectionError as exc:
        reason = "connection closed"
        if path is not None:
            reason = path.close_reason or path.connection.close_reason() or str(exc) or reason
            path.abort()
        raise HandshakeError(f"handshake with {address} failed: {reason}") from exc
    except BaseException:
        if path is not None:
            path.abort()
        raise
    return path


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise HandshakeError(f"cannot resolve {host!r}: the name does not resolve ({exc})") from exc
    if not infos:
        raise HandshakeError(f"cannot resolve {host!r}: the name does not resolve")
    family, _, _, _, addr = infos[0]
    return family, addr


def _client_path(
    engine: _engines.Engine,
    material: TLSMaterial,
    config: Config,
    host: str,
    family: socket.AddressFamily,
    addr: tuple[Any, ...],
) -> Path:
    """A client path with its own connected UDP socket (connected: ICMP errors reach it)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_receive_buffer(sock, config.udp_receive_buffer)
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        sock.connect(addr)
        sock.setblocking(False)
        path = Path(
            engine,
            lambda credit: engine.client_connection(config, material, host, credit),
            is_client=True,
            config=config,
        )
        endpoint = UdpEndpoint(asyncio.get_running_loop(), sock, path, connected=True)
    except BaseException:
        sock.close()
        raise
    path.use_endpoint(endpoint)
    path.set_remote_address(addr)
    return path


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a larger UDP receive buffer; the kernel may grant less, which is fine."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as exc:  # pragma: no cover - platform dependent
        logger.debug("SO_RCVBUF %d refused: %s", size, exc)


async def dial_addr(
    address: str, tls_config: TLSConfig | None = None, config: Config | None = None
) -> Session:
    """Open a client session to the KWIK server at ``address`` ("host:port").

    Returns once the QUIC handshake is done and the first record is sent; it does not wait for
    any answer. ``tls_config=None`` verifies the server against the system trust store.

    Raises:
        HandshakeTimeoutError: nothing answered within ``config.handshake_timeout``.
        HandshakeError: the peer refused (e.g. its certificate does not verify), nothing
            listens at the address (ICMP port unreachable, within a second), or the host does
            not resolve.
        ValueError: ``address`` is malformed or has port 0, or a TLS file cannot be read or is
            not PEM (the message names it).
    """
    config = config if config is not None else Config()
    tls = tls_config if tls_config is not None else TLSConfig()
    # refuse what cannot work before any socket or session exists
    _, port = parse_address(address)
    if port == 0:
        raise ValueError(f"invalid address {address!r}: port 0 cannot be dialed")
    load_tls_material(tls, is_server=False)
    session = Session(is_client=True, config=config, tls=tls, dialer=connect_path)

    def attach(path: Path) -> None:
        # the first record (a Ping) is written now, so it leaves with the last handshake flight
        session._attach_path(path, primary=True, dialed_as=address)

    try:
        await connect_path(address, tls, config, on_handshake=attach)
    except BaseException:
        session._discard()
        raise
    logger.debug("session %d dialed %s", session.session_id, address)
    return session
