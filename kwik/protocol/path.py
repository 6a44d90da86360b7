"""What the session core knows of one path (sans-IO): numbering, the control lane, waiting frames.

A path's records are handled in arrival order, but not every frame has to wait for the one
before it (``docs/protocol.md``, "How a path takes frames"):

* **at once**, whatever waits: Ping (answered by one echo per packet), Ack, OpenStreamResp,
  AddPathResp and the credit extension's frames. They cost no memory beyond a flag or a counter;
* **the control lane**, in order: OpenStream and AddPath, whose answers must be sent. They wait
  while the answers already queued for the peer are over ``Config.control_buffer`` (a peer that
  does not read what we send stops getting answers);
* **the data lane**, in order: Stream and RelayData. On a path with the credit extension a
  frame within credit always fits and never waits. On a KWIK v2 path a frame waits while the
  session's receive budget (or the relay budget) is spent; frames after it join it.

Frames that wait are copied (the record's buffer is reused) and count against
``Config.path_receive_window``: while they are under it the path keeps taking records, so that
Pings and answers behind waiting data are still handled; beyond it the path stops taking records
and its transport withholds QUIC credit, which stops the peer.

Output is built when the path can send, never queued ahead: the echo is a flag, the Ack comes
from the tracker, credit frames carry the newest limit of each stream marked for an update, and
answers wait in a queue bounded by ``control_buffer``. A peer that withholds credit therefore
cannot make a path hold more than that, however many Pings it sends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from ..config import Config
from .acks import AckTracker
from .frames import (
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    PingFrame,
    RelayDataFrame,
    StreamFrame,
    encode_packet,
    encode_record,
)
from .liveness import Liveness

__all__ = ["CorePath", "PathCounters", "Rest", "Verdict", "frame_copy"]

#: Encoded size of a control frame, for the control budget (its fields; an address on top).
_CONTROL_FRAME = 24
#: Control frames per record at most.
_CONTROL_FRAMES_PER_RECORD = 512
#: What a record's outer length L1 counts besides its frames: the inner prefix and the header.
_RECORD_FIXED = 4 + 17


class Verdict(Enum):
    """What a frame handler did with a frame (see :class:`Rest` for the third answer)."""

    TAKEN = "taken"
    """Handled: the next frame may go."""
    WAIT = "wait"
    """Not now: the frame waits, with every later frame of its lane."""


@dataclass(frozen=True, slots=True)
class Rest:
    """Part of the frame was taken; ``frame`` (the rest) waits."""

    frame: Frame


Outcome = Verdict | Rest


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
    credit_frames_sent: int = 0
    credit_bytes_sent: int = 0
    heartbeat_rtt: float | None = None
    ping_sent_at: float | None = None


def frame_copy(frame: Frame) -> Frame:
    """A frame whose data no longer refers to the caller's (reused) buffer."""
    if isinstance(frame, StreamFrame) and not isinstance(frame.data, bytes):
        return StreamFrame(frame.stream_id, frame.offset, frame.fin, bytes(frame.data))
    if isinstance(frame, RelayDataFrame) and not isinstance(frame.data, bytes):
        return RelayDataFrame(frame.relay_path_id, frame.dest_stream_id, bytes(frame.data))
    return frame


def _held_size(frame: Frame) -> int:
    if isinstance(frame, StreamFrame | RelayDataFrame):
        return len(frame.data) + 32
    if isinstance(frame, AddPathFrame):
        return len(frame.address) + 16
    return 16


class CorePath:
    """One path as the session core sees it (owned by :class:`~.session.SessionCore`)."""

    __slots__ = (
        "_answer_bytes",
        "_answers",
        "_waiting_bytes",
        "acks",
        "closing",
        "control_buffer",
        "control_waiting",
        "credit_dirty",
        "data_waiting",
        "dialed_as",
        "echo_pending",
        "extended",
        "failing",
        "liveness",
        "max_record_size",
        "next_packet_number",
        "output_blocked",
        "path_id",
        "primary",
        "relay_credit_dirty",
        "stats",
        "terminated",
        "transport",
        "wait_limit",
    )

    def __init__(
        self,
        path_id: int,
        *,
        primary: bool,
        extended: bool,
        config: Config,
        pings: bool,
        now: float,
    ) -> None:
        self.path_id = path_id
        self.primary = primary
        #: the credit extension was negotiated on this path (ALPN)
        self.extended = extended
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
            pings=pings,
            now=now,
        )
        self.next_packet_number = 1
        self.max_record_size = config.max_record_size
        self.control_buffer = config.control_buffer
        self.wait_limit = config.path_receive_window
        self.stats = PathCounters()
        # output, built when the path can send
        self.echo_pending = False
        self._answers: deque[Frame] = deque()
        self._answer_bytes = 0
        self.credit_dirty: dict[int, None] = {}  # stream ids whose credit grew, in order
        self.relay_credit_dirty: dict[int, None] = {}  # relay path ids (client, primary path)
        # input that waits, per lane, in order (copied)
        self.control_waiting: deque[Frame] = deque()
        self.data_waiting: deque[Frame] = deque()
        self._waiting_bytes = 0
        #: the transport's last report: in flight, PTO, withholding on its own, blocked
        self.transport: tuple[bool, float, bool, bool] = (False, 0.0, False, False)
        #: the transport could take nothing at the last pull: due acks wait for room
        self.output_blocked = False
        # life
        self.closing = False  # its connection is being closed: nothing more to send
        self.failing = False  # kwik failed it: it takes what it still holds, then ends
        self.terminated = False

    def __repr__(self) -> str:
        return (
            f"<CorePath {self.path_id}{' primary' if self.primary else ''}"
            f"{' extended' if self.extended else ''} waiting={len(self.data_waiting)}"
            f"+{len(self.control_waiting)}{' terminated' if self.terminated else ''}>"
        )

    # --- output -------------------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        return not (self.terminated or self.closing or self.failing)

    @property
    def control_full(self) -> bool:
        """Answers queued for the peer are over ``control_buffer``."""
        return self._answer_bytes > self.control_buffer

    def queue_answer(self, frame: Frame) -> None:
        """Queue a frame that must reach the peer (an answer, an OpenStream, an AddPath)."""
        if not self.can_send:
            return
        self._answers.append(frame)
        self._answer_bytes += _CONTROL_FRAME + (
            len(frame.address) if isinstance(frame, AddPathFrame | AddPathRespFrame) else 0
        )

    @property
    def has_control(self) -> bool:
        return bool(
            self._answers or self.echo_pending or self.credit_dirty or self.relay_credit_dirty
        )

    def take_answers(self) -> list[Frame]:
        """The echo (if one is owed) and the queued answers, removed from the path."""
        frames: list[Frame] = []
        if self.echo_pending:
            self.echo_pending = False
            frames.append(PingFrame())
        frames.extend(self._answers)
        self._answers.clear()
        self._answer_bytes = 0
        return frames

    def encode(self, frames: list[Frame]) -> bytes:
        """Number and encode one packet of ``frames`` as a record."""
        number = self.next_packet_number
        self.next_packet_number += 1
        self.stats.packets_sent += 1
        return encode_record(number, frames)

    def encode_control(self, frames: list[Frame]) -> list[bytes]:
        """Encode control frames as records within ``max_record_size`` (the Ack the tracker
        builds may fill a record alone: it then gets one of its own)."""
        if len(frames) <= 1:
            return [self.encode(frames)] if frames else []  # (the common case: one frame fits)
        records: list[bytes] = []
        batch: list[Frame] = []
        size = _RECORD_FIXED
        for frame in frames:
            n = len(encode_packet(0, [frame])) - 17
            if batch and (
                len(batch) >= _CONTROL_FRAMES_PER_RECORD or size + n > self.max_record_size
            ):
                records.append(self.encode(batch))
                batch, size = [], _RECORD_FIXED
            batch.append(frame)
            size += n
        if batch:
            records.append(self.encode(batch))
        return records

    def drop_output(self) -> None:
        """Nothing more will be sent on this path."""
        self._answers.clear()
        self._answer_bytes = 0
        self.echo_pending = False
        self.credit_dirty.clear()
        self.relay_credit_dirty.clear()

    # --- input that waits ---------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        return bool(self.data_waiting or self.control_waiting)

    @property
    def takes_records(self) -> bool:
        """Whether the transport may hand this path's next record in now: frames that wait
        are under ``path_receive_window``."""
        return not self.terminated and self._waiting_bytes < self.wait_limit

    def hold(self, lane: deque[Frame], frame: Frame) -> None:
        """Make ``frame`` wait at the back of ``lane``."""
        lane.append(frame_copy(frame))
        self._waiting_bytes += _held_size(frame)

    def replace_head(self, lane: deque[Frame], frame: Frame) -> None:
        """The head of ``lane`` was partly taken: ``frame`` is what is left of it."""
        old = lane[0]
        lane[0] = frame_copy(frame)
        self._waiting_bytes += _held_size(frame) - _held_size(old)

    def release_head(self, lane: deque[Frame]) -> None:
        self._waiting_bytes -= _held_size(lane.popleft())

    def clear_waiting(self) -> None:
        self.data_waiting.clear()
        self.control_waiting.clear()
        self._waiting_bytes = 0

    @staticmethod
    def is_control(frame: Frame) -> bool:
        """Frames of the control lane (answered in order, independently of data)."""
        return isinstance(frame, OpenStreamFrame | AddPathFrame)
