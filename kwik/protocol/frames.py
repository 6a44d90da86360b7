"""KWIK v2 packets and frames: encoding and decoding (sans-IO).

Wire format (``docs/protocol.md``, "Records" to "Frames"), all integers big-endian, every "u64"
a fixed 8 bytes::

    record  = [u32 L1][u32 L2][packet]          L1 = L2 + 4 (the inner prefix may be missing)
    packet  = [u8 header type][u64 packet number][u64 frame count][frames...]
    frame   = [u8 type][fields...]              no per-frame length

Decoding is strict: an unknown frame type, a length running past the end of the packet, a frame
count over :data:`MAX_FRAMES_PER_PACKET` or bytes left over after the declared frames raise
:class:`~kwik.exceptions.ProtocolViolationError`, and nothing else escapes.

**The credit extension.** Two frames exist only on a path whose peers negotiated kwik's
per-stream credit extension (ALPN :data:`EXTENSION_ALPN`, see ``docs/protocol.md``, "The credit
extension"): StreamCredit (0x40) and RelayCredit (0x41). A KWIK v2 peer never sees them, and on a
v2 path they are unknown types like any other (``decode_packet(..., extended=False)``).

Zero-copy contract: :func:`decode_packet` returns frames whose ``data`` fields are
:class:`memoryview` slices of the buffer it was given. They are valid only while that buffer is
not reused; whoever keeps the bytes must copy them (the reassembly buffer does).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from ..config import EXTENSION_ALPN
from ..exceptions import ProtocolViolationError

__all__ = [
    "EXTENSION_ALPN",
    "MAX_FRAMES_PER_PACKET",
    "MAX_RECORD_SIZE",
    "AckFrame",
    "AddPathFrame",
    "AddPathRespFrame",
    "Frame",
    "FrameType",
    "OpenStreamFrame",
    "OpenStreamRespFrame",
    "Packet",
    "PingFrame",
    "RelayCreditFrame",
    "RelayDataFrame",
    "StreamCreditFrame",
    "StreamFrame",
    "decode_packet",
    "encode_packet",
    "encode_record",
    "is_ack_eliciting",
]

#: Largest record (outer length L1) a reader accepts by default (``docs/protocol.md``, "Records").
MAX_RECORD_SIZE = 1_048_576
#: Largest frame count a packet may declare (``docs/protocol.md``, "Packets").
MAX_FRAMES_PER_PACKET = 10_000
#: Header types a reader accepts; 0 is the one kwik sends.
ACCEPTED_HEADER_TYPES = (0, 1)

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEADER = struct.Struct(">BQQ")  # header type, packet number, frame count
_STREAM = struct.Struct(">BQQBQ")  # type, stream id, offset, fin, data length
_STREAM_FIELDS = struct.Struct(">QQBQ")
_ACK_HEAD = struct.Struct(">BQQQ")  # type, largest acked, ack delay, range count
_PAIR = struct.Struct(">QQ")
_RELAY = struct.Struct(">BQQQ")  # type, relay path id, dest stream id, data length
_OPEN_RESP = struct.Struct(">BQB")
_TYPE_U64 = struct.Struct(">BQ")
_TYPE_U64_U64 = struct.Struct(">BQQ")
_U64_MAX = (1 << 64) - 1

Data = bytes | bytearray | memoryview


class FrameType(IntEnum):
    """Frame type codes (``docs/protocol.md``, "Frames"). 0x03 (Nack) and 0x04 are never sent
    and never accepted; 0x40 and 0x41 belong to the credit extension."""

    STREAM = 0x01
    ACK = 0x02
    PING = 0x05
    ADD_PATH = 0x06
    ADD_PATH_RESP = 0x07
    RELAY_DATA = 0x08
    OPEN_STREAM = 0x09
    OPEN_STREAM_RESP = 0x0A
    STREAM_CREDIT = 0x40
    RELAY_CREDIT = 0x41


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """Bytes of a logical stream at an absolute offset; ``fin`` marks the final offset."""

    stream_id: int
    offset: int
    fin: bool
    data: Data = b""


@dataclass(frozen=True, slots=True)
class AckFrame:
    """Acknowledges packet numbers of one path: inclusive ``(smallest, largest)`` ranges."""

    largest_acked: int
    ranges: tuple[tuple[int, int], ...]
    ack_delay: int = 0


@dataclass(frozen=True, slots=True)
class PingFrame:
    """Liveness probe; a Ping that answers a Ping is the pong."""


@dataclass(frozen=True, slots=True)
class AddPathFrame:
    """Primary server asks the client to dial ``address`` ("host:port") as a new path."""

    address: str


@dataclass(frozen=True, slots=True)
class AddPathRespFrame:
    """Client's answer to AddPath: its id for the new path, 0 when refused or unreachable."""

    path_id: int
    address: str


@dataclass(frozen=True, slots=True)
class RelayDataFrame:
    """Primary asks the client to forward ``data`` to path ``relay_path_id``'s stream."""

    relay_path_id: int
    dest_stream_id: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class OpenStreamFrame:
    """Opens logical stream ``stream_id``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class OpenStreamRespFrame:
    """Answer to OpenStream: ``success`` False means the id is taken (collision)."""

    stream_id: int
    success: bool


@dataclass(frozen=True, slots=True)
class StreamCreditFrame:
    """Credit extension: the sender of this frame will take data of ``stream_id`` on this path
    up to (not including) offset ``max_offset``. Credit only grows."""

    stream_id: int
    max_offset: int


@dataclass(frozen=True, slots=True)
class RelayCreditFrame:
    """Credit extension, client to primary: the primary may relay, for relay path
    ``relay_path_id``, RelayData payload up to ``max_bytes`` bytes in all (counted from the first
    RelayData for that path). Credit only grows."""

    relay_path_id: int
    max_bytes: int


Frame = (
    StreamFrame
    | AckFrame
    | PingFrame
    | AddPathFrame
    | AddPathRespFrame
    | RelayDataFrame
    | OpenStreamFrame
    | OpenStreamRespFrame
    | StreamCreditFrame
    | RelayCreditFrame
)


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded packet: its number on the path and its frames, in wire order."""

    packet_number: int
    frames: tuple[Frame, ...]
    header_type: int = 0

    @property
    def ack_eliciting(self) -> bool:
        """False for a packet carrying only Ack frames: it calls for no Ack
        (``docs/protocol.md``, "Acknowledgements")."""
        return is_ack_eliciting(self.frames)


def is_ack_eliciting(frames: Iterable[Frame]) -> bool:
    """Whether a packet made of ``frames`` calls for an acknowledgement."""
    return any(not isinstance(f, AckFrame) for f in frames)


# --- encoding -----------------------------------------------------------------------------------


def _check_u64(value: int, name: str) -> None:
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"{name} must fit in an unsigned 64-bit integer, got {value}")


def _encode_frame(frame: Frame, out: bytearray) -> None:
    if isinstance(frame, StreamFrame):
        out += _STREAM.pack(
            FrameType.STREAM, frame.stream_id, frame.offset, 1 if frame.fin else 0, len(frame.data)
        )
        out += frame.data
    elif isinstance(frame, AckFrame):
        out += _ACK_HEAD.pack(
            FrameType.ACK, frame.largest_acked, frame.ack_delay, len(frame.ranges)
        )
        for smallest, largest in frame.ranges:
            out += _PAIR.pack(smallest, largest)
    elif isinstance(frame, PingFrame):
        out.append(FrameType.PING)
    elif isinstance(frame, AddPathFrame):
        address = frame.address.encode()
        out += _TYPE_U64.pack(FrameType.ADD_PATH, len(address))
        out += address
    elif isinstance(frame, AddPathRespFrame):
        address = frame.address.encode()
        out += _TYPE_U64_U64.pack(FrameType.ADD_PATH_RESP, frame.path_id, len(address))
        out += address
    elif isinstance(frame, RelayDataFrame):
        out += _RELAY.pack(
            FrameType.RELAY_DATA, frame.relay_path_id, frame.dest_stream_id, len(frame.data)
        )
        out += frame.data
    elif isinstance(frame, OpenStreamFrame):
        out += _TYPE_U64.pack(FrameType.OPEN_STREAM, frame.stream_id)
    elif isinstance(frame, OpenStreamRespFrame):
        out += _OPEN_RESP.pack(FrameType.OPEN_STREAM_RESP, frame.stream_id, int(frame.success))
    elif isinstance(frame, StreamCreditFrame):
        out += _TYPE_U64_U64.pack(FrameType.STREAM_CREDIT, frame.stream_id, frame.max_offset)
    elif isinstance(frame, RelayCreditFrame):
        out += _TYPE_U64_U64.pack(FrameType.RELAY_CREDIT, frame.relay_path_id, frame.max_bytes)
    else:  # pragma: no cover - the union above is exhaustive
        raise TypeError(f"not a KWIK frame: {frame!r}")


def encode_packet(packet_number: int, frames: Sequence[Frame], header_type: int = 0) -> bytes:
    """Encode a packet (header and frames, without record prefixes).

    Raises:
        ValueError: a field does not fit its wire type, or too many frames.
        struct.error: same, for fields checked by the packer.
    """
    _check_u64(packet_number, "packet_number")
    if len(frames) > MAX_FRAMES_PER_PACKET:
        raise ValueError(f"at most {MAX_FRAMES_PER_PACKET} frames per packet")
    out = bytearray(_HEADER.pack(header_type, packet_number, len(frames)))
    for frame in frames:
        _encode_frame(frame, out)
    return bytes(out)


def encode_record(packet_number: int, frames: Sequence[Frame], header_type: int = 0) -> bytes:
    """Encode a whole record: ``[u32 L1][u32 L2][packet]`` ready for the transport stream."""
    _check_u64(packet_number, "packet_number")
    if len(frames) > MAX_FRAMES_PER_PACKET:
        raise ValueError(f"at most {MAX_FRAMES_PER_PACKET} frames per packet")
    # reserve both prefixes and fill them in once the size is known: one buffer, one copy
    out = bytearray(8)
    out += _HEADER.pack(header_type, packet_number, len(frames))
    for frame in frames:
        _encode_frame(frame, out)
    inner = len(out) - 8
    if inner + 4 > 0xFFFFFFFF:
        raise ValueError("record too large")
    _U32.pack_into(out, 0, inner + 4)
    _U32.pack_into(out, 4, inner)
    return bytes(out)


# --- decoding -----------------------------------------------------------------------------------


def _need(view: memoryview, pos: int, size: int, what: str) -> None:
    if pos + size > len(view):
        raise ProtocolViolationError(
            f"truncated {what}: needs {size} bytes at offset {pos}, packet has {len(view)}"
        )


def _decode_frame(view: memoryview, pos: int, extended: bool) -> tuple[Frame, int]:
    ftype = view[pos]
    if ftype == FrameType.STREAM:
        _need(view, pos + 1, 25, "Stream frame")
        stream_id, offset, fin, length = _STREAM_FIELDS.unpack_from(view, pos + 1)
        start = pos + 26
        _need(view, start, length, "Stream frame data")
        if fin > 1:
            raise ProtocolViolationError(f"Stream frame fin flag must be 0 or 1, got {fin}")
        return StreamFrame(
            stream_id, offset, fin == 1, view[start : start + length]
        ), start + length
    if ftype == FrameType.ACK:
        _need(view, pos, _ACK_HEAD.size, "Ack frame")
        _, largest, delay, count = _ACK_HEAD.unpack_from(view, pos)
        pos += _ACK_HEAD.size
        # check the whole range list fits before looping: a huge count costs nothing
        _need(view, pos, count * 16, "Ack ranges")
        ranges = tuple(_PAIR.unpack_from(view, pos + 16 * i) for i in range(count))
        for smallest, largest_in_range in ranges:
            if smallest > largest_in_range:
                raise ProtocolViolationError(
                    f"Ack range ({smallest}, {largest_in_range}) is inverted"
                )
        return AckFrame(largest, ranges, delay), pos + count * 16
    if ftype == FrameType.PING:
        return PingFrame(), pos + 1
    if ftype == FrameType.ADD_PATH:
        _need(view, pos + 1, 8, "AddPath frame")
        (length,) = _U64.unpack_from(view, pos + 1)
        start = pos + 9
        _need(view, start, length, "AddPath address")
        return AddPathFrame(_decode_text(view[start : start + length])), start + length
    if ftype == FrameType.ADD_PATH_RESP:
        _need(view, pos + 1, 16, "AddPathResp frame")
        path_id, length = _PAIR.unpack_from(view, pos + 1)
        start = pos + 17
        _need(view, start, length, "AddPathResp address")
        address = _decode_text(view[start : start + length])
        return AddPathRespFrame(path_id, address), start + length
    if ftype == FrameType.RELAY_DATA:
        _need(view, pos + 1, 24, "RelayData frame")
        _, relay_path_id, stream_id, length = _RELAY.unpack_from(view, pos)
        start = pos + 25
        _need(view, start, length, "RelayData data")
        return RelayDataFrame(
            relay_path_id, stream_id, view[start : start + length]
        ), start + length
    if ftype == FrameType.OPEN_STREAM:
        _need(view, pos + 1, 8, "OpenStream frame")
        (stream_id,) = _U64.unpack_from(view, pos + 1)
        return OpenStreamFrame(stream_id), pos + 9
    if ftype == FrameType.OPEN_STREAM_RESP:
        _need(view, pos, _OPEN_RESP.size, "OpenStreamResp frame")
        _, stream_id, success = _OPEN_RESP.unpack_from(view, pos)
        if success > 1:
            raise ProtocolViolationError(f"OpenStreamResp success must be 0 or 1, got {success}")
        return OpenStreamRespFrame(stream_id, success == 1), pos + _OPEN_RESP.size
    if extended and ftype == FrameType.STREAM_CREDIT:
        _need(view, pos + 1, 16, "StreamCredit frame")
        stream_id, max_offset = _PAIR.unpack_from(view, pos + 1)
        return StreamCreditFrame(stream_id, max_offset), pos + 17
    if extended and ftype == FrameType.RELAY_CREDIT:
        _need(view, pos + 1, 16, "RelayCredit frame")
        relay_path_id, max_bytes = _PAIR.unpack_from(view, pos + 1)
        return RelayCreditFrame(relay_path_id, max_bytes), pos + 17
    raise ProtocolViolationError(f"unknown frame type 0x{ftype:02x} at offset {pos}")


def _decode_text(raw: memoryview) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolViolationError("address is not valid UTF-8") from exc


def decode_packet(data: Data, *, extended: bool = False) -> Packet:
    """Decode one packet (the record body, both length prefixes already removed).

    Every frame is decoded, in order. ``data`` fields of the frames are views of ``data``
    (see the module docstring). ``extended``: the path negotiated the credit extension, whose
    frames are then known; otherwise they are unknown types.

    Raises:
        ProtocolViolationError: the packet is malformed; nothing else is raised for any input.
    """
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    _need(view, 0, _HEADER.size, "packet header")
    header_type, packet_number, count = _HEADER.unpack_from(view, 0)
    if header_type not in ACCEPTED_HEADER_TYPES:
        raise ProtocolViolationError(f"unknown packet header type {header_type}")
    if count > MAX_FRAMES_PER_PACKET:
        raise ProtocolViolationError(
            f"packet declares {count} frames, more than {MAX_FRAMES_PER_PACKET}"
        )
    pos = _HEADER.size
    frames: list[Frame] = []
    for _ in range(count):
        _need(view, pos, 1, "frame type")
        frame, pos = _decode_frame(view, pos, extended)
        frames.append(frame)
    if pos != len(view):
        raise ProtocolViolationError(
            f"{len(view) - pos} bytes left over after the {count} declared frames"
        )
    return Packet(packet_number, tuple(frames), header_type)
