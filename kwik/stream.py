"""Logical streams: the asyncio face of :class:`~kwik.protocol.stream.LogicalStream`.

A :class:`Stream` reads its state from the core and changes it only through the core's calls
(inside :meth:`StreamOwner._driving`); what it keeps of its own is what belongs to the
application's side of a call: bytes a cancelled :meth:`Stream.readexactly` had already taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractContextManager
from typing import Protocol

from .config import Config
from .protocol.session import SessionCore
from .protocol.stream import LogicalStream, OpenState

__all__ = ["Stream", "StreamOwner"]


class StreamOwner(Protocol):
    """What a stream needs from its session (``kwik.Session`` implements it)."""

    session_id: int
    _core: SessionCore
    _config: Config

    def _driving(self) -> AbstractContextManager[SessionCore]: ...

    def _transmit_now(self) -> None: ...

    async def _wait_readable(self, state: LogicalStream) -> None: ...

    async def _wait_writable(self, state: LogicalStream) -> None: ...


#: Writes up to this size are transmitted at once rather than on the next loop iteration.
_NODELAY_WRITE = 16 * 1024


class Stream:
    """A logical, bidirectional KWIK stream.

    Reading: :meth:`read` returns bytes in offset order, merged from every path; ``b""`` is EOF.
    At most one coroutine may read at a time. Writing: :meth:`write` buffers and returns once
    the stream's send buffer is back under ``Config.stream_send_buffer``; :meth:`close` sends
    FIN after what was written. Streams are created by :meth:`Session.open_stream`,
    :meth:`Session.open_stream_sync` and :meth:`Session.accept_stream`, never directly.

    A stream the peer refused (see ``Config.max_streams``), or whose path closed, raises
    :class:`~kwik.StreamClosedError` from every call once what it received is read.
    """

    __slots__ = ("_pushback", "_session", "_state")

    def __init__(self, session: StreamOwner, state: LogicalStream) -> None:
        self._session = session
        self._state = state
        self._pushback = b""  # bytes read by a call that was cancelled: the next read's

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<kwik.Stream {state.stream_id} session={self._session.session_id} "
            f"read={state.receiver.read_offset} written={state.sender.highest_written} "
            f"send={state.sender.state.value} recv={state.receiver.state.value}>"
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
        return self._state.receiver.bytes_read - len(self._pushback)

    @property
    def bytes_written(self) -> int:
        return self._state.sender.bytes_written

    # --- reading --------------------------------------------------------------------------------

    async def read(self, n: int = 65536) -> bytes:
        """Read up to ``n`` bytes; ``b""`` means the peer finished its side (EOF).

        Data that arrived is always returned, even after the session closed; then
        :class:`~kwik.SessionClosedError` is raised. Cancellation-safe: a cancelled read has
        taken nothing.

        Raises:
            SessionClosedError: the session closed before EOF and no data is left.
            StreamClosedError: reading was cancelled (:meth:`cancel_read`), the stream was
                refused by the peer, or its path closed.
            RuntimeError: another coroutine is already reading this stream.
        """
        if n < 0:
            n = 1 << 62
        if n == 0:
            return b""
        if self._pushback:
            data, self._pushback = self._pushback[:n], self._pushback[n:]
            return data
        session = self._session
        while True:
            with session._driving() as core:
                got = core.read(self._state, n)
            if got is not None:
                return got
            await session._wait_readable(self._state)

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes.

        Cancellation-safe, like asyncio's ``StreamReader.readexactly``: if it is cancelled
        (``asyncio.wait_for(stream.readexactly(n), t)`` timing out, say), what it had read is
        kept for the next read.

        Raises:
            asyncio.IncompleteReadError: EOF came first (``.partial`` holds what was read).
            SessionClosedError: as :meth:`read`.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        chunks: list[bytes] = []
        got = 0
        try:
            while got < n:
                data = await self.read(n - got)
                if not data:
                    raise asyncio.IncompleteReadError(b"".join(chunks), n)
                chunks.append(data)
                got += len(data)
        except BaseException as exc:
            if not isinstance(exc, asyncio.IncompleteReadError) and chunks:
                self._pushback = b"".join(chunks) + self._pushback
            raise
        return b"".join(chunks)

    def cancel_read(self) -> None:
        """Stop reading: what is buffered and whatever the peer sends later is discarded.

        Use it for a stream the application abandons. With a kwik peer, each stream has its
        own credit and an unread one only stops itself; with a KWIK v2 peer, unread data
        counts against the session's receive budget until this is called. Writers are let go
        on (what they send is dropped on arrival), so the stream can end on both sides. Later
        reads raise :class:`~kwik.StreamClosedError`. Writing is not affected.
        """
        self._pushback = b""
        with self._session._driving() as core:
            core.cancel_read(self._state)

    def get_read_offset(self) -> int:
        """Offset of the next byte :meth:`read` returns."""
        return self._state.receiver.read_offset - len(self._pushback)

    def set_read_offset(self, offset: int) -> None:
        """Skip forward to ``offset``: the bytes before it are discarded, never returned.

        Raises:
            ValueError: ``offset`` is behind the current read offset, past the end, or beyond
                2**64-1.
        """
        if self._pushback:
            start = self.get_read_offset()
            if offset < start:
                raise ValueError(f"cannot move the read offset back from {start}")
            skip = min(offset - start, len(self._pushback))
            self._pushback = self._pushback[skip:]
            if self._pushback:
                return
        with self._session._driving() as core:
            core.skip_to(self._state, offset)

    def received_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges ``[start, end)`` of this stream received so far (read ones included).

        With several writers (multi-server), the gaps between them are what has not arrived:
        an application can ask another writer for them when one fails.
        """
        return self._state.receiver.received_ranges()

    @property
    def at_eof(self) -> bool:
        """True once everything up to the peer's FIN has been read."""
        return self._state.receiver.at_eof and not self._pushback

    # --- writing --------------------------------------------------------------------------------

    def get_write_offset(self) -> int:
        """Offset at which the next written byte will be placed."""
        return self._state.sender.write_offset

    def set_write_offset(self, offset: int) -> None:
        """Place the next written bytes at ``offset`` of the logical stream.

        This is how a primary and a secondary server fill disjoint parts of one stream. Bytes
        already written keep their offsets.

        One writer filling its own stream out of order (a body, then its header before it)
        should keep the part it writes ahead small: what lies within the reader's credit
        counts against ``stream_send_buffer`` like any written byte, and the bytes beyond it
        cannot leave before the reader has what comes first. A part ahead larger than the
        reader's window plus ``stream_send_buffer`` makes :meth:`write` wait for bytes only
        this writer can write: write the header first, or the body in parts.

        Raises:
            ValueError: ``offset`` is negative or beyond 2**64-1.
            StreamClosedError: the stream is closed for writing.
        """
        with self._session._driving() as core:
            core.set_write_offset(self._state, offset)

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the current write offset; return its size in bytes.

        Returns once the stream's send buffer is back under ``Config.stream_send_buffer``.
        Bytes written far ahead (beyond what the reader can take, while the bytes before them
        are still to be written) do not count, up to another ``stream_send_buffer`` of them, so
        a writer can place a part far ahead and then write what comes first. Any buffer is
        accepted; a multi-byte ``memoryview`` counts bytes, not items.

        Raises:
            StreamClosedError: :meth:`close` was called, the peer refused the stream, or its
                path closed.
            SessionClosedError: the session is closed (or closing).
            ValueError: the data would end past offset 2**64-1.
        """
        session = self._session
        with session._driving() as core:
            size = core.write(self._state, data)
        if size and size <= _NODELAY_WRITE and session._core.send_pending(self._state) == 0:
            # a small message left now (like TCP_NODELAY); bulk writes keep coalescing
            session._transmit_now()
        await self.drain()
        return size

    async def drain(self) -> None:
        """Wait until the send buffer is under its limit (what :meth:`write` already does).

        Raises:
            SessionClosedError: the session closed while waiting.
            StreamClosedError: the peer refused the stream, or its path closed.
        """
        session = self._session
        state = self._state
        core = session._core
        limit = session._config.stream_send_buffer
        while True:
            core.raise_for(state)
            if core.send_pending(state) <= limit:
                return
            await session._wait_writable(state)

    async def close(self) -> None:
        """Finish the sending side: FIN goes after what was written; reading still works.

        The final offset is the highest of every byte written and the current write offset.
        For a stream opened with :meth:`Session.open_stream`, it first waits for the peer's
        answer (within ``Config.open_stream_timeout``), so that a refusal is reported here
        rather than lost. Idempotent; does nothing once the session is closed.

        Raises:
            StreamClosedError: the peer refused the stream, or its path closed.
        """
        await self._finish(fin=True)

    async def end_part(self) -> None:
        """Finish this writer's part of a multi-server stream *without* a FIN.

        With several writers on one logical stream, exactly one sends the FIN, at the true end
        (``docs/protocol.md``, "Several writers, one stream"): the others end their part with
        this. What was written is still delivered; reading still works.
        """
        await self._finish(fin=False)

    async def _finish(self, *, fin: bool) -> None:
        state = self._state
        session = self._session
        if session._core.error is not None and not state.failed:
            return
        if state.open_state is OpenState.OPENING:
            # the answer may still come after the timeout: the FIN then follows the data
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(session._config.open_stream_timeout):
                    while state.open_state is OpenState.OPENING and session._core.error is None:
                        await session._wait_writable(state)
        if session._core.error is not None and not state.failed:
            return
        with session._driving() as core:
            core.raise_for(state)
            core.finish(state, fin=fin)

    @property
    def is_write_closed(self) -> bool:
        return self._state.sender.closed
