"""Relays: a primary server's handle on a secondary server it recruited."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from .config import Config
from .exceptions import PathError
from .protocol.session import SessionCore

__all__ = ["Relay", "RelayOwner"]


class RelayOwner(Protocol):
    """What a relay needs from its session (``kwik.Session`` implements it)."""

    _core: SessionCore
    _config: Config

    def _driving(self) -> AbstractContextManager[SessionCore]: ...

    def _raise_if_closed(self) -> None: ...

    async def _wait_relay(self, path_id: int) -> None: ...


class Relay:
    """A secondary server recruited by a primary server (see :meth:`Session.add_relay`)."""

    __slots__ = ("_address", "_path_id", "_session")

    def __init__(self, session: RelayOwner, path_id: int, address: str) -> None:
        self._session = session
        self._path_id = path_id
        self._address = address

    @property
    def address(self) -> str:
        """The secondary server's address, as given to ``add_relay``."""
        return self._address

    @property
    def path_id(self) -> int:
        """The client's id for the path to the secondary server."""
        return self._path_id

    @property
    def is_active(self) -> bool:
        """False once the relay was removed or the session closed."""
        core = self._session._core
        return core.error is None and core.relay_buffered(self._path_id) is not None

    def __repr__(self) -> str:
        return f"<kwik.Relay path={self._path_id} {self._address} active={self.is_active}>"

    async def send_raw_data(self, data: bytes | bytearray | memoryview, stream_id: int) -> int:
        """Have the client forward ``data`` to the secondary server on logical stream
        ``stream_id``; return its size in bytes.

        The client opens the stream on the relay path if needed and places the bytes at
        offsets growing from 0 on that path. Returns once the relay's outgoing buffer is back
        under ``Config.stream_send_buffer``. The client takes relayed bytes only as fast as it
        can forward them (``Config.relay_buffer``: with a kwik client, through the RelayCredit
        it grants), which slows this down too.

        Raises:
            PathError: the relay was removed.
            SessionClosedError: the session is closed.
            ValueError: ``stream_id`` is not within 1 .. 2**64-1.
        """
        session = self._session
        if session._core.relay_buffered(self._path_id) is None:
            session._raise_if_closed()
            raise PathError(f"relay {self._address} (path {self._path_id}) was removed")
        with session._driving() as core:
            size = core.relay_send(self._path_id, stream_id, data)
        limit = session._config.stream_send_buffer
        while True:
            buffered = session._core.relay_buffered(self._path_id)
            if buffered is None:
                session._raise_if_closed()
                raise PathError(f"relay {self._address} (path {self._path_id}) was removed")
            if buffered <= limit:
                return size
            session._raise_if_closed()
            await session._wait_relay(self._path_id)
