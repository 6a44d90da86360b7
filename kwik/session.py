"""Sessions: the asyncio adapter around the sans-IO :class:`~kwik.protocol.session.SessionCore`.

The core decides everything (streams, ids, credit, relays, liveness, close); this module only
moves records between it and the paths, runs its timer, and wakes the coroutines waiting on
what its events report. Every call into the core goes through :meth:`Session._driving`, which
acts on what the core produced once the call returns: nothing the core decides can be left
unsent or unannounced. Everything runs on one event loop; records reach the core in the order
they arrived on their path (inline, or through the global worker pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._addr import parse_address
from ._path import Path, PathState
from ._pool import WorkerPool, acquire_pool, release_pool
from ._scope import resolve_relay_address
from ._waiters import Waiters
from .config import Config, TLSConfig
from .exceptions import (
    KwikError,
    OpenStreamTimeoutError,
    PathError,
    SessionClosedError,
)
from .protocol.events import (
    AddPathAnswered,
    ClosePath,
    DialRelay,
    Event,
    FinishClose,
    PathResumed,
    RelayWritable,
    SendProbe,
    SessionTerminated,
    StreamArrived,
    StreamReadable,
    StreamWritable,
)
from .protocol.frames import EXTENSION_ALPN
from .protocol.session import CLOSE_FAILURE, CLOSE_NORMAL, PathCounters, SessionCore
from .protocol.stream import LogicalStream, OpenState
from .relay import Relay
from .stream import Stream

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Dialer", "PathInfo", "Session", "SessionStatistics"]

logger = logging.getLogger("kwik.session")

_session_ids = itertools.count(1)

#: Terminated paths whose last statistics a session keeps.
_PATH_HISTORY = 16
#: Seconds a closed session waits for its paths' QUIC closing periods before discarding them.
_DRAIN_WAIT = 0.5


class Dialer(Protocol):
    """Dials one path and returns it once its handshake is done (``kwik._connect.connect_path``,
    injected: that module imports this one, so this one does not import it)."""

    def __call__(
        self,
        address: str,
        tls: TLSConfig,
        config: Config,
        *,
        resolved: tuple[socket.AddressFamily, tuple[Any, ...]] | None = None,
    ) -> Awaitable[Path]: ...


@dataclass(frozen=True)
class PathInfo:
    """Snapshot of one path of a session."""

    path_id: int
    address: str
    is_primary: bool
    state: str
    rtt: float | None
    """The engine's smoothed RTT in seconds (None before the first sample)."""
    heartbeat_rtt: float | None
    """RTT of the last answered KWIK Ping in seconds (client paths)."""
    bytes_sent: int
    bytes_received: int
    packets_sent: int
    packets_received: int
    duplicates_received: int
    acks_sent: int
    acks_received: int
    pings_sent: int
    pongs_received: int
    missed_pongs: int
    close_code: int | None
    close_reason: str
    credit_extension: bool = False
    """The path negotiated kwik's per-stream credit extension (a kwik peer), rather than plain
    KWIK v2."""
    credit_frames_sent: int = 0
    credit_bytes_sent: int = 0


@dataclass(frozen=True)
class SessionStatistics:
    """Snapshot of a session."""

    session_id: int
    is_client: bool
    closed: bool
    paths: tuple[PathInfo, ...]
    active_paths: int
    open_streams: int
    streams_pending_accept: int
    bytes_sent: int
    bytes_received: int
    receive_buffered: int
    """The receive budget in use (``session_receive_buffer``): credit granted and not used yet,
    plus bytes held beyond credit."""


class Session:
    """A KWIK session: one logical connection made of one or more paths.

    Obtained from :func:`kwik.dial_addr` (client) or :meth:`kwik.Listener.accept` (server).
    """

    def __init__(
        self,
        *,
        is_client: bool,
        config: Config,
        tls: TLSConfig,
        dialer: Dialer | None = None,
        on_closed: Callable[[Session], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.session_id = next(_session_ids)
        self.is_client = is_client
        self._config = config
        self._tls = tls
        self._dialer = dialer
        self._on_closed = on_closed
        self._core = SessionCore(is_client=is_client, config=config)
        self._paths: dict[int, Path] = {}
        self._ended_paths: list[Path] = []  # ended for the core, their QUIC close still going
        self._primary: Path | None = None
        self._history: deque[PathInfo] = deque(maxlen=_PATH_HISTORY)
        self._accept_waiters = Waiters()
        self._read_waiters: dict[LogicalStream, asyncio.Future[None]] = {}
        self._write_waiters: dict[object, list[asyncio.Future[None]]] = {}
        self._relay_waiters: dict[object, list[asyncio.Future[None]]] = {}
        self._add_path_waiters: dict[str, deque[asyncio.Future[int]]] = {}
        self._relays: dict[int, Relay] = {}
        self._path_callbacks: list[Callable[[PathInfo], None]] = []
        self._progress: asyncio.Future[None] | None = None
        self._closed_event = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._deliver_task: asyncio.Task[None] | None = None
        self._close_override: tuple[int, str] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._processing = False
        self._again = False
        self._pool: WorkerPool | None = acquire_pool(self) if config.worker_pool else None
        self._released_pool: WorkerPool | None = None

    # --- properties -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<kwik.Session {self.session_id} {'client' if self.is_client else 'server'} "
            f"{self.remote_addr} | {len(self._paths)} paths | "
            f"{self._core.open_streams} streams{' | closed' if self.is_closed else ''}>"
        )

    @property
    def config(self) -> Config:
        return self._config

    @property
    def is_closed(self) -> bool:
        return self._core.error is not None

    @property
    def close_error(self) -> SessionClosedError | None:
        """What the session was closed with (None while open)."""
        return self._core.error

    @property
    def local_addr(self) -> str:
        """Local "host:port" of the primary path."""
        return self._primary.local_address if self._primary is not None else ""

    @property
    def remote_addr(self) -> str:
        """Peer "host:port" of the primary path."""
        return self._primary.remote_address if self._primary is not None else ""

    @property
    def paths(self) -> list[PathInfo]:
        """The session's live paths, then the last terminated ones (at most 16), by path id."""
        live = [self._path_info(p) for p in self._paths.values()]
        return sorted([*live, *self._history], key=lambda info: info.path_id)

    @property
    def relays(self) -> list[Relay]:
        """Relays added by this (server) session and not removed."""
        return [r for r in self._relays.values() if r.is_active]

    def add_path_closed_callback(self, callback: Callable[[PathInfo], None]) -> None:
        """Call ``callback(info)`` each time one of the session's paths ends (failed, closed by
        either side, or removed), with its final :class:`PathInfo`.

        With relays, this is how a client learns that a secondary server is gone while the
        session goes on: :meth:`Stream.received_ranges` then tells which bytes of a stream
        never arrived, for the application to ask the primary for them. Called from the event
        loop, synchronously; it must not block.
        """
        self._path_callbacks.append(callback)

    def remove_path_closed_callback(self, callback: Callable[[PathInfo], None]) -> None:
        """Stop calling ``callback`` (see :meth:`add_path_closed_callback`)."""
        if callback in self._path_callbacks:
            self._path_callbacks.remove(callback)

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of the session and its paths."""
        paths = tuple(self.paths)
        core = self._core
        return SessionStatistics(
            session_id=self.session_id,
            is_client=self.is_client,
            closed=self.is_closed,
            paths=paths,
            active_paths=sum(1 for p in paths if p.state == PathState.ACTIVE.value),
            open_streams=core.open_streams,
            streams_pending_accept=core.streams_pending_accept,
            bytes_sent=sum(p.bytes_sent for p in paths),
            bytes_received=sum(p.bytes_received for p in paths),
            receive_buffered=core.receive_buffered,
        )

    def _path_info(self, path: Path, counters: PathCounters | None = None) -> PathInfo:
        info = counters if counters is not None else self._core.counters(path.path_id)
        if info is None:
            info = PathCounters()
        pings, pongs = info.pings_sent, info.pongs_received
        return PathInfo(
            path_id=path.path_id,
            address=path.remote_address,
            is_primary=path is self._primary,
            state=path.state.value,
            rtt=path.rtt,
            heartbeat_rtt=info.heartbeat_rtt,
            bytes_sent=path.bytes_sent,
            bytes_received=path.bytes_received,
            packets_sent=info.packets_sent,
            packets_received=info.packets_received,
            duplicates_received=info.duplicates_received,
            acks_sent=info.acks_sent,
            acks_received=info.acks_received,
            pings_sent=pings,
            pongs_received=pongs if self.is_client else info.pings_received,
            missed_pongs=max(pings - pongs, 0) if self.is_client else 0,
            close_code=path.close_code,
            close_reason=path.close_reason,
            credit_extension=path.alpn == EXTENSION_ALPN,
            credit_frames_sent=info.credit_frames_sent,
            credit_bytes_sent=info.credit_bytes_sent,
        )

    # --- driving the core -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _driving(self) -> Iterator[SessionCore]:
        """Call the core inside this block; what it produced is acted on when the block ends
        (exception or not): waiters woken, records sent, the timer re-armed."""
        try:
            yield self._core
        finally:
            self._after_core()

    def _after_core(self) -> None:
        """Act on what the core produced. Safe to call re-entrantly (the outer call loops until
        nothing is left)."""
        core = self._core
        if self._processing:
            self._again = True
            return
        if core.idle:
            return  # the common case after a read or a write that changed nothing
        self._processing = True
        try:
            while True:
                self._again = False
                event = core.next_event()
                while event is not None:
                    self._on_event(event)
                    event = core.next_event()
                for path_id in core.pop_paths_with_output():
                    self._flush(path_id)
                if not self._again and not core.has_events:
                    break
        finally:
            self._processing = False
        if core.pop_timer_change():
            self._arm_timer()

    def _on_event(self, event: Event) -> None:
        match event:
            case StreamReadable(stream=stream):
                waiter = self._read_waiters.pop(stream, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            case StreamWritable(stream=stream):
                self._wake(self._write_waiters.pop(stream, None))
            case StreamArrived():
                self._accept_waiters.wake_all()
            case PathResumed(path_id=path_id):
                path = self._paths.get(path_id)
                if path is not None:
                    path.schedule_pump()
            case SendProbe(path_id=path_id):
                path = self._paths.get(path_id)
                if path is not None:
                    path.send_probe()
            case ClosePath():
                self._close_path(event)
            case DialRelay(address=address):
                self._spawn(self._dial_relay(address))
            case AddPathAnswered(address=address, path_id=path_id):
                waiters = self._add_path_waiters.get(address)
                while waiters:
                    answer = waiters.popleft()
                    if not answer.done():
                        answer.set_result(path_id)
                        break
            case RelayWritable(path_id=path_id):
                self._wake(self._relay_waiters.pop(path_id, None))
            case FinishClose():
                self._finish_close()
            case SessionTerminated(error=error):
                self._on_terminated(error)

    def _close_path(self, event: ClosePath) -> None:
        path = self._paths.get(event.path_id)
        if path is None:
            return
        if event.code == CLOSE_FAILURE and not self.is_closed:
            logger.info(
                "session %d: path %d to %s failed: %s",
                self.session_id,
                path.path_id,
                path.remote_address,
                event.reason,
            )
        path.close(event.code, event.reason)
        # the core is told at once (not after QUIC's closing period), once it has what the
        # path holds, unless what follows a malformed record cannot be trusted
        self._path_terminated(path, deliver=event.deliver)

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]] | None) -> None:
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _flush(self, path_id: int) -> None:
        path = self._paths.get(path_id)
        if path is None or not path.is_active:
            return
        room = path.send_room()
        records = self._core.data_to_send(path_id, room, self._loop.time())
        if records:
            path.send_records(records)
            room -= sum(len(r) for r in records)
        path.window_blocked = room <= 0

    def _transmit_now(self) -> None:
        for path in self._paths.values():
            path.transmit_now()

    def _arm_timer(self) -> None:
        """Make the one timer fire no later than the core's next deadline.

        An armed timer that fires sooner is kept (it only costs a wake-up, after which the
        timer is armed for the real deadline): the deadline moves with every message, and
        replacing a loop timer each time was a measurable share of a round trip.
        """
        deadline = self._core.get_timer()
        if deadline is None or (
            self._timer is not None and self._timer_at is not None and self._timer_at <= deadline
        ):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        with self._driving() as core:
            core.handle_timer(self._loop.time())

    def _notify_progress(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None and not progress.done():
            progress.set_result(None)

    # --- paths (PathOwner) ----------------------------------------------------------------------

    def _attach_path(self, path: Path, *, primary: bool, dialed_as: str = "") -> int:
        with self._driving() as core:
            path_id = core.add_path(
                primary=primary,
                now=self._loop.time(),
                dialed_as=dialed_as,
                extended=path.alpn == EXTENSION_ALPN,
            )
            path.attach(self, path_id)
            path.dialed_as = dialed_as or path.dialed_as
            self._paths[path_id] = path
            if primary:
                self._primary = path
            if self._pool is not None:
                self._pool.attach(path)
        path.pump()  # records that arrived before the session existed
        return path_id

    def _path_wants_records(self, path: Path) -> bool:
        return self._core.wants_records(path.path_id)

    def _path_record(self, path: Path, record: memoryview | bytes) -> None:
        with self._driving() as core:
            core.receive_record(path.path_id, record, self._loop.time())

    def _path_peek(self, path: Path, record: bytes) -> None:
        with self._driving() as core:
            core.peek_record(path.path_id, record, self._loop.time())

    def _path_datagram(self, path: Path) -> None:
        self._core.on_datagram(path.path_id, self._loop.time())
        if path.window_blocked and path.send_room() > 0:
            with self._driving():
                self._flush(path.path_id)
        if self._progress is not None:
            self._notify_progress()

    def _path_transmitted(self, path: Path, in_flight: bool, pto: float) -> None:
        # our Ping cannot have reached the peer's KWIK layer while records sent before it are
        # not all acknowledged (QUIC is still retransmitting them) or while the peer's flow
        # control holds them back: an echo cannot be expected yet
        blocked = path.send_blocked or path.unacked_bytes() > 0
        state = (in_flight, pto, path.withholding, blocked)
        if state == path.reported_transport:
            # the core already has this state (telling it again changes nothing): a round trip
            # transmits about three times, and this is the hot path
            return
        path.reported_transport = state
        with self._driving() as core:
            core.on_transport(
                path.path_id,
                self._loop.time(),
                in_flight=in_flight,
                pto=pto,
                withholding=path.withholding,
                blocked=blocked,
            )

    def _path_terminated(self, path: Path, *, deliver: bool = True) -> None:
        """The path's connection ended (or kwik closed it): what it received goes to the core
        first (unless ``deliver`` is False), then the core decides what it means."""
        path_id = path.path_id
        if self._paths.get(path_id) is not path:
            return
        sink = path.sink
        if sink is not None:
            sink.detach(path)  # records queued in the pool come back, in order
        with self._driving() as core:
            now = self._loop.time()
            core.path_closing(path_id)
            if deliver:
                for record in path.leftover_records():
                    core.receive_record(path_id, record, now)
            else:
                path.leftover_records()
            counters = core.counters(path_id)
            core.path_terminated(
                path_id,
                path.close_code if path.close_code is not None else CLOSE_FAILURE,
                path.close_reason,
                by_peer=path.closed_by_peer,
                now=now,
            )
            del self._paths[path_id]
            self._ended_paths = [p for p in self._ended_paths if not p.terminated]
            if not path.terminated:
                self._ended_paths.append(path)
            info = self._path_info(path, counters)
            self._history.append(info)
        for callback in list(self._path_callbacks):
            try:
                callback(info)
            except Exception:  # an application bug must not break the session
                logger.exception("session %d: path callback %r raised", self.session_id, callback)
        if path is not self._primary and not self.is_closed:
            logger.info(
                "session %d: path %d to %s is %s (%s); %d path(s) left",
                self.session_id,
                path_id,
                path.remote_address,
                path.state.value,
                path.close_reason,
                len(self._paths),
            )
        self._notify_progress()

    # --- waiting --------------------------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        error = self._core.error
        if error is not None:
            raise SessionClosedError(error.code, error.reason, error.remote)

    async def _wait_readable(self, state: LogicalStream) -> None:
        if state in self._read_waiters:
            raise RuntimeError("another coroutine is already reading this stream")
        waiter = self._loop.create_future()
        self._read_waiters[state] = waiter
        try:
            await waiter
        finally:
            if self._read_waiters.get(state) is waiter:
                del self._read_waiters[state]

    async def _wait_on(self, table: dict[object, list[asyncio.Future[None]]], key: object) -> None:
        waiter = self._loop.create_future()
        table.setdefault(key, []).append(waiter)
        try:
            await waiter
        finally:
            waiters = table.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del table[key]

    async def _wait_writable(self, state: LogicalStream) -> None:
        await self._wait_on(self._write_waiters, state)

    async def _wait_relay(self, path_id: int) -> None:
        await self._wait_on(self._relay_waiters, path_id)

    async def _wait_progress(self) -> None:
        if self._progress is None:
            self._progress = self._loop.create_future()
        await asyncio.shield(self._progress)

    # --- streams --------------------------------------------------------------------------------

    async def open_stream(self) -> Stream:
        """Open a stream and return at once; what is written is sent once the peer confirms.

        A refusal by the peer is reported by the stream's next call (and by :meth:`Stream.close`,
        which waits for the answer).

        Raises:
            SessionClosedError: the session is closed (or closing).
        """
        with self._driving() as core:
            state = core.open_stream()
        return Stream(self, state)

    async def open_stream_sync(self) -> Stream:
        """Open a stream and wait for the peer's OpenStreamResp.

        Cancellation-safe: if the call is cancelled or times out, the stream is given up, and
        should the peer still confirm it, it is ended at once on both sides.

        Raises:
            SessionClosedError: the session closed first.
            StreamClosedError: the peer refused the stream (e.g. its ``max_streams``).
            OpenStreamTimeoutError: no answer within ``Config.open_stream_timeout`` (also a
                ``TimeoutError``).
        """
        stream = await self.open_stream()
        state = stream._state
        try:
            async with asyncio.timeout(self._config.open_stream_timeout):
                while state.open_state is OpenState.OPENING:
                    self._raise_if_closed()
                    await self._wait_writable(state)
        except TimeoutError:
            with self._driving() as core:
                core.abandon_open(state)
            raise OpenStreamTimeoutError(
                f"the peer did not answer OpenStream within {self._config.open_stream_timeout} s"
            ) from None
        except BaseException:
            with self._driving() as core:
                core.abandon_open(state)
            raise
        self._core.raise_for(state)
        return stream

    async def accept_stream(self) -> Stream:
        """Return the next stream the peer opened, in arrival order.

        Streams that arrived before the session closed are still handed out.

        Raises:
            SessionClosedError: the session is closed and no stream is waiting.
        """
        while True:
            with self._driving() as core:
                state = core.accept_stream()
            if state is not None:
                return Stream(self, state)
            self._raise_if_closed()
            await self._accept_waiters.wait()

    # --- multipath: server side -----------------------------------------------------------------

    async def add_relay(self, address: str) -> Relay:
        """Ask the client to open a path to the secondary server at ``address`` ("host:port").

        Returns once the client answered with its id for the new path. Several relays may be
        added concurrently.

        Raises:
            PathError: the client refused the address or could not reach it, or did not answer
                within ``Config.add_path_timeout``; or this is a client session.
            SessionClosedError: the session closed meanwhile.
        """
        if self.is_client:
            raise PathError("add_relay is for server sessions; the client dials what they ask")
        parse_address(address)
        waiter: asyncio.Future[int] = self._loop.create_future()
        with self._driving() as core:
            core.request_relay(address)
            waiters = self._add_path_waiters.setdefault(address, deque())
            waiters.append(waiter)
        try:
            async with asyncio.timeout(self._config.add_path_timeout):
                path_id = await waiter
        except TimeoutError:
            self._core.cancel_relay_request(address)
            raise PathError(
                f"the client did not answer AddPath({address}) within "
                f"{self._config.add_path_timeout} s"
            ) from None
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._add_path_waiters.pop(address, None)
        if path_id == 0:
            raise PathError(f"the client refused or could not reach {address}")
        relay = Relay(self, path_id, address)
        self._relays[path_id] = relay
        return relay

    # --- multipath: client side -----------------------------------------------------------------

    async def _dial_relay(self, address: str) -> None:
        """Client: dial the relay a primary asked for (AddPath), if the address passes the
        path policy and the scope check (``kwik._scope``), and answer it either way."""
        path_id = 0
        config = self._config
        try:
            primary = self._primary
            primary_ip = parse_address(primary.remote_address)[0] if primary else "127.0.0.1"
            try:
                checked = await resolve_relay_address(
                    address,
                    primary_ip,
                    policy=config.path_policy,
                    scope_check=config.path_scope_check,
                    timeout=config.path_resolve_timeout,
                )
            except PathError as exc:
                logger.info("session %d: %s", self.session_id, exc)
                return
            if self._dialer is None:
                logger.info("session %d: AddPath(%s) refused: no dialer", self.session_id, address)
                return
            # verify the secondary's certificate against ITS host name, and never skip that
            # because the primary's was skipped (unless the configuration says so)
            tls = dataclasses.replace(
                self._tls,
                server_name=None,
                insecure_skip_verify=config.relay_insecure_skip_verify,
            )
            try:
                new_path = await self._dialer(
                    address, tls, config, resolved=(checked.family, checked.sockaddr)
                )
            except (KwikError, OSError, ValueError) as exc:
                logger.warning(
                    "session %d: cannot reach relay %s: %s", self.session_id, address, exc
                )
                return
            if self.is_closed:
                new_path.close(CLOSE_NORMAL, "session closed")
                return
            path_id = self._attach_path(new_path, primary=False, dialed_as=address)
            logger.info("session %d: path %d to relay %s", self.session_id, path_id, address)
        finally:
            with self._driving() as core:
                core.add_path_result(address, path_id)

    async def remove_path(self, path_id: int) -> None:
        """Close one path cleanly (client), or stop using a relay (server).

        What the path had received is delivered first. On a server, KWIK v2 has no frame that
        closes the client's path to a relay: the relay is removed from this session (what was
        queued for it and not sent is dropped, pending and later ``send_raw_data`` calls raise
        :class:`~kwik.PathError`), and the client's path ends when the secondary closes its
        session.

        Raises:
            PathError: no such path (or relay), or it is the primary path (use :meth:`close`).
        """
        self._raise_if_closed()
        if not self.is_client:
            if self._relays.pop(path_id, None) is None:
                raise PathError(f"no relay with path id {path_id}")
            with self._driving() as core:
                core.remove_relay(path_id)
            return
        path = self._paths.get(path_id)
        if path is None:
            raise PathError(f"no path with id {path_id}")
        if path is self._primary:
            raise PathError("the primary path cannot be removed; close the session instead")
        path.close(CLOSE_NORMAL, "path removed")
        self._path_terminated(path)
        try:
            async with asyncio.timeout(self._config.close_timeout):
                await path.wait_closed()
        except TimeoutError:
            path.abort()

    # --- closing --------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_terminated(self, error: SessionClosedError) -> None:
        logger.debug("session %d closed: %s", self.session_id, error)
        pool, self._pool = self._pool, None
        if pool is not None:
            for path in self._paths.values():
                pool.detach(path)
            release_pool(pool, self)
            self._released_pool = pool
        self._accept_waiters.wake_all()
        for table in (self._write_waiters, self._relay_waiters):
            for waiters in table.values():
                self._wake(waiters)
            table.clear()
        for waiter in self._read_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._read_waiters.clear()
        for add_waiters in self._add_path_waiters.values():
            for add_waiter in add_waiters:
                if not add_waiter.done():
                    add_waiter.set_exception(
                        SessionClosedError(error.code, error.reason, error.remote)
                    )
                    add_waiter.exception()  # retrieved: the waiter may be gone
        self._add_path_waiters.clear()
        self._closed_event.set()
        self._notify_progress()
        for task in self._tasks:
            if task is not self._close_task:
                task.cancel()
        if self._on_closed is not None:
            callback, self._on_closed = self._on_closed, None
            callback(self)

    def _delivered(self) -> bool:
        if self._core.has_unsent():
            return False
        return all(p.send_room() >= self._config.path_send_window for p in self._paths.values())

    def _delivery_mark(self) -> tuple[int, int]:
        """What grows while a graceful close makes progress: data handed to paths or taken
        from relays (the core's count), and bytes the peers acknowledged (less unacked)."""
        return self._core.delivery_progress, -sum(p.unacked_bytes() for p in self._paths.values())

    async def _deliver_written(self) -> None:
        """Wait until every written byte was handed to QUIC and acknowledged by the peer (and
        the streams relays write are complete), for as long as that makes progress: the
        delivery gives up after ``close_timeout`` without any."""
        best = self._delivery_mark()
        deadline = self._loop.time() + self._config.close_timeout
        while not self.is_closed and self._paths and not self._delivered():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                logger.info(
                    "session %d: close_timeout reached with data undelivered (no progress "
                    "for %s s)",
                    self.session_id,
                    self._config.close_timeout,
                )
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wait_progress()
            mark = self._delivery_mark()
            if mark[0] > best[0] or mark[1] > best[1]:
                best = (max(mark[0], best[0]), max(mark[1], best[1]))
                deadline = self._loop.time() + self._config.close_timeout

    async def close(self) -> None:
        """Close gracefully with application code 0.

        What was already written is delivered first, however slow the reader, as long as it
        makes progress (the close gives up after ``Config.close_timeout`` without any); new
        streams and writes are refused meanwhile. Pending calls then raise
        :class:`~kwik.SessionClosedError`. Idempotent and cancellation-safe: cancelling the
        caller does not stop the close, and a later call waits for the same one.
        """
        await self._close(CLOSE_NORMAL, "", graceful=True)

    async def close_with_error(self, code: int, message: str = "") -> None:
        """Close at once with an application error code and a reason phrase; during a graceful
        close, this one wins (its code is what the peer sees)."""
        if not 0 <= code < 1 << 62:
            raise ValueError("code must be a QUIC application error code (0 .. 2**62-1)")
        await self._close(code, message, graceful=False)

    async def abort(self, reason: str = "aborted") -> None:
        """Close at once with code 1 (failure), without delivering what is pending."""
        await self._close(CLOSE_FAILURE, reason, graceful=False)

    async def _close(self, code: int, reason: str, *, graceful: bool) -> None:
        if self._close_task is None:
            if self.is_closed:
                await self._wait_paths_terminated()
                return
            task = self._loop.create_task(self._closer(code, reason, graceful))
            self._close_task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif not graceful and not self.is_closed:
            # an immediate close during a graceful one wins with its code
            self._close_override = (code, reason)
            if self._deliver_task is not None:
                self._deliver_task.cancel()
        await asyncio.shield(self._close_task)

    def _finish_close(self) -> None:
        """The primary ended the session gracefully and the relays' streams are complete: close
        gracefully, as :meth:`close` does, without a caller (the session owns the task)."""
        if self._close_task is None and not self.is_closed:
            task = self._loop.create_task(self._closer(CLOSE_NORMAL, "", True))
            self._close_task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _closer(self, code: int, reason: str, graceful: bool) -> None:
        if graceful:
            self._core.start_closing()
            deliver = self._loop.create_task(self._deliver_written())
            self._deliver_task = deliver
            try:
                await asyncio.gather(deliver, return_exceptions=True)
            finally:
                self._deliver_task = None
        if self._close_override is not None:
            code, reason = self._close_override
        with self._driving() as core:
            core.close(code, reason)
        await self._wait_paths_terminated()

    def _discard(self) -> None:
        """The dial that was to give this session its primary path failed: release it."""
        with self._driving() as core:
            core.close(CLOSE_FAILURE, "dial failed")

    def _force_close(self, reason: str) -> None:
        """Close at once, without waiting for anything (listener shutdown)."""
        with self._driving() as core:
            core.close(CLOSE_FAILURE, reason)

    async def _wait_paths_terminated(self) -> None:
        pending = [p for p in self._live_paths() if not p.terminated]
        if pending:
            # the CONNECTION_CLOSE is out; the engine ends the connection after its draining
            # period (3 PTO), which a loaded loop inflates to seconds. What a path still owes the
            # peer then is a repeat of that CONNECTION_CLOSE should it have been lost: worth a
            # short wait, not the whole period (the RFC lets an endpoint discard its state)
            waits = [asyncio.ensure_future(p.wait_closed()) for p in pending]
            done, not_done = await asyncio.wait(waits, timeout=_DRAIN_WAIT)
            for wait in not_done:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            for path in pending:
                if not path.terminated:
                    path.abort()
        pool = self._released_pool
        if pool is not None and pool.is_closed:
            # this session was the pool's last holder: its workers end now
            await pool.wait_closed()

    def _live_paths(self) -> list[Path]:
        """Paths whose connection may still be draining (recently ended ones included)."""
        return [*self._paths.values(), *self._ended_paths]

    def _paths_terminated(self) -> bool:
        return all(p.terminated for p in self._live_paths())

    async def wait_closed(self) -> None:
        """Wait until the session is closed (by either side or because its paths failed)."""
        await self._closed_event.wait()
        pool = self._released_pool
        if pool is not None and pool.is_closed:
            await pool.wait_closed()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
