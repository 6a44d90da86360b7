"""The global worker pool: every path's records go through one shared, bounded pool.

Shape (architecture.md, "The global worker pool"):

* created lazily by the first session, shared by every session of the process,
  reference-counted by sessions, shut down when the last one closes (then
  :func:`get_global_worker_pool` returns None and none of its tasks is left);
* ``max(os.cpu_count(), 4)`` worker tasks, owned by one TaskGroup, drawing from a bounded FIFO
  of ``workers * 10`` records;
* records are copied into 64 KiB ``bytearray``\\ s taken from a free list and given back after
  processing; a record over 64 KiB gets a buffer of its own.

**Order.** Upstream's Go pool processed one path's packets on several goroutines at once and
scrambled their order. Here a worker pops the oldest record and dispatches it synchronously,
without yielding, so records leave the single FIFO and are processed in the order they entered
it, which for each path is the order they arrived. When handling a record has to wait (a full
stream window), the session core *parks* it and the path's later records instead of holding a
worker, and handles them in order once it can go on; the other paths keep the workers. A path
that leaves the pool (its connection ended, or the pool shut down) gets the records still
queued for it back, in order, and processes them inline: nothing is dropped, nothing runs
re-entrantly.

**Back-pressure, never loss.** A path takes a record out of its reader only while the queue has
room. Otherwise it stops and waits for the queue to fall to half its capacity. A path that is
not taking records grants its peer no more QUIC flow-control credit (``_path.py``), so what
stops is that path's peer, and only after ``Config.path_receive_window`` bytes. The kernel is
never left to drop datagrams and no other session is paused. This is stricter isolation than
pausing a listener's UDP socket, which would stall every session behind it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._path import Path

__all__ = ["PoolStats", "WorkerPool", "close_global_worker_pool", "get_global_worker_pool"]

logger = logging.getLogger("kwik.pool")

BUFFER_SIZE = 64 * 1024
QUEUE_PER_WORKER = 10
#: Records a worker processes before yielding to the event loop. One worker is awake at a time
#: (the others only add task switches): under load a loop iteration is long (a hundred sessions'
#: datagrams and transmits), and a small batch then starved the queue (4 records an iteration
#: left OpenStreams unanswered for 10 s with 100 sessions on one loop).
BATCH = 64


@dataclass(frozen=True)
class PoolStats:
    """Snapshot of the pool's counters."""

    workers: int
    queue_capacity: int
    queued: int
    max_queued: int
    submitted: int
    processed: int
    sessions: int
    """Holders of a reference: the open sessions (listeners hold none)."""
    buffer_size: int
    buffers_created: int
    buffers_reused: int
    oversized_records: int
    paths_waiting: int

    @property
    def reuse_ratio(self) -> float:
        """Share of submitted records that went into a reused buffer (oversized records,
        which get a buffer of their own, count as not reused)."""
        total = self.buffers_created + self.buffers_reused + self.oversized_records
        return self.buffers_reused / total if total else 0.0


class WorkerPool:
    """A bounded, order-keeping pool of worker tasks (see the module docstring).

    Not created directly: sessions obtain the process-wide instance through
    :func:`acquire_pool`.
    """

    def __init__(self, workers: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.workers = workers if workers is not None else max(os.cpu_count() or 1, 4)
        self.capacity = self.workers * QUEUE_PER_WORKER
        self._low_water = self.capacity // 2
        self._queue: deque[tuple[Path, bytearray, int]] = deque()
        self._free: list[bytearray] = []
        self._idle: deque[asyncio.Future[None]] = deque()
        self._active = self.workers  # workers not parked in _idle
        self._waiting: dict[Path, None] = {}  # paths paused for room, in order
        self._paths: set[Path] = set()
        self._holders: set[object] = set()
        self._closing = False
        self._closed = asyncio.Event()
        # counters
        self.submitted = 0
        self.processed = 0
        self.max_queued = 0
        self.buffers_created = 0
        self.buffers_reused = 0
        self.oversized_records = 0
        self._runner = self._loop.create_task(self._run(), name="kwik-pool")

    def __repr__(self) -> str:
        return (
            f"<kwik.WorkerPool workers={self.workers} queued={len(self._queue)}/"
            f"{self.capacity} holders={len(self._holders)}{' closed' if self._closing else ''}>"
        )

    # --- public ---------------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's counters."""
        return PoolStats(
            workers=self.workers,
            queue_capacity=self.capacity,
            queued=len(self._queue),
            max_queued=self.max_queued,
            submitted=self.submitted,
            processed=self.processed,
            sessions=len(self._holders),
            buffer_size=BUFFER_SIZE,
            buffers_created=self.buffers_created,
            buffers_reused=self.buffers_reused,
            oversized_records=self.oversized_records,
            paths_waiting=len(self._waiting),
        )

    @property
    def is_closed(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        """Wait until every worker task has ended."""
        await self._closed.wait()

    # --- paths ----------------------------------------------------------------------------------

    def attach(self, path: Path) -> None:
        """Route ``path``'s records through the pool."""
        if self._closing:
            return
        self._paths.add(path)
        path.sink = self

    def detach(self, path: Path) -> None:
        """Stop routing ``path``'s records through the pool; the records still queued for it
        go back to it (``path.take_back``), in order."""
        self._paths.discard(path)
        self._waiting.pop(path, None)
        if path.sink is self:
            path.sink = None
        mine = [item for item in self._queue if item[0] is path]
        if mine:
            self._queue = deque(item for item in self._queue if item[0] is not path)
            records = []
            for _, buffer, size in mine:
                records.append(bytes(memoryview(buffer)[:size]))
                self._recycle(buffer, size)
            path.take_back(records)
        path.sink_ready()

    def has_room(self) -> bool:
        return len(self._queue) < self.capacity

    def wait_room(self, path: Path) -> None:
        """``path`` found the queue full: call ``path.sink_ready()`` at the low-water mark."""
        self._waiting[path] = None

    def submit(self, path: Path, record: memoryview) -> bool:
        """Copy ``record`` into a pooled buffer and queue it; False when the queue is now full.

        The caller checks :meth:`has_room` first, so the queue never exceeds its capacity.
        """
        size = len(record)
        if size <= BUFFER_SIZE:
            if self._free:
                buffer = self._free.pop()
                self.buffers_reused += 1
            else:
                buffer = bytearray(BUFFER_SIZE)
                self.buffers_created += 1
            memoryview(buffer)[:size] = record  # no temporary copy
        else:
            buffer = bytearray(record)
            self.oversized_records += 1
        queue = self._queue
        queue.append((path, buffer, size))
        self.submitted += 1
        if len(queue) > self.max_queued:
            self.max_queued = len(queue)
        if not self._active and self._idle:
            # one awake worker drains the queue; waking more would only add task switches
            waiter = self._idle.popleft()
            if not waiter.done():
                self._active += 1
                waiter.set_result(None)
        return len(queue) < self.capacity

    # --- workers --------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(self.workers):
                    group.create_task(self._worker(), name=f"kwik-worker-{i}")
        finally:
            self._closing = True
            self._release_paths()
            self._queue.clear()
            self._closed.set()
            _forget(self)

    async def _worker(self) -> None:
        while not self._closing:
            if not self._queue:
                waiter = self._loop.create_future()
                self._idle.append(waiter)
                self._active -= 1
                try:
                    await waiter
                finally:
                    if not waiter.done() or waiter.cancelled():
                        self._active += 1  # cancelled while idle: keep the count right
                continue
            # a batch, then let the paths and the application run (records are dispatched
            # synchronously, so yielding per record would only add loop iterations)
            for _ in range(BATCH):
                # re-read the queue each time: handling a record may detach paths or shut the
                # pool down, which empties it
                if not self._queue or self._closing:
                    break
                self._process_one()
            await asyncio.sleep(0)

    def _process_one(self) -> None:
        path, buffer, size = self._queue.popleft()
        try:
            path.process_record(memoryview(buffer)[:size])
        except Exception:  # a bug, not bad input: never let it kill a worker
            logger.exception("processing a record of %r failed", path)
            path.fail("internal error while processing a record")
        finally:
            self.processed += 1
            self._recycle(buffer, size)
        if self._waiting and len(self._queue) <= self._low_water:
            waiting = list(self._waiting)
            self._waiting.clear()
            for waiting_path in waiting:
                waiting_path.sink_ready()

    def _recycle(self, buffer: bytearray, size: int) -> None:
        if size <= BUFFER_SIZE and len(buffer) == BUFFER_SIZE:
            self._free.append(buffer)

    def _release_paths(self) -> None:
        for path in list(self._paths):
            self.detach(path)

    # --- lifecycle ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop the workers (sync). Queued records go back to their paths, in order, which
        process them inline; safe to call while a worker is handling a record."""
        if self._closing:
            return
        self._closing = True
        self._release_paths()
        self._queue.clear()
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
        _forget(self)


_global: WorkerPool | None = None


def _forget(pool: WorkerPool) -> None:
    global _global
    if _global is pool:
        _global = None


def _usable(pool: WorkerPool | None) -> WorkerPool | None:
    if pool is None or pool.is_closed or pool._loop.is_closed():
        return None
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return pool
    return pool if pool._loop is running else None


def get_global_worker_pool() -> WorkerPool | None:
    """The process-wide worker pool, or None when no session or listener holds it."""
    return _usable(_global)


def acquire_pool(holder: object) -> WorkerPool:
    """Take a reference to the global pool for ``holder``, creating the pool if needed.

    A pool left over from another (closed) event loop is discarded, never reused.
    """
    global _global
    pool = _usable(_global)
    if pool is None:
        if _global is not None and not _global.is_closed:
            # left over from a loop that is gone: its tasks died with that loop
            _global._closing = True
        pool = _global = WorkerPool()
        logger.debug("worker pool created: %d workers, queue %d", pool.workers, pool.capacity)
    pool._holders.add(holder)
    return pool


def release_pool(pool: WorkerPool, holder: object) -> None:
    """Drop ``holder``'s reference; the last one shuts the pool down."""
    pool._holders.discard(holder)
    if not pool._holders and not pool.is_closed:
        logger.debug("worker pool: last holder gone, shutting down")
        pool._shutdown()


async def close_global_worker_pool() -> None:
    """Shut the global pool down now, whoever holds it (for debugging).

    Records already queued are processed first; sessions still open switch to processing
    their records inline and lose nothing. The next session creates a new pool.
    """
    pool = _usable(_global)
    if pool is None:
        return
    pool._holders.clear()
    pool._shutdown()
    await pool.wait_closed()
