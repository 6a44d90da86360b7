"""Relays (sans-IO): what a primary server relays, and what a client forwards.

* :class:`RelayOutbox` (server side): RelayData waiting for the primary path, per relay. With
  the credit extension on the primary path, a relay sends at most the RelayCredit the client
  granted for it, so the client never has to stop the primary path for relayed bytes.
* :class:`Forwarder` (client side): for every (relay path, stream) the primary relayed into, an
  entry that forwards the bytes to the secondary server as Stream frames (offsets from 0),
  after an OpenStream the secondary confirmed, and within the secondary's credit on a path with
  the extension. The client finishes the entry (a FIN at its offset) when the logical stream
  is over on the client: its bytes all arrived or its reader gave up. That is how a secondary
  learns that the stream is complete (``docs/protocol.md``, "Relays": "How a relayed stream
  ends").

Both return what happened; only :class:`~.session.SessionCore` queues frames and emits events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..exceptions import ProtocolViolationError
from .frames import RelayDataFrame, StreamFrame

__all__ = ["Forwarded", "Forwarder", "Outgoing", "RelayOutbox"]

#: Encoded AddPathResp record without its address: prefixes 8, header 17, frame 17.
_ADD_PATH_RESP_RECORD = 8 + 17 + 17


# --- server side ---------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Outgoing:
    """Server: RelayData queued for one relay path."""

    relay_path_id: int
    queue: deque[tuple[int, bytes]] = field(default_factory=deque)
    buffered: int = 0
    #: RelayCredit the client granted (bytes relayed in all); None: no credit (KWIK v2 path)
    credit: int | None = None
    sent: int = 0

    @property
    def sendable(self) -> bool:
        if not self.queue:
            return False
        return self.credit is None or self.sent < self.credit

    def next_frame(self) -> RelayDataFrame | None:
        if not self.sendable:
            return None
        stream_id, chunk = self.queue[0]
        if self.credit is not None and self.sent + len(chunk) > self.credit:
            # what the credit allows now; the rest waits for more
            n = self.credit - self.sent
            self.queue[0] = (stream_id, chunk[n:])
            chunk = chunk[:n]
        else:
            self.queue.popleft()
        self.buffered -= len(chunk)
        self.sent += len(chunk)
        return RelayDataFrame(self.relay_path_id, stream_id, chunk)


#: Removed relays whose RelayCredit accounting a server keeps, should it recruit them again.
_REMOVED_MEMORY = 1024


class RelayOutbox:
    """Server: the relays of a session and what waits for each.

    A relay removed and recruited again while the client kept its path (the client answers the
    new AddPath with the same path id) goes on with the RelayCredit accounting it had: the
    client's credit counts every byte relayed for that path id, from the first.
    """

    def __init__(self, max_frame: int) -> None:
        self._max_frame = max_frame
        self._relays: dict[int, Outgoing] = {}
        self._removed: dict[int, tuple[int | None, int]] = {}  # path id -> (credit, sent)
        self.asked: dict[str, int] = {}  # address -> AddPath frames awaiting an answer

    def ask(self, address: str) -> None:
        """An AddPath for ``address`` went out."""
        self.asked[address] = self.asked.get(address, 0) + 1

    def unask(self, address: str) -> bool:
        """An AddPath for ``address`` was answered, or given up; False when none was out
        (an answer nobody asked for is ignored)."""
        asked = self.asked.get(address, 0)
        if asked <= 0:
            return False
        if asked == 1:
            del self.asked[address]
        else:
            self.asked[address] = asked - 1
        return True

    def __contains__(self, relay_path_id: int) -> bool:
        return relay_path_id in self._relays

    def __iter__(self) -> object:
        return iter(self._relays.values())

    def relays(self) -> list[Outgoing]:
        return list(self._relays.values())

    def add(self, relay_path_id: int, *, credited: bool) -> Outgoing:
        """A relay the client confirmed; ``credited``: the primary path has the extension."""
        out = self._relays.get(relay_path_id)
        if out is None:
            credit, sent = self._removed.pop(relay_path_id, (0 if credited else None, 0))
            out = self._relays[relay_path_id] = Outgoing(relay_path_id, credit=credit, sent=sent)
        return out

    def remove(self, relay_path_id: int) -> Outgoing | None:
        out = self._relays.pop(relay_path_id, None)
        if out is not None:
            self._removed[relay_path_id] = (out.credit, out.sent)
            if len(self._removed) > _REMOVED_MEMORY:
                del self._removed[next(iter(self._removed))]
        return out

    def get(self, relay_path_id: int) -> Outgoing | None:
        return self._relays.get(relay_path_id)

    def write(self, relay_path_id: int, stream_id: int, data: memoryview) -> Outgoing:
        """Queue ``data`` (bytes) for the relay, in frames of at most the frame limit."""
        out = self._relays[relay_path_id]
        step = self._max_frame
        for start in range(0, len(data), step):
            chunk = bytes(data[start : start + step])
            out.queue.append((stream_id, chunk))
            out.buffered += len(chunk)
        return out

    def on_credit(self, relay_path_id: int, max_bytes: int) -> Outgoing | None:
        """RelayCredit from the client; returns the relay when it can send more.

        Raises:
            ProtocolViolationError: the credit shrank.
        """
        out = self._relays.get(relay_path_id)
        if out is None:
            removed = self._removed.get(relay_path_id)
            if removed is not None and removed[0] is not None and max_bytes > removed[0]:
                self._removed[relay_path_id] = (max_bytes, removed[1])  # kept for a re-add
            return None  # a relay removed meanwhile: harmless
        if out.credit is None:
            return None  # credit on a v2 path: harmless
        if max_bytes < out.credit:
            raise ProtocolViolationError(
                f"RelayCredit for path {relay_path_id} shrank from {out.credit} to {max_bytes}"
            )
        grew = max_bytes > out.credit
        out.credit = max_bytes
        return out if grew else None

    @property
    def has_unsent(self) -> bool:
        return any(out.queue for out in self._relays.values())


# --- client side ---------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Forwarded:
    """Client: one logical stream forwarded to one relay path."""

    path_id: int
    stream_id: int
    #: the secondary's credit for this stream (None: the relay path has no extension)
    credit: int | None
    offset: int = 0  # bytes forwarded so far (the next frame's offset)
    confirmed: bool = False
    refused: bool = False
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    dropped: int = 0  # bytes relayed after a refusal, never forwarded
    fin_wanted: bool = False
    fin_sent: bool = False

    @property
    def sendable(self) -> bool:
        if not self.confirmed or self.refused or self.fin_sent:
            return False
        if self.pending:
            return self.credit is None or self.offset < self.credit
        return self.fin_wanted

    @property
    def over(self) -> bool:
        """Nothing more to do for it: its FIN went out, or the secondary refused it and the
        client is done with the stream."""
        return self.fin_sent or (self.refused and self.fin_wanted)

    def next_frame(self, max_size: int) -> tuple[StreamFrame, int] | None:
        """The next Stream frame for the secondary and the relayed bytes it carries."""
        if not self.sendable:
            return None
        if not self.pending:
            self.fin_sent = True
            return StreamFrame(self.stream_id, self.offset, True, b""), 0
        chunk = self.pending[0]
        n = min(len(chunk), max_size)
        if self.credit is not None:
            n = min(n, self.credit - self.offset)
        if n < len(chunk):
            self.pending[0] = chunk[n:]
            chunk = chunk[:n]
        else:
            self.pending.popleft()
        self.pending_bytes -= n
        frame = StreamFrame(self.stream_id, self.offset, False, chunk)
        self.offset += n
        return frame, n


class Forwarder:
    """Client: every forwarded (relay path, stream), and the relay budget of each relay path.

    Budget: ``relay_buffer`` bytes relayed by the primary and not yet forwarded, per relay path.
    With the credit extension on the primary path it is enforced by the RelayCredit granted
    (received so far + room left); on a KWIK v2 primary path a RelayData beyond it waits (the
    primary path's data lane stops).
    """

    def __init__(self, relay_buffer: int, max_entries: int) -> None:
        self.relay_buffer = relay_buffer
        self.max_entries = max_entries
        self.entries: dict[tuple[int, int], Forwarded] = {}
        self.backlog: dict[int, int] = {}  # relay path id -> bytes relayed, not forwarded
        self.received: dict[int, int] = {}  # relay path id -> RelayData bytes taken in all
        self.granted: dict[int, int] = {}  # relay path id -> RelayCredit advertised
        self.dropped = 0
        self.dialing: dict[str, list[int]] = {}  # address -> paths whose AddPath awaits it

    def join_dial(self, address: str, requester: int, budget: int) -> bool | None:
        """An AddPath for an address being dialed already: it never dials twice, but each is
        answered when the dial ends, all at once. None: no such dial; False: beyond ``budget``
        bytes of such answers (the frame waits); True: it will be answered."""
        requesters = self.dialing.get(address)
        if requesters is None:
            return None
        if (len(requesters) + 1) * (_ADD_PATH_RESP_RECORD + len(address.encode())) > budget:
            return False
        requesters.append(requester)
        return True

    def dial_done(self, address: str) -> list[int]:
        """The dial ended: the paths whose AddPath it answers."""
        return self.dialing.pop(address, [])

    def add_path(self, path_id: int) -> None:
        self.backlog.setdefault(path_id, 0)
        self.received.setdefault(path_id, 0)

    def grant(self, path_id: int) -> int | None:
        """The RelayCredit worth advertising for ``path_id`` now (None: not worth a frame)."""
        if path_id not in self.backlog:
            return None
        target = self.received[path_id] + self.relay_buffer - self.backlog[path_id]
        granted = self.granted.get(path_id)
        if granted is None or target - granted >= max(self.relay_buffer // 4, 1):
            self.granted[path_id] = target
            return target
        return None

    def has_room(self, path_id: int) -> bool:
        return self.backlog.get(path_id, 0) < self.relay_buffer

    def check_credit(self, frame: RelayDataFrame) -> None:
        """Raise when a primary bound by RelayCredit relayed beyond it."""
        path_id = frame.relay_path_id
        if path_id not in self.backlog:
            return  # an unknown or ended relay path: what it relays is dropped
        granted = self.granted.get(path_id, 0)  # none advertised yet: none granted
        if self.received.get(path_id, 0) + len(frame.data) > granted:
            raise ProtocolViolationError(
                f"RelayData for path {path_id} beyond the RelayCredit granted ({granted})"
            )

    def relay(self, frame: RelayDataFrame, *, credit: int | None) -> tuple[Forwarded | None, bool]:
        """Take a RelayData for a live relay path; returns the entry (None when the bytes were
        dropped: the secondary refused the stream, or too many entries) and whether it is new
        (the caller sends its OpenStream)."""
        path_id = frame.relay_path_id
        key = (path_id, frame.dest_stream_id)
        size = len(frame.data)
        self.received[path_id] = self.received.get(path_id, 0) + size
        entry = self.entries.get(key)
        new = False
        if entry is None:
            if sum(1 for k in self.entries if k[0] == path_id) >= self.max_entries:
                self.dropped += size
                return None, False
            entry = self.entries[key] = Forwarded(path_id, frame.dest_stream_id, credit)
            new = True
        if entry.refused or entry.fin_wanted:
            entry.dropped += size
            entry.offset += size  # offsets stay where they would have been
            self.dropped += size
            return None, False
        if size:
            entry.pending.append(bytes(frame.data))
            entry.pending_bytes += size
            self.backlog[path_id] = self.backlog.get(path_id, 0) + size
        return entry, new

    def on_open_resp(self, path_id: int, stream_id: int, success: bool) -> Forwarded | None:
        """The secondary answered the OpenStream of an entry; returns it (None: not ours)."""
        entry = self.entries.get((path_id, stream_id))
        if entry is None or entry.confirmed or entry.refused:
            return None
        if success:
            entry.confirmed = True
        else:
            entry.refused = True
            self._release(entry, entry.pending_bytes)
            entry.dropped += entry.pending_bytes
            self.dropped += entry.pending_bytes
            entry.offset += entry.pending_bytes
            entry.pending.clear()
            entry.pending_bytes = 0
        return entry

    def on_credit(self, path_id: int, stream_id: int, max_offset: int) -> Forwarded | None:
        """The secondary's StreamCredit for a forwarded stream; returns the entry when it can
        send more (None: not a forwarded stream, or nothing changed).

        Raises:
            ProtocolViolationError: the credit shrank.
        """
        entry = self.entries.get((path_id, stream_id))
        if entry is None or entry.credit is None:
            return None
        if max_offset < entry.credit:
            raise ProtocolViolationError(
                f"credit of stream {stream_id} shrank from {entry.credit} to {max_offset}"
            )
        grew = max_offset > entry.credit
        entry.credit = max_offset
        return entry if grew else None

    def sent(self, entry: Forwarded, size: int) -> None:
        """``size`` relayed bytes of ``entry`` left for the secondary."""
        self._release(entry, size)

    def _release(self, entry: Forwarded, size: int) -> None:
        if size:
            self.backlog[entry.path_id] = self.backlog.get(entry.path_id, 0) - size

    def finish(self, stream_id: int) -> list[Forwarded]:
        """The client is done with logical stream ``stream_id`` (every byte arrived, or its
        reader gave up): each entry forwarding it ends with a FIN once its bytes are sent.
        Returns the entries that can send now."""
        ready = []
        for entry in list(self.entries.values()):
            if entry.stream_id == stream_id and not entry.fin_wanted:
                entry.fin_wanted = True
                if entry.over:
                    self.retire(entry)  # refused: nothing will ever go out for it
                elif entry.sendable:
                    ready.append(entry)
        return ready

    def retire(self, entry: Forwarded) -> None:
        if self.entries.get((entry.path_id, entry.stream_id)) is entry:
            del self.entries[(entry.path_id, entry.stream_id)]

    def forwards(self, stream_id: int) -> list[int]:
        """Live relay paths forwarding ``stream_id``."""
        return [k[0] for k, e in self.entries.items() if k[1] == stream_id and not e.over]

    def path_ended(self, path_id: int) -> None:
        for key in [k for k in self.entries if k[0] == path_id]:
            del self.entries[key]
        for address, requesters in self.dialing.items():
            if path_id in requesters:
                self.dialing[address] = [r for r in requesters if r != path_id]
        self.backlog.pop(path_id, None)
        self.received.pop(path_id, None)
        self.granted.pop(path_id, None)

    @property
    def has_unsent(self) -> bool:
        return any(e.pending or (e.fin_wanted and not e.over) for e in self.entries.values())
