"""Times AckTracker inserts under the packet-number patterns a peer can choose.

Run: ``python3 -m tests.hostile.bench_acks [N]`` (default 200,000 numbers per pattern). Prints
seconds per pattern, the ranges kept and the size of the Ack built afterwards, for the default
cap and for an uncapped RangeSet (the worst case of the data structure itself).
"""

from __future__ import annotations

import random
import sys
import time

from kwik.protocol.acks import AckTracker, RangeSet
from kwik.protocol.frames import encode_record


def patterns(n: int) -> dict[str, list[int]]:
    """The insert orders measured: each yields ``n`` packet numbers."""
    shuffled = list(range(n))
    random.Random(1).shuffle(shuffled)
    gapped_random = [2 * v for v in shuffled]
    return {
        "ascending": list(range(1, n + 1)),
        "ascending gapped": [10**12 + 2 * i for i in range(n)],
        "descending gapped": [10**12 - 2 * i for i in range(n)],
        "random": shuffled,
        "random gapped": gapped_random,
    }


def main(n: int) -> None:
    print(f"{n:,} packet numbers per pattern")
    for name, numbers in patterns(n).items():
        tracker = AckTracker()
        start = time.perf_counter()
        for number in numbers:
            tracker.on_packet(number, False, 0.0)
        tracked = time.perf_counter() - start
        tracker.on_packet(10**13, True, 0.0)
        ack = tracker.build_ack()
        size = len(encode_record(1, [ack])) if ack else 0
        raw = RangeSet(None)
        start = time.perf_counter()
        for number in numbers:
            raw.add(number)
        uncapped = time.perf_counter() - start
        print(
            f"  {name:<18} AckTracker {tracked:6.3f} s ({len(tracker._seen):>5} ranges kept,"
            f" Ack record {size:>6} B) | uncapped RangeSet {uncapped:6.3f} s"
            f" ({len(raw):>7} ranges)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
