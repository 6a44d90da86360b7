"""One harness for driving session cores against each other in memory (no sockets, no clock).

A :class:`Link` is one path between two cores: the records each side pulls with
``data_to_send`` travel as bytes, and a side that does not want records keeps them queued, as
the transport's record reader would (withholding QUIC credit). Time is a number the test
passes in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from kwik import Config
from kwik.protocol import Frame, SessionCore, decode_packet, encode_packet
from kwik.protocol.events import Event
from kwik.protocol.stream import LogicalStream

KIB = 1024
MIB = 1024 * 1024


def packet(number: int, *frames: Frame) -> bytes:
    """A packet body (what the record reader hands the core)."""
    return encode_packet(number, list(frames))


def body(record: bytes) -> bytes:
    """The packet body of an encoded record (both length prefixes stripped)."""
    return record[8:]


def frames_of(records: Iterable[bytes], *, extended: bool = True) -> list[Frame]:
    """Every frame of encoded records, in order."""
    return [f for r in records for f in decode_packet(body(r), extended=extended).frames]


class Link:
    """One path between two cores: records in flight each way, held while the receiving
    side does not want them."""

    def __init__(self, a: SessionCore, a_path: int, b: SessionCore, b_path: int) -> None:
        self.ends = {id(a): (a, a_path, b, b_path), id(b): (b, b_path, a, a_path)}
        self.queues: dict[int, deque[bytes]] = {id(a): deque(), id(b): deque()}
        self.budget = 4 * MIB
        self.sent: dict[int, list[bytes]] = {id(a): [], id(b): []}

    def path_of(self, core: SessionCore) -> int:
        return self.ends[id(core)][1]

    def pull(self, sender: SessionCore, now: float) -> int:
        """Move what ``sender`` has to send into the link; returns the records moved."""
        _, path_id, receiver, _ = self.ends[id(sender)]
        records = sender.data_to_send(path_id, self.budget, now)
        self.queues[id(receiver)].extend(records)
        self.sent[id(sender)].extend(records)
        return len(records)

    def deliver(self, receiver: SessionCore, now: float) -> int:
        """Hand queued records to ``receiver`` while it wants them; returns how many."""
        _, path_id, _, _ = self.ends[id(receiver)]
        queue = self.queues[id(receiver)]
        count = 0
        while queue and receiver.wants_records(path_id):
            receiver.receive_record(path_id, body(queue.popleft()), now)
            count += 1
        return count

    def leftovers(self, receiver: SessionCore) -> list[bytes]:
        queue = self.queues[id(receiver)]
        out = [body(r) for r in queue]
        queue.clear()
        return out


def drain(core: SessionCore) -> list[Event]:
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def settle(*links: Link, now: float = 0.0, rounds: int = 200) -> None:
    """Exchange records on every link until nothing moves."""
    for _ in range(rounds):
        moved = 0
        for link in links:
            for core, *_ in link.ends.values():
                moved += link.pull(core, now)
        for link in links:
            for core, *_ in link.ends.values():
                moved += link.deliver(core, now)
        if not moved:
            return


def pair(
    config: Config | None = None,
    server_config: Config | None = None,
    *,
    extended: bool = True,
) -> tuple[SessionCore, SessionCore, Link]:
    """A client and a server core joined by one path (``extended``: the credit extension)."""
    config = config or Config()
    client = SessionCore(is_client=True, config=config)
    server = SessionCore(is_client=False, config=server_config or config)
    cid = client.add_path(primary=True, now=0.0, extended=extended)
    sid = server.add_path(primary=True, now=0.0, extended=extended)
    link = Link(client, cid, server, sid)
    settle(link)
    drain(client)
    drain(server)
    return client, server, link


def read_all(core: SessionCore, stream: LogicalStream) -> bytes:
    """Everything readable up to EOF (the stream must be complete)."""
    out = bytearray()
    while True:
        data = core.read(stream, 1 << 30)
        assert data is not None, "the stream is not complete"
        if not data:
            return bytes(out)
        out += data


def open_confirmed(
    client: SessionCore, server: SessionCore, link: Link
) -> tuple[LogicalStream, LogicalStream]:
    stream = client.open_stream()
    settle(link)
    accepted = server.accept_stream()
    assert accepted is not None and accepted.stream_id == stream.stream_id
    return stream, accepted


class Trio:
    """A client with a primary path to server ``p`` and a relay path to server ``s``."""

    def __init__(
        self, config: Config | None = None, *, extended: bool = True, relay_extended: bool = True
    ) -> None:
        config = config or Config()
        self.c = SessionCore(is_client=True, config=config)
        self.p = SessionCore(is_client=False, config=config)
        self.s = SessionCore(is_client=False, config=config)
        cp = self.c.add_path(primary=True, now=0.0, extended=extended)
        self.primary = Link(
            self.c, cp, self.p, self.p.add_path(primary=True, now=0.0, extended=extended)
        )
        # the relay: the primary asks for it, the client dials and answers
        self.p.request_relay("198.18.0.2:4433")
        settle(self.primary)
        drain(self.c)
        cs = self.c.add_path(
            primary=False, now=0.0, dialed_as="198.18.0.2:4433", extended=relay_extended
        )
        self.relay = Link(
            self.c, cs, self.s, self.s.add_path(primary=True, now=0.0, extended=relay_extended)
        )
        self.c.add_path_result("198.18.0.2:4433", cs)
        self.relay_id = cs
        settle(self.primary, self.relay)
        for core in (self.c, self.p, self.s):
            drain(core)

    def settle(self, now: float = 0.0) -> None:
        settle(self.primary, self.relay, now=now)
