"""Multi-server rules found by ``tests/multiserver`` (end to end), pinned here sans-IO: a
secondary opening an id the client is opening on the primary path, and a relay recruited again
after the primary removed it while the client kept its path."""

from __future__ import annotations

import pytest

from kwik.protocol.events import AddPathAnswered
from kwik.protocol.stream import OpenState

from .helpers import MIB, Trio, drain, read_all, settle


@pytest.fixture(params=[True, False], ids=["credit", "v2"])
def extended(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_a_secondarys_open_never_takes_an_id_the_client_is_opening(extended: bool) -> None:
    """The client opens id 1 on the primary path; the secondary opens id 1 too, and its
    OpenStream reaches the client first. The client refuses it (its own open keeps the id), the
    secondary moves to id 2, and the primary holds only the stream the client really uses:
    before, the client took the secondary's id 1, moved its own stream to id 2 and left the
    primary holding a confirmed stream 1 that nobody would ever write or end."""
    trio = Trio(extended=extended, relay_extended=extended)
    mine = trio.c.open_stream()  # OpenStream(1) waits for the primary path
    theirs = trio.s.open_stream()  # OpenStream(1) on the relay path
    settle(trio.relay)  # the secondary's arrives first
    trio.settle()
    assert mine.open_state is OpenState.OPEN and theirs.open_state is OpenState.OPEN
    assert mine.stream_id == 1 and theirs.stream_id > 1  # the refused opener moved on
    assert trio.p.open_streams == 1 and trio.s.open_streams == 1
    # and each stream is answered where it was opened
    trio.c.write(mine, b"to the primary")
    trio.c.finish(mine)
    trio.s.write(theirs, b"from the secondary")
    trio.s.finish(theirs)
    trio.settle()
    on_primary = trio.p.accept_stream()
    assert on_primary is not None and on_primary.stream_id == 1
    assert read_all(trio.p, on_primary) == b"to the primary"
    accepted = trio.c.accept_stream()
    assert accepted is not None and accepted.stream_id == theirs.stream_id
    assert read_all(trio.c, accepted) == b"from the secondary"
    assert trio.c.accept_stream() is None and trio.p.accept_stream() is None


def test_the_primarys_own_collision_still_keeps_the_servers_id() -> None:
    """Unchanged: when the client and the primary open the same id at once, the primary's
    stream keeps it and the client's moves."""
    trio = Trio()
    mine = trio.c.open_stream()
    server_side = trio.p.open_stream()
    trio.settle()
    assert server_side.stream_id == 1 and mine.stream_id > 1
    assert mine.open_state is OpenState.OPEN and server_side.open_state is OpenState.OPEN


def test_a_relay_recruited_again_after_its_removal_keeps_its_credit(extended: bool) -> None:
    """The primary removes a relay (remove_path on the server) and recruits the same address
    again; the client, which kept the path, answers with the same path id. The relay goes on
    with the RelayCredit accounting it had (the client's counts every byte relayed for the
    path id): before, it restarted at credit 0 and its bytes never left."""
    trio = Trio(extended=extended, relay_extended=extended)
    address = "198.18.0.2:4433"
    for round_ in range(3):
        stream = trio.c.open_stream()
        trio.settle()
        assert trio.p.accept_stream() is not None
        payload = bytes([round_]) * (3 * MIB // 2)  # beyond relay_buffer (1 MiB)
        trio.p.relay_send(trio.relay_id, stream.stream_id, payload)
        got = bytearray()
        secondary = None
        for _ in range(100):
            trio.settle()
            secondary = secondary or trio.s.accept_stream()
            if secondary is not None:
                while data := trio.s.read(secondary, 1 << 20):
                    got += data
            if len(got) == len(payload):
                break
        assert bytes(got) == payload, (round_, len(got))
        assert trio.c.error is None and trio.c.path_ids() == [1, trio.relay_id]
        # removed by the primary, then recruited again: the client answers with the same id
        assert trio.p.remove_relay(trio.relay_id)
        trio.p.request_relay(address)
        trio.settle()
        answers = [e for e in drain(trio.p) if isinstance(e, AddPathAnswered)]
        assert answers == [AddPathAnswered(address, trio.relay_id)]


def test_a_refused_opener_jumps_ahead_of_the_ids_others_are_opening() -> None:
    """Three openers share one id space (no parity in KWIK v2). A secondary whose opens the
    client refuses (ids the client is opening on the primary path) jumps ahead, twice as far
    after each refusal, instead of trailing the client's band of opens one id per round
    trip until its 16 attempts run out (seen end to end: 100 streams opened by the secondary
    while the client opens 100 to the primary)."""
    trio = Trio()
    mine = [trio.c.open_stream() for _ in range(40)]  # ids 1..40 opening on the primary path
    theirs = trio.s.open_stream()  # id 1, then refused while it trails the client's band
    for _ in range(20):
        settle(trio.relay)  # the secondary's open and the client's answer; not the primary's
    assert theirs.open_state is OpenState.OPEN and theirs.stream_id > 40
    assert theirs.open_attempts <= 7  # 1 + 2 + 4 + ... passes 40 within 6 refusals
    trio.settle()
    assert all(s.open_state is OpenState.OPEN for s in mine)
    assert sorted(s.stream_id for s in mine) == list(range(1, 41))
