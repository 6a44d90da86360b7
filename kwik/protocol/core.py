"""The paths half of the session core (sans-IO): what travels on a session's paths.

:class:`PathCore` owns the paths of a session and everything that is about a path rather than
about a stream: numbering and decoding records, acknowledgements and duplicates, the lanes of
frames that wait (:mod:`.path`), the output built when a path can send, the one hook that
retries what waits, liveness and the timer, and the life of a path (failed by kwik, closing,
terminated). :class:`~.session.SessionCore` extends it with what the frames *mean* (streams,
credit, relays, close) through a few hooks, each documented below; only the core emits events.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Protocol

from ..config import Config
from ..exceptions import ProtocolViolationError, SessionClosedError
from .acks import ack_ranges_fitting
from .events import ClosePath, Event, PathResumed, SendProbe
from .frames import (
    AckFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamRespFrame,
    PingFrame,
    RelayCreditFrame,
    StreamCreditFrame,
    decode_packet,
)
from .liveness import LivenessAction
from .path import CorePath, Outcome, PathCounters, Rest, Verdict

__all__ = ["CLOSE_FAILURE", "CLOSE_NORMAL", "AtOnce", "PathCore", "Sendable", "frame_data_limit"]

#: Application error codes on the QUIC connection (``docs/protocol.md``, "Closing").
CLOSE_NORMAL = 0
CLOSE_FAILURE = 1

#: A full Stream packet (headers included) fits one of the worker pool's 64 KiB buffers.
_POOLED_PACKET = 64 * 1024
_PACKET_AND_FRAME_HEADERS = 17 + 26 + 8
#: Largest data payload of a packet an Ack may ride along with.
_PIGGYBACK_LIMIT = 32 * 1024
#: Ended paths whose counters the core keeps for statistics.
_ENDED_MEMORY = 16
#: Control bytes a path may send beyond its data budget (acks and answers keep flowing when
#: stream data fills the window).
_CONTROL_SLACK = 64 * 1024

#: Frames handled on arrival, whatever waits (see :mod:`.path`), Acks aside.
AtOnce = OpenStreamRespFrame | AddPathRespFrame | StreamCreditFrame | RelayCreditFrame
_AT_ONCE = (OpenStreamRespFrame, AddPathRespFrame, StreamCreditFrame, RelayCreditFrame)


class Sendable(Protocol):
    """Something with frames to send on a path, taken in turn (a stream, a relay's RelayData,
    a forwarded stream)."""

    @property
    def sendable(self) -> bool: ...


def frame_data_limit(config: Config) -> int:
    """Most data bytes kwik puts in one Stream or RelayData frame."""
    return min(config.max_stream_frame_data, _POOLED_PACKET - _PACKET_AND_FRAME_HEADERS)


class PathCore(ABC):
    """A session's paths and their records (see the module docstring).

    Args:
        is_client: the dialing side (it pings; its peer echoes).
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
        self._rings: dict[int, dict[Sendable, None]] = {}  # per path: what has output, in turn
        #: data bytes handed to paths, plus bytes taken from relay paths (a close's progress)
        self.delivery_progress = 0
        # retrying what waits
        self._waiting_paths: dict[int, None] = {}
        self._in_retry = False
        self._retry_again = False
        # close
        self.closing = False
        self.error: SessionClosedError | None = None

    # --- what the session adds (hooks) ---------------------------------------------------------

    @abstractmethod
    def _handle(self, path: CorePath, frame: Frame, *, force: bool) -> Outcome:
        """Handle a frame of a lane (Stream, RelayData, OpenStream, AddPath). ``force``: a dead
        path's leftovers, taken whatever the budgets."""

    @abstractmethod
    def _handle_at_once(self, path: CorePath, frame: AtOnce) -> None:
        """Handle a frame that never waits (an answer, credit)."""

    @abstractmethod
    def _credit_frames(self, path: CorePath) -> list[Frame]:
        """The credit updates owed on ``path`` now (built when it sends)."""

    @abstractmethod
    def _send_one(self, path: CorePath, item: Sendable) -> tuple[bytes | None, bool]:
        """One frame of ``item`` as a record, and whether it freed room someone waits for."""

    @abstractmethod
    def _path_added(self, path: CorePath) -> None:
        """A path was added."""

    @abstractmethod
    def _path_ended(
        self, path: CorePath, code: int, reason: str, *, by_peer: bool, now: float
    ) -> None:
        """A path is gone (what it held was handled): what it means for the session."""

    @abstractmethod
    def _grant_starved(self) -> None:
        """Room was freed: credit for the streams short of it."""

    @abstractmethod
    def _extra_deadline(self) -> float | None:
        """A deadline of the session's own (None: none)."""

    @abstractmethod
    def _on_deadline(self, now: float) -> None:
        """The timer fired: act on the session's own deadline if it passed."""

    # --- events and output ----------------------------------------------------------------------

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

    # --- paths ---------------------------------------------------------------------------------

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
        self._path_added(path)
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

    def peek_record(self, path_id: int, record: bytes, now: float) -> None:
        """A record the transport holds while the path takes no records (see
        :meth:`wants_records`): its Pings are answered now, so that a peer waiting for echoes
        does not take a path whose data waits for a slow reader for a dead one. The record is
        still handed in later with :meth:`receive_record`, in order (its Ping then echoed
        again: echoes are coalesced, so that is at most one more)."""
        path = self._paths.get(path_id)
        if path is None or not path.can_send:
            return
        try:
            packet = decode_packet(record, extended=path.extended)
        except ProtocolViolationError:
            return  # it fails the path when it is handed in
        if any(isinstance(f, PingFrame) for f in packet.frames):
            self._on_ping(path, now)

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

    # --- input ---------------------------------------------------------------------------------

    def _route(self, path: CorePath, frame: Frame) -> None:
        """Handle ``frame`` now, or make it wait in its lane (see :mod:`.path`)."""
        if isinstance(frame, AckFrame):
            path.stats.acks_received += 1
        elif isinstance(frame, _AT_ONCE):
            self._handle_at_once(path, frame)
        else:
            lane = path.control_waiting if path.is_control(frame) else path.data_waiting
            if lane:
                path.hold(lane, frame)
                return
            outcome = self._handle(path, frame, force=False)
            if outcome is not Verdict.TAKEN:
                path.hold(lane, outcome.frame if isinstance(outcome, Rest) else frame)
                self._waiting_paths[path.path_id] = None

    def _room_freed(self) -> None:
        """Something freed room (a read, an accept, output that left): retry what waits.

        The one hook for every budget: a new budget frees room here, nowhere else. Safe to
        call from within a retry (it runs again once the current one ends).
        """
        self._grant_starved()
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
        self._path_ended(path, code, reason, by_peer=by_peer, now=now)

    # --- timers --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (pure: nothing changes)."""
        deadline = self._extra_deadline()
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
        self._on_deadline(now)
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
