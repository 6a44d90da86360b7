"""``python -m benchmarks soak --minutes N``: a long mixed workload, watched for leaks and errors.

A primary and a relay server run in their own processes on loopback (the fault suite's
``python -m tests.faults.peer serve``); this process runs ``--workers`` concurrent clients for
``--minutes``. Each client loops over a weighted mix of:

* echo sessions (1-4 streams of 1 KiB-256 KiB each), uploads and downloads (1-4 MiB), and
  downloads split between the primary and the relay (2-8 MiB), every byte checked by SHA-256;
* the fault suite's failing cycles (:mod:`tests.faults.workload`): a protocol violation towards
  the listener, a protocol violation towards a kwik client, a handshake timeout.

Every ``--interval`` seconds a progress line goes to stderr (sessions, bytes, errors, and the
client's and the primary server's RSS, fds and tasks); at the end a summary table goes to
stdout: each figure at the start (after a short warm-up), at the end and at its peak, for the
client, the primary and the relay. Exit status 1 when any operation failed.

    python -m benchmarks soak --minutes 10
    python -m benchmarks soak --minutes 60 --workers 16 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["main"]

MIB = 1024 * 1024


@dataclass
class Totals:
    """What the workers did so far."""

    sessions: int = 0
    bytes: int = 0
    errors: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    #: lines logged at ERROR or above (by kwik, asyncio, anything) while the soak ran
    error_logs: int = 0


@dataclass
class Series:
    """One figure of one process: first, last and peak sample."""

    first: int | None = None
    last: int | None = None
    peak: int | None = None

    def add(self, value: int | None) -> None:
        if value is None:
            return
        if self.first is None:
            self.first = value
        self.last = value
        self.peak = value if self.peak is None else max(self.peak, value)


class _ErrorCounter(logging.Handler):
    """Counts the records at ERROR or above and keeps the first few messages."""

    def __init__(self, totals: Totals) -> None:
        super().__init__(logging.ERROR)
        self.totals = totals

    def emit(self, record: logging.LogRecord) -> None:
        self.totals.error_logs += 1
        if len(self.totals.first_errors) < 10:
            message = record.getMessage().splitlines()[0]
            self.totals.first_errors.append(f"log {record.name}: {message}")


class Soak:
    """The workload and its bookkeeping (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.totals = Totals()
        self.series: dict[tuple[str, str], Series] = {}
        self.random = random.Random(args.seed)
        self.started = 0.0
        logging.getLogger().addHandler(_ErrorCounter(self.totals))

    def _record(self, process: str, stats: dict[str, int] | None) -> None:
        for figure in ("rss", "fds", "tasks", "sessions"):
            value = None if stats is None else stats.get(figure)
            self.series.setdefault((process, figure), Series()).add(value)

    async def run(self) -> int:
        import kwik
        from tests.faults import loss, workload
        from tests.faults.lab import Certificates, PeerProcess
        from tests.faults.peer import echo_over, pattern, process_stats
        from tests.faults.peer import server_stats as peer_stats

        certs = Certificates(self.workdir, ["localhost", "127.0.0.1"])
        tls = certs.client_tls()
        primary = await PeerProcess.start(certs.serve_args())
        relay = await PeerProcess.start(certs.serve_args())
        garbage, garbage_addr = await workload.start_garbage_peer(certs.cert_pem, certs.key_pem)
        mute, mute_addr = workload.mute_socket()
        cycles = workload.Cycles(tls, primary.addr, garbage_addr, mute_addr)

        async def server_stats(peer: PeerProcess) -> dict[str, int] | None:
            try:
                async with asyncio.timeout(10):
                    stats = await peer_stats(peer.addr, tls)
            except (TimeoutError, kwik.KwikError, OSError):
                return None
            stats["sessions"] -= 1  # not the STATS session itself
            return stats

        async def sample() -> dict[str, dict[str, int] | None]:
            client = process_stats()
            client["sessions"] = workload.live_sessions()
            found = {
                "client": client,
                "primary": await server_stats(primary),
                "relay": await server_stats(relay),
            }
            for process, stats in found.items():
                self._record(process, stats)
            return found

        async def echo() -> int:
            size = self.random.randint(1024, 256 * 1024)
            streams = self.random.randint(1, 4)
            session = await kwik.dial_addr(primary.addr, tls)
            try:
                results = await asyncio.gather(
                    *(
                        echo_over(session, pattern(9, s * 977, s * 977 + size))
                        for s in range(streams)
                    )
                )
            finally:
                await session.close()
            return 2 * sum(results)

        async def upload() -> int:
            size = self.random.randint(1, 4) * MIB
            await loss.upload(primary.addr, tls, size, self.random.randint(1, 1000))
            return size

        async def download() -> int:
            size = self.random.randint(1, 4) * MIB
            await loss.download(primary.addr, tls, size, self.random.randint(1, 1000))
            return size

        async def split() -> int:
            size = self.random.randint(2, 8) * MIB
            await loss.split_download(
                primary.addr, relay.addr, tls, size, self.random.randint(1, 1000)
            )
            return size

        async def failing(run: Callable[[], Awaitable[None]]) -> int:
            await run()
            return 0

        mix: list[tuple[str, int, Callable[[], Awaitable[int]]]] = [
            ("echo", 40, echo),
            ("upload", 10, upload),
            ("download", 10, download),
            ("split", 10, split),
            ("violation-at-listener", 3, lambda: failing(cycles.violation_at_listener)),
            ("violation-at-client", 3, lambda: failing(cycles.violation_at_client)),
            ("handshake-timeout", 3, lambda: failing(cycles.handshake_timeout)),
        ]
        names = [m[0] for m in mix]
        weights = [m[1] for m in mix]
        operations = {m[0]: m[2] for m in mix}
        deadline = 0.0

        async def worker() -> None:
            while time.monotonic() < deadline:
                name = self.random.choices(names, weights)[0]
                try:
                    async with asyncio.timeout(120):
                        moved = await operations[name]()
                except Exception as exc:  # every failure is counted and the soak goes on
                    self.totals.errors += 1
                    self.totals.failures[name] += 1
                    if len(self.totals.first_errors) < 10:
                        self.totals.first_errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                self.totals.sessions += 1
                self.totals.bytes += moved
                self.totals.operations[name] += 1

        try:
            self.started = time.monotonic()
            await sample()  # before any work: what the processes cost idle
            self.series.clear()
            deadline = time.monotonic() + min(10.0, self.args.minutes * 6)
            await asyncio.gather(*(worker() for _ in range(self.args.workers)))  # warm-up
            await sample()  # the baseline of the table's "start" column
            deadline = self.started + self.args.minutes * 60
            workers = [asyncio.create_task(worker()) for _ in range(self.args.workers)]
            while not all(w.done() for w in workers):
                await asyncio.wait(workers, timeout=self.args.interval)
                self._progress(await sample())
            await asyncio.sleep(1)  # let the last closes settle before the final sample
            self._progress(await sample())
        finally:
            for name, peer in (("primary", primary), ("relay", relay)):
                for line in peer.stderr_text().splitlines():
                    if " ERROR " in line or " CRITICAL " in line:
                        self.totals.error_logs += 1
                        if len(self.totals.first_errors) < 10:
                            self.totals.first_errors.append(f"log ({name}): {line}")
            garbage.close()
            mute.close()
            await primary.stop()
            await relay.stop()
        print(self._table())
        return 1 if self.totals.errors or self.totals.error_logs else 0

    def _progress(self, stats: dict[str, dict[str, int] | None]) -> None:
        elapsed = time.monotonic() - self.started
        total = self.args.minutes * 60
        parts = [
            f"[{_clock(elapsed)}/{_clock(total)}] sessions {self.totals.sessions} "
            f"({self.totals.sessions / max(elapsed, 1e-6):.1f}/s) "
            f"{self.totals.bytes / 1e6:.0f} MB errors {self.totals.errors} "
            f"error-logs {self.totals.error_logs}"
        ]
        for process in ("client", "primary"):
            s = stats[process]
            if s is None:
                parts.append(f"{process} ?")
            else:
                parts.append(
                    f"{process} rss {s['rss'] / 1024:.0f} MiB fds {s['fds']} tasks {s['tasks']} "
                    f"sessions {s['sessions']}"
                )
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def _table(self) -> str:
        t = self.totals
        lines = [
            f"soak: {self.args.minutes:g} min, {self.args.workers} workers: {t.sessions} "
            f"operations ok, {t.bytes / 1e6:.1f} MB checked, {t.errors} failed operations, "
            f"{t.error_logs} ERROR log lines",
            "operations: "
            + ", ".join(f"{k} {v}" for k, v in sorted(t.operations.items()))
            + (
                "; failed: " + ", ".join(f"{k} {v}" for k, v in sorted(t.failures.items()))
                if t.failures
                else ""
            ),
            "",
            f"{'process':8} {'figure':9} {'start':>10} {'end':>10} {'peak':>10} {'end-start':>10}",
        ]
        for (process, figure), series in self.series.items():
            unit = 1024 if figure == "rss" else 1
            name = "rss MiB" if figure == "rss" else figure

            def show(value: int | None, unit: int = unit) -> str:
                return "?" if value is None else f"{value / unit:.0f}"

            growth = (
                None if series.first is None or series.last is None else series.last - series.first
            )
            lines.append(
                f"{process:8} {name:9} {show(series.first):>10} {show(series.last):>10} "
                f"{show(series.peak):>10} {show(growth):>10}"
            )
        for error in t.first_errors:
            lines.append(f"error: {error}")
        return "\n".join(lines)

    def _report(self) -> dict[str, Any]:
        t = self.totals
        return {
            "minutes": self.args.minutes,
            "workers": self.args.workers,
            "sessions": t.sessions,
            "bytes": t.bytes,
            "errors": t.errors,
            "error_logs": t.error_logs,
            "operations": dict(t.operations),
            "failures": dict(t.failures),
            "first_errors": t.first_errors,
            "figures": {
                f"{p}.{f}": {"start": s.first, "end": s.last, "peak": s.peak}
                for (p, f), s in self.series.items()
            },
        }


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # let the finally blocks stop the servers


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return the exit status (1 when an operation failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks soak",
        description="A long mixed kwik workload (clean and failing sessions) against a primary "
        "and a relay server in their own processes, with a progress line and a leak table.",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="duration (default: 5)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds between progress lines"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the operation mix")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.workers < 1 or args.interval <= 0:
        parser.error("--minutes and --interval must be positive, --workers at least 1")
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory(prefix="kwik-soak-") as workdir:
        soak = Soak(args, Path(workdir))
        try:
            status = asyncio.run(soak.run())
        except KeyboardInterrupt:
            return 130
    if args.json:
        Path(args.json).write_text(json.dumps(soak._report(), indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
