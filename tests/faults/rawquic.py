"""The fault suite's raw aioquic baseline: the same byte-exact transfers on plain aioquic.

What kwik's loss figures are compared with. The server speaks two of :mod:`tests.faults.peer`'s
commands, each on one QUIC stream that starts with its command line:

``UPLOAD``
    the client sends bytes until FIN; the server answers ``<sha256 hex> <length>\\n``, then FIN.
``DOWNLOAD <n> <seed>``
    the server sends ``pattern(seed)[0:n]``, then FIN.

It is built on :mod:`benchmarks.peer_aioquic` (aioquic's public ``serve``/``connect`` and a
``QuicConnectionProtocol`` subclass) with :class:`benchmarks.common.QuicSettings`'s defaults,
which are what a default ``kwik.Config`` gives each path: the same datagram size (1200), the
same congestion control (Reno), the same flow-control credit and idle timeout. Its UDP sockets
get the receive buffer kwik asks for (``Config.udp_receive_buffer``, 4 MiB): with the kernel's
default 208 KiB, aioquic's own receiver drops datagrams whenever its event loop falls behind,
and the baseline would measure that instead of the network's loss. The transfer
coroutines time what :mod:`tests.faults.loss` times for kwik: from the request to the last
byte (download) or to the server's digest (upload), handshake excluded.

The server process (one JSON line ``{"addr", "pid"}`` once ready, like the kwik peer's)::

    python -m tests.faults.rawquic serve --host H --cert C --key K
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from aioquic.asyncio.server import serve
from aioquic.quic.connection import QuicConnection

from benchmarks.common import QuicSettings
from benchmarks.peer_aioquic import RawConnection, RawStream, dial, quic_configuration

from .peer import CHUNK, pattern_chunks, pattern_sha256, read_line

__all__ = ["SETTINGS", "raw_download", "raw_upload"]

#: The raw baseline's QUIC settings: those a default ``kwik.Config`` puts on every path.
SETTINGS = QuicSettings()
#: SO_RCVBUF of the baseline's sockets: kwik's default ``Config.udp_receive_buffer``.
RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(transport: Any) -> None:
    """Ask for :data:`RECEIVE_BUFFER` on the transport's socket (the kernel caps it)."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class RawTransferError(AssertionError):
    """What arrived over raw aioquic is not what was sent."""


async def _read_all(stream: RawStream, digest: Any) -> int:
    total = 0
    while data := await stream.read(CHUNK):
        total += len(data)
        digest.update(data)
    return total


async def _write_pattern(stream: RawStream, seed: int, size: int) -> None:
    for piece in pattern_chunks(seed, 0, size):
        await stream.write(piece)


# --- server ------------------------------------------------------------------------------------


class _Server:
    """Serves UPLOAD and DOWNLOAD on every stream a client opens; keeps its tasks referenced."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def protocol(self, quic: QuicConnection, stream_handler: Any = None) -> RawConnection:
        connection = RawConnection(quic, stream_handler)
        connection.on_stream = self._spawn
        return connection

    def _spawn(self, stream: RawStream) -> None:
        task = asyncio.ensure_future(self._handle(stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, stream: RawStream) -> None:
        try:
            words = (await read_line(stream)).split()
            if words == ["UPLOAD"]:
                digest = hashlib.sha256()
                size = await _read_all(stream, digest)
                await stream.write(f"{digest.hexdigest()} {size}\n".encode())
                await stream.close()
            elif len(words) == 3 and words[0] == "DOWNLOAD":
                await _write_pattern(stream, int(words[2]), int(words[1]))
                await stream.close()
            else:
                raise ValueError(f"unknown command {words!r}")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception as exc:
            print(f"raw fault server: stream {stream.stream_id} failed: {exc!r}", file=sys.stderr)


async def _serve_main(args: argparse.Namespace) -> None:
    configuration = quic_configuration(
        SETTINGS, is_client=False, certfile=args.cert, keyfile=args.key
    )
    server_app = _Server()
    server = await serve(
        args.host, args.port, configuration=configuration, create_protocol=server_app.protocol
    )
    assert server._transport is not None  # bound by serve()
    _grow_receive_buffer(server._transport)
    port = server._transport.get_extra_info("sockname")[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.write(json.dumps({"addr": f"{args.host}:{port}", "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    await stop.wait()
    server.close()
    for task in list(server_app.tasks):
        task.cancel()


# --- client ------------------------------------------------------------------------------------


async def raw_upload(addr: str, cadata: bytes, size: int, seed: int) -> float:
    """Client -> server over raw aioquic; the server's digest must match. Returns seconds."""
    async with dial(addr, SETTINGS, cadata) as connection:
        _grow_receive_buffer(connection._transport)
        started = time.monotonic()
        stream = connection.open_stream()
        await stream.write(b"UPLOAD\n")
        await _write_pattern(stream, seed, size)
        await stream.close()
        digest, length = (await read_line(stream)).split()
        elapsed = time.monotonic() - started
    if int(length) != size or digest != pattern_sha256(seed, size):
        raise RawTransferError(
            f"raw upload of {size} bytes arrived as {length} bytes, sha256 {digest}"
        )
    return elapsed


async def raw_download(addr: str, cadata: bytes, size: int, seed: int) -> float:
    """Server -> client over raw aioquic; what arrives must hash as the pattern."""
    async with dial(addr, SETTINGS, cadata) as connection:
        _grow_receive_buffer(connection._transport)
        started = time.monotonic()
        stream = connection.open_stream()
        await stream.write(f"DOWNLOAD {size} {seed}\n".encode())
        await stream.close()
        digest = hashlib.sha256()
        length = await _read_all(stream, digest)
        elapsed = time.monotonic() - started
    if length != size or digest.hexdigest() != pattern_sha256(seed, size):
        raise RawTransferError(f"raw download of {size} bytes arrived as {length} bytes")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Command line of the raw aioquic fault server (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.rawquic")
    sub = parser.add_subparsers(dest="role", required=True)
    serve_parser = sub.add_parser("serve", help="a raw aioquic server")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=0)
    serve_parser.add_argument("--cert", required=True)
    serve_parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
