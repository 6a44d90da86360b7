"""Acknowledgements, duplicate detection and heartbeats for one path (sans-IO, time passed in).

KWIK runs over QUIC, which is already reliable, so kwik never retransmits. A Go KWIK peer does
retransmit every packet it does not see acknowledged, so kwik acknowledges what it receives
(spec/wire-v2.md §3 "Acknowledgement") and drops packets it has already dispatched (port
decision 7: control frames such as AddPath or RelayData must never act twice).
"""

from __future__ import annotations

import bisect

from .frames import AckFrame

__all__ = ["AckTracker", "Heartbeat", "RangeSet"]


class RangeSet:
    """A set of non-negative integers stored as sorted, disjoint, inclusive ranges.

    Packet numbers arrive nearly in order, so the set of numbers seen on a path stays a handful
    of ranges however many packets there were.
    """

    __slots__ = ("_starts", "_ends")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []  # inclusive

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]

    def __len__(self) -> int:
        """Number of ranges (not of integers)."""
        return len(self._starts)

    def add(self, value: int) -> bool:
        """Add ``value``; return False if it was already present."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == value - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == value + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = value
        elif joins_right:
            starts[i + 1] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value)
        return True

    def ranges(self) -> list[tuple[int, int]]:
        """The inclusive ``(smallest, largest)`` ranges, ascending."""
        return list(zip(self._starts, self._ends, strict=True))

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()


class AckTracker:
    """Tracks received packet numbers of one path and decides when to acknowledge.

    An Ack is due ``interval`` seconds after the first ack-eliciting packet not yet
    acknowledged, or at once when ``threshold`` such packets are waiting. Packets carrying only
    Acks are included in the next Ack but never make one due.
    """

    __slots__ = ("_deadline", "_eliciting", "_pending", "_seen", "interval", "threshold")

    def __init__(self, interval: float = 0.1, threshold: int = 16) -> None:
        self.interval = interval
        self.threshold = threshold
        self._seen = RangeSet()  # every number ever dispatched (duplicate detection)
        self._pending = RangeSet()  # numbers received since the previous Ack
        self._eliciting = 0
        self._deadline: float | None = None

    def on_packet(self, packet_number: int, ack_eliciting: bool, now: float) -> bool:
        """Record a received packet; return False for a duplicate, which must not be dispatched.

        A duplicate is still acknowledged (the peer evidently did not see the earlier Ack).
        """
        fresh = self._seen.add(packet_number)
        self._pending.add(packet_number)
        if ack_eliciting:
            self._eliciting += 1
            if self._deadline is None:
                self._deadline = now + self.interval
        return fresh

    @property
    def has_eliciting(self) -> bool:
        """Whether an ack-eliciting packet is waiting for an Ack."""
        return self._eliciting > 0

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

    def build_ack(self) -> AckFrame | None:
        """Return an Ack of every number received since the previous one, and reset.

        Returns None when nothing was received since.
        """
        ranges = self._pending.ranges()
        self._pending.clear()
        self._eliciting = 0
        self._deadline = None
        if not ranges:
            return None
        return AckFrame(largest_acked=ranges[-1][1], ranges=tuple(ranges))


class Heartbeat:
    """Client-side liveness of one path: Ping every ``interval``, fail after missed echoes.

    The transport calls :meth:`on_timer` at :meth:`get_timer` and sends a Ping when it returns
    True; it calls :meth:`on_pong` for every Ping received on the path. :attr:`failed` turns
    True once ``miss_threshold`` Pings in a row went unanswered for a whole interval.
    """

    __slots__ = (
        "_next",
        "_outstanding_since",
        "failed",
        "interval",
        "last_rtt",
        "miss_threshold",
        "missed",
        "pings_sent",
        "pongs_received",
    )

    def __init__(self, interval: float, miss_threshold: int, now: float) -> None:
        if interval <= 0 or miss_threshold < 1:
            raise ValueError("interval must be positive and miss_threshold at least 1")
        self.interval = interval
        self.miss_threshold = miss_threshold
        self._next = now + interval
        self._outstanding_since: float | None = None
        self.missed = 0
        self.failed = False
        self.pings_sent = 0
        self.pongs_received = 0
        self.last_rtt: float | None = None

    def get_timer(self) -> float | None:
        return None if self.failed else self._next

    def on_ping_sent(self, now: float) -> None:
        """Note a Ping sent outside the schedule (the first record of a path, say)."""
        self.pings_sent += 1
        if self._outstanding_since is None:
            self._outstanding_since = now

    def on_timer(self, now: float) -> bool:
        """Advance the schedule; return True when a Ping must be sent now."""
        if self.failed or now < self._next:
            return False
        if self._outstanding_since is not None:
            self.missed += 1
            if self.missed >= self.miss_threshold:
                self.failed = True
                return False
        self._next = now + self.interval
        self.pings_sent += 1
        if self._outstanding_since is None:
            self._outstanding_since = now
        return True

    def on_pong(self, now: float) -> None:
        self.pongs_received += 1
        if self._outstanding_since is not None:
            self.last_rtt = now - self._outstanding_since
        self._outstanding_since = None
        self.missed = 0
