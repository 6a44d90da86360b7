"""The file_transfer primary server: one download, two servers, one stream (port of KWIK's
``file_transfer`` example).

Per download (one stream opened by the client): read the file name, write the metadata at
offset 0, recruit the relay (``session.add_relay``), then window by window (10 chunks of
64 KiB): tell the relay which ODD chunks to write and where (``relay.send_raw_data``), write the
EVEN chunks itself at their absolute offsets (``stream.set_write_offset``), and wait for the
client's ACK. Finally send FINISH to the relay and end the stream at its total length. The
layout is documented in :mod:`examples.file_transfer.protocol`. If the relay cannot be added,
the primary sends every chunk itself.

    python -m examples.file_transfer.relay  --files DIR                     # 127.0.0.1:4434
    python -m examples.file_transfer.server --files DIR                     # 127.0.0.1:4433
    python -m examples.file_transfer.client -k FILE                         # downloaded_FILE

    python -m examples.file_transfer.server --demo [--size MiB]             # all in one process

``--relay`` is the relay's address as the CLIENT reaches it (the client dials it). Without
``--cert``/``--key`` each server makes its own self-signed certificate (then use ``-k`` on the
client); with one certificate for both servers, ``--ca`` on the client verifies both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import kwik

from .._common import setup_logging
from .client import TransferError, download, format_report
from .protocol import (
    ACK,
    APP_ERROR,
    DEFAULT_PRIMARY_ADDR,
    DEFAULT_RELAY_ADDR,
    LOGGER,
    Finish,
    Metadata,
    ProtocolError,
    SendWindow,
    encode_error,
    encode_record,
    file_sha256,
    read_chunk,
    read_message,
    resolve_file,
    serve_cli,
    until_session_end,
)
from .relay import run_relay

__all__ = ["demo", "main", "run_primary", "serve_primary_session", "serve_transfer"]

#: Longest file name a client may ask for.
MAX_NAME_SIZE = 4096


async def serve_transfer(
    session: kwik.Session,
    stream: kwik.Stream,
    files_dir: Path,
    relay_addr: str | None,
    *,
    ack_timeout: float = 30.0,
) -> None:
    """Serve one download on ``stream`` (see the module docstring).

    A client that breaks the protocol or does not acknowledge a window within ``ack_timeout``
    seconds gets its session closed with :data:`~.protocol.APP_ERROR`.
    """
    try:
        payload = await read_message(stream, MAX_NAME_SIZE)
        if payload is None:
            return
        name = payload.decode("utf-8", "replace")
        try:
            path = resolve_file(files_dir, name)
            meta = Metadata(name, path.stat().st_size, await asyncio.to_thread(file_sha256, path))
        except FileNotFoundError as exc:
            LOGGER.info("primary: %s", exc)
            await stream.write(encode_error(str(exc)))
            await stream.close()
            return
        await _send_file(session, stream, path, meta, relay_addr, ack_timeout)
    except ProtocolError as exc:
        LOGGER.warning("primary: stream %d: %s", stream.stream_id, exc)
        await session.close_with_error(APP_ERROR, str(exc)[:200])
    except TimeoutError:
        LOGGER.warning("primary: stream %d: no ACK within %s s", stream.stream_id, ack_timeout)
        await session.close_with_error(APP_ERROR, "no ACK in time")


async def _send_file(
    session: kwik.Session,
    stream: kwik.Stream,
    path: Path,
    meta: Metadata,
    relay_addr: str | None,
    ack_timeout: float,
) -> None:
    header = meta.encode()
    layout = meta.layout()
    await stream.write(header)  # offset 0
    # the relay writes the odd chunks: with fewer than two chunks it has nothing to do
    relay = await _recruit(session, relay_addr) if layout.total_chunks >= 2 else None
    LOGGER.info(
        "primary: %s (%d bytes, %d windows) to %s, relay %s",
        meta.file_name,
        meta.file_size,
        layout.total_windows,
        session.remote_addr,
        relay,
    )
    with path.open("rb") as file:
        for window in range(layout.total_windows):
            chunks = layout.window_chunks(window)
            theirs = [i for i in chunks if i % 2 == 1] if relay is not None else []
            if relay is not None and theirs:
                command = SendWindow(
                    file_name=meta.file_name,
                    file_size=meta.file_size,
                    chunk_size=meta.chunk_size,
                    window=window,
                    start_chunk_index=chunks.start,
                    end_chunk_index=chunks.stop,
                    chunks=tuple((i, layout.record_offset(i)) for i in theirs),
                )
                await relay.send_raw_data(command.encode(), stream.stream_id)
            for index in chunks:
                if index in theirs:
                    continue
                stream.set_write_offset(layout.record_offset(index))
                await stream.write(encode_record(index, read_chunk(file, layout, index)))
            await _wait_ack(stream, window, ack_timeout)
    if relay is not None:
        await relay.send_raw_data(Finish(layout.total_length).encode(), stream.stream_id)
    stream.set_write_offset(layout.total_length)
    await stream.close()  # FIN at the total length
    LOGGER.info("primary: %s sent, stream ends at %d", meta.file_name, layout.total_length)


async def _recruit(session: kwik.Session, relay_addr: str | None) -> kwik.Relay | None:
    """The relay for this session, or None (no relay configured, or the client could not
    reach it: the primary then sends everything itself)."""
    if relay_addr is None:
        return None
    try:
        relay = await session.add_relay(relay_addr)
    except kwik.PathError as exc:
        LOGGER.warning("primary: no relay (%s); sending every chunk myself", exc)
        return None
    LOGGER.info("primary: relay %s is the client's path %d", relay.address, relay.path_id)
    return relay


async def _wait_ack(stream: kwik.Stream, window: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        ack = await read_message(stream, len(ACK))
    if ack != ACK:
        raise ProtocolError(f"expected ACK for window {window}, got {ack!r}")
    LOGGER.debug("primary: window %d acknowledged", window)


async def serve_primary_session(
    session: kwik.Session, files_dir: Path, relay_addr: str | None, *, ack_timeout: float = 30.0
) -> None:
    """Serve every download the client starts on ``session`` until it closes."""
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            group.create_task(
                until_session_end(
                    serve_transfer(session, stream, files_dir, relay_addr, ack_timeout=ack_timeout)
                )
            )


async def run_primary(
    listener: kwik.Listener,
    files_dir: Path,
    relay_addr: str | None,
    *,
    quiet: bool = False,
    ack_timeout: float = 30.0,
) -> None:
    """Accept client sessions until the listener closes."""
    if not quiet:
        print(
            f"file_transfer primary listening on {listener.addr}, files in {files_dir}, "
            f"relay {relay_addr}",
            flush=True,
        )
    async with asyncio.TaskGroup() as group:
        async for session in listener:
            LOGGER.info("primary: session from %s", session.remote_addr)
            group.create_task(
                serve_primary_session(session, files_dir, relay_addr, ack_timeout=ack_timeout)
            )


async def demo(size: int, *, progress: bool = False, config: kwik.Config | None = None) -> int:
    """Primary, relay and client in one process on 127.0.0.1 (port 0), with a generated file
    of ``size`` bytes and a generated certificate the client trusts.

    Returns 0 only if the copy is exact and both paths carried file data.
    """
    cert_pem, key_pem = kwik.generate_self_signed_cert(["localhost", "127.0.0.1"])
    server_tls = kwik.TLSConfig(certificate=cert_pem, private_key=key_pem)
    with tempfile.TemporaryDirectory(prefix="kwik-file-transfer-") as tmp:
        files_dir = Path(tmp) / "files"
        files_dir.mkdir()
        (files_dir / "demo.bin").write_bytes(os.urandom(size))
        relay_listener = await kwik.listen_addr("127.0.0.1:0", server_tls, config)
        primary_listener = await kwik.listen_addr("127.0.0.1:0", server_tls, config)
        print(
            f"demo: primary {primary_listener.addr}, relay {relay_listener.addr}, "
            f"demo.bin ({size} bytes)",
            flush=True,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(run_relay(relay_listener, files_dir, quiet=True))
            group.create_task(
                run_primary(primary_listener, files_dir, relay_listener.addr, quiet=True)
            )
            try:
                result = await download(
                    primary_listener.addr,
                    "demo.bin",
                    kwik.TLSConfig(cadata=cert_pem),
                    out=Path(tmp) / "downloaded_demo.bin",
                    config=config,
                    progress=sys.stderr if progress else None,
                )
            finally:
                await primary_listener.close()
                await relay_listener.close()
    for line in format_report(result):
        print(line, flush=True)
    relay_paths = [p for p in result.paths if not p.is_primary and p.bytes_received > 0]
    if result.exact and not relay_paths:
        print("the relay path carried nothing: the transfer did not use two paths", flush=True)
    return 0 if result.exact and relay_paths else 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point of the primary server (and of the demo)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.file_transfer.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--addr", default=DEFAULT_PRIMARY_ADDR, help="listen address")
    parser.add_argument("--files", default=".", help="directory of the files (default: .)")
    parser.add_argument(
        "--relay",
        default=DEFAULT_RELAY_ADDR,
        help="relay address, as the client reaches it; 'none' to send everything alone",
    )
    parser.add_argument("--cert", help="certificate (PEM); default: a self-signed one")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for ACK")
    parser.add_argument(
        "--demo", action="store_true", help="run primary, relay and client in this process"
    )
    parser.add_argument("--size", type=float, default=4.0, help="demo file size in MiB")
    parser.add_argument("--progress", action="store_true", help="demo: progress bar on stderr")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.demo:
        if args.size < 0:
            parser.error("--size must not be negative")
        size = round(args.size * 1024 * 1024)
        try:
            return asyncio.run(demo(size, progress=args.progress or sys.stderr.isatty()))
        except KeyboardInterrupt:
            return 130
        except (TransferError, kwik.KwikError, OSError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
    files_dir = Path(args.files)
    if not files_dir.is_dir():
        parser.error(f"--files {args.files}: not a directory")
    relay_addr = None if args.relay.lower() == "none" else args.relay

    return serve_cli(
        args.addr,
        args.cert,
        args.key,
        lambda listener: run_primary(listener, files_dir, relay_addr, ack_timeout=args.ack_timeout),
    )


if __name__ == "__main__":
    sys.exit(main())
