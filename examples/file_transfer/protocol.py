"""The file_transfer wire protocol: messages, records, commands and the stream layout.

Everything the primary server, the relays (secondary servers) and the client must agree on
lives here. One download is ONE logical kwik stream, opened by the client. Offsets below are
absolute offsets of that logical stream.

Client -> primary (the client's write direction, carried on the primary path)::

    message(file name, UTF-8)       the request
    message(b"ACK")                 once per window, after every chunk of the window was read
                                    (the last window too, unlike upstream: the primary ends
                                    the stream only once the client has everything)

Primary + relays -> client (the read direction; the client reads ONE merged stream)::

    0                   message(metadata JSON)                      written by the primary
    data_start          record 0 | record 1 | ... | record n-1      each written by the primary
                                                                    or by one relay
    total_length        FIN                                         primary only

    message = u32 length (big-endian) + payload
    record  = u64 chunk index + u32 chunk size (big-endian) + chunk bytes

    data_start       = len(message(metadata JSON))
    record_offset(i) = data_start + i * (RECORD_HEADER.size + chunk_size)
    total_length     = data_start + n_chunks * RECORD_HEADER.size + file_size

Every chunk is ``chunk_size`` bytes except the last one, so the offset of every record is known
before any byte is sent: the primary computes the relays' offsets and tells them, and each
server writes its records with ``stream.set_write_offset(record_offset(i))``. The client needs
no offset at all: it reads records in order and kwik merges the paths by offset. Within a
window the primary deals the chunks round-robin over the writers still alive (itself first):
with one relay, even chunks are the primary's and odd ones the relay's, as upstream.

Primary -> relay (``relay.send_raw_data(message(command JSON), stream.stream_id)``; the client
forwards the bytes to the relay on the same logical stream id)::

    {"type": "SEND_WINDOW", "file_name", "file_size", "chunk_size", "window",
     "start_chunk_index", "end_chunk_index" (exclusive), "chunks": [[index, offset], ...]}
    {"type": "FINISH", "final_offset": total_length}

FINISH ends the relay's part (``final_offset`` is informational). Only the primary sends the
FIN: the relays' writes all lie below it, and a FIN from a relay could reach the client after
the client is done with the stream (kwik would then take it for a new incoming stream).

Recovery (client -> primary, on a NEW stream the client opens; not in upstream)::

    client:   message(CONTROL_MARK + {"type": "RECOVER", "stream_id", "path_id",
                                      "missing": [[first, end], ...]})
    primary:  message({"type": "TAKEN_OVER", "chunks": [index, ...]})      then FIN

KWIK v2 has no frame that tells the primary a relay's path failed, so the client tells it. When
one of its relay paths ends mid-download (``Session.add_path_closed_callback``), whatever that
relay had not delivered never will be: the client lists every chunk from its read position on
that is not complete in ``Stream.received_ranges()`` (runs of chunk indices, end exclusive),
with the relay path's id (kwik's ``Relay.path_id`` on the primary is the same number). The
primary stops giving that relay work, writes the listed chunks it had given to that relay into
the download stream itself, at their offsets, and answers which ones it took over. Listing
chunks the primary wrote itself, or has not dealt yet, is harmless: it only takes over its
dead relays' chunks, and deals later windows among the writers still alive. Re-sent bytes that
did arrive after all are identical and kwik trims the overlap. The read window of a download
(10 chunks) fits ``Config.stream_receive_buffer`` (1 MiB), so the missing chunks are always
inside the client's receive window while it waits at the first gap.

The first message on a stream is a file name unless it starts with :data:`CONTROL_MARK` (a NUL
byte, which no file name contains).

Metadata JSON: ``{file_name, file_size, chunk_size, window_size_chunks, total_windows,
sha256}``, or ``{"error": "..."}`` when the primary cannot serve the file (then the stream ends).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import kwik

from .._common import load_or_generate_tls

__all__ = [
    "ACK",
    "APP_ERROR",
    "CHUNK_SIZE",
    "CONTROL_MARK",
    "DEFAULT_PRIMARY_ADDR",
    "DEFAULT_RELAY_ADDR",
    "LOGGER",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_HEADER",
    "RECORD_HEADER",
    "WINDOW_SIZE_CHUNKS",
    "Command",
    "Finish",
    "Layout",
    "Metadata",
    "ProtocolError",
    "Recover",
    "SendWindow",
    "TakenOver",
    "chunk_runs",
    "decode_command",
    "encode_error",
    "encode_message",
    "encode_record",
    "file_sha256",
    "missing_chunks",
    "read_chunk",
    "read_message",
    "resolve_file",
    "until_session_end",
]

LOGGER = logging.getLogger("kwik.examples.file_transfer")

#: Bytes per chunk (as upstream).
CHUNK_SIZE = 64 * 1024
#: Chunks per window; the primary waits for the client's ACK after each window (as upstream).
WINDOW_SIZE_CHUNKS = 10
#: Default addresses (as upstream: primary 4433, relay 4434).
DEFAULT_PRIMARY_ADDR = "127.0.0.1:4433"

#: Liveness bounds for fast failover: a relay that dies is noticed within 3 s (kwik's defaults
#: wait 15 s, so that an 8 s outage never fails a path); the price is that a network outage
#: longer than about 1.7 s fails a path too (``docs/guide/configuration.md``).
FAILOVER = {"heartbeat_interval": 1.0, "heartbeat_miss_threshold": 3}


def failover_config(**changes: Any) -> kwik.Config:
    """The example's :class:`kwik.Config`: kwik's defaults with :data:`FAILOVER`."""
    return kwik.Config(**{**FAILOVER, **changes})


DEFAULT_RELAY_ADDR = "127.0.0.1:4434"

#: Length prefix of a message.
MESSAGE_HEADER = struct.Struct(">I")
#: Header of a chunk record: chunk index, chunk size.
RECORD_HEADER = struct.Struct(">QI")
#: Largest message (file name, metadata, ACK, command) a peer accepts.
MAX_MESSAGE_SIZE = 1024 * 1024
#: The acknowledgement the client sends after each window.
ACK = b"ACK"
#: First byte of a control message (recovery) where a file name would otherwise be.
CONTROL_MARK = b"\x00"
#: Application error code a side closes the session with when the transfer cannot go on
#: (0 and 1 are kwik's own: normal close and failure).
APP_ERROR = 2


class ProtocolError(Exception):
    """A peer sent something the file_transfer protocol does not allow."""


# --- messages and records -------------------------------------------------------------------


def encode_message(payload: bytes) -> bytes:
    """``payload`` with its u32 length prefix."""
    if len(payload) > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return MESSAGE_HEADER.pack(len(payload)) + payload


async def read_message(stream: kwik.Stream, max_size: int = MAX_MESSAGE_SIZE) -> bytes | None:
    """Read one length-prefixed message; None if the stream ended cleanly before it.

    Raises:
        ProtocolError: the message is larger than ``max_size`` or the stream ended inside it.
    """
    try:
        header = await stream.readexactly(MESSAGE_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("stream ended inside a message length") from None
    (size,) = MESSAGE_HEADER.unpack(header)
    if size > max_size:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_size}")
    try:
        return await stream.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError(f"stream ended inside a message of {size} bytes") from None


def encode_record(index: int, data: bytes) -> bytes:
    """A chunk record: header (index, size) followed by the chunk bytes."""
    return RECORD_HEADER.pack(index, len(data)) + data


# --- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where every record of a transfer lies in the logical stream."""

    data_start: int
    """Offset of record 0: the length of the metadata message."""
    file_size: int
    chunk_size: int = CHUNK_SIZE
    window_size_chunks: int = WINDOW_SIZE_CHUNKS

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.window_size_chunks < 1:
            raise ValueError("chunk_size and window_size_chunks must be positive")
        if self.file_size < 0 or self.data_start < 0:
            raise ValueError("file_size and data_start must not be negative")

    @property
    def total_chunks(self) -> int:
        return -(-self.file_size // self.chunk_size)

    @property
    def total_windows(self) -> int:
        return -(-self.total_chunks // self.window_size_chunks)

    @property
    def total_length(self) -> int:
        """The stream's final offset (where both servers put their FIN)."""
        return self.data_start + self.total_chunks * RECORD_HEADER.size + self.file_size

    def chunk_length(self, index: int) -> int:
        """Bytes of chunk ``index`` (only the last chunk may be short)."""
        self._check(index)
        return min(self.chunk_size, self.file_size - index * self.chunk_size)

    def file_offset(self, index: int) -> int:
        """Offset of chunk ``index`` in the file."""
        self._check(index)
        return index * self.chunk_size

    def record_offset(self, index: int) -> int:
        """Stream offset of the record of chunk ``index``."""
        self._check(index)
        return self.data_start + index * (RECORD_HEADER.size + self.chunk_size)

    def window_chunks(self, window: int) -> range:
        """Chunk indices of ``window``."""
        if not 0 <= window < self.total_windows:
            raise IndexError(f"window {window} out of range 0..{self.total_windows - 1}")
        start = window * self.window_size_chunks
        return range(start, min(start + self.window_size_chunks, self.total_chunks))

    def window_of(self, index: int) -> int:
        """The window chunk ``index`` belongs to."""
        self._check(index)
        return index // self.window_size_chunks

    def _check(self, index: int) -> None:
        if not 0 <= index < self.total_chunks:
            raise IndexError(f"chunk {index} out of range 0..{self.total_chunks - 1}")


# --- metadata -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """What the primary announces before any chunk."""

    file_name: str
    file_size: int
    sha256: str
    chunk_size: int = CHUNK_SIZE
    window_size_chunks: int = WINDOW_SIZE_CHUNKS

    @property
    def total_windows(self) -> int:
        return Layout(0, self.file_size, self.chunk_size, self.window_size_chunks).total_windows

    def encode(self) -> bytes:
        """The metadata message (length prefix included): exactly the bytes at offset 0."""
        body = {
            "file_name": self.file_name,
            "file_size": self.file_size,
            "chunk_size": self.chunk_size,
            "window_size_chunks": self.window_size_chunks,
            "total_windows": self.total_windows,
            "sha256": self.sha256,
        }
        return encode_message(json.dumps(body, separators=(",", ":")).encode())

    def layout(self) -> Layout:
        """The stream layout this metadata message implies."""
        return Layout(len(self.encode()), self.file_size, self.chunk_size, self.window_size_chunks)

    @classmethod
    def decode(cls, payload: bytes) -> tuple[Metadata, Layout]:
        """Parse a metadata message payload; return it with the layout it implies.

        The layout is computed from the received size, not from re-encoding.

        Raises:
            ProtocolError: not valid metadata, or the server reported an error.
        """
        body = _load_json(payload, "metadata")
        if "error" in body:
            raise ProtocolError(f"server error: {body['error']}")
        try:
            meta = cls(
                file_name=str(body["file_name"]),
                file_size=_non_negative(body["file_size"]),
                sha256=str(body["sha256"]),
                chunk_size=_non_negative(body["chunk_size"]),
                window_size_chunks=_non_negative(body["window_size_chunks"]),
            )
            layout = Layout(
                MESSAGE_HEADER.size + len(payload),
                meta.file_size,
                meta.chunk_size,
                meta.window_size_chunks,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad metadata {body!r}: {exc}") from None
        if body.get("total_windows") != layout.total_windows:
            raise ProtocolError(
                f"metadata says {body.get('total_windows')} windows, layout gives "
                f"{layout.total_windows}"
            )
        return meta, layout


def encode_error(reason: str) -> bytes:
    """The metadata message a primary sends instead when it cannot serve the file."""
    return encode_message(json.dumps({"error": reason}).encode())


# --- commands (primary -> relay) ------------------------------------------------------------


@dataclass(frozen=True)
class SendWindow:
    """Ask the relay to write chunks ``chunks`` (pairs of index, stream offset) of a file."""

    file_name: str
    file_size: int
    chunk_size: int
    window: int
    start_chunk_index: int
    end_chunk_index: int
    chunks: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        return _encode_command(
            {
                "type": "SEND_WINDOW",
                "file_name": self.file_name,
                "file_size": self.file_size,
                "chunk_size": self.chunk_size,
                "window": self.window,
                "start_chunk_index": self.start_chunk_index,
                "end_chunk_index": self.end_chunk_index,
                "chunks": [list(pair) for pair in self.chunks],
            }
        )

    @property
    def layout(self) -> Layout:
        """The layout of the file as far as the relay needs it (no data_start)."""
        return Layout(0, self.file_size, self.chunk_size)


@dataclass(frozen=True)
class Finish:
    """End of the transfer; ``final_offset`` is where the primary puts the stream's FIN."""

    final_offset: int

    def encode(self) -> bytes:
        return _encode_command({"type": "FINISH", "final_offset": self.final_offset})


Command = SendWindow | Finish


# --- recovery (client -> primary, primary -> client) -----------------------------------------


@dataclass(frozen=True)
class Recover:
    """The client lost relay path ``path_id``: chunks ``missing`` of download stream
    ``stream_id`` are not (completely) here; the primary should send the ones it gave that
    relay."""

    stream_id: int
    path_id: int
    missing: tuple[tuple[int, int], ...]
    """Runs of chunk indices ``[first, end)``."""

    def encode(self) -> bytes:
        """The whole message, length prefix and :data:`CONTROL_MARK` included."""
        body = {
            "type": "RECOVER",
            "stream_id": self.stream_id,
            "path_id": self.path_id,
            "missing": [list(run) for run in self.missing],
        }
        return encode_message(CONTROL_MARK + json.dumps(body, separators=(",", ":")).encode())

    def chunks(self) -> list[int]:
        """Every chunk index the runs cover, in order."""
        return [index for first, end in self.missing for index in range(first, end)]

    @classmethod
    def decode(cls, payload: bytes) -> Recover:
        """Parse a control message payload (starting with :data:`CONTROL_MARK`).

        Raises:
            ProtocolError: not a valid RECOVER message.
        """
        if not payload.startswith(CONTROL_MARK):
            raise ProtocolError("not a control message")
        body = _load_json(payload[len(CONTROL_MARK) :], "control message")
        if body.get("type") != "RECOVER":
            raise ProtocolError(f"unknown control message type {body.get('type')!r}")
        try:
            runs = tuple(
                (_non_negative(first), _non_negative(end)) for first, end in body["missing"]
            )
            if any(end < first for first, end in runs):
                raise ValueError("a run ends before it starts")
            return cls(
                stream_id=_non_negative(body["stream_id"]),
                path_id=_non_negative(body["path_id"]),
                missing=runs,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad RECOVER message {body!r}: {exc}") from None


@dataclass(frozen=True)
class TakenOver:
    """The primary's answer to :class:`Recover`: the chunks it now sends itself."""

    chunks: tuple[int, ...]

    def encode(self) -> bytes:
        return _encode_command({"type": "TAKEN_OVER", "chunks": list(self.chunks)})

    @classmethod
    def decode(cls, payload: bytes) -> TakenOver:
        """Parse the answer.

        Raises:
            ProtocolError: not a valid TAKEN_OVER message.
        """
        body = _load_json(payload, "answer")
        try:
            if body.get("type") != "TAKEN_OVER":
                raise ValueError("not TAKEN_OVER")
            return cls(tuple(_non_negative(index) for index in body["chunks"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad answer {body!r}: {exc}") from None


def missing_chunks(layout: Layout, received: list[tuple[int, int]], first: int) -> list[int]:
    """Chunks from ``first`` on whose record is not entirely inside the ``received`` byte
    ranges (``Stream.received_ranges()``: sorted, disjoint ``[start, end)``)."""
    missing: list[int] = []
    step = RECORD_HEADER.size + layout.chunk_size
    ranges = iter(received)
    current = next(ranges, None)
    for index in range(first, layout.total_chunks):
        start = layout.data_start + index * step
        end = start + RECORD_HEADER.size + layout.chunk_length(index)
        while current is not None and current[1] <= start:
            current = next(ranges, None)
        if current is None or not (current[0] <= start and end <= current[1]):
            missing.append(index)
    return missing


def chunk_runs(indices: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted chunk indices as runs ``[first, end)``: [1, 2, 3, 7] -> ((1, 4), (7, 8))."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return tuple(runs)


def _encode_command(body: dict[str, Any]) -> bytes:
    return encode_message(json.dumps(body, separators=(",", ":")).encode())


def decode_command(payload: bytes) -> Command:
    """Parse a command message payload.

    Raises:
        ProtocolError: not a valid command.
    """
    body = _load_json(payload, "command")
    kind = body.get("type")
    try:
        if kind == "SEND_WINDOW":
            return SendWindow(
                file_name=str(body["file_name"]),
                file_size=_non_negative(body["file_size"]),
                chunk_size=_non_negative(body["chunk_size"]),
                window=_non_negative(body["window"]),
                start_chunk_index=_non_negative(body["start_chunk_index"]),
                end_chunk_index=_non_negative(body["end_chunk_index"]),
                chunks=tuple(
                    (_non_negative(index), _non_negative(offset))
                    for index, offset in body["chunks"]
                ),
            )
        if kind == "FINISH":
            return Finish(final_offset=_non_negative(body["final_offset"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad {kind} command {body!r}: {exc}") from None
    raise ProtocolError(f"unknown command type {kind!r}")


def _load_json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return body


def _non_negative(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


# --- files ----------------------------------------------------------------------------------


def resolve_file(files_dir: Path, name: str) -> Path:
    """The regular file ``name`` directly inside ``files_dir``.

    Names are plain file names: no directories, so a client cannot reach outside ``files_dir``.

    Raises:
        FileNotFoundError: no such file, or ``name`` is not a plain file name.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise FileNotFoundError(f"invalid file name {name!r}")
    path = files_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"no file {name!r}")
    return path


def read_chunk(file: BinaryIO, layout: Layout, index: int) -> bytes:
    """Chunk ``index`` of ``file``, exactly ``layout.chunk_length(index)`` bytes.

    Raises:
        ProtocolError: the file is shorter than the layout says (it changed, or it is not the
            file the primary described).
    """
    size = layout.chunk_length(index)
    file.seek(layout.file_offset(index))
    data = file.read(size)
    if len(data) != size:
        raise ProtocolError(f"chunk {index}: read {len(data)} of {size} bytes (file too short)")
    return data


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


# --- tasks ----------------------------------------------------------------------------------


async def until_session_end(handler: Awaitable[None]) -> None:
    """Run a stream handler; its session (or stream) closing under it is a normal end."""
    try:
        await handler
    except (kwik.SessionClosedError, kwik.StreamClosedError) as exc:
        LOGGER.debug("handler ended: %s", exc)


def serve_cli(
    addr: str, cert: str | None, key: str | None, serve: Callable[[kwik.Listener], Awaitable[None]]
) -> int:
    """Run ``serve`` on a listener at ``addr`` until interrupted; the process exit status."""

    async def run() -> None:
        tls, _ = load_or_generate_tls(cert, key)
        listener = await kwik.listen_addr(addr, tls)
        try:
            await serve(listener)
        finally:
            await listener.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except (kwik.KwikError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
