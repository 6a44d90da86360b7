"""The fault suite's application and its processes: a kwik server (primary or relay) and a client.

Every request is one kwik stream that starts with a command line (ASCII, ``\\n``-terminated):

``ECHO``
    the server writes back everything it reads, then FIN.
``UPLOAD``
    the client sends bytes until FIN; the server answers ``<sha256 hex> <length>\\n``, then FIN.
``DOWNLOAD <n> <seed>``
    the server sends ``pattern(seed)[0:n]``, then FIN.
``SPLIT <n> <seed> <relay host:port>``
    the primary recruits the relay (once per session and address) and serves
    ``pattern(seed)[0:n]`` in 64 KiB chunks together with it: even chunks itself, odd chunks
    through the relay (``PART`` sent with :meth:`kwik.Relay.send_raw_data` on the same stream
    id, every chunk placed with ``set_write_offset``); the primary alone sends the FIN at ``n``.
``PART <n> <seed> <chunk> <modulus> <residue>`` (what a relay receives)
    write every chunk ``i`` of ``pattern(seed)[0:n]`` with ``i % modulus == residue`` at its
    offset; never FIN (the primary owns the end of the stream).
``STATS``
    one JSON line: this process's RSS, peak RSS, fds, asyncio tasks and live sessions, then FIN.

The pattern is a pseudo-random block of an odd length repeated, so that any byte range of an
arbitrarily long stream can be produced (and hashed) cheaply, and a byte landing at the wrong
offset changes the hash.

Processes (one JSON line on stdout once ready, so that a parent knows the address)::

    python -m tests.faults.peer serve --host 127.0.0.1 --cert C --key K   # {"addr", "pid"}
    python -m tests.faults.peer download --addr A --ca C --size N         # {"reading": bytes}

``serve`` runs until SIGTERM/SIGINT (then closes its listener gracefully); ``download`` reads
until EOF and prints ``{"done": bytes, "sha256": ...}``. The fault tests kill both with
SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Protocol

import kwik

__all__ = [
    "CHUNK",
    "FaultServer",
    "pattern",
    "pattern_chunks",
    "pattern_sha256",
    "process_stats",
    "read_all",
    "read_line",
    "request",
    "start_fault_server",
]

LOGGER = logging.getLogger("kwik.faults")

#: Size of every write and of every relay chunk.
CHUNK = 64 * 1024
#: Period of the pattern: 1 MiB + 7 bytes (odd, so no power-of-two offset error hides).
PERIOD = 1024 * 1024 + 7
MAX_LINE = 512


@functools.lru_cache(maxsize=8)
def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(PERIOD)


def pattern(seed: int, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the endless pattern of ``seed``."""
    block = _block(seed)
    out = bytearray()
    pos = start
    while pos < end:
        at = pos % PERIOD
        take = min(end - pos, PERIOD - at)
        out += block[at : at + take]
        pos += take
    return bytes(out)


def pattern_chunks(seed: int, start: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """``pattern(seed, start, end)`` in pieces of at most ``chunk`` bytes."""
    for pos in range(start, end, chunk):
        yield pattern(seed, pos, min(pos + chunk, end))


def pattern_sha256(seed: int, n: int) -> str:
    """SHA-256 (hex) of ``pattern(seed, 0, n)``."""
    digest = hashlib.sha256()
    for piece in pattern_chunks(seed, 0, n, 1024 * 1024):
        digest.update(piece)
    return digest.hexdigest()


def process_stats() -> dict[str, int]:
    """This process's resident set (``rss``) and peak resident set (``hwm``) in KiB, open fds,
    and asyncio tasks of the running loop (0 outside a loop)."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields["rss" if key == "VmRSS" else "hwm"] = int(value.split()[0])
    fields["fds"] = len(os.listdir("/proc/self/fd"))
    try:
        fields["tasks"] = len(asyncio.all_tasks())
    except RuntimeError:
        fields["tasks"] = 0
    return fields


class Readable(Protocol):
    """Anything with kwik's ``read(n)``: a kwik stream, or the raw aioquic baseline's."""

    async def read(self, n: int = ...) -> bytes: ...


async def read_line(stream: Readable) -> str:
    """One ``\\n``-terminated line, read byte by byte so that nothing after it is consumed
    (from a kwik stream or a raw aioquic one)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = await stream.read(1)
        if not byte:
            raise asyncio.IncompleteReadError(bytes(line), None)
        line += byte
        if len(line) > MAX_LINE:
            raise ValueError("command line too long")
    return line[:-1].decode()


async def read_all(stream: kwik.Stream, digest: Any = None) -> int:
    """Read ``stream`` to EOF, feeding ``digest`` (if given); return the byte count."""
    total = 0
    while True:
        data = await stream.read(CHUNK)
        if not data:
            return total
        total += len(data)
        if digest is not None:
            digest.update(data)


async def write_pattern(stream: kwik.Stream, seed: int, start: int, end: int) -> None:
    for piece in pattern_chunks(seed, start, end):
        await stream.write(piece)


async def request(session: kwik.Session, command: str) -> kwik.Stream:
    """Open a stream and send ``command`` as its first line."""
    stream = await session.open_stream_sync()
    await stream.write(command.encode() + b"\n")
    return stream


async def echo_over(session: kwik.Session, data: bytes) -> int:
    """Echo ``data`` on a new ECHO stream of ``session``, writing and reading at once; returns
    the bytes echoed (raises AssertionError when they differ)."""
    stream = await request(session, "ECHO")

    async def send() -> None:
        await stream.write(data)
        await stream.close()

    writer = asyncio.create_task(send())
    echoed = bytearray()
    while chunk := await stream.read():
        echoed += chunk
    await writer
    if echoed != data:
        raise AssertionError(f"echo of {len(data)} bytes came back as {len(echoed)} bytes")
    return len(data)


async def server_stats(addr: str, tls: kwik.TLSConfig) -> dict[str, int]:
    """A fault server's STATS (over a session of its own, counted in ``sessions``)."""
    session = await kwik.dial_addr(addr, tls)
    try:
        stream = await request(session, "STATS")
        await stream.close()
        raw = bytearray()
        while data := await stream.read():
            raw += data
    finally:
        await session.close()
    stats: dict[str, int] = json.loads(raw)
    return stats


class FaultServer:
    """A listener serving the commands above on every session it accepts.

    ``sessions`` holds the sessions not yet closed; every task it starts is kept in ``_tasks``
    and cancelled by :meth:`close`.
    """

    def __init__(self, listener: kwik.Listener) -> None:
        self.listener = listener
        self.sessions: set[kwik.Session] = set()
        self.accepted = 0
        self.errors: list[str] = []
        self._relays: dict[tuple[int, str], kwik.Relay] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def addr(self) -> str:
        return self.listener.addr

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._spawn(self._accept_loop())

    async def _accept_loop(self) -> None:
        try:
            async for session in self.listener:
                self.sessions.add(session)
                self.accepted += 1
                self._spawn(self._serve_session(session))
                del session  # this frame must not keep the last session alive
        except kwik.ListenerClosedError:
            pass

    async def _serve_session(self, session: kwik.Session) -> None:
        try:
            while True:
                stream = await session.accept_stream()
                self._spawn(self._guard(session, stream))
        except kwik.SessionClosedError:
            pass
        finally:
            self.sessions.discard(session)
            for key in [k for k in self._relays if k[0] == id(session)]:
                del self._relays[key]

    async def _guard(self, session: kwik.Session, stream: kwik.Stream) -> None:
        try:
            await self._handle(session, stream)
        except (kwik.SessionClosedError, kwik.StreamClosedError, asyncio.IncompleteReadError):
            pass  # the peer went away: not this server's fault
        except Exception as exc:  # a broken command must not take the server down
            LOGGER.warning("fault server: stream %d failed: %r", stream.stream_id, exc)
            self.errors.append(repr(exc))

    async def _handle(self, session: kwik.Session, stream: kwik.Stream) -> None:
        words = (await read_line(stream)).split()
        command, args = words[0], words[1:]
        if command == "ECHO":
            while data := await stream.read(CHUNK):
                await stream.write(data)
            await stream.close()
        elif command == "UPLOAD":
            digest = hashlib.sha256()
            size = await read_all(stream, digest)
            await stream.write(f"{digest.hexdigest()} {size}\n".encode())
            await stream.close()
        elif command == "DOWNLOAD":
            size, seed = int(args[0]), int(args[1])
            await write_pattern(stream, seed, 0, size)
            await stream.close()
        elif command == "SPLIT":
            await self._split(session, stream, int(args[0]), int(args[1]), args[2])
        elif command == "PART":
            size, seed, chunk, modulus, residue = map(int, args)
            for index, offset in enumerate(range(0, size, chunk)):
                if index % modulus == residue:
                    stream.set_write_offset(offset)
                    await stream.write(pattern(seed, offset, min(offset + chunk, size)))
            await session.wait_closed()  # no FIN: the primary ends the stream
        elif command == "STATS":
            stats = process_stats()
            stats["sessions"] = len(self.sessions)
            stats["accepted"] = self.accepted
            stats["errors"] = len(self.errors)
            await stream.write(json.dumps(stats).encode() + b"\n")
            await stream.close()
        else:
            raise ValueError(f"unknown command {command!r}")

    async def _split(
        self, session: kwik.Session, stream: kwik.Stream, size: int, seed: int, relay_addr: str
    ) -> None:
        key = (id(session), relay_addr)
        relay = self._relays.get(key)
        if relay is None:
            relay = self._relays[key] = await session.add_relay(relay_addr)
        part = f"PART {size} {seed} {CHUNK} 2 1\n".encode()
        await relay.send_raw_data(part, stream.stream_id)
        for index, offset in enumerate(range(0, size, CHUNK)):
            if index % 2 == 0:
                stream.set_write_offset(offset)
                await stream.write(pattern(seed, offset, min(offset + CHUNK, size)))
        stream.set_write_offset(size)
        await stream.close()

    async def close(self) -> None:
        """Close the listener (gracefully) and end every task of this server."""
        await self.listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


async def start_fault_server(
    address: str, tls: kwik.TLSConfig, config: kwik.Config | None = None
) -> FaultServer:
    """Listen on ``address`` and serve the fault commands."""
    server = FaultServer(await kwik.listen_addr(address, tls, config))
    server.start()
    return server


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve_main(args: argparse.Namespace) -> None:
    tls = kwik.TLSConfig(certfile=args.cert, keyfile=args.key)
    server = await start_fault_server(f"{args.host}:{args.port}", tls, kwik.Config())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _emit({"addr": server.addr, "pid": os.getpid()})
    await stop.wait()
    await server.close()


async def _download_main(args: argparse.Namespace) -> None:
    session = await kwik.dial_addr(args.addr, kwik.TLSConfig(cafile=args.ca), kwik.Config())
    stream = await request(session, f"DOWNLOAD {args.size} {args.seed}")
    digest = hashlib.sha256()
    total = 0
    announced = False
    while data := await stream.read(CHUNK):
        total += len(data)
        digest.update(data)
        if not announced and total >= args.announce:
            _emit({"reading": total})
            announced = True
    _emit({"done": total, "sha256": digest.hexdigest()})
    await session.close()


def main(argv: list[str] | None = None) -> int:
    """Command line of the fault processes (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.peer")
    sub = parser.add_subparsers(dest="role", required=True)
    serve = sub.add_parser("serve", help="a kwik server (primary or relay)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--cert", required=True)
    serve.add_argument("--key", required=True)
    download = sub.add_parser("download", help="a client downloading one stream")
    download.add_argument("--addr", required=True)
    download.add_argument("--ca", required=True)
    download.add_argument("--size", type=int, required=True)
    download.add_argument("--seed", type=int, default=1)
    download.add_argument("--announce", type=int, default=1024 * 1024)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_serve_main(args) if args.role == "serve" else _download_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
