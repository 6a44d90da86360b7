"""Byte-exact transfers against fault servers, and a command line measuring them under loss.

The transfer functions dial a :mod:`tests.faults.peer` server with default ``kwik.Config``,
move ``size`` bytes of the pattern of ``seed``, check the SHA-256 of what arrived, and return
the seconds the transfer took (from the request to the last byte or the server's digest).
:func:`upload_over` and :func:`download_over` do the same on a session the caller holds (the
blackout tests watch its paths while the transfer runs).

The command line measures them at each loss rate (root only; the loss applies to both
directions of every path), by default 4 MiB at 1, 5, 10 and 20 %; ``--against-aioquic`` adds
the same transfers over raw aioquic (:mod:`tests.faults.rawquic`, same settings, same lab,
same loss, run in turn with kwik's) and the ratio of the two::

    python -m tests.faults.loss --against-aioquic
    python -m tests.faults.loss --loss 1 5 20 --size 16 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import kwik

from .lab import Certificates, LossLab, PeerProcess, loss_unavailable_reason
from .peer import pattern_chunks, pattern_sha256, read_all, read_line, request
from .rawquic import raw_download, raw_upload

__all__ = [
    "TransferError",
    "download",
    "download_over",
    "split_download",
    "upload",
    "upload_over",
]

MIB = 1024 * 1024


class TransferError(AssertionError):
    """What arrived is not what was sent."""


async def upload_over(session: kwik.Session, size: int, seed: int) -> float:
    """Client -> server on ``session``: the server's digest of ``size`` pattern bytes must
    match."""
    started = time.monotonic()
    stream = await request(session, "UPLOAD")
    for piece in pattern_chunks(seed, 0, size):
        await stream.write(piece)
    await stream.close()
    digest, length = (await read_line(stream)).split()
    elapsed = time.monotonic() - started
    if int(length) != size or digest != pattern_sha256(seed, size):
        raise TransferError(f"upload of {size} bytes arrived as {length} bytes, sha256 {digest}")
    return elapsed


async def download_over(session: kwik.Session, size: int, seed: int) -> float:
    """Server -> client on ``session``: the ``size`` bytes read to EOF must hash as the
    pattern."""
    started = time.monotonic()
    stream = await request(session, f"DOWNLOAD {size} {seed}")
    await stream.close()
    digest = hashlib.sha256()
    length = await read_all(stream, digest)
    elapsed = time.monotonic() - started
    if length != size or digest.hexdigest() != pattern_sha256(seed, size):
        raise TransferError(f"download of {size} bytes arrived as {length} bytes (bad digest)")
    return elapsed


async def upload(
    addr: str, tls: kwik.TLSConfig, size: int, seed: int, config: kwik.Config | None = None
) -> float:
    """:func:`upload_over` on a new session to ``addr`` (closed afterwards)."""
    session = await kwik.dial_addr(addr, tls, config or kwik.Config())
    try:
        return await upload_over(session, size, seed)
    finally:
        await session.close()


async def download(
    addr: str, tls: kwik.TLSConfig, size: int, seed: int, config: kwik.Config | None = None
) -> float:
    """:func:`download_over` on a new session to ``addr`` (closed afterwards)."""
    session = await kwik.dial_addr(addr, tls, config or kwik.Config())
    try:
        return await download_over(session, size, seed)
    finally:
        await session.close()


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


TransferJob = Callable[[], Awaitable[float]]


async def _timed(job: TransferJob, timeout: float) -> float | str:
    """The seconds ``job`` took, or the name of what went wrong (a timeout, a bad transfer,
    a closed session)."""
    try:
        async with asyncio.timeout(timeout):
            return await job()
    except (TimeoutError, AssertionError, kwik.KwikError, ConnectionError) as exc:
        return type(exc).__name__


def _median(results: list[float | str]) -> float | str:
    """The median of the runs, or the first failure (a failed run fails the cell)."""
    for result in results:
        if isinstance(result, str):
            return result
    return statistics.median(r for r in results if not isinstance(r, str))


def _cell(result: float | str) -> str:
    return f"{result:.2f}" if isinstance(result, float) else result


def _ratio(kwik_result: float | str, raw_result: float | str) -> str:
    if isinstance(kwik_result, str) or isinstance(raw_result, str) or raw_result <= 0:
        return "-"
    return f"{kwik_result / raw_result:.2f}x"


async def _measure(
    losses: list[float], size: int, timeout: float, runs: int, against_aioquic: bool
) -> int:
    """Print one row per loss rate; return how many cells failed."""
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kwik-faults-") as tmp, LossLab(2) as lab:
        certs = Certificates(Path(tmp), [lab.host(0), lab.host(1)])
        tls = certs.client_tls()
        peers: list[PeerProcess] = []
        try:
            for index in (0, 1):
                peers.append(
                    await PeerProcess.start(certs.serve_args(lab.host(index)), lab.prefix(index))
                )
            primary, relay = peers
            raw: PeerProcess | None = None
            if against_aioquic:  # beside the kwik primary: the same namespace, the same loss
                raw = await PeerProcess.start(
                    certs.serve_args(lab.host(0)), lab.prefix(0), module="tests.faults.rawquic"
                )
                peers.append(raw)
            jobs: dict[str, TransferJob] = {
                "kwik up": lambda: upload(primary.addr, tls, size, 1),
                "kwik down": lambda: download(primary.addr, tls, size, 2),
            }
            if raw is not None:
                raw_addr = raw.addr
                jobs["aioquic up"] = lambda: raw_upload(raw_addr, certs.cert_pem, size, 1)
                jobs["aioquic down"] = lambda: raw_download(raw_addr, certs.cert_pem, size, 2)

            async def relay_job() -> float:
                return (await split_download(primary.addr, relay.addr, tls, size, 3))[0]

            jobs["kwik relay down"] = relay_job
            columns: list[str] = []
            for way in ("up", "down"):
                columns.append(f"kwik {way}")
                if raw is not None:
                    columns += [f"aioquic {way}", f"ratio {way}"]
            columns.append("kwik relay down")
            print(
                f"{size / MIB:g} MiB each way, seconds (median of {runs} run(s)); loss in both "
                f"directions; engine {kwik.Config().engine}"
            )
            print(f"{'loss':>5}  " + "  ".join(f"{c:>{max(len(c), 8)}}" for c in columns))
            for percent in losses:
                samples: dict[str, list[float | str]] = {name: [] for name in jobs}
                with lab.loss(0, percent / 100), lab.loss(1, percent / 100):
                    for _ in range(runs):
                        for name, job in jobs.items():  # in turn: kwik, then aioquic, ...
                            samples[name].append(await _timed(job, timeout))
                results = {name: _median(values) for name, values in samples.items()}
                failures += sum(isinstance(r, str) for r in results.values())
                results_text = {name: _cell(r) for name, r in results.items()}
                if raw is not None:
                    for way in ("up", "down"):
                        results_text[f"ratio {way}"] = _ratio(
                            results[f"kwik {way}"], results[f"aioquic {way}"]
                        )
                row = "  ".join(f"{results_text[c]:>{max(len(c), 8)}}" for c in columns)
                print(f"{percent:4g}%  {row}", flush=True)
        finally:
            for peer in peers:
                await peer.stop()
    return failures


def main(argv: list[str] | None = None) -> int:
    """Measure upload, download and relay download times at each loss rate."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.loss")
    parser.add_argument("--loss", type=float, nargs="+", default=[1, 5, 10, 20], metavar="PERCENT")
    parser.add_argument("--size", type=float, default=4, metavar="MIB")
    parser.add_argument(
        "--runs", type=int, default=1, help="runs of every transfer (the median is shown)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="per transfer"
    )
    parser.add_argument(
        "--against-aioquic",
        action="store_true",
        help="also run each transfer over raw aioquic (same settings) and show the ratio",
    )
    args = parser.parse_args(argv)
    reason = loss_unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    size = int(args.size * MIB)
    failures = asyncio.run(
        _measure(args.loss, size, args.timeout, max(args.runs, 1), args.against_aioquic)
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
