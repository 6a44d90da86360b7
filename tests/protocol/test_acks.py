"""RangeSet and AckTracker: acknowledgements and duplicates of one path."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwik.protocol.acks import (
    DEFAULT_MAX_ACK_RANGES,
    AckTracker,
    RangeSet,
    ack_ranges_fitting,
)
from kwik.protocol.frames import AckFrame, decode_packet, encode_packet, encode_record
from kwik.protocol.reader import RecordReader

# --- helpers ------------------------------------------------------------------------------------


def range_set(values: Iterable[int]) -> RangeSet:
    """A RangeSet holding ``values``."""
    rs = RangeSet()
    for value in values:
        rs.add(value)
    return rs


def expected_ranges(values: Iterable[int]) -> list[tuple[int, int]]:
    """The sorted, maximal inclusive ranges covering ``values``, computed naively."""
    out: list[tuple[int, int]] = []
    for value in sorted(set(values)):
        if out and out[-1][1] == value - 1:
            out[-1] = (out[-1][0], value)
        else:
            out.append((value, value))
    return out


def receive(
    tracker: AckTracker, numbers: Iterable[int], now: float, eliciting: bool = True
) -> None:
    """Record every packet number as received at ``now``."""
    for number in numbers:
        tracker.on_packet(number, eliciting, now)


# --- RangeSet -----------------------------------------------------------------------------------


def test_rangeset_add_and_contains() -> None:
    """add returns True for a new value and False for a present one; `in` agrees."""
    rs = RangeSet()
    assert 5 not in rs
    assert rs.add(5) is True
    assert rs.add(5) is False
    assert 5 in rs
    assert 4 not in rs
    assert 6 not in rs
    assert rs.ranges() == [(5, 5)]


def test_rangeset_empty() -> None:
    """An empty set has no ranges and contains nothing."""
    rs = RangeSet()
    assert rs.ranges() == []
    assert len(rs) == 0
    assert 0 not in rs


def test_rangeset_merges_left_right_and_bridge() -> None:
    """Adjacent values extend a range; a value filling a one-gap joins two ranges."""
    rs = range_set([1, 3])
    assert rs.ranges() == [(1, 1), (3, 3)]
    assert rs.add(2) is True  # bridges
    assert rs.ranges() == [(1, 3)]
    rs.add(4)  # extends right
    rs.add(0)  # extends left
    assert rs.ranges() == [(0, 4)]
    assert len(rs) == 1


def test_rangeset_disjoint_ranges_sorted() -> None:
    """Values added out of order give sorted, disjoint ranges."""
    rs = range_set([10, 1, 7, 2, 8, 3, 12, 9])
    assert rs.ranges() == [(1, 3), (7, 10), (12, 12)]
    assert len(rs) == 3
    assert [v for v in range(15) if v in rs] == [1, 2, 3, 7, 8, 9, 10, 12]


def test_rangeset_add_inside_range_is_duplicate() -> None:
    """A value inside an existing range is already present and changes nothing."""
    rs = range_set(range(1, 11))
    for value in (1, 5, 10):
        assert rs.add(value) is False
    assert rs.ranges() == [(1, 10)]


def test_rangeset_clear() -> None:
    """clear empties the set."""
    rs = range_set([1, 2, 5])
    rs.clear()
    assert rs.ranges() == []
    assert 1 not in rs
    assert rs.add(1) is True


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(min_value=0, max_value=60), max_size=60))
def test_property_rangeset_matches_a_set(values: list[int]) -> None:
    """RangeSet agrees with a plain set on membership, ranges and add's return value."""
    rs = RangeSet()
    seen: set[int] = set()
    for value in values:
        assert rs.add(value) is (value not in seen)
        seen.add(value)
    assert rs.ranges() == expected_ranges(seen)
    assert len(rs) == len(expected_ranges(seen))
    assert all((v in rs) is (v in seen) for v in range(-1, 63))


class CappedModel:
    """Reference for a capped RangeSet: a plain set plus the floor rule, computed naively."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.values: set[int] = set()
        self.floor = 0

    def add(self, value: int) -> bool:
        if value < self.floor or value in self.values:
            return False
        self.values.add(value)
        while self.cap is not None and len(expected_ranges(self.values)) > self.cap:
            self.floor = expected_ranges(self.values)[0][1] + 1
            self.values = {v for v in self.values if v >= self.floor}
        return True


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(min_value=0, max_value=80), max_size=80),
    cap=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
    block_size=st.integers(min_value=1, max_value=3),
)
def test_property_blocked_capped_rangeset_matches_model(
    values: list[int], cap: int | None, block_size: int
) -> None:
    """Tiny blocks (many splits and block removals) and a cap agree with the naive model:
    add's result, the ranges kept, the floor and membership (below the floor counts as seen)."""
    rs = RangeSet(cap, block_size=block_size)
    model = CappedModel(cap)
    for value in values:
        assert rs.add(value) is model.add(value)
        assert rs.ranges() == expected_ranges(model.values)
        assert rs.floor == model.floor
    assert len(rs) == len(expected_ranges(model.values))
    for v in range(0, 83):
        assert (v in rs) is (v < model.floor or v in model.values)
    for n in range(1, 8):
        assert rs.ranges(newest=n) == expected_ranges(model.values)[-n:]


def test_rangeset_cap_drops_oldest_and_raises_floor() -> None:
    """Beyond max_ranges the lowest range is forgotten; numbers below it then count as seen
    (the documented trade-off: a never-seen number under the floor is taken for a duplicate)."""
    rs = range_set([10, 20, 30])
    capped = RangeSet(2)
    for value in (10, 20, 30):
        capped.add(value)
    assert rs.ranges() == [(10, 10), (20, 20), (30, 30)]
    assert capped.ranges() == [(20, 20), (30, 30)]
    assert capped.floor == 11
    assert 5 in capped and 10 in capped  # forgotten: presumed seen
    assert 15 not in capped  # above the floor, a real gap
    assert capped.add(5) is False
    assert capped.add(15) is True
    assert capped.ranges() == [(15, 15), (20, 20), (30, 30)][-2:]


def test_rangeset_cap_bounds_a_gapped_flood() -> None:
    """100,000 gapped numbers in either order leave at most max_ranges ranges."""
    for numbers in (range(0, 200_000, 2), range(200_000, 0, -2)):
        rs = RangeSet(64)
        for n in numbers:
            rs.add(n)
        assert len(rs) <= 64
        assert len(rs.ranges()) == len(rs)


def test_rangeset_clear_resets_floor() -> None:
    """clear forgets the floor too."""
    rs = RangeSet(1)
    rs.add(1)
    rs.add(5)
    assert rs.floor == 2
    rs.clear()
    assert rs.floor == 0
    assert 1 not in rs
    assert rs.add(1) is True


@pytest.mark.parametrize("kwargs", [{"max_ranges": 0}, {"block_size": 0}])
def test_rangeset_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RangeSet(**kwargs)


def test_descending_and_random_inserts_are_not_quadratic() -> None:
    """200,000 descending gapped numbers into an UNCAPPED set, and as many random ones, take
    well under the 22.8 s the list-insert version blocked for (generous bound: a hang or an
    O(n^2) regression breaks it, a slow CI machine does not)."""
    import time

    start = time.perf_counter()
    rs = RangeSet(None)
    for i in range(200_000):
        rs.add(10**12 - 2 * i)
    shuffled = list(range(0, 400_000, 2))
    random.Random(3).shuffle(shuffled)
    other = RangeSet(None)
    for n in shuffled:
        other.add(n)
    elapsed = time.perf_counter() - start
    assert len(rs) == 200_000 and len(other) == 200_000
    assert rs.ranges()[0] == (10**12 - 399_998, 10**12 - 399_998)
    assert elapsed < 8.0, f"{elapsed:.1f} s for 400,000 inserts"


# --- AckTracker: duplicates ---------------------------------------------------------------------


def test_duplicate_detection() -> None:
    """on_packet returns True the first time a number is seen and False afterwards."""
    tracker = AckTracker()
    assert tracker.on_packet(1, True, 0.0) is True
    assert tracker.on_packet(2, True, 0.0) is True
    assert tracker.on_packet(1, True, 0.0) is False
    assert tracker.on_packet(2, False, 0.0) is False


def test_duplicate_detected_after_an_ack_was_built() -> None:
    """A number acknowledged earlier is still a duplicate when it arrives again."""
    tracker = AckTracker()
    receive(tracker, [1, 2, 3], 0.0)
    assert tracker.build_ack() is not None
    assert tracker.on_packet(2, True, 1.0) is False
    assert tracker.on_packet(4, True, 1.0) is True
    tracker.build_ack()
    tracker.build_ack()
    assert tracker.on_packet(1, True, 2.0) is False
    assert tracker.on_packet(4, True, 2.0) is False


def test_duplicate_is_acknowledged_again() -> None:
    """A duplicate (the peer missed our Ack) is included in the next Ack."""
    tracker = AckTracker()
    receive(tracker, [1, 2], 0.0)
    tracker.build_ack()
    assert tracker.on_packet(2, True, 1.0) is False
    ack = tracker.build_ack()
    assert ack is not None
    assert ack.ranges == ((2, 2),)


# --- AckTracker: ranges -------------------------------------------------------------------------


def test_ack_lists_ranges_received() -> None:
    """An Ack lists inclusive ranges of every number received, largest_acked the highest."""
    tracker = AckTracker()
    receive(tracker, [1, 2, 3, 5, 6, 7, 8], 0.0)
    ack = tracker.build_ack()
    assert ack == AckFrame(largest_acked=8, ranges=((1, 3), (5, 8)), ack_delay=0)


def test_ack_lists_only_numbers_since_previous_ack() -> None:
    """Each Ack covers the numbers received since the previous one, as the Go peer does."""
    tracker = AckTracker()
    receive(tracker, [1, 2, 3], 0.0)
    assert tracker.build_ack() == AckFrame(3, ((1, 3),))
    receive(tracker, [6, 4], 0.5)
    assert tracker.build_ack() == AckFrame(6, ((4, 4), (6, 6)))
    assert tracker.build_ack() is None


def test_ack_of_out_of_order_numbers_is_sorted() -> None:
    """Numbers received out of order are acknowledged as sorted merged ranges."""
    tracker = AckTracker()
    receive(tracker, [9, 3, 1, 2, 10, 7], 0.0)
    ack = tracker.build_ack()
    assert ack is not None
    assert ack.ranges == ((1, 3), (7, 7), (9, 10))
    assert ack.largest_acked == 10


def test_no_ack_when_nothing_received() -> None:
    """build_ack returns None when nothing arrived since the previous Ack."""
    tracker = AckTracker()
    assert tracker.build_ack() is None
    assert tracker.get_timer() is None
    assert not tracker.ack_due(1e9)


def test_built_ack_encodes_as_a_valid_frame() -> None:
    """The Ack a tracker builds survives the codec unchanged."""
    tracker = AckTracker()
    numbers = list(range(1, 200))
    random.Random(7).shuffle(numbers)
    kept = [n for n in numbers if n % 5]
    receive(tracker, kept, 0.0)
    ack = tracker.build_ack()
    assert ack is not None
    assert ack.ranges == tuple(expected_ranges(kept))
    assert len(ack.ranges) == 40
    assert decode_packet(encode_packet(1, [ack])).frames == (ack,)


def test_ack_range_room_matches_the_reader_limit() -> None:
    """ack_ranges_fitting(limit) ranges make a record a RecordReader with that limit accepts;
    one range more does not fit."""
    for limit in (65, 100, 1000, 1_048_576):
        n = ack_ranges_fitting(limit)
        ack = AckFrame(2 * n, tuple((2 * i, 2 * i) for i in range(n)))
        record = encode_record(7, [ack])
        assert len(record) - 4 <= limit  # L1 excludes its own 4 bytes
        reader = RecordReader(limit)
        reader.feed(record)
        packet = reader.next_record()
        assert packet is not None
        assert decode_packet(packet).frames == (ack,)
        bigger = encode_record(7, [AckFrame(2 * n + 2, (*ack.ranges, (2 * n + 2, 2 * n + 2)))])
        assert len(bigger) - 4 > limit
    assert ack_ranges_fitting(40) == 0
    assert ack_ranges_fitting(1000, other_frames=1000) == 0


def test_gapped_flood_ack_stays_within_the_record_limit() -> None:
    """70,000 gapped numbers (the reproducer's attack): the Ack keeps the newest ranges and its
    record fits max_record_size; the tracker remembers at most max_ranges ranges."""
    limit = 4096
    tracker = AckTracker(max_record_size=limit)
    numbers = [10**12 + 2 * i for i in range(70_000)]
    receive(tracker, numbers, 0.0, eliciting=False)
    tracker.on_packet(10**13, True, 0.0)
    ack = tracker.build_ack()
    assert ack is not None
    assert len(encode_record(1, [ack])) - 4 <= limit
    assert len(ack.ranges) == ack_ranges_fitting(limit)
    assert ack.largest_acked == 10**13
    assert ack.ranges[-1] == (10**13, 10**13)
    assert ack.ranges[-2] == (numbers[-1], numbers[-1])  # newest kept, oldest dropped
    assert len(tracker._seen) <= DEFAULT_MAX_ACK_RANGES


def test_default_tracker_ack_fits_the_default_record_limit() -> None:
    """With defaults, an Ack of a flood lists DEFAULT_MAX_ACK_RANGES ranges, well within 1 MiB."""
    tracker = AckTracker()
    receive(tracker, range(0, 10_000, 2), 0.0)
    ack = tracker.build_ack()
    assert ack is not None
    assert len(ack.ranges) == DEFAULT_MAX_ACK_RANGES
    assert ack.ranges[-1] == (9998, 9998)
    assert len(encode_record(1, [ack])) - 4 <= 1_048_576


def test_build_ack_max_ranges_argument() -> None:
    """build_ack(max_ranges=n) lists the n newest ranges (room left by other frames)."""
    tracker = AckTracker()
    receive(tracker, [1, 3, 5, 7, 8], 0.0)
    assert tracker.build_ack(max_ranges=2) == AckFrame(8, ((5, 5), (7, 8)))
    assert tracker.build_ack(max_ranges=2) is None  # the rest was dropped, not kept
    receive(tracker, [20], 0.0)
    with pytest.raises(ValueError):
        tracker.build_ack(max_ranges=0)


def test_trimmed_packets_are_acknowledged_when_retransmitted() -> None:
    """Ranges trimmed from an Ack are not lost for good: the peer retransmits, the duplicate
    is not dispatched again but is acknowledged."""
    tracker = AckTracker()
    receive(tracker, [1, 3, 5], 0.0)
    assert tracker.build_ack(max_ranges=1) == AckFrame(5, ((5, 5),))
    assert tracker.on_packet(1, True, 1.0) is False
    assert tracker.build_ack() == AckFrame(1, ((1, 1),))


def test_tracker_flood_below_floor_counts_as_duplicate() -> None:
    """Past max_ranges gaps, a number below the oldest kept range is a duplicate (trade-off)."""
    tracker = AckTracker(max_ranges=4)
    receive(tracker, [10, 20, 30, 40, 50], 0.0)
    assert tracker.on_packet(10, True, 0.0) is False  # seen, forgotten
    assert tracker.on_packet(5, True, 0.0) is False  # never seen, below the floor
    assert tracker.on_packet(25, True, 0.0) is True


def test_tracker_memory_stays_bounded_under_a_gapped_flood() -> None:
    """100,000 gapped numbers after the cap is reached: traced memory does not grow with the
    flood (the old tracker held +66 MiB for 1,000,000)."""
    import tracemalloc

    tracker = AckTracker()
    for i in range(10_000):  # fill to the cap first: what follows must be flat
        tracker.on_packet(2 * i, False, 0.0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(10_000, 110_000):
            tracker.on_packet(2 * i, False, 0.0)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(tracker._seen) <= DEFAULT_MAX_ACK_RANGES
    assert grown < 100_000, f"{grown:,} bytes held"


def test_tracker_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        AckTracker(max_ranges=0)
    with pytest.raises(ValueError):
        AckTracker(max_record_size=40)


def test_has_eliciting_was_removed() -> None:
    """The dead has_eliciting property is gone (worth_piggybacking / ack_due are the API)."""
    assert not hasattr(AckTracker, "has_eliciting")


# --- AckTracker: timing -------------------------------------------------------------------------


def test_defaults_follow_the_spec() -> None:
    """ack_interval is 100 ms and ack_threshold is 16 by default."""
    tracker = AckTracker()
    assert tracker.interval == pytest.approx(0.1)
    assert tracker.threshold == 16


def test_interval_deadline_from_first_unacknowledged_packet() -> None:
    """An Ack is due interval seconds after the first eliciting packet, not the later ones."""
    tracker = AckTracker(interval=0.1, threshold=16)
    tracker.on_packet(1, True, 10.0)
    assert tracker.get_timer() == pytest.approx(10.1)
    tracker.on_packet(2, True, 10.05)
    assert tracker.get_timer() == pytest.approx(10.1)
    assert not tracker.ack_due(10.0)
    assert not tracker.ack_due(10.09)
    assert tracker.ack_due(10.1)
    assert tracker.ack_due(11.0)


def test_deadline_resets_after_ack() -> None:
    """After build_ack no Ack is due until the next eliciting packet starts a new deadline."""
    tracker = AckTracker(interval=0.25, threshold=16)
    tracker.on_packet(1, True, 1.0)
    tracker.build_ack()
    assert tracker.get_timer() is None
    assert not tracker.ack_due(100.0)
    tracker.on_packet(2, True, 5.0)
    assert tracker.get_timer() == pytest.approx(5.25)


def test_threshold_makes_ack_due_at_once() -> None:
    """The threshold-th eliciting packet makes an Ack due immediately."""
    tracker = AckTracker(interval=10.0, threshold=4)
    receive(tracker, [1, 2, 3], 0.0)
    assert not tracker.ack_due(0.0)
    tracker.on_packet(4, True, 0.0)
    assert tracker.ack_due(0.0)
    timer = tracker.get_timer()
    assert timer is not None and timer <= 0.0
    assert tracker.build_ack() == AckFrame(4, ((1, 4),))
    assert not tracker.ack_due(0.0)


def test_threshold_counts_again_after_ack() -> None:
    """The threshold counts packets since the previous Ack only."""
    tracker = AckTracker(interval=10.0, threshold=3)
    receive(tracker, [1, 2, 3], 0.0)
    assert tracker.ack_due(0.0)
    tracker.build_ack()
    receive(tracker, [4, 5], 0.0)
    assert not tracker.ack_due(0.0)
    tracker.on_packet(6, True, 0.0)
    assert tracker.ack_due(0.0)


def test_ack_only_packets_never_make_an_ack_due() -> None:
    """Packets carrying only Acks, however many, never start a deadline or hit the threshold."""
    tracker = AckTracker(interval=0.1, threshold=2)
    receive(tracker, range(1, 50), 0.0, eliciting=False)
    assert tracker.get_timer() is None
    assert not tracker.ack_due(1e9)


def test_ack_only_packets_are_included_in_the_next_ack() -> None:
    """Numbers of ack-only packets are acknowledged with the next Ack sent anyway."""
    tracker = AckTracker(interval=0.1, threshold=16)
    receive(tracker, [1, 2], 0.0, eliciting=False)
    tracker.on_packet(3, True, 0.5)
    tracker.on_packet(5, False, 0.55)
    assert tracker.get_timer() == pytest.approx(0.6)
    assert tracker.ack_due(0.6)
    assert tracker.build_ack() == AckFrame(5, ((1, 3), (5, 5)))


def test_ack_only_packets_do_not_count_toward_threshold() -> None:
    """Only eliciting packets count toward the threshold."""
    tracker = AckTracker(interval=10.0, threshold=3)
    receive(tracker, [1, 2, 3, 4], 0.0, eliciting=False)
    receive(tracker, [5, 6], 0.0)
    assert not tracker.ack_due(0.0)
    tracker.on_packet(7, True, 0.0)
    assert tracker.ack_due(0.0)


def test_ack_only_duplicates_are_detected() -> None:
    """Duplicate detection applies to ack-only packets too."""
    tracker = AckTracker()
    assert tracker.on_packet(1, False, 0.0) is True
    assert tracker.on_packet(1, False, 0.0) is False
