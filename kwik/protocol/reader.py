"""Incremental record reader: cuts KWIK records out of a transport stream (sans-IO).

The transport stream is a byte stream of records ``[u32 L1][u32 L2][packet]``. Bytes arrive in
whatever chunks QUIC delivers (one byte at a time included). :class:`RecordReader` buffers them
and hands out one packet body at a time, applying the cut rules of ``docs/protocol.md``, "Records":

* ``L1 == 0`` is an empty record (keep-alive) and is skipped;
* ``L1 > max_record_size`` raises :class:`~kwik.exceptions.ProtocolViolationError`;
* the inner prefix is stripped only when its value equals the remaining length of the record
  (a Go peer may omit it).

Records are returned as :class:`memoryview` slices of the reader's buffer, without a copy. A
view stays valid for as long as the caller holds it: the reader never resizes a buffer it has
handed views of, it starts a new one instead. The caller copies what it keeps (into a pooled
buffer, say) and drops the view.

The reader also counts the bytes it has consumed, which the transport uses to grant QUIC flow
control credit: bytes still buffered here, not yet cut into records, are bytes the peer may not
exceed.
"""

from __future__ import annotations

import struct

from ..exceptions import ProtocolViolationError
from .frames import MAX_RECORD_SIZE

__all__ = ["RecordReader"]

_U32 = struct.Struct(">I")


class RecordReader:
    """Cuts records out of a byte stream fed in arbitrary chunks.

    Usage: call :meth:`feed` with every chunk, then :meth:`next_record` until it returns None.
    After a :class:`ProtocolViolationError` the stream cannot be resynchronised: the reader
    stays failed and the path must be closed.
    """

    __slots__ = (
        "_buf",
        "_failed",
        "_peeked",
        "_pos",
        "consumed",
        "max_record_size",
        "records",
        "skipped",
    )

    def __init__(self, max_record_size: int = MAX_RECORD_SIZE) -> None:
        if max_record_size < 1:
            raise ValueError("max_record_size must be positive")
        self.max_record_size = max_record_size
        self._buf = bytearray()
        self._pos = 0  # start of the unread bytes in _buf
        self._failed: ProtocolViolationError | None = None
        #: bytes taken out of the stream as records, empty records included
        self.consumed = 0
        #: records returned by next_record()
        self.records = 0
        #: empty (L1 == 0) records skipped
        self.skipped = 0
        self._peeked = 0  # stream offset up to which peek_records() has looked

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as part of a record."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received on the transport stream."""
        if not data:
            return
        if self._pos == 0:
            # no view of this buffer has been handed out since it was created: grow in place
            self._buf += data
        elif self._pos == len(self._buf):
            self._buf = bytearray(data)
            self._pos = 0
        else:
            # views of the current buffer may be alive: build a new one with the unread tail
            tail = memoryview(self._buf)[self._pos :]
            new = bytearray(len(tail) + len(data))
            new[: len(tail)] = tail
            new[len(tail) :] = data
            tail.release()
            self._buf = new
            self._pos = 0

    def peek_records(self) -> list[bytes]:
        """Copies of the complete records buffered beyond what :meth:`next_record` returned
        and beyond the previous call, without consuming them (they are still returned by
        :meth:`next_record` later). A path that stops taking records looks ahead with this for
        the Pings it must still answer."""
        buf = self._buf
        out: list[bytes] = []
        if self._failed is not None:
            return out
        pos = self._pos + max(self._peeked - self.consumed, 0)
        while len(buf) - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if length > self.max_record_size or len(buf) - pos - 4 < length:
                break
            start, end = pos + 4, pos + 4 + length
            if length >= 4 and _U32.unpack_from(buf, start)[0] == length - 4:
                start += 4
            if length:
                out.append(bytes(buf[start:end]))
            pos = end
        self._peeked = self.consumed + pos - self._pos
        return out

    def next_record(self) -> memoryview | None:
        """Return the next packet body, or None when more bytes are needed.

        Empty records are skipped. The returned view is the packet only (both prefixes removed).

        Raises:
            ProtocolViolationError: the next record is larger than ``max_record_size``.
        """
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        while True:
            pos = self._pos
            available = len(buf) - pos
            if available < 4:
                return None
            (length,) = _U32.unpack_from(buf, pos)
            if length == 0:
                self._pos = pos + 4
                self.consumed += 4
                self.skipped += 1
                continue
            if length > self.max_record_size:
                self._failed = ProtocolViolationError(
                    f"record of {length} bytes exceeds the limit of {self.max_record_size}"
                )
                raise self._failed
            if available < 4 + length:
                return None
            start = pos + 4
            end = start + length
            if length >= 4 and _U32.unpack_from(buf, start)[0] == length - 4:
                start += 4
            self._pos = end
            self.consumed += 4 + length
            self.records += 1
            return memoryview(buf)[start:end]
