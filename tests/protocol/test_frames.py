"""Packet and frame codec: golden vectors, round trips and strict rejection of malformed input."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwik.exceptions import ProtocolViolationError
from kwik.protocol.frames import (
    MAX_FRAMES_PER_PACKET,
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    FrameType,
    OpenStreamFrame,
    OpenStreamRespFrame,
    Packet,
    PingFrame,
    RelayCreditFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
    encode_record,
    is_ack_eliciting,
)

GOLDEN_PATH = Path(__file__).resolve().parent.parent / "data" / "golden-v2.json"
U64_MAX = (1 << 64) - 1
HEADER_SIZE = 17  # u8 header type, u64 packet number, u64 frame count

# --- helpers ------------------------------------------------------------------------------------


def load_vectors() -> list[dict[str, Any]]:
    """The golden vectors of tests/data/golden-v2.json."""
    with GOLDEN_PATH.open(encoding="utf-8") as fh:
        vectors: list[dict[str, Any]] = json.load(fh)["vectors"]
    return vectors


VECTORS = load_vectors()
VECTORS_BY_NAME = {v["name"]: v for v in VECTORS}


def frame_from_json(obj: dict[str, Any]) -> Frame:
    """Build the frame a golden vector describes."""
    kind = obj["type"]
    if kind == "Stream":
        return StreamFrame(
            obj["stream_id"], obj["offset"], obj["fin"], bytes.fromhex(obj["data_hex"])
        )
    if kind == "Ack":
        ranges = tuple((int(lo), int(hi)) for lo, hi in obj["ranges"])
        return AckFrame(obj["largest_acked"], ranges, obj["ack_delay"])
    if kind == "Ping":
        return PingFrame()
    if kind == "AddPath":
        return AddPathFrame(obj["address"])
    if kind == "AddPathResp":
        return AddPathRespFrame(obj["path_id"], obj["address"])
    if kind == "RelayData":
        return RelayDataFrame(
            obj["relay_path_id"], obj["dest_stream_id"], bytes.fromhex(obj["data_hex"])
        )
    if kind == "OpenStream":
        return OpenStreamFrame(obj["stream_id"])
    if kind == "OpenStreamResp":
        return OpenStreamRespFrame(obj["stream_id"], obj["success"])
    raise AssertionError(f"golden file names an unknown frame type {kind!r}")


def vector_frames(vector: dict[str, Any]) -> tuple[Frame, ...]:
    """The frames of a golden vector, in order."""
    return tuple(frame_from_json(f) for f in vector["frames"])


def split_record(record: bytes) -> bytes:
    """Check both length prefixes of a well-formed record and return its packet."""
    (outer,) = struct.unpack_from(">I", record, 0)
    (inner,) = struct.unpack_from(">I", record, 4)
    assert outer == len(record) - 4
    assert inner == outer - 4
    return record[8:]


def golden_packet(name: str) -> bytes:
    """The packet (both prefixes removed) of the golden vector ``name``."""
    return split_record(bytes.fromhex(VECTORS_BY_NAME[name]["record_hex"]))


def header(count: int, packet_number: int = 1, header_type: int = 0) -> bytes:
    """A raw packet header declaring ``count`` frames."""
    return struct.pack(">BQQ", header_type, packet_number, count)


def patch_u64(packet: bytes, pos: int, value: int) -> bytes:
    """``packet`` with the u64 at ``pos`` replaced by ``value``."""
    out = bytearray(packet)
    struct.pack_into(">Q", out, pos, value)
    return bytes(out)


def patch_u8(packet: bytes, pos: int, value: int) -> bytes:
    """``packet`` with the byte at ``pos`` replaced by ``value``."""
    out = bytearray(packet)
    out[pos] = value
    return bytes(out)


def assert_decodes_or_violates(data: bytes) -> None:
    """decode_packet either returns a Packet that re-encodes to ``data`` or raises a violation."""
    try:
        packet = decode_packet(data)
    except ProtocolViolationError:
        return
    assert isinstance(packet, Packet)
    # decoding is strict, so whatever is accepted has exactly one encoding
    assert encode_packet(packet.packet_number, packet.frames, packet.header_type) == data


# One frame of every type, with edge values; the name is the pytest id.
SAMPLE_FRAMES: dict[str, Frame] = {
    "stream": StreamFrame(7, 123_456, False, b"hello, kwik"),
    "stream_fin_empty": StreamFrame(3, 1000, True, b""),
    "stream_max": StreamFrame(U64_MAX, U64_MAX, True, bytes(range(256))),
    "ack_one_range": AckFrame(5, ((1, 5),)),
    "ack_many_ranges": AckFrame(U64_MAX, ((0, 0), (2, 9), (11, U64_MAX)), 0),
    "ack_no_range": AckFrame(0, ()),
    "ping": PingFrame(),
    "add_path": AddPathFrame("127.0.0.1:4434"),
    "add_path_unicode": AddPathFrame("h\u00f4te.example:443"),
    "add_path_empty": AddPathFrame(""),
    "add_path_resp": AddPathRespFrame(2, "10.0.0.2:4433"),
    "add_path_resp_refused": AddPathRespFrame(0, "[::1]:4433"),
    "relay_data": RelayDataFrame(2, 1, b'{"type":"SEND_WINDOW"}'),
    "relay_data_empty": RelayDataFrame(U64_MAX, U64_MAX, b""),
    "stream_credit": StreamCreditFrame(1, 1 << 20),
    "stream_credit_max": StreamCreditFrame(U64_MAX, U64_MAX),
    "relay_credit": RelayCreditFrame(2, 1 << 20),
    "open_stream": OpenStreamFrame(1),
    "open_stream_max": OpenStreamFrame(U64_MAX),
    "open_stream_resp_ok": OpenStreamRespFrame(1, True),
    "open_stream_resp_refused": OpenStreamRespFrame(9, False),
}

# Where the u64 length of each length-carrying frame sits in a packet holding only that frame.
LENGTH_FIELDS: dict[str, tuple[Frame, int]] = {
    "stream": (StreamFrame(1, 0, False, b"abcd"), HEADER_SIZE + 1 + 8 + 8 + 1),
    "ack": (AckFrame(8, ((1, 3), (5, 8))), HEADER_SIZE + 1 + 8 + 8),
    "add_path": (AddPathFrame("127.0.0.1:4434"), HEADER_SIZE + 1),
    "add_path_resp": (AddPathRespFrame(2, "127.0.0.1:4434"), HEADER_SIZE + 1 + 8),
    "relay_data": (RelayDataFrame(2, 1, b"payload"), HEADER_SIZE + 1 + 8 + 8),
}


# --- golden vectors -----------------------------------------------------------------------------


def test_golden_vectors_cover_every_frame_type() -> None:
    """The golden file exercises every frame type kwik sends."""
    kinds = {type(f) for v in VECTORS for f in vector_frames(v)}
    assert kinds == {
        StreamFrame,
        AckFrame,
        PingFrame,
        AddPathFrame,
        AddPathRespFrame,
        RelayDataFrame,
        OpenStreamFrame,
        OpenStreamRespFrame,
    }


@pytest.mark.parametrize("name", list(VECTORS_BY_NAME))
def test_golden_vector_encodes_to_exact_bytes(name: str) -> None:
    """encode_record produces the golden bytes exactly."""
    vector = VECTORS_BY_NAME[name]
    record = encode_record(vector["packet_number"], vector_frames(vector))
    assert record.hex() == vector["record_hex"]


@pytest.mark.parametrize("name", list(VECTORS_BY_NAME))
def test_golden_vector_packet_encodes_to_exact_bytes(name: str) -> None:
    """encode_packet produces the golden packet (the record without its prefixes)."""
    vector = VECTORS_BY_NAME[name]
    assert encode_packet(vector["packet_number"], vector_frames(vector)) == golden_packet(name)


@pytest.mark.parametrize("name", list(VECTORS_BY_NAME))
def test_golden_vector_decodes_to_exact_meaning(name: str) -> None:
    """decode_packet of the golden packet gives the golden number, frames and header type 0."""
    vector = VECTORS_BY_NAME[name]
    packet = decode_packet(golden_packet(name))
    assert packet == Packet(vector["packet_number"], vector_frames(vector), 0)
    assert [type(f) for f in packet.frames] == [type(f) for f in vector_frames(vector)]
    for got, want in zip(packet.frames, vector["frames"], strict=True):
        if "data_hex" in want:
            assert isinstance(got, StreamFrame | RelayDataFrame)
            assert bytes(got.data).hex() == want["data_hex"]


def test_golden_multi_frame_decodes_every_frame_in_order() -> None:
    """The multi-frame vector yields OpenStream, Stream, Ping (not the first frame three times)."""
    packet = decode_packet(golden_packet("multi_frame"))
    assert packet.frames == (
        OpenStreamFrame(2),
        StreamFrame(2, 0, False, b"abc"),
        PingFrame(),
    )


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLE_FRAMES))
def test_frame_round_trips_through_encode_packet(name: str) -> None:
    """decode_packet(encode_packet(frame)) gives the frame back."""
    frame = SAMPLE_FRAMES[name]
    packet = decode_packet(encode_packet(42, [frame]), extended=True)
    assert packet == Packet(42, (frame,), 0)


@pytest.mark.parametrize("name", list(SAMPLE_FRAMES))
def test_frame_round_trips_through_encode_record(name: str) -> None:
    """A record's prefixes are L1 = L2 + 4 and its packet decodes back to the frame."""
    frame = SAMPLE_FRAMES[name]
    record = encode_record(U64_MAX, [frame])
    assert record[8:] == encode_packet(U64_MAX, [frame])
    assert decode_packet(split_record(record), extended=True) == Packet(U64_MAX, (frame,), 0)


def test_every_frame_type_has_a_sample() -> None:
    """The round-trip samples cover every FrameType code."""
    codes = {encode_packet(1, [f])[HEADER_SIZE] for f in SAMPLE_FRAMES.values()}
    assert codes == {int(t) for t in FrameType}


def test_all_frame_types_in_one_packet_decode_in_order() -> None:
    """A packet carrying every sample frame decodes each one, in wire order."""
    frames = list(SAMPLE_FRAMES.values())
    packet = decode_packet(encode_packet(9, frames), extended=True)
    assert packet.frames == tuple(frames)
    assert packet.packet_number == 9


def test_repeated_frame_types_decode_distinctly() -> None:
    """Several frames of one type each keep their own fields."""
    frames = [StreamFrame(1, i * 3, i == 4, bytes([65 + i]) * 3) for i in range(5)]
    packet = decode_packet(encode_packet(2, frames))
    assert packet.frames == tuple(frames)
    assert [bytes(f.data) for f in packet.frames if isinstance(f, StreamFrame)] == [
        b"AAA",
        b"BBB",
        b"CCC",
        b"DDD",
        b"EEE",
    ]


def test_packet_without_frames_round_trips() -> None:
    """A packet declaring zero frames is just a header."""
    data = encode_packet(5, [])
    assert data == header(0, 5)
    assert decode_packet(data) == Packet(5, (), 0)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_any_bytes_like(kind: type) -> None:
    """decode_packet takes bytes, bytearray and memoryview alike."""
    data = golden_packet("stream_hi")
    packet = decode_packet(kind(data))
    assert packet == Packet(2, (StreamFrame(1, 0, False, b"hi"),), 0)


def test_decoded_data_is_a_view_of_the_input() -> None:
    """Stream data is a zero-copy memoryview slice of the decoded buffer (documented contract)."""
    buffer = bytearray(golden_packet("stream_hi"))
    frame = decode_packet(buffer).frames[0]
    assert isinstance(frame, StreamFrame)
    assert isinstance(frame.data, memoryview)
    assert bytes(frame.data) == b"hi"
    buffer[-2:] = b"yo"
    assert bytes(frame.data) == b"yo"


def test_encode_accepts_bytes_like_data() -> None:
    """Stream and RelayData data may be bytearray or memoryview when encoding."""
    frames: list[Frame] = [
        StreamFrame(1, 0, False, bytearray(b"abc")),
        RelayDataFrame(2, 1, memoryview(b"defg")[1:]),
    ]
    packet = decode_packet(encode_packet(1, frames))
    assert packet.frames == (StreamFrame(1, 0, False, b"abc"), RelayDataFrame(2, 1, b"efg"))


@pytest.mark.parametrize(
    ("frames", "eliciting"),
    [
        ([AckFrame(3, ((1, 3),))], False),
        ([AckFrame(3, ((1, 3),)), AckFrame(4, ((4, 4),))], False),
        ([AckFrame(3, ((1, 3),)), PingFrame()], True),
        ([PingFrame()], True),
        ([StreamFrame(1, 0, False, b"x")], True),
    ],
)
def test_ack_eliciting(frames: list[Frame], eliciting: bool) -> None:
    """Only packets made of Ack frames alone call for no Ack."""
    assert is_ack_eliciting(frames) is eliciting
    assert decode_packet(encode_packet(1, frames)).ack_eliciting is eliciting


def test_encode_rejects_out_of_range_fields() -> None:
    """Fields that do not fit their wire type are refused at encode time."""
    with pytest.raises(ValueError):
        encode_packet(-1, [PingFrame()])
    with pytest.raises(ValueError):
        encode_record(U64_MAX + 1, [PingFrame()])
    with pytest.raises((ValueError, struct.error)):
        encode_packet(1, [OpenStreamFrame(U64_MAX + 1)])
    with pytest.raises((ValueError, struct.error)):
        encode_packet(1, [StreamFrame(-1, 0, False, b"")])


def test_encode_rejects_too_many_frames() -> None:
    """Encoding more than MAX_FRAMES_PER_PACKET frames is refused."""
    frames = [PingFrame()] * (MAX_FRAMES_PER_PACKET + 1)
    with pytest.raises(ValueError):
        encode_packet(1, frames)
    with pytest.raises(ValueError):
        encode_record(1, frames)


# --- header -------------------------------------------------------------------------------------


def test_header_type_1_is_accepted() -> None:
    """A packet with header type 1 decodes and reports its header type."""
    data = encode_packet(3, [PingFrame()], header_type=1)
    assert data[0] == 1
    assert decode_packet(data) == Packet(3, (PingFrame(),), 1)


def test_header_type_0_is_what_is_sent() -> None:
    """encode_packet and encode_record write header type 0 by default."""
    assert encode_packet(1, [PingFrame()])[0] == 0
    assert encode_record(1, [PingFrame()])[8] == 0


@pytest.mark.parametrize("header_type", [2, 3, 0x7F, 0xFF])
def test_other_header_types_are_rejected(header_type: int) -> None:
    """Header types other than 0 and 1 are a violation."""
    data = patch_u8(encode_packet(1, [PingFrame()]), 0, header_type)
    with pytest.raises(ProtocolViolationError):
        decode_packet(data)


@pytest.mark.parametrize("size", range(HEADER_SIZE))
def test_truncated_header_is_rejected(size: int) -> None:
    """Fewer than 17 bytes cannot hold a packet header."""
    with pytest.raises(ProtocolViolationError):
        decode_packet(header(0)[:size])


# --- malformed frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("ftype", [0x00, 0x03, 0x04, 0x0B, 0x10, 0xFF])
def test_unknown_frame_type_is_rejected(ftype: int) -> None:
    """Nack (0x03), 0x04 and codes outside the table are unknown frame types."""
    with pytest.raises(ProtocolViolationError, match="unknown frame type"):
        decode_packet(header(1) + bytes([ftype]))


@pytest.mark.parametrize("ftype", [0x03, 0x04, 0xFF])
def test_unknown_frame_type_after_valid_frames_is_rejected(ftype: int) -> None:
    """An unknown type is caught wherever it sits in the packet."""
    valid = encode_packet(1, [PingFrame(), OpenStreamFrame(4)])
    data = patch_u64(valid, 9, 3) + bytes([ftype]) + b"\x00" * 16
    with pytest.raises(ProtocolViolationError, match="unknown frame type"):
        decode_packet(data)


@pytest.mark.parametrize("name", list(LENGTH_FIELDS))
def test_length_one_past_the_end_is_rejected(name: str) -> None:
    """A length (or Ack range count) one larger than what the packet holds is a violation."""
    frame, pos = LENGTH_FIELDS[name]
    valid = encode_packet(1, [frame])
    (length,) = struct.unpack_from(">Q", valid, pos)
    assert decode_packet(valid).frames == (frame,)
    with pytest.raises(ProtocolViolationError):
        decode_packet(patch_u64(valid, pos, length + 1))


@pytest.mark.parametrize("name", list(LENGTH_FIELDS))
def test_huge_length_is_rejected(name: str) -> None:
    """A length near 2**64 is rejected as a violation, not as a memory or overflow error."""
    frame, pos = LENGTH_FIELDS[name]
    valid = encode_packet(1, [frame])
    for value in (U64_MAX, U64_MAX // 16 + 1, 1 << 32):
        with pytest.raises(ProtocolViolationError):
            decode_packet(patch_u64(valid, pos, value))


@pytest.mark.parametrize("name", list(LENGTH_FIELDS))
def test_length_one_short_is_rejected(name: str) -> None:
    """A length one short leaves stray bytes after the declared frames: a violation."""
    frame, pos = LENGTH_FIELDS[name]
    valid = encode_packet(1, [frame])
    (length,) = struct.unpack_from(">Q", valid, pos)
    assert length > 0
    with pytest.raises(ProtocolViolationError):
        decode_packet(patch_u64(valid, pos, length - 1))


@pytest.mark.parametrize("name", list(VECTORS_BY_NAME))
def test_every_truncation_of_a_golden_packet_is_rejected(name: str) -> None:
    """Each strict prefix of a valid packet lacks part of a frame and is a violation."""
    data = golden_packet(name)
    for size in range(len(data)):
        with pytest.raises(ProtocolViolationError):
            decode_packet(data[:size])


@pytest.mark.parametrize("extra", [b"\x00", b"\x05", b"\xff" * 9])
def test_bytes_left_over_are_rejected(extra: bytes) -> None:
    """Bytes after the declared frames are a violation, even if they look like a frame."""
    with pytest.raises(ProtocolViolationError, match="left over"):
        decode_packet(encode_packet(1, [OpenStreamFrame(1)]) + extra)


def test_frame_count_below_frames_present_is_rejected() -> None:
    """A count smaller than the frames present leaves bytes over."""
    valid = encode_packet(1, [PingFrame(), PingFrame(), PingFrame()])
    with pytest.raises(ProtocolViolationError, match="left over"):
        decode_packet(patch_u64(valid, 9, 2))


def test_frame_count_above_frames_present_is_rejected() -> None:
    """A count larger than the frames present runs past the end."""
    valid = encode_packet(1, [PingFrame(), PingFrame()])
    with pytest.raises(ProtocolViolationError):
        decode_packet(patch_u64(valid, 9, 3))


def test_frame_count_at_limit_is_accepted() -> None:
    """Exactly MAX_FRAMES_PER_PACKET (10,000) frames decode."""
    assert MAX_FRAMES_PER_PACKET == 10_000
    data = header(MAX_FRAMES_PER_PACKET) + b"\x05" * MAX_FRAMES_PER_PACKET
    packet = decode_packet(data)
    assert len(packet.frames) == MAX_FRAMES_PER_PACKET
    assert all(isinstance(f, PingFrame) for f in packet.frames)


@pytest.mark.parametrize("count", [MAX_FRAMES_PER_PACKET + 1, 1 << 32, U64_MAX])
def test_frame_count_over_limit_is_rejected(count: int) -> None:
    """A count over 10,000 is rejected even when that many frames are present."""
    frames = b"\x05" * (MAX_FRAMES_PER_PACKET + 1)
    with pytest.raises(ProtocolViolationError, match="frames"):
        decode_packet(header(count) + frames)


@pytest.mark.parametrize("value", [0, 1])
def test_fin_byte_zero_or_one_is_accepted(value: int) -> None:
    """fin 0 decodes as False and 1 as True."""
    pos = HEADER_SIZE + 1 + 16
    data = patch_u8(encode_packet(1, [StreamFrame(1, 0, False, b"ab")]), pos, value)
    assert decode_packet(data).frames == (StreamFrame(1, 0, value == 1, b"ab"),)


@pytest.mark.parametrize("value", [2, 0x10, 0x80, 0xFF])
def test_fin_byte_other_than_zero_or_one_is_rejected(value: int) -> None:
    """A Stream fin byte other than 0 or 1 is a violation."""
    pos = HEADER_SIZE + 1 + 16
    data = patch_u8(encode_packet(1, [StreamFrame(1, 0, True, b"ab")]), pos, value)
    with pytest.raises(ProtocolViolationError, match="fin"):
        decode_packet(data)


@pytest.mark.parametrize("value", [0, 1])
def test_success_byte_zero_or_one_is_accepted(value: int) -> None:
    """success 0 decodes as False and 1 as True."""
    data = encode_packet(1, [OpenStreamRespFrame(6, True)])
    data = patch_u8(data, len(data) - 1, value)
    assert decode_packet(data).frames == (OpenStreamRespFrame(6, value == 1),)


@pytest.mark.parametrize("value", [2, 0x10, 0x80, 0xFF])
def test_success_byte_other_than_zero_or_one_is_rejected(value: int) -> None:
    """An OpenStreamResp success byte other than 0 or 1 is a violation."""
    data = encode_packet(1, [OpenStreamRespFrame(6, True)])
    with pytest.raises(ProtocolViolationError, match="success"):
        decode_packet(patch_u8(data, len(data) - 1, value))


@pytest.mark.parametrize("ranges", [((5, 3),), ((1, 2), (9, 8)), ((1, 0),)])
def test_inverted_ack_range_is_rejected(ranges: tuple[tuple[int, int], ...]) -> None:
    """An Ack range whose smallest exceeds its largest is a violation."""
    with pytest.raises(ProtocolViolationError, match="inverted"):
        decode_packet(encode_packet(1, [AckFrame(9, ranges)]))


def test_single_number_ack_range_is_accepted() -> None:
    """A range with smallest == largest is one packet number, not inverted."""
    frame = AckFrame(3, ((3, 3),))
    assert decode_packet(encode_packet(1, [frame])).frames == (frame,)


@pytest.mark.parametrize("frame_type", [FrameType.ADD_PATH, FrameType.ADD_PATH_RESP])
def test_invalid_utf8_address_is_rejected(frame_type: FrameType) -> None:
    """An address that is not UTF-8 is a violation, not a UnicodeDecodeError."""
    if frame_type == FrameType.ADD_PATH:
        data = encode_packet(1, [AddPathFrame("ab")])
    else:
        data = encode_packet(1, [AddPathRespFrame(2, "ab")])
    with pytest.raises(ProtocolViolationError, match="UTF-8"):
        decode_packet(data[:-2] + b"\xff\xfe")


# --- properties ---------------------------------------------------------------------------------

u64s = st.integers(min_value=0, max_value=U64_MAX)
small_data = st.binary(max_size=48)
addresses = st.text(max_size=24)


def ordered_pair(pair: tuple[int, int]) -> tuple[int, int]:
    """The pair with its smaller element first."""
    return (min(pair), max(pair))


ack_ranges = st.lists(st.tuples(u64s, u64s).map(ordered_pair), max_size=5).map(tuple)

frames_strategy: st.SearchStrategy[Frame] = st.one_of(
    st.builds(StreamFrame, u64s, u64s, st.booleans(), small_data),
    st.builds(AckFrame, u64s, ack_ranges, u64s),
    st.just(PingFrame()),
    st.builds(AddPathFrame, addresses),
    st.builds(AddPathRespFrame, u64s, addresses),
    st.builds(RelayDataFrame, u64s, u64s, small_data),
    st.builds(OpenStreamFrame, u64s),
    st.builds(OpenStreamRespFrame, u64s, st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(
    packet_number=u64s,
    frames=st.lists(frames_strategy, max_size=12),
    header_type=st.sampled_from([0, 1]),
)
def test_property_decode_inverts_encode(
    packet_number: int, frames: list[Frame], header_type: int
) -> None:
    """decode(encode(frames)) == frames for random frame lists."""
    data = encode_packet(packet_number, frames, header_type)
    assert decode_packet(data) == Packet(packet_number, tuple(frames), header_type)
    record = encode_record(packet_number, frames, header_type)
    assert split_record(record) == data


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=96))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes decode to a Packet or raise ProtocolViolationError, nothing else."""
    assert_decodes_or_violates(data)


@settings(max_examples=400, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=4),
    header_type=st.sampled_from([0, 1]),
    body=st.binary(max_size=96),
)
def test_fuzz_arbitrary_frames_behind_valid_header(
    count: int, header_type: int, body: bytes
) -> None:
    """Random frame bytes behind a valid header decode or raise a violation, nothing else."""
    assert_decodes_or_violates(header(count, 1, header_type) + body)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(VECTORS_BY_NAME)),
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_byte_flips_of_golden_packets(name: str, flips: list[tuple[int, int]]) -> None:
    """Golden packets with random bytes overwritten decode or raise a violation."""
    data = bytearray(golden_packet(name))
    for index, value in flips:
        data[index % len(data)] = value
    assert_decodes_or_violates(bytes(data))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(VECTORS_BY_NAME)), cut=st.integers(min_value=0))
def test_fuzz_truncated_golden_packets(name: str, cut: int) -> None:
    """Golden packets cut short always raise a violation."""
    data = golden_packet(name)
    with pytest.raises(ProtocolViolationError):
        decode_packet(data[: cut % len(data)])


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(VECTORS_BY_NAME)),
    start=st.integers(min_value=0),
    junk=st.binary(min_size=1, max_size=16),
)
def test_fuzz_spliced_golden_packets(name: str, start: int, junk: bytes) -> None:
    """Golden packets with random bytes inserted decode or raise a violation."""
    data = golden_packet(name)
    at = start % (len(data) + 1)
    assert_decodes_or_violates(data[:at] + junk + data[at:])


# --- the credit extension ---------------------------------------------------------------------

CREDIT_GOLDEN = json.loads(
    (Path(__file__).resolve().parent.parent / "data" / "golden-credit-1.json").read_text()
)["vectors"]


def _credit_frame(spec: dict[str, Any]) -> Frame:
    kind = spec["type"]
    if kind == "StreamCredit":
        return StreamCreditFrame(spec["stream_id"], spec["max_offset"])
    if kind == "RelayCredit":
        return RelayCreditFrame(spec["relay_path_id"], spec["max_bytes"])
    if kind == "OpenStream":
        return OpenStreamFrame(spec["stream_id"])
    raise AssertionError(f"unknown frame type {kind!r}")


@pytest.mark.parametrize("name", list(CREDIT_GOLDEN))
def test_credit_golden_vector_encodes_and_decodes_exactly(name: str) -> None:
    """The extension's frames match bytes written by hand from the layout in
    docs/protocol.md ("The credit extension"), both ways."""
    vector = CREDIT_GOLDEN[name]
    frames = [_credit_frame(f) for f in vector["frames"]]
    wire = bytes.fromhex(vector["hex"])
    assert encode_record(vector["packet_number"], frames) == wire
    assert decode_packet(wire[8:], extended=True) == Packet(vector["packet_number"], tuple(frames))


@pytest.mark.parametrize("name", list(CREDIT_GOLDEN))
def test_credit_frames_are_unknown_on_a_v2_path(name: str) -> None:
    """A KWIK v2 path never negotiated the extension: its frame types are unknown there."""
    wire = bytes.fromhex(CREDIT_GOLDEN[name]["hex"])
    with pytest.raises(ProtocolViolationError, match="unknown frame type 0x4"):
        decode_packet(wire[8:])


@pytest.mark.parametrize("size", [1, 8, 16])
def test_truncated_credit_frames_are_violations(size: int) -> None:
    for frame in (StreamCreditFrame(1, 2), RelayCreditFrame(1, 2)):
        data = encode_packet(1, [frame])
        with pytest.raises(ProtocolViolationError, match="truncated"):
            decode_packet(data[: HEADER_SIZE + size], extended=True)
