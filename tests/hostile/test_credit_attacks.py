"""A hostile peer against kwik's per-stream credit, over real QUIC, with the server's memory
measured (the server runs in its own process).

The peer speaks the credit extension (ALPN ``kwik-credit-1``): it opens many streams, collects
the credit the server grants each, and fills every one of them to its credit while the
server's application never reads. What the server holds must stay within
``session_receive_buffer``, however many streams there are; data beyond the credit is a
protocol violation of that path only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kwik.config import EXTENSION_ALPN
from kwik.protocol import OpenStreamFrame, OpenStreamRespFrame, StreamCreditFrame, StreamFrame

from .harness import MIB, Budget, ServerProcess, echo_roundtrip, raw_connect

logger = logging.getLogger("kwik.tests.hostile")

#: What a server may gain beyond the budget under test: aioquic's receive buffers (the
#: transport stream's credit, 2 x path_receive_window), 1,000 streams' bookkeeping, allocator
#: slack.
RSS_MARGIN = 12 * MIB
STREAMS = 1000
BUDGET = 8 * MIB


async def test_credit_on_a_thousand_streams_filled_stays_within_the_session_budget(
    tmp_path: Path,
) -> None:
    config = {
        "worker_pool": False,
        "max_streams": STREAMS,
        "stream_backlog": STREAMS,
        "session_receive_buffer": BUDGET,
    }
    async with (
        ServerProcess(tmp_path, config, mode="hold") as server,
        raw_connect(server.addr, alpn=(EXTENSION_ALPN,)) as peer,
    ):
        assert peer.extended, "the server must speak the credit extension"
        before = (await server.stats()).rss
        for first in range(1, STREAMS + 1, 100):
            peer.send_frames(
                [OpenStreamFrame(i) for i in range(first, min(first + 100, STREAMS + 1))]
            )
        assert await peer.ping_barrier(30.0)
        accepted = {f.stream_id for f in peer.open_stream_resps if f.success}
        assert len(accepted) == STREAMS
        credit: dict[int, int] = {}
        for _, frame in peer.frames(StreamCreditFrame):
            assert isinstance(frame, StreamCreditFrame)
            credit[frame.stream_id] = max(credit.get(frame.stream_id, 0), frame.max_offset)
        granted = sum(credit.values())
        assert granted <= BUDGET, f"credit granted in all: {granted:,} B"
        # fill every stream to the credit it holds, in 32 KiB frames
        sent = 0
        chunk = b"h" * 32 * 1024
        for stream_id, limit in credit.items():
            offset = 0
            while offset < limit:
                data = chunk[: limit - offset]
                peer.send_frames([StreamFrame(stream_id, offset, False, data)])
                offset += len(data)
                sent += len(data)
        assert await peer.ping_barrier(60.0), "the server stopped answering"
        assert peer.terminated is None, "credit used within its bounds is no violation"
        stats = await server.stats()
        budget = Budget(before, stats.rss, sent, {"streams": STREAMS, "granted": granted})
        print(f"\n1,000 streams filled to their credit: {budget}")
        logger.info("credit flood: %s", budget)
        assert budget.growth < BUDGET + RSS_MARGIN, budget
        # the server is not stuck: another session is served while all this is held
        assert await echo_roundtrip(server.addr), "a well-behaved session was not served"


async def test_data_beyond_the_credit_fails_only_that_path(tmp_path: Path) -> None:
    async with (
        ServerProcess(
            tmp_path, {"worker_pool": False, "stream_receive_buffer": 64 * 1024}, mode="hold"
        ) as server,
        raw_connect(server.addr, alpn=(EXTENSION_ALPN,)) as peer,
    ):
        peer.send_frames([OpenStreamFrame(1)])
        assert await peer.ping_barrier(10.0)
        assert OpenStreamRespFrame(1, True) in peer.open_stream_resps
        peer.send_frames([StreamFrame(1, 0, False, b"x" * (64 * 1024 + 1))])
        await peer.wait_until(lambda: peer.terminated is not None, 10.0)
        assert peer.terminated is not None and peer.terminated.error_code == 1
        assert "beyond the credit" in peer.terminated.reason_phrase
        assert await echo_roundtrip(server.addr), "other sessions carry on"
