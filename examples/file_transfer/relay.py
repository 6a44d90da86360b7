"""The file_transfer relay: the secondary server a primary recruits with ``add_relay``.

It never talks to the primary directly. The client, asked by the primary (AddPath), dials the
relay as a second path of its session; the relay sees an ordinary kwik session. The primary's
commands (:class:`~.protocol.SendWindow`, :class:`~.protocol.Finish`) reach the relay on the
download's logical stream, forwarded by the client; the relay answers by writing the chunk
records it was given (with one relay, the odd ones of each window) straight into that same
logical stream, each at the absolute offset the command gives. The client merges them with the
other servers' records.

A relay keeps no state the download depends on: if it dies, the client tells the primary which
chunks never arrived and the primary sends them itself.

    python -m examples.file_transfer.relay --files DIR                # 127.0.0.1:4434
    python -m examples.file_transfer.relay --files DIR --cert c.pem --key k.pem --addr 0.0.0.0:4434

The relay must hold the same files as the primary (same names, same bytes): the client checks
the SHA-256 the primary announced.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import kwik

from .._common import setup_logging
from .protocol import (
    APP_ERROR,
    DEFAULT_RELAY_ADDR,
    LOGGER,
    Finish,
    ProtocolError,
    SendWindow,
    decode_command,
    encode_record,
    read_chunk,
    read_message,
    resolve_file,
    serve_cli,
    until_session_end,
)

__all__ = ["main", "run_relay", "send_window", "serve_relay_session", "serve_relay_stream"]


async def send_window(stream: kwik.Stream, files_dir: Path, command: SendWindow) -> int:
    """Write the records ``command`` asks for at their offsets; return the bytes written.

    Raises:
        FileNotFoundError: the relay does not have the file.
        ProtocolError: the command is inconsistent, or the file is not the one described.
    """
    path = resolve_file(files_dir, command.file_name)
    if path.stat().st_size != command.file_size:
        raise ProtocolError(
            f"{command.file_name}: the relay's copy has {path.stat().st_size} bytes, "
            f"the primary's {command.file_size}"
        )
    layout = command.layout
    written = 0
    with path.open("rb") as file:
        for index, offset in command.chunks:
            if not command.start_chunk_index <= index < command.end_chunk_index:
                raise ProtocolError(f"chunk {index} is outside window {command.window}")
            if not 0 <= index < layout.total_chunks:
                raise ProtocolError(f"chunk {index} is past the end of {command.file_name}")
            record = encode_record(index, read_chunk(file, layout, index))
            LOGGER.debug("relay: chunk %d at stream offset %d", index, offset)
            stream.set_write_offset(offset)
            written += await stream.write(record)
    return written


async def serve_relay_stream(stream: kwik.Stream, files_dir: Path) -> None:
    """Execute the commands arriving on ``stream`` until FINISH (or the stream ends).

    A command the relay cannot execute closes the session with :data:`~.protocol.APP_ERROR`:
    the client's path to it ends, and the primary takes the relay's missing records over.
    """
    session = stream.session
    assert isinstance(session, kwik.Session)
    written = 0
    try:
        while True:
            payload = await read_message(stream)
            if payload is None:
                LOGGER.info("relay: stream %d ended without FINISH", stream.stream_id)
                return
            command = decode_command(payload)
            if isinstance(command, Finish):
                # The primary alone sends the FIN (at final_offset). A FIN from the relay too
                # could reach the client after it is done with the stream, as a stray frame.
                LOGGER.info(
                    "relay: stream %d finished, %d bytes written, stream ends at %d",
                    stream.stream_id,
                    written,
                    command.final_offset,
                )
                return
            written += await send_window(stream, files_dir, command)
    except (ProtocolError, FileNotFoundError) as exc:
        LOGGER.error("relay: stream %d: %s", stream.stream_id, exc)
        await session.close_with_error(APP_ERROR, str(exc)[:200])


async def serve_relay_session(session: kwik.Session, files_dir: Path) -> None:
    """Serve every stream the primary relays through this (client) session, until it closes."""
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            group.create_task(until_session_end(serve_relay_stream(stream, files_dir)))


async def run_relay(listener: kwik.Listener, files_dir: Path, *, quiet: bool = False) -> None:
    """Accept client sessions until the listener closes; serve each with
    :func:`serve_relay_session`."""
    if not quiet:
        print(f"file_transfer relay listening on {listener.addr}, files in {files_dir}", flush=True)
    async with asyncio.TaskGroup() as group:
        async for session in listener:
            LOGGER.info("relay: session from %s", session.remote_addr)
            group.create_task(serve_relay_session(session, files_dir))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point of the relay."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.file_transfer.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--addr", default=DEFAULT_RELAY_ADDR, help="listen address (host:port)")
    parser.add_argument("--files", default=".", help="directory of the files (default: .)")
    parser.add_argument("--cert", help="certificate (PEM); default: a self-signed one")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    files_dir = Path(args.files)
    if not files_dir.is_dir():
        parser.error(f"--files {args.files}: not a directory")
    setup_logging(args.verbose)

    return serve_cli(
        args.addr, args.cert, args.key, lambda listener: run_relay(listener, files_dir)
    )


if __name__ == "__main__":
    sys.exit(main())
