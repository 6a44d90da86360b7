"""RecordReader: cutting records out of a transport stream fed in arbitrary chunks."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwik.exceptions import ProtocolViolationError
from kwik.protocol.frames import (
    MAX_RECORD_SIZE,
    OpenStreamFrame,
    PingFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
    encode_record,
)
from kwik.protocol.reader import RecordReader

GOLDEN_PATH = Path(__file__).resolve().parent.parent / "data" / "golden-v2.json"
EMPTY_RECORD = b"\x00\x00\x00\x00"

# --- helpers ------------------------------------------------------------------------------------


def load_golden_records() -> list[tuple[str, bytes]]:
    """(name, record bytes) of every golden vector, in file order."""
    with GOLDEN_PATH.open(encoding="utf-8") as fh:
        vectors: list[dict[str, Any]] = json.load(fh)["vectors"]
    return [(v["name"], bytes.fromhex(v["record_hex"])) for v in vectors]


GOLDEN_RECORDS = load_golden_records()


def packet_of(record: bytes) -> bytes:
    """The packet of a record written with both prefixes."""
    return record[8:]


def bare_record(payload: bytes) -> bytes:
    """A record with only the outer u32 prefix (the inner one omitted, as a Go peer may)."""
    return struct.pack(">I", len(payload)) + payload


def drain(reader: RecordReader) -> list[bytes]:
    """Every record the reader can cut now, copied to bytes."""
    out: list[bytes] = []
    while (view := reader.next_record()) is not None:
        out.append(bytes(view))
    return out


def drain_until_error(reader: RecordReader) -> list[bytes]:
    """Records cut before the reader raises; asserts that it does raise."""
    out: list[bytes] = []
    with pytest.raises(ProtocolViolationError):
        while (view := reader.next_record()) is not None:
            out.append(bytes(view))
    return out


def feed_chunks(reader: RecordReader, chunks: Iterable[bytes]) -> list[bytes]:
    """Feed each chunk, draining after every one; return all records in order."""
    out: list[bytes] = []
    for chunk in chunks:
        reader.feed(chunk)
        out.extend(drain(reader))
    return out


def drained_views(reader: RecordReader, chunks: Sequence[bytes]) -> list[memoryview]:
    """Feed the chunks and keep every view the reader returns, uncopied."""
    views: list[memoryview] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (view := reader.next_record()) is not None:
            views.append(view)
    return views


def cut(stream: bytes, points: Iterable[int]) -> list[bytes]:
    """``stream`` split at the given offsets (out-of-range and repeated points ignored)."""
    bounds = sorted({p for p in points if 0 < p < len(stream)})
    edges = [0, *bounds, len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def random_chunks(stream: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    """``stream`` split into chunks of random sizes between 1 and ``max_chunk``."""
    chunks: list[bytes] = []
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, max_chunk)
        chunks.append(stream[pos : pos + size])
        pos += size
    return chunks


def sample_stream() -> tuple[bytes, list[bytes], int]:
    """A transport stream of golden records, bare records and keep-alives.

    Returns the stream, the packets it must yield in order, and how many empty records it holds.
    """
    parts: list[bytes] = []
    packets: list[bytes] = []
    empties = 0
    for i, (_, record) in enumerate(GOLDEN_RECORDS):
        if i % 3 == 0:
            parts.append(EMPTY_RECORD)
            empties += 1
        if i % 4 == 1:
            parts.append(bare_record(packet_of(record)))
        else:
            parts.append(record)
        packets.append(packet_of(record))
    parts.append(EMPTY_RECORD * 2)
    empties += 2
    return b"".join(parts), packets, empties


# --- whole records ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "record"), GOLDEN_RECORDS, ids=[n for n, _ in GOLDEN_RECORDS])
def test_whole_record_yields_its_packet(name: str, record: bytes) -> None:
    """A record fed whole yields exactly its packet, then None."""
    reader = RecordReader()
    reader.feed(record)
    view = reader.next_record()
    assert view is not None
    assert bytes(view) == packet_of(record)
    assert reader.next_record() is None
    assert reader.records == 1
    assert reader.consumed == len(record)
    assert reader.buffered == 0


def test_records_back_to_back_in_one_feed() -> None:
    """Every golden record concatenated in one feed yields every packet, in order."""
    reader = RecordReader()
    reader.feed(b"".join(r for _, r in GOLDEN_RECORDS))
    got = drain(reader)
    assert got == [packet_of(r) for _, r in GOLDEN_RECORDS]
    assert [decode_packet(p).packet_number for p in got] == [1, 2, 3, 1, 7, 9, 4, 5, 6, 10]
    assert reader.records == len(GOLDEN_RECORDS)


def test_empty_reader_returns_none() -> None:
    """A reader with nothing fed has no record and nothing buffered."""
    reader = RecordReader()
    assert reader.next_record() is None
    assert (reader.buffered, reader.consumed, reader.records, reader.skipped) == (0, 0, 0, 0)


def test_feeding_nothing_changes_nothing() -> None:
    """feed(b"") is a no-op."""
    reader = RecordReader()
    reader.feed(b"")
    reader.feed(bytearray())
    assert reader.buffered == 0
    assert reader.next_record() is None


# --- chunkings ----------------------------------------------------------------------------------


def test_one_byte_at_a_time() -> None:
    """A record fed byte by byte appears only once its last byte arrives."""
    record = encode_record(5, [StreamFrame(1, 0, False, b"byte by byte")])
    reader = RecordReader()
    for i, byte in enumerate(record):
        assert reader.next_record() is None
        reader.feed(bytes([byte]))
        assert reader.buffered == (i + 1 if i < len(record) - 1 else len(record))
    view = reader.next_record()
    assert view is not None
    assert bytes(view) == packet_of(record)
    assert reader.buffered == 0


def test_whole_stream_one_byte_at_a_time() -> None:
    """The sample stream fed one byte per feed yields every packet and skips every keep-alive."""
    stream, packets, empties = sample_stream()
    reader = RecordReader()
    assert feed_chunks(reader, (stream[i : i + 1] for i in range(len(stream)))) == packets
    assert reader.skipped == empties
    assert reader.consumed == len(stream)
    assert reader.buffered == 0


@pytest.mark.parametrize("seed", range(8))
def test_seeded_random_chunkings(seed: int) -> None:
    """Random chunk sizes never change the records cut out of the stream."""
    rng = random.Random(seed)
    stream, packets, empties = sample_stream()
    reader = RecordReader()
    assert feed_chunks(reader, random_chunks(stream, rng, max_chunk=1 + seed * 9)) == packets
    assert reader.skipped == empties
    assert reader.records == len(packets)
    assert reader.consumed == len(stream)


@settings(max_examples=150, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=600), max_size=40))
def test_property_any_chunking_yields_the_same_records(points: list[int]) -> None:
    """However the stream is cut into chunks, the same packets come out in order."""
    stream, packets, empties = sample_stream()
    reader = RecordReader()
    assert feed_chunks(reader, cut(stream, points)) == packets
    assert reader.skipped == empties
    assert reader.consumed == len(stream)
    assert reader.buffered == 0


def test_records_are_cut_only_when_drained() -> None:
    """Several feeds before any next_record still yield every record in order."""
    records = [encode_record(n, [OpenStreamFrame(n)]) for n in range(1, 6)]
    reader = RecordReader()
    for record in records:
        reader.feed(record[:5])
        reader.feed(record[5:])
    assert drain(reader) == [packet_of(r) for r in records]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_accepts_any_bytes_like(kind: type) -> None:
    """feed takes bytes, bytearray and memoryview alike."""
    record = encode_record(1, [PingFrame()])
    reader = RecordReader()
    reader.feed(kind(record[:7]))
    reader.feed(kind(record[7:]))
    assert drain(reader) == [packet_of(record)]


def test_feed_copies_the_caller_buffer() -> None:
    """Reusing the buffer passed to feed does not change what the reader returns."""
    record = encode_record(1, [StreamFrame(1, 0, False, b"original")])
    source = bytearray(record)
    reader = RecordReader()
    reader.feed(source[:10])
    reader.feed(memoryview(source)[10:])
    source[:] = b"\xee" * len(source)
    assert drain(reader) == [packet_of(record)]


# --- empty records ------------------------------------------------------------------------------


def test_empty_records_are_skipped_and_counted() -> None:
    """L1 == 0 records are skipped, counted in .skipped and in .consumed."""
    record = encode_record(3, [PingFrame()])
    reader = RecordReader()
    reader.feed(EMPTY_RECORD * 3 + record + EMPTY_RECORD)
    assert drain(reader) == [packet_of(record)]
    assert reader.skipped == 4
    assert reader.records == 1
    assert reader.consumed == 16 + len(record)
    assert reader.buffered == 0


def test_only_empty_records_yield_nothing() -> None:
    """A stream of keep-alives yields no record but is fully consumed."""
    reader = RecordReader()
    reader.feed(EMPTY_RECORD * 2)
    assert reader.next_record() is None
    assert reader.skipped == 2
    assert reader.consumed == 8
    assert reader.buffered == 0


def test_partial_empty_record_waits() -> None:
    """Three zero bytes are not yet a keep-alive."""
    reader = RecordReader()
    reader.feed(b"\x00\x00\x00")
    assert reader.next_record() is None
    assert reader.skipped == 0
    assert reader.buffered == 3
    reader.feed(b"\x00")
    assert reader.next_record() is None
    assert reader.skipped == 1
    assert reader.buffered == 0


# --- inner prefix -------------------------------------------------------------------------------


def test_record_without_inner_prefix_yields_the_packet() -> None:
    """A Go-style record with only the outer prefix still yields the whole packet."""
    packet = encode_packet(4, [StreamFrame(2, 10, True, b"no inner prefix")])
    reader = RecordReader()
    reader.feed(bare_record(packet))
    view = reader.next_record()
    assert view is not None
    assert bytes(view) == packet
    assert decode_packet(view).packet_number == 4
    assert reader.consumed == 4 + len(packet)


@pytest.mark.parametrize("delta", [-5, -1, 1, 4, 1 << 20])
def test_inner_prefix_kept_when_not_equal_to_remaining_length(delta: int) -> None:
    """Four leading bytes that do not equal the remaining length are part of the packet."""
    rest = b"payload-bytes"
    payload = struct.pack(">I", len(rest) + delta) + rest
    reader = RecordReader()
    reader.feed(bare_record(payload))
    assert drain(reader) == [payload]


def test_inner_prefix_stripped_when_equal_to_remaining_length() -> None:
    """Four leading bytes equal to the remaining length are an inner prefix and are removed."""
    rest = b"payload-bytes"
    reader = RecordReader()
    reader.feed(bare_record(struct.pack(">I", len(rest)) + rest))
    assert drain(reader) == [rest]


@pytest.mark.parametrize("payload", [b"\x01", b"\x00\x00", b"abc"])
def test_record_shorter_than_an_inner_prefix_is_returned_whole(payload: bytes) -> None:
    """L1 of 1 to 3 cannot hold an inner prefix; the bytes are returned as they are."""
    reader = RecordReader()
    reader.feed(bare_record(payload))
    assert drain(reader) == [payload]


def test_record_of_only_an_inner_prefix_is_an_empty_packet() -> None:
    """L1 == 4 holding L2 == 0 yields an empty packet (which the codec then rejects)."""
    reader = RecordReader()
    reader.feed(b"\x00\x00\x00\x04\x00\x00\x00\x00")
    assert drain(reader) == [b""]
    with pytest.raises(ProtocolViolationError):
        decode_packet(b"")
    assert reader.skipped == 0
    assert reader.consumed == 8


# --- size limit ---------------------------------------------------------------------------------


def test_default_limit_is_one_mebibyte() -> None:
    """The default limit is 1 MiB: L1 == 1,048,576 waits for its body, one more is refused."""
    assert MAX_RECORD_SIZE == 1_048_576
    reader = RecordReader()
    assert reader.max_record_size == MAX_RECORD_SIZE
    reader.feed(struct.pack(">I", MAX_RECORD_SIZE))
    assert reader.next_record() is None
    big = RecordReader()
    big.feed(struct.pack(">I", MAX_RECORD_SIZE + 1))
    with pytest.raises(ProtocolViolationError):
        big.next_record()


def test_record_at_the_limit_is_accepted() -> None:
    """A record whose L1 equals max_record_size is returned."""
    payload = bytes(range(60))
    reader = RecordReader(max_record_size=64)
    reader.feed(bare_record(b"\x00\x00\x00\x00" + payload))
    assert drain(reader) == [b"\x00\x00\x00\x00" + payload]


def test_record_over_the_limit_is_rejected_from_its_prefix() -> None:
    """L1 > max_record_size raises as soon as the outer prefix is known, before the body."""
    reader = RecordReader(max_record_size=64)
    reader.feed(struct.pack(">I", 65))
    with pytest.raises(ProtocolViolationError, match="exceeds"):
        reader.next_record()


def test_reader_stays_failed_after_oversized_record() -> None:
    """After an oversized record every next_record raises, even once valid records arrive."""
    record = encode_record(1, [PingFrame()])
    reader = RecordReader(max_record_size=64)
    reader.feed(record + struct.pack(">I", 1000) + b"x" * 10)
    assert drain_until_error(reader) == [packet_of(record)]
    reader.feed(record)
    for _ in range(3):
        with pytest.raises(ProtocolViolationError):
            reader.next_record()
    assert reader.records == 1


def test_oversized_record_after_keep_alives() -> None:
    """The limit applies after skipped keep-alives too."""
    reader = RecordReader(max_record_size=8)
    reader.feed(EMPTY_RECORD + struct.pack(">I", 9))
    with pytest.raises(ProtocolViolationError):
        reader.next_record()
    assert reader.skipped == 1


@pytest.mark.parametrize("size", [0, -1])
def test_max_record_size_must_be_positive(size: int) -> None:
    """A non-positive max_record_size is refused."""
    with pytest.raises(ValueError):
        RecordReader(max_record_size=size)


# --- accounting ---------------------------------------------------------------------------------


def test_consumed_and_buffered_accounting() -> None:
    """consumed counts bytes cut into records; buffered counts bytes fed but not yet cut."""
    first = encode_record(1, [OpenStreamFrame(1)])
    second = encode_record(2, [StreamFrame(1, 0, False, b"abcdef")])
    reader = RecordReader()
    reader.feed(first[:6])
    assert (reader.consumed, reader.buffered) == (0, 6)
    assert reader.next_record() is None
    reader.feed(first[6:] + second[:3])
    assert (reader.consumed, reader.buffered) == (0, len(first) + 3)
    assert reader.next_record() is not None
    assert (reader.consumed, reader.buffered) == (len(first), 3)
    assert reader.next_record() is None
    reader.feed(second[3:] + EMPTY_RECORD)
    assert reader.next_record() is not None
    assert (reader.consumed, reader.buffered) == (len(first) + len(second), 4)
    assert reader.next_record() is None
    assert (reader.consumed, reader.buffered) == (len(first) + len(second) + 4, 0)
    assert (reader.records, reader.skipped) == (2, 1)


def test_consumed_plus_buffered_equals_fed() -> None:
    """At every step consumed + buffered is the number of bytes fed."""
    stream, _, _ = sample_stream()
    reader = RecordReader()
    fed = 0
    for chunk in random_chunks(stream, random.Random(99), max_chunk=13):
        reader.feed(chunk)
        fed += len(chunk)
        assert reader.consumed + reader.buffered == fed
        drain(reader)
        assert reader.consumed + reader.buffered == fed
    assert reader.consumed == len(stream)


# --- view stability -----------------------------------------------------------------------------


def test_views_survive_later_feeds() -> None:
    """A view returned earlier keeps its bytes after the reader is fed more."""
    first = encode_record(1, [StreamFrame(1, 0, False, b"first record")])
    second = encode_record(2, [StreamFrame(1, 12, False, b"second")])
    reader = RecordReader()
    reader.feed(first + second[:5])  # a partial record stays behind the returned view
    view = reader.next_record()
    assert view is not None
    reader.feed(second[5:])
    later = reader.next_record()
    assert later is not None
    reader.feed(encode_record(3, [PingFrame()]) * 50)
    drain(reader)
    assert bytes(view) == packet_of(first)
    assert bytes(later) == packet_of(second)


def test_view_survives_feed_after_buffer_fully_consumed() -> None:
    """When every buffered byte was cut, the next feed still leaves old views untouched."""
    first = encode_record(1, [StreamFrame(1, 0, False, b"exactly one record")])
    reader = RecordReader()
    reader.feed(first)
    view = reader.next_record()
    assert view is not None
    assert reader.buffered == 0
    reader.feed(b"\xff" * len(first))
    assert bytes(view) == packet_of(first)


@pytest.mark.parametrize("seed", range(4))
def test_all_views_stay_valid_over_a_long_stream(seed: int) -> None:
    """Every view handed out in a long randomly chunked run still holds its packet at the end."""
    rng = random.Random(seed)
    packets = [
        encode_packet(n, [StreamFrame(n, n * 7, False, rng.randbytes(rng.randint(0, 40)))])
        for n in range(1, 120)
    ]
    stream = b"".join(struct.pack(">II", len(p) + 4, len(p)) + p for p in packets)
    reader = RecordReader()
    views = drained_views(reader, random_chunks(stream, rng, max_chunk=64))
    assert [bytes(v) for v in views] == packets


def test_views_of_bare_and_prefixed_records_survive() -> None:
    """Views of records with and without inner prefix survive feeds of partial records."""
    a = encode_record(1, [OpenStreamFrame(1)])
    b = bare_record(encode_packet(2, [OpenStreamFrame(2)]))
    c = encode_record(3, [OpenStreamFrame(3)])
    views = drained_views(RecordReader(), [a + b[:2], b[2:] + c[:9], c[9:], EMPTY_RECORD])
    assert [decode_packet(v).frames for v in views] == [
        (OpenStreamFrame(1),),
        (OpenStreamFrame(2),),
        (OpenStreamFrame(3),),
    ]


def test_peek_records_looks_ahead_without_consuming() -> None:
    """peek_records() returns complete records beyond the read position once each, and
    next_record() still returns them, in order."""
    from kwik.protocol import encode_record

    reader = RecordReader()
    records = [encode_record(n, []) for n in range(1, 4)]
    reader.feed(records[0] + records[1] + records[2][:5])
    assert [bytes(r) for r in reader.peek_records()] == [records[0][8:], records[1][8:]]
    assert reader.peek_records() == []  # looked at already
    first = reader.next_record()
    assert first is not None and bytes(first) == records[0][8:]
    reader.feed(records[2][5:])
    assert [bytes(r) for r in reader.peek_records()] == [records[2][8:]]
    second = reader.next_record()
    assert second is not None and bytes(second) == records[1][8:]
    assert reader.consumed == len(records[0]) + len(records[1])
