"""Sessions, streams and relays: the asyncio API on top of the paths.

A :class:`Session` aggregates paths (one QUIC connection each). Logical streams
(:class:`Stream`) are kwik's own objects: every path's Stream frames are merged into them by
byte offset, whatever path or server they came from. A server session can recruit a secondary
server (:meth:`Session.add_relay`) and drive it through the client (:class:`Relay`).

Threading model: everything runs on one event loop. Frames are dispatched synchronously, in
the order they arrived on their path, by :meth:`Session._dispatch`; the coroutines here only
wait for state that dispatch (or the send window) changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._addr import parse_address
from ._path import CLOSE_FAILURE, CLOSE_NORMAL, Path, PathState
from ._pool import WorkerPool, acquire_pool, release_pool
from ._waiters import Waiters
from .config import Config, TLSConfig
from .exceptions import (
    KwikError,
    PathError,
    ProtocolViolationError,
    SessionClosedError,
    StreamClosedError,
)
from .protocol import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    ReceiveBuffer,
    RelayDataFrame,
    StreamFrame,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["PathInfo", "Relay", "Session", "SessionStatistics", "Stream"]

logger = logging.getLogger("kwik.session")

_session_ids = itertools.count(1)
_MAX_OPEN_ATTEMPTS = 16
#: Out-of-order bytes a stream accepts beyond its receive buffer, before calling it a
#: protocol violation: multi-server senders must keep their spread within it.
_REORDER_WINDOW = 16 * 1024 * 1024
#: Packets built around one Stream frame fit a worker-pool buffer (64 KiB) with their headers.
_POOLED_PACKET = 64 * 1024
_PACKET_AND_FRAME_HEADERS = 17 + 26


def frame_data_limit(config: Config) -> int:
    """Most data bytes kwik puts in one Stream or RelayData frame."""
    return min(config.max_stream_frame_data, _POOLED_PACKET - _PACKET_AND_FRAME_HEADERS)


#: Writes up to this size are transmitted at once rather than on the next loop iteration.
_NODELAY_WRITE = 16 * 1024

#: Finished streams whose final offsets a session remembers, to drop their late frames.
_RETIRED_MEMORY = 4096


@dataclass(frozen=True)
class PathInfo:
    """Snapshot of one path of a session."""

    path_id: int
    address: str
    is_primary: bool
    state: str
    rtt: float | None
    """aioquic's smoothed RTT in seconds (None before the first sample)."""
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


def _path_info(path: Path) -> PathInfo:
    heartbeat = path.heartbeat
    return PathInfo(
        path_id=path.path_id,
        address=path.remote_address,
        is_primary=path.is_primary,
        state=path.state.value,
        rtt=path.rtt,
        heartbeat_rtt=heartbeat.last_rtt if heartbeat else None,
        bytes_sent=path.bytes_sent,
        bytes_received=path.bytes_received,
        packets_sent=path.packets_sent,
        packets_received=path.packets_received,
        duplicates_received=path.duplicates_received,
        acks_sent=path.acks_sent,
        acks_received=path.acks_received,
        pings_sent=heartbeat.pings_sent if heartbeat else 0,
        pongs_received=heartbeat.pongs_received if heartbeat else path.pings_received,
        missed_pongs=heartbeat.missed if heartbeat else 0,
        close_code=path.close_code,
        close_reason=path.close_reason,
    )


class Stream:
    """A logical, bidirectional KWIK stream.

    Reading: :meth:`read` returns bytes in offset order, merged from every path; ``b""`` is EOF.
    At most one coroutine may read at a time. Writing: :meth:`write` buffers and returns once
    the stream's send buffer is back under ``Config.stream_send_buffer``; :meth:`close` sends
    FIN after what was written. Streams are created by :meth:`Session.open_stream`,
    :meth:`Session.open_stream_sync` and :meth:`Session.accept_stream`, never directly.
    """

    def __init__(self, session: Session, stream_id: int, *, confirmed: bool) -> None:
        self._session = session
        self._id = stream_id
        config = session._config
        self._recv = ReceiveBuffer(config.stream_receive_buffer + _REORDER_WINDOW)
        self._recv_limit = config.stream_receive_buffer
        self._read_waiter: asyncio.Future[None] | None = None
        self._blocked_paths: set[Path] = set()
        self._read_cancelled = False
        # send side: segments of [offset, bytes] not yet handed to a path
        self._segments: deque[list[Any]] = deque()
        self._send_buffered = 0
        self._send_limit = config.stream_send_buffer
        self._max_frame = frame_data_limit(config)
        self._write_offset = 0
        self._highest_written = 0
        self._write_closed = False
        self._fin_sent = False
        self._final_offset: int | None = None
        self._write_waiters: list[asyncio.Future[None]] = []
        self._confirmed = confirmed
        self._open_attempts = 1
        self._opened: asyncio.Future[None] = session._loop.create_future()
        if confirmed:
            self._opened.set_result(None)
        self.bytes_written = 0
        self.bytes_read = 0

    def __repr__(self) -> str:
        return (
            f"<kwik.Stream {self._id} session={self._session.session_id} "
            f"read={self._recv.read_offset} written={self._highest_written}"
            f"{' fin-sent' if self._fin_sent else ''}{' eof' if self._recv.at_eof else ''}>"
        )

    @property
    def stream_id(self) -> int:
        """The logical stream id, shared by both directions. A stream from
        :meth:`Session.open_stream` may change id until the peer confirms it (collision)."""
        return self._id

    @property
    def session(self) -> Session:
        return self._session

    # --- reading --------------------------------------------------------------------------------

    async def read(self, n: int = 65536) -> bytes:
        """Read up to ``n`` bytes; ``b""`` means the peer finished its side (EOF).

        Data that arrived is always returned, even after the session closed; then
        :class:`~kwik.SessionClosedError` is raised.

        Raises:
            SessionClosedError: the session closed before EOF and no data is left.
            RuntimeError: another coroutine is already reading this stream.
        """
        if n < 0:
            n = 1 << 62
        if n == 0:
            return b""
        recv = self._recv
        while True:
            if self._read_cancelled:
                raise StreamClosedError(f"reading stream {self._id} was cancelled")
            if recv.readable:
                data = recv.read(n)
                self.bytes_read += len(data)
                self._after_read()
                return data
            if recv.at_eof:
                self._session._maybe_retire(self)
                return b""
            self._session._raise_if_closed()
            await self._wait_readable()

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: EOF came first (``.partial`` holds what was read).
            SessionClosedError: as :meth:`read`.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        chunks: list[bytes] = []
        got = 0
        while got < n:
            data = await self.read(n - got)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(chunks), n)
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    async def _wait_readable(self) -> None:
        if self._read_waiter is not None:
            raise RuntimeError("another coroutine is already reading this stream")
        waiter = self._session._loop.create_future()
        self._read_waiter = waiter
        try:
            await waiter
        finally:
            self._read_waiter = None

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _after_read(self) -> None:
        if self._blocked_paths and self._recv.readable <= self._recv_limit // 2:
            self._release_paths()
        if self._recv.at_eof:
            self._session._maybe_retire(self)

    def _release_paths(self) -> None:
        paths, self._blocked_paths = self._blocked_paths, set()
        for path in paths:
            path.unblock(self)

    def _on_data(self, path: Path, offset: int, data: Any, fin: bool) -> None:
        """A Stream frame for this stream arrived on ``path`` (dispatch context)."""
        recv = self._recv
        became_readable = recv.receive(offset, data, fin)
        if self._read_cancelled:
            recv.read(-1)  # nobody will read: drop it, never block the path for it
            if recv.at_eof:
                self._session._maybe_retire(self)
            return
        if became_readable or recv.complete:
            self._wake_reader()
        if recv.readable >= self._recv_limit and path not in self._blocked_paths:
            # the application is not reading: stop this path until it does
            self._blocked_paths.add(path)
            path.block(self)

    def cancel_read(self) -> None:
        """Stop reading: what is buffered and whatever the peer sends later is discarded.

        Use it for a stream the application abandons. All streams of a path share its
        transport stream, so unread data would otherwise stop the path (and its other streams)
        once ``Config.stream_receive_buffer`` fills up. The peer is not told (KWIK v2 has no
        STOP_SENDING); its data is simply dropped on arrival. Later reads raise
        :class:`~kwik.StreamClosedError`. Writing is not affected.
        """
        if self._read_cancelled:
            return
        self._read_cancelled = True
        self._recv.read(-1)
        self._release_paths()
        self._wake_reader()
        if self._recv.at_eof:
            self._session._maybe_retire(self)

    def get_read_offset(self) -> int:
        """Offset of the next byte :meth:`read` returns."""
        return self._recv.read_offset

    def set_read_offset(self, offset: int) -> None:
        """Skip forward to ``offset``: the bytes before it are discarded, never returned.

        Raises:
            ValueError: ``offset`` is behind the current read offset or past the end.
        """
        self._recv.skip_to(offset)
        self._after_read()
        self._wake_reader()

    # --- writing --------------------------------------------------------------------------------

    def get_write_offset(self) -> int:
        """Offset at which the next written byte will be placed."""
        return self._write_offset

    def set_write_offset(self, offset: int) -> None:
        """Place the next written bytes at ``offset`` of the logical stream.

        This is how a primary and a secondary server fill disjoint parts of one stream. Bytes
        already written keep their offsets.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        if self._write_closed:
            raise StreamClosedError(f"stream {self._id} is closed for writing")
        self._write_offset = offset

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the current write offset; return ``len(data)``.

        Returns once the stream's send buffer is back under ``Config.stream_send_buffer``
        (aioquic's own buffer is unbounded, so this is where writers are slowed down).

        Raises:
            StreamClosedError: :meth:`close` was called.
            SessionClosedError: the session is closed.
        """
        if self._write_closed:
            raise StreamClosedError(f"stream {self._id} is closed for writing")
        self._session._raise_if_closed()
        size = len(data)
        if size == 0:
            return 0
        offset = self._write_offset
        last = self._segments[-1] if self._segments else None
        if last is not None and last[0] + len(last[1]) == offset:
            last[1] += data
        else:
            self._segments.append([offset, bytearray(data)])
        self._send_buffered += size
        self._write_offset = offset + size
        if self._write_offset > self._highest_written:
            self._highest_written = self._write_offset
        self.bytes_written += size
        self._flush()
        if size <= _NODELAY_WRITE and not self._segments:
            # a small message leaves now (like TCP_NODELAY); bulk writes keep coalescing
            path = self._session._send_path()
            if path is not None:
                path.transmit_now()
        await self.drain()
        return size

    async def drain(self) -> None:
        """Wait until the send buffer is under its limit (what :meth:`write` already does).

        Raises:
            SessionClosedError: the session closed while waiting.
        """
        while self._send_buffered > self._send_limit:
            self._session._raise_if_closed()
            waiter = self._session._loop.create_future()
            self._write_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._write_waiters:
                    self._write_waiters.remove(waiter)

    async def close(self) -> None:
        """Finish the sending side: FIN goes after what was written; reading still works.

        The final offset is the highest of every byte written and the current write offset.
        Idempotent; does nothing once the session is closed.
        """
        if self._write_closed:
            return
        self._write_closed = True
        self._final_offset = max(self._highest_written, self._write_offset)
        if self._session.is_closed:
            return
        self._flush()

    @property
    def is_write_closed(self) -> bool:
        return self._write_closed

    @property
    def at_eof(self) -> bool:
        """True once everything up to the peer's FIN has been read."""
        return self._recv.at_eof

    def _wake_writers(self) -> None:
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def _unsent(self) -> bool:
        return bool(self._segments) or (self._write_closed and not self._fin_sent)

    def _flush(self) -> None:
        """Hand buffered bytes to the send path while its window has room."""
        if not self._confirmed or self._session.is_closed:
            return
        path = self._session._send_path()
        if path is None:
            return
        segments = self._segments
        max_frame = self._max_frame
        stream_id = self._id
        while segments:
            if not path.has_room():
                path.want_room(self, self._flush)
                break
            segment = segments[0]
            offset, buf = segment
            n = min(len(buf), max_frame)
            chunk = bytes(buf[:n]) if n < len(buf) else bytes(buf)
            end = offset + n
            fin = (
                self._write_closed
                and len(segments) == 1
                and n == len(buf)
                and end == self._final_offset
            )
            path.send_frames([StreamFrame(stream_id, offset, fin, chunk)], payload=n)
            if n < len(buf):
                del buf[:n]
                segment[0] = end
            else:
                segments.popleft()
            self._send_buffered -= n
            if fin:
                self._fin_sent = True
        if not segments and self._write_closed and not self._fin_sent:
            assert self._final_offset is not None
            path.send_frames([StreamFrame(stream_id, self._final_offset, True, b"")])
            self._fin_sent = True
        if self._write_waiters and self._send_buffered <= self._send_limit:
            self._wake_writers()
        if self._fin_sent:
            self._session._maybe_retire(self)
            self._session._on_flushed()

    # --- lifecycle ------------------------------------------------------------------------------

    def _on_opened(self) -> None:
        self._confirmed = True
        if not self._opened.done():
            self._opened.set_result(None)
        self._flush()

    def _on_session_closed(self, exc: SessionClosedError) -> None:
        self._release_paths()
        self._wake_reader()
        self._wake_writers()
        if not self._opened.done():
            self._opened.set_exception(exc)
            self._opened.exception()  # retrieved: nobody may be waiting


@dataclass
class _RelayedStream:
    """Client side: the state of one logical stream forwarded to one relay path."""

    offset: int = 0
    confirmed: bool = False
    pending: deque[bytes] = dataclasses.field(default_factory=deque)


class Relay:
    """A secondary server recruited by a primary server (see :meth:`Session.add_relay`)."""

    def __init__(self, session: Session, path_id: int, address: str) -> None:
        self._session = session
        self._path_id = path_id
        self._address = address
        self._removed = False

    @property
    def address(self) -> str:
        """The secondary server's address, as given to ``add_relay``."""
        return self._address

    @property
    def path_id(self) -> int:
        """The client's id for the path to the secondary server."""
        return self._path_id

    @property
    def is_active(self) -> bool:
        return not self._removed and not self._session.is_closed

    def __repr__(self) -> str:
        return f"<kwik.Relay path={self._path_id} {self._address} active={self.is_active}>"

    async def send_raw_data(self, data: bytes | bytearray | memoryview, stream_id: int) -> int:
        """Have the client forward ``data`` to the secondary server on logical stream
        ``stream_id``; return ``len(data)``.

        The client opens the stream on the relay path if needed and places the bytes at
        offsets growing from 0 on that path. Waits while the primary path's send window is full.

        Raises:
            PathError: the relay was removed.
            SessionClosedError: the session is closed.
        """
        session = self._session
        session._raise_if_closed()
        if self._removed:
            raise PathError(f"relay {self._address} (path {self._path_id}) was removed")
        if stream_id < 1:
            raise ValueError("stream_id must be at least 1")
        view = memoryview(data).cast("B")
        chunk_size = frame_data_limit(session._config)
        for start in range(0, len(view), chunk_size):
            path = await session._wait_send_room()
            chunk = bytes(view[start : start + chunk_size])
            path.send_frames([RelayDataFrame(self._path_id, stream_id, chunk)], payload=len(chunk))
        return len(view)


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
        on_closed: Callable[[Session], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.session_id = next(_session_ids)
        self.is_client = is_client
        self._config = config
        self._tls = tls
        self._on_closed = on_closed
        self._paths: dict[int, Path] = {}
        self._primary: Path | None = None
        self._next_path_id = 1
        self._terminated_paths: set[int] = set()
        self._streams: dict[int, Stream] = {}
        self._opening: dict[int, Stream] = {}
        self._next_stream_id = 1
        self._retired: dict[int, int] = {}  # finished stream id -> final offset, oldest first
        self._accept_queue: deque[Stream] = deque()
        self._accept_waiters = Waiters()
        self._accept_blocked: set[Path] = set()
        self._closed: SessionClosedError | None = None
        self._closed_event = asyncio.Event()
        self._closing = False
        self._flushed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # multipath, server side
        self._relays: dict[int, Relay] = {}
        self._add_path_waiters: dict[str, deque[asyncio.Future[int]]] = {}
        # multipath, client side
        self._dialing: dict[str, list[Path]] = {}
        self._relayed: dict[tuple[int, int], _RelayedStream] = {}
        self._pool: WorkerPool | None = acquire_pool(self) if config.worker_pool else None
        self._released_pool: WorkerPool | None = None
        self._handlers: dict[type, Callable[[Path, Any], None]] = {
            StreamFrame: self._on_stream_frame,
            AckFrame: self._on_ack_frame,
            PingFrame: self._on_ping_frame,
            OpenStreamFrame: self._on_open_stream,
            OpenStreamRespFrame: self._on_open_stream_resp,
            AddPathFrame: self._on_add_path,
            AddPathRespFrame: self._on_add_path_resp,
            RelayDataFrame: self._on_relay_data,
        }

    # --- properties -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        active = sum(1 for p in self._paths.values() if p.is_active)
        return (
            f"<kwik.Session {self.session_id} {'client' if self.is_client else 'server'} "
            f"{self.remote_addr} | {len(self._paths)} paths: {active} active | "
            f"{len(self._streams)} streams{' | closed' if self._closed else ''}>"
        )

    @property
    def config(self) -> Config:
        return self._config

    @property
    def is_closed(self) -> bool:
        return self._closed is not None

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
        """Every path of the session (failed and closed ones included), by path id."""
        return [_path_info(p) for _, p in sorted(self._paths.items())]

    @property
    def relays(self) -> list[Relay]:
        """Relays added by this (server) session."""
        return list(self._relays.values())

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of the session and its paths."""
        paths = tuple(self.paths)
        return SessionStatistics(
            session_id=self.session_id,
            is_client=self.is_client,
            closed=self.is_closed,
            paths=paths,
            active_paths=sum(1 for p in paths if p.state == PathState.ACTIVE.value),
            open_streams=len(self._streams) + len(self._opening),
            streams_pending_accept=len(self._accept_queue),
            bytes_sent=sum(p.bytes_sent for p in paths),
            bytes_received=sum(p.bytes_received for p in paths),
        )

    # --- paths ----------------------------------------------------------------------------------

    def _add_path(self, path: Path, *, primary: bool) -> int:
        path_id = self._next_path_id
        self._next_path_id += 1
        path.attach(self, path_id, primary=primary)
        self._paths[path_id] = path
        if self._pool is not None:
            self._pool.attach(path)
        path.pump()  # records that arrived before the session existed (the Ping's echo)
        if primary:
            self._primary = path
        return path_id

    def _send_path(self) -> Path | None:
        primary = self._primary
        if primary is not None and primary.is_active:
            return primary
        return None

    async def _wait_send_room(self) -> Path:
        """The send path, once its window has room."""
        while True:
            self._raise_if_closed()
            path = self._send_path()
            if path is None:
                raise SessionClosedError(CLOSE_FAILURE, "no active path", remote=False)
            if path.has_room():
                return path
            await path.wait_progress()

    def _active_paths(self) -> list[Path]:
        return [p for p in self._paths.values() if p.is_active]

    def _on_path_terminated(self, path: Path) -> None:
        if path.path_id in self._terminated_paths:
            return
        self._terminated_paths.add(path.path_id)
        self._accept_blocked.discard(path)
        for key in [k for k in self._relayed if k[0] == path.path_id]:
            del self._relayed[key]
        if self._closed is not None:
            return
        if path is self._primary or not self._active_paths():
            # streams are written on the primary path: without it the session cannot go on
            code = path.close_code if path.close_code is not None else CLOSE_FAILURE
            reason = path.close_reason or ("path failed" if code else "")
            if path is not self._primary:
                reason = f"all paths failed ({reason})"
            self._set_closed(SessionClosedError(code, reason, remote=path.closed_by_peer))
            for other in self._paths.values():
                if other is not path and not other.terminated:
                    other.close(CLOSE_NORMAL, "session closed")
        else:
            logger.info(
                "session %d: path %d to %s is %s (%s); %d path(s) left",
                self.session_id,
                path.path_id,
                path.remote_address,
                path.state.value,
                path.close_reason,
                len(self._active_paths()),
            )

    async def remove_path(self, path_id: int) -> None:
        """Close one path cleanly (client), or stop using a relay (server).

        Raises:
            PathError: no such path, or it is the primary path (use :meth:`close`).
        """
        self._raise_if_closed()
        if not self.is_client:
            relay = self._relays.get(path_id)
            if relay is None:
                raise PathError(f"no relay with path id {path_id}")
            relay._removed = True
            return
        path = self._paths.get(path_id)
        if path is None:
            raise PathError(f"no path with id {path_id}")
        if path is self._primary:
            raise PathError("the primary path cannot be removed; close the session instead")
        if not path.terminated:
            path.close(CLOSE_NORMAL, "path removed")
            try:
                async with asyncio.timeout(self._config.close_timeout):
                    await path.wait_terminated()
            except TimeoutError:
                path.abort()

    # --- frame dispatch (synchronous, in per-path arrival order) --------------------------------

    def _dispatch(self, path: Path, frames: Sequence[Frame]) -> None:
        handlers = self._handlers
        for frame in frames:
            handlers[type(frame)](path, frame)

    def _on_stream_frame(self, path: Path, frame: StreamFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if frame.stream_id == 0:
                raise ProtocolViolationError("Stream frame for stream id 0")
            if self._closed is not None:
                return
            final = self._retired.get(frame.stream_id)
            if final is not None and frame.offset + len(frame.data) <= final:
                # a late frame of a finished stream (a secondary's FIN, say): nothing new
                return
            # a Stream frame for an id never opened is an implicit open (spec §3)
            stream = self._new_remote_stream(path, frame.stream_id)
        stream._on_data(path, frame.offset, frame.data, frame.fin)

    def _on_ack_frame(self, path: Path, frame: AckFrame) -> None:
        path.on_ack(frame)

    def _on_ping_frame(self, path: Path, frame: PingFrame) -> None:
        path.on_ping()

    def _on_open_stream(self, path: Path, frame: OpenStreamFrame) -> None:
        stream_id = frame.stream_id
        if stream_id == 0:
            raise ProtocolViolationError("OpenStream for stream id 0")
        if stream_id in self._opening and not self.is_client:
            # collision: the server's stream keeps the id, the client re-opens elsewhere
            path.send_frames([OpenStreamRespFrame(stream_id, False)])
            return
        if stream_id not in self._streams:
            self._retired.pop(stream_id, None)  # the peer reuses a finished stream's id
            self._new_remote_stream(path, stream_id)
        path.send_frames([OpenStreamRespFrame(stream_id, True)])

    def _on_open_stream_resp(self, path: Path, frame: OpenStreamRespFrame) -> None:
        relayed = self._relayed.get((path.path_id, frame.stream_id))
        if relayed is not None and not relayed.confirmed:
            self._on_relay_open_resp(path, frame, relayed)
            return
        stream = self._opening.pop(frame.stream_id, None)
        if stream is None:
            logger.debug("OpenStreamResp for unknown stream %d ignored", frame.stream_id)
            return
        if frame.success:
            self._streams[stream._id] = stream
            stream._on_opened()
            return
        if stream._open_attempts >= _MAX_OPEN_ATTEMPTS:
            exc = SessionClosedError(CLOSE_FAILURE, "peer refused to open a stream")
            if not stream._opened.done():
                stream._opened.set_exception(
                    KwikError(f"peer refused stream ids {_MAX_OPEN_ATTEMPTS} times")
                )
            logger.warning("session %d: %s", self.session_id, exc.reason)
            return
        stream._open_attempts += 1
        stream._id = self._allocate_stream_id()
        self._opening[stream._id] = stream
        path.send_frames([OpenStreamFrame(stream._id)])

    def _new_remote_stream(self, path: Path, stream_id: int) -> Stream:
        stream = Stream(self, stream_id, confirmed=True)
        self._streams[stream_id] = stream
        self._accept_queue.append(stream)
        self._accept_waiters.wake_all()
        if len(self._accept_queue) >= self._config.stream_backlog:
            self._accept_blocked.add(path)
            path.block(self)
        return stream

    # --- streams --------------------------------------------------------------------------------

    def _allocate_stream_id(self) -> int:
        stream_id = self._next_stream_id
        while stream_id in self._streams or stream_id in self._opening:
            stream_id += 1
        self._next_stream_id = stream_id + 1
        return stream_id

    async def open_stream(self) -> Stream:
        """Open a stream and return at once; what is written is sent once the peer confirms.

        Raises:
            SessionClosedError: the session is closed.
        """
        self._raise_if_closed()
        path = self._send_path()
        if path is None:
            raise SessionClosedError(CLOSE_FAILURE, "no active path")
        stream = Stream(self, self._allocate_stream_id(), confirmed=False)
        self._opening[stream._id] = stream
        path.send_frames([OpenStreamFrame(stream._id)])
        return stream

    async def open_stream_sync(self) -> Stream:
        """Open a stream and wait for the peer's OpenStreamResp.

        Raises:
            SessionClosedError: the session closed first.
            TimeoutError: no answer within ``Config.open_stream_timeout`` (the stream is dropped).
        """
        stream = await self.open_stream()
        try:
            async with asyncio.timeout(self._config.open_stream_timeout):
                await asyncio.shield(stream._opened)
        except TimeoutError:
            self._opening.pop(stream._id, None)
            raise
        return stream

    async def accept_stream(self) -> Stream:
        """Return the next stream the peer opened, in arrival order.

        Streams that arrived before the session closed are still handed out.

        Raises:
            SessionClosedError: the session is closed and no stream is waiting.
        """
        while True:
            if self._accept_queue:
                stream = self._accept_queue.popleft()
                if self._accept_blocked and len(self._accept_queue) < self._config.stream_backlog:
                    blocked, self._accept_blocked = self._accept_blocked, set()
                    for path in blocked:
                        path.unblock(self)
                return stream
            self._raise_if_closed()
            await self._accept_waiters.wait()

    def _maybe_retire(self, stream: Stream) -> None:
        """Forget a stream that is finished both ways (its id may be reused by the peer)."""
        if stream._fin_sent and stream._recv.at_eof and self._streams.get(stream._id) is stream:
            del self._streams[stream._id]
            # remember its final offset for a while: late frames of it must not revive it
            retired = self._retired
            retired[stream._id] = stream._recv.read_offset
            if len(retired) > _RETIRED_MEMORY:
                del retired[next(iter(retired))]

    def _on_flushed(self) -> None:
        if self._flushed is not None:
            self._flushed.set()

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
        self._raise_if_closed()
        path = self._send_path()
        if path is None:
            raise SessionClosedError(CLOSE_FAILURE, "no active path")
        waiter: asyncio.Future[int] = self._loop.create_future()
        waiters = self._add_path_waiters.setdefault(address, deque())
        waiters.append(waiter)
        path.send_frames([AddPathFrame(address)])
        try:
            async with asyncio.timeout(self._config.add_path_timeout):
                path_id = await waiter
        except TimeoutError:
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

    def _on_add_path_resp(self, path: Path, frame: AddPathRespFrame) -> None:
        if self.is_client:
            logger.debug("AddPathResp on a client session ignored")
            return
        waiters = self._add_path_waiters.get(frame.address)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(frame.path_id)
                return
        logger.debug("AddPathResp for %s with nobody waiting", frame.address)

    # --- multipath: client side -----------------------------------------------------------------

    def _on_add_path(self, path: Path, frame: AddPathFrame) -> None:
        address = frame.address
        if not self.is_client:
            logger.debug("AddPath on a server session ignored")
            return
        if path is not self._primary:
            logger.warning("AddPath(%s) from a secondary server refused", address)
            path.send_frames([AddPathRespFrame(0, address)])
            return
        for existing in self._paths.values():
            if existing.is_active and not existing.is_primary and existing.dialed_as == address:
                path.send_frames([AddPathRespFrame(existing.path_id, address)])
                return
        requesters = self._dialing.get(address)
        if requesters is not None:
            requesters.append(path)  # a duplicated AddPath never dials twice
            return
        refusal = self._refuse_reason(address)
        if refusal is not None:
            logger.info("session %d: AddPath(%s) refused: %s", self.session_id, address, refusal)
            path.send_frames([AddPathRespFrame(0, address)])
            return
        self._dialing[address] = [path]
        self._spawn(self._dial_relay(address))

    def _refuse_reason(self, address: str) -> str | None:
        try:
            parse_address(address)
        except ValueError as exc:
            return str(exc)
        policy = self._config.path_policy
        if policy is not None:
            try:
                allowed = policy(address)
            except Exception:
                logger.exception("path_policy raised for %s", address)
                allowed = False
            if not allowed:
                return "path_policy"
        if len(self._active_paths()) + len(self._dialing) >= self._config.max_paths:
            return f"max_paths ({self._config.max_paths}) reached"
        return None

    async def _dial_relay(self, address: str) -> None:
        from ._connect import connect_path

        path_id = 0
        try:
            # verify the secondary's certificate against ITS host name
            tls = dataclasses.replace(self._tls, server_name=None)
            new_path = await connect_path(address, tls, self._config)
        except (KwikError, OSError, ValueError) as exc:
            logger.warning("session %d: cannot reach relay %s: %s", self.session_id, address, exc)
        else:
            if self._closed is not None:
                new_path.close(CLOSE_NORMAL, "session closed")
            else:
                new_path.dialed_as = address
                path_id = self._add_path(new_path, primary=False)
                logger.info("session %d: path %d to relay %s", self.session_id, path_id, address)
        finally:
            requesters = self._dialing.pop(address, [])
        for requester in requesters:
            if requester.is_active:
                requester.send_frames([AddPathRespFrame(path_id, address)])

    def _on_relay_data(self, path: Path, frame: RelayDataFrame) -> None:
        if not self.is_client:
            logger.debug("RelayData on a server session ignored")
            return
        if frame.dest_stream_id == 0:
            raise ProtocolViolationError("RelayData for stream id 0")
        target = self._paths.get(frame.relay_path_id)
        if target is None or not target.is_active or target is path:
            logger.warning(
                "session %d: RelayData for path %d dropped: no such active relay path",
                self.session_id,
                frame.relay_path_id,
            )
            return
        key = (target.path_id, frame.dest_stream_id)
        relayed = self._relayed.get(key)
        if relayed is None:
            relayed = self._relayed[key] = _RelayedStream()
            target.send_frames([OpenStreamFrame(frame.dest_stream_id)])
        data = bytes(frame.data)
        if not relayed.confirmed:
            relayed.pending.append(data)
            return
        self._forward(target, frame.dest_stream_id, relayed, data)
        if not target.has_room():
            # the relay path is slow: stop reading the path that feeds it until it drains
            path.block(key)
            target.want_room(key, lambda: path.unblock(key))

    def _forward(self, target: Path, stream_id: int, relayed: _RelayedStream, data: bytes) -> None:
        target.send_frames([StreamFrame(stream_id, relayed.offset, False, data)], payload=len(data))
        relayed.offset += len(data)

    def _on_relay_open_resp(
        self, path: Path, frame: OpenStreamRespFrame, relayed: _RelayedStream
    ) -> None:
        if not frame.success:
            logger.warning(
                "session %d: relay on path %d refused stream %d; %d relayed chunks dropped",
                self.session_id,
                path.path_id,
                frame.stream_id,
                len(relayed.pending),
            )
            del self._relayed[(path.path_id, frame.stream_id)]
            return
        relayed.confirmed = True
        while relayed.pending:
            self._forward(path, frame.stream_id, relayed, relayed.pending.popleft())

    # --- closing --------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise SessionClosedError(self._closed.code, self._closed.reason, self._closed.remote)

    def _set_closed(self, exc: SessionClosedError) -> None:
        if self._closed is not None:
            return
        self._closed = exc
        logger.debug("session %d closed: %s", self.session_id, exc)
        pool, self._pool = self._pool, None
        if pool is not None:
            for path in self._paths.values():
                pool.detach(path)
            release_pool(pool, self)
            self._released_pool = pool
        for stream in [*self._streams.values(), *self._opening.values()]:
            stream._on_session_closed(exc)
        for path in self._accept_blocked:
            path.unblock(self)
        self._accept_blocked.clear()
        self._accept_waiters.wake_all()
        for waiters in self._add_path_waiters.values():
            for add_waiter in waiters:
                if not add_waiter.done():
                    add_waiter.set_exception(SessionClosedError(exc.code, exc.reason, exc.remote))
        self._add_path_waiters.clear()
        if self._flushed is not None:
            self._flushed.set()
        self._closed_event.set()
        for task in self._tasks:
            task.cancel()
        if self._on_closed is not None:
            callback, self._on_closed = self._on_closed, None
            callback(self)

    def _has_unsent(self) -> bool:
        streams = [*self._streams.values(), *self._opening.values()]
        if any(s._unsent for s in streams):
            return True
        return any(p.is_active and p.unacked_bytes() > 0 for p in self._paths.values())

    async def _deliver_written(self) -> None:
        """Wait until every written byte was handed to QUIC and acknowledged by the peer."""
        while self._closed is None and self._has_unsent():
            primary = self._send_path()
            if primary is None:
                return
            await primary.wait_progress()

    async def close(self) -> None:
        """Close gracefully with application code 0.

        What was already written is delivered first (within ``Config.close_timeout``). Pending
        calls then raise :class:`~kwik.SessionClosedError`. Idempotent.
        """
        await self._close(CLOSE_NORMAL, "", graceful=True)

    async def close_with_error(self, code: int, message: str = "") -> None:
        """Close at once with an application error code and a reason phrase."""
        if not 0 <= code < 1 << 62:
            raise ValueError("code must be a QUIC application error code (0 .. 2**62-1)")
        await self._close(code, message, graceful=False)

    async def _close(self, code: int, reason: str, *, graceful: bool) -> None:
        if self._closing or self._closed is not None:
            await self._wait_paths_terminated()
            return
        self._closing = True
        if graceful:
            try:
                async with asyncio.timeout(self._config.close_timeout):
                    await self._deliver_written()
            except TimeoutError:
                logger.info(
                    "session %d: close_timeout reached with data undelivered", self.session_id
                )
        self._set_closed(SessionClosedError(code, reason, remote=False))
        for path in self._paths.values():
            if not path.terminated:
                path.close(code, reason)
        await self._wait_paths_terminated()

    def _paths_terminated(self) -> bool:
        return all(p.terminated for p in self._paths.values())

    def _force_close(self, reason: str) -> None:
        """Close at once, without waiting for anything (listener shutdown)."""
        self._set_closed(SessionClosedError(CLOSE_FAILURE, reason, remote=False))
        for path in self._paths.values():
            if not path.terminated:
                path.close(CLOSE_FAILURE, reason)

    async def abort(self, reason: str = "aborted") -> None:
        """Close at once with code 1 (failure), without delivering what is pending."""
        await self._close(CLOSE_FAILURE, reason, graceful=False)

    async def _wait_paths_terminated(self) -> None:
        pool = self._released_pool
        if pool is not None and pool.is_closed:
            # this session was the pool's last holder: its workers end now
            await pool.wait_closed()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        pending = [p for p in self._paths.values() if not p.terminated]
        if not pending:
            return
        # aioquic reports termination after the draining period (3 PTO); bound it anyway
        try:
            async with asyncio.timeout(max(self._config.close_timeout, 1.0)):
                await asyncio.gather(*(p.wait_terminated() for p in pending))
        except TimeoutError:
            for path in pending:
                path.abort()

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
