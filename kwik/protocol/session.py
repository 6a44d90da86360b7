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

from ..config import Config
from ..exceptions import PathError, ProtocolViolationError, SessionClosedError, StreamClosedError
from .core import CLOSE_FAILURE, CLOSE_NORMAL, AtOnce, PathCore, Sendable, frame_data_limit
from .events import (
    AddPathAnswered,
    ClosePath,
    DialRelay,
    FinishClose,
    RelayWritable,
    SessionTerminated,
    StreamArrived,
    StreamReadable,
    StreamWritable,
)
from .frames import (
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    RelayCreditFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
)
from .path import CorePath, Outcome, PathCounters, Rest, Verdict
from .relays import Forwarded, Forwarder, Outgoing, RelayOutbox
from .stream import U64_MAX, LogicalStream, OpenState
from .streams import ReceiveBudget, StreamTable

__all__ = [
    "CLOSE_FAILURE",
    "CLOSE_NORMAL",
    "MAX_ADDRESS_LENGTH",
    "PathCounters",
    "SessionCore",
    "frame_data_limit",
]


#: Times a refused OpenStream is retried under a new id before the stream is given up.
_MAX_OPEN_ATTEMPTS = 16
#: Longest AddPath address accepted: a DNS name (253) with brackets, a colon and a port.
MAX_ADDRESS_LENGTH = 264


class SessionCore(PathCore):
    """The state machine of one KWIK session (see the module docstring); the paths half,
    records and lanes and liveness, is :class:`~.core.PathCore`.

    Args:
        is_client: the dialing side (it pings, dials relays, merges their data).
        config: limits and timers; never mutated.
    """

    def __init__(self, *, is_client: bool, config: Config) -> None:
        super().__init__(is_client=is_client, config=config)
        # streams
        self._table = StreamTable()
        self._budget = ReceiveBudget(config.session_receive_buffer, self._max_frame)
        # relays
        self._outbox = RelayOutbox(self._max_frame)  # server
        self._forwarder = Forwarder(config.relay_buffer, config.max_streams)  # client
        # close
        self._ending: SessionClosedError | None = None  # primary gone, relays finishing
        self._ending_deadline: float | None = None

    # --- PathCore's hooks ------------------------------------------------------------------------

    def _handle_at_once(self, path: CorePath, frame: AtOnce) -> None:
        if isinstance(frame, OpenStreamRespFrame):
            self._on_open_stream_resp(path, frame)
        elif isinstance(frame, AddPathRespFrame):
            self._on_add_path_resp(path, frame)
        elif isinstance(frame, StreamCreditFrame):
            self._on_stream_credit(path, frame)
        else:
            self._on_relay_credit(path, frame)

    def _path_added(self, path: CorePath) -> None:
        if not path.primary:
            self._forwarder.add_path(path.path_id)

    def _path_ended(
        self, path: CorePath, code: int, reason: str, *, by_peer: bool, now: float
    ) -> None:
        path_id = path.path_id
        # forwarding to it is over, and streams written on it cannot go on
        self._forwarder.path_ended(path_id)
        if path is not self._primary:
            for stream in self._table.all():
                stream.writer_paths.discard(path_id)
                if stream.home_path == path_id:
                    self._fail_stream(stream, f"its path ({path_id}) closed: {reason}")
        if self.error is not None:
            return
        if path is self._primary or not self.path_ids():
            if path is not self._primary:
                reason = f"all paths failed ({reason})"
            error = SessionClosedError(code, reason or "path closed", remote=by_peer)
            if (
                path is self._primary
                and code == CLOSE_NORMAL
                and (self._relays_writing() or self._forwarder.has_unsent)
            ):
                # a graceful end: the streams relays still write may finish first, and what
                # the relays are owed (FINs) is delivered
                self.closing = True
                self._ending = error
                self._ending_deadline = now + self.config.close_timeout
                self._check_ending()
                return
            self._terminate(error)
        else:
            self._check_ending()
            self._room_freed()

    def _grant_starved(self) -> None:
        for stream in self._budget.take_starved():
            self._grant(stream)

    def _extra_deadline(self) -> float | None:
        return self._ending_deadline if self.error is None else None

    def _on_deadline(self, now: float) -> None:
        deadline = self._ending_deadline
        if self._ending is not None and self.error is None and deadline is not None:
            if now >= deadline:
                self._terminate(self._ending)

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
            was_over = sender.counted(limit) > limit
            frame = sender.next_frame(item.stream_id, self._max_frame)
            if frame is None:
                return None, False
            if was_over and sender.counted(limit) <= limit:
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
        assert isinstance(item, Forwarded)
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

    def _relays_writing(self) -> bool:
        """Client: a stream still waits for bytes a relay path writes."""
        if not self.is_client:
            return False
        live = {p.path_id for p in self._paths.values() if not p.primary and not p.terminated}
        for stream in self._table.live.values():
            if stream.receiver.complete or stream.receiver.cancelled:
                continue
            # not complete, and a secondary wrote into it (or opened it), or is forwarded it
            # while its final size is known (someone must still write what is missing)
            if stream.home_path in live or not live.isdisjoint(stream.heard_from):
                return True
            if stream.receiver.final_offset is not None and not live.isdisjoint(
                self._forwarder.forwards(stream.stream_id)
            ):
                return True
        return False

    def _check_ending(self) -> None:
        """After the primary's graceful end: once the streams relays write are complete, the
        adapter closes gracefully, so what is owed to the relays (the FINs of what they wrote)
        is delivered before their paths close; its close takes the primary's error."""
        ending = self._ending
        if ending is None or self.error is not None or self._ending_deadline is None:
            return
        if not self._relays_writing():
            self._ending_deadline = None  # the adapter's close bounds the rest (close_timeout)
            self._timer_dirty = True
            self._events.append(FinishClose(ending))

    # --- timers -------------------------------------------------------------------------------

    # --- frames -------------------------------------------------------------------------------

    def _on_stream_frame(self, path: CorePath, frame: StreamFrame, force: bool) -> Outcome:
        stream_id = frame.stream_id
        stream = self._table.live.get(stream_id)
        if stream is None:
            if stream_id == 0:
                raise ProtocolViolationError("Stream frame for stream id 0")
            if (self.error is not None and not force) or self._table.late(
                stream_id, frame.offset + len(frame.data)
            ):
                return Verdict.TAKEN  # a late frame of a finished stream (a second writer's)
            if path.extended:
                raise ProtocolViolationError(f"Stream frame for stream {stream_id} without credit")
            if self._table.remote_open >= self.config.max_streams:
                raise ProtocolViolationError(
                    f"stream {stream_id} opened implicitly beyond max_streams "
                    f"({self.config.max_streams})"
                )
            if not force and len(self._table.accept_queue) >= self.config.stream_backlog:
                return Verdict.WAIT
            # a Stream frame for an id never opened is an implicit open (KWIK v2)
            stream = self._new_remote_stream(stream_id, path)
        recv = stream.receiver
        recv.check(frame)
        rest: Outcome = Verdict.TAKEN
        if path.extended and not force:
            if path.path_id not in stream.writer_paths:
                raise ProtocolViolationError(f"Stream frame for stream {stream_id} without credit")
            recv.check_credit(frame)
        elif not force and frame.data and not recv.cancelled:
            # KWIK v2: the stream's window is soft, the session budget is not
            keep = self._budget.admit(recv, frame)
            if keep == 0:
                return Verdict.WAIT
            if keep is not None:  # take what fits; the rest waits
                rest = Rest(
                    StreamFrame(stream_id, frame.offset + keep, frame.fin, frame.data[keep:])
                )
                frame = StreamFrame(stream_id, frame.offset, False, frame.data[:keep])
        if not path.primary:
            self.delivery_progress += len(frame.data)
            stream.heard_from.add(path.path_id)
        before = recv.commitment
        if not recv.take(frame):
            if path.extended and not force:
                raise ProtocolViolationError(
                    f"stream {stream_id} would need more than "
                    f"{self.config.max_stream_fragments} out-of-order pieces"
                )
            if not force:
                return Verdict.WAIT  # too many separate pieces: wait until the gaps fill
            recv.raise_fragment_cap()  # a dead path's leftovers are taken whatever
            recv.take(frame)
        self._track(stream, before)
        self._after_receive(stream)
        return rest

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
        stream = self._new_stream(stream_id, local=False, path=path)
        self._table.add_remote(stream)
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
        if self._budget.grant(stream, len(self._table), initial=initial):
            self._mark_credit(stream)

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
        # never merge a new stream into one still held here: the opener moves to another id.
        # On a collision with the peer the client is opening it to, the server's own stream
        # keeps the id; an id the client is opening to another server (a secondary's open vs
        # the client's on the primary) stays the client's, or that server would confirm and
        # keep forever a stream the client moved away from.
        refuse = (
            self._table.held(stream_id, is_client=self.is_client, path_id=path.path_id)
            or self.error is not None
            or self.closing
            or self._table.remote_open >= self.config.max_streams
            or len(self._table.accept_queue) >= self.config.stream_backlog
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
        stream = self._table.opening.get(frame.stream_id)
        if stream is None or stream.home_path != path.path_id:
            return  # not ours, or an answer on another path than the one that asked: ignored
        # the id may have been taken meanwhile by a stream the peer opened implicitly (a Stream
        # frame): never replace it, move to another id as for a refusal
        if frame.success and self._table.confirm(stream):
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
        self._table.opening.pop(stream.stream_id, None)
        if stream.open_state is OpenState.CLOSED:
            self._budget.release(stream)  # its opener gave up: the credit it had goes back
            return
        if stream.open_attempts >= _MAX_OPEN_ATTEMPTS or self.error is not None:
            attempts = stream.open_attempts
            self._refuse(stream, f"the peer refused to open the stream ({attempts} ids)")
            return
        # the ids are shared with every other opener of the session (the client, the primary,
        # each secondary): a refused opener jumps ahead, twice as far each time, out of the ids
        # the others are opening now, rather than trailing them one id per round trip
        jump = frame.stream_id + (1 << stream.open_attempts)
        self._table.next_id = max(self._table.next_id, min(jump, U64_MAX))
        self._send_open(stream)

    def _refuse(self, stream: LogicalStream, reason: str) -> None:
        stream.open_state = OpenState.REFUSED
        stream.error = reason
        stream.sender.drop()
        self._budget.release(stream)
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
        if self._table.opening.get(stream.stream_id) is stream:  # (not an opener sharing its id)
            del self._table.opening[stream.stream_id]
        if not stream.receiver.readable:
            self._forget(stream)
        self._events.append(StreamWritable(stream))
        self._events.append(StreamReadable(stream))

    def _on_stream_credit(self, path: CorePath, frame: StreamCreditFrame) -> None:
        entry = self._forwarder.on_credit(path.path_id, frame.stream_id, frame.max_offset)
        if entry is not None:
            self._schedule(path.path_id, entry)
            return
        stream = self._table.live.get(frame.stream_id)
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
            stream = self._table.live.get(frame.dest_stream_id)
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
        budget = (1 << 62) if force else self.config.control_buffer
        joined = self._forwarder.join_dial(address, path.path_id, budget)
        if joined is not None:
            return Verdict.TAKEN if joined else Verdict.WAIT
        full = len(self.path_ids()) + len(self._forwarder.dialing) >= self.config.max_paths
        if self.error is not None or self.closing or full:
            self._answer_add_path(path, 0, address)
            return Verdict.TAKEN
        self._forwarder.dialing[address] = [path.path_id]
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
        for requester_id in self._forwarder.dial_done(address):
            requester = self._paths.get(requester_id)
            if requester is not None:
                self._answer_add_path(requester, path_id, address)
        self._room_freed()  # duplicates of the AddPath that waited for this dial go on

    def _on_add_path_resp(self, path: CorePath, frame: AddPathRespFrame) -> None:
        if self.is_client or not self._outbox.unask(frame.address):
            return
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
        stream.stream_id = self._table.allocate_id()
        stream.open_attempts += 1
        self._table.opening[stream.stream_id] = stream
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
        stream = self._table.accept()
        if stream is not None:
            self._room_freed()
        return stream

    @property
    def streams_pending_accept(self) -> int:
        return len(self._table.accept_queue)

    @property
    def open_streams(self) -> int:
        return len(self._table)

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
            self._track(stream, before)
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

    def _track(self, stream: LogicalStream, before: int) -> None:
        """Count the change of ``stream``'s commitment (from ``before``) in the session budget,
        while the session holds it: a stream it forgot or refused gave its share back."""
        sid = stream.stream_id
        if self._table.live.get(sid) is stream or self._table.opening.get(sid) is stream:
            self._budget.track(stream.receiver, before)

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
        self._track(stream, before)
        self._budget.starved.pop(stream, None)
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
        self._track(stream, before)
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
        return stream.sender.counted(self.config.stream_send_buffer)

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
        if self._table.forget(stream):
            for ring in self._rings.values():
                ring.pop(stream, None)
            self._budget.release(stream)
            self._room_freed()

    def stream_for(self, stream_id: int) -> LogicalStream | None:
        """The live stream with this id (established, pending accept or opening)."""
        return self._table.get(stream_id)

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
        self._outbox.ask(address)
        primary.queue_answer(AddPathFrame(address))
        self._mark_output(primary)

    def cancel_relay_request(self, address: str) -> None:
        """Server: stop waiting for an answer to an AddPath (timed out)."""
        self._outbox.unask(address)

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

    def relay_backlog(self, relay_path_id: int) -> int:
        """Client: bytes the primary relayed for ``relay_path_id`` not yet forwarded to it
        (``Config.relay_buffer`` bounds it)."""
        return self._forwarder.backlog.get(relay_path_id, 0)

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
        streams = [*self._table.live.values(), *self._table.opening.values()]
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
            if self._ending is not None and code == CLOSE_NORMAL:
                self._terminate(self._ending)  # the primary ended it: its error stands
                return
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
        for stream in [*self._table.opening.values(), *self._table.live.values()]:
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
        return self._budget.committed

    def table_sizes(self) -> dict[str, int]:
        """How many entries each per-peer table holds (the tests check nothing grows)."""
        return {
            "streams": len(self._table.live),
            "opening": len(self._table.opening),
            "retired": len(self._table.retired),
            "accept_queue": len(self._table.accept_queue),
            "remote_open": self._table.remote_open,
            "starved": len(self._budget.starved),
            "sendable": sum(len(r) for r in self._rings.values()),
            "forwarded": len(self._forwarder.entries),
            "relay_asked": len(self._outbox.asked),
            "dialing": len(self._forwarder.dialing),
            "waiting_paths": len(self._waiting_paths),
            "waiting_frames": sum(
                len(p.data_waiting) + len(p.control_waiting) for p in self._paths.values()
            ),
        }
