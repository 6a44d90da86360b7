"""The KWIK session state machine (sans-IO: no asyncio, no sockets, no clock).

:class:`SessionCore` is to a kwik session what aioquic's ``QuicConnection`` is to a QUIC
connection. Everything that decides *what happens* lives here: logical streams and their ids,
reassembly and back-pressure, path health, relays, acknowledgements and close. The asyncio layer
(``kwik/session.py``) only moves bytes and wakes coroutines.

Driving it:

* **input**: records of each path (:meth:`SessionCore.receive_record`, in arrival order),
  transport facts (:meth:`~SessionCore.on_activity`, :meth:`~SessionCore.on_in_flight`,
  :meth:`~SessionCore.path_terminated`), application calls (:meth:`~SessionCore.open_stream`,
  :meth:`~SessionCore.write`, :meth:`~SessionCore.read`, ...) and time
  (:meth:`~SessionCore.handle_timer` at :meth:`~SessionCore.get_timer`);
* **output**: records to put on a path's transport stream, pulled with
  :meth:`~SessionCore.data_to_send` within the bytes the path may send now, and events
  (:meth:`~SessionCore.next_event`) telling the adapter whom to wake or what to do;
* after any input, the adapter must drain the events, pull the output of
  :meth:`~SessionCore.paths_with_output` and re-arm its timer.

The rules, each tested in ``tests/protocol/test_session.py``:

* **Order.** A path's frames are handled in the order they arrived. A frame that cannot be taken
  now (its stream's window is full, the accept backlog is full, a relay path is congested, the
  path's control output is over budget) is *parked* with every frame after it, and the path
  stops taking records (:meth:`~SessionCore.wants_records` turns False): the transport then
  withholds QUIC credit, which stops the peer. The path resumes (:class:`PathResumed`) once the
  frame fits. Nothing is dropped.
* **Nothing received is lost at close.** When a path ends, whatever it had delivered (parked
  frames included; the transport hands in the records it still holds) goes into the streams
  regardless of budgets: it is already in memory, bounded by the path's receive window. Readers
  get every byte, then EOF or the session's close error.
* **Ids are never reused into a live stream.** Locally opened ids skip ids held locally and ids
  recently retired; an OpenStream for an id held locally is refused (OpenStreamResp failure) and
  the opener retries with its next id; except that the server's stream keeps an id both sides
  open at once (the client's open is refused and moves).
* **Several writers, one stream.** A fin fixes the final size wherever it comes from; data
  beyond ``read_offset + stream_receive_buffer`` waits (its path is parked) instead of failing.
* **Liveness never depends on reading** (see :mod:`.liveness`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from ..config import Config
from ..exceptions import (
    PathError,
    ProtocolViolationError,
    SessionClosedError,
    StreamClosedError,
)
from .acks import AckTracker, ack_ranges_fitting
from .frames import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    RelayDataFrame,
    StreamFrame,
    decode_packet,
    encode_record,
)
from .liveness import Liveness, LivenessAction
from .reassembly import REFUSED, ReceiveBuffer

__all__ = [
    "CLOSE_FAILURE",
    "CLOSE_NORMAL",
    "AddPathAnswered",
    "ClosePath",
    "DialRequested",
    "Event",
    "PathResumed",
    "ProbePath",
    "RelayWritable",
    "SessionCore",
    "SessionTerminated",
    "StreamArrived",
    "StreamReadable",
    "StreamState",
    "StreamWritable",
    "frame_data_limit",
]

#: Application error codes on the QUIC connection (spec §3 "Close").
CLOSE_NORMAL = 0
CLOSE_FAILURE = 1

U64_MAX = (1 << 64) - 1

#: A full Stream packet (headers included) fits one of the worker pool's 64 KiB buffers.
_POOLED_PACKET = 64 * 1024
_PACKET_AND_FRAME_HEADERS = 17 + 26 + 8
#: Largest data payload of a packet an Ack may ride along with.
_PIGGYBACK_LIMIT = 32 * 1024
#: Times a refused OpenStream is retried under a new id before the stream is given up.
_MAX_OPEN_ATTEMPTS = 16
#: Finished streams whose final offsets a session remembers (late frames are dropped, and
#: their ids are not reused by this side for a while).
_RETIRED_MEMORY = 4096
#: Longest AddPath address accepted: a DNS name (253) with brackets, a colon and a port.
MAX_ADDRESS_LENGTH = 264
#: Ended paths whose counters the core keeps for statistics.
_ENDED_MEMORY = 16
#: Encoded AddPathResp record without its address: prefixes 8, header 17, frame 17.
_ADD_PATH_RESP_RECORD = 8 + 17 + 17
#: Control bytes a path may send beyond its data budget (acks and answers keep flowing when
#: stream data fills the window).
_CONTROL_SLACK = 64 * 1024


def frame_data_limit(config: Config) -> int:
    """Most data bytes kwik puts in one Stream or RelayData frame."""
    return min(config.max_stream_frame_data, _POOLED_PACKET - _PACKET_AND_FRAME_HEADERS)


# --- events ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamArrived:
    """The peer opened a stream; it waits for :meth:`SessionCore.accept_stream`."""

    stream: StreamState


@dataclass(slots=True)
class StreamReadable:
    """A stream has data, EOF or an error to report to its reader."""

    stream: StreamState


@dataclass(slots=True)
class StreamWritable:
    """A stream's send buffer went under its limit, or its open was confirmed or refused."""

    stream: StreamState


@dataclass(slots=True)
class PathResumed:
    """A parked path takes records again: the transport must feed it what it holds."""

    path_id: int


@dataclass(slots=True)
class ProbePath:
    """Send a QUIC PING on the path (liveness evidence that needs no application)."""

    path_id: int


@dataclass(slots=True)
class ClosePath:
    """Close the path's QUIC connection with this application error code."""

    path_id: int
    code: int
    reason: str


@dataclass(slots=True)
class DialRequested:
    """Client: the primary asked for a path to ``address``; dial it and report with
    :meth:`SessionCore.add_path_result`."""

    address: str


@dataclass(slots=True)
class AddPathAnswered:
    """Server: the client answered AddPath(``address``): its path id, 0 when refused."""

    address: str
    path_id: int


@dataclass(slots=True)
class RelayWritable:
    """Server: a relay's outgoing buffer went under its limit (or the relay went away)."""

    path_id: int


@dataclass(slots=True)
class SessionTerminated:
    """The session is closed; the error every later call raises."""

    error: SessionClosedError


Event = (
    StreamArrived
    | StreamReadable
    | StreamWritable
    | PathResumed
    | ProbePath
    | ClosePath
    | DialRequested
    | AddPathAnswered
    | RelayWritable
    | SessionTerminated
)


# --- state ----------------------------------------------------------------------------------------


class OpenState(Enum):
    OPENING = "opening"  # OpenStream sent, no answer yet
    OPEN = "open"
    REFUSED = "refused"  # the peer never accepted an id for it


class StreamState:
    """One logical stream, both directions (owned by :class:`SessionCore`).

    The adapter keeps a reference to it as the stream's handle: the id of a locally opened
    stream may change until the peer confirms it.
    """

    __slots__ = (
        "accepted",
        "bytes_read",
        "bytes_written",
        "error",
        "final_offset",
        "fin_sent",
        "highest_written",
        "local",
        "open_attempts",
        "open_path",
        "open_state",
        "read_cancelled",
        "reader_waiting",
        "recv",
        "retired",
        "segments",
        "send_buffered",
        "stream_id",
        "write_closed",
        "write_offset",
    )

    def __init__(self, stream_id: int, *, local: bool, window: int, fragments: int) -> None:
        self.stream_id = stream_id
        self.local = local
        self.open_state = OpenState.OPENING if local else OpenState.OPEN
        self.open_path = 0
        self.open_attempts = 0
        self.error: str = ""
        self.accepted = local
        self.recv = ReceiveBuffer(window, fragments)
        self.read_cancelled = False
        self.reader_waiting = False  # read() found nothing: the application waits for data
        # send side: [offset, bytes] segments not yet handed to a path
        self.segments: deque[list[int | bytearray]] = deque()
        self.send_buffered = 0
        self.write_offset = 0
        self.highest_written = 0
        self.write_closed = False
        self.fin_sent = False
        self.final_offset: int | None = None
        self.retired = False
        self.bytes_read = 0
        self.bytes_written = 0

    def __repr__(self) -> str:
        return (
            f"<StreamState {self.stream_id} {self.open_state.value} "
            f"read={self.recv.read_offset} written={self.highest_written}"
            f"{' fin-sent' if self.fin_sent else ''}{' eof' if self.recv.at_eof else ''}>"
        )

    @property
    def has_unsent(self) -> bool:
        return bool(self.segments) or (self.write_closed and not self.fin_sent)


@dataclass(slots=True)
class _Relayed:
    """Client side: one logical stream forwarded to one relay path."""

    offset: int = 0
    confirmed: bool = False
    pending: deque[bytes] | None = None
    pending_bytes: int = 0


class _Path:
    """What the core knows of one path."""

    __slots__ = (
        "acks",
        "closing",
        "control",
        "dialed_as",
        "control_bytes",
        "echo_pending",
        "liveness",
        "next_packet_number",
        "parked",
        "path_id",
        "paused",
        "primary",
        "stats",
        "terminated",
    )

    def __init__(self, path_id: int, primary: bool, config: Config, now: float) -> None:
        self.path_id = path_id
        self.primary = primary
        self.dialed_as = ""
        self.acks = AckTracker(
            config.ack_interval,
            config.ack_threshold,
            max_ranges=config.max_ack_ranges,
            max_record_size=config.max_record_size,
        )
        self.liveness = Liveness(
            interval=config.heartbeat_interval,
            miss_threshold=config.heartbeat_miss_threshold,
            stall_timeout=config.stall_timeout,
            now=now,
        )
        self.next_packet_number = 1
        self.control: deque[bytes] = deque()
        self.control_bytes = 0
        self.echo_pending = False
        # frames waiting to be handled, in order (data copied)
        self.parked: deque[Frame] = deque()
        self.paused = False
        self.closing = False  # its connection is being closed: nothing more to send
        self.terminated = False
        self.stats = PathCounters()


@dataclass(slots=True)
class PathCounters:
    """Per-path counters kept by the core."""

    packets_sent: int = 0
    packets_received: int = 0
    duplicates_received: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    pings_sent: int = 0
    pings_received: int = 0
    pongs_received: int = 0
    heartbeat_rtt: float | None = None
    ping_sent_at: float | None = None


def _copy(frame: Frame) -> Frame:
    """A frame whose data no longer refers to the caller's (reused) buffer."""
    if isinstance(frame, StreamFrame) and not isinstance(frame.data, bytes):
        return StreamFrame(frame.stream_id, frame.offset, frame.fin, bytes(frame.data))
    if isinstance(frame, RelayDataFrame) and not isinstance(frame.data, bytes):
        return RelayDataFrame(frame.relay_path_id, frame.dest_stream_id, bytes(frame.data))
    return frame


class SessionCore:
    """The state machine of one KWIK session (see the module docstring).

    Args:
        is_client: the dialing side (it pings, dials relays, merges their data).
        config: limits and timers; never mutated.
    """

    def __init__(self, *, is_client: bool, config: Config) -> None:
        self.is_client = is_client
        self.config = config
        self._max_frame = frame_data_limit(config)
        self._paths: dict[int, _Path] = {}
        self._ended_counters: dict[int, PathCounters] = {}
        self._primary: _Path | None = None
        self._next_path_id = 1
        self._events: deque[Event] = deque()
        self._with_output: dict[int, None] = {}  # path ids with records to pull, in order
        # streams
        self._streams: dict[int, StreamState] = {}  # established (and remote pending accept)
        self._opening: dict[int, StreamState] = {}  # local, waiting for OpenStreamResp
        self._retired: dict[int, int] = {}  # finished id -> final offset, oldest first
        self._accept_queue: deque[StreamState] = deque()
        self._remote_open = 0  # peer-opened streams held (limit: max_streams)
        self._next_stream_id = 1
        self._sendable: dict[StreamState, None] = {}  # streams with output, round-robin
        self._recv_buffered = 0  # bytes held by every stream's reassembly (session budget)
        # relays, server side: outgoing RelayData per relay path id
        self._relay_out: dict[int, deque[tuple[int, bytes]]] = {}
        self._relay_out_bytes: dict[int, int] = {}
        self._relay_asked: dict[str, int] = {}  # address -> AddPath frames awaiting an answer
        # relays, client side
        self._relayed: dict[tuple[int, int], _Relayed] = {}
        self._relay_backlog: dict[int, int] = {}  # relay path id -> forwarded bytes unsent
        self._dialing: dict[str, list[int]] = {}  # address -> requesting path ids
        # close
        self.closing = False
        self.error: SessionClosedError | None = None
        #: set whenever a deadline may have moved; :meth:`get_timer` clears it
        self.timer_dirty = True
        self._in_retry = False

    # --- events and output ------------------------------------------------------------------

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def idle(self) -> bool:
        """Nothing for the adapter to do: no event, no output, and :meth:`get_timer` cannot have
        moved earlier since :meth:`get_timer` was last called."""
        return not self._events and not self._with_output and not self.timer_dirty

    def next_event(self) -> Event | None:
        """The next event for the adapter, or None."""
        return self._events.popleft() if self._events else None

    def paths_with_output(self) -> list[int]:
        """Ids of the paths that have records to pull (and clears the list)."""
        ids = list(self._with_output)
        self._with_output.clear()
        return ids

    def _mark_output(self, path: _Path) -> None:
        self._with_output[path.path_id] = None

    def _queue_control(self, path: _Path, frames: list[Frame]) -> None:
        if path.terminated or path.closing:
            return
        record = self._encode(path, frames)
        path.control.append(record)
        path.control_bytes += len(record)
        self._mark_output(path)

    def _encode(self, path: _Path, frames: list[Frame]) -> bytes:
        number = path.next_packet_number
        path.next_packet_number += 1
        path.stats.packets_sent += 1
        return encode_record(number, frames)

    def data_to_send(self, path_id: int, budget: int, now: float) -> list[bytes]:
        """Records for path ``path_id``, at most about ``budget`` bytes of stream data.

        Control records (answers, acks, pings) come first and may use a little more than
        ``budget`` so they keep flowing while stream data fills the window; they wait once the
        path cannot send at all. Returns [] for an unknown or terminated path.
        """
        path = self._paths.get(path_id)
        if path is None or path.terminated or path.closing:
            return []
        self.timer_dirty = True  # acknowledgements go out, their deadline moves
        out: list[bytes] = []
        room = budget
        control_room = budget + _CONTROL_SLACK
        if path.echo_pending:
            path.echo_pending = False
            self._queue_control(path, [PingFrame()])
        while path.control and control_room > 0:
            record = path.control.popleft()
            path.control_bytes -= len(record)
            out.append(record)
            control_room -= len(record)
            room -= len(record)
        if path.acks.ack_due(now):
            # always: an ack is small and its timer must not fire again and again
            ack = path.acks.build_ack()
            if ack is not None:
                path.stats.acks_sent += 1
                record = self._encode(path, [ack])
                out.append(record)
                room -= len(record)
        if room > 0:
            if path is self._primary and not self.error:
                room = self._send_streams(path, room, out)
                room = self._send_relay_data(path, room, out)
            elif self.is_client:
                room = self._send_forwarded(path, room, out)
        if any(p.parked for p in self._paths.values()):
            # control output went down: a parked path may go on (this one, or a client's
            # primary whose RelayData waits for this relay path's control budget)
            self._retry_parked()
        return out

    def _data_record(self, path: _Path, frame: Frame, payload: int) -> bytes:
        frames = [frame]
        # an Ack rides along only if the largest one the tracker builds fits the record with
        # the data frame (header <= 26 bytes); otherwise it goes alone, on its timer
        fits = ack_ranges_fitting(self.config.max_record_size, payload + 26)
        if (
            payload <= _PIGGYBACK_LIMIT
            and path.acks.worth_piggybacking
            and fits >= path.acks.max_ranges
        ):
            ack = path.acks.build_ack()
            if ack is not None:
                path.stats.acks_sent += 1
                frames.append(ack)
        return self._encode(path, frames)

    def _send_streams(self, path: _Path, room: int, out: list[bytes]) -> int:
        sendable = self._sendable
        max_frame = self._max_frame
        limit = self.config.stream_send_buffer
        while sendable and room > 0:
            stream = next(iter(sendable))
            del sendable[stream]
            segments = stream.segments
            if segments:
                segment = segments[0]
                offset = segment[0]
                buf = segment[1]
                assert isinstance(offset, int) and isinstance(buf, bytearray)
                n = min(len(buf), max_frame)
                chunk = bytes(buf[:n]) if n < len(buf) else bytes(buf)
                end = offset + n
                last = len(segments) == 1 and n == len(buf)
                fin = stream.write_closed and last and end == stream.final_offset
                was_over = stream.send_buffered > limit
                record = self._data_record(
                    path, StreamFrame(stream.stream_id, offset, fin, chunk), n
                )
                if n < len(buf):
                    del buf[:n]
                    segment[0] = end
                else:
                    segments.popleft()
                stream.send_buffered -= n
                if fin:
                    stream.fin_sent = True
                out.append(record)
                room -= len(record)
                if was_over and stream.send_buffered <= limit:
                    self._events.append(StreamWritable(stream))
            elif stream.write_closed and not stream.fin_sent:
                assert stream.final_offset is not None
                record = self._data_record(
                    path, StreamFrame(stream.stream_id, stream.final_offset, True, b""), 0
                )
                stream.fin_sent = True
                out.append(record)
                room -= len(record)
            if stream.has_unsent:
                sendable[stream] = None  # round-robin: to the back
            elif stream.fin_sent:
                self._maybe_retire(stream)
        return room

    def _send_relay_data(self, path: _Path, room: int, out: list[bytes]) -> int:
        limit = self.config.stream_send_buffer
        for relay_id, queue in self._relay_out.items():
            before = self._relay_out_bytes[relay_id]
            while queue and room > 0:
                stream_id, chunk = queue.popleft()
                self._relay_out_bytes[relay_id] -= len(chunk)
                record = self._data_record(
                    path, RelayDataFrame(relay_id, stream_id, chunk), len(chunk)
                )
                out.append(record)
                room -= len(record)
            if before > limit >= self._relay_out_bytes[relay_id]:
                self._events.append(RelayWritable(relay_id))
        return room

    def _send_forwarded(self, path: _Path, room: int, out: list[bytes]) -> int:
        """Client: data the primary relayed, now sent on relay path ``path`` as Stream frames."""
        sent = False
        for (path_id, stream_id), relayed in self._relayed.items():
            if path_id != path.path_id or not relayed.confirmed or not relayed.pending:
                continue
            while relayed.pending and room > 0:
                chunk = relayed.pending.popleft()
                relayed.pending_bytes -= len(chunk)
                self._relay_backlog[path_id] -= len(chunk)
                record = self._data_record(
                    path, StreamFrame(stream_id, relayed.offset, False, chunk), len(chunk)
                )
                relayed.offset += len(chunk)
                out.append(record)
                room -= len(record)
                sent = True
        if sent:
            self._retry_parked()
        return room

    # --- paths -------------------------------------------------------------------------------

    def add_path(self, *, primary: bool, now: float, dialed_as: str = "") -> int:
        """Register a new path (its QUIC handshake is done); return its id.

        Client ids count from 1 (spec §3); a server session has one path, id 1.
        """
        path_id = self._next_path_id
        self._next_path_id += 1
        self.timer_dirty = True
        path = _Path(path_id, primary, self.config, now)
        path.dialed_as = dialed_as
        self._paths[path_id] = path
        if primary:
            self._primary = path
        if self.is_client:
            # the dialer sends a first record at once: a server learns of a path from it
            self._send_ping(path, now)
        return path_id

    def _send_ping(self, path: _Path, now: float) -> None:
        path.stats.pings_sent += 1
        if path.stats.ping_sent_at is None:
            path.stats.ping_sent_at = now
        self._queue_control(path, [PingFrame()])

    def path_ids(self) -> list[int]:
        """Ids of the paths not terminated yet."""
        return [p.path_id for p in self._paths.values() if not p.terminated]

    def is_primary(self, path_id: int) -> bool:
        path = self._paths.get(path_id)
        return path is not None and path is self._primary

    def counters(self, path_id: int) -> PathCounters | None:
        """A path's counters; those of the last ended paths stay available."""
        path = self._paths.get(path_id)
        return path.stats if path is not None else self._ended_counters.get(path_id)

    def wants_records(self, path_id: int) -> bool:
        """Whether the transport may hand this path's next record in now."""
        path = self._paths.get(path_id)
        return path is not None and not path.terminated and not path.parked

    def on_activity(self, path_id: int, now: float) -> None:
        """A datagram from the path's peer was received (liveness evidence)."""
        path = self._paths.get(path_id)
        if path is not None:
            path.liveness.on_activity(now)

    def on_in_flight(self, path_id: int, in_flight: bool, pto: float, now: float) -> bool:
        """The transport's view after transmitting: bytes in flight or not, and QUIC's PTO.

        Returns True when :meth:`get_timer` may have changed (the path went busy or idle).
        """
        path = self._paths.get(path_id)
        if path is None:
            return False
        liveness = path.liveness
        was_busy = liveness.busy
        liveness.on_in_flight(in_flight, pto, now)
        if liveness.busy != was_busy:
            self.timer_dirty = True
            return True
        return False

    def receive_record(
        self, path_id: int, record: bytes | bytearray | memoryview, now: float
    ) -> None:
        """Handle one record (a packet body) of path ``path_id``, in arrival order.

        The record's bytes are not kept (what must wait is copied). A malformed record fails
        the path with a protocol violation (:class:`ClosePath`, code 1).
        """
        path = self._paths.get(path_id)
        if path is None:
            return
        try:
            packet = decode_packet(record)
        except ProtocolViolationError as exc:
            self.fail_path(path_id, f"protocol violation: {exc}", now)
            return
        self.timer_dirty = True
        stats = path.stats
        stats.packets_received += 1
        if not path.acks.on_packet(packet.packet_number, packet.ack_eliciting, now):
            stats.duplicates_received += 1
            return
        frames = packet.frames
        # pings are liveness, not ordered work: answered (or counted) on arrival, one echo
        # per packet however many Pings it holds
        for frame in frames:
            if isinstance(frame, PingFrame):
                self._on_ping(path, now)
                break
        if path.parked or path.terminated:
            path.parked.extend(_copy(f) for f in frames)
            return
        try:
            for i, frame in enumerate(frames):
                rest = self._handle(path, frame, force=False)
                if rest is not None:
                    path.parked.append(_copy(rest))
                    path.parked.extend(_copy(f) for f in frames[i + 1 :])
                    path.paused = True
                    break
        except ProtocolViolationError as exc:
            self.fail_path(path_id, f"protocol violation: {exc}", now)
            return
        if path.acks.ack_due(now):
            self._mark_output(path)

    def _on_ping(self, path: _Path, now: float) -> None:
        stats = path.stats
        stats.pings_received += 1
        if path.terminated:
            return
        if self.is_client:
            stats.pongs_received += 1
            if stats.ping_sent_at is not None:
                stats.heartbeat_rtt = now - stats.ping_sent_at
                stats.ping_sent_at = None
        elif not path.echo_pending:
            path.echo_pending = True
            self._mark_output(path)

    def _retry_parked(self) -> None:
        """Handle parked frames of every path while they fit (after something freed room)."""
        if self._in_retry:
            return
        self._in_retry = True
        try:
            for path in list(self._paths.values()):
                if path.parked and not path.terminated:
                    self._drain_parked(path, force=False, now=None)
        finally:
            self._in_retry = False

    def _drain_parked(self, path: _Path, *, force: bool, now: float | None) -> None:
        parked = path.parked
        try:
            while parked:
                rest = self._handle(path, parked[0], force=force)
                if rest is not None:
                    parked[0] = rest
                    return
                parked.popleft()
        except ProtocolViolationError as exc:
            parked.clear()
            if not path.terminated:
                self.fail_path(path.path_id, f"protocol violation: {exc}", now)
            return
        if path.paused and not path.terminated:
            path.paused = False
            self._events.append(PathResumed(path.path_id))

    def fail_path(self, path_id: int, reason: str, now: float | None) -> None:
        """Close the path as failed (code 1), e.g. on a protocol violation; the session goes on
        on its other paths, or closes when it was the primary (spec §3)."""
        path = self._paths.get(path_id)
        if path is None or path.terminated:
            return
        self._events.append(ClosePath(path_id, CLOSE_FAILURE, reason))
        self.path_terminated(path_id, CLOSE_FAILURE, reason, by_peer=False, now=now)

    def path_terminated(
        self, path_id: int, code: int, reason: str, *, by_peer: bool, now: float | None
    ) -> None:
        """The path's connection is gone (or being closed). Call it after handing in every
        record the path still holds: they are handled now, whatever the budgets."""
        path = self._paths.get(path_id)
        if path is None or path.terminated:
            return
        self.timer_dirty = True
        path.terminated = True
        path.control.clear()
        path.control_bytes = 0
        path.echo_pending = False
        self._with_output.pop(path_id, None)
        # what it delivered stays readable: handle it all now (bounded by its receive window)
        self._drain_parked(path, force=True, now=now)
        path.parked.clear()
        del self._paths[path_id]
        # its counters stay readable for a while (the adapter's statistics history)
        self._ended_counters[path_id] = path.stats
        if len(self._ended_counters) > _ENDED_MEMORY:
            del self._ended_counters[next(iter(self._ended_counters))]
        # forwarding to it is over: whatever waited on it goes on
        for key in [k for k in self._relayed if k[0] == path_id]:
            del self._relayed[key]
        self._relay_backlog.pop(path_id, None)
        for address, requesters in self._dialing.items():
            if path_id in requesters:
                self._dialing[address] = [r for r in requesters if r != path_id]
        if self.error is not None:
            return
        if path is self._primary or not self.path_ids():
            # streams are written on the primary path: without it the session cannot go on
            if path is not self._primary:
                reason = f"all paths failed ({reason})"
            self._terminate(SessionClosedError(code, reason or "path closed", remote=by_peer))
        else:
            self._retry_parked()

    # --- timers ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called."""
        self.timer_dirty = False
        deadline: float | None = None
        for path in self._paths.values():
            if path.terminated or path.closing:
                continue
            for candidate in (path.acks.get_timer(), path.liveness.get_timer()):
                if candidate is not None and (deadline is None or candidate < deadline):
                    deadline = candidate
        return deadline

    def handle_timer(self, now: float) -> None:
        """Send due acknowledgements, probe quiet paths, fail silent ones."""
        self.timer_dirty = True
        for path in list(self._paths.values()):
            if path.terminated or path.closing:
                continue
            if path.acks.ack_due(now):
                self._mark_output(path)
            action = path.liveness.handle_timer(now)
            if action is LivenessAction.PROBE or action is LivenessAction.HEARTBEAT:
                self._events.append(ProbePath(path.path_id))
                if action is LivenessAction.HEARTBEAT and self.is_client:
                    self._send_ping(path, now)
            elif action is LivenessAction.FAIL:
                self.fail_path(path.path_id, path.liveness.reason, now)

    # --- frames ------------------------------------------------------------------------------

    def _handle(self, path: _Path, frame: Frame, *, force: bool) -> Frame | None:
        """Handle one frame. Returns None once it is taken, or the frame (or the part of it
        not taken) when it must wait: the path then parks it and every frame after it."""
        if isinstance(frame, StreamFrame):
            return self._on_stream_frame(path, frame, force)
        if isinstance(frame, AckFrame):
            path.stats.acks_received += 1
            return None
        if isinstance(frame, PingFrame):
            return None  # answered on arrival
        if isinstance(frame, OpenStreamFrame):
            return None if self._on_open_stream(path, frame, force) else frame
        if isinstance(frame, OpenStreamRespFrame):
            self._on_open_stream_resp(path, frame)
            return None
        if isinstance(frame, RelayDataFrame):
            return None if self._on_relay_data(path, frame, force) else frame
        if isinstance(frame, AddPathFrame):
            return None if self._on_add_path(path, frame, force) else frame
        if isinstance(frame, AddPathRespFrame):
            self._on_add_path_resp(path, frame)
            return None
        raise ProtocolViolationError(f"unexpected frame {frame!r}")  # pragma: no cover

    def _control_full(self, path: _Path) -> bool:
        return path.control_bytes > self.config.control_buffer

    def _on_stream_frame(self, path: _Path, frame: StreamFrame, force: bool) -> Frame | None:
        stream_id = frame.stream_id
        stream = self._streams.get(stream_id)
        data = frame.data
        offset = frame.offset
        end = offset + len(data)
        if stream is None:
            if stream_id == 0:
                raise ProtocolViolationError("Stream frame for stream id 0")
            if self.error is not None and not force:
                return None
            final = self._retired.get(stream_id)
            if final is not None and end <= final:
                return None  # a late frame of a finished stream (a secondary's FIN, say)
            if self._remote_open >= self.config.max_streams:
                raise ProtocolViolationError(
                    f"stream {stream_id} opened implicitly beyond max_streams "
                    f"({self.config.max_streams})"
                )
            if not force and len(self._accept_queue) >= self.config.stream_backlog:
                return frame
            # a Stream frame for an id never opened is an implicit open (spec §3)
            stream = self._new_remote_stream(stream_id)
        if end > U64_MAX:
            raise ProtocolViolationError("stream offset beyond 2**64-1")
        recv = stream.recv
        recv.check(offset, len(data), frame.fin)
        if stream.read_cancelled:
            # nobody will read: keep only the position, never block the path for it
            if frame.fin:
                recv.receive(end, b"", True)
            if end > recv.read_offset:
                recv.skip_to(end)
            self._after_receive(stream)
            return None
        held = recv.buffered
        if force:
            # a dead path's leftovers: already in memory, bounded by its receive window
            recv.window = max(recv.window, end - recv.read_offset)
            recv.max_fragments = max(recv.max_fragments, recv.fragments + 2)
            recv.receive(offset, data, frame.fin)
            self._recv_buffered += recv.buffered - held
            self._after_receive(stream)
            return None
        limit = recv.read_offset + self.config.stream_receive_buffer
        rest: Frame | None = None
        if end > limit and data:
            if offset >= limit:
                return frame  # entirely beyond the window: wait for the reader
            # take the part within the window; the rest waits for the reader
            keep = limit - offset
            rest = StreamFrame(stream_id, limit, frame.fin, bytes(data[keep:]))
            data = memoryview(data)[:keep]
            fin = False
        else:
            fin = frame.fin
        if (
            data
            and self._recv_buffered + len(data) > self.config.session_receive_buffer
            and not (stream.reader_waiting and offset <= recv.contiguous_end and not recv.readable)
        ):
            # the session's budget is spent: only what a reader waiting on this stream takes at
            # once goes in (so a reader never waits on the budget other streams hold)
            return frame
        if recv.receive(offset, data, fin) == REFUSED:
            return frame  # too many separate pieces: wait until the gaps fill
        self._recv_buffered += recv.buffered - held
        self._after_receive(stream)
        return rest

    def _after_receive(self, stream: StreamState) -> None:
        recv = stream.recv
        if recv.readable or recv.complete:
            self._events.append(StreamReadable(stream))
        if stream.read_cancelled and recv.at_eof:
            self._maybe_retire(stream)

    def _new_remote_stream(self, stream_id: int) -> StreamState:
        self._retired.pop(stream_id, None)
        stream = StreamState(
            stream_id,
            local=False,
            window=self._window(),
            fragments=self.config.max_stream_fragments,
        )
        self._streams[stream_id] = stream
        self._remote_open += 1
        self._accept_queue.append(stream)
        self._events.append(StreamArrived(stream))
        return stream

    def _window(self) -> int:
        # the reassembly's hard cap; only a dead path's leftovers may go beyond it (forced)
        return self.config.stream_receive_buffer

    def _on_open_stream(self, path: _Path, frame: OpenStreamFrame, force: bool) -> bool:
        stream_id = frame.stream_id
        if stream_id == 0:
            raise ProtocolViolationError("OpenStream for stream id 0")
        if path.terminated:
            return True  # nobody to answer; a stream that was never confirmed carries nothing
        if not force and self._control_full(path):
            return False
        held = stream_id in self._streams or (stream_id in self._opening and not self.is_client)
        if held:
            # never merge a new stream into one still held here: the opener moves to another id
            # (and on a collision the server's own stream keeps the id, spec §3)
            self._queue_control(path, [OpenStreamRespFrame(stream_id, False)])
            return True
        if self.error is not None or self.closing or self._remote_open >= self.config.max_streams:
            self._queue_control(path, [OpenStreamRespFrame(stream_id, False)])
            return True
        if not force and len(self._accept_queue) >= self.config.stream_backlog:
            return False
        self._new_remote_stream(stream_id)
        self._queue_control(path, [OpenStreamRespFrame(stream_id, True)])
        return True

    def _on_open_stream_resp(self, path: _Path, frame: OpenStreamRespFrame) -> None:
        relayed = self._relayed.get((path.path_id, frame.stream_id))
        if relayed is not None and not relayed.confirmed:
            self._on_relay_open_resp(path, frame, relayed)
            return
        stream = self._opening.get(frame.stream_id)
        if stream is None or stream.open_path != path.path_id:
            return  # not ours, or an answer on another path than the one that asked: ignored
        del self._opening[frame.stream_id]
        # the id may have been taken meanwhile by a stream the peer opened implicitly (a Stream
        # frame): never replace it, move to another id as for a refusal
        if frame.success and frame.stream_id not in self._streams:
            stream.open_state = OpenState.OPEN
            self._streams[stream.stream_id] = stream
            if stream.has_unsent:
                self._sendable[stream] = None
                if self._primary is not None:
                    self._mark_output(self._primary)
            self._events.append(StreamWritable(stream))
            return
        if stream.open_attempts >= _MAX_OPEN_ATTEMPTS or self.error is not None:
            attempts = stream.open_attempts
            self._refuse(stream, f"the peer refused to open the stream ({attempts} ids)")
            return
        self._send_open(stream)

    def _refuse(self, stream: StreamState, reason: str) -> None:
        stream.open_state = OpenState.REFUSED
        stream.error = reason
        stream.segments.clear()
        stream.send_buffered = 0
        stream.write_closed = True
        self._sendable.pop(stream, None)
        self._events.append(StreamWritable(stream))
        self._events.append(StreamReadable(stream))

    def _on_relay_data(self, path: _Path, frame: RelayDataFrame, force: bool) -> bool:
        if not self.is_client or path is not self._primary:
            return True  # only a client forwards, and only for its primary
        if frame.dest_stream_id == 0:
            raise ProtocolViolationError("RelayData for stream id 0")
        target = self._paths.get(frame.relay_path_id)
        if target is None or target.terminated or target is path:
            return True  # no such relay path (any more): nothing to forward to
        key = (target.path_id, frame.dest_stream_id)
        backlog = self._relay_backlog.get(target.path_id, 0)
        if not force and backlog >= self.config.relay_buffer:
            return False  # the relay path is slow: the primary waits for it
        relayed = self._relayed.get(key)
        if relayed is None:
            if not force and self._control_full(target):
                # its OpenStream would go over the relay path's control budget (empty
                # RelayData frames cost no relay_buffer): the primary waits for the relay
                return False
            relayed = self._relayed[key] = _Relayed(pending=deque())
            self._queue_control(target, [OpenStreamFrame(frame.dest_stream_id)])
        assert relayed.pending is not None
        chunk = bytes(frame.data)
        relayed.pending.append(chunk)
        relayed.pending_bytes += len(chunk)
        self._relay_backlog[target.path_id] = backlog + len(chunk)
        if relayed.confirmed:
            self._mark_output(target)
        return True

    def _on_relay_open_resp(
        self, path: _Path, frame: OpenStreamRespFrame, relayed: _Relayed
    ) -> None:
        key = (path.path_id, frame.stream_id)
        if not frame.success:
            # the secondary would not take the stream: what was relayed for it is dropped
            del self._relayed[key]
            self._relay_backlog[path.path_id] = (
                self._relay_backlog.get(path.path_id, 0) - relayed.pending_bytes
            )
            self._retry_parked()
            return
        relayed.confirmed = True
        self._mark_output(path)

    def _on_add_path(self, path: _Path, frame: AddPathFrame, force: bool) -> bool:
        if len(frame.address) > MAX_ADDRESS_LENGTH:
            # no "host:port" is this long, and the answer (which echoes it) might not fit a
            # record: a peer sending one is broken or hostile
            raise ProtocolViolationError(
                f"AddPath address of {len(frame.address)} characters (at most {MAX_ADDRESS_LENGTH})"
            )
        """Returns False when the frame must wait: its answer would go over the path's
        control budget (as for OpenStream, a peer that does not read stops getting answers)."""
        address = frame.address
        if not self.is_client or path.terminated:
            return True
        if not force and self._control_full(path):
            return False
        if path is not self._primary:
            self._queue_control(path, [AddPathRespFrame(0, address)])
            return True
        for existing in self._paths.values():
            if existing.dialed_as == address and not existing.primary and not existing.terminated:
                self._queue_control(path, [AddPathRespFrame(existing.path_id, address)])
                return True
        requesters = self._dialing.get(address)
        if requesters is not None:
            # a duplicated AddPath never dials twice, but each is answered when the dial ends,
            # all at once: beyond control_buffer of such answers, the frame waits
            answer = _ADD_PATH_RESP_RECORD + len(address.encode())
            if not force and len(requesters) * answer > self.config.control_buffer:
                return False
            requesters.append(path.path_id)
            return True
        if self.error is not None or self.closing:
            self._queue_control(path, [AddPathRespFrame(0, address)])
            return True
        if len(self.path_ids()) + len(self._dialing) >= self.config.max_paths:
            self._queue_control(path, [AddPathRespFrame(0, address)])
            return True
        self._dialing[address] = [path.path_id]
        self._events.append(DialRequested(address))
        return True

    def add_path_result(self, address: str, path_id: int) -> None:
        """Client: the dial that :class:`DialRequested` asked for ended; ``path_id`` is the new
        path's id (see :meth:`add_path`) or 0 when it was refused or failed."""
        requesters = self._dialing.pop(address, [])
        for requester_id in requesters:
            requester = self._paths.get(requester_id)
            if requester is not None:
                self._queue_control(requester, [AddPathRespFrame(path_id, address)])

    def _on_add_path_resp(self, path: _Path, frame: AddPathRespFrame) -> None:
        if self.is_client:
            return
        asked = self._relay_asked.get(frame.address, 0)
        if asked <= 0:
            return
        if asked == 1:
            del self._relay_asked[frame.address]
        else:
            self._relay_asked[frame.address] = asked - 1
        if frame.path_id:
            self._relay_out.setdefault(frame.path_id, deque())
            self._relay_out_bytes.setdefault(frame.path_id, 0)
        self._events.append(AddPathAnswered(frame.address, frame.path_id))

    # --- application: streams --------------------------------------------------------------

    def _check_open(self) -> None:
        if self.error is not None:
            raise SessionClosedError(self.error.code, self.error.reason, self.error.remote)
        if self.closing:
            raise SessionClosedError(CLOSE_NORMAL, "the session is closing", remote=False)

    def _allocate_stream_id(self) -> int:
        stream_id = self._next_stream_id
        held = (self._streams, self._opening, self._retired)
        while any(stream_id in ids for ids in held):
            stream_id += 1
        if stream_id > U64_MAX:
            raise StreamClosedError("stream ids exhausted")
        self._next_stream_id = stream_id + 1
        return stream_id

    def open_stream(self) -> StreamState:
        """Open a stream: OpenStream goes out on the primary path; its data waits for the
        peer's confirmation (:class:`StreamWritable` tells when it is open or refused).

        Raises:
            SessionClosedError: the session is closed or closing, or has no primary path.
        """
        self._check_open()
        if self._primary is None or self._primary.terminated:
            raise SessionClosedError(CLOSE_FAILURE, "no active path", remote=False)
        stream = StreamState(
            0, local=True, window=self._window(), fragments=self.config.max_stream_fragments
        )
        self._send_open(stream)
        return stream

    def _send_open(self, stream: StreamState) -> None:
        primary = self._primary
        assert primary is not None
        stream.stream_id = self._allocate_stream_id()
        stream.open_attempts += 1
        stream.open_path = primary.path_id
        self._opening[stream.stream_id] = stream
        self._queue_control(primary, [OpenStreamFrame(stream.stream_id)])

    def forget_opening(self, stream: StreamState) -> None:
        """The application gave up waiting for the stream's confirmation: drop it."""
        if self._opening.get(stream.stream_id) is stream:
            del self._opening[stream.stream_id]
            self._refuse(stream, "open_stream_sync timed out")

    def accept_stream(self) -> StreamState | None:
        """The next stream the peer opened, in arrival order, or None."""
        if not self._accept_queue:
            return None
        stream = self._accept_queue.popleft()
        stream.accepted = True
        if any(p.parked for p in self._paths.values()):
            self._retry_parked()
        return stream

    @property
    def streams_pending_accept(self) -> int:
        return len(self._accept_queue)

    @property
    def open_streams(self) -> int:
        return len(self._streams) + len(self._opening)

    def read(self, stream: StreamState, n: int) -> bytes | None:
        """Up to ``n`` bytes of ``stream``; b"" at EOF; None when the reader must wait.

        Raises:
            StreamClosedError: reading was cancelled, or the stream was refused.
            SessionClosedError: the session closed and nothing is left to read.
        """
        if stream.open_state is OpenState.REFUSED:
            raise StreamClosedError(f"stream refused: {stream.error}")
        if stream.read_cancelled:
            raise StreamClosedError(f"reading stream {stream.stream_id} was cancelled")
        recv = stream.recv
        stream.reader_waiting = False
        if recv.readable:
            held = recv.buffered
            data = recv.read(n)
            self._recv_buffered -= held - recv.buffered
            stream.bytes_read += len(data)
            self._after_read(stream)
            return data
        if recv.at_eof:
            self._after_read(stream)
            return b""
        if self.error is not None:
            raise SessionClosedError(self.error.code, self.error.reason, self.error.remote)
        stream.reader_waiting = True
        if any(p.parked for p in self._paths.values()):
            self._retry_parked()  # a frame waiting on the session budget may be its data
        return None

    def _after_read(self, stream: StreamState) -> None:
        if stream.recv.at_eof:
            self._maybe_retire(stream)
        if any(p.parked for p in self._paths.values()):
            self._retry_parked()

    def readable(self, stream: StreamState) -> bool:
        """Whether :meth:`read` would return (data, EOF or an error) without waiting."""
        return (
            stream.recv.readable > 0
            or stream.recv.at_eof
            or stream.read_cancelled
            or stream.open_state is OpenState.REFUSED
            or self.error is not None
        )

    def cancel_read(self, stream: StreamState) -> None:
        """Discard what is buffered and whatever arrives later for ``stream``."""
        if stream.read_cancelled:
            return
        stream.read_cancelled = True
        recv = stream.recv
        held = recv.buffered
        target = recv.highest_end
        if recv.final_offset is not None:
            target = recv.final_offset
        recv.skip_to(max(target, recv.read_offset))
        recv.read(-1)
        self._recv_buffered -= held - recv.buffered
        self._events.append(StreamReadable(stream))
        if recv.at_eof:
            self._maybe_retire(stream)
        self._retry_parked()

    def skip_to(self, stream: StreamState, offset: int) -> None:
        """Move ``stream``'s read offset forward (see ``Stream.set_read_offset``)."""
        if not 0 <= offset <= U64_MAX:
            raise ValueError("offset must be within 0 .. 2**64-1")
        recv = stream.recv
        held = recv.buffered
        recv.skip_to(offset)
        self._recv_buffered -= held - recv.buffered
        self._events.append(StreamReadable(stream))
        self._after_read(stream)

    def set_write_offset(self, stream: StreamState, offset: int) -> None:
        if not 0 <= offset <= U64_MAX:
            raise ValueError("offset must be within 0 .. 2**64-1")
        if stream.write_closed:
            raise StreamClosedError(f"stream {stream.stream_id} is closed for writing")
        stream.write_offset = offset

    def write(self, stream: StreamState, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data`` at the stream's write offset (sent once the path has room).

        Raises:
            StreamClosedError: the stream is closed for writing or was refused.
            SessionClosedError: the session is closed or closing.
            ValueError: the data would end past offset 2**64-1.
        """
        if stream.open_state is OpenState.REFUSED:
            raise StreamClosedError(f"stream refused: {stream.error}")
        if stream.write_closed:
            raise StreamClosedError(f"stream {stream.stream_id} is closed for writing")
        self._check_open()
        size = len(data)
        if not size:
            return
        offset = stream.write_offset
        if offset + size > U64_MAX:
            raise ValueError("writing past offset 2**64-1")
        segments = stream.segments
        last = segments[-1] if segments else None
        if last is not None:
            last_offset, last_buf = last
            assert isinstance(last_offset, int) and isinstance(last_buf, bytearray)
            if last_offset + len(last_buf) == offset:
                last_buf += data
            else:
                segments.append([offset, bytearray(data)])
        else:
            segments.append([offset, bytearray(data)])
        stream.send_buffered += size
        stream.write_offset = offset + size
        if stream.write_offset > stream.highest_written:
            stream.highest_written = stream.write_offset
        stream.bytes_written += size
        self._schedule_send(stream)

    def _schedule_send(self, stream: StreamState) -> None:
        if stream.open_state is OpenState.OPEN and self._primary is not None:
            self._sendable[stream] = None
            self._mark_output(self._primary)

    def send_buffered(self, stream: StreamState) -> int:
        return stream.send_buffered

    def close_stream(self, stream: StreamState, *, fin: bool = True) -> None:
        """Finish the sending side. ``fin=True`` sends FIN at the final offset (the highest of
        every byte written and the write offset); ``fin=False`` ends this writer's part without
        a FIN (another writer sends it, spec §3 "Several writers, one stream"). Idempotent."""
        if stream.write_closed:
            return
        stream.write_closed = True
        if not fin:
            stream.fin_sent = True  # nothing to send beyond the data
            if not stream.segments:
                self._sendable.pop(stream, None)
                self._maybe_retire(stream)
            return
        final = max(stream.highest_written, stream.write_offset)
        stream.final_offset = final
        if self.error is not None or stream.open_state is OpenState.REFUSED:
            return
        self._schedule_send(stream)

    def _maybe_retire(self, stream: StreamState) -> None:
        """Forget a stream finished both ways (its id may be used again by the peer)."""
        if stream.retired or not stream.fin_sent or stream.segments:
            return
        if not stream.recv.at_eof:
            return
        if self._streams.get(stream.stream_id) is not stream:
            return
        stream.retired = True
        del self._streams[stream.stream_id]
        self._sendable.pop(stream, None)
        if not stream.local:
            self._remote_open -= 1
        retired = self._retired
        retired[stream.stream_id] = stream.recv.read_offset
        if len(retired) > _RETIRED_MEMORY:
            del retired[next(iter(retired))]

    # --- application: relays (server) -------------------------------------------------------

    def request_relay(self, address: str) -> None:
        """Server: ask the client (on the primary path) to dial ``address``; the answer comes
        as :class:`AddPathAnswered`."""
        self._check_open()
        if self.is_client:
            raise PathError("add_relay is for server sessions; the client dials what they ask")
        primary = self._primary
        if primary is None or primary.terminated:
            raise SessionClosedError(CLOSE_FAILURE, "no active path", remote=False)
        self._relay_asked[address] = self._relay_asked.get(address, 0) + 1
        self._queue_control(primary, [AddPathFrame(address)])

    def cancel_relay_request(self, address: str) -> None:
        """Server: stop waiting for an answer to an AddPath (timed out)."""
        asked = self._relay_asked.get(address, 0)
        if asked <= 1:
            self._relay_asked.pop(address, None)
        else:
            self._relay_asked[address] = asked - 1

    def relay_send(
        self, relay_path_id: int, stream_id: int, data: bytes | bytearray | memoryview
    ) -> None:
        """Server: queue RelayData frames asking the client to forward ``data`` to the relay's
        logical stream ``stream_id``.

        Raises:
            PathError: no such relay (never added, or removed).
            SessionClosedError: the session is closed or closing.
        """
        self._check_open()
        queue = self._relay_out.get(relay_path_id)
        if queue is None:
            raise PathError(f"no relay with path id {relay_path_id}")
        if not 1 <= stream_id <= U64_MAX:
            raise ValueError("stream_id must be within 1 .. 2**64-1")
        view = memoryview(data).cast("B")
        step = self._max_frame
        for start in range(0, len(view), step):
            chunk = bytes(view[start : start + step])
            queue.append((stream_id, chunk))
            self._relay_out_bytes[relay_path_id] += len(chunk)
        if self._primary is not None:
            self._mark_output(self._primary)

    def relay_buffered(self, relay_path_id: int) -> int | None:
        """Server: bytes queued for a relay and not handed to the path yet (None: no relay)."""
        return self._relay_out_bytes.get(relay_path_id)

    def remove_relay(self, relay_path_id: int) -> bool:
        """Server: stop using a relay; what was queued for it and not sent is dropped."""
        if relay_path_id not in self._relay_out:
            return False
        del self._relay_out[relay_path_id]
        del self._relay_out_bytes[relay_path_id]
        self._events.append(RelayWritable(relay_path_id))
        return True

    # --- close -------------------------------------------------------------------------------

    def has_unsent(self) -> bool:
        """Whether written data (or a FIN, or queued relay data) still waits for a path."""
        if any(s.has_unsent for s in self._sendable):
            return True
        if any(s.has_unsent for s in self._opening.values()):
            return True
        if any(q for q in self._relay_out.values()):
            return True
        return any(p.control for p in self._paths.values() if not p.terminated)

    def start_closing(self) -> None:
        """A graceful close begins: new streams and writes are refused, what is written goes."""
        self.closing = True

    def close(self, code: int, reason: str) -> None:
        """Close now: every path is closed with ``code`` (:class:`ClosePath` events)."""
        if self.error is not None:
            return
        self._terminate(SessionClosedError(code, reason, remote=False))

    def _terminate(self, error: SessionClosedError) -> None:
        self.error = error
        self.timer_dirty = True
        self._sendable.clear()
        for path in list(self._paths.values()):
            if not path.terminated:
                path.closing = True
                path.control.clear()
                path.control_bytes = 0
                self._events.append(ClosePath(path.path_id, error.code, error.reason))
        for stream in [*self._opening.values(), *self._streams.values()]:
            self._events.append(StreamReadable(stream))
            self._events.append(StreamWritable(stream))
        for relay_id in list(self._relay_out):
            self._events.append(RelayWritable(relay_id))
        self._events.append(SessionTerminated(error))

    def parked_frames(self, path_id: int) -> int:
        path = self._paths.get(path_id)
        return len(path.parked) if path is not None else 0

    def stream_for(self, stream_id: int) -> StreamState | None:
        """The live stream with this id (established, pending accept or opening)."""
        return self._streams.get(stream_id) or self._opening.get(stream_id)

    @property
    def receive_buffered(self) -> int:
        """Bytes held by every stream's reassembly (the session budget's use)."""
        return self._recv_buffered
