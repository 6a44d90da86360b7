"""Logical streams: the asyncio face of :class:`~kwik.protocol.session.StreamState`."""

from __future__ import annotations

import asyncio
from typing import Protocol

from .config import Config
from .exceptions import StreamClosedError
from .protocol.session import OpenState, SessionCore, StreamState

__all__ = ["Stream", "StreamOwner"]


class StreamOwner(Protocol):
    """What a stream needs from its session (``kwik.Session`` implements it)."""

    session_id: int
    _core: SessionCore
    _config: Config

    def _after_core(self) -> None: ...

    def _raise_if_closed(self) -> None: ...

    def _transmit_now(self) -> None: ...

    async def _wait_readable(self, state: StreamState) -> None: ...

    async def _wait_writable(self, state: StreamState) -> None: ...


#: Writes up to this size are transmitted at once rather than on the next loop iteration.
_NODELAY_WRITE = 16 * 1024


class Stream:
    """A logical, bidirectional KWIK stream.

    Reading: :meth:`read` returns bytes in offset order, merged from every path; ``b""`` is EOF.
    At most one coroutine may read at a time. Writing: :meth:`write` buffers and returns once
    the stream's send buffer is back under ``Config.stream_send_buffer``; :meth:`close` sends
    FIN after what was written. Streams are created by :meth:`Session.open_stream`,
    :meth:`Session.open_stream_sync` and :meth:`Session.accept_stream`, never directly.

    A stream the peer refused (see ``Config.max_streams``) raises
    :class:`~kwik.StreamClosedError` from every call.
    """

    __slots__ = ("_session", "_state")

    def __init__(self, session: StreamOwner, state: StreamState) -> None:
        self._session = session
        self._state = state

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<kwik.Stream {state.stream_id} session={self._session.session_id} "
            f"read={state.recv.read_offset} written={state.highest_written}"
            f"{' fin-sent' if state.fin_sent else ''}{' eof' if state.recv.at_eof else ''}>"
        )

    @property
    def stream_id(self) -> int:
        """The logical stream id, shared by both directions. A stream from
        :meth:`Session.open_stream` may change id until the peer confirms it (collision)."""
        return self._state.stream_id

    @property
    def session(self) -> StreamOwner:
        """The session the stream belongs to (a :class:`kwik.Session`)."""
        return self._session

    @property
    def is_open(self) -> bool:
        """True once the peer confirmed the stream (always for accepted streams)."""
        return self._state.open_state is OpenState.OPEN

    @property
    def bytes_read(self) -> int:
        return self._state.bytes_read

    @property
    def bytes_written(self) -> int:
        return self._state.bytes_written

    # --- reading --------------------------------------------------------------------------------

    async def read(self, n: int = 65536) -> bytes:
        """Read up to ``n`` bytes; ``b""`` means the peer finished its side (EOF).

        Data that arrived is always returned, even after the session closed; then
        :class:`~kwik.SessionClosedError` is raised.

        Raises:
            SessionClosedError: the session closed before EOF and no data is left.
            StreamClosedError: reading was cancelled (:meth:`cancel_read`) or the stream was
                refused by the peer.
            RuntimeError: another coroutine is already reading this stream.
        """
        if n < 0:
            n = 1 << 62
        if n == 0:
            return b""
        session = self._session
        core = session._core
        while True:
            data = core.read(self._state, n)
            session._after_core()
            if data is not None:
                return data
            await session._wait_readable(self._state)

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: EOF came first (``.partial`` holds what was read).
            SessionClosedError: as :meth:`read`.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        chunks: list[bytes] = []
        got = 0
        while got < n:
            data = await self.read(n - got)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(chunks), n)
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def cancel_read(self) -> None:
        """Stop reading: what is buffered and whatever the peer sends later is discarded.

        Use it for a stream the application abandons. All streams of a path share its
        transport stream, so unread data would otherwise stop the path (and its other streams)
        once ``Config.stream_receive_buffer`` fills up. The peer is not told (KWIK v2 has no
        STOP_SENDING); its data is simply dropped on arrival. Later reads raise
        :class:`~kwik.StreamClosedError`. Writing is not affected.
        """
        self._session._core.cancel_read(self._state)
        self._session._after_core()

    def get_read_offset(self) -> int:
        """Offset of the next byte :meth:`read` returns."""
        return self._state.recv.read_offset

    def set_read_offset(self, offset: int) -> None:
        """Skip forward to ``offset``: the bytes before it are discarded, never returned.

        Raises:
            ValueError: ``offset`` is behind the current read offset, past the end, or beyond
                2**64-1.
        """
        self._session._core.skip_to(self._state, offset)
        self._session._after_core()

    def received_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges ``[start, end)`` of this stream received so far (read ones included).

        With several writers (multi-server), the gaps between them are what has not arrived:
        an application can ask another writer for them when one fails.
        """
        return self._state.recv.received_ranges()

    @property
    def at_eof(self) -> bool:
        """True once everything up to the peer's FIN has been read."""
        return self._state.recv.at_eof

    # --- writing --------------------------------------------------------------------------------

    def get_write_offset(self) -> int:
        """Offset at which the next written byte will be placed."""
        return self._state.write_offset

    def set_write_offset(self, offset: int) -> None:
        """Place the next written bytes at ``offset`` of the logical stream.

        This is how a primary and a secondary server fill disjoint parts of one stream. Bytes
        already written keep their offsets.

        Raises:
            ValueError: ``offset`` is negative or beyond 2**64-1.
            StreamClosedError: the stream is closed for writing.
        """
        self._session._core.set_write_offset(self._state, offset)

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the current write offset; return ``len(data)``.

        Returns once the stream's send buffer is back under ``Config.stream_send_buffer``
        (aioquic's own buffer is unbounded, so this is where writers are slowed down).

        Raises:
            StreamClosedError: :meth:`close` was called, or the peer refused the stream.
            SessionClosedError: the session is closed (or closing).
            ValueError: the data would end past offset 2**64-1.
        """
        session = self._session
        state = self._state
        size = len(data)
        session._core.write(state, data)
        session._after_core()
        if size and size <= _NODELAY_WRITE and not state.segments:
            # a small message leaves now (like TCP_NODELAY); bulk writes keep coalescing
            session._transmit_now()
        await self.drain()
        return size

    async def drain(self) -> None:
        """Wait until the send buffer is under its limit (what :meth:`write` already does).

        Raises:
            SessionClosedError: the session closed while waiting.
            StreamClosedError: the peer refused the stream.
        """
        session = self._session
        state = self._state
        limit = session._config.stream_send_buffer
        while True:
            if state.open_state is OpenState.REFUSED:
                session._raise_if_closed()
                raise StreamClosedError(f"stream refused: {state.error}")
            if state.send_buffered <= limit:
                return
            session._raise_if_closed()
            await session._wait_writable(state)

    async def close(self) -> None:
        """Finish the sending side: FIN goes after what was written; reading still works.

        The final offset is the highest of every byte written and the current write offset.
        Idempotent; does nothing once the session is closed.

        Raises:
            StreamClosedError: the peer refused the stream.
        """
        await self._finish(fin=True)

    async def end_part(self) -> None:
        """Finish this writer's part of a multi-server stream *without* a FIN.

        With several writers on one logical stream, exactly one sends the FIN, at the true end
        (spec "Several writers, one stream"): the others end their part with this. What was
        written is still delivered; reading still works.
        """
        await self._finish(fin=False)

    async def _finish(self, *, fin: bool) -> None:
        state = self._state
        if state.open_state is OpenState.REFUSED:
            raise StreamClosedError(f"stream refused: {state.error}")
        session = self._session
        if session._core.error is not None:
            state.write_closed = True
            return
        session._core.close_stream(state, fin=fin)
        session._after_core()

    @property
    def is_write_closed(self) -> bool:
        return self._state.write_closed
