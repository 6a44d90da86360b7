"""Per-stream reassembly by absolute offset (sans-IO).

A logical stream's bytes may arrive on several paths, from several servers, in any order, with
duplicates and overlaps. :class:`ReceiveBuffer` keeps the contiguous prefix ready to read and
holds the rest by offset until the gap before it fills (spec/wire-v2.md §3 "Data").

Memory is bounded: data starting more than ``window`` bytes past the read offset is a protocol
violation, so a peer cannot make the buffer hold more than ``window`` bytes of distinct data.
Whether the application is reading fast enough is the caller's business: it compares
:attr:`buffered` with its own limit and stops feeding the buffer (back-pressure) above it.
"""

from __future__ import annotations

import heapq

from ..exceptions import ProtocolViolationError

__all__ = ["ReceiveBuffer"]

Data = bytes | bytearray | memoryview


class ReceiveBuffer:
    """Reassembles one logical stream's bytes.

    Args:
        window: how far past the read offset data may land; beyond is a protocol violation.
    """

    __slots__ = (
        "_contiguous",
        "_final_offset",
        "_heap",
        "_pending",
        "_pending_bytes",
        "_read_offset",
        "window",
    )

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        self.window = window
        self._read_offset = 0  # stream offset of _contiguous[0]
        self._contiguous = bytearray()  # ready to read
        self._pending: dict[int, bytes] = {}  # out-of-order chunks by start offset
        self._heap: list[int] = []  # start offsets of _pending, smallest first
        self._pending_bytes = 0
        self._final_offset: int | None = None

    # --- state ----------------------------------------------------------------------------------

    @property
    def read_offset(self) -> int:
        """Offset of the next byte :meth:`read` returns."""
        return self._read_offset

    @property
    def contiguous_end(self) -> int:
        """Offset just past the last byte ready to read."""
        return self._read_offset + len(self._contiguous)

    @property
    def readable(self) -> int:
        """Bytes ready to read now."""
        return len(self._contiguous)

    @property
    def buffered(self) -> int:
        """Bytes held: ready to read plus waiting for a gap to fill."""
        return len(self._contiguous) + self._pending_bytes

    @property
    def final_offset(self) -> int | None:
        """The stream's final size once a fin has arrived, else None."""
        return self._final_offset

    @property
    def fin_received(self) -> bool:
        return self._final_offset is not None

    @property
    def complete(self) -> bool:
        """Every byte up to the final offset has arrived (it may not be read yet)."""
        return self._final_offset is not None and self.contiguous_end == self._final_offset

    @property
    def at_eof(self) -> bool:
        """Every byte up to the final offset has been read: :meth:`read` returns b""."""
        return self._final_offset is not None and self._read_offset == self._final_offset

    # --- input ----------------------------------------------------------------------------------

    def receive(self, offset: int, data: Data, fin: bool = False) -> int:
        """Add ``data`` found at ``offset``; ``fin`` marks ``offset + len(data)`` as the end.

        The bytes are copied. Returns how many bytes became readable.

        Raises:
            ProtocolViolationError: the fin contradicts an earlier one, data lies past the final
                offset, or data lands beyond the receive window.
        """
        end = offset + len(data)
        if fin:
            if self._final_offset is not None and self._final_offset != end:
                raise ProtocolViolationError(
                    f"final offset changed from {self._final_offset} to {end}"
                )
            if end < self.contiguous_end or any(s + len(c) > end for s, c in self._pending.items()):
                raise ProtocolViolationError(f"fin at {end} is below data already received")
        elif self._final_offset is not None and end > self._final_offset:
            raise ProtocolViolationError(
                f"data up to offset {end} lies past the final offset {self._final_offset}"
            )
        if end > self._read_offset + self.window and len(data):
            raise ProtocolViolationError(
                f"data up to offset {end} lies beyond the receive window "
                f"({self._read_offset} + {self.window})"
            )
        if fin:
            # only once every check passed: a rejected frame must leave the stream unchanged
            self._final_offset = end
        before = len(self._contiguous)
        cend = self.contiguous_end
        if end <= cend or not data:
            return 0  # duplicate (or empty: fin only)
        if offset <= cend:
            self._contiguous += memoryview(data)[cend - offset :]
            self._drain_pending()
        else:
            previous = self._pending.get(offset)
            if previous is None:
                heapq.heappush(self._heap, offset)
                self._pending[offset] = bytes(data)
                self._pending_bytes += len(data)
            elif len(previous) < len(data):
                self._pending[offset] = bytes(data)
                self._pending_bytes += len(data) - len(previous)
        return len(self._contiguous) - before

    def _drain_pending(self) -> None:
        heap = self._heap
        pending = self._pending
        while heap:
            start = heap[0]
            cend = self.contiguous_end
            if start > cend:
                return
            heapq.heappop(heap)
            chunk = pending.pop(start)
            self._pending_bytes -= len(chunk)
            if start + len(chunk) > cend:
                self._contiguous += memoryview(chunk)[cend - start :]

    # --- output ---------------------------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        """Take up to ``n`` ready bytes (all of them when ``n < 0``); b"" when none are ready."""
        contiguous = self._contiguous
        if n < 0 or n >= len(contiguous):
            data = bytes(contiguous)
            contiguous.clear()
        else:
            data = bytes(contiguous[:n])
            del contiguous[:n]
        self._read_offset += len(data)
        return data

    def skip_to(self, offset: int) -> None:
        """Move the read offset forward to ``offset``, discarding the bytes before it.

        Bytes before ``offset`` that have not arrived yet are ignored when they do.

        Raises:
            ValueError: ``offset`` is before the current read offset or past the final offset.
        """
        if offset < self._read_offset:
            raise ValueError(f"cannot move the read offset back from {self._read_offset}")
        if self._final_offset is not None and offset > self._final_offset:
            raise ValueError(f"offset {offset} is past the final offset {self._final_offset}")
        cend = self.contiguous_end
        if offset <= cend:
            del self._contiguous[: offset - self._read_offset]
            self._read_offset = offset
        else:
            self._contiguous.clear()
            self._read_offset = offset
            # pending chunks that start before the new offset: keep their tail
            for start in [s for s in self._pending if s < offset]:
                chunk = self._pending.pop(start)
                self._pending_bytes -= len(chunk)
                if start + len(chunk) > offset:
                    tail = chunk[offset - start :]
                    self._pending[offset] = max(tail, self._pending.get(offset, b""), key=len)
            self._pending_bytes = sum(len(c) for c in self._pending.values())
            self._heap = list(self._pending)
            heapq.heapify(self._heap)
        self._drain_pending()
