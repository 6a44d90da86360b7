"""Pieces shared by the worker-pool check and the benchmark.

* :class:`StreamServer`: a listener whose accepted sessions have every stream served by one
  handler coroutine, with counters the check and the benchmark wait on;
* :func:`task_count` and :class:`TaskPeak`: how many asyncio tasks exist, now and at most over
  a stretch of time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

import kwik

__all__ = ["StreamHandler", "StreamServer", "TaskPeak", "echo", "task_count"]

#: Serves one stream the peer opened; returns when done with it.
StreamHandler = Callable[[kwik.Stream], Awaitable[None]]


def task_count() -> int:
    """Number of asyncio tasks of the running loop that have not finished (all_tasks)."""
    return len(asyncio.all_tasks())


async def echo(stream: kwik.Stream) -> None:
    """Send every byte read from ``stream`` back on it; FIN once the peer's FIN arrived."""
    while data := await stream.read(65536):
        await stream.write(data)
    await stream.close()


class StreamServer:
    """Accept sessions from ``listener`` and run ``handler`` on each stream they open.

    Every task it starts belongs to one TaskGroup that ends in :meth:`close`. Errors raised by
    a handler other than the peer going away are kept in :attr:`errors` instead of tearing the
    other streams down.
    """

    def __init__(self, listener: kwik.Listener, handler: StreamHandler) -> None:
        self.listener = listener
        self._handler = handler
        self.accepted = 0
        """Sessions accepted so far."""
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self.errors: list[BaseException] = []
        self._changed = asyncio.Condition()
        self._runner = asyncio.create_task(self._run(), name="example-accept-loop")

    @property
    def addr(self) -> str:
        """The listener's bound address ("host:port")."""
        return self.listener.addr

    async def wait_accepted(self, sessions: int) -> None:
        """Wait until at least ``sessions`` sessions were accepted."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.accepted >= sessions)

    async def wait_streams_done(self) -> None:
        """Wait until every stream handler task has finished."""
        while pending := {task for task in self._stream_tasks if not task.done()}:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Close the listener (and so its sessions) and wait for every task of the server."""
        await self.listener.close()
        await self._runner

    async def __aenter__(self) -> StreamServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            async for session in self.listener:
                self.accepted += 1
                await self._notify()
                group.create_task(self._serve_session(session, group))

    async def _serve_session(self, session: kwik.Session, group: asyncio.TaskGroup) -> None:
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            task = group.create_task(self._serve_stream(stream))
            self._stream_tasks.add(task)
            task.add_done_callback(self._stream_tasks.discard)

    async def _serve_stream(self, stream: kwik.Stream) -> None:
        try:
            await self._handler(stream)
        except (kwik.SessionClosedError, kwik.StreamClosedError):
            pass  # the peer went away: nothing to serve any more
        except Exception as exc:  # kept for the caller to report
            self.errors.append(exc)


class TaskPeak:
    """Sample :func:`task_count` every ``interval`` seconds inside ``async with``; keep the peak.

    The sampling task itself is not counted.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._sampler: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one sample now."""
        own = 1 if self._sampler is not None and not self._sampler.done() else 0
        self.peak = max(self.peak, task_count() - own)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> TaskPeak:
        self.sample()
        self._sampler = asyncio.create_task(self._run(), name="example-task-sampler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sample()
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            try:
                await sampler
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled ourselves, not just the sampler
