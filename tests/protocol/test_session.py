"""SessionCore, the sans-IO session state machine: every rule, interleaving by interleaving.

No sockets and no clock: cores exchange records in memory (``helpers.Link``), time is a number
the test advances. Rules that differ between a path with kwik's credit extension and a plain
KWIK v2 path run in both modes (``mode`` fixture).
"""

from __future__ import annotations

import os

import pytest

from kwik import Config, PathError, SessionClosedError, StreamClosedError
from kwik.protocol import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    RelayCreditFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
    encode_record,
)
from kwik.protocol.events import (
    AddPathAnswered,
    ClosePath,
    DialRelay,
    FinishClose,
    PathResumed,
    SendProbe,
    SessionTerminated,
    StreamArrived,
)
from kwik.protocol.session import CLOSE_FAILURE, SessionCore
from kwik.protocol.stream import OpenState

from .helpers import (
    KIB,
    MIB,
    Link,
    Trio,
    body,
    drain,
    frames_of,
    open_confirmed,
    packet,
    pair,
    read_all,
    settle,
)


@pytest.fixture(params=[True, False], ids=["credit", "v2"])
def extended(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# --- basics ----------------------------------------------------------------------------------


def test_open_accept_write_read_both_ways(extended: bool) -> None:
    client, server, link = pair(extended=extended)
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"hello")
    client.finish(stream)
    settle(link)
    assert read_all(server, accepted) == b"hello"
    server.write(accepted, b"world")
    server.finish(accepted)
    settle(link)
    assert read_all(client, stream) == b"world"
    # finished both ways: both sides forget the stream, and its credit
    assert client.open_streams == 0 and server.open_streams == 0
    assert client.receive_buffered == 0 and server.receive_buffered == 0


def test_data_waits_for_the_peers_confirmation(extended: bool) -> None:
    client, server, link = pair(extended=extended)
    stream = client.open_stream()
    client.write(stream, b"early")
    records = client.data_to_send(1, MIB, 0.0)
    frames = frames_of(records)
    assert OpenStreamFrame(stream.stream_id) in frames
    assert not any(isinstance(f, StreamFrame) for f in frames)  # no data before the answer
    link.queues[id(server)].extend(records)
    settle(link)
    accepted = server.accept_stream()
    assert accepted is not None
    assert server.read(accepted, 100) == b"early"


def test_credit_goes_with_the_open_and_with_the_answer() -> None:
    """The opener grants the acceptor credit in the OpenStream's packet; the acceptor grants
    the opener credit in its answer's: data flows with no extra round trip."""
    config = Config()
    client, server, link = pair(config)
    stream = client.open_stream()
    opened = frames_of(client.data_to_send(1, MIB, 0.0))
    window = config.stream_receive_buffer
    assert [f for f in opened if not isinstance(f, AckFrame)] == [
        OpenStreamFrame(1),
        StreamCreditFrame(1, window),
    ]
    server.receive_record(1, packet(50, *opened), 0.0)
    answered = frames_of(server.data_to_send(1, MIB, 0.0))
    assert OpenStreamRespFrame(1, True) in answered
    assert StreamCreditFrame(1, window) in answered
    client.receive_record(1, packet(60, *answered), 0.0)
    assert stream.open_state is OpenState.OPEN and stream.sender.credit == window


def test_a_v2_path_never_sees_an_extension_frame() -> None:
    client, server, link = pair(extended=False)
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, os.urandom(3 * MIB))
    client.finish(stream)
    for _ in range(200):
        settle(link)
        server.read(accepted, 1 << 30)
    for side in (client, server):
        frames = frames_of(link.sent[id(side)], extended=False)  # an extension frame would raise
        assert not any(isinstance(f, StreamCreditFrame | RelayCreditFrame) for f in frames)


# --- rule: no stream blocks another ------------------------------------------------------------


def test_a_stream_nobody_reads_does_not_stop_another() -> None:
    """The server writes 8 MiB on a stream the client never reads and 4 MiB on another it
    reads: the second arrives whole, the first holds at most its window."""
    config = Config()
    client, server, link = pair(config)
    unread_c, unread_s = open_confirmed(client, server, link)
    read_c, read_s = open_confirmed(client, server, link)
    wanted = os.urandom(4 * MIB)
    server.write(unread_s, b"u" * 8 * MIB)
    server.write(read_s, wanted)
    server.finish(read_s)
    got = bytearray()
    for _ in range(2000):
        settle(link)
        assert client.wants_records(1)  # the path never stops
        data = client.read(read_c, 1 << 30)
        if data == b"":
            break
        got += data or b""
    assert bytes(got) == wanted
    assert unread_c.receiver.buffered <= config.stream_receive_buffer
    assert unread_s.sender.buffered >= 8 * MIB - config.stream_receive_buffer  # it waits


def test_a_reader_reading_concurrent_streams_one_after_the_other_gets_them_all(
    extended: bool,
) -> None:
    """r3-5 with the defaults: three 2 MiB responses written concurrently, read in order."""
    client, server, link = pair(extended=extended)
    payloads = [os.urandom(2 * MIB) for _ in range(3)]
    pairs = [open_confirmed(client, server, link) for _ in payloads]
    for (_, accepted), payload in zip(pairs, payloads, strict=True):
        server.write(accepted, payload)
        server.finish(accepted)
    for (stream, _), payload in zip(pairs, payloads, strict=True):
        got = bytearray()
        for _ in range(5000):
            settle(link)
            data = client.read(stream, 1 << 30)
            if data == b"":
                break
            got += data or b""
        assert bytes(got) == payload


def test_a_writer_never_sends_beyond_its_credit() -> None:
    config = Config(stream_receive_buffer=256 * KIB)
    client, server, link = pair(config)
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"x" * 2 * MIB)
    for _ in range(20):
        settle(link)
    ends = [
        f.offset + len(f.data)
        for f in frames_of(link.sent[id(client)])
        if isinstance(f, StreamFrame) and f.stream_id == stream.stream_id
    ]
    assert max(ends) == config.stream_receive_buffer  # exactly the window, nothing beyond
    assert server.wants_records(1)
    server.read(accepted, 200 * KIB)  # less than half the window is left open: more credit
    settle(link)
    assert stream.sender.credit == 200 * KIB + config.stream_receive_buffer


def test_a_stream_written_far_out_of_order_is_delivered(extended: bool) -> None:
    """One writer writes 5 MiB beyond the receiver's window first, then the start: every byte
    arrives (the strict xfail of the previous design)."""
    config = Config(stream_receive_buffer=512 * KIB)
    client, server, link = pair(config, extended=extended)
    stream, accepted = open_confirmed(client, server, link)
    data = os.urandom(6 * MIB)
    client.set_write_offset(stream, 5 * MIB)
    client.write(stream, data[5 * MIB :])
    settle(link)
    client.set_write_offset(stream, 0)
    client.write(stream, data[: 5 * MIB])
    client.finish(stream)
    got = bytearray()
    for _ in range(5000):
        settle(link)
        out = server.read(accepted, 1 << 30)
        if out == b"":
            break
        got += out or b""
    assert bytes(got) == data


def test_the_session_budget_bounds_the_credit_granted() -> None:
    """A peer that opens many streams gets credit within session_receive_buffer in all, and
    filling every one of them stays within it."""
    config = Config(stream_receive_buffer=256 * KIB, session_receive_buffer=2 * MIB)
    client, server, link = pair(config)
    streams = [server.open_stream() for _ in range(100)]
    settle(link)
    accepted = [client.accept_stream() for _ in streams]
    for stream in streams:
        server.write(stream, b"f" * 256 * KIB)
    for _ in range(50):
        settle(link)
    held = sum(s.receiver.buffered for s in accepted if s is not None)
    granted = sum(s.receiver.limit for s in accepted if s is not None)
    assert granted <= config.session_receive_buffer
    assert held <= config.session_receive_buffer
    assert client.receive_buffered <= config.session_receive_buffer
    # reading frees budget, which flows to the streams still short of credit
    for _ in range(30):
        for stream in accepted:
            assert stream is not None
            client.read(stream, 1 << 30)
        settle(link)
        assert client.receive_buffered <= config.session_receive_buffer
    assert sum(s.receiver.bytes_read for s in accepted if s is not None) == 100 * 256 * KIB


def test_a_v2_stream_window_is_soft_within_the_session_budget() -> None:
    config = Config(stream_receive_buffer=128 * KIB, session_receive_buffer=MIB)
    client, server, link = pair(config, extended=False)
    stream, accepted = open_confirmed(client, server, link)
    server.write(accepted, b"s" * 2 * MIB)
    for _ in range(50):
        settle(link)
    # beyond the stream's window, up to the session budget: no waiting before that
    assert stream.receiver.buffered == config.session_receive_buffer
    assert not client.wants_records(1) or client.table_sizes()["waiting_frames"]


def test_a_v2_path_whose_data_waits_still_answers_pings_and_opens() -> None:
    """r3-7 and r3-19: the server's application does not read an upload, its session budget is
    spent; the client's Pings are still echoed and its OpenStream still answered."""
    config = Config(session_receive_buffer=256 * KIB, stream_receive_buffer=256 * KIB)
    client, server, link = pair(config, extended=False)
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"u" * MIB)
    for _ in range(20):
        settle(link)
    assert server.table_sizes()["waiting_frames"] > 0  # data waits for the reader
    before = server.counters(1).pings_received  # type: ignore[union-attr]
    link.queues[id(server)].append(encode_record(9000, [PingFrame(), OpenStreamFrame(41)]))
    link.deliver(server, 0.0)
    answer = frames_of(server.data_to_send(1, MIB, 0.0), extended=False)
    assert PingFrame() in answer
    assert OpenStreamRespFrame(41, True) in answer
    assert server.counters(1).pings_received == before + 1  # type: ignore[union-attr]


def test_a_read_that_frees_room_returns_the_data_it_let_in() -> None:
    """r3-12: a read that finds nothing lets a waiting frame in; it returns that data at once
    instead of waiting for a wake-up that was already spent."""
    config = Config(stream_receive_buffer=2 * MIB, session_receive_buffer=MIB)
    client, server, link = pair(config, extended=False)
    b_c, b_s = open_confirmed(client, server, link)
    server.write(b_s, b"B" * MIB)  # spends the client's whole budget
    settle(link)
    a_c, a_s = open_confirmed(client, server, link)
    server.write(a_s, b"A" * 100_000)
    server.finish(a_s)
    settle(link)
    assert a_c.receiver.readable == 0
    data = client.read(a_c, 1 << 20)
    assert data is not None and data.startswith(b"A")


# --- credit: bad input -------------------------------------------------------------------------


def _violation(events: list[object]) -> ClosePath:
    closes = [e for e in events if isinstance(e, ClosePath)]
    assert closes, "the path must be failed"
    assert closes[0].code == CLOSE_FAILURE and "protocol violation" in closes[0].reason
    return closes[0]


def test_data_beyond_the_credit_granted_fails_that_path() -> None:
    client, server, link = pair(Config(stream_receive_buffer=64 * KIB))
    stream, _ = open_confirmed(client, server, link)
    client.receive_record(1, packet(500, StreamFrame(stream.stream_id, 0, False, b"a" * 70_000)), 0)
    close = _violation(drain(client))
    assert "beyond the credit" in close.reason and not close.deliver


def test_shrinking_credit_fails_that_path() -> None:
    client, server, link = pair()
    stream, _ = open_confirmed(client, server, link)
    assert stream.sender.credit
    client.receive_record(1, packet(500, StreamCreditFrame(stream.stream_id, 10)), 0.0)
    assert "shrank" in _violation(drain(client)).reason


def test_credit_for_an_unknown_or_retired_stream_is_ignored() -> None:
    client, server, link = pair()
    client.receive_record(1, packet(500, StreamCreditFrame(77, MIB)), 0.0)
    stream, accepted = open_confirmed(client, server, link)
    client.finish(stream)
    server.finish(accepted)
    settle(link)
    client.read(stream, 10)
    assert client.stream_for(stream.stream_id) is None
    client.receive_record(1, packet(501, StreamCreditFrame(stream.stream_id, 9 * MIB)), 0.0)
    assert not any(isinstance(e, ClosePath) for e in drain(client))
    assert client.path_ids() == [1]


def test_a_stream_frame_without_credit_fails_an_extended_path() -> None:
    """An implicit open (KWIK v2's Stream frame for an unknown id) has no credit."""
    client, server, link = pair()
    server.receive_record(1, packet(500, StreamFrame(9, 0, False, b"x")), 0.0)
    assert "without credit" in _violation(drain(server)).reason


def test_an_extension_frame_on_a_v2_path_is_unknown() -> None:
    client, server, link = pair(extended=False)
    client.receive_record(1, packet(500, StreamCreditFrame(1, 10)), 0.0)
    assert "unknown frame type" in _violation(drain(client)).reason


# --- rule: nothing received is lost ----------------------------------------------------------


@pytest.mark.parametrize("size", [int(1.5 * MIB), 12 * MIB])
def test_close_keeps_everything_delivered_for_a_slow_reader(size: int) -> None:
    """v2: the server writes, closes the stream and the session; the client has not read.
    What its path delivered (frames that wait and records the reader still holds) stays
    readable."""
    config = Config(
        session_receive_buffer=256 * KIB,
        path_receive_window=256 * KIB,
        max_record_size=256 * KIB - 8,
    )
    client, server, link = pair(config, extended=False)
    stream, accepted = open_confirmed(client, server, link)
    payload = os.urandom(size)
    server.write(accepted, payload)
    server.finish(accepted)
    for _ in range(400):
        if not server.has_unsent():
            break
        link.pull(server, 0.0)
        link.deliver(client, 0.0)
    assert not server.has_unsent()
    assert not client.wants_records(1)  # the budget is spent: the path stopped
    server.close(0, "")
    assert any(isinstance(e, ClosePath) for e in drain(server))
    for record in link.leftovers(client):
        client.receive_record(1, record, 1.0)
    client.path_terminated(1, 0, "", by_peer=True, now=1.0)
    assert any(isinstance(e, SessionTerminated) for e in drain(client))
    assert read_all(client, stream) == payload  # every byte, then EOF


def test_a_path_kwik_fails_delivers_what_it_holds_first(extended: bool) -> None:
    """r3-2: liveness (or remove_path) fails a path; the records it still holds reach the
    streams before the session ends."""
    config = Config(heartbeat_interval=1.0, heartbeat_miss_threshold=2)
    client, server, link = pair(config, extended=extended)
    stream, accepted = open_confirmed(client, server, link)
    payload = os.urandom(700 * KIB)
    server.write(accepted, payload)
    server.finish(accepted)
    link.pull(server, 0.0)  # in the client's reader, not handed in yet
    now = 0.0
    while client.error is None and now < 30:
        now = max(client.get_timer() or now + 1, now)
        client.handle_timer(now)
        client.data_to_send(1, MIB, now)  # what the adapter does after every input
        events = drain(client)
        for event in events:
            if isinstance(event, ClosePath):
                assert event.deliver
                for record in link.leftovers(client):
                    client.receive_record(1, record, now)
                client.path_terminated(1, 1, event.reason, by_peer=False, now=now)
    assert client.error is not None
    assert read_all(client, stream) == payload


def test_read_after_close_without_fin_raises_after_the_data() -> None:
    client, server, link = pair()
    stream, accepted = open_confirmed(client, server, link)
    server.write(accepted, b"partial")
    settle(link)
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
    settle(link)
    assert not client.has_unsent()
    assert server.read(accepted, 1 << 20) == b"x" * 100_000


# --- rule: ids are never reused into a live stream ---------------------------------------------


def test_open_for_an_id_held_locally_is_refused_never_merged() -> None:
    """The server finished stream 1 both ways and forgot it; the client has not read the
    server's FIN yet. A new server stream must not land in it."""
    client, server, link = pair(extended=False)
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"req")
    client.finish(stream)
    settle(link)
    assert read_all(server, accepted) == b"req"
    server.write(accepted, b"resp")
    server.finish(accepted)
    settle(link)
    assert server.stream_for(1) is None  # retired on the server
    link.queues[id(client)].append(encode_record(900, [OpenStreamFrame(1)]))
    link.deliver(client, 0.0)
    assert OpenStreamRespFrame(1, False) in frames_of(client.data_to_send(1, MIB, 0.0))
    assert client.accept_stream() is None
    pushed = server.open_stream()
    assert pushed.stream_id != 1
    settle(link)
    server.write(pushed, b"PUSH")
    server.finish(pushed)
    settle(link)
    assert read_all(client, stream) == b"resp"
    new = client.accept_stream()
    assert new is not None and read_all(client, new) == b"PUSH"


def test_refused_open_retries_under_a_new_id(extended: bool) -> None:
    client, server, link = pair(extended=extended)
    held = server.open_stream()  # the server holds id 1 (opening)
    stream = client.open_stream()  # the client picks id 1 too: a collision
    assert stream.stream_id == held.stream_id == 1
    settle(link)
    assert stream.stream_id != 1 and stream.open_state is OpenState.OPEN
    assert held.open_state is OpenState.OPEN
    first = server.accept_stream()
    assert first is not None and first.stream_id == stream.stream_id
    second = client.accept_stream()
    assert second is not None and second.stream_id == 1
    client.write(stream, b"moved")
    client.finish(stream)
    settle(link)
    assert read_all(server, first) == b"moved"


def test_open_resp_only_counts_on_the_path_that_opened() -> None:
    client, server, link = pair()
    relay_id = client.add_path(primary=False, now=0.0)
    stream = client.open_stream()
    client.data_to_send(1, MIB, 0.0)
    client.receive_record(relay_id, packet(1, OpenStreamRespFrame(stream.stream_id, True)), 0.0)
    assert stream.open_state is OpenState.OPENING
    client.receive_record(1, packet(50, OpenStreamRespFrame(stream.stream_id, True)), 0.0)
    assert stream.open_state is OpenState.OPEN


def test_an_abandoned_open_confirmed_later_ends_on_both_sides() -> None:
    """r3-3: open_stream_sync timed out; the peer's confirmation comes later. Both sides end
    the stream (the peer reads EOF) and forget it."""
    client, server, link = pair()
    stream = client.open_stream()
    link.pull(client, 0.0)  # OpenStream left, no answer yet
    client.abandon_open(stream)
    settle(link)
    accepted = server.accept_stream()
    assert accepted is not None
    assert server.read(accepted, 10) == b""  # EOF at once, not a wait for ever
    server.finish(accepted)
    settle(link)
    assert client.open_streams == 0 and server.open_streams == 0


# --- rule: refusals surface as errors --------------------------------------------------------


def test_stream_beyond_max_streams_is_refused_and_reports_it() -> None:
    client, server, link = pair(server_config=Config(max_streams=1))
    open_confirmed(client, server, link)
    second = client.open_stream()
    client.write(second, b"never sent")
    settle(link)
    assert second.open_state is OpenState.REFUSED
    with pytest.raises(StreamClosedError):
        client.write(second, b"x")
    with pytest.raises(StreamClosedError):
        client.read(second, 1)
    assert server.streams_pending_accept == 0


def test_every_open_stream_is_answered_at_once(extended: bool) -> None:
    """r3-19: the receiver answers every OpenStream, whether or not its application
    accepted; beyond the accept backlog or max_streams it refuses."""
    config = Config(stream_backlog=8, max_streams=16)
    client, server, link = pair(server_config=config, extended=extended)
    server.receive_record(1, packet(900, *[OpenStreamFrame(i) for i in range(1, 1001)]), 0.0)
    assert server.streams_pending_accept == 8
    assert server.wants_records(1)  # answered, nothing waits
    answers = [
        f
        for f in frames_of(server.data_to_send(1, 4 * MIB, 0.0))
        if isinstance(f, OpenStreamRespFrame)
    ]
    assert len(answers) == 1000
    assert sum(f.success for f in answers) == 8


def test_write_offsets_are_bounded_to_u64() -> None:
    client, server, link = pair()
    stream, _ = open_confirmed(client, server, link)
    with pytest.raises(ValueError):
        client.set_write_offset(stream, 2**64)
    client.set_write_offset(stream, 2**64 - 2)
    with pytest.raises(ValueError):
        client.write(stream, b"abc")
    client.write(stream, b"a")  # ends at 2**64 - 1: fine
    with pytest.raises(ValueError):
        client.skip_to(stream, -1)


# --- rule: floods are bounded --------------------------------------------------------------


def test_one_echo_per_packet_whatever_its_pings() -> None:
    client, server, link = pair()
    server.receive_record(1, packet(900, *[PingFrame()] * 10_000), 0.0)
    assert frames_of(server.data_to_send(1, MIB, 0.0)).count(PingFrame()) == 1


def test_pings_from_a_peer_that_withholds_credit_do_not_pile_up(extended: bool) -> None:
    """r3-9: our transport cannot send (the peer withholds QUIC credit); its Ping flood is
    coalesced into one owed echo and one Ack, however long it lasts."""
    client, server, link = pair(extended=extended)
    for number in range(100, 20_100):
        server.receive_record(1, packet(number, PingFrame()), 0.0)
        assert server.data_to_send(1, -4 * MIB, 0.0) == []  # nothing can leave
    frames = frames_of(server.data_to_send(1, MIB, 1.0))
    assert frames.count(PingFrame()) == 1
    assert sum(isinstance(f, type(frames[-1])) for f in frames) <= 2  # an echo and an Ack


def test_a_packet_below_the_forgotten_ranges_fails_the_path() -> None:
    """r3-21: a number below the ranges kwik still remembers cannot be told from a duplicate:
    the path fails loudly instead of dropping it."""
    client, server, link = pair(server_config=Config(max_ack_ranges=4))
    for number in range(1000, 900, -2):  # descending, gapped
        server.receive_record(1, packet(number), 0.0)
    server.receive_record(1, packet(7, OpenStreamFrame(3)), 0.0)
    assert "below" in _violation(drain(server)).reason


# --- timers --------------------------------------------------------------------------------


def test_no_timer_fires_for_a_path_that_cannot_send() -> None:
    """r3-13: the peer finished the transport stream with an Ack owed; the path is closing. The
    timer must not fire again and again for an Ack that can never leave."""
    client, server, link = pair()
    server.receive_record(1, packet(100, OpenStreamFrame(5)), 0.0)
    server.path_closing(1)
    firings = 0
    now = 0.0
    while now < 20.0:
        deadline = server.get_timer()
        if deadline is None:
            break
        now = max(deadline, now)
        server.handle_timer(now)
        firings += 1
        assert firings < 50, "the timer spins"
        now += 1e-9


def test_a_blocked_transport_does_not_spin_the_ack_timer() -> None:
    client, server, link = pair()
    for number in range(100, 140):
        server.receive_record(1, packet(number, PingFrame()), 0.0)
    server.data_to_send(1, -4 * MIB, 0.0)  # nothing could leave
    deadline = server.get_timer()
    assert deadline is None or deadline > 0.0


# --- liveness wiring -------------------------------------------------------------------------


def test_a_silent_peer_fails_the_path_within_the_bound() -> None:
    config = Config(heartbeat_interval=1.0, heartbeat_miss_threshold=3)
    client, server, link = pair(config)
    now = 0.0
    failed = None
    while failed is None and now < 30:
        deadline = client.get_timer()
        assert deadline is not None
        now = deadline
        client.handle_timer(now)
        client.data_to_send(1, MIB, now)
        failed = next((e for e in drain(client) if isinstance(e, ClosePath)), None)
    assert failed is not None and failed.deliver
    assert now <= 3.0 + 1e-6  # interval * threshold after the last sign of life (t=0)


def test_a_zombie_peer_is_failed_although_its_quic_stack_answers() -> None:
    """Datagrams keep coming, no KWIK record does: the client fails the path within the idle
    bound (it does not withhold credit, so echoes could have come)."""
    config = Config(heartbeat_interval=1.0, heartbeat_miss_threshold=3)
    client, server, link = pair(config)
    now = 0.0
    failed = None
    while failed is None and now < 30:
        now += 0.1
        client.on_datagram(1, now)
        client.handle_timer(now)
        failed = next((e for e in drain(client) if isinstance(e, ClosePath)), None)
    assert failed is not None and now <= 3.0 + 0.2


def test_a_reader_that_pauses_keeps_a_live_session() -> None:
    """The client withholds credit (its transport is told so); QUIC datagrams then prove the
    peer alive for as long as it lasts."""
    config = Config(heartbeat_interval=0.5, heartbeat_miss_threshold=3)
    client, server, link = pair(config)
    now = 0.0
    probes = 0
    while now < 20 * config.heartbeat_interval:
        now += 0.1
        client.on_transport(1, now, in_flight=False, pto=0.01, withholding=True, blocked=False)
        client.on_datagram(1, now)
        client.handle_timer(now)
        probes += sum(isinstance(e, SendProbe) for e in drain(client))
    assert client.error is None and client.path_ids() == [1]
    assert probes >= 15


# --- relays ------------------------------------------------------------------------------------


def test_relay_credit_goes_with_the_add_path_answer() -> None:
    trio = Trio(Config(relay_buffer=256 * KIB))
    frames = frames_of(trio.primary.sent[id(trio.c)])
    assert AddPathRespFrame(trio.relay_id, "198.18.0.2:4433") in frames
    assert RelayCreditFrame(trio.relay_id, 256 * KIB) in frames


def test_relay_data_beyond_the_relay_credit_fails_the_primary_path() -> None:
    trio = Trio(Config(relay_buffer=64 * KIB))
    frame = RelayDataFrame(trio.relay_id, 5, b"r" * (64 * KIB + 1))
    trio.c.receive_record(1, packet(900, frame), 0.0)
    assert "RelayCredit" in _violation(drain(trio.c)).reason


def test_relay_data_for_a_stream_the_secondary_never_confirms_is_bounded() -> None:
    """With credit, the primary holds what the client cannot forward: 20 MB relayed, the
    client holds at most relay_buffer, the primary's outbox keeps the rest."""
    config = Config(relay_buffer=256 * KIB)
    trio = Trio(config)
    trio.p.relay_send(trio.relay_id, 9, b"r" * 20_000_000)
    # the secondary never answers: its link is cut
    for _ in range(200):
        settle(trio.primary)
        trio.relay.queues[id(trio.s)].clear()
    assert trio.c._forwarder.backlog[trio.relay_id] <= config.relay_buffer
    assert (trio.p.relay_buffered(trio.relay_id) or 0) >= 20_000_000 - config.relay_buffer
    assert trio.c.wants_records(1)


def test_relay_data_is_not_starved_by_the_primarys_own_streams() -> None:
    """r3-8: a 4-byte command relayed while the primary's stream has 10 MiB to send leaves in
    the first flight, not after the bulk."""
    trio = Trio()
    stream = trio.c.open_stream()
    trio.settle()
    accepted = trio.p.accept_stream()
    assert accepted is not None
    trio.p.write(accepted, b"b" * 10 * MIB)
    trio.p.relay_send(trio.relay_id, stream.stream_id, b"GO!!")
    records = trio.p.data_to_send(1, 256 * KIB, 0.0)
    assert RelayDataFrame(trio.relay_id, stream.stream_id, b"GO!!") in frames_of(records)


def test_a_relayed_stream_ends_for_the_secondary_once_complete(extended: bool) -> None:
    """r3-4: the client FINs what it forwarded once the stream is complete, so the secondary
    reads EOF and forgets the stream; nothing grows with the number of streams."""
    trio = Trio(extended=extended, relay_extended=extended)
    sizes: list[dict[str, int]] = []
    for i in range(300):
        stream = trio.c.open_stream()
        trio.c.write(stream, b"GET")
        trio.c.finish(stream)
        trio.settle()
        accepted = trio.p.accept_stream()
        assert accepted is not None
        assert read_all(trio.p, accepted) == b"GET"
        trio.p.relay_send(trio.relay_id, stream.stream_id, b"half")
        trio.p.write(accepted, b"P" * 10)
        trio.p.set_write_offset(accepted, 20)
        trio.p.finish(accepted)  # FIN at 20: the secondary writes [10, 20)
        trio.settle()
        secondary = trio.s.accept_stream()
        assert secondary is not None
        assert trio.s.read(secondary, 100) == b"half"
        trio.s.set_write_offset(secondary, 10)
        trio.s.write(secondary, b"S" * 10)
        trio.s.finish(secondary, fin=False)
        trio.settle()
        assert read_all(trio.c, stream) == b"P" * 10 + b"S" * 10
        trio.settle()
        assert trio.s.read(secondary, 100) == b""  # the secondary learns it is complete
        if i in (9, 299):
            sizes.append(
                {
                    k: v
                    for core in (trio.c, trio.p, trio.s)
                    for k, v in core.table_sizes().items()
                    if k != "retired"
                }
            )
    assert sizes[0] == sizes[1]
    assert trio.c.open_streams == trio.p.open_streams == trio.s.open_streams == 0


def test_a_stream_a_secondary_opens_is_answered_on_its_path(extended: bool) -> None:
    """r3-14: the client's reply goes to the secondary, never to the primary."""
    trio = Trio(extended=extended, relay_extended=extended)
    opened = trio.s.open_stream()
    trio.settle()
    trio.s.write(opened, b"hello from the secondary")
    trio.s.finish(opened)
    trio.settle()
    accepted = trio.c.accept_stream()
    assert accepted is not None and accepted.home_path == trio.relay_id
    assert read_all(trio.c, accepted) == b"hello from the secondary"
    trio.c.write(accepted, b"reply")
    trio.c.finish(accepted)
    trio.settle()
    assert read_all(trio.s, opened) == b"reply"
    assert trio.p.accept_stream() is None


def test_the_primarys_graceful_end_waits_for_what_relays_still_write() -> None:
    """r3-18: the primary closes right after its part; the client keeps the session until the
    secondary's part of the stream arrived."""
    trio = Trio()
    stream = trio.c.open_stream()
    trio.settle()
    accepted = trio.p.accept_stream()
    assert accepted is not None
    trio.p.relay_send(trio.relay_id, stream.stream_id, b"go")
    trio.p.write(accepted, b"P" * 100)
    trio.p.set_write_offset(accepted, 200)
    trio.p.finish(accepted)  # FIN at 200: the secondary writes [100, 200)
    trio.settle()
    trio.c.path_terminated(1, 0, "", by_peer=True, now=1.0)  # the primary is gone, gracefully
    assert trio.c.error is None and trio.c.closing
    secondary = trio.s.accept_stream()
    assert secondary is not None
    trio.s.set_write_offset(secondary, 100)
    trio.s.write(secondary, b"S" * 100)
    trio.s.finish(secondary, fin=False)
    settle(trio.relay)
    assert read_all(trio.c, stream) == b"P" * 100 + b"S" * 100
    # then the adapter is told to close gracefully: the FIN owed to the secondary goes first
    finish = [e for e in drain(trio.c) if isinstance(e, FinishClose)]
    assert len(finish) == 1 and finish[0].error.code == 0 and finish[0].error.remote
    assert trio.c.error is None
    settle(trio.relay)
    assert read_all(trio.s, secondary) == b"go"  # then the secondary reads its stream's end
    assert not trio.c.has_unsent()
    trio.c.close(0, "")
    error = trio.c.error
    assert error is not None and error.code == 0 and error.remote  # the primary's error


def test_the_primarys_graceful_end_gives_up_after_close_timeout() -> None:
    trio = Trio(Config(close_timeout=2.0))
    stream = trio.c.open_stream()
    trio.settle()
    accepted = trio.p.accept_stream()
    assert accepted is not None
    trio.p.relay_send(trio.relay_id, stream.stream_id, b"go")
    trio.p.set_write_offset(accepted, 100)
    trio.p.finish(accepted)  # FIN at 100: the secondary's part [0, 100) never comes
    trio.settle()
    trio.c.path_terminated(1, 0, "", by_peer=True, now=1.0)
    assert trio.c.error is None
    deadline = trio.c.get_timer()
    assert deadline is not None and deadline <= 3.0
    trio.c.handle_timer(3.0)
    assert trio.c.error is not None


def test_relay_path_that_ends_unblocks_a_v2_primary() -> None:
    config = Config(relay_buffer=64 * KIB)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    drain(client)
    chunk = b"r" * 32 * KIB
    number = 1
    while client.wants_records(primary) and number < 100:
        client.receive_record(primary, packet(number, RelayDataFrame(relay, 9, chunk)), 0.0)
        number += 1
    assert client.table_sizes()["waiting_frames"]  # the primary's data waits for the relay
    client.receive_record(primary, packet(number, StreamFrame(3, 0, True, b"after")), 0.0)
    client.path_terminated(relay, CLOSE_FAILURE, "relay died", by_peer=False, now=1.0)
    drain(client)
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
    assert [e for e in drain(client) if isinstance(e, DialRelay)] == [DialRelay("127.0.0.1:9")]
    new = client.add_path(primary=False, now=0.0, dialed_as="127.0.0.1:9")
    client.add_path_result("127.0.0.1:9", new)
    frames = frames_of(client.data_to_send(primary, MIB, 0.0))
    assert frames.count(AddPathRespFrame(new, "127.0.0.1:9")) == 2


def test_server_relay_request_and_removal() -> None:
    server = SessionCore(is_client=False, config=Config())
    path = server.add_path(primary=True, now=0.0)
    server.request_relay("127.0.0.1:7")
    assert AddPathFrame("127.0.0.1:7") in frames_of(server.data_to_send(path, MIB, 0.0))
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
    client.finish(stream)
    settle(link)
    server.path_terminated(1, 0, "", by_peer=True, now=1.0)
    arrived = server.accept_stream()
    assert arrived is not None and read_all(server, arrived) == b"data"
    assert server.accept_stream() is None
    assert [type(e) for e in drain(server) if isinstance(e, StreamArrived)] == [StreamArrived]


def test_a_resumed_path_is_announced() -> None:
    config = Config(
        session_receive_buffer=128 * KIB,
        path_receive_window=128 * KIB,
        max_record_size=128 * KIB - 8,
    )
    client, server, link = pair(config, extended=False)
    stream, accepted = open_confirmed(client, server, link)
    server.write(accepted, b"z" * MIB)
    for _ in range(20):
        settle(link)
    assert not client.wants_records(1)
    drain(client)
    client.read(stream, 1 << 30)
    assert any(isinstance(e, PathResumed) for e in drain(client))


def test_link_helper_is_faithful() -> None:
    """The harness's records are real wire records (the codec reads them back)."""
    client, server, link = pair()
    stream = client.open_stream()
    records = client.data_to_send(1, MIB, 0.0)
    assert all(int.from_bytes(r[:4], "big") == len(r) - 4 for r in records)
    assert frames_of(records)[0] == OpenStreamFrame(stream.stream_id)
    assert isinstance(link, Link) and body(records[0])


def test_pings_in_records_not_taken_yet_are_answered_by_looking_ahead() -> None:
    """A path that takes no more records (its waiting data is at its bound) still answers the
    Pings of the records its transport holds (r3-7)."""
    config = Config(
        session_receive_buffer=64 * KIB,
        path_receive_window=128 * KIB,
        max_record_size=128 * KIB - 8,
    )
    client, server, link = pair(config, extended=False)
    stream, accepted = open_confirmed(client, server, link)
    client.write(stream, b"u" * MIB)
    for _ in range(10):
        settle(link)
    assert not server.wants_records(1)
    server.data_to_send(1, MIB, 0.0)  # nothing owed before the look-ahead
    server.peek_record(1, packet(9000, PingFrame()), 0.0)
    assert PingFrame() in frames_of(server.data_to_send(1, MIB, 0.0), extended=False)
    server.peek_record(1, b"garbage", 0.0)  # a bad record fails the path when handed in
    assert server.path_ids() == [1]


def test_relay_data_after_a_refusal_keeps_its_offsets() -> None:
    """A secondary refused a forwarded stream: what the primary relays for it later is
    dropped, never re-opened at offset 0 (it would land at the wrong place), and the forwarding
    entry ends with the stream."""
    trio = Trio(extended=False, relay_extended=False)
    stream = trio.c.open_stream()
    trio.settle()
    relay = trio.relay_id
    trio.c.receive_record(1, packet(900, RelayDataFrame(relay, stream.stream_id, b"abc")), 0.0)
    sent = frames_of(trio.c.data_to_send(relay, MIB, 0.0), extended=False)
    assert OpenStreamFrame(stream.stream_id) in sent
    trio.c.receive_record(relay, packet(901, OpenStreamRespFrame(stream.stream_id, False)), 0.0)
    trio.c.receive_record(1, packet(902, RelayDataFrame(relay, stream.stream_id, b"defg")), 0.0)
    later = frames_of(trio.c.data_to_send(relay, MIB, 0.0), extended=False)
    assert not any(isinstance(f, OpenStreamFrame | StreamFrame) for f in later)
    assert trio.c.relay_backlog(relay) == 0
    trio.c.cancel_read(stream)  # the client is done with the stream: the entry goes
    assert trio.c.table_sizes()["forwarded"] == 0


def test_relay_data_waiting_for_a_slow_relay_goes_on_as_soon_as_it_drains() -> None:
    """KWIK v2 primary: RelayData waits while the relay path's backlog is full; the moment the
    relay path sends (freeing room), the waiting RelayData is taken, with no timer involved (a
    retry nested in another one is not lost)."""
    config = Config(relay_buffer=64 * KIB)
    trio = Trio(config, extended=False, relay_extended=False)
    stream = trio.c.open_stream()
    trio.settle()
    relay = trio.relay_id
    for number in range(900, 905):
        trio.c.receive_record(
            1, packet(number, RelayDataFrame(relay, stream.stream_id, b"r" * 32 * KIB)), 0.0
        )
    assert trio.c.table_sizes()["waiting_frames"] == 3  # two fit the budget, three wait
    trio.c.receive_record(relay, packet(800, OpenStreamRespFrame(stream.stream_id, True)), 0.0)
    trio.c.data_to_send(relay, MIB, 0.0)  # the relay path sends what it holds
    assert trio.c.table_sizes()["waiting_frames"] == 1  # two more taken at once
    trio.c.data_to_send(relay, MIB, 0.0)
    assert trio.c.table_sizes()["waiting_frames"] == 0
