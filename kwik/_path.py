"""One path: one aioquic connection carrying one KWIK transport stream (the I/O of a path).

:class:`Path` is an aioquic ``QuicConnectionProtocol``. It cuts the transport stream into
records with the sans-IO :class:`~kwik.protocol.RecordReader` and hands them, in arrival order,
to its owner (the session adapter, which feeds :class:`~kwik.protocol.session.SessionCore`),
inline or through the global worker pool. It writes the records the core produces with
``send_stream_data`` and reports what the core needs to know of QUIC: datagrams received
(liveness), bytes in flight and the PTO, the end of the connection.

Memory stays bounded in both directions:

* **receive**: the transport stream's QUIC credit is what the reader consumed plus
  ``Config.path_receive_window`` (:func:`kwik._aioquic.install_credit_control`). A path whose
  owner does not want records (a stream window is full, ...) stops cutting them, so its peer
  stops. Other QUIC streams get almost no credit and are stopped at once.
* **send**: the owner pulls records from the core only within ``Config.path_send_window``
  minus what QUIC has not seen acknowledged (aioquic's own send buffer is unbounded).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from . import _aioquic
from ._addr import format_address
from .config import Config
from .exceptions import ProtocolViolationError
from .protocol import RecordReader
from .protocol.session import CLOSE_FAILURE, CLOSE_NORMAL

logger = logging.getLogger("kwik.path")

TRANSPORT_STREAM_ID = _aioquic.TRANSPORT_STREAM_ID

__all__ = ["CLOSE_FAILURE", "CLOSE_NORMAL", "Path", "PathOwner", "PathState", "RecordSink"]


class PathState(StrEnum):
    """Life of a path."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    FAILED = "failed"
    CLOSED = "closed"


class PathOwner(Protocol):
    """What a path needs from the session it belongs to."""

    def _path_wants_records(self, path: Path) -> bool: ...

    def _path_record(self, path: Path, record: memoryview | bytes) -> None: ...

    def _path_peek(self, path: Path, record: bytes) -> None: ...

    def _path_datagram(self, path: Path) -> None: ...

    def _path_transmitted(self, path: Path, in_flight: bool, pto: float) -> None: ...

    def _path_terminated(self, path: Path) -> None: ...


class RecordSink(Protocol):
    """Where a path's records go when the worker pool is on (``kwik._pool.WorkerPool``)."""

    def has_room(self) -> bool: ...

    def wait_room(self, path: Path) -> None:
        """Call ``path.sink_ready()`` once there is room again."""
        ...

    def submit(self, path: Path, record: memoryview) -> bool:
        """Take ``record`` (copying it); return False when now full (the path must pause)."""
        ...

    def detach(self, path: Path) -> None:
        """Stop taking ``path``'s records; hand those still queued back with
        ``path.take_back``."""
        ...


class Path(QuicConnectionProtocol):
    """One QUIC connection of a session (see the module docstring).

    Created by :func:`kwik._connect.connect_path` (client) or by the listener's aioquic server
    (server). The session adapter attaches itself with :meth:`attach`.
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
        self.state = PathState.CONNECTING
        self.owner: PathOwner | None = None
        self.remote_address = ""
        self.dialed_as = ""  # the address string this path was dialed for (client)
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_peer = False
        self.terminated = False
        self._on_first_record = on_first_record
        #: client: called when the handshake completes, before aioquic sends its last flight
        self.on_handshake: Callable[[Path], None] | None = None
        self._reader = RecordReader(config.max_record_size)
        self._backlog: deque[bytes] = deque()  # records cut (or handed back), not processed
        self.sink: RecordSink | None = None
        self._sink_full = False
        self._resume_handle: Any = None
        self._local_close = False
        self.window_blocked = False
        self._ping_uid = 0
        #: the ALPN protocol the handshake settled on ("" before it completes)
        self.alpn = ""
        # statistics
        self.bytes_sent = 0
        self.bytes_received = 0
        _aioquic.install_credit_control(
            quic,
            lambda: self._reader.consumed,
            config.path_receive_window,
            max(config.path_receive_window // 8, 1),
        )

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, owner: PathOwner, path_id: int) -> None:
        self.owner = owner
        self.path_id = path_id
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

    @property
    def quic(self) -> QuicConnection:
        return self._quic

    # --- sending --------------------------------------------------------------------------------

    def send_records(self, records: list[bytes]) -> None:
        """Put records on the transport stream; they leave on the next loop iteration.

        A transport stream the peer reset or stopped fails the path (protocol violation);
        nothing is raised.
        """
        if self.state is not PathState.ACTIVE or self._local_close:
            return
        quic = self._quic
        try:
            for record in records:
                quic.send_stream_data(TRANSPORT_STREAM_ID, record)
                self.bytes_sent += len(record)
        except (RuntimeError, ValueError) as exc:
            # aioquic refuses to send on a stream the peer stopped (STOP_SENDING)
            self.fail(f"protocol violation: transport stream unusable ({exc})")
            return
        self._transmit_soon()

    def send_probe(self) -> None:
        """Send a QUIC PING (any QUIC peer acknowledges it: liveness without the application),
        as a probe: it leaves even when the congestion window is full."""
        if self.state is PathState.ACTIVE and not self._local_close:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            _aioquic.request_probe(self._quic)
            self._transmit_soon()

    def transmit(self) -> None:
        """Send pending datagrams and re-arm the timer (aioquic's, with a precise clock).

        aioquic asks its pacer with ``loop.time()``. On uvloop that clock advances in 1 ms
        steps while the pacer schedules sends less than 1 ms apart, so the timer fires, finds
        nothing due at the same coarse "now" and re-arms itself, spinning until the clock
        ticks. ``time.monotonic()`` is the same clock as asyncio's ``loop.time()`` and
        libuv's, at full resolution.
        """
        _aioquic.clear_transmit_handle(self)
        transport = self._transport
        if transport is None:
            return
        quic = self._quic
        for data, addr in quic.datagrams_to_send(now=time.monotonic()):
            transport.sendto(data, addr)
        _aioquic.rearm_timer(self, quic.get_timer())
        owner = self.owner
        if owner is not None and self.state is PathState.ACTIVE:
            owner._path_transmitted(
                self, _aioquic.bytes_in_flight(quic) > 0, _aioquic.probe_timeout(quic)
            )

    def transmit_now(self) -> None:
        """Send what is pending at once instead of on the next loop iteration (small writes,
        like TCP_NODELAY); large writes keep coalescing through ``_transmit_soon``."""
        handle = _aioquic.transmit_handle(self)
        if handle is not None and self.state is PathState.ACTIVE:
            handle.cancel()
            self.transmit()

    def unacked_bytes(self) -> int:
        """Bytes handed to QUIC on the transport stream and not yet acknowledged."""
        return _aioquic.unacked_bytes(self._quic)

    @property
    def withholding(self) -> bool:
        """Whether the path stopped taking records on its own (the worker pool is full)."""
        return self._sink_full

    @property
    def send_blocked(self) -> bool:
        """Whether our records wait for the peer's flow-control credit."""
        return _aioquic.send_blocked(self._quic)

    @property
    def pto(self) -> float:
        """QUIC's probe timeout in seconds, backoff included."""
        return _aioquic.probe_timeout(self._quic)

    @property
    def rttvar(self) -> float | None:
        return _aioquic.rtt_variance(self._quic)

    @property
    def is_blocked(self) -> bool:
        """Whether the session does not take this path's records now (back-pressure)."""
        return self.owner is not None and not self.owner._path_wants_records(self)

    def send_room(self) -> int:
        """Bytes the path may still hand QUIC within ``Config.path_send_window``."""
        return self.config.path_send_window - _aioquic.unacked_bytes(self._quic)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        owner = self.owner
        if owner is not None and not self.terminated:
            owner._path_datagram(self)

    # --- receiving ------------------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if event.stream_id != TRANSPORT_STREAM_ID:
                self._stop_foreign(event.stream_id)
                return
            if event.data:
                self.bytes_received += len(event.data)
                self._reader.feed(event.data)
                if self.owner is None and self._on_first_record is not None:
                    callback, self._on_first_record = self._on_first_record, None
                    callback(self)
                    if self.owner is None:
                        return
                self.pump()
            if event.end_stream and self.state is PathState.ACTIVE:
                # nothing more will come: the path is over (what it holds is delivered)
                self.close(CLOSE_NORMAL, "transport stream finished by the peer")
                if self.owner is not None:
                    self.owner._path_terminated(self)
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            if event.stream_id == TRANSPORT_STREAM_ID:
                self.fail("protocol violation: the peer reset the transport stream")
        elif isinstance(event, events.ConnectionTerminated):
            self._on_connection_terminated(event)
        elif isinstance(event, events.HandshakeCompleted):
            self.alpn = event.alpn_protocol or ""
            peer = _aioquic.peer_address(self._quic)
            if peer is not None and not self.remote_address:
                self.set_remote_address(peer)
            if self.is_client and self.state is PathState.CONNECTING:
                self.state = PathState.ACTIVE
                hook, self.on_handshake = self.on_handshake, None
                if hook is not None:
                    hook(self)

    def _stop_foreign(self, stream_id: int) -> None:
        """kwik uses one QUIC stream per path: any other is stopped (and reset if ours to send
        on), and its few bytes of credit are never raised."""
        try:
            self._quic.stop_stream(stream_id, CLOSE_FAILURE)
        except ValueError:
            pass  # a stream we may not stop (already gone): nothing is buffered for it
        self._transmit_soon()

    def pump(self) -> None:
        """Hand records to the owner (or the pool) while the owner wants them; a path that
        stops keeps its bytes in the reader and so withholds credit from its peer."""
        owner = self.owner
        if owner is None:
            return
        reader = self._reader
        backlog = self._backlog
        try:
            while not self._sink_full and owner._path_wants_records(self):
                if backlog:
                    owner._path_record(self, backlog.popleft())
                    continue
                sink = self.sink
                if sink is not None and not sink.has_room():
                    self._sink_full = True
                    sink.wait_room(self)
                    break
                record = reader.next_record()
                if record is None:
                    break
                if sink is None:
                    owner._path_record(self, record)
                elif not sink.submit(self, record):
                    self._sink_full = True
                    sink.wait_room(self)
        except ProtocolViolationError as exc:
            self.fail(f"protocol violation: {exc}")
            return
        if reader.buffered and not self.terminated:
            # stopped with records left: their Pings are still answered (look ahead)
            for ahead in reader.peek_records():
                owner._path_peek(self, ahead)

    def process_record(self, record: memoryview) -> None:
        """A record the worker pool took from this path, in arrival order."""
        owner = self.owner
        if owner is not None:
            owner._path_record(self, record)

    def take_back(self, records: list[bytes]) -> None:
        """Records the pool had queued and will not process (it detached this path): they are
        processed inline, before anything still in the reader."""
        self._backlog.extendleft(reversed(records))
        self.schedule_pump()

    def leftover_records(self) -> list[bytes]:
        """Every record the path still holds (handed back, or complete in the reader), in
        order: what a terminated path delivered must still reach the streams."""
        out = list(self._backlog)
        self._backlog.clear()
        while True:
            try:
                record = self._reader.next_record()
            except ProtocolViolationError:
                break
            if record is None:
                break
            out.append(bytes(record))
        return out

    def sink_ready(self) -> None:
        """The worker pool has room again (or let this path go): take records again."""
        if self._sink_full:
            self._sink_full = False
            self.schedule_pump()

    def schedule_pump(self) -> None:
        """Pump on the next loop iteration (never re-entrantly from a record's handling)."""
        if self._resume_handle is None and self.owner is not None:
            self._resume_handle = self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_handle = None
        if not self.terminated:
            self.pump()
            self._transmit_soon()  # credit for what was just consumed

    # --- closing --------------------------------------------------------------------------------

    def close(self, error_code: int = CLOSE_NORMAL, reason_phrase: str = "") -> None:
        """Close the QUIC connection with an application error code
        (``docs/protocol.md``, "Closing")."""
        if self._local_close or self.terminated:
            return
        self._local_close = True
        self.close_code = error_code
        self.close_reason = reason_phrase
        self.state = PathState.FAILED if error_code == CLOSE_FAILURE else PathState.CLOSED
        super().close(error_code, reason_phrase)

    def fail(self, reason: str) -> None:
        """Close the path as failed (code 1); the owner decides what that means for the
        session (it learns of it at once, not after QUIC's draining period)."""
        if self._local_close or self.terminated:
            return
        logger.info("path %d to %s failed: %s", self.path_id, self.remote_address, reason)
        self.close(CLOSE_FAILURE, reason)
        if self.owner is not None:
            self.owner._path_terminated(self)

    def abort(self) -> None:
        """Close at once and release the socket (client paths); used when a dial fails."""
        _aioquic.cancel_connected_waiter(self)
        if not self._local_close and not self.terminated:
            self._local_close = True
            super().close(CLOSE_FAILURE, "aborted")
        if self.is_client and self._transport is not None:
            self._transport.close()

    async def wait_terminated(self) -> None:
        await self.wait_closed()

    def _on_connection_terminated(self, event: events.ConnectionTerminated) -> None:
        if self.terminated:
            return
        self.terminated = True
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if not self._local_close:
            self.closed_by_peer = True
            self.close_code = event.error_code
            self.close_reason = event.reason_phrase
            self.state = PathState.CLOSED if event.error_code == CLOSE_NORMAL else PathState.FAILED
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.detach(self)  # queued records come back, in order
        if self.is_client and self._transport is not None:
            self._transport.close()  # a client path owns its UDP socket
        logger.debug(
            "path %d to %s terminated: code %s %r (by %s)",
            self.path_id,
            self.remote_address,
            self.close_code,
            self.close_reason,
            "peer" if self.closed_by_peer else "us",
        )
        if self.owner is not None:
            self.owner._path_terminated(self)

    # --- statistics -----------------------------------------------------------------------------

    @property
    def rtt(self) -> float | None:
        """aioquic's smoothed RTT of the connection in seconds, None before any sample."""
        return _aioquic.smoothed_rtt(self._quic)

    @property
    def records_buffered(self) -> int:
        return self._reader.buffered

    def __repr__(self) -> str:
        return (
            f"<Path {self.path_id} {'client' if self.is_client else 'server'} "
            f"{self.remote_address} {self.state.value}>"
        )
