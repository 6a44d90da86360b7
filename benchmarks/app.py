"""The benchmark application, written once for both systems (see :mod:`benchmarks.common`).

Servers call :func:`serve_stream` for every stream a client opens. Clients call the ``client_*``
coroutines with ``open_stream``, a coroutine function returning a new stream on an established
connection. Timings are taken on the client, from just before the request's stream is opened to
the last byte of the answer: handshakes are never included (except in ``sessions``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .alloc import AllocationMeter
from .common import CHUNK, ByteStream, gather_all, percentile, read_header, read_to_eof, write_zeros

__all__ = [
    "ServerContext",
    "client_download",
    "client_rtt",
    "client_streams",
    "client_upload",
    "serve_stream",
]

OpenStream = Callable[[], Awaitable[ByteStream]]

#: Payload of one ``rtt`` ping.
PING_SIZE = 20


@dataclass
class ServerContext:
    """What a server's request handlers need beyond the stream."""

    #: returns the kwik worker pool's stats as a dict, or None (raw aioquic, or no pool)
    pool_stats: Callable[[], dict[str, Any] | None] = lambda: None
    #: kwik primary servers: handles ``RELAY`` and ``SPLIT`` (see :mod:`benchmarks.peer_kwik`)
    kwik_command: Callable[[ByteStream, str, list[str]], Awaitable[None]] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task that is kept referenced until it ends."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            traceback.print_exception(exc, file=sys.stderr)


# --- server side --------------------------------------------------------------------------------


async def serve_stream(stream: ByteStream, ctx: ServerContext) -> None:
    """Answer one request (see :mod:`benchmarks.common` for the commands)."""
    header, rest = await read_header(stream)
    command, *args = header.split()
    if command == "UP":
        await _serve_upload(stream, rest, ctx, alloc="alloc" in args)
    elif command == "DOWN":
        await write_zeros(stream, int(args[0]))
        await stream.close()
    elif command == "ECHO":
        await _serve_echo(stream, rest)
    elif command == "PART":
        offset, length, total = (int(a) for a in args)
        stream.set_write_offset(offset)  # type: ignore[attr-defined]
        await write_zeros(stream, length)
        stream.set_write_offset(total)  # type: ignore[attr-defined]
        await stream.close()
    elif ctx.kwik_command is not None and command in ("RELAY", "SPLIT"):
        await ctx.kwik_command(stream, command, args)
    else:
        raise ValueError(f"unknown request {header!r}")


async def _serve_upload(
    stream: ByteStream, rest: bytes, ctx: ServerContext, *, alloc: bool
) -> None:
    meter = AllocationMeter() if alloc else None
    if meter is not None:
        meter.start()
    received = len(rest)
    while True:
        data = await stream.read(CHUNK)
        if not data:
            break
        received += len(data)
    reply: dict[str, Any] = {"bytes": received}
    if meter is not None:
        reply["alloc"] = meter.stop()
    reply["pool"] = ctx.pool_stats()
    await stream.write(json.dumps(reply).encode() + b"\n")
    await stream.close()


async def _serve_echo(stream: ByteStream, rest: bytes) -> None:
    if rest:
        await stream.write(rest)
    while True:
        data = await stream.read(CHUNK)
        if not data:
            break
        await stream.write(data)
    await stream.close()


# --- client side --------------------------------------------------------------------------------


async def _upload(open_stream: OpenStream, size: int, alloc: bool) -> dict[str, Any]:
    stream = await open_stream()
    await stream.write(b"UP alloc\n" if alloc else b"UP\n")
    await write_zeros(stream, size)
    await stream.close()
    reply: dict[str, Any] = json.loads(await read_to_eof(stream))
    if reply["bytes"] != size:
        raise RuntimeError(f"server received {reply['bytes']} bytes of {size}")
    return reply


async def client_upload(open_stream: OpenStream, size: int, alloc: bool = False) -> dict[str, Any]:
    """Send ``size`` bytes on one stream; MB/s until the server confirmed them all."""
    start, cpu = time.perf_counter(), time.process_time()
    reply = await _upload(open_stream, size, alloc)
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "mbps": size / elapsed / 1e6,
        "bytes": size,
        "cpu_seconds": time.process_time() - cpu,
        "server": reply,
    }


async def _download(open_stream: OpenStream, header: bytes, size: int) -> None:
    stream = await open_stream()
    await stream.write(header)
    await stream.close()
    received = 0
    while True:
        data = await stream.read(CHUNK)
        if not data:
            break
        received += len(data)
    if received != size:
        raise RuntimeError(f"received {received} bytes of {size}")


async def client_download(
    open_stream: OpenStream, size: int, header: bytes | None = None
) -> dict[str, Any]:
    """Fetch ``size`` bytes on one stream (``DOWN <size>`` unless ``header`` is given)."""
    start, cpu = time.perf_counter(), time.process_time()
    await _download(open_stream, header or f"DOWN {size}\n".encode(), size)
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "mbps": size / elapsed / 1e6,
        "bytes": size,
        "cpu_seconds": time.process_time() - cpu,
    }


async def client_streams(open_stream: OpenStream, count: int, size: int) -> dict[str, Any]:
    """Send ``size`` bytes on each of ``count`` concurrent streams; aggregate MB/s."""
    start, cpu = time.perf_counter(), time.process_time()
    await gather_all([_upload(open_stream, size, False) for _ in range(count)])
    elapsed = time.perf_counter() - start
    total = count * size
    return {
        "seconds": elapsed,
        "mbps": total / elapsed / 1e6,
        "bytes": total,
        "cpu_seconds": time.process_time() - cpu,
    }


async def client_rtt(open_stream: OpenStream, count: int, warmup: int) -> dict[str, Any]:
    """Ping-pong ``PING_SIZE`` bytes ``count`` times on one stream (after ``warmup`` rounds);
    p50 and p99 of the round trips in microseconds."""
    stream = await open_stream()
    await stream.write(b"ECHO\n")
    ping = b"p" * PING_SIZE
    samples: list[float] = []
    cpu = 0.0
    for i in range(warmup + count):
        if i == warmup:
            cpu = time.process_time()
        start = time.perf_counter_ns()
        await stream.write(ping)
        got = 0
        while got < PING_SIZE:
            data = await stream.read(PING_SIZE - got)
            if not data:
                raise RuntimeError("EOF during ping-pong")
            got += len(data)
        if i >= warmup:
            samples.append((time.perf_counter_ns() - start) / 1000)
    cpu = time.process_time() - cpu
    await stream.close()
    await read_to_eof(stream)
    return {
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "mean_us": sum(samples) / len(samples),
        "count": len(samples),
        "cpu_us_per_round_trip": cpu / count * 1e6,
    }
