"""The engine seam: what kwik needs from a QUIC implementation, engine-neutral.

A path (:mod:`kwik._path`) drives one :class:`EngineConnection` sans-IO: it feeds it the
datagrams its socket received, asks it for the datagrams to send, runs its timer, and reads
its events through an :class:`EventSink` (the path itself). Everything kwik reads or changes
inside a QUIC implementation goes through these two classes, and each implementation's private
names live in its one module (``kwik._engines.aioquic``, ``kwik._engines.qh3``), checked when
that module is imported.

Every ``now`` handed to an engine comes from one clock, :func:`time.monotonic` (made
non-decreasing per connection by the path), whatever the event loop.

This module imports no engine, no socket and no asyncio.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..exceptions import EngineError

if TYPE_CHECKING:
    from ..config import Config
    from ..tls import TLSMaterial

__all__ = [
    "FOREIGN_STREAM_CREDIT",
    "FOREIGN_STREAM_LIMIT",
    "TRANSPORT_STREAM_ID",
    "Credit",
    "Engine",
    "EngineConnection",
    "EngineError",
    "EventSink",
    "HookCheck",
]

#: The QUIC stream carrying KWIK records: the first client-initiated bidirectional stream.
TRANSPORT_STREAM_ID = 0

#: Receive credit of every QUIC stream but the transport stream, and how many of them a peer
#: may open at once, where the engine lets kwik choose (aioquic): kwik uses one stream per
#: connection, others only cost memory.
FOREIGN_STREAM_CREDIT = 1024
FOREIGN_STREAM_LIMIT = 4

#: Seconds past every timer an engine may have: where :meth:`EngineConnection.discard` puts the
#: clock of a connection it ends.
_FAR_FUTURE = 24 * 3600.0

#: The smallest UDP payload a QUIC Initial from a client must have (RFC 9000 section 14.1).
SMALLEST_INITIAL = 1200


@dataclass(frozen=True)
class HookCheck:
    """One line of an engine's self-check (``python -m kwik doctor`` prints them)."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Credit:
    """kwik's receive policy for the transport stream.

    The peer may have at most ``window`` bytes beyond what kwik's record reader consumed
    (``consumed()``), and the credit is raised in steps of at least ``step``. ``fed()`` is what
    the engine handed to the reader so far (the reader holds ``fed() - consumed()``).
    """

    consumed: Callable[[], int]
    fed: Callable[[], int]
    window: int
    step: int


class EventSink(Protocol):
    """What an engine connection reports, one call per QUIC event (implemented by the path)."""

    def on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...

    def on_stream_reset(self, stream_id: int) -> None:
        """The peer reset the stream, or asked us to stop sending on it."""
        ...

    def on_handshake_completed(self, alpn: str) -> None:
        """The handshake is done; ``alpn`` is the protocol it settled on ("" if none)."""
        ...

    def on_terminated(self, error_code: int, reason: str) -> None: ...

    def on_connection_id_issued(self, cid: bytes) -> None: ...

    def on_connection_id_retired(self, cid: bytes) -> None: ...


class EngineConnection(ABC):
    """One QUIC connection of one engine, driven sans-IO (see the module docstring)."""

    #: the connection id the peer addresses us with first (the listener's demultiplexer maps it)
    host_cid: bytes

    @property
    @abstractmethod
    def raw(self) -> Any:
        """The engine's own connection object (tests that must reach into one engine only)."""

    # --- driving ------------------------------------------------------------------------------

    @abstractmethod
    def connect(self, addr: tuple[Any, ...], now: float) -> None:
        """Client: start the handshake towards ``addr``."""

    @abstractmethod
    def receive(self, datagrams: list[bytes], addr: tuple[Any, ...], now: float) -> None:
        """Datagrams that arrived from ``addr``, in arrival order."""

    def receive_segments(
        self, buffer: bytes, segment_size: int, addr: tuple[Any, ...], now: float
    ) -> None:
        """A GRO buffer: datagrams of ``segment_size`` bytes back to back (the last may be
        shorter). Engines that take such a buffer whole override this."""
        self.receive(
            [buffer[i : i + segment_size] for i in range(0, len(buffer), segment_size)], addr, now
        )

    @abstractmethod
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[Any, ...]]]: ...

    @abstractmethod
    def get_timer(self) -> float | None: ...

    @abstractmethod
    def handle_timer(self, now: float) -> None: ...

    @abstractmethod
    def process_events(self, sink: EventSink) -> None:
        """Report every pending event to ``sink``, in order."""

    def credit_changed(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """The record reader consumed bytes: credit may be granted again (engines that grant it
        when events are taken, not when frames are written, re-open their gate here)."""

    def discard(self, now: float) -> None:
        """End the connection now, skipping what is left of its closing or draining period,
        so that the engine releases what it holds (timers, its qlog trace). Called after
        :meth:`close` when kwik aborts a path."""
        self.handle_timer(now + _FAR_FUTURE)

    # --- sending ------------------------------------------------------------------------------

    @abstractmethod
    def send_stream_data(self, stream_id: int, data: bytes) -> None:
        """Queue bytes on a stream. Raises :class:`ValueError` or :class:`RuntimeError` when
        the stream cannot be written (the peer stopped it), or the engine's closed-connection
        error (``Engine.closed_errors``)."""

    @abstractmethod
    def send_ping(self, uid: int) -> None: ...

    @abstractmethod
    def request_probe(self) -> bool:
        """Make the next packet a probe that may exceed the congestion window (a liveness probe
        must leave when the window is full); False if this engine cannot."""

    @abstractmethod
    def stop_stream(self, stream_id: int, error_code: int) -> None: ...

    @abstractmethod
    def close(self, error_code: int, reason: str) -> None:
        """Close with an application error code; the close leaves with the next datagrams."""

    # --- reading state ------------------------------------------------------------------------

    @abstractmethod
    def unacked_bytes(self) -> int:
        """Bytes handed to QUIC on the transport stream and not yet acknowledged (an engine
        that cannot tell exactly gives an upper bound)."""

    @abstractmethod
    def bytes_in_flight(self) -> int: ...

    @abstractmethod
    def probe_timeout(self, *, backoff: bool = True) -> float:
        """The current probe timeout in seconds, backoff included (base PTO x 2**pto_count),
        or without it (``backoff=False``)."""

    @abstractmethod
    def smoothed_rtt(self) -> float | None: ...

    @abstractmethod
    def rttvar(self) -> float | None:
        """The RTT variation in seconds, None before a sample or where the engine hides it."""

    @abstractmethod
    def send_blocked(self) -> bool:
        """The transport stream has bytes QUIC cannot send for lack of the peer's flow-control
        credit (stream or connection level)."""

    @abstractmethod
    def peer_address(self) -> tuple[Any, ...] | None: ...

    @abstractmethod
    def close_reason(self) -> str:
        """The reason phrase the connection was closed with, or ""."""

    @abstractmethod
    def is_closing(self) -> bool:
        """A close was started (by either side); nothing may be written any more."""

    @abstractmethod
    def close_code(self) -> int | None:
        """The error code the connection was closed with (by either side), once it was."""


class Engine(ABC):
    """One QUIC implementation kwik can run on (one instance per engine module)."""

    #: the ``Config.engine`` value naming it
    name: str
    #: the engine's version string
    version: str
    #: QUIC versions its connections speak (the listener answers others with Version
    #: Negotiation)
    supported_versions: tuple[int, ...]
    #: length of the connection ids it issues (short headers are parsed with it)
    cid_length: int
    #: exceptions its connections raise for "the connection is closing or closed"
    closed_errors: tuple[type[BaseException], ...]
    #: the logger names its own log lines go to (kwik demotes them, see ``kwik._logs``)
    loggers: tuple[str, ...]

    @abstractmethod
    def client_connection(
        self,
        config: Config,
        tls: TLSMaterial,
        server_name: str,
        credit: Credit,
    ) -> EngineConnection: ...

    @abstractmethod
    def server_factory(
        self, config: Config, tls: TLSMaterial
    ) -> Callable[[bytes, Credit], EngineConnection]:
        """Validate the server's identity now and return what makes one connection per new
        client Initial: ``factory(original_destination_cid, credit)``."""

    @abstractmethod
    def hook_report(self) -> list[HookCheck]:
        """Every internal of the engine kwik relies on, checked."""
