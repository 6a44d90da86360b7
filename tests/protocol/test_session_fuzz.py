"""Fuzzing the sans-IO session core, and the defects the fuzzer found, as plain regressions.

The machines and scenarios live in :mod:`tests.fuzz.core`; this file runs them with a fixed
budget and fixed seeds (reproducible, about 25 s), on paths with the credit extension and on
KWIK v2 paths. ``python -m tests.fuzz --minutes N`` runs them longer with random seeds.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from kwik import Config, StreamClosedError
from kwik.protocol import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
)
from kwik.protocol.events import ClosePath, DialRelay
from kwik.protocol.session import MAX_ADDRESS_LENGTH, SessionCore
from kwik.protocol.stream import OpenState
from tests.fuzz.core import STATS, HostileCoreMachine, run_honest

from .helpers import KIB, MIB, Trio, drain, open_confirmed, pair, settle


@pytest.fixture(params=[True, False], ids=["credit", "v2"])
def extended(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _frames(records: list[bytes], *, extended: bool = False) -> list[Frame]:
    return [f for r in records for f in decode_packet(r[8:], extended=extended).frames]


def _answer_bytes(frames: list[Frame]) -> int:
    """What the control budget counts for the answers among ``frames``."""
    total = 0
    for f in frames:
        if isinstance(f, OpenStreamRespFrame | OpenStreamFrame):
            total += 24
        elif isinstance(f, AddPathRespFrame):
            total += 24 + len(f.address)
    return total


# --- the bounded fuzz run ------------------------------------------------------------------------


def test_session_core_against_a_hostile_peer() -> None:
    """Random frame sequences, floods, credit frames and malformed records on every path of a
    client or server core (paths with and without the credit extension), with application
    calls, time steps, path failures and output drained with random budgets; the budgets and
    the core's accounting are checked after every step (tests/fuzz/core.py). Derandomized:
    the same examples on every run."""
    before = (STATS.steps, STATS.checks, STATS.violations, STATS.credited_frames)
    run_state_machine_as_test(
        HostileCoreMachine,
        settings=settings(
            max_examples=150,
            stateful_step_count=50,
            derandomize=True,
            database=None,
            deadline=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    steps, checks, violations, credited = (
        now - then
        for now, then in zip(
            (STATS.steps, STATS.checks, STATS.violations, STATS.credited_frames),
            before,
            strict=True,
        )
    )
    assert steps > 1000 and checks > 10_000  # it did run
    assert violations > 10 and credited > 10  # bad input was answered, credit was checked


@pytest.mark.parametrize("first", [0, 12])
@pytest.mark.parametrize("mode", ["credit", "v2", "mixed"])
def test_honest_multi_server_streams_are_delivered_exactly(mode: str, first: int) -> None:
    """A client, a primary and up to two relays (every path with the credit extension, none,
    or the primary's only): streams written in random pieces (some far out of order, some by
    two servers at once) through random budgets and chunking; every reader gets exactly the
    bytes written, then EOF, no budget is exceeded on the way, and every stream then ends for
    every party."""
    runs, delivered = STATS.honest_runs, STATS.honest_bytes
    count = 6 if mode == "mixed" else 12
    for seed in range(first, first + count):
        run_honest(seed, mode)
    assert STATS.honest_runs - runs == count and STATS.honest_bytes > delivered


# --- regressions: found by the fuzzer before the credit extension ------------------------------


def test_piggybacked_ack_never_pushes_a_record_over_max_record_size(extended: bool) -> None:
    """Found by the fuzzer (honest scenario, seed 0): a data frame of max_stream_frame_data
    bytes plus a piggybacked Ack made a record of L1=1112 with max_record_size=1088, which the
    peer's record reader rejects (protocol violation: the path fails)."""
    config = Config(
        max_stream_frame_data=1024, max_record_size=1088, max_ack_ranges=64, ack_threshold=2
    )
    client = SessionCore(is_client=True, config=config)
    path = client.add_path(primary=True, now=0.0, extended=extended)
    stream = client.open_stream()
    client.data_to_send(path, MIB, 0.0)
    confirm: list[Frame] = [OpenStreamRespFrame(stream.stream_id, True)]
    if extended:
        confirm.append(StreamCreditFrame(stream.stream_id, MIB))
    client.receive_record(path, encode_packet(1, confirm), 0.0)  # one packet to acknowledge
    client.write(stream, bytes(3000))
    records = client.data_to_send(path, MIB, 0.0)
    assert sum(len(r) for r in records) > 3000  # the data went
    assert max(len(r) - 4 for r in records) <= config.max_record_size
    # the acknowledgement is not lost: it goes alone when its timer fires
    later = client.data_to_send(path, MIB, config.ack_interval)
    assert any(isinstance(f, AckFrame) for f in _frames(records + later, extended=extended))
    assert max(len(r) - 4 for r in later) <= config.max_record_size


def test_relay_data_for_new_streams_stays_within_the_relay_paths_control_budget() -> None:
    """Found by the fuzzer: each RelayData for a new destination stream queues an OpenStream on
    the relay path, and an empty one costs nothing against ``relay_buffer``, so a primary could
    make the client queue any number of OpenStream frames (300 empty RelayData frames: 10,200
    bytes queued with control_buffer=400). Now a KWIK v2 primary's RelayData waits for the
    relay path, and goes on as the relay path's answers leave, nothing dropped (found by the
    fuzzer's progress check after the core's split: once the first answers left, the RelayData
    that waited was never retried, and the primary path's data stopped for good)."""
    config = Config(control_buffer=400, max_streams=1000)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    flood = encode_packet(1, [RelayDataFrame(relay, sid, b"") for sid in range(1, 301)])
    client.receive_record(primary, flood, 0.0)
    assert client.table_sizes()["waiting_frames"]  # back-pressure on the primary
    opened: list[int] = []
    for _ in range(100):
        frames = _frames(client.data_to_send(relay, MIB, 0.0))
        if not frames:
            break
        assert _answer_bytes(frames) <= config.control_buffer + 24
        opened += [f.stream_id for f in frames if isinstance(f, OpenStreamFrame)]
    assert opened == list(range(1, 301))  # nothing dropped
    assert client.table_sizes()["waiting_frames"] == 0 and client.wants_records(primary)


@pytest.mark.parametrize("budget", [None, 64 * KIB], ids=["default", "budget-below-body"])
def test_a_stream_written_out_of_order_beyond_the_window_is_delivered(
    extended: bool, budget: int | None
) -> None:
    """Found by the fuzzer (a strict xfail of the previous design): the application writes
    the body first, then goes back to write the header (a common pattern: the header holds the
    body's length). The body is larger than the receiver's window (and, second case, than its
    whole session budget): the header, which the reader needs first, used to be behind a frame
    that parked the path, and every stream of the session stopped. Now credit lets the header
    go first, and on a KWIK v2 path the sender hands out the lowest offset first."""
    config = Config(stream_receive_buffer=64 * KIB)
    if budget is not None:
        config = config.replace(session_receive_buffer=budget)
    client, server, link = pair(config, extended=extended)
    stream, accepted = open_confirmed(client, server, link)
    body = bytes(range(256)) * 400  # 102,400 bytes
    client.set_write_offset(stream, 16)
    client.write(stream, body)
    client.set_write_offset(stream, 0)
    client.write(stream, b"H" * 16)
    client.finish(stream)
    got = bytearray()
    for _ in range(100):
        settle(link)
        data = server.read(accepted, MIB)
        if data == b"":
            break
        got += data or b""
    assert bytes(got) == b"H" * 16 + body


def test_accepted_streams_nobody_reads_stay_within_the_session_budget() -> None:
    """KWIK v2: the application accepts 64 streams and reads none; the peer sends one 64 KiB
    frame at offset 0 of each. 4 MiB ended up buffered against a 256 KiB session budget."""
    config = Config(
        stream_receive_buffer=64 * KIB,
        session_receive_buffer=256 * KIB,
        max_streams=64,
        stream_backlog=64,
    )
    server = SessionCore(is_client=False, config=config)
    path = server.add_path(primary=True, now=0.0)
    opens = encode_packet(1, [OpenStreamFrame(i) for i in range(1, 65)])
    server.receive_record(path, opens, 0.0)
    while server.accept_stream() is not None:
        pass
    for i in range(1, 65):
        if not server.wants_records(path):
            break
        frame = StreamFrame(i, 0, False, bytes(64 * KIB))
        server.receive_record(path, encode_packet(1 + i, [frame]), 0.0)
    assert server.receive_buffered <= config.session_receive_buffer


def test_streams_nobody_reads_get_credit_within_the_session_budget() -> None:
    """The same with the credit extension: 64 streams opened, none read; the credit granted
    in all, and so what the peer may send, stays within the session budget."""
    config = Config(
        stream_receive_buffer=64 * KIB,
        session_receive_buffer=256 * KIB,
        max_streams=64,
        stream_backlog=64,
    )
    client, server, link = pair(config)
    streams = [client.open_stream() for _ in range(64)]
    settle(link)
    accepted = [server.accept_stream() for _ in streams]
    for stream in streams:
        client.write(stream, bytes(64 * KIB))
    for _ in range(20):
        settle(link)
    assert sum(s.receiver.limit for s in accepted if s is not None) <= 256 * KIB
    assert server.receive_buffered <= config.session_receive_buffer
    assert server.wants_records(1)


def test_confirmation_for_an_id_the_peer_took_meanwhile_never_replaces_its_stream() -> None:
    """Found by the fuzzer (accounting invariant): the client opens stream 1; before the answer,
    the peer sends a Stream frame for id 1 (a KWIK v2 implicit open: a new peer stream 1 is
    accepted); then the peer confirms our OpenStream(1). The confirmation replaced the peer's
    stream in the table: the stream already handed to accept_stream() never got another byte
    (they went into ours) and its slot of max_streams was never released. Now the local stream
    moves to another id, as after a refusal."""
    client = SessionCore(is_client=True, config=Config(max_streams=4))
    path = client.add_path(primary=True, now=0.0)
    ours = client.open_stream()
    assert ours.stream_id == 1
    client.data_to_send(path, MIB, 0.0)
    client.receive_record(path, encode_packet(1, [StreamFrame(1, 0, False, b"theirs")]), 0.0)
    theirs = client.accept_stream()
    assert theirs is not None and theirs.stream_id == 1
    client.receive_record(path, encode_packet(2, [OpenStreamRespFrame(1, True)]), 0.0)
    client.receive_record(path, encode_packet(3, [StreamFrame(1, 6, True, b"!")]), 0.0)
    assert client.read(theirs, 100) == b"theirs!"
    assert client.read(theirs, 100) == b""  # the peer's stream got its FIN, not ours
    assert client.stream_for(1) is theirs
    frames = _frames(client.data_to_send(path, MIB, 0.0))
    assert OpenStreamFrame(ours.stream_id) in frames and ours.stream_id != 1  # ours moved on


def test_an_add_path_address_longer_than_any_host_port_fails_the_path() -> None:
    """Found by the fuzzer's output check: an AddPathResp echoes the address, 8 bytes longer
    than the AddPath that carried it, so the longest AddPath within max_record_size would get
    an answer over it. No "host:port" is that long: such an AddPath is a protocol violation,
    and no record over max_record_size is ever emitted."""
    config = Config(max_stream_frame_data=1024, max_record_size=1088)
    client = SessionCore(is_client=True, config=config)
    client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    client.data_to_send(relay, MIB, 0.0)
    drain(client)
    longest = config.max_record_size - (4 + 17 + 9)  # the AddPath record is exactly at the limit
    request = encode_packet(1, [AddPathFrame("a" * longest)])
    assert len(request) + 4 == config.max_record_size
    client.receive_record(relay, request, 0.0)
    closes = [e for e in drain(client) if isinstance(e, ClosePath)]
    assert closes and closes[0].path_id == relay and "protocol violation" in closes[0].reason
    assert client.data_to_send(relay, MIB, 0.0) == []
    normal = encode_packet(1, [AddPathFrame("b" * 200 + ":443")])
    client.receive_record(1, normal, 0.0)
    records = client.data_to_send(1, MIB, 0.0)
    assert max(len(r) - 4 for r in records) <= config.max_record_size


def test_add_path_answers_stay_within_the_control_budget() -> None:
    """Found by the fuzzer, twice: AddPath answers (AddPathResp) were queued without looking at
    ``control_buffer``, so a peer that sends AddPath floods and never reads our output grew
    the control queue without bound; and after the core's split the budget counted 24 bytes
    per answer, not the address it echoes (40 AddPath frames of 250 characters on a relay
    path: 10,960 bytes of answers queued at once with control_buffer=400). Now the frame waits
    (nothing dropped) and the answers leave within the budget."""
    config = Config(control_buffer=400)
    client = SessionCore(is_client=True, config=config)
    client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    client.data_to_send(relay, MIB, 0.0)
    client.receive_record(relay, encode_packet(1, [AddPathFrame("a" * 250)] * 40), 0.0)
    assert client.table_sizes()["waiting_frames"]  # the rest waits
    answers: list[Frame] = []
    for _ in range(100):
        frames = _frames(client.data_to_send(relay, MIB, 0.0))
        if not frames:
            break
        assert _answer_bytes(frames) <= config.control_buffer + 24 + 250
        answers += [f for f in frames if isinstance(f, AddPathRespFrame)]
    assert answers == [AddPathRespFrame(0, "a" * 250)] * 40
    assert client.table_sizes()["waiting_frames"] == 0


def test_duplicate_add_path_answers_pending_a_dial_are_bounded() -> None:
    """Found by the fuzzer (10-minute run): AddPath frames repeating an address being dialled
    are each answered when the dial ends, all at once, so a flood of duplicates queued any
    number of answers in one go (24 duplicates: 1,296 bytes with control_buffer=200). Beyond
    control_buffer of such pending answers the frame now waits. And (found by the fuzzer's
    progress check after the core's split) the duplicates that waited were never retried once
    the dial ended: they waited for ever, and the path's later AddPaths behind them."""
    config = Config(control_buffer=200)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0)
    client.data_to_send(primary, MIB, 0.0)
    address = "10.0.0.1:443"
    client.receive_record(primary, encode_packet(1, [AddPathFrame(address)] * 24), 0.0)
    assert client.table_sizes()["waiting_frames"]  # the duplicates beyond the budget wait
    answers = []
    dials = 0
    for _ in range(100):
        # each dial fails; the duplicates that waited then ask again (a new dial)
        while (event := client.next_event()) is not None:
            if isinstance(event, DialRelay):
                dials += 1
                client.add_path_result(event.address, 0)
        frames = _frames(client.data_to_send(primary, MIB, 0.0))
        assert _answer_bytes(frames) <= 2 * config.control_buffer + 64
        answers += [f for f in frames if isinstance(f, AddPathRespFrame)]
        if not frames and not client.has_events:
            break
    assert answers == [AddPathRespFrame(0, address)] * 24  # every AddPath answered
    assert dials >= 2 and client.table_sizes()["waiting_frames"] == 0


# --- regressions: found by the fuzzer in the credit-extension core -----------------------------


def test_a_waiting_reader_takes_one_frame_beyond_the_budget_not_every_frame() -> None:
    """Found by the fuzzer (honest scenario, v2, seed 3; hostile machine: a read that waits,
    then 18 packets of 613 bytes). On a KWIK v2 path a reader that waits with nothing to read
    takes a frame whatever the session budget (so that it never waits on budget other streams
    hold); but every later frame was taken too until the application read: 40 frames of 1,000
    bytes put 40,000 bytes in a 10,000-byte budget. Now one frame, then the budget again."""
    config = Config(stream_receive_buffer=4096, session_receive_buffer=10_000)
    server = SessionCore(is_client=False, config=config)
    path = server.add_path(primary=True, now=0.0)
    server.receive_record(path, encode_packet(1, [OpenStreamFrame(1)]), 0.0)
    stream = server.accept_stream()
    assert stream is not None and server.read(stream, 10) is None  # the reader waits
    data = [StreamFrame(1, i * 1000, False, bytes([i]) * 1000) for i in range(40)]
    server.receive_record(path, encode_packet(2, data), 0.0)
    assert server.receive_buffered <= config.session_receive_buffer + 1000
    got = bytearray()
    while len(got) < 40_000:  # nothing lost: reading lets the rest in
        chunk = server.read(stream, MIB)
        assert chunk
        got += chunk
        assert server.receive_buffered <= config.session_receive_buffer + 1000
    assert bytes(got) == b"".join(f.data for f in data)


def test_an_abandoned_open_refused_later_gives_its_credit_back() -> None:
    """Found by the fuzzer (accounting: budget in use with no stream held): the opener grants
    its acceptor credit with the OpenStream; the application gives up waiting (abandon_open),
    then the peer refuses. The stream was dropped, its credit kept: after two such streams a
    2 MiB budget had nothing left and every new stream got no credit at all."""
    config = Config(stream_receive_buffer=MIB, session_receive_buffer=2 * MIB)
    client = SessionCore(is_client=True, config=config)
    path = client.add_path(primary=True, now=0.0, extended=True)
    for number in (1, 2):
        stream = client.open_stream()
        assert client.receive_buffered == MIB  # the credit it grants its acceptor
        client.data_to_send(path, MIB, 0.0)
        client.abandon_open(stream)
        answer = OpenStreamRespFrame(stream.stream_id, False)
        client.receive_record(path, encode_packet(number, [answer]), 0.0)
        assert client.open_streams == 0 and client.receive_buffered == 0
    assert client.open_stream().receiver.limit == MIB


def test_a_relay_address_longer_than_any_host_port_is_refused_at_once() -> None:
    """Found by the fuzzer's output check: request_relay took any address, so a server asking
    for a relay at an address longer than any "host:port" sent an AddPath that the client takes
    as a protocol violation (it fails the primary path: the session ends), or a record over
    max_record_size. It is refused at once now, and the longest address the client takes
    goes."""
    config = Config(max_stream_frame_data=1024, max_record_size=1088)
    server = SessionCore(is_client=False, config=config)
    path = server.add_path(primary=True, now=0.0)
    with pytest.raises(ValueError, match="at most"):
        server.request_relay("a" * 1059)
    assert server.table_sizes()["relay_asked"] == 0
    longest = "b" * (MAX_ADDRESS_LENGTH - 4) + ":443"
    server.request_relay(longest)
    records = server.data_to_send(path, MIB, 0.0)
    assert max(len(r) - 4 for r in records) <= config.max_record_size
    client = SessionCore(is_client=True, config=config)
    client.add_path(primary=True, now=0.0)
    for record in records:
        client.receive_record(1, record[8:], 0.0)
    assert DialRelay(longest) in drain(client)


def test_cancelling_a_stream_its_path_took_away_leaves_the_budget_alone() -> None:
    """Found by the fuzzer (accounting: receive_buffered=-1): a secondary's streams hold
    out-of-order bytes when its path ends; the core forgets them (their share of the budget
    goes back), but the application still holds their handles. cancel_read, skip_to and read
    then gave the share back a second time: the budget went below zero and the session granted
    more than session_receive_buffer."""
    client = SessionCore(is_client=True, config=Config())
    client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    held = [StreamFrame(sid, 100, False, b"x" * 500) for sid in (2, 4)]
    client.receive_record(relay, encode_packet(1, held), 0.0)
    first, second = client.accept_stream(), client.accept_stream()
    assert first is not None and second is not None
    assert client.receive_buffered == 1000
    client.path_terminated(relay, 1, "gone", by_peer=True, now=1.0)
    assert client.open_streams == 0 and client.receive_buffered == 0
    client.cancel_read(first)
    client.skip_to(second, 100)
    assert second.receiver.readable == 500
    with pytest.raises(StreamClosedError):
        while True:
            client.read(second, 100)
    assert client.receive_buffered == 0


def test_a_relay_path_ending_keeps_the_clients_own_opener_of_the_same_id() -> None:
    """Found by the fuzzer (accounting: budget in use with no stream held): the client opens
    stream 1 on the primary; before the answer the secondary opens its own stream 1 on its
    path. Failing what the relay path held when it ended also took the client's opener of id 1
    out of the table: its credit leaked and the primary's confirmation was ignored. Now the
    client keeps the id it opens (the secondary's open is refused and moves on), and the relay
    path's end leaves the opener alone."""
    client = SessionCore(is_client=True, config=Config())
    primary = client.add_path(primary=True, now=0.0, extended=True)
    relay = client.add_path(primary=False, now=0.0)
    ours = client.open_stream()
    client.data_to_send(primary, MIB, 0.0)
    client.receive_record(relay, encode_packet(1, [OpenStreamFrame(ours.stream_id)]), 0.0)
    assert client.accept_stream() is None
    answers = _frames(client.data_to_send(relay, MIB, 0.0))
    assert OpenStreamRespFrame(ours.stream_id, False) in answers  # the secondary moves on
    client.path_terminated(relay, 1, "gone", by_peer=True, now=1.0)
    confirm = [OpenStreamRespFrame(ours.stream_id, True), StreamCreditFrame(ours.stream_id, 10)]
    client.receive_record(primary, encode_packet(1, confirm), 1.0)
    assert ours.open_state is OpenState.OPEN
    assert client.receive_buffered == ours.receiver.commitment > 0
    client.write(ours, b"still here")
    sent = _frames(client.data_to_send(primary, MIB, 1.0), extended=True)
    assert StreamFrame(ours.stream_id, 0, False, b"still here") in sent


def test_control_records_with_an_ack_that_fills_a_record_stay_within_max_record_size() -> None:
    """Found by the fuzzer's output check: the Ack is sized to fill a record alone (64 ranges
    with max_record_size=1088); the echo and the OpenStreams queued with it made a control
    record of L1=1089, which the peer's record reader rejects (the path fails). Control records
    are cut by size now."""
    config = Config(max_stream_frame_data=1024, max_record_size=1088, max_ack_ranges=64)
    server = SessionCore(is_client=False, config=config)
    path = server.add_path(primary=True, now=0.0)
    server.open_stream()
    server.open_stream()
    for number in range(2, 400, 2):  # gapped: more ranges than an Ack lists
        server.receive_record(path, encode_packet(number, [PingFrame()]), 0.0)
    records = server.data_to_send(path, MIB, 1.0)
    assert max(len(r) - 4 for r in records) <= config.max_record_size
    frames = _frames(records)
    assert PingFrame() in frames and frames.count(OpenStreamFrame(1)) == 1
    assert any(isinstance(f, AckFrame) and len(f.ranges) == 64 for f in frames)


def test_relay_data_before_any_relay_credit_fails_an_extended_primary() -> None:
    """Found by the fuzzer (relay backlog over relay_buffer): with the credit extension a
    primary relays only within the RelayCredit the client granted for that relay path, but a
    relay path with no grant yet was not checked at all: RelayData sent ahead of the client's
    AddPathResp (the ids are sequential), or while its RelayCredit could not leave, grew the
    client's backlog without bound. No grant is no credit; a relay path the client does not
    have is still ignored."""
    config = Config(relay_buffer=64 * KIB)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0, extended=True)
    relay = client.add_path(primary=False, now=0.0, extended=True)
    drain(client)
    unknown = RelayDataFrame(relay + 5, 5, b"r" * 1000)
    client.receive_record(primary, encode_packet(1, [unknown]), 0.0)
    assert not any(isinstance(e, ClosePath) for e in drain(client))
    client.receive_record(primary, encode_packet(2, [RelayDataFrame(relay, 5, b"r")]), 0.0)
    closes = [e for e in drain(client) if isinstance(e, ClosePath)]
    assert closes and closes[0].path_id == primary and "RelayCredit" in closes[0].reason


@pytest.mark.xfail(
    strict=True,
    reason="known defect, found by the fuzzer (honest scenario, credit, seed 4239772063): "
    "bytes written out of order that start within the peer's credit count against "
    "stream_send_buffer in full, so a writer waits for them before it writes the bytes the "
    "reader needs first, and they never drain",
)
def test_a_body_written_before_its_header_does_not_stop_the_writer() -> None:
    """Under credit the application writes a 1 MiB body at offset 16, then would go back to
    write the header (the reader's first 16 bytes). ``Stream.write`` returns once
    ``send_pending`` is within ``stream_send_buffer``; but the body starts within the credit,
    so it all counts, and the part beyond the credit can only leave once the reader has the
    header: the writer waits for ever (with the defaults, for any body over 2 MiB). On a
    KWIK v2 path the body leaves without credit and the writer goes on."""
    config = Config(stream_receive_buffer=64 * KIB, stream_send_buffer=256 * KIB)
    client, server, link = pair(config)
    stream, accepted = open_confirmed(client, server, link)
    client.set_write_offset(stream, 16)
    client.write(stream, bytes(MIB))
    for _ in range(50):  # what Stream.write's drain() waits for
        settle(link)
        server.read(accepted, MIB)
    assert client.send_pending(stream) <= config.stream_send_buffer


def test_a_v2_relay_writes_into_credit_the_primary_holds_without_paying_twice() -> None:
    """Found by the fuzzer (honest scenario, mixed, seed 1092804511): the client grants the
    stream credit on the (extended) primary path, here its whole session budget; a KWIK v2
    relay writes the stream's tail, out of order. The core charged the relay's bytes against
    the budget even under the credit limit, where the budget is already reserved for them:
    with no room left, the relay's first frame waited at the head of its path for ever, with
    the bytes that fill the gap behind it."""
    config = Config(stream_receive_buffer=16 * KIB, session_receive_buffer=16 * KIB)
    trio = Trio(config, extended=True, relay_extended=False)
    stream = trio.p.open_stream()
    trio.settle()
    accepted = trio.c.accept_stream()
    assert accepted is not None and trio.c.receive_buffered == 16 * KIB  # all of it credit
    trio.p.relay_send(trio.relay_id, stream.stream_id, b"go")
    trio.p.finish(stream, fin=False)  # the primary's part is empty: the relay writes it all
    trio.settle()
    secondary = trio.s.accept_stream()
    assert secondary is not None and trio.s.read(secondary, 10) == b"go"
    trio.s.set_write_offset(secondary, 10)
    trio.s.write(secondary, b"T" * 100)  # the end first
    trio.settle()
    trio.s.set_write_offset(secondary, 0)
    trio.s.write(secondary, b"S" * 10)
    trio.s.finish(secondary)
    got = bytearray()
    for _ in range(20):
        trio.settle()
        data = trio.c.read(accepted, MIB)
        if data == b"":
            break
        got += data or b""
    assert bytes(got) == b"S" * 10 + b"T" * 100
