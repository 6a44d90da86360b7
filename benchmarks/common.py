"""What both systems share: QUIC settings, the application protocol, event loops, statistics.

The benchmark application is the same for kwik and for raw aioquic, written once against the
small :class:`ByteStream` interface that a ``kwik.Stream`` already satisfies and that
:class:`benchmarks.peer_aioquic.RawStream` implements over aioquic's public API. Every request
is one bidirectional stream that starts with a header line:

``UP``
    the client sends bytes until FIN; the server counts them and answers one JSON line, then FIN.
``DOWN <n>``
    the server sends ``n`` bytes, then FIN.
``ECHO``
    the server writes back everything it reads, until FIN.
``PART <offset> <length> <total>`` (kwik secondary server)
    the server writes ``length`` bytes at ``offset`` of the logical stream, FIN at ``total``.
``RELAY <host:port>`` / ``SPLIT <n>`` (kwik primary server)
    recruit a secondary server; then serve ``n`` bytes, half from each server.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "CHUNK",
    "MIB",
    "ByteStream",
    "QuicSettings",
    "read_header",
    "run_loop",
    "summarize",
]

MIB = 1024 * 1024
#: Size of each application write (and of each read request).
CHUNK = 64 * 1024
#: One block of zeros, the payload of every write.
ZEROS = bytes(CHUNK)
#: Longest header line accepted.
MAX_HEADER = 1024

T = TypeVar("T")


class ByteStream(Protocol):
    """The part of a stream the benchmark application uses (``kwik.Stream`` satisfies it)."""

    async def read(self, n: int = 65536) -> bytes: ...

    async def write(self, data: bytes | bytearray | memoryview) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class QuicSettings:
    """QUIC settings applied identically to kwik (through ``kwik.Config``) and to raw aioquic
    (through ``QuicConfiguration``)."""

    max_datagram_size: int = 1200
    congestion_control: str = "reno"
    idle_timeout: float = 60.0
    #: initial flow-control credit of a stream (kwik: ``Config.path_receive_window``)
    max_stream_data: int = 2 * MIB
    #: initial connection-level credit (what kwik derives from ``path_receive_window``)
    max_data: int = 4 * MIB
    #: the QUIC engine of both systems: kwik's ``Config.engine``, and the raw baseline's
    #: (aioquic: :mod:`benchmarks.peer_aioquic`; qh3: :mod:`benchmarks.peer_raw`, with kwik's
    #: UDP I/O)
    engine: str = "aioquic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuicSettings:
        return cls(**data)


async def read_header(stream: ByteStream) -> tuple[str, bytes]:
    """Read the request line; return it (without the newline) and the bytes read past it.

    Raises:
        ValueError: no newline within :data:`MAX_HEADER` bytes, or EOF first.
    """
    buf = bytearray()
    while True:
        data = await stream.read(CHUNK)
        if not data:
            raise ValueError(f"EOF before the header line ({bytes(buf[:40])!r})")
        buf += data
        end = buf.find(b"\n")
        if end >= 0:
            return buf[:end].decode("ascii"), bytes(buf[end + 1 :])
        if len(buf) > MAX_HEADER:
            raise ValueError("header line too long")


async def read_to_eof(stream: ByteStream) -> bytes:
    """Read until FIN and return everything."""
    parts: list[bytes] = []
    while True:
        data = await stream.read(CHUNK)
        if not data:
            return b"".join(parts)
        parts.append(data)


async def write_zeros(stream: ByteStream, size: int) -> None:
    """Write ``size`` zero bytes in :data:`CHUNK`-sized writes."""
    view = memoryview(ZEROS)
    left = size
    while left > 0:
        n = min(left, CHUNK)
        await stream.write(ZEROS if n == CHUNK else view[:n])
        left -= n


def run_loop(loop_name: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh ``asyncio`` or ``uvloop`` event loop."""
    if loop_name == "uvloop":
        import uvloop

        result: T = uvloop.run(main())
        return result
    if loop_name != "asyncio":
        raise ValueError(f"unknown loop {loop_name!r}")
    return asyncio.run(main())


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank, ``0 < fraction <= 1``)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize(samples: Sequence[float], unit: str) -> dict[str, Any]:
    """Median and spread (min/max) of ``samples``, keeping the samples themselves."""
    if not samples:
        return {"unit": unit, "n": 0, "median": None, "min": None, "max": None, "samples": []}
    return {
        "unit": unit,
        "n": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": list(samples),
    }


def dumps_line(tag: str, payload: dict[str, Any]) -> str:
    """One protocol line between a worker and the harness: ``TAG {json}``."""
    return f"{tag} {json.dumps(payload, separators=(',', ':'))}"


async def gather_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that cancels the rest when one fails."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
