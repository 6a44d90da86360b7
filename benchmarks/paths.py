"""Per-path byte counts of a kwik session sampled over time (what a multipath chart plots).

:class:`PathSampler` polls ``session.paths`` on a fixed interval while a transfer runs and
returns a JSON-friendly series: the time of every sample and, for each path, its cumulative
``bytes_received``. Sampling reads counters kwik keeps anyway, so it does not slow the
transfer it watches. Used by the ``multipath`` benchmark and by
``python -m examples.file_transfer.client --plot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

__all__ = ["PathSampler"]


class PathSampler:
    """Samples ``session.paths[i].bytes_received`` every ``interval`` seconds.

    Time 0 is the call to :meth:`start`. A path that appears later (a relay) has 0 bytes in
    the samples before it existed.
    """

    def __init__(self, session: Any, interval: float = 0.05) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._session = session
        self._interval = interval
        self._t0 = 0.0
        self._times: list[float] = []
        self._bytes: dict[int, list[int]] = {}
        self._info: dict[int, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Take the first sample and keep sampling in a task until :meth:`stop`."""
        self._t0 = time.monotonic()
        self._take()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._take()

    def _take(self) -> None:
        now = time.monotonic() - self._t0
        index = len(self._times)
        self._times.append(round(now, 4))
        for path in self._session.paths:
            series = self._bytes.setdefault(path.path_id, [0] * index)
            series.append(path.bytes_received)
            self._info[path.path_id] = {
                "path_id": path.path_id,
                "address": path.address,
                "is_primary": path.is_primary,
            }
        for series in self._bytes.values():  # a path gone from the list keeps its last count
            if len(series) < index + 1:
                series.append(series[-1] if series else 0)

    async def stop(self) -> dict[str, Any]:
        """Stop sampling, take a last sample, and return the series.

        Returns ``{"interval": s, "t": [seconds...], "paths": [{"path_id", "address",
        "is_primary", "bytes": [cumulative bytes received at each t]}...]}``.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._take()
        return {
            "interval": self._interval,
            "t": list(self._times),
            "paths": [
                {**self._info[path_id], "bytes": list(self._bytes[path_id])}
                for path_id in sorted(self._bytes)
            ],
        }
