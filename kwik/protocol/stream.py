"""One logical stream of a session: its sender and its receiver (sans-IO).

A logical stream has two directions sharing an id. :class:`StreamSender` owns what this side
writes: the bytes not yet handed to a path, the write offset, the FIN, and the credit the peer
granted (``docs/protocol.md``, "The credit extension"). :class:`StreamReceiver` owns what this
side reads: the reassembly by offset (:class:`~.reassembly.ReceiveBuffer`), the credit this side
grants, and cancellation. Both return what happened (a frame to send, bytes freed, whether a
reader can go on) and never emit events or touch other streams: :class:`~.session.SessionCore`
applies the session's budgets and tells the adapter, the way aioquic's connection drives its
``QuicStreamSender``/``QuicStreamReceiver``.

States, shaped like RFC 9000 section 3:

* sending: :attr:`SendState.READY` (nothing finished), :attr:`SendState.DATA_SENT` (finished by
  the application: a FIN or the end of this writer's part waits to go out),
  :attr:`SendState.DONE` (everything handed to a path, the FIN included);
* receiving: :attr:`RecvState.RECV`, :attr:`RecvState.SIZE_KNOWN` (a FIN fixed the final
  size), :attr:`RecvState.DATA_RECVD` (every byte below it arrived), :attr:`RecvState.DATA_READ`
  (the application read them: EOF), :attr:`RecvState.CANCELLED` (the application stopped
  reading: what arrives is discarded).
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from ..exceptions import ProtocolViolationError, StreamClosedError
from .frames import StreamFrame
from .reassembly import REFUSED, ReceiveBuffer

__all__ = [
    "U64_MAX",
    "LogicalStream",
    "OpenState",
    "RecvState",
    "SendState",
    "StreamReceiver",
    "StreamSender",
]

U64_MAX = (1 << 64) - 1

#: Reassembly cap of a stream whose writers are not bound by credit (KWIK v2 paths): the
#: session budget decides what is taken, so the stream's own window is soft there.
_UNBOUNDED = 1 << 64


class SendState(Enum):
    READY = "ready"
    DATA_SENT = "data-sent"
    DONE = "done"


class RecvState(Enum):
    RECV = "recv"
    SIZE_KNOWN = "size-known"
    DATA_RECVD = "data-recvd"
    DATA_READ = "data-read"
    CANCELLED = "cancelled"


class OpenState(Enum):
    OPENING = "opening"  # OpenStream sent, no answer yet
    OPEN = "open"
    REFUSED = "refused"  # the peer never accepted an id for it
    CLOSED = "closed"  # its home path ended, or the application abandoned its open


class StreamSender:
    """This side's writing half of a logical stream.

    Bytes are buffered by offset (the application chooses offsets with
    :meth:`set_write_offset`) and handed out in frames by :meth:`next_frame`, never beyond the
    credit the peer granted when the stream's path uses the credit extension.
    """

    __slots__ = (
        "_segments",
        "buffered",
        "bytes_written",
        "credit",
        "final_offset",
        "fin",
        "highest_written",
        "state",
        "write_offset",
    )

    def __init__(self, *, credit: int | None) -> None:
        # [offset, bytes] runs not yet handed to a path, in write order
        self._segments: deque[list[int | bytearray]] = deque()
        self.buffered = 0
        self.write_offset = 0
        self.highest_written = 0
        self.bytes_written = 0
        #: highest offset the peer takes data up to (None: no credit on this path, KWIK v2)
        self.credit = credit
        self.state = SendState.READY
        self.fin = False  # finish() asked for a FIN (not only the end of a part)
        self.final_offset: int | None = None

    @property
    def closed(self) -> bool:
        """The application finished writing (:meth:`finish`)."""
        return self.state is not SendState.READY

    @property
    def has_unsent(self) -> bool:
        """Bytes or a FIN wait to be handed to a path."""
        return bool(self._segments) or (self.state is SendState.DATA_SENT and self.fin)

    @property
    def done(self) -> bool:
        return self.state is SendState.DONE

    @property
    def sendable(self) -> bool:
        """:meth:`next_frame` would return a frame now (credit permitting)."""
        if self.state is SendState.DATA_SENT and self.fin and not self._segments:
            return True
        return self._first_sendable() is not None

    def counted(self, slack: int) -> int:
        """Buffered bytes the application must wait for (``Config.stream_send_buffer``).

        Bytes written beyond a gap above the peer's credit (far ahead of what the reader can
        take, while the bytes before them are still to be written, by this writer or another)
        are not counted, up to ``slack`` of them: a writer may place that much far ahead and
        still go on to write what comes first, and never runs further ahead than that.
        """
        credit = self.credit
        if credit is None:
            return self.buffered
        far = 0
        for offset, buf in self._segments:
            assert isinstance(offset, int) and isinstance(buf, bytearray)
            if offset > credit:
                far += len(buf)
        return self.buffered - min(far, slack)

    def set_write_offset(self, offset: int) -> None:
        if not 0 <= offset <= U64_MAX:
            raise ValueError("offset must be within 0 .. 2**64-1")
        if self.closed:
            raise StreamClosedError("the stream is closed for writing")
        self.write_offset = offset

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data`` at the write offset; return its size in bytes.

        Raises:
            StreamClosedError: :meth:`finish` was called.
            ValueError: the data would end past offset 2**64-1.
        """
        if self.closed:
            raise StreamClosedError("the stream is closed for writing")
        view = memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")  # count bytes, not items
        size = view.nbytes
        if not size:
            return 0
        offset = self.write_offset
        if offset + size > U64_MAX:
            raise ValueError("writing past offset 2**64-1")
        segments = self._segments
        last = segments[-1] if segments else None
        if last is not None and last[0] + len(last[1]) == offset:  # type: ignore[arg-type, operator]
            last[1] += view  # type: ignore[operator]
        else:
            segments.append([offset, bytearray(view)])
        self.buffered += size
        self.write_offset = offset + size
        self.highest_written = max(self.highest_written, self.write_offset)
        self.bytes_written += size
        return size

    def finish(self, *, fin: bool) -> None:
        """The application is done writing. ``fin``: a FIN goes out at the final offset (the
        highest of every byte written and the write offset); otherwise only this writer's part
        ends (another writer sends the FIN). Idempotent."""
        if self.closed:
            return
        self.fin = fin
        if fin:
            self.final_offset = max(self.highest_written, self.write_offset)
        self.state = SendState.DATA_SENT
        self._maybe_done()

    def on_credit(self, max_offset: int) -> bool:
        """The peer granted credit up to ``max_offset``; return True when it grew.

        Raises:
            ProtocolViolationError: the credit shrank.
        """
        credit = self.credit
        if credit is None:
            return False
        if max_offset < credit:
            raise ProtocolViolationError(f"credit shrank from {credit} to {max_offset}")
        self.credit = max_offset
        return max_offset > credit

    def drop(self) -> int:
        """Forget everything unsent (the stream was refused or its path ended); return the
        bytes dropped."""
        dropped = self.buffered
        self._segments.clear()
        self.buffered = 0
        self.state = SendState.DONE
        return dropped

    def _first_sendable(self) -> list[int | bytearray] | None:
        """The buffered run at the lowest offset that credit lets go (written out of order,
        the bytes a reader needs first leave first)."""
        credit = self.credit
        best: list[int | bytearray] | None = None
        lowest = 0
        for segment in self._segments:
            offset = segment[0]
            assert isinstance(offset, int)
            if (credit is None or offset < credit) and (best is None or offset < lowest):
                best, lowest = segment, offset
        return best

    def next_frame(self, stream_id: int, max_size: int) -> StreamFrame | None:
        """The next frame to send (at most ``max_size`` data bytes), or None when nothing can
        go now: nothing buffered, or everything buffered lies beyond the peer's credit."""
        segment = self._first_sendable()
        if segment is None:
            if self.state is SendState.DATA_SENT and self.fin and not self._segments:
                assert self.final_offset is not None
                self.state = SendState.DONE
                return StreamFrame(stream_id, self.final_offset, True, b"")
            return None
        offset = segment[0]
        buf = segment[1]
        assert isinstance(offset, int) and isinstance(buf, bytearray)
        n = min(len(buf), max_size)
        if self.credit is not None:
            n = min(n, self.credit - offset)
        chunk = bytes(buf[:n]) if n < len(buf) else bytes(buf)
        end = offset + n
        if n < len(buf):
            del buf[:n]
            segment[0] = end
        else:
            self._segments.remove(segment)
        self.buffered -= n
        fin = (
            self.fin
            and self.state is SendState.DATA_SENT
            and not self._segments
            and end == self.final_offset
        )
        if fin:
            self.state = SendState.DONE
        else:
            self._maybe_done()
        return StreamFrame(stream_id, offset, fin, chunk)

    def _maybe_done(self) -> None:
        if self.state is SendState.DATA_SENT and not self._segments and not self.fin:
            self.state = SendState.DONE  # a part ends without a frame


class StreamReceiver:
    """This side's reading half of a logical stream.

    Credit (``docs/protocol.md``, "The credit extension"): :attr:`limit` is the offset this side
    lets writers on credit paths reach. It only grows (:meth:`grant`); data beyond it from such
    a writer is a protocol violation (:meth:`check_credit`). Writers on KWIK v2 paths are not
    bound by it: the session takes their frames while its budget has room.
    """

    __slots__ = ("_buf", "bytes_read", "limit", "reader_waiting", "state", "window")

    def __init__(self, window: int, max_fragments: int) -> None:
        self._buf = ReceiveBuffer(_UNBOUNDED, max_fragments)
        #: the stream's own window: credit is granted up to ``read_offset + window``
        self.window = window
        self.limit = 0
        self.reader_waiting = False  # read() found nothing: the application waits for data
        self.state = RecvState.RECV
        self.bytes_read = 0

    # --- state ----------------------------------------------------------------------------------

    @property
    def read_offset(self) -> int:
        return self._buf.read_offset

    @property
    def readable(self) -> int:
        """Bytes ready to read now."""
        return self._buf.readable

    @property
    def buffered(self) -> int:
        """Distinct bytes held (ready or waiting for a gap)."""
        return self._buf.buffered

    @property
    def contiguous_end(self) -> int:
        return self._buf.contiguous_end

    @property
    def highest_end(self) -> int:
        return self._buf.highest_end

    @property
    def final_offset(self) -> int | None:
        return self._buf.final_offset

    @property
    def fragments(self) -> int:
        return self._buf.fragments

    @property
    def complete(self) -> bool:
        """Every byte up to the final size arrived (read or not)."""
        return self._buf.complete or self.state is RecvState.DATA_READ

    @property
    def at_eof(self) -> bool:
        """Every byte up to the final size has been read."""
        return self._buf.at_eof

    @property
    def cancelled(self) -> bool:
        return self.state is RecvState.CANCELLED

    @property
    def finished(self) -> bool:
        """Nothing more will be read: EOF read, or reading cancelled and the final size
        reached."""
        if self.state is RecvState.DATA_READ:
            return True
        return self.state is RecvState.CANCELLED and self._buf.at_eof

    @property
    def commitment(self) -> int:
        """Bytes this stream may make the session hold: the credit still open (``limit -
        read_offset``, never past the final size) plus what is held beyond it (from KWIK v2
        writers). Nothing once reading was cancelled (what arrives is dropped)."""
        if self.state is RecvState.CANCELLED:
            return 0
        buf = self._buf
        read_offset = buf.read_offset
        limit = self.limit
        final = buf.final_offset
        if final is not None and limit > final:
            limit = final
        limit = max(limit, read_offset)
        beyond = buf.held_from(limit) if buf.highest_end > limit else 0
        return limit - read_offset + beyond

    def received_ranges(self) -> list[tuple[int, int]]:
        return self._buf.received_ranges()

    # --- input ----------------------------------------------------------------------------------

    def check(self, frame: StreamFrame) -> None:
        """Raise if ``frame`` contradicts the stream (see :meth:`ReceiveBuffer.check`)."""
        end = frame.offset + len(frame.data)
        if end > U64_MAX:
            raise ProtocolViolationError("stream offset beyond 2**64-1")
        self._buf.check(frame.offset, len(frame.data), frame.fin)

    def check_credit(self, frame: StreamFrame) -> None:
        """Raise if a writer bound by credit sent data beyond it."""
        end = frame.offset + len(frame.data)
        if frame.data and end > self.limit and end > self._buf.read_offset:
            raise ProtocolViolationError(
                f"stream data up to offset {end} beyond the credit granted ({self.limit})"
            )

    def take(self, frame: StreamFrame) -> bool:
        """Add the frame's data; False when it would need more out-of-order pieces than
        allowed (nothing changed: the frame must wait). Call :meth:`check` first."""
        buf = self._buf
        if self.state is RecvState.CANCELLED:
            # nobody reads: keep only the position, so that the final size is known
            end = frame.offset + len(frame.data)
            if frame.fin:
                buf.receive(end, b"", True)
            if end > buf.read_offset:
                buf.skip_to(min(end, buf.final_offset or end))
            return True
        if buf.receive(frame.offset, frame.data, frame.fin) == REFUSED:
            return False
        self._update_state()
        return True

    def _update_state(self) -> None:
        if self.state is RecvState.CANCELLED or self.state is RecvState.DATA_READ:
            return
        buf = self._buf
        if buf.at_eof:
            self.state = RecvState.DATA_READ
        elif buf.complete:
            self.state = RecvState.DATA_RECVD
        elif buf.fin_received:
            self.state = RecvState.SIZE_KNOWN

    # --- output ---------------------------------------------------------------------------------

    def read(self, n: int) -> bytes:
        """Up to ``n`` ready bytes (b"" when none are ready; EOF is :attr:`at_eof`)."""
        data = self._buf.read(n)
        self.bytes_read += len(data)
        if data:
            self.reader_waiting = False
        self._update_state()
        return data

    def cancel(self) -> None:
        """Discard what is held and whatever arrives later."""
        if self.state is RecvState.CANCELLED:
            return
        buf = self._buf
        target = buf.final_offset if buf.final_offset is not None else buf.highest_end
        buf.skip_to(max(target, buf.read_offset))
        buf.read(-1)
        self.state = RecvState.CANCELLED
        self.reader_waiting = False

    def skip_to(self, offset: int) -> None:
        """Move the read offset forward (bytes before it are discarded, arrived or not).

        Raises:
            ValueError: ``offset`` is behind the read offset, past the final size, or beyond
                2**64-1.
        """
        if not 0 <= offset <= U64_MAX:
            raise ValueError("offset must be within 0 .. 2**64-1")
        self._buf.skip_to(offset)
        self._update_state()

    # --- credit ---------------------------------------------------------------------------------

    def credit_target(self, share: int) -> int:
        """The limit this stream would like: its window (or ``share``, the session's fair
        share, when smaller) past the read offset, never past the final size."""
        target = self._buf.read_offset + min(self.window, share)
        final = self._buf.final_offset
        return target if final is None else min(target, final)

    def wants_credit(self, share: int) -> bool:
        """Whether granting now is worth a frame: less than half the wanted window is left, or
        the writers are stopped at the limit while a reader waits."""
        if self.state is RecvState.CANCELLED:
            return False
        target = self.credit_target(share)
        if target <= self.limit:
            return False
        open_credit = self.limit - self._buf.read_offset
        if open_credit * 2 <= min(self.window, share):
            return True
        return self.reader_waiting and self.limit <= self._buf.contiguous_end

    def raise_fragment_cap(self) -> None:
        """Allow one more out-of-order piece (a dead path's leftovers are taken whatever)."""
        self._buf.max_fragments = max(self._buf.max_fragments, self._buf.fragments + 2)

    def grant(self, limit: int) -> bool:
        """Raise the credit limit to ``limit``; return True when it grew."""
        if limit <= self.limit:
            return False
        self.limit = min(limit, U64_MAX)
        return True


class LogicalStream:
    """One logical stream of a session, both directions (owned by the session core).

    The adapter keeps it as the stream's handle and reads its state; it never changes it (every
    change goes through :class:`~.session.SessionCore`). The id of a stream this side opened
    may change until the peer confirms it (a collision moves it to another id).
    """

    __slots__ = (
        "accepted",
        "error",
        "heard_from",
        "home_path",
        "local",
        "open_attempts",
        "open_state",
        "receiver",
        "retired",
        "sender",
        "stream_id",
        "writer_paths",
    )

    def __init__(
        self,
        stream_id: int,
        *,
        local: bool,
        home_path: int,
        window: int,
        max_fragments: int,
        credit: int | None,
    ) -> None:
        self.stream_id = stream_id
        self.local = local
        #: the path this side writes the stream on: the one it was opened on
        self.home_path = home_path
        #: paths whose peer writes into this stream under credit (the home path, and relay
        #: paths the stream is forwarded to): each is told the credit
        self.writer_paths: set[int] = set()
        #: paths this stream's data arrived on (a relay path among them: a secondary writes it)
        self.heard_from: set[int] = set()
        self.open_state = OpenState.OPENING if local else OpenState.OPEN
        self.open_attempts = 0
        self.error = ""
        self.accepted = local
        self.retired = False
        self.sender = StreamSender(credit=credit)
        self.receiver = StreamReceiver(window, max_fragments)

    def __repr__(self) -> str:
        recv = self.receiver
        return (
            f"<LogicalStream {self.stream_id} {self.open_state.value} path={self.home_path} "
            f"send={self.sender.state.value} recv={recv.state.value} read={recv.read_offset} "
            f"written={self.sender.highest_written}>"
        )

    @property
    def sendable(self) -> bool:
        """Its sender has a frame to hand out now (credit permitting)."""
        return self.sender.sendable

    @property
    def finished(self) -> bool:
        """Both directions are over: the stream can be forgotten."""
        return self.sender.done and self.receiver.finished

    @property
    def failed(self) -> bool:
        return self.open_state is OpenState.REFUSED or self.open_state is OpenState.CLOSED
