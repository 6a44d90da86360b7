"""Listening: :func:`listen_addr` and :class:`Listener`."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection

from . import _aioquic
from ._addr import format_address, parse_address
from ._connect import set_receive_buffer, tune_datagram_transport
from ._path import CLOSE_FAILURE, CLOSE_NORMAL, Path
from ._waiters import Waiters
from .config import Config, TLSConfig
from .exceptions import ListenerClosedError
from .session import Session
from .tls import quic_configuration

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Listener", "listen_addr"]

logger = logging.getLogger("kwik.listener")


class Listener:
    """Accepts KWIK sessions on one UDP address. Obtained from :func:`listen_addr`.

    A session exists from the moment its first record arrives; it waits in a backlog of
    ``Config.accept_backlog`` sessions for :meth:`accept` (beyond that, new sessions are
    refused with code 1).
    """

    def __init__(self, config: Config, tls: TLSConfig) -> None:
        self._config = config
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._server: QuicServer | None = None
        self._addr = ""
        self._backlog: deque[Session] = deque()
        self._accept_waiters = Waiters()
        self._sessions: set[Session] = set()
        self._closed = False
        self._closed_event = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<kwik.Listener {self._addr} sessions={len(self._sessions)}"
            f"{' closed' if self._closed else ''}>"
        )

    @property
    def addr(self) -> str:
        """The bound "host:port" (with the real port when listening on port 0)."""
        return self._addr

    @property
    def is_closed(self) -> bool:
        return self._closed

    def active_session_count(self) -> int:
        """Live sessions of this listener, accepted by the application or not."""
        return len(self._sessions)

    # --- aioquic side ---------------------------------------------------------------------------

    def _create_path(self, quic: QuicConnection, stream_handler: Any = None) -> Path:
        return Path(
            quic, is_client=False, config=self._config, on_first_record=self._on_first_record
        )

    def _on_first_record(self, path: Path) -> None:
        """A client's first record arrived on a new connection: a session is born."""
        peer = _aioquic.peer_address(path.quic)
        if peer is not None:
            path.set_remote_address(peer)
        if self._closed:
            path.close(CLOSE_NORMAL, "listener closed")
            return
        if len(self._backlog) >= self._config.accept_backlog:
            logger.warning(
                "listener %s: backlog full, refusing %s", self._addr, path.remote_address
            )
            path.close(CLOSE_FAILURE, "listener backlog full")
            return
        session = Session(
            is_client=False, config=self._config, tls=self._tls, on_closed=self._session_closed
        )
        # counted before its first record is handled: a session that fails on it (a protocol
        # violation) is removed by its close callback, not left behind
        self._sessions.add(session)
        self._backlog.append(session)
        session._attach_path(path, primary=True)
        self._accept_waiters.wake_all()
        logger.debug(
            "listener %s: session %d from %s", self._addr, session.session_id, path.remote_address
        )

    def _session_closed(self, session: Session) -> None:
        self._sessions.discard(session)
        if session in self._backlog and not session._core.streams_pending_accept:
            # it closed before the application accepted it, and nothing of it waits: it no
            # longer takes a place in the backlog (r3-10)
            self._backlog.remove(session)

    # --- public ---------------------------------------------------------------------------------

    async def accept(self) -> Session:
        """Return the next session, in arrival order.

        Raises:
            ListenerClosedError: the listener is closed.
        """
        while True:
            while self._backlog:
                session = self._backlog.popleft()
                if not session.is_closed or session._core.streams_pending_accept:
                    return session
            if self._closed:
                raise ListenerClosedError(f"listener {self._addr} is closed")
            await self._accept_waiters.wait()

    async def close(self) -> None:
        """Stop accepting, close every session gracefully (code 0), then the socket.

        Sessions still open after ``Config.listener_close_timeout`` are forced closed.
        Pending :meth:`accept` calls raise :class:`ListenerClosedError`. Idempotent and
        cancellation-safe: cancelling the caller does not stop the close (the socket is still
        released), and a later call waits for the same one.
        """
        if self._close_task is None:
            self._closed = True
            self._accept_waiters.wake_all()
            self._close_task = self._loop.create_task(self._closer())
        await asyncio.shield(self._close_task)

    async def _closer(self) -> None:
        try:
            sessions = list(self._sessions)
            if sessions:
                graceful = [asyncio.ensure_future(s.close()) for s in sessions]
                done, pending = await asyncio.wait(
                    graceful, timeout=self._config.listener_close_timeout
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*graceful, return_exceptions=True)
                forced = [s for s in sessions if not s._paths_terminated()]
                if forced:
                    logger.info(
                        "listener %s: forcing %d sessions closed", self._addr, len(forced)
                    )
                    for session in forced:
                        session._force_close("listener shutdown")
        finally:
            self._sessions.clear()
            self._backlog.clear()
            if self._server is not None:
                self._server.close()
            self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Session:
        try:
            return await self.accept()
        except ListenerClosedError:
            raise StopAsyncIteration from None


async def _bound_socket(host: str, port: int, config: Config) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_receive_buffer(sock, config.udp_receive_buffer)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen_addr(
    address: str, tls_config: TLSConfig, config: Config | None = None
) -> Listener:
    """Listen for KWIK sessions on ``address`` ("host:port"; port 0 picks a free port).

    Raises:
        ValueError: malformed address, or ``tls_config`` without a certificate and key.
        OSError: the address cannot be bound.
    """
    config = config if config is not None else Config()
    host, port = parse_address(address)
    listener = Listener(config, tls_config)
    loop = asyncio.get_running_loop()
    try:
        qc = quic_configuration(is_client=False, tls=tls_config, config=config)
        sock = await _bound_socket(host, port, config)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=qc, create_protocol=listener._create_path),
            sock=sock,
        )
    except BaseException:
        await listener.close()
        raise
    tune_datagram_transport(transport)
    listener._server = protocol
    sockname = transport.get_extra_info("sockname")
    listener._addr = format_address(str(sockname[0]), int(sockname[1]))
    logger.debug("listening on %s", listener._addr)
    return listener
