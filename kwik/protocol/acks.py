"""Acknowledgements, duplicate detection and heartbeats for one path (sans-IO, time passed in).

KWIK runs over QUIC, which is already reliable, so kwik never retransmits. A Go KWIK peer does
retransmit every packet it does not see acknowledged, so kwik acknowledges what it receives
(``docs/protocol.md``, "Acknowledgements") and drops packets it has already dispatched (port
decision 7: control frames such as AddPath or RelayData must never act twice).

Bounds under a hostile peer. Packet numbers are chosen by the peer, so nothing about them can
be trusted: a peer sending every other number makes one range per packet. Hence:

* a :class:`RangeSet` keeps at most ``max_ranges`` ranges. Past that it forgets its *lowest*
  range and raises a floor: every number below the floor counts as already present. For
  duplicate detection this is the trade-off: a packet whose number lies below the oldest range
  still remembered is discarded as a duplicate, even if it never arrived. An honest peer writes
  its records in order on one reliable QUIC stream, so its numbers form one range and the floor
  never rises; only a peer that leaves more than ``max_ranges`` gaps loses anything, and what it
  loses is its own oldest, least likely to be new, packets.
* inserts cost O(log n) (bisection over blocks of at most ``2 * block_size`` ranges, plus a
  bounded in-block list move), the usual in-order arrival O(1); a descending flood below the
  floor is rejected in O(1) once the set is full.
* an Ack never lists more ranges than fit ``max_record_size`` (see :func:`ack_ranges_fitting`).
  When more are pending, :meth:`AckTracker.build_ack` keeps the *newest* ranges and drops the
  oldest: a Go peer retransmits whatever it does not see acknowledged, and a retransmission is
  acknowledged again (duplicates go into the next Ack), so trimming costs at most a repeat of
  old packets, whereas several Acks per interval would let a peer multiply our output.
"""

from __future__ import annotations

import bisect

from .frames import MAX_RECORD_SIZE, AckFrame

__all__ = [
    "DEFAULT_MAX_ACK_RANGES",
    "AckTracker",
    "RangeSet",
    "ack_ranges_fitting",
]

#: Ranges an :class:`AckTracker` remembers (per set) unless told otherwise; also
#: ``Config.max_ack_ranges``' default. 1,024 ranges are a 16 KiB Ack.
DEFAULT_MAX_ACK_RANGES = 1024

# L1 counts the inner length prefix (4), the packet header (type 1 + number 8 + count 8) and
# the frames; an Ack frame is type 1 + largest 8 + delay 8 + count 8, then 16 per range.
_RECORD_FIXED = 4 + 17
_ACK_FIXED = 25
_ACK_RANGE = 16


def ack_ranges_fitting(max_record_size: int, other_frames: int = 0) -> int:
    """Most ranges an Ack may list so that its record stays within ``max_record_size``.

    ``max_record_size`` is the limit a reader puts on a record's outer length L1 (as
    :class:`~kwik.protocol.RecordReader` checks it); ``other_frames`` is the encoded size of the
    other frames sharing the packet. Returns 0 when not even one range fits.
    """
    room = max_record_size - _RECORD_FIXED - _ACK_FIXED - other_frames
    return max(room // _ACK_RANGE, 0)


class RangeSet:
    """A set of non-negative integers stored as sorted, disjoint, inclusive ranges.

    Packet numbers arrive nearly in order, so the set of numbers seen on a path stays a handful
    of ranges however many packets there were. ``max_ranges`` (None: unbounded) caps the ranges
    kept: beyond it the lowest range is forgotten and :attr:`floor` rises past it, after which
    every number below the floor is reported present (``in`` is True, :meth:`add` returns
    False) without being stored. ``block_size`` tunes the internal blocks (tests make it tiny).

    Ranges live in blocks (parallel ``starts``/``ends`` lists of ``block_size`` to
    ``2 * block_size`` ranges) indexed by each block's first start, so an insert anywhere costs a
    bisection plus a move within one block, never a move of the whole set.
    """

    __slots__ = ("_block_size", "_count", "_ends", "_mins", "_starts", "floor", "max_ranges")

    def __init__(self, max_ranges: int | None = None, *, block_size: int = 128) -> None:
        if max_ranges is not None and max_ranges < 1:
            raise ValueError("max_ranges must be at least 1 (or None)")
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.max_ranges = max_ranges
        self._block_size = block_size
        self._starts: list[list[int]] = []  # per block, ascending
        self._ends: list[list[int]] = []  # per block, inclusive ends
        self._mins: list[int] = []  # first start of each block
        self._count = 0
        self.floor = 0
        """Numbers below it count as present: they were forgotten, not necessarily seen."""

    def __contains__(self, value: int) -> bool:
        if 0 <= value < self.floor:
            return True
        k = bisect.bisect_right(self._mins, value) - 1
        if k < 0:
            return False
        i = bisect.bisect_right(self._starts[k], value) - 1
        return value <= self._ends[k][i]

    def __len__(self) -> int:
        """Number of ranges (not of integers)."""
        return self._count

    def add(self, value: int) -> bool:
        """Add ``value``; return False if it was already present (or lies below :attr:`floor`)."""
        if value < self.floor:
            return False
        mins = self._mins
        if not mins:
            self._starts.append([value])
            self._ends.append([value])
            mins.append(value)
            self._count = 1
            return True
        last_ends = self._ends[-1]
        top = last_ends[-1]
        # fast path: the in-order arrival of an honest peer
        if value == top + 1:
            last_ends[-1] = value
            return True
        if value > top:
            self._starts[-1].append(value)
            last_ends.append(value)
            self._count += 1
            self._split(len(mins) - 1)
            self._trim()
            return True
        return self._add_slow(value)

    def _add_slow(self, value: int) -> bool:
        mins, all_starts, all_ends = self._mins, self._starts, self._ends
        k = bisect.bisect_right(mins, value) - 1
        if k < 0:
            # below every range: joins the very first range or becomes the new first one
            starts, ends = all_starts[0], all_ends[0]
            if starts[0] == value + 1:
                starts[0] = value
            else:
                starts.insert(0, value)
                ends.insert(0, value)
                self._count += 1
            mins[0] = value
            self._split(0)
            self._trim()
            return True
        starts, ends = all_starts[k], all_ends[k]
        i = bisect.bisect_right(starts, value) - 1  # >= 0: mins[k] <= value
        if value <= ends[i]:
            return False
        # the successor range: next in this block, or first of the next block
        if i + 1 < len(starts):
            nk, ni = k, i + 1
        elif k + 1 < len(mins):
            nk, ni = k + 1, 0
        else:
            nk, ni = -1, -1
        joins_left = ends[i] == value - 1
        joins_right = nk >= 0 and all_starts[nk][ni] == value + 1
        if joins_left and joins_right:
            ends[i] = all_ends[nk][ni]
            self._remove(nk, ni)
        elif joins_left:
            ends[i] = value
        elif joins_right:
            all_starts[nk][ni] = value
            if ni == 0:
                mins[nk] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value)
            self._count += 1
            self._split(k)
            self._trim()
        return True

    def _remove(self, k: int, i: int) -> None:
        """Delete range ``i`` of block ``k``, dropping the block when it empties."""
        starts, ends = self._starts[k], self._ends[k]
        del starts[i], ends[i]
        self._count -= 1
        if not starts:
            del self._starts[k], self._ends[k], self._mins[k]
        elif i == 0:
            self._mins[k] = starts[0]

    def _split(self, k: int) -> None:
        """Halve block ``k`` once it holds more than twice the block size."""
        starts = self._starts[k]
        if len(starts) <= 2 * self._block_size:
            return
        half = len(starts) // 2
        ends = self._ends[k]
        self._starts.insert(k + 1, starts[half:])
        self._ends.insert(k + 1, ends[half:])
        self._mins.insert(k + 1, starts[half])
        del starts[half:], ends[half:]

    def _trim(self) -> None:
        """Forget the lowest ranges beyond ``max_ranges``, raising the floor past them."""
        cap = self.max_ranges
        while cap is not None and self._count > cap:
            self.floor = self._ends[0][0] + 1
            self._remove(0, 0)

    def ranges(self, newest: int | None = None) -> list[tuple[int, int]]:
        """The inclusive ``(smallest, largest)`` ranges, ascending; only the ``newest``
        (highest) ones when it is given."""
        if newest is None:
            return [
                r
                for s, e in zip(self._starts, self._ends, strict=True)
                for r in zip(s, e, strict=True)
            ]
        out: list[tuple[int, int]] = []
        for k in range(len(self._mins) - 1, -1, -1):
            if len(out) >= newest:
                break
            want = newest - len(out)
            starts, ends = self._starts[k], self._ends[k]
            lo = max(len(starts) - want, 0)
            out.extend(reversed(list(zip(starts[lo:], ends[lo:], strict=True))))
        out.reverse()
        return out

    def clear(self) -> None:
        """Empty the set and reset the floor to 0."""
        self._starts = []
        self._ends = []
        self._mins = []
        self._count = 0
        self.floor = 0


class AckTracker:
    """Tracks received packet numbers of one path and decides when to acknowledge.

    An Ack is due ``interval`` seconds after the first ack-eliciting packet not yet
    acknowledged, or at once when ``threshold`` such packets are waiting. Packets carrying only
    Acks are included in the next Ack but never make one due.

    ``max_ranges`` caps the ranges remembered for duplicate detection and the ranges pending
    acknowledgement (see the module docstring for what is lost at the cap); an Ack never lists
    more than ``max_ranges`` nor more than fit a record of ``max_record_size`` alone.
    """

    __slots__ = (
        "_deadline",
        "_eliciting",
        "_pending",
        "_seen",
        "interval",
        "max_ranges",
        "threshold",
    )

    def __init__(
        self,
        interval: float = 0.1,
        threshold: int = 16,
        *,
        max_ranges: int = DEFAULT_MAX_ACK_RANGES,
        max_record_size: int = MAX_RECORD_SIZE,
    ) -> None:
        fitting = ack_ranges_fitting(max_record_size)
        if max_ranges < 1 or fitting < 1:
            raise ValueError("max_ranges must be at least 1 and one range must fit a record")
        self.interval = interval
        self.threshold = threshold
        self.max_ranges = min(max_ranges, fitting)
        self._seen = RangeSet(max_ranges)  # numbers dispatched (duplicate detection)
        self._pending = RangeSet(self.max_ranges)  # numbers received since the previous Ack
        self._eliciting = 0
        self._deadline: float | None = None

    def below_floor(self, packet_number: int) -> bool:
        """Whether ``packet_number`` lies below the ranges forgotten at the cap: it cannot be
        told from a duplicate, so the caller refuses it loudly (an honest peer never leaves
        that many gaps)."""
        return packet_number < self._seen.floor

    @property
    def has_pending(self) -> bool:
        """Numbers were received since the previous Ack."""
        return len(self._pending) > 0

    def on_packet(self, packet_number: int, ack_eliciting: bool, now: float) -> bool:
        """Record a received packet; return False for a duplicate, which must not be dispatched.

        A duplicate is still acknowledged (the peer evidently did not see the earlier Ack).
        Check :meth:`below_floor` first: a number below the oldest range remembered counts as
        a duplicate here.
        """
        fresh = self._seen.add(packet_number)
        self._pending.add(packet_number)
        if ack_eliciting:
            self._eliciting += 1
            if self._deadline is None:
                self._deadline = now + self.interval
        return fresh

    @property
    def worth_piggybacking(self) -> bool:
        """Whether an Ack is worth adding to a packet being sent anyway: half the threshold
        of ack-eliciting packets is waiting. (Acking every packet would double the frames
        each side encodes and decodes; the timer covers the rest.)"""
        return self._eliciting * 2 >= self.threshold

    def get_timer(self) -> float | None:
        """When an Ack becomes due, or None when none is waiting."""
        if self._eliciting >= self.threshold:
            return float("-inf")
        return self._deadline

    def ack_due(self, now: float) -> bool:
        deadline = self.get_timer()
        return deadline is not None and now >= deadline

    def build_ack(self, *, max_ranges: int | None = None) -> AckFrame | None:
        """Return an Ack of the numbers received since the previous one, and reset.

        The Ack lists at most ``max_ranges`` ranges (None: the tracker's own cap, which already
        fits a record of ``max_record_size`` alone; a caller adding other frames to the packet
        passes :func:`ack_ranges_fitting` of the room left). When more are pending, the newest
        (highest) ranges are kept and the older ones dropped: the peer retransmits those
        packets and their duplicates are acknowledged then. Returns None when nothing was
        received since.
        """
        limit = self.max_ranges if max_ranges is None else min(max_ranges, self.max_ranges)
        if limit < 1:
            raise ValueError("an Ack needs room for at least one range")
        ranges = self._pending.ranges(newest=limit)
        self._pending.clear()
        self._eliciting = 0
        self._deadline = None
        if not ranges:
            return None
        return AckFrame(largest_acked=ranges[-1][1], ranges=tuple(ranges))
