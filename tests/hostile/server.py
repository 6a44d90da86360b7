"""A kwik listener in its own process, so that its memory and event loop can be measured alone.

Run by :class:`tests.hostile.harness.ServerProcess` as::

    python -m tests.hostile.server CERTFILE KEYFILE CONFIG_JSON MODE

``CONFIG_JSON`` holds :class:`kwik.Config` keyword arguments. ``MODE`` is ``echo`` (accept every
session and stream, echo each stream's bytes back and close it), ``idle`` (accept sessions but
never accept a stream: an application that does not keep up) or ``hold`` (accept every session
and stream; never read the streams of the first session, the attacker's; echo the others').

It prints ``ADDR host:port`` once listening, then answers each ``stats`` line on stdin with one
JSON line: ``rss`` and ``hwm`` (VmRSS and VmHWM, bytes), ``max_lag`` (longest lateness of a
10 ms ticker since the previous ``stats``: the longest the event loop was blocked), ``sessions``
(accepted so far). The answer is written from the event loop, so it also waits for the loop.
``quit`` (or EOF) closes the listener and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

import kwik

TICK = 0.01


def read_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return {"rss": out["VmRSS"], "hwm": out["VmHWM"]}


class Server:
    """The listener, its accept loops and the loop-lag ticker."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.max_lag = 0.0
        self.sessions = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def ticker(self) -> None:
        """Sleep TICK at a time; any extra delay is time the loop spent elsewhere."""
        while True:
            start = time.perf_counter()
            await asyncio.sleep(TICK)
            self.max_lag = max(self.max_lag, time.perf_counter() - start - TICK)

    async def accept_sessions(self, listener: kwik.Listener) -> None:
        first = True
        async for session in listener:
            self.sessions += 1
            if self.mode in ("echo", "hold"):
                self.spawn(self.accept_streams(session, hold=self.mode == "hold" and first))
            first = False

    async def accept_streams(self, session: kwik.Session, *, hold: bool) -> None:
        held: list[kwik.Stream] = []
        with contextlib.suppress(kwik.KwikError):
            while True:
                stream = await session.accept_stream()
                if hold:
                    held.append(stream)
                else:
                    self.spawn(self.echo(stream))

    async def echo(self, stream: kwik.Stream) -> None:
        with contextlib.suppress(kwik.KwikError):
            while data := await stream.read(65536):
                await stream.write(data)
            await stream.close()

    def stats(self) -> None:
        report = {**read_status(), "max_lag": self.max_lag, "sessions": self.sessions}
        self.max_lag = 0.0
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()


async def main(certfile: str, keyfile: str, config_json: str, mode: str) -> None:
    config = kwik.Config(**json.loads(config_json))
    tls = kwik.TLSConfig(certfile=certfile, keyfile=keyfile)
    listener = await kwik.listen_addr("127.0.0.1:0", tls, config)
    server = Server(mode)
    server.spawn(server.ticker())
    server.spawn(server.accept_sessions(listener))
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def read_commands() -> None:  # stdin is read in a thread: the loop may be the thing stuck
        for line in sys.stdin:
            if line.strip() == "stats":
                loop.call_soon_threadsafe(server.stats)
            elif line.strip() == "quit":
                break
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=read_commands, daemon=True).start()
    print("ADDR", listener.addr, flush=True)
    await done
    for task in list(server.tasks):
        task.cancel()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(3):
            await listener.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
