"""Allocation accounting with :mod:`tracemalloc` in the receiving process.

tracemalloc knows the bytes alive now and the peak since the last reset, not a running total
of every allocation. :class:`AllocationMeter` turns that into a total: on every event-loop
iteration it adds how far the traced memory rose above the previous iteration's level
(``peak - previous current``) and resets the peak. Memory allocated and freed twice within one
iteration is counted once, so the figure is a lower bound of the bytes allocated; it is the
same lower bound for every system measured, which is what a comparison needs.

asyncio's datagram transport receives every datagram into a fresh 256 KiB buffer that it then
shrinks: tracemalloc would count 256 KiB per datagram, for both systems alike, drowning what
the systems themselves allocate. While it meters, the meter lowers that receive size
(``_SelectorDatagramTransport.max_size``, the class attribute, and the instance attribute kwik
sets on its own transports) to ``recv_size`` bytes, which must
be at least the largest datagram the peer sends (its ``max_datagram_size``). uvloop receives
into a static buffer and needs no such change.

The meter keeps the loop spinning (one callback per iteration), and tracemalloc slows Python
down several times: throughput is never measured in a run that meters allocations.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from asyncio import selector_events
from typing import Any

__all__ = ["AllocationMeter"]


class AllocationMeter:
    """Count bytes allocated between :meth:`start` and :meth:`stop` (see the module docstring)."""

    def __init__(self, recv_size: int = 2048) -> None:
        self._recv_size = recv_size
        self._saved_recv_size: int | None = None
        self._instances: list[tuple[Any, int]] = []
        self._endpoints: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self._started_tracing = False
        self._baseline = 0
        self._last = 0
        self._total = 0
        self._peak = 0
        self._ticks = 0

    def start(self) -> None:
        """Start tracing (if nobody else does) and counting."""
        self._loop = asyncio.get_running_loop()
        transport: Any = getattr(selector_events, "_SelectorDatagramTransport")  # noqa: B009
        self._saved_recv_size = transport.__dict__.get("max_size", 0)
        transport.max_size = self._recv_size
        # kwik sets its own transports' receive size per instance (64 KiB): lower those too
        self._instances = [
            (obj, obj.__dict__["max_size"])
            for obj in gc.get_objects()
            if isinstance(obj, transport) and "max_size" in obj.__dict__
        ]
        for obj, _ in self._instances:
            obj.max_size = self._recv_size
        # kwik's own endpoints (kwik._udp): the same receive size, GRO off while metering
        from kwik._udp import UdpEndpoint

        self._endpoints = [obj for obj in gc.get_objects() if isinstance(obj, UdpEndpoint)]
        for endpoint in self._endpoints:
            endpoint.set_receive_size(self._recv_size)
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started_tracing = True
        tracemalloc.reset_peak()
        self._baseline = self._last = tracemalloc.get_traced_memory()[0]
        self._peak = self._baseline
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        if peak > self._last:
            self._total += peak - self._last
        if peak > self._peak:
            self._peak = peak
        self._last = current
        self._ticks += 1
        assert self._loop is not None
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> dict[str, Any]:
        """Stop counting; return ``allocated_bytes`` (the total), ``peak_bytes`` (highest traced
        memory above the level at start) and ``loop_iterations``."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._tick()
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
        if self._started_tracing:
            tracemalloc.stop()
            self._started_tracing = False
        for obj, size in self._instances:
            obj.max_size = size
        self._instances = []
        for endpoint in self._endpoints:
            endpoint.set_receive_size(None)
        self._endpoints = []
        if self._saved_recv_size is not None:
            transport: Any = getattr(selector_events, "_SelectorDatagramTransport")  # noqa: B009
            if self._saved_recv_size:
                transport.max_size = self._saved_recv_size
            else:
                del transport.max_size  # back to the inherited value
            self._saved_recv_size = None
        return {
            "allocated_bytes": self._total,
            "peak_bytes": max(0, self._peak - self._baseline),
            "loop_iterations": self._ticks,
        }
