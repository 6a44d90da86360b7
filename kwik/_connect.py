"""Dialing: one QUIC connection (a path) to a server, and :func:`dial_addr`."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aioquic.quic.connection import QuicConnection

from . import _aioquic
from ._addr import parse_address
from ._path import Path
from .config import Config, TLSConfig
from .exceptions import HandshakeError, HandshakeTimeoutError
from .session import Session
from .tls import quic_configuration

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
    loop = asyncio.get_running_loop()
    path: Path | None = None
    try:
        async with asyncio.timeout(config.handshake_timeout):
            if resolved is not None:
                family, addr = resolved
            else:
                try:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                except OSError as exc:
                    raise HandshakeError(f"cannot resolve {host!r}: {exc}") from exc
                family, _, _, _, addr = infos[0]
            quic = QuicConnection(
                configuration=quic_configuration(
                    is_client=True, tls=tls, config=config, server_name=host
                )
            )
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                set_receive_buffer(sock, config.udp_receive_buffer)
                sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
                sock.setblocking(False)
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: Path(quic, is_client=True, config=config), sock=sock
                )
                tune_datagram_transport(transport)
            except BaseException:
                sock.close()
                raise
            path = protocol
            path.set_remote_address(addr)
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
    except ConnectionError as exc:
        reason = "connection refused"
        if path is not None:
            reason = path.close_reason or _aioquic.close_reason(path.quic) or reason
            path.abort()
        raise HandshakeError(f"handshake with {address} failed: {reason}") from exc
    except BaseException:
        if path is not None:
            path.abort()
        raise
    return path


#: Largest UDP payload (65,535 - 8 - 20). asyncio's selector transport otherwise receives
#: every datagram into a fresh 256 KiB buffer, an allocation above glibc's mmap threshold
#: that costs more CPU than aioquic's whole processing of the datagram in some heap states.
MAX_UDP_PAYLOAD = 65_507


def tune_datagram_transport(transport: object) -> None:
    """Receive each datagram into a buffer no larger than a UDP payload can be (asyncio's
    selector loop; uvloop sizes its buffers itself)."""
    current = getattr(transport, "max_size", None)
    if isinstance(current, int) and current > MAX_UDP_PAYLOAD:
        # only ever lower it: an application (or a meter) may have chosen smaller already
        transport.max_size = MAX_UDP_PAYLOAD  # type: ignore[attr-defined]


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
        HandshakeError: the peer refused, e.g. its certificate does not verify.
        ValueError: ``address`` is malformed.
    """
    config = config if config is not None else Config()
    tls = tls_config if tls_config is not None else TLSConfig()
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
