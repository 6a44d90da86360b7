"""The streams of a session (sans-IO): their ids, their table, and their shared receive budget.

* :class:`StreamTable` holds the live streams (established, waiting for accept, or being
  opened), the last finished ids with their final offsets (so that a late frame of a finished
  stream is recognised and an id is not reused too soon), and hands out local ids.
* :class:`ReceiveBudget` is ``Config.session_receive_buffer`` made concrete: what every stream
  may make the session hold (:attr:`~.stream.StreamReceiver.commitment`: credit granted and not
  used yet, plus bytes held beyond credit) stays within it. Credit is granted here, shared
  fairly between the live streams; frames of KWIK v2 writers are admitted here.

Neither emits events or touches a path: :class:`~.session.SessionCore` does, with what they
return.
"""

from __future__ import annotations

from collections import deque

from ..exceptions import StreamClosedError
from .frames import StreamFrame
from .stream import U64_MAX, LogicalStream, StreamReceiver

__all__ = ["ReceiveBudget", "StreamTable"]

#: Finished streams whose final offsets a session remembers.
RETIRED_MEMORY = 4096


class StreamTable:
    """Every stream of a session this side still knows, by id."""

    __slots__ = ("accept_queue", "live", "next_id", "opening", "remote_open", "retired")

    def __init__(self) -> None:
        self.live: dict[int, LogicalStream] = {}  # established (and remote pending accept)
        self.opening: dict[int, LogicalStream] = {}  # local, waiting for OpenStreamResp
        self.retired: dict[int, int] = {}  # finished id -> final offset, oldest first
        self.accept_queue: deque[LogicalStream] = deque()
        self.remote_open = 0  # peer-opened streams held (limit: max_streams)
        self.next_id = 1

    def __len__(self) -> int:
        return len(self.live) + len(self.opening)

    def get(self, stream_id: int) -> LogicalStream | None:
        """The live stream with this id (established, pending accept or opening)."""
        return self.live.get(stream_id) or self.opening.get(stream_id)

    def held(self, stream_id: int, *, is_client: bool, path_id: int) -> bool:
        """Whether an OpenStream for ``stream_id`` arriving on ``path_id`` must be refused: the
        id is held here. On a collision (both sides opening it at once) the server's own stream
        keeps the id; a client keeps an id it is opening to another path's server."""
        if stream_id in self.live:
            return True
        opening = self.opening.get(stream_id)
        return opening is not None and (not is_client or opening.home_path != path_id)

    def late(self, stream_id: int, end: int) -> bool:
        """Whether data ending at ``end`` belongs to a finished stream (a second writer's)."""
        final = self.retired.get(stream_id)
        return final is not None and end <= final

    def allocate_id(self) -> int:
        """The next free local id (never one held or recently finished).

        Raises:
            StreamClosedError: the ids are exhausted.
        """
        stream_id = self.next_id
        while stream_id in self.live or stream_id in self.opening or stream_id in self.retired:
            stream_id += 1
        if stream_id > U64_MAX:
            raise StreamClosedError("stream ids exhausted")
        self.next_id = stream_id + 1
        return stream_id

    def add_remote(self, stream: LogicalStream) -> None:
        """A stream the peer opened: live, and queued for accept."""
        self.retired.pop(stream.stream_id, None)
        self.live[stream.stream_id] = stream
        self.remote_open += 1
        self.accept_queue.append(stream)

    def accept(self) -> LogicalStream | None:
        if not self.accept_queue:
            return None
        stream = self.accept_queue.popleft()
        stream.accepted = True
        return stream

    def confirm(self, stream: LogicalStream) -> bool:
        """The peer confirmed a stream this side opened; False when the id was taken meanwhile
        by a stream the peer opened implicitly (the stream must move to another id)."""
        self.opening.pop(stream.stream_id, None)
        if stream.stream_id in self.live:
            return False
        self.live[stream.stream_id] = stream
        return True

    def forget(self, stream: LogicalStream) -> bool:
        """Drop a finished (or failed) stream, remembering its final offset; False when it was
        not live."""
        if stream.retired or self.live.get(stream.stream_id) is not stream:
            return False
        stream.retired = True
        del self.live[stream.stream_id]
        if not stream.local:
            self.remote_open -= 1
        recv = stream.receiver
        self.retired[stream.stream_id] = max(recv.read_offset, recv.highest_end)
        if len(self.retired) > RETIRED_MEMORY:
            del self.retired[next(iter(self.retired))]
        return True

    def all(self) -> list[LogicalStream]:
        return [*self.opening.values(), *self.live.values()]


class ReceiveBudget:
    """The session's receive budget, and the credit policy within it (see the module
    docstring)."""

    __slots__ = ("budget", "committed", "max_frame", "starved")

    def __init__(self, budget: int, max_frame: int) -> None:
        self.budget = budget
        self.max_frame = max_frame
        self.committed = 0  # credit open + bytes held beyond it, over every stream
        self.starved: dict[LogicalStream, None] = {}  # credit short of their window

    @property
    def room(self) -> int:
        return self.budget - self.committed

    def track(self, recv: StreamReceiver, before: int) -> None:
        """Account for a change of ``recv`` whose commitment was ``before``."""
        self.committed += recv.commitment - before

    def release(self, stream: LogicalStream) -> None:
        """Give the stream's share back (it was refused or forgotten)."""
        self.committed -= stream.receiver.commitment
        stream.receiver.limit = 0
        stream.writer_paths.clear()
        self.starved.pop(stream, None)

    def grant(self, stream: LogicalStream, live: int, *, initial: bool = False) -> bool:
        """Raise the stream's credit toward its window, within the budget shared fairly between
        ``live`` streams; a reader waiting with nothing to read always gets one frame's worth
        (so a reader never waits on budget that other streams hold). Returns True when the
        credit grew (the writers must be told)."""
        recv = stream.receiver
        if not stream.writer_paths or stream.retired:
            return False
        share = max(self.budget // max(live, 1), 1)
        if not initial and not recv.wants_credit(share):
            return False
        target = recv.credit_target(share)
        limit = min(target, max(recv.limit, recv.read_offset) + max(self.room, 0))
        if recv.reader_waiting and recv.readable == 0:
            limit = max(limit, recv.read_offset + min(recv.window, self.max_frame))
        before = recv.commitment
        grew = recv.grant(limit)
        if grew:
            self.track(recv, before)
        if recv.limit < target:
            self.starved[stream] = None
        return grew

    def take_starved(self) -> list[LogicalStream]:
        """The streams short of credit, to be granted again now that room was freed."""
        starved = list(self.starved)
        self.starved.clear()
        return starved

    def admit(self, recv: StreamReceiver, frame: StreamFrame) -> int | None:
        """How much of a KWIK v2 writer's frame may be taken now: None (all of it), 0 (it must
        wait) or the number of its bytes that fit. A frame that fills the gap a waiting reader
        waits at is always taken (a reader never waits on the budget other streams hold)."""
        end = frame.offset + len(frame.data)
        # below it is held already, or reserved by the credit other writers have
        new_start = max(frame.offset, recv.contiguous_end, recv.limit)
        cost = max(end - new_start, 0)
        room = self.room
        # a reader waiting with nothing to read takes one frame beyond the budget, not every
        # frame until it reads
        waiting_reader = (
            recv.reader_waiting and not recv.readable and frame.offset <= recv.contiguous_end
        )
        if cost <= room or waiting_reader:
            return None
        if room <= 0:
            return 0
        return new_start - frame.offset + room
