"""Hostile packet numbers over real QUIC: bounded Ack records, memory and event-loop stalls.

A raw aioquic peer sends frameless packets with numbers it chooses; the kwik server runs in a
subprocess so that its RSS is its own. Sizes are scaled down from the reproducers where the
bound is still visible (70,000 gaps: the reproducer's Ack was 1,120,062 bytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import kwik
from kwik.protocol import encode_record
from kwik.protocol.acks import ack_ranges_fitting

from .harness import MIB, Budget, ServerProcess, echo_roundtrip, raw_connect

logger = logging.getLogger("kwik.tests.hostile")

#: RSS a server may gain during an attack beyond the structure's own budget: aioquic's receive
#: buffers (the transport stream's credit), allocator slack and the like. Measured: +0.1 MiB for
#: the gapped flood below; the unbounded tracker of revision 90fa3d5 grew +16 MiB there.
RSS_MARGIN = 8 * MIB


def gapped_records(first: int, count: int, step: int) -> bytes:
    """``count`` frameless records numbered ``first``, ``first + step``, ... (25 bytes each)."""
    return b"".join(encode_record(first + step * i, []) for i in range(count))


async def test_gapped_packet_numbers_acks_and_memory_bounded(tmp_path: Path) -> None:
    """270,000 gapped numbers (70,000 of them before an Ack is due, then 2 x 100,000):
    every Ack record the server sends fits max_record_size and lists at most max_ack_ranges
    ranges, and the server's memory stays within the ack state's budget plus a margin (the
    unbounded tracker grew +16 MiB here)."""
    config = kwik.Config()
    async with (
        ServerProcess(tmp_path, {"worker_pool": False}) as server,
        raw_connect(server.addr) as peer,
    ):
        assert await echo_roundtrip(server.addr)
        before = (await server.stats()).rss
        sent = 0
        # first 70,000 gaps, then one eliciting packet: the Ack covers the whole flood
        blob = gapped_records(10**12, 70_000, 2)
        await peer.send_blob(blob)
        sent += len(blob)
        # the peer's own numbers must stay above the flood's: lower ones count as duplicates
        peer.next_packet_number = 2 * 10**13
        assert await peer.ping_barrier(30.0), "the server stopped answering"
        await asyncio.sleep(0.3)  # the ack timer (100 ms) fires after the echo
        for start in (10**12 + 140_000, 10**13):
            blob = gapped_records(start, 100_000, 2)
            await peer.send_blob(blob)
            sent += len(blob)
            assert await peer.ping_barrier(30.0), "the server stopped answering"
        await asyncio.sleep(0.3)
        stats = await server.stats()
        budget = Budget(before, stats.rss, sent, {"acks": len(peer.acks)})
        logger.info("gapped packet numbers: %s", budget)
        print(f"\ngapped packet numbers: {budget}")
        assert peer.acks, "the server never acknowledged"
        largest_record = max(received.length for received, _ in peer.acks)
        most_ranges = max(len(ack.ranges) for _, ack in peer.acks)
        assert largest_record <= config.max_record_size
        assert most_ranges <= min(config.max_ack_ranges, ack_ranges_fitting(config.max_record_size))
        # the newest ranges are the ones kept: the last Ack names the last number flooded
        last = 10**13 + 2 * 99_999
        assert any(lo <= last <= hi for lo, hi in peer.acks[-1][1].ranges)
        # the ack state's own budget is two sets of max_ack_ranges ranges (~100 bytes each)
        assert budget.growth < 2 * config.max_ack_ranges * 100 + RSS_MARGIN, budget
        assert await echo_roundtrip(server.addr), "a well-behaved session was not served"


async def test_descending_packet_numbers_fail_the_path_without_stalling_the_loop(
    tmp_path: Path,
) -> None:
    """200,000 descending gapped numbers (the reproducer blocked the loop 22.8 s with O(n)
    inserts): once more gaps than ``max_ack_ranges`` are remembered, a lower number cannot be
    told from a duplicate, so the server fails that path loudly (a protocol violation) instead
    of dropping packets without a word; its event loop never stalls 2 s, and a well-behaved
    session on the same listener is served meanwhile."""
    async with (
        ServerProcess(tmp_path, {"worker_pool": False}) as server,
        raw_connect(server.addr) as peer,
    ):
        await server.stats()  # reset max_lag after start-up
        blob = gapped_records(10**12, 200_000, -2)
        start = time.perf_counter()
        served = asyncio.create_task(echo_roundtrip(server.addr, timeout=30.0))
        await peer.send_blob(blob)
        await peer.wait_until(lambda: peer.terminated is not None, 40.0)
        assert peer.terminated is not None, "the flood was not refused"
        elapsed = time.perf_counter() - start
        assert peer.terminated.error_code == 1
        assert "below" in peer.terminated.reason_phrase, peer.terminated.reason_phrase
        assert await served, "a well-behaved session was not served during the flood"
        stats = await server.stats()
        print(
            f"\ndescending packet numbers: refused after {elapsed:.2f} s "
            f"({peer.terminated.reason_phrase!r}), longest loop stall "
            f"{stats.max_lag * 1000:.0f} ms, RSS {stats.rss / MIB:.1f} MiB"
        )
        assert stats.max_lag < 2.0, f"event loop stalled {stats.max_lag:.2f} s"
