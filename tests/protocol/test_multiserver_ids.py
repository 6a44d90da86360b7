"""Stream ids between servers (found by ``tests/multiserver``): a secondary opening an id the
client is opening on the primary path must not leave the primary holding a stream for ever."""

from __future__ import annotations

import pytest

from kwik.protocol.stream import OpenState

from .helpers import Trio, read_all, settle


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
    assert (mine.stream_id, theirs.stream_id) == (1, 2)
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
    assert accepted is not None and accepted.stream_id == 2
    assert read_all(trio.c, accepted) == b"from the secondary"
    assert trio.c.accept_stream() is None and trio.p.accept_stream() is None


def test_the_primarys_own_collision_still_keeps_the_servers_id() -> None:
    """Unchanged: when the client and the primary open the same id at once, the primary's
    stream keeps it and the client's moves."""
    trio = Trio()
    mine = trio.c.open_stream()
    server_side = trio.p.open_stream()
    trio.settle()
    assert server_side.stream_id == 1 and mine.stream_id == 2
    assert mine.open_state is OpenState.OPEN and server_side.open_state is OpenState.OPEN
