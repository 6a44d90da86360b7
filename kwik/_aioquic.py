"""Every private name of aioquic that kwik relies on, in one place, checked at import.

aioquic's public API cannot bound memory: its stream credit doubles whatever the application
consumed, its send buffer is unbounded, and it exposes neither RTT nor bytes in flight. kwik
therefore reaches into a few internals. They are all here, and :func:`check_hooks` runs at
import: if an aioquic release renames or reshapes one, ``import kwik`` fails with
:class:`AioquicHookError` naming it, instead of kwik silently losing a bound. The protected
members of ``QuicConnectionProtocol`` that its subclasses use (``_quic``, ``_transport``,
``_loop``, ``_transmit_soon``) are checked too; ``python -m kwik doctor`` prints the report.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aioquic
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.stream import QuicStreamSender

if TYPE_CHECKING:
    from aioquic.quic.packet_builder import QuicPacketBuilder
    from aioquic.quic.stream import QuicStream

__all__ = [
    "AioquicHookError",
    "FOREIGN_STREAM_CREDIT",
    "TRANSPORT_STREAM_ID",
    "bytes_in_flight",
    "cancel_connected_waiter",
    "check_hooks",
    "clear_transmit_handle",
    "close_reason",
    "hook_report",
    "install_credit_control",
    "peer_address",
    "probe_timeout",
    "rearm_timer",
    "request_probe",
    "rtt_variance",
    "send_blocked",
    "smoothed_rtt",
    "transmit_handle",
    "unacked_bytes",
]

#: The QUIC stream carrying KWIK records: the first client-initiated bidirectional stream.
TRANSPORT_STREAM_ID = 0

#: Receive credit of every QUIC stream but the transport stream, and how many of them a peer
#: may open at once: kwik uses one stream per connection, others only cost memory.
FOREIGN_STREAM_CREDIT = 1024
FOREIGN_STREAM_LIMIT = 4

_MAX_STREAM_DATA_FRAME_CAPACITY = 1 + 2 * 8


class AioquicHookError(ImportError):
    """The installed aioquic lacks (or changed) an internal kwik relies on."""


# name, where, how to check
_CONNECTION_ATTRS = (
    "_close_event",
    "_probe_pending",
    "_remote_max_data",
    "_remote_max_data_used",
    "_streams",
    "_loss",
    "_network_paths",
    "_local_max_stream_data_bidi_local",
    "_local_max_stream_data_bidi_remote",
    "_local_max_stream_data_uni",
    "_local_max_streams_bidi",
    "_local_max_streams_uni",
)
_PROTOCOL_ATTRS = (
    "_transmit_task",
    "_timer",
    "_timer_at",
    "_connected_waiter",
    "_quic",
    "_loop",
    "_handle_timer",
    "_transport",
    "_transmit_soon",
)


def hook_report() -> list[tuple[str, bool, str]]:
    """Each aioquic internal kwik relies on: ``(name, present, detail)``."""
    report: list[tuple[str, bool, str]] = []

    def note(name: str, ok: bool, detail: str) -> None:
        report.append((name, ok, detail))

    method = getattr(QuicConnection, "_write_stream_limits", None)
    params = list(inspect.signature(method).parameters) if callable(method) else []
    note(
        "QuicConnection._write_stream_limits",
        params == ["self", "builder", "space", "stream"],
        "stream credit policy (replaced per connection)",
    )
    note(
        "QuicConnection._on_max_stream_data_delivery",
        callable(getattr(QuicConnection, "_on_max_stream_data_delivery", None)),
        "delivery handler of MAX_STREAM_DATA frames",
    )
    try:
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    except Exception as exc:  # pragma: no cover - depends on aioquic
        note("QuicConnection()", False, f"cannot build a connection: {exc}")
        return report
    for name in _CONNECTION_ATTRS:
        note(f"QuicConnection.{name}", hasattr(quic, name), "instance attribute")
    loss = getattr(quic, "_loss", None)
    for name in (
        "_rtt_smoothed",
        "_rtt_variance",
        "_rtt_initialized",
        "_pto_count",
        "bytes_in_flight",
        "get_probe_timeout",
    ):
        note(f"QuicPacketRecovery.{name}", hasattr(loss, name), "RTT, PTO, bytes in flight")
    limit = getattr(quic, "_local_max_streams_bidi", None)
    note("Limit.value/sent", hasattr(limit, "value") and hasattr(limit, "sent"), "stream limits")
    sender = QuicStreamSender(stream_id=0, writable=True)
    for name in ("_buffer_start", "_buffer_stop", "next_offset"):
        note(f"QuicStreamSender.{name}", hasattr(sender, name), "unacknowledged bytes")
    # a protocol needs a running loop to be built: read what its constructor sets instead
    try:
        source = inspect.getsource(QuicConnectionProtocol)
    except (OSError, TypeError):  # pragma: no cover - no source shipped
        source = ""
    for name in _PROTOCOL_ATTRS:
        present = f"self.{name} =" in source or f"self.{name}:" in source
        present = present or callable(getattr(QuicConnectionProtocol, name, None))
        note(f"QuicConnectionProtocol.{name}", present, "instance attribute")
    return report


def check_hooks() -> None:
    """Raise :class:`AioquicHookError` naming every missing or changed internal."""
    missing = [name for name, ok, _ in hook_report() if not ok]
    if missing:
        raise AioquicHookError(
            f"kwik cannot work with aioquic {aioquic.__version__}: changed internals: "
            + ", ".join(missing)
        )


check_hooks()


# --- credit ---------------------------------------------------------------------------------------


def install_credit_control(
    quic: QuicConnection, consumed: Callable[[], int], window: int, step: int
) -> None:
    """Replace aioquic's stream credit policy on ``quic`` by kwik's.

    aioquic doubles a stream's receive credit whenever the peer has sent half of it, whether or
    not anyone consumed the bytes. kwik grants the transport stream credit up to ``consumed()``
    (what the record reader took out) plus ``window``, raised in steps of ``step``; every other
    stream keeps :data:`FOREIGN_STREAM_CREDIT` and a peer may open only a few of them.
    Must be called before the handshake (the initial limits go into its transport parameters).
    """
    quic._local_max_stream_data_bidi_remote = FOREIGN_STREAM_CREDIT
    quic._local_max_stream_data_uni = FOREIGN_STREAM_CREDIT
    # the client opens the transport stream: its initial credit may be the full window
    quic._local_max_stream_data_bidi_local = (
        window if quic.configuration.is_client else FOREIGN_STREAM_CREDIT
    )
    for limit in (quic._local_max_streams_bidi, quic._local_max_streams_uni):
        limit.value = limit.sent = FOREIGN_STREAM_LIMIT

    def write_stream_limits(builder: QuicPacketBuilder, space: Any, stream: QuicStream) -> None:
        if stream.stream_id == TRANSPORT_STREAM_ID and stream.max_stream_data_local:
            wanted = consumed() + window
            if wanted - stream.max_stream_data_local >= step:
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


# --- reading internals ----------------------------------------------------------------------------


def unacked_bytes(quic: QuicConnection) -> int:
    """Bytes handed to QUIC on the transport stream and not yet acknowledged by the peer."""
    stream = quic._streams.get(TRANSPORT_STREAM_ID)
    if stream is None:
        return 0
    sender = stream.sender
    return int(sender._buffer_stop - sender._buffer_start)


def bytes_in_flight(quic: QuicConnection) -> int:
    """Bytes of ack-eliciting packets sent and neither acknowledged nor declared lost."""
    return int(quic._loss.bytes_in_flight)


def probe_timeout(quic: QuicConnection) -> float:
    """QUIC's probe timeout (PTO) in seconds, with its backoff (``PTO * 2**pto_count``): how
    long QUIC itself may legitimately stay silent before its next probe."""
    loss = quic._loss
    return float(loss.get_probe_timeout()) * float(2 ** int(loss._pto_count))


def rtt_variance(quic: QuicConnection) -> float | None:
    """aioquic's RTT variation in seconds, None before the first sample."""
    loss = quic._loss
    if not loss._rtt_initialized:
        return None
    return float(loss._rtt_variance)


def send_blocked(quic: QuicConnection) -> bool:
    """Whether the transport stream holds bytes QUIC may not send: the peer's flow-control
    credit (stream or connection) is used up."""
    stream = quic._streams.get(TRANSPORT_STREAM_ID)
    if stream is None:
        return False
    sender = stream.sender
    if sender.next_offset >= sender._buffer_stop:
        return False  # nothing unsent
    stream_full = sender.next_offset >= stream.max_stream_data_remote
    return bool(stream_full or quic._remote_max_data_used >= quic._remote_max_data)


def request_probe(quic: QuicConnection) -> None:
    """Make the next packet a probe, which may go beyond the congestion window (RFC 9002
    section 7: only probes may): a liveness probe must leave even when the window is full."""
    quic._probe_pending = True


def smoothed_rtt(quic: QuicConnection) -> float | None:
    """aioquic's smoothed RTT in seconds, None before the first sample."""
    loss = quic._loss
    if not loss._rtt_initialized:
        return None
    return float(loss._rtt_smoothed)


def peer_address(quic: QuicConnection) -> tuple[Any, ...] | None:
    """The peer's UDP address, once known."""
    paths = quic._network_paths
    return tuple(paths[0].addr) if paths else None


def close_reason(quic: QuicConnection) -> str:
    """The reason phrase the connection was closed with, or ""."""
    event = quic._close_event
    reason = getattr(event, "reason_phrase", None)
    return str(reason) if reason else ""


def transmit_handle(protocol: QuicConnectionProtocol) -> Any:
    """The pending ``call_soon`` handle of aioquic's coalesced transmit, or None."""
    return protocol._transmit_task


def clear_transmit_handle(protocol: QuicConnectionProtocol) -> None:
    protocol._transmit_task = None


def rearm_timer(protocol: QuicConnectionProtocol, timer_at: float | None) -> None:
    """Re-arm aioquic's connection timer for ``timer_at`` (what ``transmit()`` does)."""
    if protocol._timer is not None and protocol._timer_at != timer_at:
        protocol._timer.cancel()
        protocol._timer = None
    if protocol._timer is None and timer_at is not None:
        protocol._timer = protocol._loop.call_at(timer_at, protocol._handle_timer)
    protocol._timer_at = timer_at


def cancel_connected_waiter(protocol: QuicConnectionProtocol) -> None:
    """Drop the future ``wait_connected()`` waits on, so that a handshake abandoned on timeout
    does not log "Future exception was never retrieved" when the connection ends later."""
    waiter = protocol._connected_waiter
    if waiter is not None:
        protocol._connected_waiter = None
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            waiter.exception()
