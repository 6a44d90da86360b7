"""A set of coroutines waiting for something to change (a stream or session to accept)."""

from __future__ import annotations

import asyncio

__all__ = ["Waiters"]


class Waiters:
    """Coroutines parked in :meth:`wait` until :meth:`wake_all`.

    Waking everyone (rather than one) keeps it simple and correct under cancellation: every
    woken coroutine re-checks its condition and parks again if someone else got there first.
    """

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._futures)

    async def wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._futures.add(future)
        try:
            await future
        finally:
            self._futures.discard(future)

    def wake_all(self) -> None:
        futures, self._futures = self._futures, set()
        for future in futures:
            if not future.done():
                future.set_result(None)
