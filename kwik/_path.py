"""One path: one aioquic connection carrying one KWIK transport stream.

:class:`Path` is an aioquic ``QuicConnectionProtocol``. It feeds the transport stream's bytes to
the sans-IO :class:`~kwik.protocol.RecordReader`, hands each record to the session (inline, or
through the global worker pool), sends records with ``send_stream_data``, acknowledges packets,
echoes or sends Pings, and keeps memory bounded in both directions:

* **receive**: kwik grants QUIC flow-control credit on the transport stream only for bytes it
  has taken out of the reader (plus ``Config.path_receive_window``). A path that stops taking
  records (a stream buffer is full, the pool queue is full) therefore stops its peer, while
  aioquic's own auto-growing windows would let it buffer without limit.
* **send**: aioquic's send buffer is unbounded, so streams hand bytes to a path only while the
  bytes it has not seen acknowledged stay under ``Config.path_send_window``.

aioquic internals are touched in three places, all here: the transport stream's credit
(``_write_stream_limits``), its unacknowledged byte count, and the smoothed RTT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType

from ._addr import format_address
from .config import Config
from .exceptions import ProtocolViolationError
from .protocol import (
    AckFrame,
    AckTracker,
    Frame,
    Heartbeat,
    PingFrame,
    RecordReader,
    decode_packet,
    encode_record,
)

if TYPE_CHECKING:
    from aioquic.quic.packet_builder import QuicPacketBuilder
    from aioquic.quic.stream import QuicStream

logger = logging.getLogger("kwik.path")

#: The QUIC stream carrying KWIK records: the first client-initiated bidirectional stream.
TRANSPORT_STREAM_ID = 0

#: Application error codes on the QUIC connection (spec §3 "Close").
CLOSE_NORMAL = 0
CLOSE_FAILURE = 1


class PathState(StrEnum):
    """Life of a path."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    FAILED = "failed"
    CLOSED = "closed"


class PathOwner(Protocol):
    """What a path needs from the session it belongs to."""

    def _dispatch(self, path: Path, frames: Sequence[Frame]) -> None: ...

    def _on_path_terminated(self, path: Path) -> None: ...


class RecordSink(Protocol):
    """Where a path's records go when the worker pool is on (``kwik._pool.WorkerPool``)."""

    def has_room(self) -> bool: ...

    def wait_room(self, path: Path) -> None:
        """Call ``path.sink_ready()`` once there is room again."""
        ...

    def submit(self, path: Path, record: memoryview) -> bool:
        """Take ``record`` (copying it); return False when now full (the path must pause)."""
        ...


class Path(QuicConnectionProtocol):
    """One QUIC connection of a session (see the module docstring).

    Created by :func:`kwik._connect.connect_path` (client) or by the listener's aioquic server
    (server). The session attaches itself with :meth:`attach`.
    """

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        is_client: bool,
        config: Config,
        on_first_record: Callable[[Path], None] | None = None,
    ) -> None:
        super().__init__(quic)
        self.is_client = is_client
        self.config = config
        self.path_id = 0
        self.is_primary = False
        self.state = PathState.CONNECTING
        self.session: PathOwner | None = None
        self.remote_address = ""
        self.dialed_as = ""  # the address string this path was dialed for (client)
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_peer = False
        self._on_first_record = on_first_record
        self._reader = RecordReader(config.max_record_size)
        self._acks = AckTracker(config.ack_interval, config.ack_threshold)
        self._heartbeat: Heartbeat | None = None
        self._next_packet_number = 1
        self._blockers: set[object] = set()
        self._parked: deque[bytes] = deque()  # records held while blocked
        self.sink: RecordSink | None = None
        self._sink_full = False
        self._room_waiters: dict[Any, Callable[[], None]] = {}
        self._progress: asyncio.Event | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._resume_handle: asyncio.Handle | None = None
        self._terminated = asyncio.Event()
        self._local_close = False
        self._credit_step = max(config.path_receive_window // 8, 1)
        # statistics
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.duplicates_received = 0
        self.acks_sent = 0
        self.acks_received = 0
        self.pings_received = 0
        self.created_at = time.monotonic()
        _install_credit_control(quic, self)

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, session: PathOwner, path_id: int, *, primary: bool) -> None:
        self.session = session
        self.path_id = path_id
        self.is_primary = primary
        if self.state is PathState.CONNECTING:
            self.state = PathState.ACTIVE

    def set_remote_address(self, addr: tuple[Any, ...]) -> None:
        self.remote_address = format_address(str(addr[0]), int(addr[1]))

    @property
    def local_address(self) -> str:
        if self._transport is None:
            return ""
        sockname = self._transport.get_extra_info("sockname")
        if not sockname:
            return ""
        return format_address(str(sockname[0]), int(sockname[1]))

    @property
    def is_active(self) -> bool:
        return self.state is PathState.ACTIVE

    # --- client start ---------------------------------------------------------------------------

    def start_client(self) -> None:
        """Send the first record at once (a Ping) and start the heartbeat (spec §3 path start).

        Called from the HandshakeCompleted event, before aioquic transmits, so the record
        leaves together with the client's last handshake flight: the server learns of the
        session one loop iteration (and one datagram) sooner.
        """
        self.state = PathState.ACTIVE
        now = self._loop.time()
        self._heartbeat = Heartbeat(
            self.config.heartbeat_interval, self.config.heartbeat_miss_threshold, now
        )
        self._heartbeat.on_ping_sent(now)
        self.send_frames([PingFrame()])
        self._arm_heartbeat()

    # --- sending --------------------------------------------------------------------------------

    def send_frames(self, frames: Sequence[Frame], payload: int = 0) -> int:
        """Send ``frames`` as one packet on the transport stream; return its size in bytes.

        A pending acknowledgement rides along once half of ``ack_threshold`` packets wait for
        it, but only on small packets (``payload``: the data bytes the frames carry), so that
        a full packet still fits a 64 KiB worker-pool buffer at the receiver. Transmission
        happens on the next loop iteration (or at once, see :meth:`transmit_now`). Raises
        nothing: frames sent on a path that is no longer active are dropped.
        """
        if self.state is not PathState.ACTIVE or self._local_close:
            return 0
        if payload <= _PIGGYBACK_LIMIT and self._acks.worth_piggybacking:
            ack = self._acks.build_ack()
            if ack is not None:
                frames = [*frames, ack]
                self.acks_sent += 1
                self._cancel_ack_timer()
        packet_number = self._next_packet_number
        self._next_packet_number += 1
        record = encode_record(packet_number, frames)
        self._quic.send_stream_data(TRANSPORT_STREAM_ID, record)
        self.bytes_sent += len(record)
        self.packets_sent += 1
        self._transmit_soon()
        return len(record)

    def transmit(self) -> None:
        """Send pending datagrams and re-arm the timer (aioquic's, with a precise clock).

        aioquic asks its pacer with ``loop.time()``. On uvloop that clock advances in 1 ms
        steps while the pacer schedules sends less than 1 ms apart, so the timer fires, finds
        nothing due at the same coarse "now" and re-arms itself, spinning until the clock
        ticks: 2 MB/s at 100 % CPU. ``time.monotonic()`` is the same clock as asyncio's
        ``loop.time()`` and libuv's, at full resolution.
        """
        self._transmit_task = None
        transport = self._transport
        if transport is None:
            return
        for data, addr in self._quic.datagrams_to_send(now=time.monotonic()):
            transport.sendto(data, addr)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def transmit_now(self) -> None:
        """Send what is pending at once instead of on the next loop iteration.

        For writes that emptied a stream's buffer (like TCP_NODELAY): a small message leaves
        one loop iteration earlier. Large writes keep coalescing through ``_transmit_soon``.
        """
        handle = self._transmit_task
        if handle is not None and self.state is PathState.ACTIVE:
            handle.cancel()
            self.transmit()

    def unacked_bytes(self) -> int:
        """Bytes handed to QUIC on the transport stream and not yet acknowledged by the peer."""
        stream = self._quic._streams.get(TRANSPORT_STREAM_ID)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def has_room(self) -> bool:
        return self.unacked_bytes() < self.config.path_send_window

    def want_room(self, key: Any, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the send window has room again (after an acknowledgement)."""
        self._room_waiters[key] = callback

    def cancel_room(self, key: Any) -> None:
        self._room_waiters.pop(key, None)

    async def wait_progress(self) -> None:
        """Wait until the next datagram from the peer has been processed (or termination)."""
        if self._terminated.is_set():
            return
        if self._progress is None:
            self._progress = asyncio.Event()
        progress = self._progress
        terminated = asyncio.ensure_future(self._terminated.wait())
        progressed = asyncio.ensure_future(progress.wait())
        try:
            await asyncio.wait((terminated, progressed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            terminated.cancel()
            progressed.cancel()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self._room_waiters and self.has_room():
            waiters = list(self._room_waiters.values())
            self._room_waiters.clear()
            for callback in waiters:
                callback()
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    # --- receiving ------------------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if event.stream_id != TRANSPORT_STREAM_ID:
                # kwik uses one QUIC stream per path; others carry nothing of ours
                return
            if event.data:
                self.bytes_received += len(event.data)
                self._reader.feed(event.data)
                if self.session is None and self._on_first_record is not None:
                    callback, self._on_first_record = self._on_first_record, None
                    callback(self)
                    if self.session is None:
                        return
                self.pump()
            if event.end_stream and self.state is PathState.ACTIVE:
                self.close(CLOSE_NORMAL, "transport stream finished by the peer")
        elif isinstance(event, events.ConnectionTerminated):
            self._on_terminated(event)
        elif isinstance(event, events.HandshakeCompleted):
            peer = self._quic._network_paths[0].addr if self._quic._network_paths else None
            if peer is not None and not self.remote_address:
                self.set_remote_address(peer)
            if self.is_client and self.state is PathState.CONNECTING:
                self.start_client()

    def pump(self) -> None:
        """Take records out of the reader while the path may: a blocked path keeps its bytes
        (and so withholds flow-control credit from its peer)."""
        if self.session is None or self.state is not PathState.ACTIVE:
            return
        reader = self._reader
        try:
            while not self._blockers and not self._sink_full:
                sink = self.sink
                if sink is not None and not sink.has_room():
                    self._sink_full = True
                    sink.wait_room(self)
                    break
                record = reader.next_record()
                if record is None:
                    break
                if sink is None:
                    self.process_record(record)
                elif not sink.submit(self, record):
                    self._sink_full = True
                    sink.wait_room(self)
        except ProtocolViolationError as exc:
            self.fail(f"protocol violation: {exc}")

    def process_record(self, record: memoryview) -> None:
        """Decode one packet and dispatch its frames, unless it is a duplicate.

        Must be called in the order records arrived on the path. A record that arrives while
        the path is blocked is parked and processed, in order, once it unblocks.
        """
        if self._blockers or self._parked:
            self._parked.append(bytes(record))
            return
        self._process(record)

    def _process(self, record: memoryview | bytes) -> None:
        if self.state is not PathState.ACTIVE or self.session is None:
            return
        try:
            packet = decode_packet(record)
        except ProtocolViolationError as exc:
            self.fail(f"protocol violation: {exc}")
            return
        self.packets_received += 1
        if not self._acks.on_packet(packet.packet_number, packet.ack_eliciting, self._loop.time()):
            self.duplicates_received += 1
            return
        try:
            self.session._dispatch(self, packet.frames)
        except ProtocolViolationError as exc:
            self.fail(f"protocol violation: {exc}")
            return
        if self._acks.ack_due(self._loop.time()):
            self.send_ack()
        elif self._ack_timer is None:
            self._arm_ack_timer()

    def on_ping(self) -> None:
        """A Ping arrived: the server side echoes it, the client side counts it as the pong."""
        self.pings_received += 1
        if self.is_client:
            if self._heartbeat is not None:
                self._heartbeat.on_pong(self._loop.time())
        else:
            self.send_frames([PingFrame()])

    def on_ack(self, frame: AckFrame) -> None:
        # QUIC already delivered the packet reliably; the Ack only matters to Go peers, which
        # retransmit without it. kwik keeps no retransmission queue, so it only counts them.
        self.acks_received += 1

    # --- back-pressure --------------------------------------------------------------------------

    def block(self, reason: object) -> None:
        """Stop taking records until :meth:`unblock` is called with the same ``reason``."""
        self._blockers.add(reason)

    def unblock(self, reason: object) -> None:
        if reason in self._blockers:
            self._blockers.discard(reason)
            if not self._blockers:
                self._schedule_resume()

    def sink_ready(self) -> None:
        """The worker pool has room again: take records again."""
        if self._sink_full:
            self._sink_full = False
            self._schedule_resume()

    @property
    def is_blocked(self) -> bool:
        return bool(self._blockers)

    def _schedule_resume(self) -> None:
        if self._resume_handle is None and self.state is PathState.ACTIVE:
            self._resume_handle = self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_handle = None
        parked = self._parked
        while parked and not self._blockers and self.state is PathState.ACTIVE:
            record = parked.popleft()
            self._process(record)
        if not self._blockers:
            self.pump()
        # credit for what was just consumed, and any acknowledgement
        self._transmit_soon()

    # --- timers ---------------------------------------------------------------------------------

    def send_ack(self) -> None:
        self._cancel_ack_timer()
        ack = self._acks.build_ack()
        if ack is not None and self.state is PathState.ACTIVE:
            self.acks_sent += 1
            self.send_frames([ack])

    def _arm_ack_timer(self) -> None:
        deadline = self._acks.get_timer()
        if deadline is None or self._ack_timer is not None:
            return
        self._ack_timer = self._loop.call_at(deadline, self._on_ack_timer)

    def _on_ack_timer(self) -> None:
        self._ack_timer = None
        self.send_ack()

    def _cancel_ack_timer(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _arm_heartbeat(self) -> None:
        if self._heartbeat is None or self.state is not PathState.ACTIVE:
            return
        deadline = self._heartbeat.get_timer()
        if deadline is not None:
            self._heartbeat_timer = self._loop.call_at(deadline, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        self._heartbeat_timer = None
        heartbeat = self._heartbeat
        if heartbeat is None or self.state is not PathState.ACTIVE:
            return
        if heartbeat.on_timer(self._loop.time()):
            self.send_frames([PingFrame()])
        if heartbeat.failed:
            logger.info(
                "path %d to %s: %d heartbeats unanswered, failing it",
                self.path_id,
                self.remote_address,
                heartbeat.missed,
            )
            self.fail("heartbeat timeout")
            return
        self._arm_heartbeat()

    # --- closing --------------------------------------------------------------------------------

    def close(self, error_code: int = CLOSE_NORMAL, reason_phrase: str = "") -> None:
        """Close the QUIC connection with an application error code (spec §3 "Close")."""
        if self._local_close or self.state in (PathState.CLOSED, PathState.FAILED):
            if not self._terminated.is_set() and not self._local_close:
                self._local_close = True
                super().close(error_code, reason_phrase)
            return
        self._local_close = True
        self.close_code = error_code
        self.close_reason = reason_phrase
        # closed from kwik's point of view now; aioquic reports termination after draining
        self.state = PathState.FAILED if error_code == CLOSE_FAILURE else PathState.CLOSED
        self._stop_timers()
        super().close(error_code, reason_phrase)

    def fail(self, reason: str) -> None:
        """Close the path as failed (code 1); the session decides what that means for it."""
        if self.state is PathState.ACTIVE or self.state is PathState.CONNECTING:
            logger.warning("path %d to %s failed: %s", self.path_id, self.remote_address, reason)
            self.state = PathState.FAILED
            self.close_code = CLOSE_FAILURE
            self.close_reason = reason
            self._stop_timers()
            self._local_close = True
            super().close(CLOSE_FAILURE, reason)
            if self.session is not None:
                self.session._on_path_terminated(self)

    def abort(self) -> None:
        """Close at once and release the socket (client paths); used when a dial fails."""
        self._local_close = True
        self._stop_timers()
        if not self._terminated.is_set():
            super().close(CLOSE_FAILURE, "aborted")
        if self.is_client and self._transport is not None:
            self._transport.close()

    async def wait_terminated(self) -> None:
        await self._terminated.wait()

    @property
    def terminated(self) -> bool:
        return self._terminated.is_set()

    def _stop_timers(self) -> None:
        self._cancel_ack_timer()
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
            self._heartbeat_timer = None
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        self._room_waiters.clear()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        self._stop_timers()
        self._parked.clear()
        if not self._local_close:
            self.closed_by_peer = True
            self.close_code = event.error_code
            self.close_reason = event.reason_phrase
        if self.state is not PathState.FAILED:
            self.state = (
                PathState.CLOSED
                if self._local_close or event.error_code == CLOSE_NORMAL
                else PathState.FAILED
            )
        self._terminated.set()
        if self._progress is not None:
            self._progress.set()
            self._progress = None
        if self.is_client and self._transport is not None:
            # a client path owns its UDP socket
            self._transport.close()
        logger.debug(
            "path %d to %s terminated: code %s %r (by %s)",
            self.path_id,
            self.remote_address,
            self.close_code,
            self.close_reason,
            "peer" if self.closed_by_peer else "us",
        )
        if self.session is not None:
            self.session._on_path_terminated(self)

    # --- statistics -----------------------------------------------------------------------------

    @property
    def rtt(self) -> float | None:
        """aioquic's smoothed RTT of the connection in seconds, None before any sample."""
        loss = getattr(self._quic, "_loss", None)
        if loss is None or not getattr(loss, "_rtt_initialized", False):
            return None
        return float(loss._rtt_smoothed)

    @property
    def heartbeat(self) -> Heartbeat | None:
        return self._heartbeat

    @property
    def records_buffered(self) -> int:
        return self._reader.buffered

    def __repr__(self) -> str:
        return (
            f"<Path {self.path_id} {'client' if self.is_client else 'server'} "
            f"{self.remote_address} {self.state.value}>"
        )


def _install_credit_control(quic: QuicConnection, path: Path) -> None:
    """Replace aioquic's stream credit policy on this connection by kwik's.

    aioquic doubles a stream's receive credit whenever the peer has sent half of it, whether or
    not anyone consumed the bytes. kwik grants the transport stream credit up to what the record
    reader consumed plus ``path_receive_window``, and never raises other streams' credit.
    """

    def write_stream_limits(builder: QuicPacketBuilder, space: Any, stream: QuicStream) -> None:
        if stream.max_stream_data_local and stream.stream_id == TRANSPORT_STREAM_ID:
            wanted = path._reader.consumed + path.config.path_receive_window
            if wanted - stream.max_stream_data_local >= path._credit_step:
                stream.max_stream_data_local = wanted
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=_MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=quic._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            assert stream.stream_id is not None
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    quic._write_stream_limits = write_stream_limits  # type: ignore[method-assign]


_MAX_STREAM_DATA_FRAME_CAPACITY = 1 + 2 * 8
#: Largest data payload of a packet an Ack may ride along with.
_PIGGYBACK_LIMIT = 32 * 1024
