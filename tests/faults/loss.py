"""Byte-exact transfers against fault servers, and a command line measuring them under loss.

The transfer functions dial a :mod:`tests.faults.peer` server with default ``kwik.Config``,
move ``size`` bytes of the pattern of ``seed``, check the SHA-256 of what arrived, and return
the seconds the transfer took (from the request to the last byte or the server's digest).

Measuring, e.g. 16 MiB each way and through a relay at 1, 5 and 20 % loss (root only)::

    python -m tests.faults.loss --loss 1 5 20 --size 16
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import kwik

from .lab import Certificates, LossLab, PeerProcess, loss_unavailable_reason
from .peer import pattern_chunks, pattern_sha256, read_all, read_line, request

__all__ = ["TransferError", "download", "split_download", "upload"]

MIB = 1024 * 1024


class TransferError(AssertionError):
    """What arrived is not what was sent."""


async def upload(
    addr: str, tls: kwik.TLSConfig, size: int, seed: int, config: kwik.Config | None = None
) -> float:
    """Client -> server: the server's digest of ``size`` pattern bytes must match."""
    session = await kwik.dial_addr(addr, tls, config or kwik.Config())
    try:
        started = time.monotonic()
        stream = await request(session, "UPLOAD")
        for piece in pattern_chunks(seed, 0, size):
            await stream.write(piece)
        await stream.close()
        digest, length = (await read_line(stream)).split()
        elapsed = time.monotonic() - started
    finally:
        await session.close()
    if int(length) != size or digest != pattern_sha256(seed, size):
        raise TransferError(f"upload of {size} bytes arrived as {length} bytes, sha256 {digest}")
    return elapsed


async def download(
    addr: str, tls: kwik.TLSConfig, size: int, seed: int, config: kwik.Config | None = None
) -> float:
    """Server -> client: the ``size`` bytes read to EOF must hash as the pattern."""
    session = await kwik.dial_addr(addr, tls, config or kwik.Config())
    try:
        started = time.monotonic()
        stream = await request(session, f"DOWNLOAD {size} {seed}")
        await stream.close()
        digest = hashlib.sha256()
        length = await read_all(stream, digest)
        elapsed = time.monotonic() - started
    finally:
        await session.close()
    if length != size or digest.hexdigest() != pattern_sha256(seed, size):
        raise TransferError(f"download of {size} bytes arrived as {length} bytes (bad digest)")
    return elapsed


async def split_download(
    addr: str,
    relay_addr: str,
    tls: kwik.TLSConfig,
    size: int,
    seed: int,
    config: kwik.Config | None = None,
) -> tuple[float, list[kwik.PathInfo]]:
    """Primary + relay -> client, merged by offset: byte-exact; returns the seconds and the
    session's paths at the end (path 2 is the relay's)."""
    session = await kwik.dial_addr(addr, tls, config or kwik.Config())
    try:
        started = time.monotonic()
        stream = await request(session, f"SPLIT {size} {seed} {relay_addr}")
        await stream.close()
        digest = hashlib.sha256()
        length = await read_all(stream, digest)
        elapsed = time.monotonic() - started
        paths = session.paths
    finally:
        await session.close()
    if length != size or digest.hexdigest() != pattern_sha256(seed, size):
        raise TransferError(f"split download of {size} bytes arrived as {length} bytes")
    return elapsed, paths


async def _measure(losses: list[float], size: int, timeout: float) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kwik-faults-") as tmp, LossLab(2) as lab:
        certs = Certificates(Path(tmp), [lab.host(0), lab.host(1)])
        tls = certs.client_tls()
        primary = await PeerProcess.start(certs.serve_args(lab.host(0)), lab.prefix(0))
        relay = await PeerProcess.start(certs.serve_args(lab.host(1)), lab.prefix(1))
        try:
            print(f"{'loss':>5} {'upload':>10} {'download':>10} {'relay':>10}   ({size} bytes)")
            for percent in losses:
                row: list[str] = []
                with lab.loss(0, percent / 100), lab.loss(1, percent / 100):
                    jobs = (
                        lambda: upload(primary.addr, tls, size, 1),
                        lambda: download(primary.addr, tls, size, 2),
                        lambda: split_download(primary.addr, relay.addr, tls, size, 3),
                    )
                    for job in jobs:
                        try:
                            async with asyncio.timeout(timeout):
                                result = await job()
                            seconds = result if isinstance(result, float) else result[0]
                            row.append(f"{seconds:9.1f}s")
                        except (TimeoutError, TransferError, kwik.KwikError) as exc:
                            failures += 1
                            row.append(f"{type(exc).__name__:>10}")
                print(f"{percent:4g}% {' '.join(row)}", flush=True)
        finally:
            await primary.stop()
            await relay.stop()
    return failures


def main(argv: list[str] | None = None) -> int:
    """Measure upload, download and relay download times at each loss rate."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.loss")
    parser.add_argument("--loss", type=float, nargs="+", default=[1, 5, 20], metavar="PERCENT")
    parser.add_argument("--size", type=int, default=16, metavar="MIB")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    reason = loss_unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    size = args.size * MIB
    return 1 if asyncio.run(_measure(args.loss, size, args.timeout)) else 0


if __name__ == "__main__":
    sys.exit(main())
