"""The multi-server suite's applications: a primary server that splits each response between
itself and its relays, a secondary server that writes the part it is told, and the client's
requests.

Messages are length-prefixed JSON (``>I`` length, then the object), so a reader never takes
more than its message. The response to a request is ``content(seed, 0, total)``; every writer
produces its parts of it at their offsets, so a byte at a wrong offset, or from another stream,
changes what the client reads.

A **split request** (client to primary)::

    {"op": "split", "seed": S, "total": T,
     "parts": [[writer, start, end], ...],   # writer: "" (the primary) or a relay's address
     "relay": {address: {...options...}},     # per relay, copied into its command
     "end": "fin" | "ack",
     "close_session": false}

The primary recruits every relay named (once per session and address, again if it was
removed), relays each one command ``{"seed", "parts": [[start, end], ...], ...options}`` with
``send_raw_data`` on the request's stream id, writes its own parts, then:

* ``"end": "fin"``: sends the FIN at ``total`` at once (the true end, whoever writes the last
  bytes) and reads the request side to EOF;
* ``"end": "ack"``: waits for the client's messages on the same stream: ``{"recover": [[a,
  b], ...]}`` (the primary writes those ranges itself, as ``examples/file_transfer`` does for a
  dead relay's chunks) and ``{"done": true}`` (then the FIN at ``total``);

and with ``"close_session": true`` closes its session gracefully right after.

A **relay command** (primary to secondary, through the client): the secondary writes each part
in chunks of ``chunk`` bytes (64 KiB by default), waiting for :attr:`SecondaryApp.gate` after
``pause_at`` bytes of its parts when the command says so; then ends its part without a FIN
(``end_part``) and reads its side of the stream to EOF, which comes once the client has the
whole stream (the client FINs what it forwarded).

Other requests: ``{"op": "drop", "path_id": N}`` makes the primary stop using relay path ``N``
(``session.remove_path`` on the server); it answers ``{"ok": true}``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import kwik

from ..conftest import read_all

__all__ = [
    "PrimaryApp",
    "SecondaryApp",
    "content",
    "read_message",
    "encode_message",
    "gaps",
    "split",
    "split_request",
    "tables",
]

CHUNK = 64 * 1024
_HEADER = struct.Struct(">I")
#: The content's period: odd and prime, so no offset error of a power of two goes unseen.
_PERIOD = 65537
_BLOCK = random.Random(17).randbytes(_PERIOD)
#: Streams of different seeds are shifted this far apart in the content.
_SHIFT = 7919


def content(seed: int, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of response ``seed``."""
    out = bytearray()
    pos = seed * _SHIFT + start
    stop = seed * _SHIFT + end
    while pos < stop:
        at = pos % _PERIOD
        take = min(stop - pos, _PERIOD - at)
        out += _BLOCK[at : at + take]
        pos += take
    return bytes(out)


def encode_message(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return _HEADER.pack(len(body)) + body


async def read_message(stream: kwik.Stream) -> dict[str, Any] | None:
    """The next message, or None at EOF before one."""
    try:
        (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    message: dict[str, Any] = json.loads(await stream.readexactly(size))
    return message


async def write_parts(
    stream: kwik.Stream,
    seed: int,
    parts: Sequence[Sequence[int]],
    *,
    chunk: int = CHUNK,
    pause_at: int | None = None,
    paused: asyncio.Event | None = None,
    gate: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Write ``content(seed, start, end)`` at ``start`` for each part, ``chunk`` bytes per
    write; after ``pause_at`` bytes, set ``paused`` and wait for ``gate()``."""
    written = 0
    for start, end in parts:
        for pos in range(start, end, chunk):
            if pause_at is not None and written >= pause_at:
                pause_at = None
                if paused is not None:
                    paused.set()
                if gate is not None:
                    await gate()
            piece = content(seed, pos, min(pos + chunk, end))
            # set_write_offset and write without an await in between: another writer of this
            # stream (a recovery) cannot move it
            stream.set_write_offset(pos)
            await stream.write(piece)
            written += len(piece)
    return written


# --- servers -------------------------------------------------------------------------------------


@dataclass
class PrimaryApp:
    """The primary's stream handler (``make_server(PrimaryApp())``)."""

    #: relays by (session id, address); recruited on first use, again once removed
    relays: dict[tuple[int, str], kwik.Relay] = field(default_factory=dict)
    locks: dict[tuple[int, str], asyncio.Lock] = field(default_factory=dict)
    served: int = 0
    #: addresses recruited, in order (a relay recruited again is listed again)
    recruited: list[str] = field(default_factory=list)
    #: set once a session's close() (asked by a request) returned
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def relay_for(self, session: kwik.Session, address: str) -> kwik.Relay:
        key = (session.session_id, address)
        async with self.locks.setdefault(key, asyncio.Lock()):
            relay = self.relays.get(key)
            if relay is None or not relay.is_active:
                relay = self.relays[key] = await session.add_relay(address)
                self.recruited.append(address)
            return relay

    async def __call__(self, session: kwik.Session, stream: kwik.Stream) -> None:
        request = await read_message(stream)
        if request is None:
            await stream.close()
            return
        if request["op"] == "drop":
            await session.remove_path(request["path_id"])
            await stream.write(encode_message({"ok": True}))
            await stream.close()
            assert await read_all(stream) == b""
            return
        assert request["op"] == "split", request
        await self._split(session, stream, request)
        self.served += 1
        if request.get("close_session"):
            await session.close()
            self.closed.set()

    async def _split(
        self, session: kwik.Session, stream: kwik.Stream, request: dict[str, Any]
    ) -> None:
        seed, total = request["seed"], request["total"]
        mine: list[tuple[int, int]] = []
        theirs: dict[str, list[tuple[int, int]]] = {}
        for writer, start, end in request["parts"]:
            if writer:
                theirs.setdefault(writer, []).append((start, end))
            else:
                mine.append((start, end))
        options = request.get("relay", {})
        relays = await asyncio.gather(*(self.relay_for(session, a) for a in theirs))
        for relay, (address, parts) in zip(relays, theirs.items(), strict=True):
            command = {"seed": seed, "parts": parts, **options.get(address, {})}
            await relay.send_raw_data(encode_message(command), stream.stream_id)
        await write_parts(stream, seed, mine)
        if request.get("end", "fin") == "ack":
            while (message := await read_message(stream)) is not None:
                if "recover" in message:
                    await write_parts(stream, seed, message["recover"])
                elif message.get("done"):
                    break
        stream.set_write_offset(total)
        await stream.close()  # the FIN at the true end
        assert await read_all(stream) == b""  # the client's FIN: both ways over


@dataclass
class SecondaryApp:
    """A secondary's stream handler: writes the parts the relayed command names."""

    #: what a paused writer waits for (the tests set it)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: set when a writer reached its ``pause_at``
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    #: stream ids whose part was written (in order)
    written: list[int] = field(default_factory=list)
    #: stream ids whose side read EOF after the part (the client FINned what it forwarded)
    eof: list[int] = field(default_factory=list)
    commands: int = 0

    async def __call__(self, session: kwik.Session, stream: kwik.Stream) -> None:
        command = await read_message(stream)
        assert command is not None, "a relayed stream without a command"
        self.commands += 1
        await write_parts(
            stream,
            command["seed"],
            command["parts"],
            chunk=command.get("chunk", CHUNK),
            pause_at=command.get("pause_at"),
            paused=self.paused,
            gate=lambda: self._wait_gate(session),
        )
        await stream.end_part()  # the primary sends the FIN
        self.written.append(stream.stream_id)
        assert await read_all(stream) == b""  # the client forwards nothing else, then FIN
        self.eof.append(stream.stream_id)

    async def _wait_gate(self, session: kwik.Session) -> None:
        """Wait for the gate; raise SessionClosedError if the session ends first."""
        gate = asyncio.ensure_future(self.gate.wait())
        closed = asyncio.ensure_future(session.wait_closed())
        try:
            await asyncio.wait([gate, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (gate, closed):
                waiter.cancel()
            await asyncio.gather(gate, closed, return_exceptions=True)
        if not self.gate.is_set():
            error = session.close_error
            raise kwik.SessionClosedError(error.code if error else 1, "session closed", False)


# --- client --------------------------------------------------------------------------------------


def split_request(
    seed: int,
    parts: Sequence[tuple[str, int, int]],
    *,
    end: str = "fin",
    relay: dict[str, dict[str, Any]] | None = None,
    close_session: bool = False,
) -> dict[str, Any]:
    """A split request; ``parts`` must cover ``[0, total)`` without overlap."""
    covered = sorted((start, stop) for _, start, stop in parts)
    total = covered[-1][1] if covered else 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered)) and covered[0][0] == 0
    return {
        "op": "split",
        "seed": seed,
        "total": total,
        "parts": [list(p) for p in parts],
        "relay": relay or {},
        "end": end,
        "close_session": close_session,
    }


async def split(session: kwik.Session, request: dict[str, Any]) -> kwik.Stream:
    """Send a ``"fin"`` split request and read the response; assert it is byte-exact."""
    stream = await session.open_stream_sync()
    await stream.write(encode_message(request))
    await stream.close()
    data = await read_all(stream)
    expected = content(request["seed"], 0, request["total"])
    assert data == expected, (
        f"stream {stream.stream_id}: {len(data)} B, {stream.received_ranges()}, "
        f"expected {len(expected)} B"
    )
    return stream


def chunked(writers: Sequence[str], total: int, chunk: int) -> list[tuple[str, int, int]]:
    """``[0, total)`` dealt in ``chunk``-byte pieces to ``writers`` round robin."""
    return [
        (writers[i % len(writers)], start, min(start + chunk, total))
        for i, start in enumerate(range(0, total, chunk))
    ]


def gaps(ranges: Sequence[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """The byte ranges of ``[0, total)`` not in ``ranges`` (sorted, disjoint)."""
    out, at = [], 0
    for start, end in ranges:
        if start > at:
            out.append((at, start))
        at = max(at, end)
    if at < total:
        out.append((at, total))
    return out


def tables(session: kwik.Session) -> dict[str, int]:
    """Every per-peer table of a session: the core's and the adapter's."""
    sizes = dict(session._core.table_sizes())
    sizes.update(
        read_waiters=len(session._read_waiters),
        write_waiters=len(session._write_waiters),
        relay_waiters=len(session._relay_waiters),
        add_path_waiters=len(session._add_path_waiters),
        relays=len(session._relays),
        paths=len(session._paths),
        ended_paths=len(session._ended_paths),
        tasks=len(session._tasks),
    )
    return sizes
