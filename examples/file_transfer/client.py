"""The file_transfer client: download one file from a primary server and its relays.

The client dials the primary only. The primary recruits the relays (``add_relay``), so the
client's session gains a path to each; every server writes chunk records into the one logical
stream the client opened, and the client reads it as an ordinary stream: metadata, then records
in order, acknowledging each window. At the end it checks the size and SHA-256 against the
metadata and prints what each path carried.

If a relay path ends mid-download (kwik calls the ``session.add_path_closed_callback``
callback), the client lists the chunks it lacks from ``stream.received_ranges()`` and asks the
primary for them on a new stream (RECOVER, see :mod:`~examples.file_transfer.protocol`); the
primary sends its lost relay's chunks itself. The report names the chunks the primary took over
and how long that took. If the primary dies, the download fails with "lost the primary server"
once kwik declares its path failed (about 3 s after the last datagram on a busy path, at most
15 s on an idle one, with default settings).

    python -m examples.file_transfer.client FILE                # from 127.0.0.1:4433
    python -m examples.file_transfer.client -k FILE --out copy.bin --progress
    python -m examples.file_transfer.client --ca cert.pem --addr host:4433 FILE
    python -m examples.file_transfer.client -k FILE --plot paths.png    # throughput per path

The exit status is 0 only when the copy is exact. The client verifies the relays' certificates
with the same trust settings as the primary's (``--ca`` may hold every certificate); ``-k``
verifies none.

Library::

    result = await download("127.0.0.1:4433", "big.bin", kwik.TLSConfig(cadata=cert_pem))
    assert result.exact
    print(result.taken_over)        # chunks the primary sent for a relay that went away
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import kwik

from .._common import client_tls, end_progress_line, progress_line_drawn, setup_logging
from .protocol import (
    ACK,
    APP_ERROR,
    DEFAULT_PRIMARY_ADDR,
    LOGGER,
    RECORD_HEADER,
    Layout,
    Metadata,
    ProtocolError,
    Recover,
    TakenOver,
    chunk_runs,
    encode_message,
    failover_config,
    missing_chunks,
    read_message,
)

__all__ = [
    "ProgressBar",
    "Recovery",
    "TransferError",
    "TransferResult",
    "download",
    "format_report",
    "main",
]


class TransferError(Exception):
    """The download failed before the end of the stream (the reason is the message)."""


@dataclass(frozen=True)
class Recovery:
    """A relay path that ended during the download, and what the primary did about it."""

    path_id: int
    address: str
    state: str
    """The path's final state: ``"failed"`` (its peer went silent or broke it) or ``"closed"``."""
    reason: str
    failed_at: float
    """Seconds into the download when kwik reported the path's end."""
    missing: tuple[int, ...]
    """Chunks not (completely) received at that moment, from the read position on: the
    relay's undelivered ones among them, and others still on their way."""
    taken_over: tuple[int, ...] | None
    """The chunks the primary took over (None: it never answered)."""
    duration: float | None
    """Seconds from the path's end until the primary had answered and the last chunk it took
    over was read (None: not completed)."""

    def describe(self) -> str:
        """One line for the report."""
        head = (
            f"relay path {self.path_id} ({self.address}) {self.state} "
            f"{self.failed_at:.2f} s in ({self.reason or 'no reason given'}): "
        )
        if self.taken_over is None:
            return head + "the primary did not answer the recovery request"
        chunks = _chunk_list(self.taken_over)
        done = f" in {self.duration:.2f} s" if self.duration is not None else ""
        if not self.taken_over:
            return head + f"nothing to take over (it had delivered its chunks){done}"
        count = len(self.taken_over)
        return head + f"the primary took over {count} chunk{'s' * (count != 1)} [{chunks}]{done}"


def _chunk_list(chunks: tuple[int, ...]) -> str:
    return ", ".join(
        str(first) if end == first + 1 else f"{first}-{end - 1}"
        for first, end in chunk_runs(list(chunks))
    )


@dataclass
class _Lost:
    """A recovery in progress."""

    info: kwik.PathInfo
    failed_at: float
    missing: tuple[int, ...]
    taken_over: tuple[int, ...] | None = None
    done_at: float | None = None


@dataclass
class _Recoveries:
    """The client's side of recovery: when a relay path ends mid-download, ask the primary
    (on a new stream) for the chunks that are missing, and note what it took over.

    Installed with ``session.add_path_closed_callback`` before the download starts.
    """

    session: kwik.Session
    started: float
    stream: kwik.Stream | None = None
    layout: Layout | None = None
    next_index: int = 0
    """The first chunk not read yet."""
    done: bool = False
    lost: list[_Lost] = field(default_factory=list)
    early: list[tuple[kwik.PathInfo, float]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def on_path_closed(self, info: kwik.PathInfo) -> None:
        """Path-closed callback (synchronous, on the event loop)."""
        if info.is_primary or self.done or self.session.is_closed:
            return  # the primary's end is the session's: the read raises
        now = time.monotonic()
        LOGGER.warning(
            "client: relay path %d (%s) %s: %s",
            info.path_id,
            info.address,
            info.state,
            info.close_reason,
        )
        if self.stream is None:
            self.early.append((info, now))  # before the metadata: handled by start()
        else:
            self._request(info, now)

    def start(self, stream: kwik.Stream, layout: Layout) -> None:
        """The download's stream and layout are known: handle paths lost before."""
        self.stream, self.layout = stream, layout
        for info, when in self.early:
            self._request(info, when)
        self.early.clear()

    def _request(self, info: kwik.PathInfo, when: float) -> None:
        assert self.stream is not None and self.layout is not None
        # the path is gone: what it has not delivered by now never will be
        missing = missing_chunks(self.layout, self.stream.received_ranges(), self.next_index)
        lost = _Lost(info, when - self.started, tuple(missing))
        self.lost.append(lost)
        task = asyncio.get_running_loop().create_task(self._ask_primary(lost, self.stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _ask_primary(self, lost: _Lost, stream: kwik.Stream) -> None:
        request = Recover(stream.stream_id, lost.info.path_id, chunk_runs(list(lost.missing)))
        try:
            control = await self.session.open_stream_sync()
            await control.write(request.encode())
            await control.close()
            payload = await read_message(control)
            if payload is None:
                raise ProtocolError("the primary ended the recovery stream without answering")
            lost.taken_over = TakenOver.decode(payload).chunks
            await control.read(1)  # the primary's FIN
        except (kwik.KwikError, ProtocolError) as exc:
            LOGGER.warning("client: recovery of path %d failed: %s", lost.info.path_id, exc)
            return
        LOGGER.warning(
            "client: the primary took over chunks %s of relay path %d",
            list(lost.taken_over),
            lost.info.path_id,
        )
        self._check(lost, time.monotonic())

    def read_up_to(self, next_index: int) -> None:
        """The reader has read every chunk below ``next_index``."""
        self.next_index = next_index
        now = time.monotonic()
        for lost in self.lost:
            self._check(lost, now)

    def _check(self, lost: _Lost, now: float) -> None:
        if lost.done_at is None and lost.taken_over is not None:
            if not lost.taken_over or max(lost.taken_over) < self.next_index:
                lost.done_at = now

    async def finish(self, timeout: float) -> tuple[Recovery, ...]:
        """The download is complete: wait (at most ``timeout`` s) for the primary's answers."""
        self.done = True
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        for task in list(self.tasks):
            task.cancel()
        return tuple(
            Recovery(
                path_id=lost.info.path_id,
                address=lost.info.address,
                state=lost.info.state,
                reason=lost.info.close_reason,
                failed_at=lost.failed_at,
                missing=lost.missing,
                taken_over=lost.taken_over,
                duration=(
                    lost.done_at - lost.failed_at - self.started
                    if lost.done_at is not None
                    else None
                ),
            )
            for lost in self.lost
        )

    async def abandon(self) -> None:
        """The download failed: stop asking."""
        self.done = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass(frozen=True)
class TransferResult:
    """The outcome of one download."""

    file_name: str
    out_path: Path
    expected_size: int
    expected_sha256: str
    received_size: int
    sha256: str
    chunks: int
    windows: int
    elapsed: float
    paths: tuple[kwik.PathInfo, ...]
    """The client session's paths right after the stream ended (path 1: the primary)."""
    path_series: dict[str, Any] | None = None
    """Per-path bytes received over time (``benchmarks.paths.PathSampler``), when the
    download was asked to sample them."""
    recoveries: tuple[Recovery, ...] = ()
    """Relay paths that ended during the download and the chunks the primary took over."""

    @property
    def taken_over(self) -> list[int]:
        """Every chunk the primary took over from a relay that went away."""
        return sorted(i for r in self.recoveries for i in (r.taken_over or ()))

    @property
    def exact(self) -> bool:
        """The copy has the announced size and SHA-256."""
        return self.received_size == self.expected_size and self.sha256 == self.expected_sha256

    @property
    def bytes_received(self) -> int:
        """Bytes received on every path together (kwik records, so a little above the file)."""
        return sum(p.bytes_received for p in self.paths)

    def path_share(self, path_id: int) -> float:
        """Fraction of the received bytes that came on path ``path_id``."""
        total = self.bytes_received
        got = sum(p.bytes_received for p in self.paths if p.path_id == path_id)
        return got / total if total else 0.0


class ProgressBar:
    """A one-line text progress bar, redrawn at most ten times a second."""

    def __init__(self, total: int, out: TextIO, *, width: int = 30) -> None:
        self.total = total
        self.out = out
        self.width = width
        self.done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = -1

    def update(self, n: int) -> None:
        """Count ``n`` more bytes; redraw if it is time."""
        self.done += n
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or self.done >= self.total:
            self._draw(now)

    def finish(self) -> None:
        """Draw the final state (unless already shown) and end the line."""
        if self._drawn != self.done:
            self._draw(time.monotonic())
        end_progress_line()

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._drawn = self.done
        fraction = self.done / self.total if self.total else 1.0
        filled = round(fraction * self.width)
        rate = self.done / max(now - self._started, 1e-6)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% "
            f"{_mib(self.done)}/{_mib(self.total)} MiB {_mib(rate)} MiB/s"
        )
        self.out.flush()
        progress_line_drawn(self.out)  # a log line or a message ends it first


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f}"


async def download(
    addr: str,
    file_name: str,
    tls: kwik.TLSConfig | None = None,
    *,
    out: str | Path | None = None,
    config: kwik.Config | None = None,
    progress: TextIO | None = None,
    timeout: float = 30.0,
    sample_paths: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> TransferResult:
    """Download ``file_name`` from the primary server at ``addr`` into ``out``.

    ``out`` defaults to ``downloaded_<file_name>`` in the current directory. ``progress``, when
    given, receives a text progress bar; ``on_progress``, when given, is called with the file
    bytes received so far after each chunk. ``timeout`` bounds every wait for the servers
    (seconds without a new record). ``sample_paths``, when given, samples every path's bytes
    received at that interval (seconds) into ``TransferResult.path_series``. The result tells
    whether the copy is exact; a copy with the wrong size or digest is a result, not an error.

    A relay path that ends mid-download (its server died, or the path failed) costs nothing:
    the client asks the primary for the chunks that never arrived, the primary sends them
    itself, and ``TransferResult.recoveries`` says which and how long it took.

    Raises:
        TransferError: the server refused, broke the protocol, or went silent; or the primary
            server is gone (its path failed: the session closed, within kwik's liveness bound).
        kwik.KwikError: the session could not be established.
    """
    started = time.monotonic()
    out_path = Path(out) if out is not None else Path(f"downloaded_{Path(file_name).name}")
    session = await kwik.dial_addr(addr, tls, config if config is not None else failover_config())
    recoveries = _Recoveries(session, started)
    session.add_path_closed_callback(recoveries.on_path_closed)
    sampler = None
    if sample_paths is not None:
        from benchmarks.paths import PathSampler  # the repository's sampler, shared with benchmarks

        sampler = PathSampler(session, sample_paths)
        sampler.start()
    series: dict[str, Any] | None = None
    failure: str | None = None
    received = [0]  # file bytes so far, for the error message

    def count(n: int) -> None:
        received[0] = n
        if on_progress is not None:
            on_progress(n)

    meta: Metadata | None = None
    try:
        async with asyncio.timeout(timeout):
            stream = await session.open_stream_sync()
            await stream.write(encode_message(file_name.encode()))
            header = await read_message(stream)
        if header is None:
            raise TransferError("the server ended the stream without metadata")
        meta, layout = Metadata.decode(header)
        LOGGER.info(
            "client: %s, %d bytes, %d chunks in %d windows, sha256 %s",
            meta.file_name,
            meta.file_size,
            layout.total_chunks,
            layout.total_windows,
            meta.sha256,
        )
        recoveries.start(stream, layout)
        bar = ProgressBar(meta.file_size, progress) if progress is not None else None
        size, digest = await _receive(stream, layout, out_path, bar, timeout, recoveries, count)
        if bar is not None:
            bar.finish()
        done = await recoveries.finish(timeout)
        await stream.close()
        paths = tuple(session.paths)
        if sampler is not None:
            series = await sampler.stop()
    except ProtocolError as exc:
        failure = str(exc)
        raise TransferError(failure) from None
    except asyncio.IncompleteReadError as exc:
        failure = f"the stream ended early ({len(exc.partial)} of {exc.expected} bytes read)"
        raise TransferError(failure) from None
    except TimeoutError:
        failure = f"no progress for {timeout} s"
        raise TransferError(failure) from None
    except kwik.SessionClosedError as exc:
        # the primary path carries the session: its end is the download's
        failure = (
            f"lost the primary server {addr} after "
            f"{received[0]} of {meta.file_size if meta else '?'} bytes: {exc}"
        )
        raise TransferError(failure) from None
    finally:
        session.remove_path_closed_callback(recoveries.on_path_closed)
        if failure is not None:
            await recoveries.abandon()
        if sampler is not None and series is None:
            await sampler.stop()  # the download failed: stop sampling
        if failure is not None:
            await session.close_with_error(APP_ERROR, failure[:200])
        else:
            await session.close()
    return TransferResult(
        file_name=meta.file_name,
        out_path=out_path,
        expected_size=meta.file_size,
        expected_sha256=meta.sha256,
        received_size=size,
        sha256=digest,
        chunks=layout.total_chunks,
        windows=layout.total_windows,
        elapsed=time.monotonic() - started,
        paths=paths,
        path_series=series,
        recoveries=done,
    )


async def _receive(
    stream: kwik.Stream,
    layout: Layout,
    out_path: Path,
    bar: ProgressBar | None,
    idle: float,
    recoveries: _Recoveries,
    count: Callable[[int], None],
) -> tuple[int, str]:
    """Read every record into ``out_path``, acknowledging each window; check the EOF.

    Returns the bytes written and their SHA-256.
    """
    digest = hashlib.sha256()
    size = 0
    loop = asyncio.get_running_loop()
    with out_path.open("wb") as file:
        async with asyncio.timeout(idle) as deadline:
            for index in range(layout.total_chunks):
                header = await stream.readexactly(RECORD_HEADER.size)
                got_index, length = RECORD_HEADER.unpack(header)
                if got_index != index or length != layout.chunk_length(index):
                    raise ProtocolError(
                        f"expected chunk {index} ({layout.chunk_length(index)} bytes) at "
                        f"offset {layout.record_offset(index)}, got chunk {got_index} "
                        f"({length} bytes)"
                    )
                data = await stream.readexactly(length)
                file.write(data)
                digest.update(data)
                size += length
                recoveries.read_up_to(index + 1)
                count(size)
                if bar is not None:
                    bar.update(length)
                window = layout.window_of(index)
                if index == layout.window_chunks(window)[-1]:
                    await stream.write(encode_message(ACK))
                    LOGGER.debug("client: window %d acknowledged", window)
                deadline.reschedule(loop.time() + idle)
            rest = await stream.read(1)
    if rest:
        raise ProtocolError(f"data after the last record (offset {layout.total_length})")
    return size, digest.hexdigest()


def format_report(result: TransferResult) -> list[str]:
    """Human-readable lines: the transfer, what each path carried, and the verdict."""
    rate = result.received_size / max(result.elapsed, 1e-6)
    lines = [
        f"downloaded {result.file_name} -> {result.out_path}: {result.received_size} bytes, "
        f"{result.chunks} chunks in {result.windows} windows, {result.elapsed:.2f} s "
        f"({_mib(rate)} MiB/s)"
    ]
    for path in result.paths:
        role = "primary" if path.is_primary else "relay"
        lines.append(
            f"  path {path.path_id} {role:7} {path.address:21} {path.state:7} "
            f"received {path.bytes_received:>10} bytes "
            f"({result.path_share(path.path_id) * 100:4.1f}%) in {path.packets_received} packets"
        )
    for recovery in result.recoveries:
        lines.append("  " + recovery.describe())
    if result.exact:
        lines.append(f"exact copy: {result.received_size} bytes, sha256 {result.sha256}")
    else:
        lines.append(
            f"MISMATCH: got {result.received_size} bytes sha256 {result.sha256}, "
            f"expected {result.expected_size} bytes sha256 {result.expected_sha256}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of the client: 0 only for an exact copy."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.file_transfer.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", help="name of the file on the servers")
    parser.add_argument("--addr", default=DEFAULT_PRIMARY_ADDR, help="primary server address")
    parser.add_argument("--out", help="where to write the copy (default: downloaded_<FILE>)")
    parser.add_argument("--ca", help="CA certificate(s) (PEM) to verify the servers")
    parser.add_argument(
        "-k",
        "--insecure",
        action="store_true",
        help="do not verify the servers' certificates (the primary's nor the relays')",
    )
    parser.add_argument(
        "--progress", action="store_true", help="progress bar on stderr even if not a tty"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without progress")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="write a PNG chart of the throughput on each path over time (needs matplotlib: "
        "the 'bench' extra)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    show_progress = args.progress or sys.stderr.isatty()
    # -k trusts every server: the relays too (kwik verifies them unless told otherwise)
    config = failover_config(relay_insecure_skip_verify=args.insecure)
    try:
        result = asyncio.run(
            download(
                args.addr,
                args.file,
                client_tls(args.ca, args.insecure),
                out=args.out,
                config=config,
                progress=sys.stderr if show_progress else None,
                timeout=args.timeout,
                sample_paths=0.05 if args.plot else None,
            )
        )
    except KeyboardInterrupt:
        end_progress_line()
        return 130
    except (TransferError, kwik.KwikError, OSError) as exc:
        end_progress_line()  # a download that failed left its bar unfinished
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in format_report(result):
        print(line, flush=True)
    if args.plot and result.path_series is not None:
        from benchmarks.plot import plot_path_throughput

        chart = plot_path_throughput(
            result.path_series, Path(args.plot), title=f"download of {result.file_name}"
        )
        print(f"throughput per path: {chart}", flush=True)
    return 0 if result.exact else 1


if __name__ == "__main__":
    sys.exit(main())
