"""The aioquic engine: every private name of aioquic kwik relies on, checked at import.

aioquic's public API cannot bound memory: its stream credit doubles whatever the application
consumed, its send buffer is unbounded, and it exposes neither RTT nor bytes in flight. kwik
therefore reaches into a few internals. They are all here, and :func:`check_hooks` runs at
import: if an aioquic release renames or reshapes one, importing this module fails with
:class:`AioquicHookError` naming it, instead of kwik silently losing a bound.
``python -m kwik doctor`` prints the report.
"""

from __future__ import annotations

import inspect
import logging
import os
import ssl
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aioquic
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.logger import QuicFileLogger
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.stream import QuicStreamSender
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .base import (
    FOREIGN_STREAM_CREDIT,
    FOREIGN_STREAM_LIMIT,
    TRANSPORT_STREAM_ID,
    Credit,
    Engine,
    EngineConnection,
    EngineError,
    EventSink,
    HookCheck,
)

if TYPE_CHECKING:
    from aioquic.quic.packet_builder import QuicPacketBuilder
    from aioquic.quic.stream import QuicStream

    from ..config import Config
    from ..tls import TLSMaterial

__all__ = ["ENGINE", "AioquicConnection", "AioquicHookError", "check_hooks", "hook_report"]

_MAX_STREAM_DATA_FRAME_CAPACITY = 1 + 2 * 8


class AioquicHookError(EngineError):
    """The installed aioquic lacks (or changed) an internal kwik relies on."""


_CONNECTION_ATTRS = (
    "_close_event",
    "_streams",
    "_loss",
    "_logger",
    "_network_paths",
    "_probe_pending",
    "_remote_max_data",
    "_remote_max_data_used",
    "_local_max_stream_data_bidi_local",
    "_local_max_stream_data_bidi_remote",
    "_local_max_stream_data_uni",
    "_local_max_streams_bidi",
    "_local_max_streams_uni",
)
_RECOVERY_ATTRS = (
    "_rtt_smoothed",
    "_rtt_initialized",
    "_rtt_variance",
    "_pto_count",
    "bytes_in_flight",
    "get_probe_timeout",
)


def hook_report() -> list[HookCheck]:
    """Each aioquic internal kwik relies on, checked."""
    report: list[HookCheck] = []

    def note(name: str, ok: bool, detail: str) -> None:
        report.append(HookCheck(name, ok, detail))

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
    for name in _RECOVERY_ATTRS:
        note(f"QuicPacketRecovery.{name}", hasattr(loss, name), "RTT, PTO, bytes in flight")
    limit = getattr(quic, "_local_max_streams_bidi", None)
    note("Limit.value/sent", hasattr(limit, "value") and hasattr(limit, "sent"), "stream limits")
    sender = QuicStreamSender(stream_id=0, writable=True)
    for name in ("_buffer_start", "_buffer_stop", "highest_offset"):
        note(f"QuicStreamSender.{name}", hasattr(sender, name), "unacknowledged bytes")
    return report


def check_hooks() -> None:
    """Raise :class:`AioquicHookError` naming every missing or changed internal."""
    missing = [check.name for check in hook_report() if not check.ok]
    if missing:
        raise AioquicHookError(
            f"kwik cannot use engine 'aioquic' {aioquic.__version__}: changed internals: "
            + ", ".join(missing)
        )


check_hooks()


class _Demoted(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aioquic's per-connection logger, one level lower: a refused certificate is reported by
    kwik's own exception, so aioquic's WARNING saying the same must not reach stderr, while a
    user who turns the ``quic`` logger to DEBUG still sees it."""

    def __init__(self, inner: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        super().__init__(inner.logger, inner.extra)
        self._inner = inner

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return self._inner.process(msg, kwargs)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level > logging.DEBUG:
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)


# --- credit -----------------------------------------------------------------------------------


def install_credit_control(quic: QuicConnection, credit: Credit) -> None:
    """Replace aioquic's stream credit policy on ``quic`` by kwik's.

    aioquic doubles a stream's receive credit whenever the peer has sent half of it, whether or
    not anyone consumed the bytes. kwik grants the transport stream credit up to
    ``credit.consumed()`` plus ``credit.window``, raised in steps of ``credit.step``; every other
    stream keeps :data:`FOREIGN_STREAM_CREDIT` and a peer may open only a few of them.
    Must be called before the handshake (the initial limits go into its transport parameters).
    """
    consumed, window, step = credit.consumed, credit.window, credit.step
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


# --- the connection ---------------------------------------------------------------------------


class AioquicConnection(EngineConnection):
    """An aioquic ``QuicConnection`` behind the engine seam."""

    __slots__ = ("_quic", "host_cid")

    def __init__(self, quic: QuicConnection, credit: Credit) -> None:
        self._quic = quic
        install_credit_control(quic, credit)
        quic._logger = _Demoted(quic._logger)  # type: ignore[assignment]
        self.host_cid = quic.host_cid

    @property
    def raw(self) -> QuicConnection:
        return self._quic

    def connect(self, addr: tuple[Any, ...], now: float) -> None:
        self._quic.connect(addr, now=now)

    def receive(self, datagrams: list[bytes], addr: tuple[Any, ...], now: float) -> None:
        receive = self._quic.receive_datagram
        for data in datagrams:
            receive(data, addr, now=now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[Any, ...]]]:
        return self._quic.datagrams_to_send(now=now)

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
        # aioquic writes a user PING only inside the congestion window; its own PTO probe flag
        # lets one datagram exceed it (RFC 9002 section 7)
        self._quic._probe_pending = True
        return True

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self._quic.stop_stream(stream_id, error_code)

    def close(self, error_code: int, reason: str) -> None:
        self._quic.close(error_code=error_code, reason_phrase=reason)

    def unacked_bytes(self) -> int:
        stream = self._quic._streams.get(TRANSPORT_STREAM_ID)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def bytes_in_flight(self) -> int:
        return int(self._quic._loss.bytes_in_flight)

    def probe_timeout(self, *, backoff: bool = True) -> float:
        loss = self._quic._loss
        base = float(loss.get_probe_timeout())
        return base * float(2 ** int(loss._pto_count)) if backoff else base

    def smoothed_rtt(self) -> float | None:
        loss = self._quic._loss
        if not loss._rtt_initialized:
            return None
        return float(loss._rtt_smoothed)

    def rttvar(self) -> float | None:
        loss = self._quic._loss
        if not loss._rtt_initialized:
            return None
        return float(loss._rtt_variance)

    def send_blocked(self) -> bool:
        quic = self._quic
        stream = quic._streams.get(TRANSPORT_STREAM_ID)
        if stream is None:
            return False
        sender = stream.sender
        if sender._buffer_stop <= sender.highest_offset:
            return False  # nothing waits for its first transmission
        return (
            sender.highest_offset >= stream.max_stream_data_remote
            or quic._remote_max_data_used >= quic._remote_max_data
        )

    def peer_address(self) -> tuple[Any, ...] | None:
        paths = self._quic._network_paths
        return tuple(paths[0].addr) if paths else None

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
        congestion_control_algorithm=config.congestion_control,
        # stream credit is kwik's (install_credit_control: the transport stream gets what kwik
        # consumed plus the window, every other stream almost nothing); connection-level
        # credit must never be the tighter limit
        max_stream_data=config.path_receive_window,
        max_data=max(config.path_receive_window * 2, 1024 * 1024),
    )
    if config.qlog_dir is not None:
        os.makedirs(config.qlog_dir, exist_ok=True)
        qc.quic_logger = QuicFileLogger(os.fspath(config.qlog_dir))
    if tls.certificate_chain is not None and tls.private_key is not None:
        chain = x509.load_pem_x509_certificates(tls.certificate_chain)
        qc.certificate = chain[0]
        qc.certificate_chain = chain[1:]
        qc.private_key = serialization.load_pem_private_key(tls.private_key, password=None)
    if is_client:
        qc.server_name = tls.server_name or server_name
        if not tls.verify:
            qc.verify_mode = ssl.CERT_NONE
        elif tls.cadata is not None:
            qc.load_verify_locations(cadata=tls.cadata)
    return qc


class AioquicEngine(Engine):
    name = "aioquic"
    version = aioquic.__version__
    supported_versions = tuple(int(v) for v in QuicConfiguration().supported_versions)
    cid_length = QuicConfiguration().connection_id_length
    closed_errors: tuple[type[BaseException], ...] = ()
    loggers = ("quic",)

    def client_connection(
        self, config: Config, tls: TLSMaterial, server_name: str, credit: Credit
    ) -> EngineConnection:
        qc = _configuration(config, tls, is_client=True, server_name=server_name)
        return AioquicConnection(QuicConnection(configuration=qc), credit)

    def server_factory(
        self, config: Config, tls: TLSMaterial
    ) -> Callable[[bytes, Credit], EngineConnection]:
        qc = _configuration(config, tls, is_client=False)

        def factory(original_dcid: bytes, credit: Credit) -> EngineConnection:
            quic = QuicConnection(
                configuration=qc, original_destination_connection_id=original_dcid
            )
            return AioquicConnection(quic, credit)

        return factory

    def hook_report(self) -> list[HookCheck]:
        return hook_report()


ENGINE = AioquicEngine()
