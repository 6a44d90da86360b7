"""The file_transfer primary server: one download, several servers, one stream (port of KWIK's
``file_transfer`` example, plus recovery from a relay's death).

Per download (one stream opened by the client): read the file name, write the metadata at
offset 0, recruit the relays (``session.add_relay``), then window by window (10 chunks of
64 KiB): deal the window's chunks round robin over itself and the live relays (with one relay:
even chunks for the primary, odd ones for the relay, as upstream), tell each relay which chunks
to write and where (``relay.send_raw_data``), write its own at their absolute offsets
(``stream.set_write_offset``), and wait for the client's ACK. Finally send FINISH to the relays
and end the stream at its total length. The layout is documented in
:mod:`examples.file_transfer.protocol`. A relay the client cannot reach gets no chunks.

When the client loses its path to a relay (the relay died, or the path failed), it opens a new
stream and sends RECOVER with the chunks it lacks; the primary drops that relay
(``session.remove_path``), writes the relay's missing chunks itself, answers which ones it took
over, and deals every later window without it. Nothing is lost; the download only waits for
kwik to notice the failure: the example sets fast-failover liveness bounds
(``protocol.FAILOVER``: a dead relay is noticed within 3 s, where kwik's defaults wait 15 s).

    python -m examples.file_transfer.relay  --files DIR                     # 127.0.0.1:4434
    python -m examples.file_transfer.server --files DIR                     # 127.0.0.1:4433
    python -m examples.file_transfer.client -k FILE                         # downloaded_FILE

    python -m examples.file_transfer.server --demo [--size MiB] [--relays N] [--stop-relay-after S]

``--relay`` is the relays' addresses (comma-separated) as the CLIENT reaches them (the client
dials them). Without ``--cert``/``--key`` each server makes its own self-signed certificate
(then use ``-k`` on the client, which then verifies no server); with one certificate for every
server, ``--ca`` on the client verifies them all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import kwik

from .._common import end_progress_line, say, setup_logging
from .client import TransferError, download, format_report
from .protocol import (
    ACK,
    APP_ERROR,
    CONTROL_MARK,
    DEFAULT_PRIMARY_ADDR,
    DEFAULT_RELAY_ADDR,
    LOGGER,
    Finish,
    Layout,
    Metadata,
    ProtocolError,
    Recover,
    SendWindow,
    TakenOver,
    encode_error,
    encode_record,
    failover_config,
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
#: The primary's own number among a transfer's writers (relays go by their client path id).
PRIMARY = 0

RelayAddrs = str | Sequence[str] | None


def _relay_list(relay_addrs: RelayAddrs) -> list[str]:
    if relay_addrs is None:
        return []
    if isinstance(relay_addrs, str):
        return [relay_addrs]
    return list(relay_addrs)


@dataclass
class _Transfer:
    """One download in progress: who was dealt which chunk, and which relays are still alive.

    Dealing a window and taking a dead relay's chunks over are each done without an ``await``
    in between, so a RECOVER either arrives before a window is dealt (the dead relay gets none
    of it) or after (its chunks of that window are in the client's missing list)."""

    stream: kwik.Stream
    path: Path
    layout: Layout
    relays: dict[int, kwik.Relay]
    """Live relays by path id, in recruiting order."""
    lost: set[int] = field(default_factory=set)
    """Path ids the client reported lost (even before their relay was recruited)."""
    owner: list[int | None] = field(default_factory=list)
    """Per chunk: :data:`PRIMARY`, the path id of the relay it was given to, or None (not
    dealt yet)."""
    taken_over: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.owner = [None] * self.layout.total_chunks

    def deal(self, chunks: range) -> dict[int, list[int]]:
        """Give each chunk of a window to a live writer (round robin by chunk index, the
        primary first: with one relay, the primary has the even chunks); return the lists."""
        writers = [PRIMARY, *self.relays]
        dealt: dict[int, list[int]] = {writer: [] for writer in writers}
        for index in chunks:
            writer = writers[index % len(writers)]
            self.owner[index] = writer
            dealt[writer].append(index)
        return dealt

    def take_over(self, path_id: int, missing: list[int]) -> tuple[kwik.Relay | None, list[int]]:
        """The client lost relay path ``path_id``: forget that relay, and make the primary the
        owner of its chunks among ``missing``. Returns the relay (None if it was not one of
        this transfer's live relays) and the chunks taken over."""
        self.lost.add(path_id)
        relay = self.relays.pop(path_id, None)
        taken = [
            index
            for index in missing
            if 0 <= index < len(self.owner) and self.owner[index] == path_id
        ]
        for index in taken:
            self.owner[index] = PRIMARY
        self.taken_over.extend(taken)
        return relay, taken


async def _write_records(transfer: _Transfer, file: BinaryIO, indices: list[int]) -> None:
    """Write the records of ``indices`` into the download stream at their offsets."""
    stream, layout = transfer.stream, transfer.layout
    for index in indices:
        record = encode_record(index, read_chunk(file, layout, index))
        # set_write_offset and the write's enqueue run without an await in between, so a
        # recovery writing concurrently on the same stream cannot move this record
        stream.set_write_offset(layout.record_offset(index))
        await stream.write(record)


async def serve_transfer(
    session: kwik.Session,
    stream: kwik.Stream,
    files_dir: Path,
    relay_addrs: RelayAddrs,
    *,
    ack_timeout: float = 30.0,
    transfers: dict[int, _Transfer] | None = None,
) -> None:
    """Serve one stream the client opened: a download (see the module docstring), or a
    RECOVER request about one (:mod:`~examples.file_transfer.protocol`).

    ``transfers`` holds the session's downloads in progress by stream id, for RECOVER requests
    to find theirs (one dict per session, see :func:`serve_primary_session`). A client that
    breaks the protocol or does not acknowledge a window within ``ack_timeout`` seconds gets
    its session closed with :data:`~.protocol.APP_ERROR`.
    """
    if transfers is None:
        transfers = {}
    try:
        payload = await read_message(stream)
        if payload is None:
            return
        if payload.startswith(CONTROL_MARK):
            await _serve_recover(session, stream, Recover.decode(payload), transfers)
            return
        if len(payload) > MAX_NAME_SIZE:
            raise ProtocolError(f"file name of {len(payload)} bytes (at most {MAX_NAME_SIZE})")
        name = payload.decode("utf-8", "replace")
        try:
            path = resolve_file(files_dir, name)
            meta = Metadata(name, path.stat().st_size, await asyncio.to_thread(file_sha256, path))
        except FileNotFoundError as exc:
            LOGGER.info("primary: %s", exc)
            await stream.write(encode_error(str(exc)))
            await stream.close()
            return
        await _send_file(session, stream, path, meta, relay_addrs, ack_timeout, transfers)
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
    relay_addrs: RelayAddrs,
    ack_timeout: float,
    transfers: dict[int, _Transfer],
) -> None:
    header = meta.encode()
    layout = meta.layout()
    # registered before the client can know the stream's layout: any RECOVER finds it
    transfer = _Transfer(stream, path, layout, {})
    transfers[stream.stream_id] = transfer
    try:
        await stream.write(header)  # offset 0
        # relays write some chunks of each window: with fewer than two chunks they have nothing
        # to do
        if layout.total_chunks >= 2:
            for relay in await _recruit(session, _relay_list(relay_addrs)):
                if relay.path_id in transfer.lost:  # lost while the others were being added
                    await _forget(session, relay)
                else:
                    transfer.relays[relay.path_id] = relay
        LOGGER.info(
            "primary: %s (%d bytes, %d windows) to %s, relays %s",
            meta.file_name,
            meta.file_size,
            layout.total_windows,
            session.remote_addr,
            list(transfer.relays.values()),
        )
        with path.open("rb") as file:
            for window in range(layout.total_windows):
                chunks = layout.window_chunks(window)
                dealt = transfer.deal(chunks)
                for path_id, theirs in dealt.items():
                    helper = transfer.relays.get(path_id)
                    if helper is None or not theirs:
                        continue
                    command = SendWindow(
                        file_name=meta.file_name,
                        file_size=meta.file_size,
                        chunk_size=meta.chunk_size,
                        window=window,
                        start_chunk_index=chunks.start,
                        end_chunk_index=chunks.stop,
                        chunks=tuple((i, layout.record_offset(i)) for i in theirs),
                    )
                    try:
                        await helper.send_raw_data(command.encode(), stream.stream_id)
                    except kwik.PathError:
                        # removed by a RECOVER meanwhile: its chunks are being taken over
                        LOGGER.info("primary: relay %s gone before window %d", helper, window)
                await _write_records(transfer, file, dealt[PRIMARY])
                await _wait_ack(stream, window, ack_timeout)
        for relay in list(transfer.relays.values()):
            try:
                await relay.send_raw_data(Finish(layout.total_length).encode(), stream.stream_id)
            except kwik.PathError:
                pass  # gone meanwhile: it had nothing left to do
        stream.set_write_offset(layout.total_length)
        await stream.close()  # FIN at the total length
    finally:
        transfers.pop(stream.stream_id, None)
    LOGGER.info(
        "primary: %s sent, stream ends at %d%s",
        meta.file_name,
        layout.total_length,
        f", took over chunks {transfer.taken_over}" if transfer.taken_over else "",
    )


async def _serve_recover(
    session: kwik.Session, stream: kwik.Stream, request: Recover, transfers: dict[int, _Transfer]
) -> None:
    """The client lost a relay path: take over that relay's missing chunks, then answer."""
    transfer = transfers.get(request.stream_id)
    taken: list[int] = []
    if transfer is not None:
        relay, taken = transfer.take_over(request.path_id, request.chunks())
        LOGGER.warning(
            "primary: the client lost relay path %d (%s); taking over chunks %s",
            request.path_id,
            relay.address if relay is not None else "not a live relay of this download",
            taken,
        )
        if relay is not None:
            await _forget(session, relay)
        if taken and not transfer.stream.is_write_closed:
            try:
                with transfer.path.open("rb") as file:
                    await _write_records(transfer, file, taken)
            except kwik.StreamClosedError:
                # the download ended meanwhile: the client had them after all
                LOGGER.info("primary: stream %d ended during the take-over", request.stream_id)
    await stream.write(TakenOver(tuple(taken)).encode())
    await stream.close()


async def _forget(session: kwik.Session, relay: kwik.Relay) -> None:
    """Stop queuing commands for a relay the client lost (KWIK v2 has no frame to close the
    client's path to it; that path is gone anyway)."""
    try:
        await session.remove_path(relay.path_id)
    except kwik.PathError:
        pass  # removed already


async def _recruit(session: kwik.Session, relay_addrs: list[str]) -> list[kwik.Relay]:
    """The relays for this session: those the client could reach (the others' chunks are
    dealt to the rest; with none, the primary sends everything itself)."""
    results = await asyncio.gather(
        *(session.add_relay(addr) for addr in relay_addrs), return_exceptions=True
    )
    relays: list[kwik.Relay] = []
    for addr, result in zip(relay_addrs, results, strict=True):
        if isinstance(result, kwik.Relay):
            LOGGER.info("primary: relay %s is the client's path %d", addr, result.path_id)
            relays.append(result)
        elif isinstance(result, kwik.PathError):
            LOGGER.warning("primary: no relay %s (%s); its share goes to the others", addr, result)
        else:
            raise result
    return relays


async def _wait_ack(stream: kwik.Stream, window: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        ack = await read_message(stream, len(ACK))
    if ack != ACK:
        raise ProtocolError(f"expected ACK for window {window}, got {ack!r}")
    LOGGER.debug("primary: window %d acknowledged", window)


async def serve_primary_session(
    session: kwik.Session, files_dir: Path, relay_addrs: RelayAddrs, *, ack_timeout: float = 30.0
) -> None:
    """Serve every stream the client opens on ``session`` (downloads and RECOVER requests)
    until it closes."""
    transfers: dict[int, _Transfer] = {}
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            group.create_task(
                until_session_end(
                    serve_transfer(
                        session,
                        stream,
                        files_dir,
                        relay_addrs,
                        ack_timeout=ack_timeout,
                        transfers=transfers,
                    )
                )
            )


async def run_primary(
    listener: kwik.Listener,
    files_dir: Path,
    relay_addrs: RelayAddrs,
    *,
    quiet: bool = False,
    ack_timeout: float = 30.0,
) -> None:
    """Accept client sessions until the listener closes; ``relay_addrs`` are the relays'
    addresses as the client reaches them (one, several, or None)."""
    if not quiet:
        print(
            f"file_transfer primary listening on {listener.addr}, files in {files_dir}, "
            f"relays {','.join(_relay_list(relay_addrs)) or 'none'}",
            flush=True,
        )
    async with asyncio.TaskGroup() as group:
        async for session in listener:
            LOGGER.info("primary: session from %s", session.remote_addr)
            group.create_task(
                serve_primary_session(session, files_dir, relay_addrs, ack_timeout=ack_timeout)
            )


async def demo(
    size: int,
    *,
    progress: bool = False,
    config: kwik.Config | None = None,
    relays: int = 1,
    stop_relay_after: float | None = None,
) -> int:
    """Primary, ``relays`` relays and client in one process on 127.0.0.1 (port 0), with a
    generated file of ``size`` bytes and a generated certificate the client trusts.

    ``stop_relay_after``: shut the first relay down that many seconds into the download (its
    listener closes, and with it the client's path to it): the primary takes its chunks over.

    Returns 0 only if the copy is exact and a relay path carried file data.
    """
    config = config if config is not None else failover_config()
    cert_pem, key_pem = kwik.generate_self_signed_cert(["localhost", "127.0.0.1"])
    server_tls = kwik.TLSConfig(certificate=cert_pem, private_key=key_pem)
    with tempfile.TemporaryDirectory(prefix="kwik-file-transfer-") as tmp:
        files_dir = Path(tmp) / "files"
        files_dir.mkdir()
        (files_dir / "demo.bin").write_bytes(os.urandom(size))
        relay_listeners = [
            await kwik.listen_addr("127.0.0.1:0", server_tls, config) for _ in range(relays)
        ]
        relay_addrs = [listener.addr for listener in relay_listeners]
        primary_listener = await kwik.listen_addr("127.0.0.1:0", server_tls, config)
        print(
            f"demo: primary {primary_listener.addr}, relays {', '.join(relay_addrs) or 'none'}, "
            f"demo.bin ({size} bytes)",
            flush=True,
        )

        async def stop_relay(delay: float) -> None:
            await asyncio.sleep(delay)
            say(f"demo: stopping relay {relay_addrs[0]}")  # on its own line, not the bar's
            await relay_listeners[0].close()

        async with asyncio.TaskGroup() as group:
            for listener in relay_listeners:
                group.create_task(run_relay(listener, files_dir, quiet=True))
            group.create_task(run_primary(primary_listener, files_dir, relay_addrs, quiet=True))
            stopper = (
                group.create_task(stop_relay(stop_relay_after))
                if stop_relay_after is not None and relay_listeners
                else None
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
                if stopper is not None:
                    stopper.cancel()
                await primary_listener.close()
                for listener in relay_listeners:
                    await listener.close()
    for line in format_report(result):
        print(line, flush=True)
    relay_paths = [p for p in result.paths if not p.is_primary and p.bytes_received > 0]
    if result.exact and relays and not relay_paths:
        print("no relay path carried anything: the transfer did not use several paths", flush=True)
    return 0 if result.exact and (relay_paths or not relays) else 1


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
        help="relay address(es), comma-separated, as the client reaches them; 'none' to send "
        "everything alone",
    )
    parser.add_argument("--cert", help="certificate (PEM); default: a self-signed one")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for ACK")
    parser.add_argument(
        "--demo", action="store_true", help="run primary, relay and client in this process"
    )
    parser.add_argument("--size", type=float, default=4.0, help="demo file size in MiB")
    parser.add_argument("--relays", type=int, default=1, help="demo: number of relays")
    parser.add_argument(
        "--stop-relay-after",
        type=float,
        metavar="SECONDS",
        help="demo: shut the first relay down that long into the download",
    )
    parser.add_argument("--progress", action="store_true", help="demo: progress bar on stderr")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.demo:
        if args.size < 0 or args.relays < 0:
            parser.error("--size and --relays must not be negative")
        size = round(args.size * 1024 * 1024)
        try:
            return asyncio.run(
                demo(
                    size,
                    progress=args.progress or sys.stderr.isatty(),
                    relays=args.relays,
                    stop_relay_after=args.stop_relay_after,
                )
            )
        except KeyboardInterrupt:
            end_progress_line()
            return 130
        except (TransferError, kwik.KwikError, OSError) as exc:
            end_progress_line()  # a download that failed left its bar unfinished
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
    files_dir = Path(args.files)
    if not files_dir.is_dir():
        parser.error(f"--files {args.files}: not a directory")
    relay_addrs = (
        []
        if args.relay.lower() == "none"
        else [addr.strip() for addr in args.relay.split(",") if addr.strip()]
    )

    return serve_cli(
        args.addr,
        args.cert,
        args.key,
        lambda listener: run_primary(
            listener, files_dir, relay_addrs, ack_timeout=args.ack_timeout
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
