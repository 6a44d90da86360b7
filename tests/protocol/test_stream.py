"""StreamSender and StreamReceiver on their own (no SessionCore), as aioquic's
``tests/test_stream.py`` tests ``QuicStreamSender`` and ``QuicStreamReceiver``: what each hands
out, takes, refuses and accounts, frame by frame."""

from __future__ import annotations

from array import array

import pytest

from kwik import StreamClosedError
from kwik.exceptions import ProtocolViolationError
from kwik.protocol import StreamFrame
from kwik.protocol.stream import U64_MAX, RecvState, SendState, StreamReceiver, StreamSender

SID = 5


def frames(sender: StreamSender, max_size: int = 1000) -> list[StreamFrame]:
    """Every frame the sender hands out now."""
    out = []
    while (frame := sender.next_frame(SID, max_size)) is not None:
        out.append(frame)
    return out


def ranges(out: list[StreamFrame]) -> list[tuple[int, int]]:
    return [(f.offset, f.offset + len(f.data)) for f in out]


def frame(offset: int, data: bytes, fin: bool = False) -> StreamFrame:
    return StreamFrame(SID, offset, fin, data)


# --- sender -----------------------------------------------------------------------------------


def test_sender_without_credit_sends_everything_in_frames_of_max_size() -> None:
    sender = StreamSender(credit=None)
    assert sender.write(b"a" * 2500) == 2500
    assert sender.buffered == 2500 and sender.sendable
    out = frames(sender)
    assert ranges(out) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert b"".join(f.data for f in out) == b"a" * 2500
    assert not any(f.fin for f in out)
    assert sender.buffered == 0 and not sender.sendable and not sender.has_unsent
    assert sender.state is SendState.READY


def test_sender_never_sends_beyond_its_credit() -> None:
    sender = StreamSender(credit=0)
    sender.write(b"x" * 5000)
    assert sender.next_frame(SID, 1000) is None and not sender.sendable  # no credit at all
    sender.on_credit(1500)
    out = frames(sender)
    assert ranges(out) == [(0, 1000), (1000, 1500)]  # exactly up to the credit
    assert sender.buffered == 3500 and not sender.sendable


def test_sender_blocked_on_credit_resumes_when_it_grows() -> None:
    sender = StreamSender(credit=100)
    sender.write(b"y" * 300)
    assert ranges(frames(sender)) == [(0, 100)]
    assert not sender.sendable
    assert sender.on_credit(250) is True
    assert sender.sendable
    assert ranges(frames(sender)) == [(100, 250)]
    assert sender.on_credit(250) is False  # the same credit again: nothing new
    assert sender.on_credit(U64_MAX) is True
    assert ranges(frames(sender)) == [(250, 300)]


def test_sender_credit_only_grows() -> None:
    sender = StreamSender(credit=0)
    sender.on_credit(1000)
    with pytest.raises(ProtocolViolationError, match="shrank"):
        sender.on_credit(999)
    assert sender.credit == 1000  # unchanged by the refused frame


def test_credit_means_nothing_to_a_sender_without_credit() -> None:
    sender = StreamSender(credit=None)
    assert sender.on_credit(10) is False
    assert sender.credit is None
    sender.write(b"z" * 50)
    assert ranges(frames(sender)) == [(0, 50)]


def test_segments_written_out_of_order_send_the_lowest_sendable_first() -> None:
    """The body is written first (at 16), then the header at 0: the header leaves first,
    with or without credit."""
    for credit in (None, 10_000):
        sender = StreamSender(credit=credit)
        sender.set_write_offset(16)
        sender.write(b"B" * 100)
        sender.set_write_offset(0)
        sender.write(b"H" * 16)
        assert ranges(frames(sender)) == [(0, 16), (16, 116)]


def test_the_lowest_segment_within_credit_goes_first() -> None:
    """Written at 5000, 3000 and 0 (in that order) with credit 4000: 0 first, then 3000, and
    5000 waits for more credit."""
    sender = StreamSender(credit=4000)
    for offset in (5000, 3000, 0):
        sender.set_write_offset(offset)
        sender.write(b"s" * 100)
    assert ranges(frames(sender)) == [(0, 100), (3000, 3100)]
    assert not sender.sendable
    sender.on_credit(5001)
    assert ranges(frames(sender)) == [(5000, 5001)]  # as much as the credit allows


def test_fin_rides_on_the_last_frame_at_the_final_offset() -> None:
    sender = StreamSender(credit=None)
    sender.write(b"d" * 1500)
    sender.finish(fin=True)
    assert sender.closed and sender.state is SendState.DATA_SENT
    assert sender.final_offset == 1500
    out = frames(sender)
    assert [(f.offset, len(f.data), f.fin) for f in out] == [(0, 1000, False), (1000, 500, True)]
    assert sender.done and not sender.has_unsent


def test_fin_after_the_data_went_is_an_empty_frame() -> None:
    sender = StreamSender(credit=None)
    sender.write(b"d" * 10)
    assert ranges(frames(sender)) == [(0, 10)]
    sender.finish(fin=True)
    assert sender.has_unsent and sender.sendable
    out = frames(sender)
    assert out == [StreamFrame(SID, 10, True, b"")]
    assert sender.done
    assert frames(sender) == []  # one FIN only


def test_fin_goes_at_the_write_offset_when_it_is_beyond_the_data() -> None:
    """Another writer fills the gap: the FIN marks the highest of the data and the write
    offset."""
    sender = StreamSender(credit=None)
    sender.write(b"p" * 10)
    sender.set_write_offset(20)
    sender.finish(fin=True)
    assert sender.final_offset == 20
    out = frames(sender)
    assert [(f.offset, len(f.data), f.fin) for f in out] == [(0, 10, False), (20, 0, True)]


def test_fin_waits_for_credit_for_the_data_before_it() -> None:
    sender = StreamSender(credit=5)
    sender.write(b"q" * 10)
    sender.finish(fin=True)
    out = frames(sender)
    assert [(f.offset, len(f.data), f.fin) for f in out] == [(0, 5, False)]
    assert not sender.done  # the FIN must not overtake bytes still waiting
    sender.on_credit(10)
    assert [(f.offset, len(f.data), f.fin) for f in frames(sender)] == [(5, 5, True)]
    assert sender.done


def test_end_of_a_part_sends_no_fin() -> None:
    """finish(fin=False): this writer's part ends (another writer sends the FIN)."""
    sender = StreamSender(credit=None)
    sender.write(b"p" * 10)
    sender.finish(fin=False)
    assert sender.final_offset is None and not sender.done
    out = frames(sender)
    assert out == [StreamFrame(SID, 0, False, b"p" * 10)]
    assert sender.done and frames(sender) == []


def test_end_of_an_empty_part_is_done_at_once() -> None:
    sender = StreamSender(credit=None)
    sender.finish(fin=False)
    assert sender.done and not sender.sendable and frames(sender) == []


def test_finish_is_idempotent_and_closes_writing() -> None:
    sender = StreamSender(credit=None)
    sender.write(b"w")
    sender.finish(fin=True)
    sender.finish(fin=False)  # ignored: the FIN stays
    assert sender.fin and sender.final_offset == 1
    with pytest.raises(StreamClosedError):
        sender.write(b"more")
    with pytest.raises(StreamClosedError):
        sender.set_write_offset(0)


def test_multi_byte_memoryviews_count_bytes() -> None:
    sender = StreamSender(credit=None)
    data = array("I", range(100))  # 100 items, 400 bytes
    assert sender.write(memoryview(data)) == data.itemsize * 100
    assert sender.buffered == sender.bytes_written == sender.write_offset == 400
    assert b"".join(f.data for f in frames(sender)) == data.tobytes()


def test_empty_write_changes_nothing() -> None:
    sender = StreamSender(credit=None)
    assert sender.write(b"") == 0
    assert not sender.sendable and sender.write_offset == 0


def test_offsets_are_bounded_to_u64() -> None:
    sender = StreamSender(credit=None)
    with pytest.raises(ValueError):
        sender.set_write_offset(U64_MAX + 1)
    with pytest.raises(ValueError):
        sender.set_write_offset(-1)
    sender.set_write_offset(U64_MAX - 2)
    with pytest.raises(ValueError):
        sender.write(b"abcd")
    assert sender.buffered == 0
    assert sender.write(b"ab") == 2  # ends at 2**64 - 1 exactly


def test_counted_excludes_bytes_far_beyond_credit() -> None:
    """The application must go on and write what comes first: bytes written beyond a gap above
    the credit do not count against its send buffer, up to ``slack`` of them."""
    sender = StreamSender(credit=1000)
    sender.set_write_offset(50_000)
    sender.write(b"t" * 20_000)
    assert sender.buffered == 20_000 and sender.counted(30_000) == 0
    assert sender.counted(5_000) == 15_000  # never further ahead than the slack
    sender.set_write_offset(0)
    sender.write(b"h" * 300)
    assert sender.counted(30_000) == 300
    sender.on_credit(60_000)  # now the tail is within credit: it counts
    assert sender.counted(30_000) == 20_300
    no_credit = StreamSender(credit=None)
    no_credit.set_write_offset(50_000)
    no_credit.write(b"t" * 10)
    assert no_credit.counted(30_000) == 10  # without credit everything counts


def test_drop_forgets_everything_unsent() -> None:
    sender = StreamSender(credit=0)
    sender.write(b"r" * 700)
    sender.finish(fin=True)
    assert sender.drop() == 700
    assert sender.done and sender.buffered == 0
    assert not sender.has_unsent and not sender.sendable and frames(sender) == []


# --- receiver -----------------------------------------------------------------------------------


def test_receiver_takes_in_order_and_reads() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    assert recv.take(frame(0, b"hello "))
    assert recv.take(frame(6, b"world"))
    assert recv.readable == 11 and recv.buffered == 11
    assert recv.read(5) == b"hello" and recv.read_offset == 5
    assert recv.read(100) == b" world" and recv.bytes_read == 11
    assert recv.read(100) == b""  # nothing ready (not EOF: no FIN)
    assert not recv.at_eof


def test_duplicates_and_overlaps_are_stored_once() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.take(frame(10, b"k" * 10))
    recv.take(frame(5, b"k" * 20))  # overlaps the piece on both sides
    recv.take(frame(10, b"k" * 10))  # a duplicate
    assert recv.buffered == 20 and recv.highest_end == 25
    assert recv.received_ranges() == [(5, 25)]
    recv.take(frame(0, b"k" * 8))  # fills the gap, overlapping the prefix of the piece
    assert recv.buffered == 25 and recv.readable == 25 and recv.fragments == 0
    assert recv.read(100) == b"k" * 25


def test_out_of_order_pieces_beyond_the_cap_are_refused_unchanged() -> None:
    recv = StreamReceiver(window=1000, max_fragments=2)
    assert recv.take(frame(10, b"a"))
    assert recv.take(frame(20, b"b"))
    assert recv.fragments == 2
    assert recv.take(frame(30, b"c")) is False  # a third piece: refused
    assert recv.fragments == 2 and recv.buffered == 2 and recv.highest_end == 21
    assert recv.take(frame(21, b"b"))  # extends a piece: no new fragment
    assert recv.take(frame(0, b"x" * 10))  # fills the first gap: always taken
    assert recv.readable == 11 and recv.fragments == 1
    recv.raise_fragment_cap()  # (a dead path's leftovers)
    assert recv.take(frame(30, b"c")) and recv.take(frame(40, b"d"))
    assert recv.take(frame(50, b"e")) is False  # raised by one piece, no more


def test_a_fin_that_contradicts_the_stream_raises() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.take(frame(0, b"a" * 10, fin=True))
    with pytest.raises(ProtocolViolationError, match="final offset changed"):
        recv.check(frame(0, b"a" * 11, fin=True))
    with pytest.raises(ProtocolViolationError, match="past the final offset"):
        recv.check(frame(8, b"a" * 3))
    recv.check(frame(0, b"a" * 10, fin=True))  # the same FIN again is fine
    other = StreamReceiver(window=1000, max_fragments=4)
    other.take(frame(20, b"z"))
    with pytest.raises(ProtocolViolationError, match="below data already received"):
        other.check(frame(0, b"z" * 5, fin=True))
    with pytest.raises(ProtocolViolationError, match="2\\*\\*64"):
        other.check(frame(U64_MAX, b"zz"))


def test_receive_states_recv_size_known_data_recvd_data_read() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    assert recv.state is RecvState.RECV
    recv.take(frame(5, b"tail", fin=True))
    assert recv.state is RecvState.SIZE_KNOWN and recv.final_offset == 9
    assert not recv.complete
    recv.take(frame(0, b"head!"))
    assert recv.state is RecvState.DATA_RECVD and recv.complete and not recv.at_eof
    assert not recv.finished
    assert recv.read(4) == b"head"
    assert recv.state is RecvState.DATA_RECVD
    assert recv.read(100) == b"!tail"
    assert recv.state is RecvState.DATA_READ and recv.at_eof and recv.finished


def test_credit_limit_only_grows() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    assert recv.limit == 0
    assert recv.grant(500) is True and recv.limit == 500
    assert recv.grant(400) is False and recv.limit == 500
    assert recv.grant(500) is False
    assert recv.grant(U64_MAX + 10) is True and recv.limit == U64_MAX


def test_data_beyond_the_credit_granted_raises() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.grant(100)
    recv.check_credit(frame(0, b"c" * 100))  # exactly the credit
    recv.check_credit(frame(100, b""))  # an empty frame (a FIN) carries no data
    with pytest.raises(ProtocolViolationError, match="beyond the credit"):
        recv.check_credit(frame(50, b"c" * 51))
    recv.take(frame(0, b"c" * 100))
    recv.read(100)
    recv.skip_to(150)  # skipped past the credit: data below the read offset is harmless
    recv.check_credit(frame(120, b"c" * 30))


def test_commitment_is_credit_open_plus_bytes_held_beyond_it() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    assert recv.commitment == 0
    recv.grant(600)
    assert recv.commitment == 600  # all of it open
    recv.take(frame(0, b"m" * 200))
    assert recv.commitment == 600  # data within credit: open credit became held bytes
    recv.read(150)
    assert recv.commitment == 450  # reading gives it back
    recv.take(frame(700, b"v" * 50))  # a KWIK v2 writer beyond the credit
    assert recv.commitment == 450 + 50
    recv.take(frame(580, b"v" * 40))  # straddles the limit: 20 within, 20 beyond
    assert recv.commitment == 450 + 50 + 20


def test_commitment_stops_at_the_final_size() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.grant(1000)
    recv.take(frame(0, b"f" * 100, fin=True))
    assert recv.commitment == 100  # credit past the final size will never be used
    recv.read(40)
    assert recv.commitment == 60
    recv.read(100)
    assert recv.commitment == 0


def test_credit_target_is_the_window_or_the_fair_share_past_the_read_offset() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    assert recv.credit_target(share=5000) == 1000
    assert recv.credit_target(share=300) == 300
    recv.grant(1000)
    recv.take(frame(0, b"g" * 400))
    recv.read(400)
    assert recv.credit_target(share=5000) == 1400
    other = StreamReceiver(window=1000, max_fragments=4)
    other.take(frame(0, b"g" * 10, fin=True))
    assert other.credit_target(share=5000) == 10  # never past the final size


def test_wants_credit_once_half_the_window_is_used() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    assert recv.wants_credit(share=5000)  # nothing granted yet
    recv.grant(1000)
    assert not recv.wants_credit(share=5000)  # all of the window is open
    recv.take(frame(0, b"w" * 499))
    recv.read(499)
    assert not recv.wants_credit(share=5000)  # 501 open: more than half
    recv.take(frame(499, b"w"))
    recv.read(1)
    assert recv.wants_credit(share=5000)  # 500 open: half the window
    assert not recv.wants_credit(share=100)  # the share is smaller: 500 open is plenty


def test_wants_credit_for_a_waiting_reader_stopped_at_the_limit() -> None:
    small = StreamReceiver(window=1000, max_fragments=4)
    small.grant(100)
    small.take(frame(0, b"w" * 100))
    assert not small.wants_credit(share=150)  # 100 of a 150 share open: enough
    small.reader_waiting = True  # ...unless its reader waits and the writers are stopped
    assert small.wants_credit(share=150)
    small.take(frame(100, b"", fin=True))
    assert not small.wants_credit(share=150)  # the final size is reached: nothing to grant


def test_a_read_that_gets_data_ends_the_wait() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.reader_waiting = True
    assert recv.read(10) == b"" and recv.reader_waiting
    recv.take(frame(0, b"x"))
    assert recv.read(10) == b"x" and not recv.reader_waiting


def test_cancel_discards_what_is_held_and_what_comes() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.grant(1000)
    recv.take(frame(0, b"c" * 100))
    recv.take(frame(300, b"c" * 100))
    recv.reader_waiting = True
    recv.cancel()
    assert recv.cancelled and recv.state is RecvState.CANCELLED
    assert recv.commitment == 0 and recv.readable == 0 and recv.buffered == 0
    assert not recv.reader_waiting and not recv.wants_credit(share=5000)
    assert recv.take(frame(400, b"c" * 50))  # taken, and dropped
    assert recv.buffered == 0 and recv.commitment == 0
    assert not recv.finished  # the final size is not known yet
    assert recv.take(frame(450, b"c" * 50, fin=True))
    assert recv.final_offset == 500 and recv.finished and recv.buffered == 0
    recv.cancel()  # idempotent
    assert recv.state is RecvState.CANCELLED


def test_cancel_after_the_final_size_is_finished_at_once() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.take(frame(10, b"end", fin=True))
    recv.cancel()
    assert recv.finished and recv.read_offset == 13


def test_skip_to_discards_before_the_offset() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.take(frame(0, b"0123456789"))
    recv.take(frame(20, b"abcde"))
    recv.skip_to(5)
    assert recv.read_offset == 5 and recv.read(100) == b"56789"
    recv.skip_to(22)  # into the out-of-order piece: its tail becomes ready
    assert recv.read(100) == b"cde"
    recv.take(frame(15, b"late bytes"))  # below the read offset: ignored
    assert recv.buffered == 0 and recv.read_offset == 25
    with pytest.raises(ValueError):
        recv.skip_to(24)  # backwards
    recv.take(frame(25, b"", fin=True))
    with pytest.raises(ValueError):
        recv.skip_to(26)  # past the final size
    with pytest.raises(ValueError):
        recv.skip_to(U64_MAX + 1)
    recv.skip_to(25)
    assert recv.at_eof and recv.state is RecvState.DATA_READ


def test_skip_to_the_final_size_reads_eof() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.take(frame(40, b"", fin=True))
    recv.skip_to(40)
    assert recv.at_eof and recv.state is RecvState.DATA_READ and recv.finished


def test_received_ranges_report_the_gaps() -> None:
    recv = StreamReceiver(window=1000, max_fragments=4)
    recv.take(frame(0, b"a" * 10))
    recv.take(frame(20, b"b" * 5))
    recv.take(frame(25, b"c" * 5))
    assert recv.received_ranges() == [(0, 10), (20, 30)]
