"""Listening: :func:`listen_addr` and :class:`Listener`."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _engines
from ._addr import format_address, parse_address
from ._connect import set_receive_buffer
from ._demux import Demultiplexer
from ._engines.base import Credit, EngineConnection
from ._path import CLOSE_FAILURE, CLOSE_NORMAL, Path
from ._udp import UdpEndpoint
from ._waiters import Waiters
from .config import Config, TLSConfig
from .exceptions import ListenerClosedError
from .session import Session
from .tls import load_tls_material

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
        self._server: Demultiplexer | None = None
        self._engine: _engines.Engine | None = None
        self._factory: Callable[[bytes, Credit], EngineConnection] | None = None
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

    # --- transport side ------------------------------------------------------------------------

    def _create_path(self, original_dcid: bytes, addr: Any) -> Path | None:
        """The demultiplexer saw a new client Initial: a server path for it."""
        engine, factory, server = self._engine, self._factory, self._server
        if engine is None or factory is None or server is None or self._closed:
            return None
        path = Path(
            engine,
            lambda credit: factory(original_dcid, credit),
            is_client=False,
            config=self._config,
            send=server.send,
            on_first_record=self._on_first_record,
            cid_listener=server,
            local_endpoint=server.endpoint,
        )
        path.set_remote_address(addr)
        return path

    def _on_first_record(self, path: Path) -> None:
        """A client's first record arrived on a new connection: a session is born."""
        peer = path.connection.peer_address()
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
                    logger.info("listener %s: forcing %d sessions closed", self._addr, len(forced))
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
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot listen on {format_address(host, port)}: {host!r} does not resolve"
        ) from exc
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_receive_buffer(sock, config.udp_receive_buffer)
        try:
            sock.bind(addr)
        except OSError as exc:
            where = format_address(str(addr[0]), int(addr[1]))
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise type(exc)(exc.errno, f"cannot listen on {where}: {reason}") from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen_addr(
    address: str, tls_config: TLSConfig, config: Config | None = None
) -> Listener:
    """Listen for KWIK sessions on ``address`` ("host:port"; port 0 picks a free port).

    The TLS identity is read and checked before the socket is bound.

    Raises:
        TypeError: ``tls_config`` is not a :class:`~kwik.TLSConfig` (a server needs one, with
            an identity).
        ValueError: malformed address, or ``tls_config`` without a certificate and key, or
            unreadable (non-PEM) key material; the message names the file.
        OSError: the address cannot be bound (the message names it; same errno).
    """
    config = config if config is not None else Config()
    host, port = parse_address(address)
    material = load_tls_material(tls_config, is_server=True)
    engine = _engines.load(config.engine)
    factory = engine.server_factory(config, material)
    listener = Listener(config, tls_config)
    loop = asyncio.get_running_loop()
    try:
        sock = await _bound_socket(host, port, config)
        try:
            endpoint = UdpEndpoint(loop, sock, _NoHandler())
        except BaseException:
            sock.close()
            raise
    except BaseException:
        await listener.close()
        raise
    listener._engine = engine
    listener._factory = factory
    listener._server = Demultiplexer(
        endpoint,
        cid_length=engine.cid_length,
        supported_versions=engine.supported_versions,
        new_path=listener._create_path,
    )
    sockname = endpoint.sockname
    listener._addr = format_address(str(sockname[0]), int(sockname[1]))
    logger.debug("listening on %s (engine %s)", listener._addr, engine.name)
    return listener


class _NoHandler:
    """Until the demultiplexer takes the endpoint over (nothing can arrive meanwhile: the
    listener's address is not known to anyone yet)."""

    def udp_received(self, items: list[tuple[bytes, Any, int]]) -> None:
        pass

    def udp_error(self, exc: OSError) -> None:
        pass
