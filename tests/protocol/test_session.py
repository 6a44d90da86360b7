"""SessionCore, the sans-IO session state machine: every rule, interleaving by interleaving.

No sockets and no clock: two cores exchange records in memory (``Link``), time is a number the
test advances, and a "path" that does not take records keeps them queued, as the transport's
record reader would (withholding QUIC credit).
"""

from __future__ import annotations

import os
from collections import deque

import pytest

from kwik import Config, PathError, SessionClosedError, StreamClosedError
from kwik.protocol import (
    AddPathFrame,
    AddPathRespFrame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    RelayDataFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
    encode_record,
)
from kwik.protocol.session import (
    CLOSE_FAILURE,
    AddPathAnswered,
    ClosePath,
    DialRequested,
    PathResumed,
    ProbePath,
    SessionCore,
    SessionTerminated,
    StreamArrived,
    StreamState,
)

KIB = 1024
MIB = 1024 * 1024


def packet(number: int, *frames: object) -> bytes:
    """A packet body (what the record reader hands the core)."""
    return encode_packet(number, list(frames))  # type: ignore[arg-type]


def body(record: bytes) -> bytes:
    """The packet body of an encoded record (both length prefixes stripped)."""
    return record[8:]


class Link:
    """One path between two cores: records in flight each way, held while the receiving
    side does not want them (like a paused record reader)."""

    def __init__(self, a: SessionCore, a_path: int, b: SessionCore, b_path: int) -> None:
        self.ends = {id(a): (a, a_path, b, b_path), id(b): (b, b_path, a, a_path)}
        self.queues: dict[int, deque[bytes]] = {id(a): deque(), id(b): deque()}
        self.budget = 4 * MIB

    def pull(self, sender: SessionCore, now: float) -> int:
        """Move what ``sender`` has to send into the link; returns the records moved."""
        _, path_id, receiver, _ = self.ends[id(sender)]
        records = sender.data_to_send(path_id, self.budget, now)
        self.queues[id(receiver)].extend(records)
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


def drain(core: SessionCore) -> list[object]:
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def settle(link: Link, *cores: SessionCore, now: float = 0.0, rounds: int = 50) -> None:
    """Exchange records until nothing moves."""
    for _ in range(rounds):
        moved = 0
        for core in cores:
            moved += link.pull(core, now)
        for core in cores:
            moved += link.deliver(core, now)
        if not moved:
            return


def pair(config: Config | None = None, server_config: Config | None = None):
    config = config or Config()
    client = SessionCore(is_client=True, config=config)
    server = SessionCore(is_client=False, config=server_config or config)
    cid = client.add_path(primary=True, now=0.0)
    sid = server.add_path(primary=True, now=0.0)
    link = Link(client, cid, server, sid)
    settle(link, client, server)
    drain(client)
    drain(server)
    return client, server, link


def read_all(core: SessionCore, stream: StreamState) -> bytes:
    out = bytearray()
    while True:
        data = core.read(stream, 1 << 30)
        if not data:
            return bytes(out)
        out += data


def open_confirmed(
    client: SessionCore, server: SessionCore, link: Link
) -> tuple[StreamState, StreamState]:
    stream = client.open_stream()
    settle(link, client, server)
    accepted = server.accept_stream()
    assert accepted is not None and accepted.stream_id == stream.stream_id
    return stream, accepted


# --- basics ----------------------------------------------------------------------------------


def test_open_accept_write_read_both_ways() -> None:
    client, server, link = pair()
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"hello")
    client.close_stream(stream)
    settle(link, client, server)
    assert read_all(server, accepted) == b"hello"
    server.write(accepted, b"world")
    server.close_stream(accepted)
    settle(link, client, server)
    assert read_all(client, stream) == b"world"
    # finished both ways: both sides forget the stream
    assert client.open_streams == 0 and server.open_streams == 0


def test_data_waits_for_the_peers_confirmation() -> None:
    client, server, link = pair()
    stream = client.open_stream()
    client.write(stream, b"early")
    records = client.data_to_send(1, MIB, 0.0)
    frames = [f for r in records for f in decode_packet(body(r)).frames]
    assert frames == [OpenStreamFrame(stream.stream_id)]  # no data before OpenStreamResp
    link.queues[id(server)].extend(records)
    settle(link, client, server)
    accepted = server.accept_stream()
    assert accepted is not None
    assert server.read(accepted, 100) == b"early"


# --- rule: nothing received is lost at close ---------------------------------------------------


@pytest.mark.parametrize("size", [int(1.5 * MIB), int(2.7 * MIB), 12 * MIB])
def test_close_keeps_everything_delivered_for_a_slow_reader(size: int) -> None:
    """The server writes, closes the stream and the session; the client has not read. What its
    path delivered (parked records and what the reader still holds) stays readable."""
    config = Config(stream_receive_buffer=256 * KIB)
    client, server, link = pair(config)
    stream, accepted = open_confirmed(client, server, link)
    payload = os.urandom(size)
    server.write(accepted, payload)
    server.close_stream(accepted)
    for _ in range(400):
        if not server.has_unsent():
            break
        link.pull(server, 0.0)
        link.deliver(client, 0.0)
    assert not server.has_unsent()
    # the client's stream window is full: its path parks and stops taking records
    assert not client.wants_records(1)
    server.close(0, "")
    assert any(isinstance(e, ClosePath) for e in drain(server))
    # the connection ends: the transport hands in every record it still holds
    for record in link.leftovers(client):
        client.receive_record(1, record, 1.0)
    client.path_terminated(1, 0, "", by_peer=True, now=1.0)
    events = drain(client)
    assert any(isinstance(e, SessionTerminated) for e in events)
    assert read_all(client, stream) == payload  # every byte, then EOF
    assert client.read(stream, 10) == b""


def test_read_after_close_without_fin_raises_after_the_data() -> None:
    client, server, link = pair()
    stream, accepted = open_confirmed(client, server, link)
    server.write(accepted, b"partial")
    settle(link, client, server)
    client.path_terminated(1, 7, "bye", by_peer=True, now=1.0)
    assert client.read(stream, 100) == b"partial"
    with pytest.raises(SessionClosedError) as exc:
        client.read(stream, 100)
    assert exc.value.code == 7 and exc.value.remote


def test_graceful_close_refuses_new_work_but_sends_what_was_written() -> None:
    client, server, link = pair()
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"x" * 100_000)
    client.start_closing()
    with pytest.raises(SessionClosedError):
        client.open_stream()
    with pytest.raises(SessionClosedError):
        client.write(stream, b"more")
    assert client.has_unsent()
    settle(link, client, server)
    assert not client.has_unsent()
    assert server.read(accepted, 1 << 20) == b"x" * 100_000


# --- rule: ids are never reused into a live stream ---------------------------------------------


def test_open_for_an_id_held_locally_is_refused_never_merged() -> None:
    """The retire-on-one-side scene: the server finished stream 1 both ways and forgot it; the
    client has not read the server's FIN yet. A new server stream must not land in it."""
    client, server, link = pair()
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"req")
    client.close_stream(stream)
    settle(link, client, server)
    assert read_all(server, accepted) == b"req"
    server.write(accepted, b"resp")
    server.close_stream(accepted)
    settle(link, client, server)
    assert server.stream_for(1) is None  # retired on the server
    # a peer that reuses id 1 at once (as kwik did before): refused, nothing merged
    link.queues[id(client)].append(encode_record(900, [OpenStreamFrame(1)]))
    link.deliver(client, 0.0)
    answers = [decode_packet(body(r)).frames for r in client.data_to_send(1, MIB, 0.0)]
    assert (OpenStreamRespFrame(1, False),) in answers
    assert client.accept_stream() is None
    # the server's own next stream gets another id; the old stream is intact
    pushed = server.open_stream()
    assert pushed.stream_id != 1
    settle(link, client, server)
    server.write(pushed, b"PUSH")
    server.close_stream(pushed)
    settle(link, client, server)
    assert read_all(client, stream) == b"resp"
    new = client.accept_stream()
    assert new is not None and read_all(client, new) == b"PUSH"


def test_refused_open_retries_under_a_new_id() -> None:
    client, server, link = pair()
    held = server.open_stream()  # the server holds id 1 (opening)
    stream = client.open_stream()  # the client picks id 1 too: a collision
    assert stream.stream_id == held.stream_id == 1
    settle(link, client, server)
    # the server's stream kept the id; the client's moved and was confirmed
    assert stream.stream_id != 1 and stream.open_state.value == "open"
    assert held.open_state.value == "open"
    first = server.accept_stream()
    assert first is not None and first.stream_id == stream.stream_id
    second = client.accept_stream()
    assert second is not None and second.stream_id == 1


def test_open_resp_only_counts_on_the_path_that_opened() -> None:
    client, server, link = pair()
    relay_id = client.add_path(primary=False, now=0.0)
    stream = client.open_stream()
    client.data_to_send(1, MIB, 0.0)
    client.receive_record(relay_id, packet(1, OpenStreamRespFrame(stream.stream_id, True)), 0.0)
    assert stream.open_state.value == "opening"
    client.receive_record(1, packet(50, OpenStreamRespFrame(stream.stream_id, True)), 0.0)
    assert stream.open_state.value == "open"


# --- rule: refusals surface as errors --------------------------------------------------------


def test_stream_beyond_max_streams_is_refused_and_reports_it() -> None:
    client, server, link = pair(server_config=Config(max_streams=1))
    first, accepted = open_confirmed(client, server, link)
    second = client.open_stream()
    client.write(second, b"never sent")
    settle(link, client, server)
    assert second.open_state.value == "refused"
    with pytest.raises(StreamClosedError):
        client.write(second, b"x")
    with pytest.raises(StreamClosedError):
        client.read(second, 1)
    assert server.streams_pending_accept == 0


def test_write_offsets_are_bounded_to_u64() -> None:
    client, server, link = pair()
    stream, _ = open_confirmed(client, server, link)
    with pytest.raises(ValueError):
        client.set_write_offset(stream, 2**64)
    client.set_write_offset(stream, 2**64 - 2)
    with pytest.raises(ValueError):
        client.write(stream, b"abc")
    with pytest.raises(ValueError):
        client.write(stream, b"ab")  # would end at offset 2**64: past the last u64
    client.write(stream, b"a")  # ends at 2**64 - 1: fine
    with pytest.raises(ValueError):
        client.skip_to(stream, -1)


# --- rule: several writers, one stream ---------------------------------------------------------


def test_data_beyond_the_window_backpressures_its_path_instead_of_failing() -> None:
    """Two writers each write half of a stream: the secondary's half arrives first, far beyond
    the receive window. Its path parks until the reader catches up; the stream is byte-exact
    and the secondary's FIN at the true end gives EOF."""
    config = Config(stream_receive_buffer=64 * KIB)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    drain(client)
    data = os.urandom(1 * MIB)
    half = len(data) // 2
    # the remote opens stream 5 on the primary
    client.receive_record(primary, packet(1, OpenStreamFrame(5)), 0.0)
    stream = client.accept_stream()
    assert stream is not None
    # the relay's half, with the FIN, all at once
    number = 1
    for start in range(half, len(data), 32 * KIB):
        chunk = data[start : start + 32 * KIB]
        fin = start + len(chunk) == len(data)
        # records keep coming (already cut, or queued in the worker pool): they park too
        client.receive_record(relay, packet(number, StreamFrame(5, start, fin, chunk)), 0.0)
        number += 1
    assert not client.wants_records(relay)  # parked, not failed
    assert client.path_ids() == [primary, relay]
    # the primary's half arrives while the application reads
    got = bytearray()
    number = 2
    pending = deque(range(0, half, 16 * KIB))
    for _ in range(10_000):
        if pending and client.wants_records(primary):
            start = pending.popleft()
            chunk = data[start : min(start + 16 * KIB, half)]
            client.receive_record(primary, packet(number, StreamFrame(5, start, False, chunk)), 0.0)
            number += 1
        out = client.read(stream, 1 << 20)
        if out == b"":
            break
        if out:
            got += out
    assert bytes(got) == data
    assert any(isinstance(e, PathResumed) and e.path_id == relay for e in drain(client))
    assert client.receive_buffered == 0


def test_overlapping_frames_are_stored_once_and_bounded() -> None:
    """A peer re-sending overlapping out-of-order frames gains nothing: each byte is held
    once, and nothing beyond the window is held at all."""
    config = Config(stream_receive_buffer=256 * KIB)
    client, server, link = pair(config)
    stream, _ = open_confirmed(client, server, link)
    chunk = os.urandom(65_000)
    for offset in range(1, 600):
        if not client.wants_records(1):
            break
        client.receive_record(
            1, packet(1000 + offset, StreamFrame(stream.stream_id, offset, False, chunk)), 0.0
        )
    assert stream.recv.buffered <= config.stream_receive_buffer
    assert client.receive_buffered == stream.recv.buffered


def test_session_budget_bounds_many_streams() -> None:
    config = Config(stream_receive_buffer=128 * KIB, session_receive_buffer=512 * KIB)
    client = SessionCore(is_client=True, config=config)
    path = client.add_path(primary=True, now=0.0)
    number = 1
    for stream_id in range(1, 40):
        if not client.wants_records(path):
            break
        client.receive_record(
            path, packet(number, StreamFrame(stream_id, 0, False, b"z" * 100 * KIB)), 0.0
        )
        number += 1
    assert client.receive_buffered <= config.session_receive_buffer + 100 * KIB
    assert not client.wants_records(path)


# --- rule: floods are bounded --------------------------------------------------------------


def test_one_echo_per_packet_whatever_its_pings() -> None:
    client, server, link = pair()
    drain(server)
    server.receive_record(1, packet(900, *[PingFrame()] * 10_000), 0.0)
    frames = [f for r in server.data_to_send(1, MIB, 0.0) for f in decode_packet(body(r)).frames]
    assert frames.count(PingFrame()) == 1


def test_open_stream_flood_waits_for_accept_then_refuses_beyond_max_streams() -> None:
    config = Config(stream_backlog=8, max_streams=16)
    client, server, link = pair(server_config=config)
    frames = [OpenStreamFrame(i) for i in range(1, 1001)]
    server.receive_record(1, packet(900, *frames), 0.0)
    assert server.streams_pending_accept == 8
    assert not server.wants_records(1)  # back-pressure, not 1,000 streams
    for _ in range(8):
        assert server.accept_stream() is not None
    assert server.streams_pending_accept <= 8
    while server.accept_stream() is not None:
        pass
    answers = [
        f for r in server.data_to_send(1, 4 * MIB, 0.0) for f in decode_packet(body(r)).frames
    ]
    accepted = [f for f in answers if isinstance(f, OpenStreamRespFrame) and f.success]
    refused = [f for f in answers if isinstance(f, OpenStreamRespFrame) and not f.success]
    assert len(accepted) == 16
    assert len(accepted) + len(refused) == 1000
    assert server.wants_records(1)


# --- rule: liveness never depends on reading ---------------------------------------------------


def test_a_reader_that_pauses_keeps_a_live_session() -> None:
    """The client withholds credit for 20 heartbeat intervals; datagrams (QUIC ACKs of its
    probes) keep arriving, so the path stays up."""
    config = Config(heartbeat_interval=0.5, heartbeat_miss_threshold=3)
    client, server, link = pair(config)
    now = 0.0
    probes = 0
    while now < 20 * config.heartbeat_interval:
        now += 0.1
        client.on_activity(1, now)  # the peer's QUIC acknowledges our QUIC PINGs
        client.handle_timer(now)
        probes += sum(isinstance(e, ProbePath) for e in drain(client))
    assert client.error is None and client.path_ids() == [1]
    assert probes >= 15


def test_a_silent_peer_fails_the_path_within_the_bound() -> None:
    config = Config(heartbeat_interval=1.0, heartbeat_miss_threshold=3)
    client, server, link = pair(config)
    now = 0.0
    while client.error is None and now < 30:
        deadline = client.get_timer()
        assert deadline is not None
        now = deadline
        client.handle_timer(now)
        client.data_to_send(1, MIB, now)  # what the adapter does after every input
    assert client.error is not None and "silent" in client.error.reason
    assert now <= 3.0 + 1e-9  # interval * threshold after the last sign of life (t=0)


def test_a_busy_path_whose_peer_stops_answering_fails_fast() -> None:
    config = Config(stall_timeout=3.0)
    client, server, link = pair(config)
    client.on_in_flight(1, True, 0.05, 10.0)
    client.on_activity(1, 10.0)
    now = 10.0
    while client.error is None and now < 60:
        now = client.get_timer() or now + 1
        client.handle_timer(now)
        client.data_to_send(1, MIB, now)
    assert client.error is not None and "in flight" in client.error.reason
    assert now - 10.0 <= 3.0 + 1e-9


# --- rule: relays and paths release what they hold ---------------------------------------------


def test_relay_path_that_ends_unblocks_the_primary() -> None:
    config = Config(relay_buffer=64 * KIB)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    drain(client)
    # the relay confirms the stream, but its path never has room: forwarded data piles up
    chunk = b"r" * 32 * KIB
    number = 1
    while client.wants_records(primary) and number < 100:
        client.receive_record(primary, packet(number, RelayDataFrame(relay, 9, chunk)), 0.0)
        number += 1
    assert not client.wants_records(primary)  # bounded: the primary waits for the relay
    client.receive_record(primary, packet(number, StreamFrame(3, 0, True, b"after")), 0.0)
    client.path_terminated(relay, CLOSE_FAILURE, "relay died", by_peer=False, now=1.0)
    events = drain(client)
    assert any(isinstance(e, PathResumed) and e.path_id == primary for e in events)
    assert client.wants_records(primary) and client.path_ids() == [primary]
    stream = client.accept_stream()
    assert stream is not None and read_all(client, stream) == b"after"


def test_add_path_is_answered_once_and_duplicates_dial_once() -> None:
    client = SessionCore(is_client=True, config=Config())
    primary = client.add_path(primary=True, now=0.0)
    drain(client)
    client.receive_record(
        primary, packet(1, AddPathFrame("127.0.0.1:9"), AddPathFrame("127.0.0.1:9")), 0.0
    )
    dials = [e for e in drain(client) if isinstance(e, DialRequested)]
    assert dials == [DialRequested("127.0.0.1:9")]
    new = client.add_path(primary=False, now=0.0, dialed_as="127.0.0.1:9")
    client.add_path_result("127.0.0.1:9", new)
    frames = [
        f for r in client.data_to_send(primary, MIB, 0.0) for f in decode_packet(body(r)).frames
    ]
    assert frames.count(AddPathRespFrame(new, "127.0.0.1:9")) == 2


def test_server_relay_request_and_removal() -> None:
    server = SessionCore(is_client=False, config=Config())
    path = server.add_path(primary=True, now=0.0)
    server.request_relay("127.0.0.1:7")
    frames = [f for r in server.data_to_send(path, MIB, 0.0) for f in decode_packet(body(r)).frames]
    assert AddPathFrame("127.0.0.1:7") in frames
    server.receive_record(path, packet(1, AddPathRespFrame(2, "127.0.0.1:7")), 0.0)
    assert AddPathAnswered("127.0.0.1:7", 2) in drain(server)
    server.relay_send(2, 5, b"relayed")
    assert server.relay_buffered(2) == 7
    assert server.remove_relay(2)
    with pytest.raises(PathError):
        server.relay_send(2, 5, b"more")


def test_accept_after_close_still_hands_out_arrived_streams() -> None:
    client, server, link = pair()
    stream = client.open_stream()
    client.write(stream, b"data")
    client.close_stream(stream)
    settle(link, client, server)
    server.path_terminated(1, 0, "", by_peer=True, now=1.0)
    arrived = server.accept_stream()
    assert arrived is not None and read_all(server, arrived) == b"data"
    assert server.accept_stream() is None
    assert [type(e) for e in drain(server) if isinstance(e, StreamArrived)] == [StreamArrived]
