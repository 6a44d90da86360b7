"""ReceiveBuffer: reassembly of one logical stream by absolute offset."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwik.exceptions import ProtocolViolationError
from kwik.protocol.reassembly import ReceiveBuffer

DATA = bytes(range(256)) * 4  # 1024 distinct-enough bytes
WINDOW = 1 << 20

Chunk = tuple[int, bytes]

# --- helpers ------------------------------------------------------------------------------------


def split(data: bytes, size: int, start: int = 0) -> list[Chunk]:
    """``data`` as consecutive (offset, bytes) chunks of ``size`` bytes, from offset ``start``."""
    return [(start + i, data[i : i + size]) for i in range(0, len(data), size)]


def random_split(data: bytes, rng: random.Random, max_size: int) -> list[Chunk]:
    """``data`` as consecutive chunks of random sizes between 1 and ``max_size``."""
    chunks: list[Chunk] = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, max_size)
        chunks.append((pos, data[pos : pos + size]))
        pos += size
    return chunks


def random_overlaps(data: bytes, rng: random.Random, count: int) -> list[Chunk]:
    """``count`` random slices of ``data`` (they overlap and repeat at will)."""
    out: list[Chunk] = []
    for _ in range(count):
        start = rng.randrange(len(data))
        end = rng.randint(start + 1, len(data))
        out.append((start, data[start:end]))
    return out


def deliver(buf: ReceiveBuffer, chunks: Iterable[Chunk], read_every: int = 0) -> bytes:
    """Feed the chunks (reading after every ``read_every``-th one, if set) and read the rest."""
    out = bytearray()
    for i, (offset, data) in enumerate(chunks, start=1):
        buf.receive(offset, data)
        if read_every and i % read_every == 0:
            out += buf.read()
    out += buf.read()
    return bytes(out)


def interleave(rng: random.Random, *streams: list[Chunk]) -> list[Chunk]:
    """Merge the streams at random, each keeping its own order (several senders)."""
    queues = [list(s) for s in streams]
    out: list[Chunk] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
    return out


# --- ordering -----------------------------------------------------------------------------------


def test_in_order() -> None:
    """Chunks in order are readable as they arrive."""
    buf = ReceiveBuffer(WINDOW)
    for offset, data in split(DATA, 100):
        assert buf.receive(offset, data) == len(data)
        assert buf.readable == len(data)
        assert buf.read() == data
    assert buf.read_offset == len(DATA)
    assert buf.buffered == 0


def test_reversed() -> None:
    """Chunks in reverse order stay pending until offset 0 arrives, then all are readable."""
    buf = ReceiveBuffer(WINDOW)
    chunks = split(DATA, 64)
    for offset, data in reversed(chunks[1:]):
        assert buf.receive(offset, data) == 0
        assert buf.readable == 0
        assert buf.read() == b""
    assert buf.buffered == len(DATA) - 64
    first_offset, first = chunks[0]
    assert buf.receive(first_offset, first) == len(DATA)
    assert buf.readable == len(DATA)
    assert buf.read() == DATA


@pytest.mark.parametrize("seed", range(6))
def test_shuffled(seed: int) -> None:
    """Random chunk sizes in a random order reassemble to the original bytes."""
    rng = random.Random(seed)
    chunks = random_split(DATA, rng, max_size=90)
    rng.shuffle(chunks)
    buf = ReceiveBuffer(WINDOW)
    assert deliver(buf, chunks, read_every=rng.randint(1, 5)) == DATA
    assert buf.buffered == 0
    assert buf.contiguous_end == len(DATA)


@pytest.mark.parametrize("seed", range(4))
def test_duplicated(seed: int) -> None:
    """Every chunk delivered twice (in shuffled order) is reassembled once."""
    rng = random.Random(100 + seed)
    chunks = random_split(DATA, rng, max_size=50) * 2
    rng.shuffle(chunks)
    buf = ReceiveBuffer(WINDOW)
    assert deliver(buf, chunks) == DATA
    assert buf.buffered == 0


def test_duplicate_returns_zero_and_is_not_counted_twice() -> None:
    """A duplicate makes nothing readable and does not grow buffered."""
    buf = ReceiveBuffer(WINDOW)
    assert buf.receive(0, b"abc") == 3
    assert buf.receive(0, b"abc") == 0
    assert buf.receive(1, b"b") == 0
    assert buf.receive(10, b"klm") == 0
    assert buf.receive(10, b"klm") == 0
    assert buf.buffered == 6
    assert buf.readable == 3
    assert buf.read() == b"abc"
    assert buf.receive(0, b"abc") == 0
    assert buf.buffered == 3
    assert buf.readable == 0


def test_overlapping_in_order() -> None:
    """Overlapping chunks contribute only the bytes past what is already there."""
    buf = ReceiveBuffer(WINDOW)
    assert buf.receive(0, b"abcdef") == 6
    assert buf.receive(3, b"defghi") == 3
    assert buf.receive(2, b"cdefghijk") == 2
    assert buf.read() == b"abcdefghijk"


def test_overlapping_out_of_order() -> None:
    """Pending chunks that overlap each other drain without repeating bytes."""
    buf = ReceiveBuffer(WINDOW)
    assert buf.receive(6, b"ghij") == 0
    assert buf.receive(4, b"efgh") == 0
    assert buf.receive(4, b"ef") == 0  # shorter chunk at the same offset
    assert buf.receive(8, b"ij") == 0  # inside a pending chunk
    assert buf.receive(0, b"abcde") == 10
    assert buf.read() == b"abcdefghij"
    assert buf.buffered == 0


def test_longer_chunk_replaces_shorter_at_same_offset() -> None:
    """A longer chunk at a pending offset supersedes the shorter one, counted once."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(5, b"fg")
    buf.receive(5, b"fghij")
    assert buf.buffered == 5
    assert buf.receive(0, b"abcde") == 10
    assert buf.read() == b"abcdefghij"


@pytest.mark.parametrize("seed", range(5))
def test_overlapping_random_slices(seed: int) -> None:
    """A cover of the stream plus random overlapping slices, shuffled, gives the stream."""
    rng = random.Random(200 + seed)
    chunks = random_split(DATA, rng, max_size=120) + random_overlaps(DATA, rng, 40)
    rng.shuffle(chunks)
    buf = ReceiveBuffer(WINDOW)
    assert deliver(buf, chunks, read_every=3) == DATA
    assert buf.buffered == 0


@pytest.mark.parametrize("seed", range(5))
def test_several_senders_interleaved(seed: int) -> None:
    """Three senders with their own chunking, interleaved, merge by offset into one stream."""
    rng = random.Random(300 + seed)
    primary = split(DATA[:600], 7)  # the primary server writes the first part
    relay = split(DATA[400:], 11, start=400)  # a relay writes from 400 on, overlapping
    retransmits = random_split(DATA, rng, max_size=200)  # a third path covers it all again
    rng.shuffle(retransmits)
    chunks = interleave(rng, primary, relay, retransmits)
    buf = ReceiveBuffer(WINDOW)
    assert deliver(buf, chunks, read_every=rng.randint(1, 9)) == DATA
    assert buf.buffered == 0


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=200),
    points=st.lists(st.integers(min_value=1, max_value=199), max_size=20),
    extra=st.lists(st.tuples(st.integers(0, 199), st.integers(1, 50)), max_size=10),
    order=st.randoms(use_true_random=False),
)
def test_property_any_cover_in_any_order(
    data: bytes, points: list[int], extra: list[tuple[int, int]], order: random.Random
) -> None:
    """Any chunking plus extra overlapping slices, in any order, reassembles exactly."""
    bounds = sorted({0, len(data), *(p for p in points if p < len(data))})
    chunks: list[Chunk] = [(a, data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    chunks += [(s, data[s : s + n]) for s, n in extra if s < len(data)]
    order.shuffle(chunks)
    buf = ReceiveBuffer(len(data))
    assert deliver(buf, chunks, read_every=2) == data
    assert buf.buffered == 0


def test_receive_copies_the_data() -> None:
    """Bytes are copied on receive: reusing the source buffer changes nothing."""
    source = bytearray(b"0123456789")
    buf = ReceiveBuffer(WINDOW)
    buf.receive(5, memoryview(source)[5:])  # pending
    buf.receive(0, memoryview(source)[:5])  # contiguous
    source[:] = b"x" * 10
    assert buf.read() == b"0123456789"


def test_receive_accepts_bytes_like() -> None:
    """receive takes bytes, bytearray and memoryview alike."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(4, memoryview(b"efgh"))
    buf.receive(2, bytearray(b"cd"))
    buf.receive(0, b"ab")
    assert buf.read() == b"abcdefgh"


# --- read ---------------------------------------------------------------------------------------


def test_partial_reads() -> None:
    """read(n) takes at most n bytes and advances the read offset by what it returns."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abcdefgh")
    assert buf.read(3) == b"abc"
    assert buf.read_offset == 3
    assert buf.readable == 5
    assert buf.read(0) == b""
    assert buf.read_offset == 3
    assert buf.read(2) == b"de"
    assert buf.read(100) == b"fgh"
    assert buf.read(1) == b""
    assert buf.read() == b""
    assert buf.read_offset == 8


def test_read_all_with_negative_n() -> None:
    """read() and read(-1) take everything ready."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc")
    assert buf.read(-1) == b"abc"
    buf.receive(3, b"def")
    assert buf.read() == b"def"


def test_read_exact_length() -> None:
    """read(n) with n equal to readable empties the contiguous part."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abcd")
    assert buf.read(4) == b"abcd"
    assert buf.readable == 0
    assert buf.read_offset == 4


def test_buffered_and_readable_accounting() -> None:
    """buffered counts ready plus pending bytes; readable counts only ready bytes."""
    buf = ReceiveBuffer(WINDOW)
    assert (buf.buffered, buf.readable) == (0, 0)
    buf.receive(10, b"klmno")
    assert (buf.buffered, buf.readable) == (5, 0)
    buf.receive(20, b"uv")
    assert (buf.buffered, buf.readable) == (7, 0)
    buf.receive(0, b"abcde")
    assert (buf.buffered, buf.readable, buf.contiguous_end) == (12, 5, 5)
    buf.read(2)
    assert (buf.buffered, buf.readable) == (10, 3)
    assert buf.receive(5, b"fghij") == 10
    assert (buf.buffered, buf.readable, buf.contiguous_end) == (15, 13, 15)
    buf.read()
    assert (buf.buffered, buf.readable) == (2, 0)


# --- fin ----------------------------------------------------------------------------------------


def test_fin_in_order() -> None:
    """Data then fin: complete at once, EOF only after everything is read."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc")
    assert not buf.fin_received
    assert buf.final_offset is None
    buf.receive(3, b"de", fin=True)
    assert buf.fin_received
    assert buf.final_offset == 5
    assert buf.complete
    assert not buf.at_eof
    assert buf.read(4) == b"abcd"
    assert not buf.at_eof
    assert buf.read() == b"e"
    assert buf.at_eof
    assert buf.read() == b""


def test_fin_before_the_data() -> None:
    """A fin arriving first is not complete until every byte before it arrives."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(6, b"ghij", fin=True)
    assert buf.final_offset == 10
    assert not buf.complete
    buf.receive(0, b"abc")
    assert not buf.complete
    assert buf.read() == b"abc"
    assert not buf.at_eof
    buf.receive(3, b"def")
    assert buf.complete
    assert not buf.at_eof
    assert buf.read() == b"defghij"
    assert buf.at_eof


def test_empty_fin_only_frame() -> None:
    """An empty Stream frame with fin marks the final offset and makes nothing readable."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"hello")
    assert buf.read() == b"hello"
    assert buf.receive(5, b"", fin=True) == 0
    assert buf.final_offset == 5
    assert buf.complete
    assert buf.at_eof


def test_empty_fin_ahead_of_data() -> None:
    """An empty fin far ahead (the golden stream_fin_empty) waits for the bytes before it."""
    buf = ReceiveBuffer(4096)
    buf.receive(1000, b"", fin=True)
    assert buf.final_offset == 1000
    assert not buf.complete
    assert not buf.at_eof
    buf.receive(0, DATA[:1000])
    assert buf.complete
    assert buf.read() == DATA[:1000]
    assert buf.at_eof


def test_fin_on_empty_stream() -> None:
    """A fin at offset 0 is an empty stream: at EOF immediately."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"", fin=True)
    assert buf.complete
    assert buf.at_eof
    assert buf.read() == b""


def test_repeated_identical_fin_is_accepted() -> None:
    """A retransmitted fin at the same final offset is fine."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc", fin=True)
    assert buf.receive(0, b"abc", fin=True) == 0
    assert buf.receive(3, b"", fin=True) == 0
    assert buf.read() == b"abc"
    assert buf.receive(1, b"bc", fin=True) == 0
    assert buf.at_eof


@pytest.mark.parametrize(("offset", "data"), [(0, b"abcd"), (0, b"ab"), (6, b""), (2, b"")])
def test_conflicting_fin_is_rejected(offset: int, data: bytes) -> None:
    """A second fin at a different final offset is a violation."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc", fin=True)
    with pytest.raises(ProtocolViolationError):
        buf.receive(offset, data, fin=True)
    assert buf.final_offset == 3


def test_fin_below_contiguous_data_is_rejected() -> None:
    """A fin below bytes already received is a violation."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abcdefgh")
    with pytest.raises(ProtocolViolationError):
        buf.receive(2, b"cd", fin=True)
    assert buf.final_offset is None


def test_fin_below_pending_data_is_rejected() -> None:
    """A fin below bytes held out of order is a violation."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(20, b"uvwxyz")
    with pytest.raises(ProtocolViolationError):
        buf.receive(10, b"", fin=True)
    with pytest.raises(ProtocolViolationError):
        buf.receive(20, b"uvw", fin=True)
    assert buf.final_offset is None
    buf.receive(26, b"", fin=True)
    assert buf.final_offset == 26


@pytest.mark.parametrize(("offset", "data"), [(5, b"f"), (3, b"def"), (100, b"x"), (4, b"ef")])
def test_data_past_final_offset_is_rejected(offset: int, data: bytes) -> None:
    """Data ending past the final offset is a violation and is not stored."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"ab")
    buf.receive(5, b"", fin=True)
    with pytest.raises(ProtocolViolationError):
        buf.receive(offset, data)
    assert buf.buffered == 2
    buf.receive(2, b"cde")
    assert buf.read() == b"abcde"
    assert buf.at_eof


def test_data_up_to_final_offset_is_accepted() -> None:
    """Data ending exactly at the final offset is fine, in any order."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"", fin=False)
    buf.receive(8, b"", fin=True)
    buf.receive(4, b"efgh")
    buf.receive(0, b"abcd")
    assert buf.complete
    assert buf.read() == b"abcdefgh"


# --- window -------------------------------------------------------------------------------------


def test_data_up_to_the_window_is_accepted() -> None:
    """Data ending exactly window bytes past the read offset is accepted."""
    buf = ReceiveBuffer(10)
    buf.receive(5, b"fghij")
    buf.receive(0, b"abcde")
    assert buf.read() == b"abcdefghij"


@pytest.mark.parametrize(
    ("offset", "data"), [(0, b"x" * 11), (10, b"k"), (5, b"fghijk"), (50, b"z")]
)
def test_data_beyond_the_window_is_rejected(offset: int, data: bytes) -> None:
    """Data ending past read offset + window is a violation and is not stored."""
    buf = ReceiveBuffer(10)
    buf.receive(0, b"ab")
    with pytest.raises(ProtocolViolationError, match="window"):
        buf.receive(offset, data)
    assert buf.buffered == 2
    assert buf.contiguous_end == 2


def test_window_moves_with_the_read_offset() -> None:
    """Reading frees window: what was beyond becomes acceptable."""
    buf = ReceiveBuffer(10)
    buf.receive(0, b"abcd")
    with pytest.raises(ProtocolViolationError):
        buf.receive(10, b"klmn")
    assert buf.read(4) == b"abcd"
    buf.receive(10, b"klmn")
    buf.receive(4, b"efghij")
    assert buf.read() == b"efghijklmn"


def test_unread_data_holds_the_window() -> None:
    """Data received but not read does not free window."""
    buf = ReceiveBuffer(8)
    buf.receive(0, b"abcdefgh")
    with pytest.raises(ProtocolViolationError):
        buf.receive(8, b"i")


def test_rejected_fin_beyond_window_changes_nothing() -> None:
    """A fin frame rejected for the window leaves no final offset behind."""
    buf = ReceiveBuffer(10)
    with pytest.raises(ProtocolViolationError, match="window"):
        buf.receive(0, b"x" * 20, fin=True)
    assert buf.final_offset is None
    assert not buf.fin_received
    assert buf.buffered == 0
    buf.receive(0, b"abc", fin=True)  # the stream carries on with a legitimate fin
    assert buf.read() == b"abc"
    assert buf.at_eof


@pytest.mark.parametrize("window", [0, -1])
def test_window_must_be_positive(window: int) -> None:
    """A non-positive window is refused."""
    with pytest.raises(ValueError):
        ReceiveBuffer(window)


# --- skip_to ------------------------------------------------------------------------------------


def test_skip_within_ready_bytes_discards_them() -> None:
    """skip_to inside the ready bytes drops the bytes before the new offset."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abcdefgh")
    buf.skip_to(3)
    assert buf.read_offset == 3
    assert (buf.readable, buf.buffered) == (5, 5)
    assert buf.read() == b"defgh"


def test_skip_to_current_offset_is_a_no_op() -> None:
    """skip_to the read offset changes nothing."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc")
    buf.read(1)
    buf.skip_to(1)
    assert buf.read() == b"bc"


def test_skip_backwards_is_refused() -> None:
    """skip_to never moves the read offset back."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abcdef")
    buf.read(4)
    with pytest.raises(ValueError):
        buf.skip_to(3)
    assert buf.read_offset == 4
    assert buf.read() == b"ef"


def test_skip_past_final_offset_is_refused() -> None:
    """skip_to beyond the final offset is refused; to the final offset reaches EOF."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc", fin=True)
    with pytest.raises(ValueError):
        buf.skip_to(4)
    buf.skip_to(3)
    assert buf.at_eof
    assert buf.read() == b""


def test_skip_past_ready_bytes_ignores_late_arrivals() -> None:
    """Bytes before the new offset arriving later are ignored; those after it are kept."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc")
    buf.skip_to(10)
    assert buf.read_offset == 10
    assert (buf.readable, buf.buffered) == (0, 0)
    assert buf.receive(3, b"defghij") == 0
    assert buf.buffered == 0
    assert buf.receive(8, b"ijklm") == 3
    assert buf.read() == b"klm"


def test_skip_keeps_tail_of_straddling_pending_chunk() -> None:
    """A pending chunk straddling the new offset keeps the bytes from the offset on."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(5, b"fghij")  # 5..10
    buf.receive(20, b"uvw")  # 20..23
    buf.skip_to(8)
    assert buf.read_offset == 8
    assert buf.readable == 2
    assert buf.buffered == 5
    assert buf.read() == b"ij"
    buf.receive(10, b"klmnopqrst")
    assert buf.read() == b"klmnopqrstuvw"


def test_skip_drops_pending_chunks_wholly_before_offset() -> None:
    """Pending chunks ending at or before the new offset are discarded."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(2, b"cd")  # 2..4
    buf.receive(6, b"gh")  # 6..8
    buf.receive(12, b"mn")  # 12..14
    assert buf.buffered == 6
    buf.skip_to(8)
    assert (buf.readable, buf.buffered) == (0, 2)
    buf.receive(8, b"ijkl")
    assert buf.read() == b"ijklmn"


def test_skip_keeps_longest_tail_among_overlapping_pending() -> None:
    """Several pending chunks straddling the offset leave the longest tail, counted once."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(5, b"fghij")  # 5..10
    buf.receive(7, b"hi")  # 7..9
    buf.receive(8, b"i")  # 8..9, exactly at the new offset
    buf.skip_to(8)
    assert buf.read_offset == 8
    assert buf.buffered == 2
    assert buf.read() == b"ij"


def test_skip_to_pending_chunk_start_makes_it_readable() -> None:
    """Skipping exactly to a pending chunk's start makes it (and what follows) readable."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(4, b"efg")
    buf.receive(7, b"hij")
    buf.skip_to(4)
    assert buf.readable == 6
    assert buf.read() == b"efghij"


def test_skip_moves_the_window() -> None:
    """After skip_to, the window counts from the new read offset."""
    buf = ReceiveBuffer(10)
    with pytest.raises(ProtocolViolationError):
        buf.receive(15, b"p")
    buf.skip_to(10)
    buf.receive(15, b"pqrst")
    buf.receive(10, b"klmno")
    assert buf.read() == b"klmnopqrst"


def test_skip_then_fin_reaches_eof() -> None:
    """A skipped stream still reaches EOF when the fin arrives."""
    buf = ReceiveBuffer(WINDOW)
    buf.receive(0, b"abc")
    buf.skip_to(6)
    buf.receive(4, b"efgh", fin=True)
    assert buf.complete
    assert buf.read() == b"gh"
    assert buf.at_eof
