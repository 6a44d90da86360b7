"""Per-stream reassembly by absolute offset (sans-IO).

A logical stream's bytes may arrive on several paths, from several servers, in any order, with
duplicates and overlaps. :class:`ReceiveBuffer` keeps the contiguous prefix ready to read and
holds the rest by offset until the gap before it fills (``docs/protocol.md``, "Logical streams").

Memory is bounded by construction:

* every byte is stored at most once: a chunk that overlaps what is held (ready or pending) is
  trimmed to the parts not held yet, so a peer re-sending overlapping frames gains nothing;
* data may only land below ``read_offset + window``; the session core never offers data beyond
  it (it back-pressures the path instead), so the check here is a safety net that raises
  :class:`~kwik.exceptions.ProtocolViolationError`;
* out-of-order data is held in at most ``max_fragments`` separate pieces: :meth:`receive`
  refuses (returns :data:`REFUSED`, nothing changed) a chunk that would need one more, so a
  peer cannot make the buffer keep a million one-byte pieces. Data that extends the ready
  prefix or an existing piece never needs a new one, so the bytes that fill the first gap are
  always accepted and a refusal cannot deadlock a well-behaved sender.
"""

from __future__ import annotations

import bisect

from ..exceptions import ProtocolViolationError

__all__ = ["REFUSED", "ReceiveBuffer"]

Data = bytes | bytearray | memoryview

#: Returned by :meth:`ReceiveBuffer.receive` when the chunk would need more pieces than allowed.
REFUSED = -1

#: Default bound on the out-of-order pieces one stream holds.
DEFAULT_MAX_FRAGMENTS = 1024


class ReceiveBuffer:
    """Reassembles one logical stream's bytes.

    Args:
        window: how far past the read offset data may land; beyond is a protocol violation.
        max_fragments: most separate out-of-order pieces held at once.
    """

    __slots__ = (
        "_contiguous",
        "_final_offset",
        "_chunks",
        "_pending_bytes",
        "_read_offset",
        "_starts",
        "max_fragments",
        "window",
    )

    def __init__(self, window: int, max_fragments: int = DEFAULT_MAX_FRAGMENTS) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        if max_fragments < 1:
            raise ValueError("max_fragments must be positive")
        self.window = window
        self.max_fragments = max_fragments
        self._read_offset = 0  # stream offset of _contiguous[0]
        self._contiguous = bytearray()  # ready to read
        # out-of-order pieces: sorted, disjoint start offsets -> bytes held from there
        self._starts: list[int] = []
        self._chunks: dict[int, bytearray] = {}
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
        """Distinct bytes held: ready to read plus waiting for a gap to fill."""
        return len(self._contiguous) + self._pending_bytes

    @property
    def fragments(self) -> int:
        """Separate out-of-order pieces held."""
        return len(self._starts)

    @property
    def highest_end(self) -> int:
        """Offset just past the highest byte held (or read)."""
        if self._starts:
            last = self._starts[-1]
            return max(last + len(self._chunks[last]), self.contiguous_end)
        return self.contiguous_end

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

    def held_from(self, offset: int) -> int:
        """Distinct bytes held at offsets ``>= offset`` (ready or pending)."""
        held = max(self.contiguous_end - max(offset, self._read_offset), 0)
        starts, chunks = self._starts, self._chunks
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0:
            start = starts[i]
            held += max(start + len(chunks[start]) - offset, 0)
        for start in starts[i + 1 :]:
            held += len(chunks[start])
        return held

    def received_ranges(self) -> list[tuple[int, int]]:
        """The byte ranges ``[start, end)`` received so far (read bytes included), ascending.

        Bytes skipped with :meth:`skip_to` count as received. An application can compare this
        with what it expects to find the gaps a failed writer left.
        """
        ranges: list[tuple[int, int]] = []
        cend = self.contiguous_end
        if cend:
            ranges.append((0, cend))
        for start in self._starts:
            end = start + len(self._chunks[start])
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return ranges

    # --- input ----------------------------------------------------------------------------------

    def check(self, offset: int, length: int, fin: bool) -> None:
        """Raise if a chunk ``[offset, offset + length)`` (with ``fin``) contradicts the stream.

        Changes nothing. :meth:`receive` runs the same checks.

        Raises:
            ProtocolViolationError: the fin contradicts an earlier one or lies below data
                already received, or data lies past the final offset.
        """
        end = offset + length
        if fin:
            if self._final_offset is not None and self._final_offset != end:
                raise ProtocolViolationError(
                    f"final offset changed from {self._final_offset} to {end}"
                )
            if end < self.highest_end:
                raise ProtocolViolationError(f"fin at {end} is below data already received")
        elif self._final_offset is not None and end > self._final_offset:
            raise ProtocolViolationError(
                f"data up to offset {end} lies past the final offset {self._final_offset}"
            )

    def receive(self, offset: int, data: Data, fin: bool = False) -> int:
        """Add ``data`` found at ``offset``; ``fin`` marks ``offset + len(data)`` as the end.

        The bytes not held yet are copied; the rest is ignored. Returns how many bytes became
        readable, or :data:`REFUSED` (nothing changed, the fin included) when the chunk would
        need more than ``max_fragments`` out-of-order pieces.

        Raises:
            ProtocolViolationError: see :meth:`check`; or data lands beyond the window.
        """
        length = len(data)
        end = offset + length
        self.check(offset, length, fin)
        if length and end > self._read_offset + self.window:
            raise ProtocolViolationError(
                f"data up to offset {end} lies beyond the receive window "
                f"({self._read_offset} + {self.window})"
            )
        cend = self.contiguous_end
        if end <= cend or not length:
            if fin:
                self._final_offset = end
            return 0  # duplicate (or empty: fin only)
        if offset <= cend:
            if fin:
                self._final_offset = end
            before = len(self._contiguous)
            self._append_contiguous(memoryview(data)[cend - offset :], cend)
            return len(self._contiguous) - before
        pieces = self._uncovered(offset, end)
        if not pieces:
            if fin:
                self._final_offset = end
            return 0
        # a piece needs a new fragment unless it extends the fragment ending where it starts
        new = 0
        for start, _ in pieces:
            i = bisect.bisect_left(self._starts, start) - 1
            if i < 0 or self._starts[i] + len(self._chunks[self._starts[i]]) != start:
                new += 1
        if new and len(self._starts) + new > self.max_fragments:
            return REFUSED
        if fin:
            self._final_offset = end
        view = memoryview(data)
        for start, stop in pieces:
            self._store(start, view[start - offset : stop - offset])
        return 0

    def _uncovered(self, offset: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[offset, end)`` (all above the ready prefix) no piece holds yet."""
        starts, chunks = self._starts, self._chunks
        pieces: list[tuple[int, int]] = []
        pos = offset
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            i = 0
        while pos < end and i < len(starts):
            start = starts[i]
            stop = start + len(chunks[start])
            if stop <= pos:
                i += 1
                continue
            if start >= end:
                break
            if start > pos:
                pieces.append((pos, start))
            pos = max(pos, stop)
            i += 1
        if pos < end:
            pieces.append((pos, end))
        return pieces

    def _store(self, start: int, piece: memoryview) -> None:
        starts, chunks = self._starts, self._chunks
        i = bisect.bisect_left(starts, start) - 1
        if i >= 0:
            prev = starts[i]
            held = chunks[prev]
            if prev + len(held) == start:
                held += piece  # extend: amortised, and no new fragment
                self._pending_bytes += len(piece)
                return
        bisect.insort(starts, start)
        chunks[start] = bytearray(piece)
        self._pending_bytes += len(piece)

    def _append_contiguous(self, data: memoryview, at: int) -> None:
        """Append ``data`` (starting at ``at`` == contiguous end), then absorb the pieces it
        reaches, trimming what they overlap."""
        contiguous = self._contiguous
        contiguous += data
        starts, chunks = self._starts, self._chunks
        while starts:
            start = starts[0]
            cend = self._read_offset + len(contiguous)
            if start > cend:
                return
            del starts[0]
            chunk = chunks.pop(start)
            self._pending_bytes -= len(chunk)
            if start + len(chunk) > cend:
                contiguous += memoryview(chunk)[cend - start :]

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
            self._append_contiguous(memoryview(b""), offset)
            return
        self._contiguous.clear()
        self._read_offset = offset
        starts, chunks = self._starts, self._chunks
        # pieces that start before the new offset: keep their tail as the ready prefix
        while starts and starts[0] <= offset:
            start = starts.pop(0)
            chunk = chunks.pop(start)
            self._pending_bytes -= len(chunk)
            if start + len(chunk) > offset:
                self._contiguous += memoryview(chunk)[offset - start :]
                break
        self._append_contiguous(memoryview(b""), self.contiguous_end)
