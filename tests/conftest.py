"""Shared fixtures: certificates, listeners, and helpers to run servers over loopback."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import kwik

CERT, KEY = kwik.generate_self_signed_cert(["localhost", "127.0.0.1"])

#: the QUIC engine this run tests (``KWIK_ENGINE``; .ci/run runs the suite once per engine).
#: Tests measure through kwik's own counters and the engine seam; the few that must reach into
#: one engine name it explicitly (``Config(engine="aioquic")``) and so run the same on both runs.
ENGINE = kwik.Config().engine


def pytest_report_header(config: pytest.Config) -> str:
    return f"kwik QUIC engine: {ENGINE} (set KWIK_ENGINE to choose)"


@pytest.fixture
def server_tls() -> kwik.TLSConfig:
    return kwik.TLSConfig(certificate=CERT, private_key=KEY)


@pytest.fixture
def client_tls() -> kwik.TLSConfig:
    return kwik.TLSConfig(cadata=CERT)


@pytest.fixture(params=[False, True], ids=["inline", "pool"])
def config(request: pytest.FixtureRequest) -> kwik.Config:
    """Every end-to-end test runs with records processed inline and through the pool."""
    return kwik.Config(worker_pool=request.param, handshake_timeout=5.0)


StreamHandler = Callable[[kwik.Session, kwik.Stream], Awaitable[None]]


class Server:
    """A listener whose sessions are served by ``handler`` per accepted stream.

    Every task it starts is owned by one TaskGroup and ends with :meth:`stop`.
    """

    def __init__(self, listener: kwik.Listener, handler: StreamHandler | None) -> None:
        self.listener = listener
        self.handler = handler
        self.sessions: list[kwik.Session] = []
        self.session_arrived = asyncio.Event()
        self._group = asyncio.TaskGroup()
        self._runner: asyncio.Task[None] | None = None

    @property
    def addr(self) -> str:
        return self.listener.addr

    async def start(self) -> None:
        await self._group.__aenter__()
        self._group.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        async for session in self.listener:
            self.sessions.append(session)
            self.session_arrived.set()
            if self.handler is not None:
                self._group.create_task(self._serve(session))

    async def _serve(self, session: kwik.Session) -> None:
        assert self.handler is not None
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            self._group.create_task(self._guard(self.handler(session, stream)))

    @staticmethod
    async def _guard(coro: Awaitable[None]) -> None:
        try:
            await coro
        except (kwik.SessionClosedError, kwik.StreamClosedError):
            pass

    async def stop(self) -> None:
        await self.listener.close()
        await self._group.__aexit__(None, None, None)


async def echo_handler(session: kwik.Session, stream: kwik.Stream) -> None:
    """Echo every byte back, then FIN."""
    while True:
        data = await stream.read(65536)
        if not data:
            break
        await stream.write(data)
    await stream.close()


@pytest.fixture
async def make_server(
    server_tls: kwik.TLSConfig, config: kwik.Config
) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def make(
        handler: StreamHandler | None = echo_handler, cfg: kwik.Config | None = None
    ) -> Server:
        listener = await kwik.listen_addr("127.0.0.1:0", server_tls, cfg or config)
        server = Server(listener, handler)
        await server.start()
        servers.append(server)
        return server

    yield make
    async with asyncio.timeout(15):
        for server in servers:
            await server.stop()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves kwik tasks running behind it."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    gc.collect()
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    for _ in range(50):
        if not leaked:
            break
        await asyncio.sleep(0.02)
        leaked = [t for t in leaked if not t.done()]
    assert not leaked, f"tasks left running: {leaked}"


async def read_all(stream: kwik.Stream) -> bytes:
    chunks = []
    while True:
        data = await stream.read(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (polling) until ``predicate()`` holds; fail after ``timeout``, a bound a hang
    would break (the condition is what is asserted, never a fixed sleep)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
