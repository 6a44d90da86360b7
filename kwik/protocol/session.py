"""The KWIK session state machine (sans-IO: no asyncio, no sockets, no clock).

:class:`SessionCore` is to a kwik session what aioquic's ``QuicConnection`` is to a QUIC
connection: everything that decides *what happens* lives here or in the leaf objects it drives
(:mod:`.stream`, :mod:`.path`, :mod:`.relays`, :mod:`.liveness`). The asyncio layer only moves
bytes and wakes coroutines.

Driving it:

* **input**: records of each path (:meth:`SessionCore.receive_record`, in arrival order),
  transport facts (:meth:`~SessionCore.on_datagram`, :meth:`~SessionCore.on_transport`,
  :meth:`~SessionCore.path_closing`, :meth:`~SessionCore.path_terminated`), application calls
  (:meth:`~SessionCore.open_stream`, :meth:`~SessionCore.write`, :meth:`~SessionCore.read`, ...)
  and time (:meth:`~SessionCore.handle_timer` at :meth:`~SessionCore.get_timer`);
* **output**: records for a path, pulled with :meth:`~SessionCore.data_to_send` within what
  the path may send now, and events (:meth:`~SessionCore.next_event`, see :mod:`.events`);
* after any input, the adapter drains the events, pulls the output of the paths
  :meth:`~SessionCore.pop_paths_with_output` names, and re-arms its timer when
  :meth:`~SessionCore.pop_timer_change` says so.

The rules, each tested in ``tests/protocol/``:

* **No stream blocks another.** On a path with the credit extension (``docs/protocol.md``, "The
  credit extension") every stream gets its own credit: a frame within it always fits, so data
  never stops a path. The session budget (``session_receive_buffer``) bounds the credit granted,
  shared fairly between streams. On a KWIK v2 path a stream's window is soft: a frame beyond it
  is taken while the session budget has room, and only then waits.
* **Order, without head-of-line blocking of control.** A path's frames are handled in arrival
  order within their lane (see :mod:`.path`): data, control (answers owed), and frames handled
  at once (Pings, Acks, credit, answers). A frame that waits keeps the frames of its lane behind
  it; one hook (:meth:`SessionCore._room_freed`) retries every waiting lane whenever room frees.
* **Nothing received is lost.** When a path ends, or kwik fails it, what it had received (the
  frames that wait, and the records the transport still holds) goes into the streams before the
  session reports the end. Readers get every byte, then EOF or the close error.
* **Ids are never reused into a live stream**; the server's stream keeps an id both sides open
  at once.
* **Streams are written where they belong**: on the path they were opened on (a stream a
  secondary server opened is answered on the secondary's path).
* **Every stream ends for every party**, multi-server streams included (:mod:`.relays`), and is
  then forgotten.
"""

from __future__ import annotations

from collections import deque

from ..config import Config
from ..exceptions import PathError, ProtocolViolationError, SessionClosedError, StreamClosedError
from .acks import ack_ranges_fitting
from .events import (
    AddPathAnswered,
    ClosePath,
    DialRelay,
    Event,
    PathResumed,
    RelayWritable,
    SendProbe,
    SessionTerminated,
    StreamArrived,
    StreamReadable,
    StreamWritable,
)
from .frames import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    RelayCreditFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
    decode_packet,
)
from .liveness import LivenessAction
from .path import CorePath, Outcome, PathCounters, Rest, Verdict
from .relays import Forwarded, Forwarder, Outgoing, RelayOutbox
from .stream import U64_MAX, LogicalStream, OpenState

__all__ = [
    "CLOSE_FAILURE",
    "CLOSE_NORMAL",
    "MAX_ADDRESS_LENGTH",
    "PathCounters",
    "SessionCore",
    "frame_data_limit",
]

#: Application error codes on the QUIC connection (``docs/protocol.md``, "Closing").
CLOSE_NORMAL = 0
CLOSE_FAILURE = 1

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

Sendable = LogicalStream | Outgoing | Forwarded


def frame_data_limit(config: Config) -> int:
    """Most data bytes kwik puts in one Stream or RelayData frame."""
    return min(config.max_stream_frame_data, _POOLED_PACKET - _PACKET_AND_FRAME_HEADERS)


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
        self._paths: dict[int, CorePath] = {}
        self._ended_counters: dict[int, PathCounters] = {}
        self._primary: CorePath | None = None
        self._next_path_id = 1
        self._events: deque[Event] = deque()
        self._with_output: dict[int, None] = {}  # path ids with records to pull, in order
        self._timer_dirty = True
        # streams
        self._streams: dict[int, LogicalStream] = {}  # established (and remote pending accept)
        self._opening: dict[int, LogicalStream] = {}  # local, waiting for OpenStreamResp
        self._retired: dict[int, int] = {}  # finished id -> final offset, oldest first
        self._accept_queue: deque[LogicalStream] = deque()
        self._remote_open = 0  # peer-opened streams held (limit: max_streams)
        self._next_stream_id = 1
        self._rings: dict[int, dict[Sendable, None]] = {}  # per path: what has output, in turn
        self._committed = 0  # receive budget in use: credit open + bytes held beyond it
        #: data bytes handed to paths, plus bytes taken from relay paths (a close's progress)
        self.delivery_progress = 0
        self._starved: dict[LogicalStream, None] = {}  # credit short of their window
        # relays
        self._outbox = RelayOutbox(self._max_frame)  # server
        self._relay_asked: dict[str, int] = {}  # server: address -> AddPath awaiting answer
        self._forwarder = Forwarder(config.relay_buffer, config.max_streams)  # client
        self._dialing: dict[str, list[int]] = {}  # client: address -> requesting path ids
        # retrying what waits
        self._waiting_paths: dict[int, None] = {}
        self._in_retry = False
        self._retry_again = False
        # close
        self.closing = False
        self.error: SessionClosedError | None = None
        self._ending: SessionClosedError | None = None  # primary gone, relays finishing
        self._ending_deadline: float | None = None

    # --- events and output --------------------------------------------------------------------

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def idle(self) -> bool:
        """Nothing for the adapter to do: no event, no output, no timer change."""
        return not self._events and not self._with_output and not self._timer_dirty

    def next_event(self) -> Event | None:
        """The next event for the adapter, or None."""
        return self._events.popleft() if self._events else None

    def pop_paths_with_output(self) -> list[int]:
        """Ids of the paths that have records to pull; the list is emptied."""
        ids = list(self._with_output)
        self._with_output.clear()
        return ids

    def pop_timer_change(self) -> bool:
        """Whether :meth:`get_timer` may have moved since this was last called (and reset)."""
        dirty, self._timer_dirty = self._timer_dirty, False
        return dirty

    def _mark_output(self, path: CorePath) -> None:
        if path.can_send:
            self._with_output[path.path_id] = None

    def _schedule(self, path_id: int, item: Sendable) -> None:
        path = self._paths.get(path_id)
        if path is not None and path.can_send:
            self._rings.setdefault(path_id, {})[item] = None
            self._mark_output(path)

    def data_to_send(self, path_id: int, budget: int, now: float) -> list[bytes]:
        """Records for path ``path_id``, about ``budget`` bytes of data at most.

        Control (answers, the echo, credit, acknowledgements) comes first and may go a little
        beyond ``budget``, so it keeps flowing while data fills the window; it is built now,
        never queued ahead, so it waits (without growing) while the path cannot send at all.
        """
        path = self._paths.get(path_id)
        if path is None or not path.can_send:
            return []
        self._timer_dirty = True
        out: list[bytes] = []
        room = budget
        path.output_blocked = budget + _CONTROL_SLACK <= 0
        if not path.output_blocked:
            had_answers = path.control_full
            frames = path.take_answers()
            frames.extend(self._credit_frames(path))
            if frames or path.acks.ack_due(now):
                ack = path.acks.build_ack() if path.acks.has_pending else None
                if ack is not None:
                    path.stats.acks_sent += 1
                    frames.append(ack)
            for record in path.encode_control(frames):
                out.append(record)
                room -= len(record)
            if had_answers and self._waiting_paths:  # (this or another path may wait on it)
                self._room_freed()
        ring = self._rings.get(path_id)
        freed = False
        while ring and room > 0:
            item = next(iter(ring))
            del ring[item]
            data_record, released = self._send_one(path, item)
            if data_record is not None:
                out.append(data_record)
                room -= len(data_record)
                self.delivery_progress += len(data_record)
            freed = freed or released
            if item.sendable:
                ring[item] = None  # round robin: to the back
        if freed:
            self._room_freed()
        return out

    def _credit_frames(self, path: CorePath) -> list[Frame]:
        frames: list[Frame] = []
        for stream_id in path.credit_dirty:
            stream = self.stream_for(stream_id)
            if stream is not None and stream.receiver.limit:
                frames.append(StreamCreditFrame(stream_id, stream.receiver.limit))
        path.credit_dirty.clear()
        for relay_path_id in path.relay_credit_dirty:
            granted = self._forwarder.grant(relay_path_id)
            if granted is not None:
                frames.append(RelayCreditFrame(relay_path_id, granted))
        path.relay_credit_dirty.clear()
        if frames:
            path.stats.credit_frames_sent += len(frames)
            path.stats.credit_bytes_sent += 17 * len(frames)
        return frames

    def _send_one(self, path: CorePath, item: Sendable) -> tuple[bytes | None, bool]:
        """One frame of ``item`` as a record; and whether it freed room someone waits for."""
        limit = self.config.stream_send_buffer
        if isinstance(item, LogicalStream):
            sender = item.sender
            was_over = sender.counted > limit
            frame = sender.next_frame(item.stream_id, self._max_frame)
            if frame is None:
                return None, False
            if was_over and sender.counted <= limit:
                self._events.append(StreamWritable(item))
            if sender.done:
                self._maybe_retire(item)
            return self._data_record(path, frame, len(frame.data)), False
        if isinstance(item, Outgoing):
            was_over = item.buffered > limit
            relay_frame = item.next_frame()
            if relay_frame is None:
                return None, False
            if was_over and item.buffered <= limit:
                self._events.append(RelayWritable(item.relay_path_id))
            return self._data_record(path, relay_frame, len(relay_frame.data)), False
        sent = item.next_frame(self._max_frame)
        if sent is None:
            return None, False
        frame, size = sent
        self._forwarder.sent(item, size)
        if item.over:
            self._forwarder.retire(item)
        primary = self._primary
        if size and primary is not None and primary.extended:
            primary.relay_credit_dirty[item.path_id] = None
            self._mark_output(primary)
        return self._data_record(path, frame, size), bool(size)

    def _data_record(self, path: CorePath, frame: Frame, payload: int) -> bytes:
        frames = [frame]
        # an Ack rides along only if the largest one the tracker builds fits the record with
        # the data frame (header <= 26 bytes); otherwise it goes alone, on its timer
        fits = ack_ranges_fitting(self.config.max_record_size, payload + 26)
        acks = path.acks
        if payload <= _PIGGYBACK_LIMIT and acks.worth_piggybacking and fits >= acks.max_ranges:
            ack = acks.build_ack()
            if ack is not None:
                path.stats.acks_sent += 1
                frames.append(ack)
        return path.encode(frames)

    # --- paths --------------------------------------------------------------------------------

    def add_path(
        self, *, primary: bool, now: float, dialed_as: str = "", extended: bool = False
    ) -> int:
        """Register a new path (its QUIC handshake is done); return its id.

        Client ids count from 1 (``docs/protocol.md``, "Paths"); a server session has one path,
        id 1. ``extended``: the path negotiated the credit extension (its ALPN).
        """
        path_id = self._next_path_id
        self._next_path_id += 1
        self._timer_dirty = True
        path = CorePath(
            path_id,
            primary=primary,
            extended=extended,
            config=self.config,
            pings=self.is_client,
            now=now,
        )
        path.dialed_as = dialed_as
        self._paths[path_id] = path
        if primary:
            self._primary = path
        else:
            self._forwarder.add_path(path_id)
        if self.is_client:
            # the dialer sends a first record at once: a server learns of a path from it
            self._send_ping(path, now)
        return path_id

    def _send_ping(self, path: CorePath, now: float) -> None:
        path.stats.pings_sent += 1
        if path.stats.ping_sent_at is None:
            path.stats.ping_sent_at = now
        path.echo_pending = True  # on the client side: "a Ping is owed"
        self._mark_output(path)

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
        return path is not None and (path.takes_records or path.failing)

    def on_datagram(self, path_id: int, now: float) -> None:
        """A datagram from the path's peer was received (QUIC-level liveness evidence)."""
        path = self._paths.get(path_id)
        if path is not None:
            path.liveness.on_datagram(now)

    def on_transport(
        self,
        path_id: int,
        now: float,
        *,
        in_flight: bool,
        pto: float,
        withholding: bool,
        blocked: bool,
    ) -> None:
        """The transport's state after a transmit: bytes in flight, QUIC's PTO (backoff
        included), whether it withholds credit on its own (the worker pool is full), and whether
        the peer's flow control holds our records back."""
        path = self._paths.get(path_id)
        if path is None:
            return
        path.transport = (in_flight, pto, withholding, blocked)
        self._refresh_liveness(path, now)

    def _refresh_liveness(self, path: CorePath, now: float) -> None:
        in_flight, pto, withholding, blocked = path.transport
        withholding = withholding or not path.takes_records
        if path.liveness.on_state(
            now, in_flight=in_flight, pto=pto, withholding=withholding, blocked=blocked
        ):
            self._timer_dirty = True

    def receive_record(
        self, path_id: int, record: bytes | bytearray | memoryview, now: float
    ) -> None:
        """Handle one record (a packet body) of path ``path_id``, in arrival order.

        The record's bytes are not kept (what must wait is copied). A malformed record, or one
        kwik cannot tell from a duplicate, fails the path with a protocol violation
        (:class:`~.events.ClosePath`, code 1).
        """
        path = self._paths.get(path_id)
        if path is None or path.terminated:
            return
        try:
            packet = decode_packet(record, extended=path.extended)
            if path.acks.below_floor(packet.packet_number):
                raise ProtocolViolationError(
                    f"packet number {packet.packet_number} below the {self.config.max_ack_ranges}"
                    " ranges remembered (too many gaps): cannot tell it from a duplicate"
                )
        except ProtocolViolationError as exc:
            self.fail_path(path_id, f"protocol violation: {exc}", now, deliver=False)
            return
        self._timer_dirty = True
        stats = path.stats
        stats.packets_received += 1
        if not path.acks.on_packet(packet.packet_number, packet.ack_eliciting, now):
            stats.duplicates_received += 1
            return
        if self.is_client and packet.ack_eliciting:
            # a record the peer's KWIK layer wrote (not only an Ack) proves it alive as an
            # echo does: an echo may wait behind the peer's data, the data itself does not
            path.liveness.on_echo(now)
        was_taking = path.takes_records
        pinged = False
        try:
            for frame in packet.frames:
                if isinstance(frame, PingFrame):
                    if not pinged:  # one echo per packet, however many Pings it holds
                        pinged = True
                        self._on_ping(path, now)
                    continue
                self._route(path, frame)
        except ProtocolViolationError as exc:
            self.fail_path(path_id, f"protocol violation: {exc}", now, deliver=False)
            return
        if path.acks.ack_due(now):
            self._mark_output(path)
        if was_taking != path.takes_records:
            self._refresh_liveness(path, now)

    def _route(self, path: CorePath, frame: Frame) -> None:
        """Handle ``frame`` now, or make it wait in its lane (see :mod:`.path`)."""
        if isinstance(frame, AckFrame):
            path.stats.acks_received += 1
        elif isinstance(frame, OpenStreamRespFrame):
            self._on_open_stream_resp(path, frame)
        elif isinstance(frame, AddPathRespFrame):
            self._on_add_path_resp(path, frame)
        elif isinstance(frame, StreamCreditFrame):
            self._on_stream_credit(path, frame)
        elif isinstance(frame, RelayCreditFrame):
            self._on_relay_credit(path, frame)
        else:
            lane = path.control_waiting if path.is_control(frame) else path.data_waiting
            if lane:
                path.hold(lane, frame)
                return
            outcome = self._handle(path, frame, force=False)
            if outcome is not Verdict.TAKEN:
                path.hold(lane, outcome.frame if isinstance(outcome, Rest) else frame)
                self._waiting_paths[path.path_id] = None

    def _handle(self, path: CorePath, frame: Frame, *, force: bool) -> Outcome:
        """Handle one frame of a lane. ``force``: a dead path's leftovers, taken whatever the
        budgets (already in memory, bounded by its receive window)."""
        if isinstance(frame, StreamFrame):
            return self._on_stream_frame(path, frame, force)
        if isinstance(frame, OpenStreamFrame):
            return self._on_open_stream(path, frame, force)
        if isinstance(frame, RelayDataFrame):
            return self._on_relay_data(path, frame, force)
        if isinstance(frame, AddPathFrame):
            return self._on_add_path(path, frame, force)
        raise ProtocolViolationError(f"unexpected frame {frame!r}")  # pragma: no cover

    def _room_freed(self) -> None:
        """Something freed room (a read, an accept, output that left): retry what waits.

        The one hook for every budget: a new budget frees room here, nowhere else. Safe to
        call from within a retry (it runs again once the current one ends).
        """
        if self._starved:
            for stream in list(self._starved):
                del self._starved[stream]
                self._grant(stream)
        if not self._waiting_paths:
            return
        if self._in_retry:
            self._retry_again = True
            return
        self._in_retry = True
        try:
            self._retry_again = True
            while self._retry_again:
                self._retry_again = False
                for path_id in list(self._waiting_paths):
                    path = self._paths.get(path_id)
                    if path is None or not path.waiting:
                        self._waiting_paths.pop(path_id, None)
                        continue
                    self._drain_waiting(path, force=False)
        finally:
            self._in_retry = False

    def _drain_waiting(self, path: CorePath, *, force: bool) -> None:
        was_taking = path.takes_records
        try:
            for lane in (path.control_waiting, path.data_waiting):
                while lane:
                    outcome = self._handle(path, lane[0], force=force)
                    if isinstance(outcome, Rest):
                        path.replace_head(lane, outcome.frame)
                        break
                    if outcome is Verdict.WAIT:
                        break
                    path.release_head(lane)
        except ProtocolViolationError as exc:
            path.clear_waiting()
            self.fail_path(path.path_id, f"protocol violation: {exc}", None, deliver=False)
            return
        if not path.waiting:
            self._waiting_paths.pop(path.path_id, None)
        if not was_taking and path.takes_records and not path.terminated:
            self._events.append(PathResumed(path.path_id))

    def fail_path(self, path_id: int, reason: str, now: float | None, *, deliver: bool) -> None:
        """Close the path as failed (code 1): the adapter closes its connection, hands in what it
        still holds when ``deliver`` (see :class:`~.events.ClosePath`), then reports
        :meth:`path_terminated`. The session goes on on its other paths, or ends when it was the
        primary."""
        path = self._paths.get(path_id)
        if path is None or path.terminated or path.failing:
            return
        path.failing = True
        path.drop_output()
        self._with_output.pop(path_id, None)
        self._timer_dirty = True
        self._events.append(ClosePath(path_id, CLOSE_FAILURE, reason, deliver))

    def path_closing(self, path_id: int) -> None:
        """The path's connection is closing (closed by either side, or its transport stream
        finished): nothing more can be sent on it. Its records still come in."""
        path = self._paths.get(path_id)
        if path is not None and not path.closing:
            path.closing = True
            path.drop_output()
            self._with_output.pop(path_id, None)
            self._timer_dirty = True

    def path_terminated(
        self, path_id: int, code: int, reason: str, *, by_peer: bool, now: float
    ) -> None:
        """The path's connection is gone. Call it after handing in every record the path still
        holds: what waits is handled now, whatever the budgets."""
        path = self._paths.get(path_id)
        if path is None or path.terminated:
            return
        self._timer_dirty = True
        self._drain_waiting(path, force=True)
        path.terminated = True
        path.clear_waiting()
        path.drop_output()
        self._with_output.pop(path_id, None)
        self._waiting_paths.pop(path_id, None)
        self._rings.pop(path_id, None)
        del self._paths[path_id]
        self._ended_counters[path_id] = path.stats
        if len(self._ended_counters) > _ENDED_MEMORY:
            del self._ended_counters[next(iter(self._ended_counters))]
        # forwarding to it is over, and streams written on it cannot go on
        self._forwarder.path_ended(path_id)
        for address, requesters in self._dialing.items():
            if path_id in requesters:
                self._dialing[address] = [r for r in requesters if r != path_id]
        if path is not self._primary:
            for stream in [*self._streams.values(), *self._opening.values()]:
                stream.writer_paths.discard(path_id)
                if stream.home_path == path_id:
                    self._fail_stream(stream, f"its path ({path_id}) closed: {reason}")
        if self.error is not None:
            return
        if path is self._primary or not self.path_ids():
            if path is not self._primary:
                reason = f"all paths failed ({reason})"
            error = SessionClosedError(code, reason or "path closed", remote=by_peer)
            if path is self._primary and code == CLOSE_NORMAL and self._relays_writing():
                # a graceful end: the streams relays still write may finish first
                self.closing = True
                self._ending = error
                self._ending_deadline = now + self.config.close_timeout
                return
            self._terminate(error)
        else:
            self._check_ending()
            self._room_freed()

    def _relays_writing(self) -> bool:
        """Client: a stream still waits for bytes a relay path writes."""
        if not self.is_client:
            return False
        live = {p.path_id for p in self._paths.values() if not p.primary and not p.terminated}
        for stream in self._streams.values():
            if stream.receiver.complete or stream.receiver.cancelled:
                continue
            if stream.home_path in live or any(
                p in live for p in self._forwarder.forwards(stream.stream_id)
            ):
                return True
        return False

    def _check_ending(self) -> None:
        if self._ending is not None and self.error is None and not self._relays_writing():
            self._terminate(self._ending)

    # --- timers -------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (pure: nothing changes)."""
        deadline = self._ending_deadline if self.error is None else None
        for path in self._paths.values():
            if path.terminated or path.failing:
                continue
            candidates = [path.liveness.get_timer()]
            if path.can_send and not path.output_blocked:
                candidates.append(path.acks.get_timer())
            for candidate in candidates:
                if candidate is not None and (deadline is None or candidate < deadline):
                    deadline = candidate
        return deadline

    def handle_timer(self, now: float) -> None:
        """Send due acknowledgements, probe quiet paths, fail silent ones."""
        self._timer_dirty = True
        if (
            self._ending is not None
            and self.error is None
            and self._ending_deadline is not None
            and now >= self._ending_deadline
        ):
            self._terminate(self._ending)
        for path in list(self._paths.values()):
            if path.terminated or path.failing:
                continue
            if path.can_send and path.acks.ack_due(now):
                self._mark_output(path)
            action = path.liveness.handle_timer(now)
            if action is LivenessAction.PROBE or action is LivenessAction.HEARTBEAT:
                if not path.closing:
                    self._events.append(SendProbe(path.path_id))
                    if action is LivenessAction.HEARTBEAT and self.is_client:
                        self._send_ping(path, now)
            elif action is LivenessAction.FAIL:
                self.fail_path(path.path_id, path.liveness.reason, now, deliver=True)

    # --- frames -------------------------------------------------------------------------------

    def _on_ping(self, path: CorePath, now: float) -> None:
        stats = path.stats
        stats.pings_received += 1
        if self.is_client:
            stats.pongs_received += 1
            path.liveness.on_echo(now)
            if stats.ping_sent_at is not None:
                stats.heartbeat_rtt = now - stats.ping_sent_at
                stats.ping_sent_at = None
        elif not path.echo_pending and path.can_send:
            path.echo_pending = True
            self._mark_output(path)

    def _on_stream_frame(self, path: CorePath, frame: StreamFrame, force: bool) -> Outcome:
        stream_id = frame.stream_id
        stream = self._streams.get(stream_id)
        end = frame.offset + len(frame.data)
        if stream is None:
            if stream_id == 0:
                raise ProtocolViolationError("Stream frame for stream id 0")
            if self.error is not None and not force:
                return Verdict.TAKEN
            final = self._retired.get(stream_id)
            if final is not None and end <= final:
                return Verdict.TAKEN  # a late frame of a finished stream (a second writer's)
            if path.extended:
                raise ProtocolViolationError(
                    f"Stream frame for stream {stream_id}, which has no credit on this path"
                )
            if self._remote_open >= self.config.max_streams:
                raise ProtocolViolationError(
                    f"stream {stream_id} opened implicitly beyond max_streams "
                    f"({self.config.max_streams})"
                )
            if not force and len(self._accept_queue) >= self.config.stream_backlog:
                return Verdict.WAIT
            # a Stream frame for an id never opened is an implicit open (KWIK v2)
            stream = self._new_remote_stream(stream_id, path)
        recv = stream.receiver
        recv.check(frame)
        if path.extended and not force:
            if path.path_id not in stream.writer_paths:
                raise ProtocolViolationError(
                    f"Stream frame for stream {stream_id}, which has no credit on this path"
                )
            recv.check_credit(frame)
        elif not force and frame.data and not recv.cancelled:
            # KWIK v2: the stream's window is soft, the session budget is not
            room = self.config.session_receive_buffer - self._committed
            # below it is held already, or reserved by the credit other writers have
            new_start = max(frame.offset, recv.contiguous_end, recv.limit)
            cost = max(end - new_start, 0)
            waiting_reader = (
                recv.reader_waiting and not recv.readable and frame.offset <= recv.contiguous_end
            )
            if cost > room and not waiting_reader:
                if room <= 0:
                    return Verdict.WAIT
                # take what fits; the rest waits
                keep = new_start - frame.offset + room
                head = StreamFrame(stream_id, frame.offset, False, frame.data[:keep])
                before = recv.commitment
                if not recv.take(head):
                    return Verdict.WAIT
                self._committed += recv.commitment - before
                self._after_receive(stream)
                return Rest(
                    StreamFrame(stream_id, frame.offset + keep, frame.fin, frame.data[keep:])
                )
        if not path.primary:
            self.delivery_progress += len(frame.data)
        before = recv.commitment
        if not recv.take(frame):
            if force:
                recv.raise_fragment_cap()
                recv.take(frame)
            elif path.extended:
                raise ProtocolViolationError(
                    f"stream {stream_id} would need more than "
                    f"{self.config.max_stream_fragments} out-of-order pieces"
                )
            else:
                return Verdict.WAIT  # too many separate pieces: wait until the gaps fill
        self._committed += recv.commitment - before
        self._after_receive(stream)
        return Verdict.TAKEN

    def _after_receive(self, stream: LogicalStream) -> None:
        recv = stream.receiver
        if recv.readable or recv.complete or recv.cancelled:
            self._events.append(StreamReadable(stream))
        if recv.complete or recv.cancelled:
            self._stream_done_receiving(stream)

    def _stream_done_receiving(self, stream: LogicalStream) -> None:
        """Every byte of the stream arrived, or its reader gave up: relays forwarding it end
        their part (the secondary learns that the stream is complete)."""
        for entry in self._forwarder.finish(stream.stream_id):
            self._schedule(entry.path_id, entry)
        self._maybe_retire(stream)
        self._check_ending()

    def _new_remote_stream(self, stream_id: int, path: CorePath) -> LogicalStream:
        self._retired.pop(stream_id, None)
        stream = self._new_stream(stream_id, local=False, path=path)
        self._streams[stream_id] = stream
        self._remote_open += 1
        self._accept_queue.append(stream)
        self._events.append(StreamArrived(stream))
        return stream

    def _new_stream(self, stream_id: int, *, local: bool, path: CorePath) -> LogicalStream:
        stream = LogicalStream(
            stream_id,
            local=local,
            home_path=path.path_id,
            window=self.config.stream_receive_buffer,
            max_fragments=self.config.max_stream_fragments,
            credit=0 if path.extended else None,
        )
        if path.extended:
            stream.writer_paths.add(path.path_id)
            self._grant(stream, initial=True)
        return stream

    def _grant(self, stream: LogicalStream, *, initial: bool = False) -> None:
        """Raise the stream's credit toward its window, within the session budget shared fairly
        between the live streams; a reader waiting with nothing to read always gets one frame's
        worth (so a reader never waits on budget that other streams hold)."""
        recv = stream.receiver
        if not stream.writer_paths or stream.retired:
            return
        budget = self.config.session_receive_buffer
        share = max(budget // max(len(self._streams) + len(self._opening), 1), 1)
        if not initial and not recv.wants_credit(share):
            return
        target = recv.credit_target(share)
        room = budget - self._committed
        limit = min(target, max(recv.limit, recv.read_offset) + max(room, 0))
        if recv.reader_waiting and recv.readable == 0:
            limit = max(limit, recv.read_offset + min(recv.window, self._max_frame))
        before = recv.commitment
        if recv.grant(limit):
            self._committed += recv.commitment - before
            self._mark_credit(stream)
        if recv.limit < target:
            self._starved[stream] = None

    def _mark_credit(self, stream: LogicalStream) -> None:
        """Tell the stream's new credit to every path whose peer writes it."""
        for path_id in stream.writer_paths:
            path = self._paths.get(path_id)
            if path is not None and path.can_send:
                path.credit_dirty[stream.stream_id] = None
                self._mark_output(path)

    def _on_open_stream(self, path: CorePath, frame: OpenStreamFrame, force: bool) -> Outcome:
        stream_id = frame.stream_id
        if stream_id == 0:
            raise ProtocolViolationError("OpenStream for stream id 0")
        if not path.can_send:
            return Verdict.TAKEN  # nobody to answer; a stream never confirmed carries nothing
        if not force and path.control_full:
            return Verdict.WAIT
        held = stream_id in self._streams or (stream_id in self._opening and not self.is_client)
        # never merge a new stream into one still held here: the opener moves to another id
        # (and on a collision the server's own stream keeps the id)
        refuse = (
            held
            or self.error is not None
            or self.closing
            or self._remote_open >= self.config.max_streams
            or len(self._accept_queue) >= self.config.stream_backlog
        )
        if not refuse:
            self._new_remote_stream(stream_id, path)
        path.queue_answer(OpenStreamRespFrame(stream_id, not refuse))
        self._mark_output(path)
        return Verdict.TAKEN

    def _on_open_stream_resp(self, path: CorePath, frame: OpenStreamRespFrame) -> None:
        entry = self._forwarder.on_open_resp(path.path_id, frame.stream_id, frame.success)
        if entry is not None:
            if entry.sendable:
                self._schedule(path.path_id, entry)
            self._room_freed()  # a refusal dropped what waited for it
            return
        stream = self._opening.get(frame.stream_id)
        if stream is None or stream.home_path != path.path_id:
            return  # not ours, or an answer on another path than the one that asked: ignored
        del self._opening[frame.stream_id]
        # the id may have been taken meanwhile by a stream the peer opened implicitly (a Stream
        # frame): never replace it, move to another id as for a refusal
        if frame.success and frame.stream_id not in self._streams:
            self._streams[stream.stream_id] = stream
            if stream.open_state is OpenState.CLOSED:
                # its opener gave up waiting: end it at once, both ways
                stream.sender.finish(fin=True)
                self.cancel_read(stream)
            else:
                stream.open_state = OpenState.OPEN
                self._events.append(StreamWritable(stream))
            if stream.sender.sendable:
                self._schedule(stream.home_path, stream)
            return
        if stream.open_state is OpenState.CLOSED:
            self._release(stream)  # its opener gave up: the credit it had goes back
            return
        if stream.open_attempts >= _MAX_OPEN_ATTEMPTS or self.error is not None:
            attempts = stream.open_attempts
            self._refuse(stream, f"the peer refused to open the stream ({attempts} ids)")
            return
        self._send_open(stream)

    def _refuse(self, stream: LogicalStream, reason: str) -> None:
        stream.open_state = OpenState.REFUSED
        stream.error = reason
        stream.sender.drop()
        self._release(stream)
        self._events.append(StreamWritable(stream))
        self._events.append(StreamReadable(stream))

    def _fail_stream(self, stream: LogicalStream, reason: str) -> None:
        """The stream cannot go on (its home path ended): its calls raise once what it holds
        is read, and it is forgotten then."""
        if stream.failed:
            return
        stream.open_state = OpenState.CLOSED
        stream.error = reason
        stream.sender.drop()
        if self._opening.get(stream.stream_id) is stream:  # (not an opener sharing its id)
            del self._opening[stream.stream_id]
        if not stream.receiver.readable:
            self._forget(stream)
        self._events.append(StreamWritable(stream))
        self._events.append(StreamReadable(stream))

    def _release(self, stream: LogicalStream) -> None:
        """Give the stream's share of the receive budget back."""
        self._committed -= stream.receiver.commitment
        stream.receiver.limit = 0
        stream.writer_paths.clear()
        self._starved.pop(stream, None)

    def _on_stream_credit(self, path: CorePath, frame: StreamCreditFrame) -> None:
        entry = self._forwarder.on_credit(path.path_id, frame.stream_id, frame.max_offset)
        if entry is not None:
            self._schedule(path.path_id, entry)
            return
        stream = self._streams.get(frame.stream_id)
        if stream is None or stream.home_path != path.path_id:
            return  # retired meanwhile, or not a stream we write on this path: harmless
        if stream.sender.on_credit(frame.max_offset) and stream.sender.sendable:
            self._schedule(path.path_id, stream)

    def _on_relay_credit(self, path: CorePath, frame: RelayCreditFrame) -> None:
        if self.is_client or path is not self._primary:
            return
        out = self._outbox.on_credit(frame.relay_path_id, frame.max_bytes)
        if out is not None and out.sendable:
            self._schedule(path.path_id, out)

    def _on_relay_data(self, path: CorePath, frame: RelayDataFrame, force: bool) -> Outcome:
        if not self.is_client or path is not self._primary:
            return Verdict.TAKEN  # only a client forwards, and only for its primary
        if frame.dest_stream_id == 0:
            raise ProtocolViolationError("RelayData for stream id 0")
        forwarder = self._forwarder
        if path.extended and not force:
            forwarder.check_credit(frame)
        target = self._paths.get(frame.relay_path_id)
        if target is None or target is path or not target.can_send:
            return Verdict.TAKEN  # no such relay path (any more): nothing to forward to
        key = (target.path_id, frame.dest_stream_id)
        if not force and not path.extended:
            if not forwarder.has_room(target.path_id):
                return Verdict.WAIT  # the relay path is slow: the primary waits for it
            if key not in forwarder.entries and target.control_full:
                return Verdict.WAIT  # its OpenStream would go over the relay's control budget
        entry, new = forwarder.relay(frame, credit=0 if target.extended else None)
        if entry is None:
            return Verdict.TAKEN
        if new:
            target.queue_answer(OpenStreamFrame(frame.dest_stream_id))
            stream = self._streams.get(frame.dest_stream_id)
            if target.extended and stream is not None and not stream.receiver.complete:
                # the secondary writes into this stream too: it gets the stream's credit
                stream.writer_paths.add(target.path_id)
                if stream.receiver.limit:
                    target.credit_dirty[stream.stream_id] = None
            self._mark_output(target)
        if entry.sendable:
            self._schedule(target.path_id, entry)
        return Verdict.TAKEN

    def _on_add_path(self, path: CorePath, frame: AddPathFrame, force: bool) -> Outcome:
        """Client: the primary asks for a relay path. Waits when the answer would go over the
        path's control budget (as for OpenStream)."""
        address = frame.address
        if len(address) > MAX_ADDRESS_LENGTH:
            # no "host:port" is this long, and the answer (which echoes it) might not fit a
            # record: a peer sending one is broken or hostile
            raise ProtocolViolationError(
                f"AddPath address of {len(address)} characters (at most {MAX_ADDRESS_LENGTH})"
            )
        if not self.is_client or not path.can_send:
            return Verdict.TAKEN
        if not force and path.control_full:
            return Verdict.WAIT
        if path is not self._primary:
            path.queue_answer(AddPathRespFrame(0, address))
            self._mark_output(path)
            return Verdict.TAKEN
        for existing in self._paths.values():
            if existing.dialed_as == address and not existing.primary and not existing.terminated:
                self._answer_add_path(path, existing.path_id, address)
                return Verdict.TAKEN
        requesters = self._dialing.get(address)
        if requesters is not None:
            # a duplicated AddPath never dials twice, but each is answered when the dial ends,
            # all at once: beyond control_buffer of such answers, the frame waits
            answer = _ADD_PATH_RESP_RECORD + len(address.encode())
            if not force and len(requesters) * answer > self.config.control_buffer:
                return Verdict.WAIT
            requesters.append(path.path_id)
            return Verdict.TAKEN
        full = len(self.path_ids()) + len(self._dialing) >= self.config.max_paths
        if self.error is not None or self.closing or full:
            self._answer_add_path(path, 0, address)
            return Verdict.TAKEN
        self._dialing[address] = [path.path_id]
        self._events.append(DialRelay(address))
        return Verdict.TAKEN

    def _answer_add_path(self, path: CorePath, path_id: int, address: str) -> None:
        path.queue_answer(AddPathRespFrame(path_id, address))
        if path_id and path.extended and path is self._primary:
            # the primary may relay for the new path: its RelayCredit goes with the answer
            path.relay_credit_dirty[path_id] = None
        self._mark_output(path)

    def add_path_result(self, address: str, path_id: int) -> None:
        """Client: the dial that :class:`~.events.DialRelay` asked for ended; ``path_id`` is the
        new path's id (see :meth:`add_path`) or 0 when it was refused or failed."""
        for requester_id in self._dialing.pop(address, []):
            requester = self._paths.get(requester_id)
            if requester is not None:
                self._answer_add_path(requester, path_id, address)
        self._room_freed()  # duplicates of the AddPath that waited for this dial go on

    def _on_add_path_resp(self, path: CorePath, frame: AddPathRespFrame) -> None:
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
            self._outbox.add(frame.path_id, credited=path.extended)
        self._events.append(AddPathAnswered(frame.address, frame.path_id))

    # --- application: streams ----------------------------------------------------------------

    def check_open(self) -> None:
        """Raise the error a call on a closed (or closing) session raises.

        Raises:
            SessionClosedError: the session is closed, or closing gracefully.
        """
        if self.error is not None:
            raise SessionClosedError(self.error.code, self.error.reason, self.error.remote)
        if self.closing:
            raise SessionClosedError(CLOSE_NORMAL, "the session is closing", remote=False)

    def raise_for(self, stream: LogicalStream) -> None:
        """Raise what a call on ``stream`` must raise now, if anything.

        Raises:
            StreamClosedError: the stream was refused by the peer, or its path closed.
            SessionClosedError: the session is closed.
        """
        if stream.open_state is OpenState.REFUSED:
            raise StreamClosedError(f"stream refused: {stream.error}")
        if stream.open_state is OpenState.CLOSED:
            raise StreamClosedError(f"stream {stream.stream_id} closed: {stream.error}")
        if self.error is not None:
            raise SessionClosedError(self.error.code, self.error.reason, self.error.remote)

    def _allocate_stream_id(self) -> int:
        stream_id = self._next_stream_id
        while (
            stream_id in self._streams or stream_id in self._opening or stream_id in self._retired
        ):
            stream_id += 1
        if stream_id > U64_MAX:
            raise StreamClosedError("stream ids exhausted")
        self._next_stream_id = stream_id + 1
        return stream_id

    def open_stream(self) -> LogicalStream:
        """Open a stream on the primary path; its data waits for the peer's confirmation
        (:class:`~.events.StreamWritable` tells when it is open or refused).

        Raises:
            SessionClosedError: the session is closed or closing, or has no primary path.
        """
        self.check_open()
        primary = self._primary
        if primary is None or not primary.can_send:
            raise SessionClosedError(CLOSE_FAILURE, "no active path", remote=False)
        stream = self._new_stream(0, local=True, path=primary)
        self._send_open(stream)
        return stream

    def _send_open(self, stream: LogicalStream) -> None:
        path = self._paths.get(stream.home_path)
        if path is None:
            self._fail_stream(stream, "its path closed")
            return
        stream.stream_id = self._allocate_stream_id()
        stream.open_attempts += 1
        self._opening[stream.stream_id] = stream
        path.queue_answer(OpenStreamFrame(stream.stream_id))
        if path.extended and stream.receiver.limit:
            path.credit_dirty[stream.stream_id] = None
        self._mark_output(path)

    def abandon_open(self, stream: LogicalStream) -> None:
        """The application gave up waiting for the stream's confirmation (timeout or
        cancellation). Should the peer still confirm it, it is ended at once both ways (the
        peer reads EOF, what it writes is dropped), so that neither side keeps it."""
        if stream.open_state is OpenState.OPENING:
            stream.open_state = OpenState.CLOSED
            stream.error = "its opener gave up waiting for the confirmation"
            self._events.append(StreamWritable(stream))
            self._events.append(StreamReadable(stream))

    def accept_stream(self) -> LogicalStream | None:
        """The next stream the peer opened, in arrival order, or None."""
        if not self._accept_queue:
            return None
        stream = self._accept_queue.popleft()
        stream.accepted = True
        self._room_freed()
        return stream

    @property
    def streams_pending_accept(self) -> int:
        return len(self._accept_queue)

    @property
    def open_streams(self) -> int:
        return len(self._streams) + len(self._opening)

    def read(self, stream: LogicalStream, n: int) -> bytes | None:
        """Up to ``n`` bytes of ``stream``; b"" at EOF; None when the reader must wait.

        Raises:
            StreamClosedError: reading was cancelled, or the stream was refused.
            SessionClosedError: the session closed and nothing is left to read.
        """
        recv = stream.receiver
        if stream.open_state is OpenState.REFUSED:
            raise StreamClosedError(f"stream refused: {stream.error}")
        if recv.cancelled:
            raise StreamClosedError(f"reading stream {stream.stream_id} was cancelled")
        if recv.readable:
            before = recv.commitment
            data = recv.read(n)
            self._recommit(stream, before)
            self._after_read(stream)
            return data
        if recv.at_eof:
            self._maybe_retire(stream)
            return b""
        if stream.open_state is OpenState.CLOSED:
            self._forget(stream)  # nothing left to read of a stream whose path closed
        self.raise_for(stream)
        recv.reader_waiting = True
        self._grant(stream)
        self._room_freed()  # a frame waiting on the session budget may be its data
        if recv.readable or recv.at_eof:
            return self.read(stream, n)  # the retry delivered it: no wake-up to lose
        return None

    def _recommit(self, stream: LogicalStream, before: int) -> None:
        """Count the change of ``stream``'s commitment (from ``before``) in the session budget,
        while the session holds it: a stream it forgot or refused gave its share back."""
        sid = stream.stream_id
        if self._streams.get(sid) is stream or self._opening.get(sid) is stream:
            self._committed += stream.receiver.commitment - before

    def _after_read(self, stream: LogicalStream) -> None:
        self._grant(stream)
        if stream.receiver.at_eof:
            self._maybe_retire(stream)
        self._room_freed()

    def readable(self, stream: LogicalStream) -> bool:
        """Whether :meth:`read` would return (data, EOF or an error) without waiting."""
        recv = stream.receiver
        return bool(recv.readable or recv.at_eof or recv.cancelled or stream.failed or self.error)

    def cancel_read(self, stream: LogicalStream) -> None:
        """Discard what is buffered and whatever arrives later for ``stream``.

        Writers under credit are granted unlimited credit (what they send is dropped on
        arrival), so that they finish and the stream can end on both sides.
        """
        recv = stream.receiver
        if recv.cancelled:
            return
        before = recv.commitment
        recv.cancel()
        self._recommit(stream, before)
        self._starved.pop(stream, None)
        if recv.grant(U64_MAX):
            self._mark_credit(stream)
        self._events.append(StreamReadable(stream))
        self._stream_done_receiving(stream)
        self._room_freed()

    def skip_to(self, stream: LogicalStream, offset: int) -> None:
        """Move ``stream``'s read offset forward (see ``Stream.set_read_offset``).

        Raises:
            ValueError: see :meth:`~.stream.StreamReceiver.skip_to`.
        """
        recv = stream.receiver
        before = recv.commitment
        recv.skip_to(offset)
        self._recommit(stream, before)
        self._events.append(StreamReadable(stream))
        self._after_read(stream)

    def set_write_offset(self, stream: LogicalStream, offset: int) -> None:
        """Place the next written byte at ``offset`` (see ``Stream.set_write_offset``).

        Raises:
            ValueError: ``offset`` is beyond 2**64-1.
            StreamClosedError: the stream is closed for writing.
        """
        stream.sender.set_write_offset(offset)

    def write(self, stream: LogicalStream, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data`` at the stream's write offset (sent once its path has room and the
        peer credit); return its size in bytes.

        Raises:
            StreamClosedError: the stream is closed for writing, refused, or its path closed.
            SessionClosedError: the session is closed or closing.
            ValueError: the data would end past offset 2**64-1.
        """
        self.raise_for(stream)
        self.check_open()
        size = stream.sender.write(data)
        if size and stream.open_state is OpenState.OPEN and stream.sender.sendable:
            self._schedule(stream.home_path, stream)
        return size

    def send_pending(self, stream: LogicalStream) -> int:
        """Bytes the writer must wait for (``Config.stream_send_buffer``)."""
        return stream.sender.counted

    def finish(self, stream: LogicalStream, *, fin: bool = True) -> None:
        """Finish the sending side. ``fin=True`` sends FIN at the final offset (the highest of
        every byte written and the write offset); ``fin=False`` ends this writer's part without
        a FIN (another writer sends it). Idempotent.

        Raises:
            StreamClosedError: the stream was refused.
        """
        if stream.open_state is OpenState.REFUSED:
            raise StreamClosedError(f"stream refused: {stream.error}")
        sender = stream.sender
        if sender.closed:
            return
        sender.finish(fin=fin)
        if self.error is not None or stream.failed:
            sender.drop()
        elif stream.open_state is OpenState.OPEN and sender.sendable:
            self._schedule(stream.home_path, stream)
        self._maybe_retire(stream)

    def _maybe_retire(self, stream: LogicalStream) -> None:
        """Forget a stream finished both ways (its id may be used again by the peer)."""
        if not stream.retired and stream.finished:
            self._forget(stream)

    def _forget(self, stream: LogicalStream) -> None:
        if stream.retired or self._streams.get(stream.stream_id) is not stream:
            return
        stream.retired = True
        del self._streams[stream.stream_id]
        for ring in self._rings.values():
            ring.pop(stream, None)
        self._release(stream)
        if not stream.local:
            self._remote_open -= 1
        retired = self._retired
        recv = stream.receiver
        retired[stream.stream_id] = max(recv.read_offset, recv.highest_end)
        if len(retired) > _RETIRED_MEMORY:
            del retired[next(iter(retired))]
        self._room_freed()

    def stream_for(self, stream_id: int) -> LogicalStream | None:
        """The live stream with this id (established, pending accept or opening)."""
        return self._streams.get(stream_id) or self._opening.get(stream_id)

    # --- application: relays (server) ---------------------------------------------------------

    def request_relay(self, address: str) -> None:
        """Server: ask the client (on the primary path) to dial ``address``; the answer comes
        as :class:`~.events.AddPathAnswered`.

        Raises:
            PathError: this is a client session.
            SessionClosedError: the session is closed or closing.
            ValueError: ``address`` is longer than any "host:port" (the client would take the
                AddPath as a protocol violation).
        """
        self.check_open()
        if self.is_client:
            raise PathError("add_relay is for server sessions; the client dials what they ask")
        if len(address) > MAX_ADDRESS_LENGTH:
            raise ValueError(
                f"relay address of {len(address)} characters (at most {MAX_ADDRESS_LENGTH})"
            )
        primary = self._primary
        if primary is None or not primary.can_send:
            raise SessionClosedError(CLOSE_FAILURE, "no active path", remote=False)
        self._relay_asked[address] = self._relay_asked.get(address, 0) + 1
        primary.queue_answer(AddPathFrame(address))
        self._mark_output(primary)

    def cancel_relay_request(self, address: str) -> None:
        """Server: stop waiting for an answer to an AddPath (timed out)."""
        asked = self._relay_asked.get(address, 0)
        if asked <= 1:
            self._relay_asked.pop(address, None)
        else:
            self._relay_asked[address] = asked - 1

    def relay_send(
        self, relay_path_id: int, stream_id: int, data: bytes | bytearray | memoryview
    ) -> int:
        """Server: queue RelayData asking the client to forward ``data`` to the relay's logical
        stream ``stream_id``; return its size in bytes.

        Raises:
            PathError: no such relay (never added, or removed).
            SessionClosedError: the session is closed or closing.
            ValueError: ``stream_id`` is not within 1 .. 2**64-1.
        """
        self.check_open()
        if relay_path_id not in self._outbox:
            raise PathError(f"no relay with path id {relay_path_id}")
        if not 1 <= stream_id <= U64_MAX:
            raise ValueError("stream_id must be within 1 .. 2**64-1")
        view = memoryview(data).cast("B")
        out = self._outbox.write(relay_path_id, stream_id, view)
        if self._primary is not None and out.sendable:
            self._schedule(self._primary.path_id, out)
        return len(view)

    def relay_buffered(self, relay_path_id: int) -> int | None:
        """Server: bytes queued for a relay and not handed to the path yet (None: no relay)."""
        out = self._outbox.get(relay_path_id)
        return out.buffered if out is not None else None

    def remove_relay(self, relay_path_id: int) -> bool:
        """Server: stop using a relay; what was queued for it and not sent is dropped."""
        out = self._outbox.remove(relay_path_id)
        if out is None:
            return False
        for ring in self._rings.values():
            ring.pop(out, None)
        self._events.append(RelayWritable(relay_path_id))
        return True

    # --- close --------------------------------------------------------------------------------

    def has_unsent(self) -> bool:
        """Whether written data (a FIN, relay data, answers) still waits for a path, or a
        stream still waits for a relay's part."""
        if any(item.sendable for ring in self._rings.values() for item in ring):
            return True
        streams = [*self._streams.values(), *self._opening.values()]
        if any(s.sender.has_unsent and not s.failed for s in streams):
            return True
        if self._outbox.has_unsent or self._forwarder.has_unsent:
            return True
        if any(p.has_control for p in self._paths.values() if p.can_send):
            return True
        return self._relays_writing()

    def start_closing(self) -> None:
        """A graceful close begins: new streams and writes are refused, what is written goes."""
        self.closing = True

    def close(self, code: int, reason: str) -> None:
        """Close now: every path is closed with ``code`` (:class:`~.events.ClosePath`)."""
        if self.error is None:
            self._terminate(SessionClosedError(code, reason, remote=False))

    def _terminate(self, error: SessionClosedError) -> None:
        self.error = error
        self._timer_dirty = True
        self._ending_deadline = None
        self._rings.clear()
        for path in list(self._paths.values()):
            if not path.terminated and not path.failing:
                path.closing = True
                path.drop_output()
                self._events.append(ClosePath(path.path_id, error.code, error.reason, True))
        self._with_output.clear()
        for stream in [*self._opening.values(), *self._streams.values()]:
            self._events.append(StreamReadable(stream))
            self._events.append(StreamWritable(stream))
        for out in self._outbox.relays():
            self._events.append(RelayWritable(out.relay_path_id))
        self._events.append(SessionTerminated(error))

    # --- statistics ---------------------------------------------------------------------------

    @property
    def receive_buffered(self) -> int:
        """The receive budget in use: credit granted and not used, plus bytes held beyond
        credit (``session_receive_buffer`` bounds it)."""
        return self._committed

    def table_sizes(self) -> dict[str, int]:
        """How many entries each per-peer table holds (the tests check nothing grows)."""
        return {
            "streams": len(self._streams),
            "opening": len(self._opening),
            "retired": len(self._retired),
            "accept_queue": len(self._accept_queue),
            "remote_open": self._remote_open,
            "starved": len(self._starved),
            "sendable": sum(len(r) for r in self._rings.values()),
            "forwarded": len(self._forwarder.entries),
            "relay_asked": len(self._relay_asked),
            "dialing": len(self._dialing),
            "waiting_paths": len(self._waiting_paths),
            "waiting_frames": sum(
                len(p.data_waiting) + len(p.control_waiting) for p in self._paths.values()
            ),
        }
