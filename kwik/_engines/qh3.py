"""The qh3 engine (``Config(engine="qh3")``, ``pip install 'kwik[qh3]'``).

qh3 2.x keeps TLS in Python and runs the rest of QUIC (packet protection, streams, flow
control, recovery) in Rust, behind a Python facade, ``qh3.quic.connection.QuicConnection``.
kwik drives that facade sans-IO through its public methods, plus the few private names below,
each checked when this module is imported (:func:`hook_report`):

* **receive back-pressure** (``QuicConnection._drain_core``, ``._core``): qh3 grants stream
  credit when the native core's stream events are *taken*, and the facade takes them all right
  after each packet, whether or not anyone reads. kwik gates that drain: while its record reader
  holds half a ``path_receive_window`` the native events stay in the core, so the core grants
  no credit and the peer stops. A peer that never reads holds at most
  ``stream_receive_buffer + 2 x path_receive_window`` of a kwik receiver's memory. The gate
  only closes on a connected connection, so a close is never held back.
* **bytes in flight, RTT, PTO** (``_core.bytes_in_flight``, ``.smoothed_rtt``, ``.pto_count``):
  qh3 publishes no PTO and no RTT variation; kwik estimates the PTO as RFC 9002 does before
  the variation is known (``3 x srtt + max_ack_delay``), with qh3's backoff.
* **the close reason and the peer address** (``_close_event``, ``_remote_addr``).

What qh3 does not let kwik choose (documented in ``docs/engines.md``): every QUIC stream gets
``path_receive_window`` of credit and a peer may open 100 bidirectional streams (kwik stops
them at once; their bytes are bounded by the connection credit, ``2 x path_receive_window``),
congestion control is CUBIC, and a liveness probe cannot exceed the congestion window.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import (
    TRANSPORT_STREAM_ID,
    Credit,
    Engine,
    EngineConnection,
    EngineError,
    EventSink,
    HookCheck,
)

try:
    import qh3
    from qh3.quic import events
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import QuicConnection, QuicConnectionError
    from qh3.quic.logger import QuicFileLogger
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise EngineError(
        f"kwik cannot use engine 'qh3': qh3 is not installed ({exc}); "
        "install it with: pip install 'kwik[qh3]'"
    ) from exc

if TYPE_CHECKING:
    from ..config import Config
    from ..tls import TLSMaterial

__all__ = ["ENGINE", "Qh3Connection", "Qh3HookError", "check_hooks", "hook_report"]

logger = logging.getLogger("kwik.engine.qh3")

#: qh3 releases kwik was written against: 2.x (the Rust transport core)
_SUPPORTED_MAJOR = 2

#: RFC 9002's max_ack_delay default, which qh3 uses
_MAX_ACK_DELAY = 0.025


class Qh3HookError(EngineError):
    """The installed qh3 lacks (or changed) an internal kwik relies on."""


_FACADE_ATTRS = {
    "_drain_core": "the event drain kwik gates (receive back-pressure)",
    "_core": "the native core: its events, counters and packets",
    "_close_event": "the close reason",
    "_remote_addr": "the peer's address",
    "_events": "the facade's event queue",
    "_quic_logger": "qlog of the datagrams kwik polls itself",
    "_log_datagram": "qlog of the datagrams kwik polls itself",
    "_log_packets": "qlog of the datagrams kwik polls itself",
}
_CORE_ATTRS = (
    "poll_transmit",
    "state",
    "has_events",
    "bytes_in_flight",
    "congestion_window",
    "smoothed_rtt",
    "pto_count",
)
_PUBLIC_METHODS = (
    "receive_datagram",
    "receive_many_datagrams",
    "receive_gro_buffer",
    "datagrams_to_send",
    "get_send_buffer_size",
    "send_stream_data",
    "stop_stream",
    "send_ping",
    "handle_timer",
    "get_timer",
    "next_event",
    "close",
)


def _probe_connection() -> Any:
    """A client connection with a started core (no packet leaves: nothing is sent)."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["k"]))
    quic.connect(("127.0.0.1", 9), now=0.0)
    return quic


def hook_report() -> list[HookCheck]:
    """Each qh3 internal kwik relies on, checked."""
    report: list[HookCheck] = []

    def note(name: str, ok: bool, detail: str) -> None:
        report.append(HookCheck(name, ok, detail))

    version = getattr(qh3, "__version__", "0")
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        major = 0
    note("qh3 version", major == _SUPPORTED_MAJOR, f"{version} (kwik supports 2.x)")
    for name in _PUBLIC_METHODS:
        note(f"QuicConnection.{name}", callable(getattr(QuicConnection, name, None)), "public API")
    try:
        quic = _probe_connection()
    except Exception as exc:  # pragma: no cover - depends on qh3
        note("QuicConnection.connect()", False, f"cannot start a connection: {exc}")
        return report
    for name, detail in _FACADE_ATTRS.items():
        note(f"QuicConnection.{name}", hasattr(quic, name), detail)
    core = getattr(quic, "_core", None)
    for name in _CORE_ATTRS:
        present = False
        try:
            getattr(core, name)
            present = core is not None
        except Exception:
            present = False
        note(f"QuicConnectionCore.{name}", present, "gate, RTT, PTO, bytes in flight")
    note(
        "QuicConnectionCore.state == 'first_flight'",
        getattr(core, "state", None) == "first_flight",
        "the native state names the receive gate reads",
    )
    return report


def check_hooks() -> None:
    """Raise :class:`Qh3HookError` naming every missing or changed internal."""
    missing = [check.name for check in hook_report() if not check.ok]
    if missing:
        raise Qh3HookError(
            f"kwik cannot use engine 'qh3' {getattr(qh3, '__version__', '?')}: changed "
            "internals: " + ", ".join(missing)
        )


check_hooks()


# --- qh3's own log lines ------------------------------------------------------------------------

_in_kwik_drain = 0


class _DemoteDuringDrain(logging.Filter):
    """qh3 logs every peer close and protocol error at WARNING from its event drain; on kwik's
    connections kwik reports those itself, so they are demoted to DEBUG there (a user who
    turns the ``quic`` logger to DEBUG still sees them). Other qh3 users are not touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _in_kwik_drain and record.levelno > logging.DEBUG:
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
        return True


logging.getLogger("quic").addFilter(_DemoteDuringDrain())


# --- the connection ---------------------------------------------------------------------------


class _GatedCore:
    """The native core as the facade's drain sees it: ``next_event`` says "no more" once the
    transport stream's bytes taken out (and not yet consumed by kwik's reader) fill the
    window, so the drain stops between two events and the rest, with its credit, waits."""

    __slots__ = ("_core", "_connection")

    def __init__(self, core: Any, connection: Qh3Connection) -> None:
        self._core = core
        self._connection = connection

    def next_event(self) -> tuple[Any, ...] | None:
        connection = self._connection
        if connection._gated():
            return None
        native: tuple[Any, ...] | None = self._core.next_event()
        if native is not None and native[0] == "stream_data" and native[1] == TRANSPORT_STREAM_ID:
            connection._taken += len(native[2])
        return native

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


class Qh3Connection(EngineConnection):
    """A qh3 ``QuicConnection`` behind the engine seam, with kwik's receive gate."""

    def __init__(self, quic: QuicConnection, credit: Credit) -> None:
        self._quic = quic
        self._credit = credit
        #: transport-stream bytes taken out of the native core (handed to kwik, or queued in
        #: the facade's event deque on their way to it)
        self._taken = 0
        self._drain: Callable[[], None] = quic._drain_core
        quic._drain_core = self._gated_drain  # type: ignore[method-assign]
        self.host_cid = quic.host_cid

    def _gated(self) -> bool:
        # The core holds at most a window the peer may still fill; what was taken out and
        # not yet consumed is capped at half a window, because the drain stops *between*
        # native events (up to ~64 KiB each) and the session may park one record: the total
        # stays within stream_receive_buffer + 2 x path_receive_window
        credit = self._credit
        if self._taken - credit.consumed() < credit.window // 2:
            return False
        core = self._quic._core
        # only a connected connection is gated: a close is never held back
        return core is not None and core.state == "connected"

    def _gated_drain(self) -> None:
        quic = self._quic
        core = quic._core
        if core is None or self._gated():
            return  # the native events (and with them the credit) wait for the reader
        global _in_kwik_drain
        _in_kwik_drain += 1
        quic._core = _GatedCore(core, self)  # type: ignore[assignment]
        try:
            self._drain()
        finally:
            if isinstance(quic._core, _GatedCore):
                quic._core = core
            _in_kwik_drain -= 1

    def credit_changed(self) -> None:
        core = self._quic._core
        if core is not None and core.has_events:
            self._gated_drain()

    @property
    def raw(self) -> QuicConnection:
        return self._quic

    def connect(self, addr: tuple[Any, ...], now: float) -> None:
        self._quic.connect(addr, now=now)

    def receive(self, datagrams: list[bytes], addr: tuple[Any, ...], now: float) -> None:
        if len(datagrams) == 1:
            self._quic.receive_datagram(datagrams[0], addr, now=now)
        else:
            self._quic.receive_many_datagrams(datagrams, addr, now=now)

    def receive_segments(
        self, buffer: bytes, segment_size: int, addr: tuple[Any, ...], now: float
    ) -> None:
        self._quic.receive_gro_buffer(buffer, segment_size, addr, now=now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[Any, ...]]]:
        # the facade's loop, except that a failure keeps what was built before it: qh3 2.1
        # can raise "packet builder capacity exhausted" after some datagrams of a flight
        # (a server's handshake flight at the anti-amplification limit), and the facade then
        # drops the datagrams it had built; the rest is built on the next call
        quic = self._quic
        core = quic._core
        if core is None:
            return []
        out: list[tuple[bytes, tuple[Any, ...]]] = []
        logging_on = quic._quic_logger is not None
        while True:
            try:
                transmit = core.poll_transmit(now)
            except RuntimeError as exc:
                if out:
                    logger.debug("qh3 stopped a flight after %d datagrams: %s", len(out), exc)
                    break
                raise QuicConnectionError(1, None, str(exc)) from exc
            if transmit is None:
                break
            if logging_on:
                quic._log_datagram("datagrams_sent", transmit[0])
                quic._log_packets("packet_sent", transmit[0])
            out.append((transmit[0], transmit[1]))
        return out

    def get_timer(self) -> float | None:
        timer = self._quic.get_timer()
        return None if timer is None else float(timer)

    def handle_timer(self, now: float) -> None:
        self._quic.handle_timer(now=now)

    def process_events(self, sink: EventSink) -> None:
        quic = self._quic
        event = quic.next_event()
        while event is not None:
            kind = type(event)
            if kind is events.StreamDataReceived:
                sink.on_stream_data(event.stream_id, event.data, event.end_stream)  # type: ignore[attr-defined]
            elif kind is events.ConnectionIdIssued:
                sink.on_connection_id_issued(event.connection_id)  # type: ignore[attr-defined]
            elif kind is events.ConnectionIdRetired:
                sink.on_connection_id_retired(event.connection_id)  # type: ignore[attr-defined]
            elif kind is events.StreamReset or kind is events.StopSendingReceived:
                sink.on_stream_reset(event.stream_id)  # type: ignore[attr-defined]
            elif kind is events.HandshakeCompleted:
                sink.on_handshake_completed(event.alpn_protocol or "")  # type: ignore[attr-defined]
            elif kind is events.ConnectionTerminated:
                sink.on_terminated(event.error_code, event.reason_phrase)  # type: ignore[attr-defined]
            event = quic.next_event()

    def send_stream_data(self, stream_id: int, data: bytes) -> None:
        self._quic.send_stream_data(stream_id, data)

    def send_ping(self, uid: int) -> None:
        self._quic.send_ping(uid)

    def request_probe(self) -> bool:
        return False  # qh3 has no probe that may exceed the congestion window (docs/engines.md)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self._quic.stop_stream(stream_id, error_code)

    def close(self, error_code: int, reason: str) -> None:
        self._quic.close(error_code=error_code, reason_phrase=reason)

    def unacked_bytes(self) -> int:
        # not yet sent + in flight: qh3 tells no per-stream acknowledged offset, so packets of
        # other frames in flight count too (an upper bound, never below the truth)
        quic = self._quic
        core = quic._core
        if core is None or quic._close_event is not None:
            return 0
        return int(quic.get_send_buffer_size(TRANSPORT_STREAM_ID)) + int(core.bytes_in_flight)

    def bytes_in_flight(self) -> int:
        core = self._quic._core
        return 0 if core is None else int(core.bytes_in_flight)

    def probe_timeout(self, *, backoff: bool = True) -> float:
        core = self._quic._core
        if core is None:
            return 2 * float(self._quic.configuration.initial_rtt)
        srtt = core.smoothed_rtt
        base = (
            2 * float(self._quic.configuration.initial_rtt)
            if srtt is None
            else 3 * float(srtt) + _MAX_ACK_DELAY
        )
        return base * float(2 ** int(core.pto_count)) if backoff else base

    def smoothed_rtt(self) -> float | None:
        core = self._quic._core
        if core is None:
            return None
        srtt = core.smoothed_rtt
        return None if srtt is None else float(srtt)

    def rttvar(self) -> float | None:
        return None  # qh3 does not publish it

    def send_blocked(self) -> bool:
        # qh3 does not tell why queued bytes wait; bytes still queued while the congestion
        # window has room for a datagram wait for the peer's credit (or, briefly, the pacer)
        quic = self._quic
        core = quic._core
        if core is None or quic._close_event is not None:
            return False
        if not quic.get_send_buffer_size(TRANSPORT_STREAM_ID):
            return False
        room = int(core.congestion_window) - int(core.bytes_in_flight)
        return room >= int(quic.configuration.max_datagram_size)

    def peer_address(self) -> tuple[Any, ...] | None:
        addr = self._quic._remote_addr
        return tuple(addr) if addr is not None else None

    def close_reason(self) -> str:
        event = self._quic._close_event
        reason = getattr(event, "reason_phrase", None)
        return str(reason) if reason else ""

    def is_closing(self) -> bool:
        return self._quic._close_event is not None

    def close_code(self) -> int | None:
        event = self._quic._close_event
        code = getattr(event, "error_code", None)
        return int(code) if code is not None else None


# --- the engine -------------------------------------------------------------------------------


def _configuration(
    config: Config, tls: TLSMaterial, *, is_client: bool, server_name: str | None = None
) -> QuicConfiguration:
    qc = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(tls.alpn_protocols),
        idle_timeout=config.idle_timeout,
        max_datagram_size=config.max_datagram_size,
        # Config.max_datagram_size is the size kwik sends, on either engine
        probe_datagram_size=False,
        # qh3 gives every stream this credit; the connection's must never be the tighter
        # limit of the transport stream, and bounds what foreign streams can make us hold
        max_stream_data=config.path_receive_window,
        max_data=max(config.path_receive_window * 2, 1024 * 1024),
    )
    if config.qlog_dir is not None:
        os.makedirs(config.qlog_dir, exist_ok=True)
        qc.quic_logger = QuicFileLogger(os.fspath(config.qlog_dir))
    if tls.certificate_chain is not None and tls.private_key is not None:
        qc.load_cert_chain(tls.certificate_chain, tls.private_key)
    if is_client:
        qc.server_name = tls.server_name or server_name
        if not tls.verify:
            import ssl

            qc.verify_mode = ssl.CERT_NONE
        elif tls.cadata is not None:
            qc.load_verify_locations(cadata=tls.cadata)
    return qc


class Qh3Engine(Engine):
    name = "qh3"
    version = str(getattr(qh3, "__version__", "?"))
    supported_versions = tuple(int(v) for v in QuicConfiguration().supported_versions)
    cid_length = QuicConfiguration().connection_id_length
    closed_errors: tuple[type[BaseException], ...] = (QuicConnectionError,)
    loggers = ("quic",)

    def client_connection(
        self, config: Config, tls: TLSMaterial, server_name: str, credit: Credit
    ) -> EngineConnection:
        qc = _configuration(config, tls, is_client=True, server_name=server_name)
        return Qh3Connection(QuicConnection(configuration=qc), credit)

    def server_factory(
        self, config: Config, tls: TLSMaterial
    ) -> Callable[[bytes, Credit], EngineConnection]:
        qc = _configuration(config, tls, is_client=False)

        def factory(original_dcid: bytes, credit: Credit) -> EngineConnection:
            quic = QuicConnection(
                configuration=qc, original_destination_connection_id=original_dcid
            )
            return Qh3Connection(quic, credit)

        return factory

    def hook_report(self) -> list[HookCheck]:
        return hook_report()


ENGINE = Qh3Engine()
