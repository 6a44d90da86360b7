"""kwik's own UDP I/O: one non-blocking socket, batched receive and send, on any event loop.

A path (client) or a listener owns one :class:`UdpEndpoint`. It reads the socket from the
loop's reader callback and **drains it per readiness event** (up to :data:`RECV_BURST`
receives), handing the whole batch to its handler at once, so that the QUIC engine processes
a burst of datagrams and transmits once, instead of once per datagram as asyncio's datagram
transport does. Where the kernel has them (Linux):

* **GRO** (``UDP_GRO``): the kernel hands over a run of datagrams from one sender as one
  buffer, with the segment size in a ``recvmsg`` control message; one system call and one
  engine call for up to 64 datagrams.
* **GSO** (``UDP_SEGMENT``): a run of equal-sized datagrams to one address leaves with one
  ``sendmsg`` (scatter-gather, no copy), the segment size in a control message.

Either is switched off for good on a socket where the kernel refuses it, and the endpoint
falls back to one ``recvfrom``/``sendto`` per datagram. A send the socket cannot take now
(``EAGAIN``) waits in a bounded queue flushed when the socket is writable; beyond that QUIC's
own loss recovery resends.

The endpoint reports socket errors to its handler (an ICMP port unreachable arrives as
``ConnectionRefusedError`` on a connected socket); it never raises from a loop callback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from collections import deque
from typing import Any, Protocol

__all__ = ["MAX_UDP_PAYLOAD", "RECV_BURST", "UdpEndpoint", "UdpHandler", "gso_supported"]

logger = logging.getLogger("kwik.udp")

#: Largest UDP payload (65,535 - 8 - 20); also the largest GRO buffer the kernel hands over.
MAX_UDP_PAYLOAD = 65_507

#: Receives per readiness event at most, so that one busy socket cannot starve the loop.
RECV_BURST = 64

#: Datagrams waiting for a writable socket at most (beyond: dropped, QUIC resends).
SEND_QUEUE_LIMIT = 1024

_IS_LINUX = sys.platform.startswith("linux")
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = 103
_UDP_GRO = 104
#: the kernel's limits for one GSO send
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65_000
_SEGMENT = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_ANCILLARY = socket.CMSG_SPACE(_GRO_SIZE.size) if hasattr(socket, "CMSG_SPACE") else 0
#: errors meaning "this socket or device cannot do GSO", not "this datagram failed"
_GSO_REFUSED = frozenset(
    {errno.EIO, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOPROTOOPT}
)


class UdpHandler(Protocol):
    """What an endpoint reports to its owner (a client path, or a listener)."""

    def udp_received(self, items: list[tuple[bytes, Any, int]]) -> None:
        """A batch, in arrival order: ``(data, addr, segment_size)``; a segment size above 0
        means ``data`` is a GRO buffer of datagrams of that size (the last may be shorter)."""
        ...

    def udp_error(self, exc: OSError) -> None:
        """A socket error (ICMP unreachable on a connected socket, ...)."""
        ...


def enable_gro(sock: socket.socket) -> bool:
    """Switch UDP GRO on; True when the kernel took it (Linux only)."""
    if not _IS_LINUX or not hasattr(sock, "recvmsg"):
        return False
    try:
        sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
        return bool(sock.getsockopt(_SOL_UDP, _UDP_GRO))
    except OSError:
        return False


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows ``UDP_SEGMENT`` on ``sock`` (Linux only). The option is set
    per message, never left on the socket (it would split plain sends too)."""
    if not _IS_LINUX or not hasattr(sock, "sendmsg"):
        return False
    try:
        sock.setsockopt(_SOL_UDP, _UDP_SEGMENT, 1200)
        sock.setsockopt(_SOL_UDP, _UDP_SEGMENT, 0)
        return True
    except OSError:
        return False


def _gro_segment(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == _SOL_UDP and kind == _UDP_GRO and len(data) >= _GRO_SIZE.size:
            return int(_GRO_SIZE.unpack_from(data)[0])
    return 0


class UdpEndpoint:
    """A UDP socket driven by the event loop's reader callback (see the module docstring).

    ``connected`` sockets (a client path's, after ``sock.connect(peer)``) send without an
    address and learn of ICMP errors. The endpoint owns the socket: :meth:`close` closes it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler: UdpHandler,
        *,
        connected: bool = False,
        batching: bool = True,
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._handler = handler
        self._connected = connected
        self._sockname = tuple(sock.getsockname())
        self.gro = batching and enable_gro(sock)
        self._gro_wanted = self.gro
        self.gso = batching and gso_supported(sock)
        #: bytes asked for per receive without GRO (a datagram is never larger)
        self.recv_size = MAX_UDP_PAYLOAD
        self._queue: deque[tuple[list[bytes], Any, int]] = deque()
        self._queued = 0
        self._writing = False
        self._closed = False
        self._paused = False
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.sends_dropped = 0
        loop.add_reader(self._fd, self._on_readable)

    @property
    def sockname(self) -> tuple[Any, ...]:
        """The bound address (still known once the socket is closed)."""
        return self._sockname

    @property
    def is_closed(self) -> bool:
        return self._closed

    def set_handler(self, handler: UdpHandler) -> None:
        self._handler = handler

    # --- receiving ------------------------------------------------------------------------------

    def set_receive_size(self, size: int | None) -> None:
        """Receive into ``size`` bytes per datagram, with GRO off (a meter of allocations
        wants no 64 KiB buffer per datagram); None restores the defaults. ``size`` must be at
        least the largest datagram the peer sends."""
        if size is None:
            self.recv_size = MAX_UDP_PAYLOAD
            if self._gro_wanted and not self._closed:
                self.gro = enable_gro(self._sock)
            return
        self.recv_size = size
        if self.gro and not self._closed:
            try:
                self._sock.setsockopt(_SOL_UDP, _UDP_GRO, 0)
            except OSError:  # pragma: no cover - it was on a moment ago
                return
            self.gro = False

    def pause_reading(self) -> None:
        """Stop reading the socket (datagrams wait in, then overflow, the kernel's buffer)."""
        if not self._closed and not self._paused:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._closed and self._paused:
            self._paused = False
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        items: list[tuple[bytes, Any, int]] = []
        gro = self.gro
        count = 0
        error: OSError | None = None
        for _ in range(RECV_BURST):
            try:
                if gro:
                    data, ancdata, _flags, addr = sock.recvmsg(MAX_UDP_PAYLOAD, _ANCILLARY)
                    segment = _gro_segment(ancdata) if ancdata else 0
                    if segment >= len(data):
                        segment = 0
                    count += len(data) // segment + (len(data) % segment > 0) if segment else 1
                    items.append((data, addr, segment))
                else:
                    data, addr = sock.recvfrom(self.recv_size)
                    count += 1
                    items.append((data, addr, 0))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                error = exc
                break
        self.datagrams_received += count
        if items:
            self._handler.udp_received(items)
        if error is not None and not self._closed:
            self._handler.udp_error(error)

    # --- sending --------------------------------------------------------------------------------

    def send(self, datagrams: list[bytes], addr: Any) -> None:
        """Send ``datagrams`` to ``addr`` (ignored on a connected socket), in order."""
        if self._closed or not datagrams:
            return
        if self._queue:
            self._enqueue(datagrams, addr, 0)
            return
        self._send_from(datagrams, addr, 0)

    def _send_from(self, datagrams: list[bytes], addr: Any, start: int) -> None:
        sock = self._sock
        target = None if self._connected else addr
        i = start
        n = len(datagrams)
        try:
            while i < n:
                if self.gso and n - i > 1:
                    sent = self._send_gso(datagrams, i, target)
                    if sent:
                        i += sent
                        continue
                data = datagrams[i]
                if target is None:
                    sock.send(data)
                else:
                    sock.sendto(data, target)
                i += 1
                self.datagrams_sent += 1
        except (BlockingIOError, InterruptedError):
            self._enqueue(datagrams, addr, i)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                logger.debug("datagram of %d bytes too large, dropped", len(datagrams[i]))
                if i + 1 < n:
                    self._send_from(datagrams, addr, i + 1)
                return
            if not self._closed:
                self._handler.udp_error(exc)

    def _send_gso(self, datagrams: list[bytes], start: int, target: Any) -> int:
        """Send the run of equal-sized datagrams at ``start`` (the last may be shorter) as one
        GSO message; return how many left (0: not worth it, send one by one)."""
        size = len(datagrams[start])
        limit = min(len(datagrams), start + _GSO_MAX_SEGMENTS, start + _GSO_MAX_BYTES // size)
        end = start + 1
        while end < limit:
            length = len(datagrams[end])
            if length == size:
                end += 1
            elif length < size:
                end += 1
                break
            else:
                break
        if end - start < 2:
            return 0
        run = datagrams[start:end]
        ancillary = [(_SOL_UDP, _UDP_SEGMENT, _SEGMENT.pack(size))]
        try:
            if target is None:
                self._sock.sendmsg(run, ancillary)
            else:
                self._sock.sendmsg(run, ancillary, 0, target)
        except OSError as exc:
            if exc.errno in _GSO_REFUSED:
                logger.debug("UDP GSO refused (%s): sending datagram by datagram", exc)
                self.gso = False
                return 0
            raise
        self.datagrams_sent += end - start
        return end - start

    def _enqueue(self, datagrams: list[bytes], addr: Any, start: int) -> None:
        room = SEND_QUEUE_LIMIT - self._queued
        count = len(datagrams) - start
        if count > room:
            self.sends_dropped += count - room
            datagrams = datagrams[: start + max(room, 0)]
            count = max(room, 0)
        if count <= 0:
            return
        self._queue.append((datagrams, addr, start))
        self._queued += count
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        queue = self._queue
        self._queue = deque()
        self._queued = 0
        self._writing = False
        self._loop.remove_writer(self._fd)
        while queue and not self._queue:
            datagrams, addr, start = queue.popleft()
            self._send_from(datagrams, addr, start)
        if queue:  # the socket filled again: keep the order
            self._queue.extend(queue)
            self._queued += sum(len(d) - s for d, _, s in queue)

    # --- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and writing and close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self._paused:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._queue.clear()
        self._sock.close()
