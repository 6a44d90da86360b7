"""Integration check of the global worker pool under 50 concurrent sessions.

Port of the Go ``examples/worker_pool_test``. In one process, it opens a listener with
``Config(worker_pool=True)``, dials 50 client sessions into it at once, has every session echo
data on a stream, and checks that:

* there is no pool before the first session (a listener alone holds none), and the first
  session creates it;
* every session uses the one pool: ``get_global_worker_pool()`` stays the same object and its
  ``stats().sessions`` (reference count) is at least the number of sessions while they are open;
* every echoed byte comes back unchanged;
* the number of asyncio tasks does not grow with the number of packets: it is the same after a
  short exchange and after one with four times the data (the pool's ``processed`` counter
  shows how many more KWIK packets, or records, went through it);
* once every session is closed (concurrently) and the listener too, the pool is gone
  (``get_global_worker_pool()`` is None) and the task count is back where it started.

It prints how long the sessions took to establish, the pool's stats, the task counts before,
during and after, and one PASS/FAIL line per check. Exits 1 on any failure.

    python -m examples.worker_pool_test [--sessions 50] [--size 65536] [--long-factor 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import kwik

from ._support import StreamServer, TaskPeak, echo, task_count


@dataclass
class Report:
    """PASS/FAIL lines, printed as they are decided."""

    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        """Record and print one check; return ``ok``."""
        line = f"{'PASS' if ok else 'FAIL'}: {what}"
        if detail:
            line += f" ({detail})"
        print(line, flush=True)
        if not ok:
            self.failures.append(what)
        return ok


def describe(stats: kwik.PoolStats) -> str:
    """The pool's counters on a few lines."""
    return (
        f"  workers={stats.workers} queue_capacity={stats.queue_capacity} "
        f"queued={stats.queued} max_queued={stats.max_queued}\n"
        f"  submitted={stats.submitted} processed={stats.processed} "
        f"sessions(refs)={stats.sessions}\n"
        f"  buffer_size={stats.buffer_size} buffers_created={stats.buffers_created} "
        f"buffers_reused={stats.buffers_reused} oversized_records={stats.oversized_records} "
        f"reuse_ratio={stats.reuse_ratio:.3f}"
    )


async def echo_once(session: kwik.Session, payload: bytes) -> bool:
    """Open a stream, send ``payload`` then FIN while reading the echo; True if it matches."""
    stream = await session.open_stream_sync()

    async def send() -> None:
        await stream.write(payload)
        await stream.close()

    received = bytearray()
    async with asyncio.TaskGroup() as group:
        group.create_task(send())
        while data := await stream.read(65536):
            received += data
    return received == payload


async def exchange(
    clients: list[kwik.Session], server: StreamServer, size: int
) -> tuple[int, int, int]:
    """Every client echoes ``size`` random bytes at once.

    Returns (sessions whose echo matched, peak task count meanwhile, task count once every
    stream handler of the server has finished).
    """
    payloads = [os.urandom(size) for _ in clients]
    async with TaskPeak() as peak:
        results = await asyncio.gather(*map(echo_once, clients, payloads))
        await server.wait_streams_done()
    return sum(results), peak.peak, task_count()


class WorkerPoolCheck:
    """The steps of the check, in order, sharing the listener, the sessions and the pool."""

    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.n: int = args.sessions
        self.report = report
        self.baseline = asyncio.all_tasks()
        self.tasks: dict[str, int] = {"before anything": len(self.baseline)}
        self.cert, self.key = kwik.generate_self_signed_cert(["127.0.0.1"])
        self.config = kwik.Config(worker_pool=True, handshake_timeout=args.timeout)
        self.server: StreamServer | None = None
        self.clients: list[kwik.Session] = []

    async def run(self) -> None:
        """Every step; on an early end (error, timeout) close what is still open."""
        try:
            await self.listen()
            pool = await self.establish()
            if pool is not None:
                await self.exchanges(pool)
                await self.close(pool)
        except BaseException:
            await self.abandon()
            raise

    async def listen(self) -> None:
        """Start the echo server; a listener alone creates no pool (sessions hold it)."""
        print(f"Tasks before anything: {self.tasks['before anything']}")
        self.report.check(
            kwik.get_global_worker_pool() is None, "no worker pool before the first listener"
        )
        listener = await kwik.listen_addr(
            "127.0.0.1:0", kwik.TLSConfig(certificate=self.cert, private_key=self.key), self.config
        )
        self.server = StreamServer(listener, echo)
        self.tasks["listening"] = task_count()
        print(f"Listener on {self.server.addr}; tasks now: {self.tasks['listening']}")
        self.report.check(
            kwik.get_global_worker_pool() is None, "a listener without sessions holds no pool"
        )

    async def establish(self) -> kwik.WorkerPool | None:
        """Dial every session at once; check they all share the one pool."""
        assert self.server is not None
        n, server = self.n, self.server
        client_tls = kwik.TLSConfig(cadata=self.cert)
        start = time.perf_counter()
        dialled = await asyncio.gather(
            *(kwik.dial_addr(server.addr, client_tls, self.config) for _ in range(n)),
            return_exceptions=True,
        )
        dial_time = time.perf_counter() - start
        self.clients = [s for s in dialled if isinstance(s, kwik.Session)]
        errors = [e for e in dialled if not isinstance(e, kwik.Session)]
        if not self.report.check(not errors, f"{n} dials succeeded", f"{len(errors)} failed"):
            raise errors[0]
        await server.wait_accepted(n)
        established = time.perf_counter() - start
        print(
            f"Established {n} sessions in {established * 1000:.1f} ms "
            f"(all dials returned after {dial_time * 1000:.1f} ms)"
        )
        self.tasks["sessions open"] = opened = task_count()
        print(
            f"Tasks with {n} sessions open: {opened} (+{opened - self.tasks['listening']}: "
            "the example's server runs one task per session)"
        )
        self.report.check(server.accepted >= n, f"{n} sessions established")
        pool = kwik.get_global_worker_pool()
        if not self.report.check(pool is not None, "the first session created the worker pool"):
            return None
        assert pool is not None
        workers = max(os.cpu_count() or 1, 4)
        stats = pool.stats()
        print("Pool stats with every session open:\n" + describe(stats))
        self.report.check(
            kwik.get_global_worker_pool() is pool and stats.workers == workers,
            "every session shares the one pool",
            f"{stats.workers} workers for {n} client + {server.accepted} server sessions",
        )
        self.report.check(
            stats.sessions >= n,
            f"pool reference count >= {n} while the sessions are open",
            f"{stats.sessions} = {n} clients + {server.accepted} server sessions",
        )
        return pool

    async def exchanges(self, pool: kwik.WorkerPool) -> None:
        """A short then a long echo on every session; the task count must not change."""
        assert self.server is not None
        counts: list[tuple[int, int]] = []  # (records processed, tasks after)
        for label, size in (
            ("short", self.args.size),
            ("long", self.args.size * self.args.long_factor),
        ):
            before, start = pool.stats().processed, time.perf_counter()
            ok, peak, after = await exchange(self.clients, self.server, size)
            records, took = pool.stats().processed - before, time.perf_counter() - start
            self.report.check(
                ok == self.n,
                f"{label} exchange: {self.n} x {size} bytes echoed intact",
                f"{ok}/{self.n}",
            )
            print(
                f"{label.capitalize()} exchange: {took:.2f} s, {records} packets (records) through "
                f"the pool; tasks during (peak) {peak}, after {after}"
            )
            self.tasks[f"during {label} exchange (peak)"] = peak
            self.tasks[f"after {label} exchange"] = after
            counts.append((records, after))
        (short_records, short_tasks), (long_records, long_tasks) = counts
        self.report.check(
            long_tasks == short_tasks and long_records > short_records,
            "task count does not grow with the number of packets",
            f"{short_tasks} tasks after {short_records} packets, "
            f"{long_tasks} after {long_records} more",
        )
        print("Pool stats after the exchanges:\n" + describe(pool.stats()))

    async def close(self, pool: kwik.WorkerPool) -> None:
        """Close every session at once, then the listener; the pool and its tasks must go."""
        assert self.server is not None
        start = time.perf_counter()
        await asyncio.gather(*(client.close() for client in self.clients))
        await self.server.close()
        print(
            f"Closed {self.n} sessions and the listener in "
            f"{(time.perf_counter() - start) * 1000:.1f} ms"
        )
        errors = self.server.errors
        self.report.check(not errors, "server stream handlers raised nothing", repr(errors[:3]))
        self.report.check(
            kwik.get_global_worker_pool() is None and pool.is_closed,
            "the pool is gone once every session closed",
        )
        await pool.wait_closed()
        extra = asyncio.all_tasks() - self.baseline
        if extra:
            await asyncio.wait(extra, timeout=5.0)
        self.tasks["after close"] = end = task_count()
        start_count = self.tasks["before anything"]
        left = [task.get_name() for task in asyncio.all_tasks() - self.baseline]
        self.report.check(
            end == start_count,
            "task count back where it started",
            f"{end} now, {start_count} before" + (f"; left: {left}" if left else ""),
        )
        print("Tasks: " + ", ".join(f"{when} {count}" for when, count in self.tasks.items()))

    async def abandon(self) -> None:
        """Close whatever is still open after a failure, without checking anything."""
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(
                    *(client.close_with_error(1, "check abandoned") for client in self.clients),
                    return_exceptions=True,
                )
                if self.server is not None:
                    await self.server.close()
        except (TimeoutError, kwik.KwikError, OSError):
            pass


async def main_async(args: argparse.Namespace) -> int:
    """Run the check within ``args.timeout`` seconds; 0 when every check passed."""
    report = Report()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(args.timeout):
            await WorkerPoolCheck(args, report).run()
    except TimeoutError:
        report.check(False, f"check finished within {args.timeout:g} s")
    except (kwik.KwikError, OSError) as exc:
        report.check(False, "check ran without a transport error", f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - started
    if report.failures:
        print(f"Worker pool test FAILED ({len(report.failures)} failures, {elapsed:.1f} s)")
        return 1
    print(f"Worker pool test completed successfully in {elapsed:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the check."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.worker_pool_test",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=50, help="client sessions (default 50)")
    parser.add_argument(
        "--size", type=int, default=64 * 1024, help="bytes each session echoes (default 64 KiB)"
    )
    parser.add_argument(
        "--long-factor",
        type=int,
        default=4,
        help="the long exchange sends this many times --size per session (default 4)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the whole check may take (60)"
    )
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.size < 1 or args.long_factor < 2:
        parser.error("--sessions and --size must be positive, --long-factor at least 2")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
