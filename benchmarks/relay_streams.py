"""Streams per second through a relay (issue 17): small two-server streams over one session.

One process, three kwik endpoints on 127.0.0.1: a primary server, a secondary server and a
client. Each stream is one request: the client opens it, writes ``GET`` and its FIN; the
primary relays ``PART`` to the secondary on the same stream id (``Relay.send_raw_data``),
writes bytes ``[0, 10)`` and the FIN at 20; the secondary writes ``[10, 20)`` and ends its part
without a FIN (``end_part``), then reads its side to EOF. The client checks the 20 bytes. The
client runs ``--concurrency`` requests at a time (8), ``--streams`` in all (10,000).

A request that does not complete within ``--timeout`` seconds stops the run: the figure is then
the streams that completed (kwik before issue 17's rework stalls at stream 257 with the
default ``max_streams``: the secondary never retired a relayed stream).

It uses only kwik's public API, so it runs on older revisions too::

    python -m benchmarks.relay_streams                  # 10,000 streams, 8 at a time
    python -m benchmarks.relay_streams --streams 2000 --inline --json out.json
    PYTHONPATH=/path/to/old/checkout python3 benchmarks/relay_streams.py   # an old kwik

It prints which kwik it imported, then one line of figures. Exit status 0 when every stream
completed, 1 when the run stalled, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import time
from typing import Any

import kwik

PRIMARY_PART = b"P" * 10
SECONDARY_PART = b"S" * 10
RESPONSE = PRIMARY_PART + SECONDARY_PART
#: Streams per segment of the run whose rate is reported (a rate that decays shows there).
SEGMENT = 1000


async def _read_all(stream: kwik.Stream) -> bytes:
    chunks = []
    while data := await stream.read(65536):
        chunks.append(data)
    return b"".join(chunks)


class _Servers:
    """The primary and the secondary, with every task they start."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.secondary_eofs = 0
        self.listeners: list[Any] = []

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self, config: kwik.Config, tls: kwik.TLSConfig) -> tuple[str, str]:
        secondary = await kwik.listen_addr("127.0.0.1:0", tls, config)
        primary = await kwik.listen_addr("127.0.0.1:0", tls, config)
        self.listeners = [primary, secondary]
        self.spawn(self._accept(secondary, self._secondary_stream, None))
        self.spawn(self._accept(primary, self._primary_stream, secondary.addr))
        return primary.addr, secondary.addr

    async def _accept(self, listener: Any, handler: Any, relay_addr: str | None) -> None:
        async for session in listener:
            self.spawn(self._serve(session, handler, relay_addr))

    async def _serve(self, session: kwik.Session, handler: Any, relay_addr: str | None) -> None:
        relay: list[kwik.Relay] = []
        lock = asyncio.Lock()
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            self.spawn(self._guard(handler(session, stream, relay_addr, relay, lock)))

    @staticmethod
    async def _guard(coro: Any) -> None:
        with contextlib.suppress(kwik.KwikError):
            await coro

    async def _primary_stream(
        self,
        session: kwik.Session,
        stream: kwik.Stream,
        relay_addr: str,
        relay: list[kwik.Relay],
        lock: asyncio.Lock,
    ) -> None:
        assert await stream.readexactly(3) == b"GET"
        async with lock:
            if not relay:
                relay.append(await session.add_relay(relay_addr))
        await relay[0].send_raw_data(b"PART", stream.stream_id)
        await stream.write(PRIMARY_PART)
        stream.set_write_offset(len(RESPONSE))
        await stream.close()  # the FIN at the true end
        await _read_all(stream)  # the client's FIN

    async def _secondary_stream(self, session: kwik.Session, stream: kwik.Stream, *_: Any) -> None:
        assert await stream.readexactly(4) == b"PART"
        stream.set_write_offset(len(PRIMARY_PART))
        await stream.write(SECONDARY_PART)
        await stream.end_part()
        await _read_all(stream)  # EOF once the client has the whole stream
        self.secondary_eofs += 1

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await listener.close()


async def run(streams: int, concurrency: int, timeout: float, pool: bool) -> dict[str, Any]:
    cert, key = kwik.generate_self_signed_cert(["localhost", "127.0.0.1"])
    config = kwik.Config(worker_pool=pool)
    servers = _Servers()
    primary_addr, _ = await servers.start(config, kwik.TLSConfig(certificate=cert, private_key=key))
    session = await kwik.dial_addr(primary_addr, kwik.TLSConfig(cadata=cert), config)
    latencies: list[float] = []
    numbers = iter(range(streams))
    stalled: list[str] = []
    last = [0.0]  # when the last request completed
    marks: list[float] = []  # when each SEGMENT-th request completed

    async def one() -> None:
        started = time.perf_counter()
        stream = await session.open_stream_sync()
        await stream.write(b"GET")
        await stream.close()
        data = await _read_all(stream)
        if data != RESPONSE:
            raise AssertionError(f"stream {stream.stream_id}: {data!r}")
        finished = time.perf_counter()
        latencies.append(finished - started)
        last[0] = finished
        if len(latencies) % SEGMENT == 0:
            marks.append(finished)

    async def worker() -> None:
        for i in numbers:
            if stalled:
                return
            try:
                async with asyncio.timeout(timeout):
                    await one()
            except TimeoutError:
                stalled.append(f"request {i + 1} got no complete response within {timeout} s")
                return

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = len(latencies)
    # until the last completed request: waiting out a stalled one is not throughput
    elapsed = (last[0] if done else time.perf_counter()) - started
    if stalled:
        await session.abort("stalled")
    else:
        await session.close()
    await servers.stop()
    ordered = sorted(latencies) or [0.0]
    edges = [started, *marks]
    segments = [round(SEGMENT / (b - a), 1) for a, b in itertools.pairwise(edges)]
    return {
        "kwik": kwik.__file__,
        "streams": streams,
        "completed": done,
        "concurrency": concurrency,
        "worker_pool": pool,
        "seconds": round(elapsed, 3),
        "streams_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms_p50": round(1000 * statistics.median(ordered), 2),
        "latency_ms_p99": round(1000 * ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)], 2),
        "segment_streams_per_s": segments,
        "secondary_eofs": servers.secondary_eofs,
        "stalled": stalled[0] if stalled else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay_streams",
        description="Streams per second through a relay: small two-server streams, one session.",
    )
    parser.add_argument("--streams", type=int, default=10_000, help="requests in all (10000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at a time (8)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")
    parser.add_argument("--inline", action="store_true", help="Config(worker_pool=False)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.concurrency < 1 or args.timeout <= 0:
        parser.error("--streams and --concurrency must be >= 1, --timeout > 0")
    print(f"kwik from {kwik.__file__}", file=sys.stderr)
    result = asyncio.run(run(args.streams, args.concurrency, args.timeout, not args.inline))
    mode = "pool" if result["worker_pool"] else "inline"
    line = (
        f"relay_streams: {result['completed']}/{result['streams']} two-server streams, "
        f"{result['concurrency']} at a time ({mode}): {result['seconds']:.2f} s, "
        f"{result['streams_per_s']:.0f} streams/s, latency p50 {result['latency_ms_p50']} ms "
        f"p99 {result['latency_ms_p99']} ms; secondary read EOF on {result['secondary_eofs']}"
    )
    if result["segment_streams_per_s"]:
        rates = result["segment_streams_per_s"]
        line += f"; per {SEGMENT}: first {rates[0]:.0f}/s, last {rates[-1]:.0f}/s"
    if result["stalled"]:
        line += f"; STALLED: {result['stalled']}"
    print(line)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 1 if result["stalled"] else 0


if __name__ == "__main__":
    sys.exit(main())
