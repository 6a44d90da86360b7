"""Benchmark: records processed by the global worker pool against records processed inline.

Both modes run the same workload in the same process (client and server over loopback), with
``kwik.Config(worker_pool=True)`` ("pool") and ``kwik.Config(worker_pool=False)`` ("inline") on
both sides. Each repetition runs, for each mode (the order alternates between repetitions):

1. **Transfer run.** A bulk session sends ``--size`` MiB client -> server on one stream, in
   64 KiB writes; the server counts the bytes and, at FIN, answers with the count. Throughput
   is payload bytes / seconds from the first write to that answer, in MB/s (10**6 bytes).
   Meanwhile a second session of the same mode plays PING/PONG (the 20-byte messages of
   ``examples/pingpong.py``, the time field holding ``perf_counter_ns``) every
   ``--ping-interval`` seconds: RTT p50 and p99 *under load*, by nearest rank. The number of
   asyncio tasks is sampled every 5 ms (peak), and in pool mode the pool's stats are read at the
   end of the transfer: ``reuse_ratio`` as ``PoolStats`` defines it (reused / (created + reused)
   buffers, which leaves out records too big for a pooled buffer) and the share of *all*
   submitted records that went into a reused buffer.
2. **Allocation run.** The same bulk transfer without the pinger, under :mod:`tracemalloc`,
   which slows Python down several times, so no timing is taken from it. tracemalloc keeps the
   bytes alive now and the peak since the last reset, not a total of what was allocated. So on
   every event-loop iteration the counter adds how far the peak rose above the level the
   previous iteration ended at (``peak - previous current``), then resets the peak. Memory
   allocated and freed within one iteration counts once (at its peak), so the sum is a *lower
   bound* of the bytes allocated, process-wide (client, server and this harness alike); cutting
   time into more slices can only raise it. Iterations are told apart by the loop polling its
   selector (the counter wraps the selector of asyncio's event loop, so an idle loop is not
   made to spin); both modes run about as many (``alloc_ticks`` in the JSON), which keeps the
   two bounds comparable. One change to the workload: asyncio receives every datagram into a
   fresh 256 KiB ``bytes`` it then shrinks, a spike per datagram that would hide everything
   else in its iteration, so allocation runs have asyncio read datagrams with a 1500-byte
   buffer (kwik's are at most ``Config.max_datagram_size``, 1200 bytes by default).
   Reported per MiB received. The bound is for comparing the two modes at one ``--size``, not
   an absolute figure: it grows with the size (the first few MiB go into send buffers at once;
   later writes share loop iterations with packet processing), and finer slices (every
   callback, every function call) find more.

Figures are medians over the repetitions with min and max; the last column is pool / inline
of the medians. ``--json FILE`` also writes every run and the summary to FILE.

    python -m examples.worker_pool_test.bench [--size 16] [--repeat 3] [--json out.json]
    python -m examples.worker_pool_test.bench --quick     # 2 MiB, 1 repetition (tests)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from asyncio import selector_events
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import kwik

from ..pingpong import MESSAGE
from ._support import StreamServer, TaskPeak

MIB = 1024 * 1024
WRITE_SIZE = 64 * 1024
MODES = ("pool", "inline")
BULK = b"BULK"  # first 4 bytes of a bulk stream; a ping stream starts with b"PING"
COUNT = 8  # bytes of the byte count the server answers a bulk stream with
#: receive size of asyncio's datagram transports in allocation runs: kwik's datagrams are at
#: most Config.max_datagram_size (1200 by default) bytes
DATAGRAM_READ = 1500

T = TypeVar("T")


# --- server ---------------------------------------------------------------------------------


async def serve(stream: kwik.Stream) -> None:
    """Serve one stream: a bulk upload (count it, answer the count) or PING/PONG."""
    kind = await stream.readexactly(4)
    if kind == BULK:
        received = 0
        while data := await stream.read(WRITE_SIZE):
            received += len(data)
        await stream.write(received.to_bytes(COUNT, "big"))
    elif kind == b"PING":
        message = kind + await stream.readexactly(MESSAGE.size - 4)
        while True:
            _, counter, sent_ns = MESSAGE.unpack(message)
            await stream.write(MESSAGE.pack(b"PONG", counter, sent_ns))
            try:
                message = await stream.readexactly(MESSAGE.size)
            except asyncio.IncompleteReadError:
                break
    await stream.close()


# --- measurements ---------------------------------------------------------------------------


class AllocationCounter:
    """Lower bound of the bytes allocated while running (see the module docstring).

    ``async with`` starts tracemalloc and, for as long as it lasts, adds up on every event-loop
    iteration the rise of the traced-memory peak over the level the previous iteration ended at.
    An iteration is recognised by the loop polling its selector, which it does exactly once per
    iteration: the counter wraps the selector of asyncio's (selector-based) event loop, so an
    idle loop stays idle instead of spinning to give the counter a turn.
    """

    def __init__(self) -> None:
        self.total = 0
        self.ticks = 0
        self._level = 0
        self._loop: Any = None
        self._selector: Any = None

    def _account(self) -> None:
        _, peak = tracemalloc.get_traced_memory()
        self.total += max(peak - self._level, 0)
        self.ticks += 1
        tracemalloc.reset_peak()
        self._level = tracemalloc.get_traced_memory()[0]

    async def __aenter__(self) -> AllocationCounter:
        loop = asyncio.get_running_loop()
        selector = getattr(loop, "_selector", None)
        if selector is None:
            raise RuntimeError("allocation counting needs asyncio's selector event loop")
        self._loop, self._selector = loop, selector
        loop._selector = _PollHook(selector, self._account)  # type: ignore[attr-defined]
        tracemalloc.start()
        tracemalloc.reset_peak()
        self._level = tracemalloc.get_traced_memory()[0]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._account()
        tracemalloc.stop()
        self._loop._selector = self._selector


@contextlib.contextmanager
def datagram_reads_of(size: int) -> Iterator[None]:
    """Have asyncio's datagram transports receive into ``size``-byte buffers meanwhile.

    asyncio receives every datagram into a new 256 KiB ``bytes`` and shrinks it to the
    datagram's length: a 256 KiB spike per datagram that would hide every other allocation of
    the loop iteration from the peak-based count. ``size`` must be at least the largest
    datagram (a longer one would be cut).
    """
    transport = selector_events._SelectorDatagramTransport  # type: ignore[attr-defined]
    saved = transport.max_size
    transport.max_size = size
    # kwik sets its own transports' receive size per instance (64 KiB): lower those too
    instances = [
        (obj, obj.__dict__["max_size"])
        for obj in gc.get_objects()
        if isinstance(obj, transport) and "max_size" in obj.__dict__
    ]
    for obj, _ in instances:
        obj.max_size = size
    try:
        yield
    finally:
        transport.max_size = saved
        for obj, own in instances:
            obj.max_size = own


class _PollHook:
    """A selector that calls ``before_poll`` each time the event loop polls it."""

    def __init__(self, selector: Any, before_poll: Callable[[], None]) -> None:
        self._selector = selector
        self._before_poll = before_poll

    def select(self, timeout: float | None = None) -> Any:
        self._before_poll()
        return self._selector.select(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass
class Run:
    """What one repetition of one mode measured (allocation figures from its own run)."""

    mode: str
    size_bytes: int
    seconds: float
    throughput_mb_s: float
    peak_tasks: int
    pings: int
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    reuse_ratio: float | None
    reused_share_of_records: float | None
    pool_stats: dict[str, Any] | None
    alloc_bytes_per_mib: float = 0.0
    alloc_bytes: int = 0
    alloc_ticks: int = 0
    alloc_run_seconds: float = 0.0


class Bench:
    """The runs, sharing the TLS material and the ping interval."""

    def __init__(self, ping_interval: float) -> None:
        self.ping_interval = ping_interval
        self.cert, self.key = kwik.generate_self_signed_cert(["127.0.0.1"])
        if kwik.Config().max_datagram_size > DATAGRAM_READ:
            raise RuntimeError("datagrams may exceed DATAGRAM_READ: raise it")

    async def with_sessions(
        self,
        mode: str,
        sessions: int,
        body: Callable[[StreamServer, list[kwik.Session]], Awaitable[T]],
    ) -> T:
        """Run ``body`` with a listener and ``sessions`` client sessions in ``mode``."""
        config = kwik.Config(worker_pool=mode == "pool")
        listener = await kwik.listen_addr(
            "127.0.0.1:0", kwik.TLSConfig(certificate=self.cert, private_key=self.key), config
        )
        async with StreamServer(listener, serve) as server:
            tls = kwik.TLSConfig(cadata=self.cert)
            clients = [await kwik.dial_addr(server.addr, tls, config) for _ in range(sessions)]
            try:
                has_pool = kwik.get_global_worker_pool() is not None
                if has_pool != (mode == "pool"):
                    raise RuntimeError(f"{mode} mode, yet worker pool present: {has_pool}")
                return await body(server, clients)
            finally:
                await asyncio.gather(*(client.close() for client in clients))
                if server.errors:
                    raise RuntimeError(f"server side failed: {server.errors[0]!r}")

    async def bulk(self, session: kwik.Session, payload: memoryview) -> float:
        """Upload ``payload`` on a new stream; seconds until the server confirmed it all."""
        stream = await session.open_stream_sync()
        await stream.write(BULK)
        start = time.perf_counter()
        for offset in range(0, len(payload), WRITE_SIZE):
            await stream.write(payload[offset : offset + WRITE_SIZE])
        await stream.close()
        confirmed = int.from_bytes(await stream.readexactly(COUNT), "big")
        elapsed = time.perf_counter() - start
        if confirmed != len(payload):
            raise RuntimeError(f"server received {confirmed} bytes of {len(payload)}")
        return elapsed

    async def pinger(self, stream: kwik.Stream, stop: asyncio.Event) -> list[float]:
        """PING every ``ping_interval`` s until ``stop`` is set; the RTTs in ms."""
        rtts: list[float] = []
        counter = 0
        while not stop.is_set():
            counter += 1
            await stream.write(MESSAGE.pack(b"PING", counter, time.perf_counter_ns()))
            kind, got, sent_ns = MESSAGE.unpack(await stream.readexactly(MESSAGE.size))
            if kind != b"PONG" or got != counter:
                raise RuntimeError(f"bad answer {kind!r} #{got} to PING #{counter}")
            rtts.append((time.perf_counter_ns() - sent_ns) / 1e6)
            await asyncio.sleep(self.ping_interval)
        return rtts

    async def transfer_run(self, mode: str, payload: memoryview) -> Run:
        """Bulk transfer timed, with pings alongside (no tracemalloc)."""

        async def body(server: StreamServer, clients: list[kwik.Session]) -> Run:
            bulk_session, ping_session = clients
            ping_stream = await ping_session.open_stream_sync()
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                pings = group.create_task(self.pinger(ping_stream, stop))
                async with TaskPeak() as tasks:
                    seconds = await self.bulk(bulk_session, payload)
                    pool = kwik.get_global_worker_pool()
                    stats = pool.stats() if pool is not None else None
                stop.set()
            await ping_stream.close()
            rtts = pings.result()
            return Run(
                mode=mode,
                size_bytes=len(payload),
                seconds=seconds,
                throughput_mb_s=len(payload) / seconds / 1e6,
                peak_tasks=tasks.peak,
                pings=len(rtts),
                rtt_p50_ms=percentile(rtts, 0.50),
                rtt_p99_ms=percentile(rtts, 0.99),
                reuse_ratio=stats.reuse_ratio if stats else None,
                reused_share_of_records=(
                    stats.buffers_reused / stats.submitted if stats and stats.submitted else None
                ),
                pool_stats=asdict(stats) if stats else None,
            )

        return await self.with_sessions(mode, 2, body)

    async def allocation_run(self, mode: str, payload: memoryview, run: Run) -> None:
        """Bulk transfer under tracemalloc; fills the allocation fields of ``run``."""

        async def body(server: StreamServer, clients: list[kwik.Session]) -> None:
            gc.collect()
            start = time.perf_counter()
            with datagram_reads_of(DATAGRAM_READ):
                async with AllocationCounter() as counter:
                    await self.bulk(clients[0], payload)
            run.alloc_run_seconds = time.perf_counter() - start
            run.alloc_bytes = counter.total
            run.alloc_ticks = counter.ticks
            run.alloc_bytes_per_mib = counter.total / (len(payload) / MIB)

        await self.with_sessions(mode, 1, body)


# --- the whole benchmark --------------------------------------------------------------------

#: (key in Run, label, format) of every figure in the table and the summary.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("throughput_mb_s", "throughput (MB/s)", "{:.1f}"),
    ("seconds", "transfer time (s)", "{:.2f}"),
    ("alloc_bytes_per_mib", "allocated per MiB received (KiB, lower bound)", "{:.0f}"),
    ("peak_tasks", "peak asyncio tasks", "{:.0f}"),
    ("reuse_ratio", "buffer reuse ratio (PoolStats)", "{:.3f}"),
    ("reused_share_of_records", "records in a reused buffer", "{:.3f}"),
    ("rtt_p50_ms", "ping RTT p50 under load (ms)", "{:.2f}"),
    ("rtt_p99_ms", "ping RTT p99 under load (ms)", "{:.2f}"),
    ("pings", "pings answered during transfer", "{:.0f}"),
)
SCALE = {"alloc_bytes_per_mib": 1 / 1024}  # shown in KiB, stored in bytes


def summarize(runs: list[Run]) -> dict[str, dict[str, float] | None]:
    """Median, min and max of every metric over ``runs`` (None where no run has a value)."""
    summary: dict[str, dict[str, float] | None] = {}
    for key, _, _ in METRICS:
        values = [float(v) for run in runs if (v := getattr(run, key)) is not None]
        summary[key] = (
            {"median": statistics.median(values), "min": min(values), "max": max(values)}
            if values
            else None
        )
    return summary


def ratios(
    pool: dict[str, dict[str, float] | None], inline: dict[str, dict[str, float] | None]
) -> dict[str, float | None]:
    """pool / inline of the medians, per metric (None where either is missing or zero)."""
    out: dict[str, float | None] = {}
    for key, _, _ in METRICS:
        a, b = pool[key], inline[key]
        out[key] = a["median"] / b["median"] if a and b and b["median"] else None
    return out


def cell(value: dict[str, float] | None, key: str, fmt: str) -> str:
    """The median, then ``[min..max]`` when they differ, in the metric's unit; or n/a."""
    if value is None:
        return "n/a"
    scale = SCALE.get(key, 1.0)
    med, low, high = (fmt.format(value[k] * scale) for k in ("median", "min", "max"))
    return med if low == high else f"{med} [{low}..{high}]"


def table(result: dict[str, Any]) -> str:
    """Both modes side by side with the ratio."""
    pool, inline = result["modes"]["pool"]["summary"], result["modes"]["inline"]["summary"]
    rows = [("metric", "pool", "inline", "pool/inline")]
    for key, label, fmt in METRICS:
        ratio = result["ratio_pool_over_inline"][key]
        rows.append(
            (
                label,
                cell(pool[key], key, fmt),
                cell(inline[key], key, fmt),
                f"{ratio:.2f}" if ratio is not None else "n/a",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(
            [
                row[0].ljust(widths[0]),
                *(text.rjust(w) for text, w in zip(row[1:], widths[1:], strict=True)),
            ]
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every repetition of every mode; the result as a JSON-ready dict."""
    bench = Bench(args.ping_interval)
    payload = memoryview(os.urandom(int(args.size * MIB)))
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    # warm-up: imports, caches and first-connection costs stay out of the figures
    for mode in MODES:
        await bench.transfer_run(mode, payload[:MIB])
    for rep in range(args.repeat):
        order = MODES if rep % 2 == 0 else MODES[::-1]
        for mode in order:
            gc.collect()
            run = await bench.transfer_run(mode, payload)
            print(
                f"  #{rep + 1} {mode:6} {run.throughput_mb_s:7.1f} MB/s  "
                f"RTT p50 {math.nan if run.rtt_p50_ms is None else run.rtt_p50_ms:.2f} ms  "
                f"peak tasks {run.peak_tasks}",
                flush=True,
            )
            runs[mode].append(run)
        for mode in order:
            run = runs[mode][-1]
            await bench.allocation_run(mode, payload, run)
            print(
                f"  #{rep + 1} {mode:6} {run.alloc_bytes_per_mib / 1024:7.0f} KiB allocated "
                f"per MiB (traced run {run.alloc_run_seconds:.1f} s)",
                flush=True,
            )
    if kwik.get_global_worker_pool() is not None:
        raise RuntimeError("the worker pool outlived every session")
    summaries = {mode: summarize(runs[mode]) for mode in MODES}
    return {
        "benchmark": "kwik worker pool vs inline record processing",
        "settings": {
            "size_mib": args.size,
            "repeat": args.repeat,
            "write_size": WRITE_SIZE,
            "ping_interval_s": args.ping_interval,
            "datagram_read_in_allocation_runs": DATAGRAM_READ,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "kwik": kwik.__version__,
        },
        "modes": {
            mode: {"runs": [asdict(run) for run in runs[mode]], "summary": summaries[mode]}
            for mode in MODES
        },
        "ratio_pool_over_inline": ratios(summaries["pool"], summaries["inline"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.worker_pool_test.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", type=float, default=16, help="MiB per transfer (16)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per mode (3)")
    parser.add_argument(
        "--ping-interval", type=float, default=0.002, help="seconds between pings (0.002)"
    )
    parser.add_argument("--quick", action="store_true", help="short pass: 2 MiB, 1 repetition")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeat = 2, 1
    if args.size <= 0 or args.repeat < 1 or args.ping_interval < 0:
        parser.error("--size and --repeat must be positive, --ping-interval not negative")
    print(
        f"kwik worker pool vs inline: {args.size:g} MiB client->server, {args.repeat} "
        f"repetition(s), pings every {args.ping_interval * 1000:g} ms, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        result = asyncio.run(run_bench(args))
    except (kwik.KwikError, RuntimeError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    print("(median [min..max] over the repetitions; allocations from separate traced runs)")
    if args.json:
        path = Path(args.json)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON written to {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
