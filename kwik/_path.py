"""One path: one QUIC connection carrying one KWIK transport stream (the I/O of a path).

:class:`Path` drives one engine connection (:class:`~kwik._engines.base.EngineConnection`,
aioquic or qh3) sans-IO: datagrams come from kwik's own UDP endpoint (:mod:`kwik._udp`; a
client path owns one, a server path shares its listener's through the demultiplexer), every
engine call gets the same non-decreasing :func:`time.monotonic` clock, and the path runs the
connection's one timer. It cuts the transport stream into records with the sans-IO
:class:`~kwik.protocol.RecordReader` and hands them, in arrival order, to its owner (the session
adapter, which feeds :class:`~kwik.protocol.session.SessionCore`), inline or through the global
worker pool. It writes the records the core produces on the transport stream and reports what
the core needs to know of QUIC: datagrams received (liveness), bytes in flight and the PTO, the
end of the connection.

Memory stays bounded in both directions:

* **receive**: the transport stream's QUIC credit is what the reader consumed plus
  ``Config.path_receive_window`` (the engine's receive gate, :class:`~kwik._engines.base.Credit`).
  A path whose owner does not want records (a stream window is full, ...) stops cutting them,
  so its peer stops. Other QUIC streams are stopped at once.
* **send**: the owner pulls records from the core only within ``Config.path_send_window``
  minus what QUIC has not seen acknowledged (the engines' own send buffers are unbounded).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from ._addr import format_address
from ._engines.base import TRANSPORT_STREAM_ID, Credit, Engine, EngineConnection
from ._udp import UdpEndpoint
from .config import Config
from .exceptions import ProtocolViolationError
from .protocol import RecordReader
from .protocol.session import CLOSE_FAILURE, CLOSE_NORMAL

logger = logging.getLogger("kwik.path")

__all__ = [
    "CLOSE_FAILURE",
    "CLOSE_NORMAL",
    "TRANSPORT_STREAM_ID",
    "CidListener",
    "Path",
    "PathOwner",
    "PathState",
    "PortUnreachableError",
    "RecordSink",
]


class PortUnreachableError(ConnectionRefusedError):
    """An ICMP port unreachable answered the handshake: nothing listens at the address."""


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


class CidListener(Protocol):
    """The listener's demultiplexer: learns the connection ids a server path's engine issues
    and retires, and when the path is gone."""

    def cid_issued(self, path: Path, cid: bytes) -> None: ...

    def cid_retired(self, path: Path, cid: bytes) -> None: ...

    def path_gone(self, path: Path) -> None: ...


#: Sends datagrams to an address: a client path's own endpoint, or its listener's.
Sender = Callable[[list[bytes], Any], None]


class Path:
    """One QUIC connection of a session (see the module docstring).

    Created by :func:`kwik._connect.connect_path` (client) or by the listener's demultiplexer
    (server), from an engine and a function making the engine connection with the path's
    receive credit. The session adapter attaches itself with :meth:`attach`.
    """

    def __init__(
        self,
        engine: Engine,
        make_connection: Callable[[Credit], EngineConnection],
        *,
        is_client: bool,
        config: Config,
        send: Sender | None = None,
        on_first_record: Callable[[Path], None] | None = None,
        cid_listener: CidListener | None = None,
        local_endpoint: UdpEndpoint | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.engine = engine
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
        #: client: called when the handshake completes, before the engine sends its last flight
        self.on_handshake: Callable[[Path], None] | None = None
        self._reader = RecordReader(config.max_record_size)
        self._backlog: deque[bytes] = deque()  # records cut (or handed back), not processed
        self.sink: RecordSink | None = None
        self._sink_full = False
        #: the ALPN protocol the handshake settled on ("" before it completes)
        self.alpn = ""
        self._resume_handle: asyncio.Handle | None = None
        self._local_close = False
        self.window_blocked = False
        #: the transport state (in flight, PTO, withholding, blocked) the owner last told its
        #: session core; the owner's to read and write (it reports only changes)
        self.reported_transport: tuple[bool, float, bool, bool] | None = None
        self._ping_uid = 0
        # statistics
        self.bytes_sent = 0
        self.bytes_received = 0
        self.datagrams_received = 0
        # I/O
        self._endpoint: UdpEndpoint | None = None  # a client path's own socket
        self._local_endpoint = local_endpoint  # a server path's: its listener's
        self._closed_endpoint: UdpEndpoint | None = None  # its address outlives it
        self._send: Sender | None = send
        self._cid_listener = cid_listener
        self._clock = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._connected = False
        self._connected_waiter: asyncio.Future[None] | None = None
        self._refused: PortUnreachableError | None = None
        self._closed = asyncio.Event()
        self._closed_errors = engine.closed_errors
        self._conn = make_connection(
            Credit(
                consumed=self._consumed,
                fed=self._fed,
                window=config.path_receive_window,
                step=max(config.path_receive_window // 8, 1),
            )
        )

    def _consumed(self) -> int:
        return self._reader.consumed

    def _fed(self) -> int:
        return self.bytes_received

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, owner: PathOwner, path_id: int) -> None:
        self.owner = owner
        self.path_id = path_id
        if self.state is PathState.CONNECTING:
            self.state = PathState.ACTIVE

    def set_remote_address(self, addr: tuple[Any, ...]) -> None:
        self.remote_address = format_address(str(addr[0]), int(addr[1]))

    def use_endpoint(self, endpoint: UdpEndpoint) -> None:
        """Client: the path owns ``endpoint`` (its socket) and closes it when it ends."""
        self._endpoint = endpoint
        self._send = endpoint.send
        endpoint.set_handler(self)

    @property
    def local_address(self) -> str:
        endpoint = self._endpoint or self._local_endpoint or self._closed_endpoint
        if endpoint is None:
            return ""
        sockname = endpoint.sockname
        if not sockname:
            return ""
        return format_address(str(sockname[0]), int(sockname[1]))

    @property
    def is_active(self) -> bool:
        return self.state is PathState.ACTIVE

    @property
    def connection(self) -> EngineConnection:
        """The engine connection behind the seam."""
        return self._conn

    @property
    def quic(self) -> Any:
        """The engine's own connection object (aioquic or qh3 ``QuicConnection``): for tests
        that must reach into one engine, which say so."""
        return self._conn.raw

    @property
    def host_cid(self) -> bytes:
        return self._conn.host_cid

    # --- the clock, the timer, transmitting ------------------------------------------------------

    def _now(self) -> float:
        """One clock for every engine call, never going back (qh3's recovery refuses an
        acknowledgement "before" the packet it acknowledges)."""
        now = time.monotonic()
        if now < self._clock:
            return self._clock
        self._clock = now
        return now

    def connect(self, addr: tuple[Any, ...]) -> None:
        """Client: start the handshake towards ``addr``."""
        self._conn.connect(addr, self._now())
        self.transmit()

    async def wait_connected(self) -> None:
        """Wait for the handshake to complete.

        Raises:
            ConnectionError: the connection ended first (:class:`PortUnreachableError` when an
                ICMP port unreachable answered).
        """
        if self._connected:
            return
        if self._refused is not None:
            raise self._refused
        if self.terminated:
            raise ConnectionError("connection closed")
        if self._connected_waiter is None:
            self._connected_waiter = self._loop.create_future()
        await asyncio.shield(self._connected_waiter)

    def _end_waiter(self, exc: BaseException | None) -> None:
        waiter, self._connected_waiter = self._connected_waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)
            waiter.exception()  # retrieved: a dial abandoned on timeout must not log it

    def transmit(self) -> None:
        """Send the pending datagrams and re-arm the connection's timer."""
        handle, self._transmit_handle = self._transmit_handle, None
        if handle is not None:
            handle.cancel()
        conn = self._conn
        send = self._send
        try:
            datagrams = conn.datagrams_to_send(self._now())
        except self._closed_errors as exc:
            # qh3 2.1 can fail to build a packet ("packet builder capacity exhausted"):
            # nothing to send now, but the timer must still run, so that the connection
            # retransmits, or ends if it is closing
            self._engine_error(exc)
            datagrams = []
        if datagrams and send is not None:
            batch: list[bytes] = []
            batch_addr: Any = None
            for data, addr in datagrams:
                if batch and addr != batch_addr:
                    send(batch, batch_addr)
                    batch = []
                batch.append(data)
                batch_addr = addr
            send(batch, batch_addr)
        timer_at = conn.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if timer_at is not None and not self.terminated:
                self._timer = self._loop.call_at(timer_at, self._on_timer)
            self._timer_at = timer_at
        owner = self.owner
        if owner is not None and self.state is PathState.ACTIVE:
            # the PTO with its backoff: how long QUIC itself may legitimately stay silent
            owner._path_transmitted(self, conn.bytes_in_flight() > 0, conn.probe_timeout())

    def _transmit_soon(self) -> None:
        if self._transmit_handle is None and not self.terminated:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def _on_timer(self) -> None:
        timer_at = self._timer_at
        self._timer = None
        self._timer_at = None
        now = self._now()
        if timer_at is not None and timer_at > now:
            # the loop's clock is coarser than ours (uvloop: 1 ms): the deadline is due
            now = self._clock = timer_at
        try:
            self._conn.handle_timer(now)
        except self._closed_errors as exc:
            self._engine_error(exc)
        self._conn.process_events(self)
        self.transmit()

    def _engine_error(self, exc: BaseException) -> None:
        """The engine raised where it should not (qh3 2.1 sometimes fails to build a packet):
        the call is treated as having done nothing. The connection's timer keeps running, so
        that a closing connection still ends and an open one recovers, or is failed by
        liveness if it never does."""
        logger.debug("path %d to %s: QUIC engine error: %s", self.path_id, self.remote_address, exc)

    def transmit_now(self) -> None:
        """Send what is pending at once instead of on the next loop iteration (small writes,
        like TCP_NODELAY); large writes keep coalescing through the next iteration."""
        if self._transmit_handle is not None and self.state is PathState.ACTIVE:
            self.transmit()

    # --- receiving datagrams ---------------------------------------------------------------------

    def udp_received(self, items: list[tuple[bytes, Any, int]]) -> None:
        """Datagrams from the socket (a client path's own endpoint, or the demultiplexer)."""
        if self.terminated:
            return
        conn = self._conn
        now = self._now()
        try:
            count = self._receive(conn, items, now)
        except self._closed_errors as exc:
            self._engine_error(exc)
            count = len(items)
        self.datagrams_received += count
        conn.process_events(self)
        owner = self.owner
        if owner is not None and not self.terminated:
            owner._path_datagram(self)
        if not self._local_close and not self.closed_by_peer and conn.is_closing():
            self._peer_closed(conn)
        self.transmit()

    def _peer_closed(self, conn: EngineConnection) -> None:
        """The peer's CONNECTION_CLOSE arrived: the path is over for its owner at once (what it
        holds is delivered), not after the draining period the engine still runs (RFC 9000,
        section 10.2)."""
        code = conn.close_code()
        self.closed_by_peer = True
        self.close_code = code if code is not None else CLOSE_FAILURE
        self.close_reason = conn.close_reason()
        self.state = PathState.CLOSED if self.close_code == CLOSE_NORMAL else PathState.FAILED
        if self.owner is not None:
            self.owner._path_terminated(self)

    @staticmethod
    def _receive(conn: EngineConnection, items: list[tuple[bytes, Any, int]], now: float) -> int:
        """Hand ``items`` to the engine: runs of plain datagrams from one address at once, GRO
        buffers whole; return how many datagrams they were."""
        run: list[bytes] = []
        run_addr: Any = None
        count = 0
        for data, addr, segment in items:
            if segment:
                if run:
                    conn.receive(run, run_addr, now)
                    run = []
                conn.receive_segments(data, segment, addr, now)
                count += -(-len(data) // segment)
                continue
            if run and addr != run_addr:
                conn.receive(run, run_addr, now)
                run = []
            run.append(data)
            run_addr = addr
            count += 1
        if run:
            conn.receive(run, run_addr, now)
        return count

    def udp_error(self, exc: OSError) -> None:
        """A socket error. ICMP port unreachable during the handshake ends the dial at once;
        on an established path it is a hint, not proof (the peer may be restarting, or the
        ICMP forged), so it is only logged."""
        refused = isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED
        if refused and not self._connected and self.is_client and not self.terminated:
            target = self.dialed_as or self.remote_address
            self._refused = PortUnreachableError(
                errno.ECONNREFUSED, f"port unreachable: nothing listens on {target} (ICMP)"
            )
            self._end_waiter(self._refused)
            return
        logger.debug(
            "path %d to %s: socket error %s (ignored)", self.path_id, self.remote_address, exc
        )

    # --- engine events (EventSink) ---------------------------------------------------------------

    def on_connection_id_issued(self, cid: bytes) -> None:
        if self._cid_listener is not None:
            self._cid_listener.cid_issued(self, cid)

    def on_connection_id_retired(self, cid: bytes) -> None:
        if self._cid_listener is not None:
            self._cid_listener.cid_retired(self, cid)

    def on_handshake_completed(self, alpn: str) -> None:
        self.alpn = alpn
        peer = self._conn.peer_address()
        if peer is not None and not self.remote_address:
            self.set_remote_address(peer)
        self._connected = True
        if self.is_client and self.state is PathState.CONNECTING:
            self.state = PathState.ACTIVE
            hook, self.on_handshake = self.on_handshake, None
            if hook is not None:
                hook(self)
        self._end_waiter(None)

    def on_terminated(self, error_code: int, reason: str) -> None:
        self._terminate(error_code, reason)

    # --- sending --------------------------------------------------------------------------------

    def send_records(self, records: list[bytes]) -> None:
        """Put records on the transport stream; they leave on the next loop iteration.

        A transport stream the peer reset or stopped fails the path (protocol violation);
        nothing is raised.
        """
        if self.state is not PathState.ACTIVE or self._local_close:
            return
        conn = self._conn
        try:
            for record in records:
                conn.send_stream_data(TRANSPORT_STREAM_ID, record)
                self.bytes_sent += len(record)
        except (RuntimeError, ValueError) as exc:
            # the engine refuses to send on a stream the peer stopped (STOP_SENDING)
            self.fail(f"protocol violation: transport stream unusable ({exc})")
            return
        except self._closed_errors:
            return  # the connection is closing: its end is reported by the engine
        self._transmit_soon()

    def send_probe(self) -> None:
        """Send a QUIC PING (any QUIC peer acknowledges it: liveness without the application).
        It may leave even when the congestion window is full, where the engine allows
        (aioquic: yes; qh3: no, see ``docs/engines.md``)."""
        if self.state is PathState.ACTIVE and not self._local_close:
            self._ping_uid += 1
            try:
                self._conn.send_ping(self._ping_uid)
                self._conn.request_probe()
            except self._closed_errors:
                return
            self._transmit_soon()

    def unacked_bytes(self) -> int:
        """Bytes handed to QUIC on the transport stream and not yet acknowledged."""
        return self._conn.unacked_bytes()

    @property
    def withholding(self) -> bool:
        """Whether the path stopped taking records on its own (the worker pool is full)."""
        return self._sink_full

    @property
    def is_blocked(self) -> bool:
        """Whether the session does not take this path's records now (back-pressure)."""
        return self.owner is not None and not self.owner._path_wants_records(self)

    def send_room(self) -> int:
        """Bytes the path may still hand QUIC within ``Config.path_send_window``."""
        return self.config.path_send_window - self._conn.unacked_bytes()

    @property
    def send_blocked(self) -> bool:
        """True while the transport stream has bytes QUIC cannot send for lack of the peer's
        flow-control credit (stream or connection level)."""
        return self._conn.send_blocked()

    @property
    def pto(self) -> float:
        """QUIC's current probe timeout in seconds, backoff included (base PTO x
        2**pto_count)."""
        return self._conn.probe_timeout()

    @property
    def base_pto(self) -> float:
        """QUIC's probe timeout without backoff (what ``PathOwner._path_transmitted`` gets for
        now, see the merge note in :meth:`transmit`)."""
        return self._conn.probe_timeout(backoff=False)

    @property
    def rttvar(self) -> float | None:
        """The engine's RTT variation in seconds; None before a sample, or where the engine
        does not tell (qh3)."""
        return self._conn.rttvar()

    # --- receiving ------------------------------------------------------------------------------

    def on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id != TRANSPORT_STREAM_ID:
            self._stop_foreign(stream_id)
            return
        if data:
            self.bytes_received += len(data)
            self._reader.feed(data)
            if self.owner is None and self._on_first_record is not None:
                callback, self._on_first_record = self._on_first_record, None
                callback(self)
                if self.owner is None:
                    return
            self.pump()
        if end_stream and self.state is PathState.ACTIVE:
            # nothing more will come: the path is over (what it holds is delivered)
            self.close(CLOSE_NORMAL, "transport stream finished by the peer")
            if self.owner is not None:
                self.owner._path_terminated(self)

    def on_stream_reset(self, stream_id: int) -> None:
        if stream_id == TRANSPORT_STREAM_ID:
            self.fail("protocol violation: the peer reset the transport stream")

    def _stop_foreign(self, stream_id: int) -> None:
        """kwik uses one QUIC stream per path: any other is stopped (and reset if ours to send
        on), and its few bytes of credit are never raised."""
        try:
            self._conn.stop_stream(stream_id, CLOSE_FAILURE)
        except (ValueError, RuntimeError):
            pass  # a stream we may not stop (already gone): nothing is buffered for it
        except self._closed_errors:
            return
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
            # credit for what was just consumed; an engine that grants it when its events
            # are taken (qh3) hands over what it held back meanwhile
            self._conn.credit_changed()
            self._conn.process_events(self)
            self._transmit_soon()

    # --- closing --------------------------------------------------------------------------------

    def close(self, error_code: int = CLOSE_NORMAL, reason_phrase: str = "") -> None:
        """Close the QUIC connection with an application error code (``docs/protocol.md``,
        "Close"); the engine reports the end after its draining period."""
        if self._local_close or self.terminated:
            return
        self._local_close = True
        self.close_code = error_code
        self.close_reason = reason_phrase
        self.state = PathState.FAILED if error_code == CLOSE_FAILURE else PathState.CLOSED
        try:
            self._conn.close(error_code, reason_phrase)
        except self._closed_errors:
            pass
        self.transmit()

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
        """Close at once, without a draining period, and release the socket (client paths);
        used when a dial fails or a close takes too long."""
        if self.terminated:
            return
        if not self._local_close:
            self._local_close = True
            try:
                self._conn.close(CLOSE_FAILURE, "aborted")
            except self._closed_errors:
                pass
            self.transmit()
        try:
            self._conn.discard(self._now())
        except self._closed_errors:
            pass
        self._terminate(CLOSE_FAILURE, "aborted")

    async def wait_closed(self) -> None:
        """Wait until the connection has ended (after the draining period, or an abort)."""
        await self._closed.wait()

    async def wait_terminated(self) -> None:
        await self._closed.wait()

    def _terminate(self, error_code: int, reason: str) -> None:
        if self.terminated:
            return
        self.terminated = True
        for handle in (self._resume_handle, self._timer, self._transmit_handle):
            if handle is not None:
                handle.cancel()
        self._resume_handle = self._timer = self._transmit_handle = None
        self._timer_at = None
        if not self._local_close:
            self.closed_by_peer = True
            self.close_code = error_code
            self.close_reason = reason
            self.state = PathState.CLOSED if error_code == CLOSE_NORMAL else PathState.FAILED
        self._end_waiter(
            ConnectionError(reason or self._conn.close_reason() or "connection closed")
        )
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.detach(self)  # queued records come back, in order
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.close()  # a client path owns its UDP socket
            self._closed_endpoint = endpoint
        self._send = None
        if self._cid_listener is not None:
            self._cid_listener.path_gone(self)
        self._closed.set()
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
        """The engine's smoothed RTT of the connection in seconds, None before any sample."""
        return self._conn.smoothed_rtt()

    @property
    def records_buffered(self) -> int:
        return self._reader.buffered

    def __repr__(self) -> str:
        return (
            f"<Path {self.path_id} {'client' if self.is_client else 'server'} "
            f"{self.remote_address} {self.state.value}>"
        )
