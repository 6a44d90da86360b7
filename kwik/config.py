"""Configuration: :class:`Config` (KWIK and QUIC knobs) and :class:`TLSConfig` (identity, trust)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import _engines

__all__ = ["EXTENSION_ALPN", "Config", "PathPolicy", "TLSConfig"]

#: ALPN token of kwik's credit extension: a kwik peer offers it before ``"kwik"`` (KWIK v2).
EXTENSION_ALPN = "kwik-credit-1"

#: Decides whether a client may dial an address a server asked for (AddPath): called with
#: the address ("host:port") and returns True to allow it.
PathPolicy = Callable[[str], bool]

_MIB = 1024 * 1024


@dataclass
class Config:
    """Every KWIK and QUIC knob of a session or listener, with its default.

    One instance may be shared by several sessions; kwik never mutates it.
    """

    engine: str = field(default_factory=_engines.default_engine)
    """The QUIC implementation every path of the session (or listener) runs on: ``"aioquic"``
    (the default) or ``"qh3"`` (``pip install 'kwik[qh3]'``; several times faster, see
    ``docs/engines.md``). The default is the ``KWIK_ENGINE`` environment variable when
    set, else ``"aioquic"``. An engine that is not installed, or whose checks fail, raises
    :class:`~kwik.EngineError` here, naming what is missing."""

    handshake_timeout: float = 10.0
    """Seconds ``dial_addr`` (and dialing a relay) may spend on the QUIC handshake before
    failing with :class:`~kwik.HandshakeTimeoutError`."""

    idle_timeout: float = 60.0
    """QUIC idle timeout in seconds: a path that hears nothing for this long is closed."""

    close_timeout: float = 5.0
    """Seconds a graceful ``close()`` may spend delivering what was already written before the
    connection is closed anyway."""

    max_datagram_size: int = 1200
    """Largest UDP payload QUIC sends (at least 1200). 1452 fits a 1500-byte MTU and is
    noticeably faster with aioquic."""

    congestion_control: str = "reno"
    """Congestion control algorithm on aioquic: ``"reno"`` or ``"cubic"``. qh3 always runs
    CUBIC (with HyStart++) and ignores this field."""

    heartbeat_interval: float = 3.0
    """Seconds between heartbeats of a path: the client side sends a KWIK Ping (upstream used
    15 s) and a QUIC PING, the server side a QUIC PING (any QUIC peer acknowledges it). Once a
    path has been without evidence of life and without any datagram for this long, it is also
    probed (a QUIC PING) every ``heartbeat_interval / heartbeat_miss_threshold`` (0.6 s by
    default) until something arrives. Must be shorter than ``idle_timeout``. Cost with the
    defaults: per path, one KWIK Ping and its echo plus one QUIC PING and its ACK every 3 s;
    no probe while the peer answers."""

    heartbeat_miss_threshold: int = 5
    """A path fails after ``heartbeat_interval * heartbeat_miss_threshold`` seconds (the idle
    bound, 15 s by default) without evidence that its peer is alive, idle or busy. Evidence
    on the client side of a path is a KWIK echo of its Ping, and any datagram while echoes
    cannot arrive (this side not reading, so it withholds credit, or the peer withholding
    credit from it); on the server side any datagram. At least 2.

    With the defaults (3 s x 5):

    * **death is noticed** within 15 s of the peer's last datagram (a frozen or killed peer,
      a vanished network): between 12 and 15 s on the client side (echoes arrive every 3 s),
      15 s on the server side; a *zombie* peer (its QUIC acknowledges, its KWIK layer never
      echoes) 15 s after its last echo;
    * **silence survived**: a server path survives any silence shorter than 15 s; a client
      path any silence shorter than about 11.4 s in the worst case (a silence that starts just
      before an echo is due, then up to 0.6 s for the next probe and a few RTTs for QUIC to
      resend the Ping and the echo to return), so outages of 8 s (Wi-Fi roaming, a NAT
      rebinding, a peer's garbage-collection pause) never fail a path, idle or busy.

    In general death is noticed within ``I * M`` and the client side survives silences up to
    about ``(M - 1) * I - I / M`` (``I = heartbeat_interval``, ``M =
    heartbeat_miss_threshold``). Fast failover, e.g. 1 s x 3, notices death within 3 s but
    gives up on outages beyond about 1.7 s; 5 s x 3 (the previous defaults, also 15 s) would
    leave 0.3 s of margin after an 8 s outage, hence 3 s x 5."""

    stall_timeout: float | None = None
    """Optional shorter bound for a **busy** path (bytes in flight), for applications that
    want fast failover; None (default): no separate busy bound, the idle bound above applies
    to busy paths too. Must be shorter than the idle bound. When set, a busy path fails after
    ``max(stall_timeout, 3 * PTO)`` of complete silence (no datagram since it last heard from
    its peer or became busy), where PTO is QUIC's probe timeout *with its backoff* when the
    silence passed ``stall_timeout``. Under QUIC's doubling backoff that is between 1.5 and 3
    times ``stall_timeout + base PTO``, and always after QUIC's first retransmission after
    ``stall_timeout``, which gets at least one backed-off PTO to be answered. So:

    * **silence survived**: any blackout up to ``stall_timeout`` (more precisely, up to QUIC's
      first retransmission after it), provided ``3 * stall_timeout`` stays below the idle
      bound, which still applies;
    * **death is noticed** on a busy path within ``3 * (stall_timeout + base PTO)`` of the
      last datagram.

    Example, 30 ms base PTO, ``stall_timeout=3``: a vanished peer fails a busy path after
    5.8 s of silence, blackouts up to 3.8 s (QUIC's 7th retransmission) are survived. An idle
    path is busy while its heartbeat is unacknowledged, so the same bound applies to a
    heartbeat sent into an outage. Silent busy paths are probed every third of the bound. The
    trade-off: 20 % random loss causes silences of 3 to 28 s that plain QUIC rides out; a
    ``stall_timeout`` below them fails such paths."""

    ack_interval: float = 0.1
    """Seconds after the first unacknowledged packet within which a KWIK Ack is sent."""

    ack_threshold: int = 16
    """Unacknowledged packets after which a KWIK Ack is sent at once."""

    max_record_size: int = _MIB
    """Largest record accepted on the transport stream; a larger one closes the path with a
    protocol violation."""

    max_stream_frame_data: int = 64 * 1024
    """Most bytes of stream data kwik puts in one Stream (or RelayData) frame. kwik caps it
    further at 64 KiB minus the packet and frame headers (65,493 bytes), so that a full packet
    fits one of the worker pool's 64 KiB buffers at the receiver."""

    stream_send_buffer: int = _MIB
    """Bytes a stream may hold written but not yet handed to QUIC; ``write`` waits above it."""

    stream_receive_buffer: int = _MIB
    """The stream's receive window: data may only be held up to ``read offset +
    stream_receive_buffer``, in order or not (each byte is stored once, overlaps are trimmed).
    A frame beyond it waits, and its path stops taking records (QUIC flow control then stops
    the peer) until the application reads: back-pressure, never an error, for any writer of a
    multi-server stream too."""

    session_receive_buffer: int = 32 * _MIB
    """Bytes all the streams of a session may hold received and not read. Beyond it, frames
    wait (their path stops) except bytes a stream's waiting reader can take at once, so a
    peer cannot multiply ``stream_receive_buffer`` by opening streams."""

    max_stream_fragments: int = 1024
    """Separate out-of-order pieces one stream holds. A frame that would need another one waits
    until the gaps fill (the bytes that fill the first gap are always taken)."""

    max_streams: int = 256
    """Streams the peer may have open at once in a session (accepted or waiting to be). An
    OpenStream beyond it is refused (OpenStreamResp failure, the opener gets
    :class:`~kwik.StreamClosedError`); an implicit open beyond it is a protocol violation."""

    path_send_window: int = 2 * _MIB
    """Bytes one path may have handed to QUIC and not yet seen acknowledged; kwik waits above
    it (aioquic's own send buffer is unbounded)."""

    path_receive_window: int = 2 * _MIB
    """QUIC flow-control credit of a path's transport stream beyond what kwik has processed:
    the most a peer can have in flight towards a path kwik is not reading. It must hold a whole
    record (at least ``max_record_size + 8``); frames that wait on a KWIK v2 path (for a slow
    reader or a slow relay) are held up to this much too, while the path still answers Pings."""

    udp_receive_buffer: int = 4 * _MIB
    """SO_RCVBUF asked for every UDP socket kwik opens (the kernel caps it at
    ``net.core.rmem_max``). The default 208 KiB drops datagrams as soon as the event loop
    falls behind, e.g. with dozens of sessions on one listener."""

    max_paths: int = 8
    """Most paths a client session keeps open at once (the primary included)."""

    path_policy: PathPolicy | None = None
    """Called with each address a server asks the client to dial (AddPath); returning False
    refuses it. None allows every address."""

    add_path_timeout: float = 10.0
    """Seconds ``add_relay`` waits for the client's AddPathResp."""

    open_stream_timeout: float = 10.0
    """Seconds ``open_stream_sync`` waits for the peer's OpenStreamResp."""

    accept_backlog: int = 128
    """Sessions a listener keeps waiting for ``accept()``; more are refused (closed)."""

    stream_backlog: int = 256
    """Streams a session keeps waiting for ``accept_stream()``; an OpenStream beyond it waits
    (its path stops taking records) until the application accepts."""

    control_buffer: int = 256 * 1024
    """Bytes of answers (OpenStreamResp, ...) a path may have waiting to be sent. A peer that
    does not read what we send stops getting answers: beyond it, its requests wait (its path
    stops taking records) instead of growing our buffers."""

    relay_buffer: int = _MIB
    """Client: bytes a primary asked us to forward to a relay (RelayData) that wait for the
    relay path. Beyond it the primary path stops taking records, which slows the primary's
    ``Relay.send_raw_data`` down."""

    listener_close_timeout: float = 2.0
    """Seconds ``Listener.close()`` waits for its sessions to close gracefully before forcing."""

    qlog_dir: str | os.PathLike[str] | None = None
    """Directory where aioquic writes one qlog file per QUIC connection; None disables qlog."""

    worker_pool: bool = True
    """True: records go through the process-wide worker pool. False: each path processes its
    records inline, in the QUIC event callback."""

    # --- hostile peers: acknowledgement state and AddPath dialling ---------------------------

    max_ack_ranges: int = 1024
    """Packet-number ranges a path remembers, for duplicate detection and for the next Ack
    (default 1,024: a 16 KiB Ack). An honest peer needs one; a peer leaving more gaps makes the
    path forget its oldest ranges, and a packet numbered below the oldest range kept is then
    discarded as a duplicate. An Ack lists at most this many ranges (fewer if
    ``max_record_size`` is smaller), the newest ones."""

    path_scope_check: bool = True
    """True (default): an address a server names in AddPath is resolved and every address it
    resolves to must be in the scope of the primary's address (loopback may name loopback; a
    private address private or global ones; a global address global ones only; link-local,
    multicast, unspecified and reserved addresses never), otherwise the client refuses it
    (AddPathResp 0). ``path_policy`` is consulted in addition. False skips the scope check
    (addresses are still resolved once and the resolved address is what is dialled)."""

    path_resolve_timeout: float = 5.0
    """Seconds a client may spend resolving an AddPath address; past it the address is
    refused."""

    relay_insecure_skip_verify: bool = False
    """Whether relay paths (dialled on a server's AddPath) skip certificate verification.
    False (default): relays are verified like the primary, even when the primary's
    ``TLSConfig.insecure_skip_verify`` is True; set it only for test setups."""

    def _check_liveness(self) -> None:
        """The liveness fields (see :mod:`kwik.protocol.liveness` for the model)."""
        interval = self.heartbeat_interval
        if not (isinstance(interval, int | float) and interval > 0 and math.isfinite(interval)):
            raise ValueError(
                f"Config.heartbeat_interval must be a positive number of seconds, not {interval!r}"
            )
        if interval >= self.idle_timeout:
            raise ValueError(
                f"Config.heartbeat_interval ({interval!r} s) must be shorter than "
                f"Config.idle_timeout ({self.idle_timeout!r} s): QUIC would close an idle path "
                "before its first heartbeat"
            )
        threshold = self.heartbeat_miss_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
            raise ValueError(
                f"Config.heartbeat_miss_threshold must be an integer of at least 2, not "
                f"{threshold!r} (with 1, the answer to each heartbeat would be due at the "
                "very deadline it must beat)"
            )
        stall = self.stall_timeout
        if stall is None:
            return
        if not (isinstance(stall, int | float) and stall > 0 and math.isfinite(stall)):
            raise ValueError(
                f"Config.stall_timeout must be None or a positive number of seconds, not {stall!r}"
            )
        idle_bound = interval * threshold
        if stall >= idle_bound:
            raise ValueError(
                f"Config.stall_timeout ({stall!r} s) must be shorter than heartbeat_interval * "
                f"heartbeat_miss_threshold ({idle_bound!r} s), the bound it shortens (or None)"
            )

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if not isinstance(self.engine, str):
            raise TypeError("Config.engine must be a string: 'aioquic' or 'qh3'")
        _engines.load(self.engine)  # EngineError now, never at the first packet
        for name in (
            "handshake_timeout",
            "idle_timeout",
            "ack_interval",
            "add_path_timeout",
            "open_stream_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config.{name} must be positive")
        self._check_liveness()
        if self.close_timeout < 0 or self.listener_close_timeout < 0:
            raise ValueError("close timeouts must not be negative")
        if self.max_datagram_size < 1200:
            raise ValueError("Config.max_datagram_size must be at least 1200")
        if self.congestion_control not in ("reno", "cubic"):
            raise ValueError("Config.congestion_control must be 'reno' or 'cubic'")
        for name in (
            "ack_threshold",
            "max_record_size",
            "max_stream_frame_data",
            "stream_send_buffer",
            "stream_receive_buffer",
            "path_send_window",
            "path_receive_window",
            "max_paths",
            "udp_receive_buffer",
            "accept_backlog",
            "stream_backlog",
            "session_receive_buffer",
            "max_stream_fragments",
            "max_streams",
            "control_buffer",
            "relay_buffer",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Config.{name} must be at least 1")
        if self.max_stream_frame_data + 64 > self.max_record_size:
            raise ValueError("Config.max_stream_frame_data must fit in max_record_size")
        if self.path_receive_window < self.max_record_size + 8:
            # credit is what the record reader consumed plus the window: a record larger than
            # the window could never complete, and the path would wait for ever (r3-17)
            raise ValueError(
                f"Config.path_receive_window ({self.path_receive_window}) must hold a whole "
                f"record: at least max_record_size + 8 ({self.max_record_size + 8})"
            )
        # --- hostile peers
        if self.max_ack_ranges < 1:
            raise ValueError("Config.max_ack_ranges must be at least 1")
        if self.path_resolve_timeout <= 0:
            raise ValueError("Config.path_resolve_timeout must be positive")


@dataclass
class TLSConfig:
    """TLS settings of one side.

    A server needs an identity: ``certfile``/``keyfile`` (PEM paths) or ``certificate``/
    ``private_key`` (PEM bytes). A client verifies the server's certificate against
    ``cafile``/``cadata``, or against the system trust store when neither is given, for the
    name ``server_name`` (default: the host of the dialed address). Verification is skipped
    only with ``insecure_skip_verify=True``.
    """

    certfile: str | os.PathLike[str] | None = None
    """Path of this side's certificate chain (PEM), leaf first. A server's identity."""

    keyfile: str | os.PathLike[str] | None = None
    """Path of the private key (PEM) of ``certfile``; None when the key is in ``certfile``."""

    certificate: bytes | None = None
    """This side's certificate chain as PEM bytes, leaf first (instead of ``certfile``)."""

    private_key: bytes | None = None
    """The unencrypted PEM private key of ``certificate``; required with it."""

    cafile: str | os.PathLike[str] | None = None
    """Path of the CA certificate(s) (PEM) a client verifies the server against, instead of
    the system trust store."""

    cadata: bytes | str | None = None
    """CA certificate(s) as PEM text or bytes, like ``cafile`` (both may be given)."""

    server_name: str | None = None
    """Name the server's certificate must match (and the SNI sent); None: the host of the
    dialed address. Relay paths always verify the relay's own host."""

    alpn_protocols: Sequence[str] = field(default=(EXTENSION_ALPN, "kwik"))
    """ALPN protocols offered (client) or accepted (server), in order of preference; both sides
    must share one. ``"kwik"`` is KWIK v2; ``"kwik-credit-1"``, offered first by default, adds
    kwik's per-stream credit (``docs/protocol.md``, "The credit extension"), which a KWIK v2
    peer never sees. ``("kwik",)`` speaks plain KWIK v2 only."""

    insecure_skip_verify: bool = False
    """True skips the verification of the server's certificate: for development only."""

    @property
    def has_identity(self) -> bool:
        """True when a certificate is configured (``certfile`` or ``certificate``)."""
        return self.certfile is not None or self.certificate is not None
