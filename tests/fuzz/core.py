"""Fuzz machines for the sans-IO session core, and the invariants they check.

Two kinds of runs, both in memory (no sockets, explicit time), each on paths with kwik's credit
extension (``extended=True``) and on plain KWIK v2 paths:

* :class:`HostileCoreMachine` (hypothesis stateful testing): one :class:`SessionCore`, client
  side (a primary and relay paths) or server side, fed random frame sequences, floods, credit
  frames (growing, shrinking, huge, for unknown or retired streams), data beyond the credit
  granted and malformed records by a hostile peer, interleaved with random application calls,
  time steps, path failures and terminations and output drained with random budgets. Data a
  hostile peer sends is a function of (stream id, offset), so whatever the core delivers can
  be checked byte by byte however frames overlap.
* :func:`run_honest` (seeded randomised scenario): a client core, a primary server core and
  relay server cores exchange records through in-memory links (in order per path, paths
  interleaved, random budgets and chunking). Streams are written in random pieces, some far
  out of order, some by two servers at once (the primary writes the head, a relay the tail);
  every reader must get exactly the bytes written, then EOF, and every stream must then end
  for every party (every table empty again).

After every step :func:`check_core` checks the budgets of ``kwik.config.Config`` and the core's
own accounting, and :class:`CoreOutput` decodes every record the core emitted (writers within
the credit granted, credit that only grows). A violation raises :class:`InvariantViolation`.
:data:`STATS` counts what ran.

The checks go through the public API (``table_sizes()``, ``receive_buffered``, ``stream_for``,
the stream objects' senders and receivers) except where no public view exists; those private
reads are all in :func:`_core_path` and :func:`_forwarder`.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kwik import Config, PathError, SessionClosedError, StreamClosedError
from kwik.exceptions import ProtocolViolationError
from kwik.protocol import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    PingFrame,
    RecordReader,
    RelayCreditFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
)
from kwik.protocol.events import (
    AddPathAnswered,
    ClosePath,
    DialRelay,
    PathResumed,
    SessionTerminated,
    StreamArrived,
)
from kwik.protocol.path import CorePath
from kwik.protocol.relays import Forwarder
from kwik.protocol.session import CLOSE_FAILURE, MAX_ADDRESS_LENGTH, SessionCore, frame_data_limit
from kwik.protocol.stream import U64_MAX, LogicalStream, OpenState

_U32 = struct.Struct(">I")
#: What the core's control budget counts for one queued answer (``kwik.protocol.path``).
_ANSWER = 24

Task = Generator[None, None, None]


@dataclass
class FuzzStats:
    """What the fuzzers ran (process-wide, reset by the caller)."""

    examples: int = 0
    steps: int = 0
    records_in: int = 0
    records_out: int = 0
    checks: int = 0
    violations: int = 0  # paths failed for bad input, with the documented answer
    credited_frames: int = 0  # data frames checked against the credit granted
    credit_frames: int = 0  # StreamCredit/RelayCredit frames a core emitted
    bytes_read: int = 0  # bytes a hostile peer sent, read back and checked
    honest_runs: int = 0
    honest_bytes: int = 0
    honest_closes: int = 0  # primaries that closed with records still in flight
    close_leftovers: int = 0  # bytes of those records, handed in at the path's end

    def line(self) -> str:
        return (
            f"examples={self.examples} steps={self.steps} records_in={self.records_in} "
            f"records_out={self.records_out} invariant_checks={self.checks} "
            f"violations={self.violations} credited_frames={self.credited_frames} "
            f"credit_frames={self.credit_frames} bytes_read={self.bytes_read} "
            f"honest_runs={self.honest_runs} "
            f"honest_bytes={self.honest_bytes} closes_in_flight={self.honest_closes} "
            f"close_leftovers={self.close_leftovers}"
        )


STATS = FuzzStats()


class InvariantViolation(AssertionError):
    """The session core broke one of the rules it documents."""


def check(condition: bool, message: str) -> None:
    STATS.checks += 1
    if not condition:
        raise InvariantViolation(message)


# byte o of every stream is (o * 7 + o // 256 + stream_id * 151) mod 256: period 65,536
_PERIOD = 1 << 16
_TABLE = bytes((o * 7 + (o >> 8)) & 0xFF for o in range(2 * _PERIOD))
_SHIFT = [bytes((b + k) & 0xFF for b in range(256)) for k in range(256)]


def pattern(stream_id: int, offset: int, length: int) -> bytes:
    """The bytes a hostile peer puts at ``offset`` of ``stream_id`` (always the same ones, so
    overlapping frames agree and any delivered byte can be checked)."""
    out = bytearray()
    while length > 0:
        start = offset % _PERIOD
        n = min(length, _PERIOD)
        out += _TABLE[start : start + n]
        offset += n
        length -= n
    return bytes(out).translate(_SHIFT[(stream_id * 151) & 0xFF])


def summarize(frames: Iterable[Frame]) -> str:
    counts: dict[str, int] = {}
    for frame in frames:
        counts[type(frame).__name__] = counts.get(type(frame).__name__, 0) + 1
    return ", ".join(f"{n}x{name}" for name, n in counts.items())


# --- the private state the checks read (no public view of it) -----------------------------------


def _core_path(core: SessionCore, path_id: int) -> CorePath | None:
    """A path's waiting lanes: ``table_sizes()`` counts waiting frames of all paths together,
    but "stream data never waits on an extended path" and the bound on what a path holds are
    per path and per lane."""
    return core._paths.get(path_id)  # noqa: SLF001 - no public view of the lanes


def _forwarder(core: SessionCore) -> Forwarder:
    """The client's relay backlog per relay path: no public view (``table_sizes()`` counts the
    entries only)."""
    return core._forwarder  # noqa: SLF001 - no public view of the relay backlog


def _held_size(frame: Frame) -> int:
    """What a waiting frame costs against ``path_receive_window`` (``kwik.protocol.path``)."""
    if isinstance(frame, StreamFrame | RelayDataFrame):
        return len(frame.data) + 32
    if isinstance(frame, AddPathFrame):
        return len(frame.address) + 16
    return 16


# --- output ---------------------------------------------------------------------------------------


@dataclass
class Granted:
    """Credit a core's peers granted it (what its writers may use), per path."""

    stream: dict[tuple[int, int], int] = field(default_factory=dict)  # (path, id) -> offset
    relay: dict[tuple[int, int], int] = field(default_factory=dict)  # (path, relay) -> bytes
    relayed: dict[tuple[int, int], int] = field(default_factory=dict)  # RelayData bytes sent

    def note(self, path_id: int, frames: Iterable[Frame]) -> None:
        """The peer sent (or will send) these frames on ``path_id``: remember its credit."""
        for frame in frames:
            if isinstance(frame, StreamCreditFrame):
                key = (path_id, frame.stream_id)
                self.stream[key] = max(self.stream.get(key, 0), frame.max_offset)
            elif isinstance(frame, RelayCreditFrame):
                key = (path_id, frame.relay_path_id)
                self.relay[key] = max(self.relay.get(key, 0), frame.max_bytes)


class CoreOutput:
    """Everything one core emits, checked record by record (see :meth:`check`)."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core
        self.extended: dict[int, bool] = {}  # path id -> the credit extension negotiated
        self.numbers: dict[int, int] = {}
        self.granted = Granted()
        # (path, stream id) -> (stream, credit) last advertised: credit only grows
        self.advertised: dict[tuple[int, int], tuple[LogicalStream, int]] = {}
        self.relay_advertised: dict[tuple[int, int], int] = {}

    def check(self, path_id: int, records: list[bytes]) -> list[Frame]:
        """Decode what ``data_to_send`` returned for ``path_id``: well-formed records within
        ``max_record_size`` (no extension frame on a KWIK v2 path), packet numbers increasing,
        frames within their limits, stream data and RelayData within the credit granted,
        credit advertised that never shrinks, answers within ``control_buffer``."""
        core = self.core
        config = core.config
        limit = config.max_record_size
        extended = self.extended.get(path_id, False)
        reader = RecordReader(limit)
        frames: list[Frame] = []
        answers = 0
        forwarder_opens = core.is_client and not core.is_primary(path_id)
        for record in records:
            STATS.records_out += 1
            check(len(record) >= 8, f"path {path_id}: record of {len(record)} bytes")
            (outer,) = _U32.unpack_from(record, 0)
            check(outer == len(record) - 4, f"path {path_id}: L1 {outer} != {len(record) - 4}")
            check(
                outer <= limit,
                f"path {path_id}: emitted a record with L1={outer} > max_record_size={limit} "
                f"(frames: {summarize(decode_packet(record[8:], extended=True).frames)})",
            )
            reader.feed(record)
            body = reader.next_record()
            check(body is not None, f"path {path_id}: record not cut by RecordReader")
            assert body is not None
            try:
                packet = decode_packet(body, extended=extended)
            except ProtocolViolationError as exc:
                raise InvariantViolation(
                    f"path {path_id} ({'extended' if extended else 'v2'}): emitted a malformed "
                    f"record: {exc}"
                ) from exc
            previous = self.numbers.get(path_id, 0)
            check(
                packet.packet_number > previous,
                f"path {path_id}: packet number {packet.packet_number} after {previous}",
            )
            self.numbers[path_id] = packet.packet_number
            for frame in packet.frames:
                self._check_frame(path_id, extended, frame)
                if isinstance(frame, OpenStreamRespFrame):
                    answers += _ANSWER
                elif isinstance(frame, AddPathRespFrame):
                    answers += _ANSWER + len(frame.address)
                elif isinstance(frame, OpenStreamFrame) and forwarder_opens:
                    answers += _ANSWER  # a RelayData of the primary made us open it
                frames.append(frame)
        # every answer of one pull was queued at once: control_buffer (plus the answer that
        # crossed it) of answers, as much again per dial of AddPath answers that waited for it
        # (queued all at once when it ends), and the forwarder's OpenStreams (max_streams)
        bound = (1 + config.max_paths) * (
            config.control_buffer + _ANSWER + MAX_ADDRESS_LENGTH
        ) + _ANSWER * config.max_streams
        check(
            answers <= bound,
            f"path {path_id}: {answers} bytes of answers queued at once > {bound} "
            f"(control_buffer={config.control_buffer})",
        )
        return frames

    def _check_frame(self, path_id: int, extended: bool, frame: Frame) -> None:
        core = self.core
        config = core.config
        if isinstance(frame, StreamFrame | RelayDataFrame):
            check(
                len(frame.data) <= frame_data_limit(config),
                f"path {path_id}: frame of {len(frame.data)} data bytes",
            )
        if isinstance(frame, AckFrame):
            check(
                len(frame.ranges) <= config.max_ack_ranges,
                f"path {path_id}: Ack with {len(frame.ranges)} ranges",
            )
        elif isinstance(frame, StreamFrame) and extended and frame.data:
            STATS.credited_frames += 1
            end = frame.offset + len(frame.data)
            granted = self.granted.stream.get((path_id, frame.stream_id), 0)
            check(
                end <= granted,
                f"path {path_id}: stream {frame.stream_id} data up to {end}, beyond the credit "
                f"the peer granted ({granted})",
            )
            live = core.stream_for(frame.stream_id)
            if live is not None and live.home_path == path_id and live.sender.credit is not None:
                check(
                    end <= live.sender.credit,
                    f"path {path_id}: stream {frame.stream_id} data up to {end}, beyond its "
                    f"sender's credit ({live.sender.credit})",
                )
        elif isinstance(frame, RelayDataFrame) and extended:
            STATS.credited_frames += 1
            key = (path_id, frame.relay_path_id)
            sent = self.granted.relayed.get(key, 0) + len(frame.data)
            self.granted.relayed[key] = sent
            granted = self.granted.relay.get(key, 0)
            check(
                sent <= granted,
                f"path {path_id}: {sent} bytes relayed for path {frame.relay_path_id}, beyond "
                f"the RelayCredit granted ({granted})",
            )
        elif isinstance(frame, StreamCreditFrame):
            STATS.credit_frames += 1
            live = core.stream_for(frame.stream_id)
            if live is None:
                return
            key = (path_id, frame.stream_id)
            before = self.advertised.get(key)
            if before is not None and before[0] is live:
                check(
                    frame.max_offset >= before[1],
                    f"path {path_id}: credit of stream {frame.stream_id} advertised "
                    f"{before[1]}, then {frame.max_offset} (it must only grow)",
                )
            self.advertised[key] = (live, frame.max_offset)
        elif isinstance(frame, RelayCreditFrame):
            STATS.credit_frames += 1
            key = (path_id, frame.relay_path_id)
            before_bytes = self.relay_advertised.get(key, 0)
            check(
                frame.max_bytes >= before_bytes,
                f"path {path_id}: RelayCredit of path {frame.relay_path_id} advertised "
                f"{before_bytes}, then {frame.max_bytes} (it must only grow)",
            )
            self.relay_advertised[key] = frame.max_bytes


# --- the core's state -----------------------------------------------------------------------------


@dataclass
class Exemptions:
    """Budgets a forced drain (a path's leftovers taken at its termination, documented to go
    in regardless of budgets) may have overrun; each is checked again once back within it."""

    session: bool = False
    backlog: bool = False
    relay: bool = False
    #: streams held at a forced drain: it raised their cap of out-of-order pieces for good
    fragments: set[int] = field(default_factory=set)

    def after_forced_drain(self, streams: Iterable[LogicalStream]) -> None:
        """Call once the streams the drain created were announced (StreamArrived)."""
        self.session = self.backlog = self.relay = True
        self.fragments.update(id(s) for s in streams)


@dataclass
class Readers:
    """What the application did as a reader: the slack of the session budget comes from it."""

    #: streams whose reader waited (read() found nothing ready) at least once: each may hold
    #: one frame beyond the session budget
    waited: set[int] = field(default_factory=set)
    #: the largest data frame the peer sent (a waiting reader takes one such frame whatever
    #: the budget on a KWIK v2 path)
    largest_frame: int = 0

    def about_to_read(self, stream: LogicalStream) -> None:
        """Call before ``read()``: with nothing ready, the reader waits (the core may let in a
        frame that waited, beyond the budget, and return it from that very call)."""
        if not stream.receiver.readable:
            self.waited.add(id(stream))


def check_core(
    core: SessionCore, streams: Iterable[LogicalStream], exempt: Exemptions, readers: Readers
) -> None:
    """The budgets of ``core.config`` and the core's own accounting. ``streams``: every stream
    handle the core ever gave out (open_stream, StreamArrived)."""
    config = core.config
    sizes = core.table_sizes()
    streams = list(streams)
    held = [s for s in streams if core.stream_for(s.stream_id) is s]
    in_tables = sizes["streams"] + sizes["opening"]
    check(len(held) <= in_tables, f"{len(held)} streams found, tables hold {in_tables}")
    # accounting: the budget in use is what the streams the core holds commit, no more
    if in_tables == 0:
        check(
            core.receive_buffered == 0,
            f"receive_buffered={core.receive_buffered} with no stream held (a leak)",
        )
    elif len(held) == in_tables:  # (else an opening stream hides behind a peer's same id)
        committed = sum(s.receiver.commitment for s in held)
        check(
            committed == core.receive_buffered,
            f"receive_buffered={core.receive_buffered} but the streams held commit {committed}",
        )
    remote = sum(1 for s in held if not s.local)
    check(
        sizes["remote_open"] == remote,
        f"peer-opened count {sizes['remote_open']} != peer streams held {remote}",
    )
    check(
        sizes["remote_open"] <= config.max_streams,
        f"{sizes['remote_open']} peer-opened streams > max_streams={config.max_streams}",
    )
    # session budget: beyond it one frame per stream whose reader waited, no more
    unit = max(frame_data_limit(config), readers.largest_frame)
    # (every live stream: an opener may hide behind a peer's stream of the same id)
    waited = sum(1 for s in streams if id(s) in readers.waited and not s.retired)
    slack = unit * waited
    if exempt.session and core.receive_buffered <= config.session_receive_buffer:
        exempt.session = False
    if not exempt.session:
        check(
            core.receive_buffered <= config.session_receive_buffer + slack,
            f"receive_buffered={core.receive_buffered} > session_receive_buffer="
            f"{config.session_receive_buffer} + one frame ({unit}) for each of the {waited} "
            "streams whose reader waited",
        )
    open_credit = 0
    for s in held:
        recv = s.receiver
        if recv.cancelled or not s.writer_paths:
            continue
        limit = recv.limit if recv.final_offset is None else min(recv.limit, recv.final_offset)
        open_credit += max(limit - recv.read_offset, 0)
        check(
            recv.limit <= recv.read_offset + config.stream_receive_buffer,
            f"stream {s.stream_id}: credit up to {recv.limit} > read offset {recv.read_offset}"
            f" + stream_receive_buffer",
        )
    if not exempt.session:
        check(
            open_credit <= config.session_receive_buffer + slack,
            f"credit granted and unused {open_credit} > session_receive_buffer="
            f"{config.session_receive_buffer} + {slack}",
        )
    for s in held:
        check(
            s.receiver.fragments <= config.max_stream_fragments or id(s) in exempt.fragments,
            f"stream {s.stream_id} holds {s.receiver.fragments} fragments "
            f"> max_stream_fragments={config.max_stream_fragments}",
        )
        check(
            core.send_pending(s) <= s.sender.buffered,
            f"stream {s.stream_id}: send_pending {core.send_pending(s)} > buffered",
        )
    pending = core.streams_pending_accept
    if exempt.backlog and pending <= config.stream_backlog:
        exempt.backlog = False
    if not exempt.backlog:
        check(
            pending <= config.stream_backlog,
            f"{pending} streams wait for accept > stream_backlog={config.stream_backlog}",
        )
    # what each path holds (its waiting lanes)
    for path_id in core.path_ids():
        path = _core_path(core, path_id)
        if path is None:
            continue
        if path.extended:
            check(
                not path.data_waiting,
                f"extended path {path_id}: {len(path.data_waiting)} data frames wait "
                f"({summarize(path.data_waiting)}): stream data never waits under credit",
            )
        waiting = sum(_held_size(f) for f in (*path.data_waiting, *path.control_waiting))
        bound = config.path_receive_window + 2 * config.max_record_size
        check(
            waiting <= bound,
            f"path {path_id}: {waiting} bytes of frames wait > path_receive_window + 2 records",
        )
        if not path.waiting:
            check(core.wants_records(path_id), f"path {path_id}: nothing waits, takes nothing")
    # client: bytes waiting to be forwarded to a relay path
    if core.is_client:
        forwarder = _forwarder(core)
        check(sizes["forwarded"] == len(forwarder.entries), "forwarded count mismatch")
        if exempt.relay and all(b <= config.relay_buffer for b in forwarder.backlog.values()):
            exempt.relay = False
        for path_id, backlog in forwarder.backlog.items():
            pend = sum(e.pending_bytes for (p, _), e in forwarder.entries.items() if p == path_id)
            check(backlog == pend, f"relay path {path_id}: backlog {backlog} != pending {pend}")
            if not exempt.relay:
                # a v2 primary's RelayData is taken while under the budget: one frame over
                bound = config.relay_buffer + max(readers.largest_frame, frame_data_limit(config))
                check(
                    backlog <= bound,
                    f"relay path {path_id}: {backlog} bytes to forward > relay_buffer",
                )


# --- the hostile machine -------------------------------------------------------------------------

#: Small budgets, so that a few frames reach every limit.
HOSTILE_CONFIGS = [
    Config(
        stream_receive_buffer=4096,
        session_receive_buffer=10_000,
        max_stream_fragments=3,
        max_streams=5,
        stream_backlog=3,
        control_buffer=400,
        relay_buffer=2500,
        max_stream_frame_data=1024,
        max_record_size=8192,
        path_receive_window=12_000,
        max_ack_ranges=8,
        max_paths=3,
        stream_send_buffer=4096,
        ack_threshold=4,
        heartbeat_interval=1.0,
        stall_timeout=2.0,
    ),
    # the smallest record limit the frame size allows, with Acks that fill a record alone
    Config(
        stream_receive_buffer=3000,
        session_receive_buffer=5000,
        max_stream_fragments=2,
        max_streams=3,
        stream_backlog=2,
        control_buffer=60,  # (below max_streams OpenStreams: relayed opens reach it)
        relay_buffer=1500,
        max_stream_frame_data=1024,
        max_record_size=1088,
        path_receive_window=3000,
        max_ack_ranges=64,
        max_paths=2,
        stream_send_buffer=2048,
        ack_threshold=2,
        heartbeat_interval=0.5,
        stall_timeout=1.0,
    ),
]


def _small_id() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, 9), st.integers(1, 9), st.sampled_from([0, U64_MAX]))


_ADDRESSES = st.one_of(
    st.sampled_from(["10.0.0.1:443", "127.0.0.1:9", "relay0:1", ""]),
    st.text(max_size=24),
    st.integers(100, 1100).map(lambda n: "a" * n),
)
_CREDIT = st.one_of(st.integers(0, 12_000), st.just(U64_MAX), st.integers(0, U64_MAX))


@st.composite
def stream_frames(draw: st.DrawFn) -> StreamFrame:
    stream_id = draw(_small_id())
    offset = draw(st.one_of(st.integers(0, 9000), st.just(U64_MAX - 16)))
    length = draw(st.integers(0, 1200))
    fin = draw(st.integers(0, 9)) == 0
    return StreamFrame(stream_id, offset, fin, pattern(stream_id, offset, length))


@st.composite
def ack_frames(draw: st.DrawFn) -> AckFrame:
    ranges = []
    for _ in range(draw(st.integers(0, 3))):
        a = draw(st.integers(0, 200))
        ranges.append((a, a + draw(st.integers(0, 20))))
    return AckFrame(draw(st.integers(0, U64_MAX)), tuple(ranges), draw(st.integers(0, 1000)))


@st.composite
def relay_frames(draw: st.DrawFn) -> RelayDataFrame:
    dest = draw(_small_id())
    return RelayDataFrame(
        draw(st.integers(0, 4)), dest, pattern(dest, 0, draw(st.integers(0, 1200)))
    )


FRAMES: st.SearchStrategy[Frame] = st.one_of(
    stream_frames(),
    stream_frames(),
    ack_frames(),
    st.just(PingFrame()),
    st.builds(OpenStreamFrame, _small_id()),
    st.builds(OpenStreamRespFrame, _small_id(), st.booleans()),
    st.builds(AddPathFrame, _ADDRESSES),
    st.builds(AddPathRespFrame, st.integers(0, 4), _ADDRESSES),
    relay_frames(),
    st.builds(StreamCreditFrame, _small_id(), _CREDIT),
    st.builds(RelayCreditFrame, st.integers(0, 4), _CREDIT),
)
#: A rule's ``wild``/``chance`` draw that lets a path-killing variant through (one in ten: a
#: middle value, since hypothesis favours the ends of a range).
_RARE = 5
PACKET_NUMBERS = st.one_of(st.none(), st.none(), st.integers(0, 40), st.integers(0, U64_MAX))


class HostileCoreMachine(RuleBasedStateMachine):
    """One SessionCore against a hostile peer on each of its paths (see the module docstring).

    The simulated transport of each path is a :class:`RecordReader`: the peer's bytes go in,
    records are cut only while the core wants them (a path whose frames wait withholds
    credit), a record the reader rejects fails the path, and at the path's end whatever the
    reader still holds is handed in before ``path_terminated`` (unless the core said not to:
    a protocol violation).
    """

    def __init__(self) -> None:
        super().__init__()
        STATS.examples += 1
        self.core: SessionCore
        self.out: CoreOutput
        self.now = 0.0
        self.readers: dict[int, RecordReader] = {}
        self.numbers: dict[int, int] = {}
        self.streams: list[LogicalStream] = []
        self.relays: list[int] = []  # server: relay path ids the client confirmed
        self.dials: deque[str] = deque()  # client: DialRelay not answered yet
        self.exempt = Exemptions()
        self.app = Readers()
        self.closing_paths: set[int] = set()
        #: what each path's peer lets us send now (its transport window): the adapter pulls
        #: the output of the paths the core names with it after every input
        self.windows: dict[int, int] = {}
        # what the core asked its peer, per path: a cooperative peer answers it
        self.asked_opens: dict[int, list[int]] = {}
        self.asked_paths: list[str] = []
        # why a ClosePath may come now (else only for a protocol violation)
        self.context = "input"
        self.forced_drain = False

    # --- set-up and plumbing

    @initialize(
        client=st.booleans(),
        relays=st.integers(0, 2),
        variant=st.integers(0, len(HOSTILE_CONFIGS) - 1),
        extended=st.booleans(),
        relay_extended=st.booleans(),
    )
    def setup(
        self, client: bool, relays: int, variant: int, extended: bool, relay_extended: bool
    ) -> None:
        config = HOSTILE_CONFIGS[variant]
        self.core = SessionCore(is_client=client, config=config)
        self.out = CoreOutput(self.core)
        self._add_path(primary=True, extended=extended)
        for i in range(relays if client else 0):
            if len(self.core.path_ids()) < config.max_paths:
                self._add_path(primary=False, dialed_as=f"relay{i}:1", extended=relay_extended)
        self._after()

    def _add_path(self, *, primary: bool, extended: bool, dialed_as: str = "") -> int:
        path_id = self.core.add_path(
            primary=primary, now=self.now, dialed_as=dialed_as, extended=extended
        )
        self.readers[path_id] = RecordReader(self.core.config.max_record_size)
        self.out.extended[path_id] = extended
        return path_id

    def _path(self, index: int) -> int | None:
        ids = sorted(self.readers)
        return ids[index % len(ids)] if ids else None

    def _extended(self, path_id: int) -> bool:
        return self.out.extended.get(path_id, False)

    def _deliver(self, path_id: int) -> None:
        """Hand the path's records to the core while it wants them."""
        reader = self.readers.get(path_id)
        core = self.core
        while reader is not None and core.wants_records(path_id):
            try:
                body = reader.next_record()
            except ProtocolViolationError as exc:
                core.fail_path(path_id, f"protocol violation: {exc}", self.now, deliver=False)
                break
            if body is None:
                break
            self._hand_in(path_id, body)

    def _hand_in(self, path_id: int, body: memoryview) -> None:
        # the core must copy what it keeps: hand it a scratch buffer, then scribble over it
        scratch = bytearray(body)
        STATS.records_in += 1
        self.core.receive_record(path_id, memoryview(scratch), self.now)
        scratch[:] = b"\xee" * len(scratch)

    def _terminate(
        self, path_id: int, code: int, reason: str, by_peer: bool, deliver: bool
    ) -> None:
        reader = self.readers.pop(path_id, None)
        while reader is not None and deliver:  # the leftovers, handed in whatever the budgets
            try:
                body = reader.next_record()
            except ProtocolViolationError:
                break
            if body is None:
                break
            self._hand_in(path_id, body)
        self.core.path_terminated(path_id, code, reason, by_peer=by_peer, now=self.now)
        self.closing_paths.discard(path_id)
        self.forced_drain = True  # exemptions once the streams it created are announced

    def _after(self) -> None:
        """Drain the events and pull the output as the adapter would (within each path's
        window); remember every stream handle."""
        STATS.steps += 1
        core = self.core
        for _ in range(8):
            self._events()
            ids = core.pop_paths_with_output()
            if not ids:
                break
            for path_id in ids:
                self._pull(path_id, self.windows.get(path_id, 20_000))
        self._events()
        self.context = "input"

    def _events(self) -> None:
        core = self.core
        while (event := core.next_event()) is not None:
            if isinstance(event, StreamArrived):
                self.streams.append(event.stream)
            elif isinstance(event, PathResumed):
                self._deliver(event.path_id)
            elif isinstance(event, ClosePath):
                self._on_close_path(event)
            elif isinstance(event, DialRelay):
                self.dials.append(event.address)
            elif isinstance(event, AddPathAnswered):
                if event.path_id and event.path_id not in self.relays:
                    self.relays.append(event.path_id)
            elif isinstance(event, SessionTerminated):
                check(core.error is event.error, "SessionTerminated without core.error")
        for path_id in list(self.readers):
            if path_id not in core.path_ids():
                self.readers.pop(path_id)
        if self.forced_drain:
            self.forced_drain = False
            self.exempt.after_forced_drain(self.streams)

    def _on_close_path(self, event: ClosePath) -> None:
        """Every ClosePath has a documented cause: bad input (a protocol violation, its
        records dropped), liveness (a timer), the application (close, fail), or the session's
        end closing every path."""
        core = self.core
        violation = event.reason.startswith("protocol violation")
        error = core.error
        if error is not None and event.code == error.code and event.deliver:
            pass  # the session ends: every path closes with its code
        elif violation:
            check(
                event.code == CLOSE_FAILURE and not event.deliver,
                f"protocol violation closed path {event.path_id} with code {event.code}, "
                f"deliver={event.deliver}",
            )
            STATS.violations += 1
        else:
            check(
                self.context in ("timer", "app"),
                f"path {event.path_id} closed during {self.context}: {event}",
            )
        if event.path_id in self.readers and event.path_id in core.path_ids():
            self._terminate(event.path_id, event.code, event.reason, False, event.deliver)

    def _feed(self, path_index: int, frames: list[Frame], number: int | None) -> int | None:
        """Send ``frames`` in one packet on a path; returns the path id when the record was
        handed in at once (nothing held before it), else None."""
        path_id = self._path(path_index)
        if path_id is None:
            return None
        return self._send(path_id, frames, number)

    def _fitting(self, frames: list[Frame]) -> list[Frame]:
        """The first of ``frames`` that fit one record (floods: an oversized record is what
        ``malformed`` is for)."""
        room = self.core.config.max_record_size - 8 - 17
        out = []
        for frame in frames:
            room -= len(encode_packet(0, [frame])) - 17
            if room < 0:
                break
            out.append(frame)
        return out

    def _send(
        self, path_id: int, frames: list[Frame], number: int | None, *, fit: bool = True
    ) -> int | None:
        if path_id not in self.readers:
            return None
        if fit:
            frames = self._fitting(frames)
        previous = self.numbers.get(path_id, 0)
        fresh = number is None and previous < U64_MAX  # never seen: not a duplicate
        if number is None:
            number = min(previous + 1, U64_MAX)
        self.numbers[path_id] = max(previous, number)
        body = encode_packet(number, frames)
        for frame in frames:
            if isinstance(frame, StreamFrame):
                self.app.largest_frame = max(self.app.largest_frame, len(frame.data))
            elif isinstance(frame, RelayDataFrame):
                self.app.largest_frame = max(self.app.largest_frame, len(frame.data))
        self.out.granted.note(path_id, frames)
        reader = self.readers[path_id]
        reachable = self.core.wants_records(path_id) and not reader.buffered
        reader.feed(struct.pack(">II", len(body) + 4, len(body)) + body)
        self.context = "input"
        self._deliver(path_id)
        self._after()
        too_big = len(body) + 4 > self.core.config.max_record_size
        return path_id if fresh and reachable and not too_big else None

    def _alive(self, path_id: int) -> bool:
        return path_id in self.core.path_ids()

    # --- the hostile peer

    @rule(
        path=st.integers(0, 3),
        frames=st.lists(FRAMES, max_size=8),
        number=PACKET_NUMBERS,
        wild=st.integers(0, 9),
    )
    def receive(self, path: int, frames: list[Frame], number: int | None, wild: int) -> None:
        """Random frames. Tame ones (9 in 10) leave out what fails a path whatever the state
        (stream id 0, extension frames on a KWIK v2 path, data without credit on an extended
        path, an address longer than any host:port, a record over the limit), so that an
        example lives long enough to reach the other rules."""
        path_id = self._path(path)
        if path_id is None:
            return
        if wild != _RARE:
            extended = self._extended(path_id)
            frames = [
                AddPathFrame(f.address[:MAX_ADDRESS_LENGTH]) if isinstance(f, AddPathFrame) else f
                for f in frames
                if not (isinstance(f, StreamFrame) and (extended or f.stream_id == 0))
                and not (not extended and isinstance(f, StreamCreditFrame | RelayCreditFrame))
                and not (isinstance(f, RelayDataFrame) and f.dest_stream_id == 0)
            ]
        self._send(path_id, frames, number, fit=wild != _RARE)

    @rule(
        index=st.integers(0, 50),
        start=st.one_of(st.just(0), st.integers(0, 5000)),
        size=st.integers(0, 1200),
        fin=st.integers(0, 5),
        then_read=st.one_of(st.none(), st.integers(1, 6000)),
        at=st.sampled_from(["read", "end", "beyond"]),
    )
    def stream_data(
        self, index: int, start: int, size: int, fin: int, then_read: int | None, at: str
    ) -> None:
        """Data for one of our streams, from its peer on its home path, within the credit
        granted and the final size (a hostile peer's well-formed data); then, maybe, the
        application reads."""
        stream = self._stream(index)
        if stream is None or self.core.stream_for(stream.stream_id) is not stream:
            return
        if stream.open_state is not OpenState.OPEN:
            return  # not confirmed: no data for it yet
        recv = stream.receiver
        # from the read offset, appended to what is ready, or past everything held
        base = {"read": recv.read_offset, "end": recv.contiguous_end, "beyond": recv.highest_end}
        offset = base[at] + (start if at != "end" else 0)
        end = offset + size
        if self._extended(stream.home_path) and not recv.cancelled:
            end = min(end, recv.limit)
        if recv.final_offset is not None:
            end = min(end, recv.final_offset)
        offset = min(offset, end)
        sid = stream.stream_id
        last = fin == 0 and (recv.final_offset is None or end == recv.final_offset)
        last = last and end >= recv.highest_end
        frame = StreamFrame(sid, offset, last, pattern(sid, offset, end - offset))
        self._send(stream.home_path, [frame], None)
        if then_read is not None:
            self._read(stream, then_read)
            self._after()

    @rule(path=st.integers(0, 3), count=st.integers(1, 3000))
    def ping_flood(self, path: int, count: int) -> None:
        self._feed(path, self._fitting([PingFrame()] * count), None)

    @rule(
        path=st.integers(0, 3),
        first=st.integers(1, 12),
        count=st.integers(1, 60),
        credit=st.integers(0, 9000),
    )
    def open_flood(self, path: int, first: int, count: int, credit: int) -> None:
        """OpenStream frames (on an extended path each with the credit the opener grants)."""
        path_id = self._path(path)
        if path_id is None:
            return
        frames: list[Frame] = []
        for i in range(first, first + count):
            frames.append(OpenStreamFrame(i))
            if credit and self._extended(path_id):
                frames.append(StreamCreditFrame(i, credit))
        self._send(path_id, frames, None)

    @rule(
        path=st.integers(0, 3),
        address=_ADDRESSES,
        count=st.integers(1, 40),
        wild=st.integers(0, 9),
    )
    def add_path_flood(self, path: int, address: str, count: int, wild: int) -> None:
        if wild != _RARE:  # (an address longer than any host:port is a violation)
            address = address[:MAX_ADDRESS_LENGTH]
        self._feed(path, self._fitting([AddPathFrame(address)] * count), None)

    @rule(
        path=st.integers(0, 3),
        relay=st.integers(0, 4),
        first=st.integers(1, 50),
        count=st.integers(1, 400),
        size=st.integers(0, 300),
    )
    def relay_flood(self, path: int, relay: int, first: int, count: int, size: int) -> None:
        frames: list[Frame] = [
            RelayDataFrame(relay, sid, pattern(sid, 0, size)) for sid in range(first, first + count)
        ]
        self._feed(path, self._fitting(frames), None)

    @rule(
        index=st.integers(0, 50),
        packets=st.integers(1, 24),
        size=st.integers(1, 1200),
        fin=st.booleans(),
    )
    def bulk(self, index: int, packets: int, size: int, fin: bool) -> None:
        """The peer streams one of our streams: ``packets`` records in a row, each appending
        ``size`` bytes (within the credit on an extended path), the last maybe with FIN."""
        stream = self._stream(index)
        if stream is None or stream.open_state is not OpenState.OPEN:
            return
        sid, recv = stream.stream_id, stream.receiver
        offset = recv.highest_end
        for i in range(packets):
            if self.core.stream_for(sid) is not stream or stream.home_path not in self.readers:
                return
            end = offset + size
            if self._extended(stream.home_path) and not recv.cancelled:
                end = min(end, recv.limit)
            if recv.final_offset is not None:
                end = min(end, recv.final_offset)
            if end <= offset:
                return
            last = fin and i == packets - 1 and recv.final_offset in (None, end)
            frame = StreamFrame(sid, offset, last, pattern(sid, offset, end - offset))
            self._send(stream.home_path, [frame], None)
            offset = end

    @rule(
        path=st.integers(0, 3),
        stream_id=st.integers(1, 9),
        start=st.integers(0, 6000),
        step=st.integers(1, 700),
        size=st.integers(1, 1000),
        count=st.integers(1, 12),
        wild=st.integers(0, 9),
    )
    def overlapping_stream(
        self, path: int, stream_id: int, start: int, step: int, size: int, count: int, wild: int
    ) -> None:
        """Overlapping frames of one stream (KWIK v2: implicitly opened). On an extended path
        tame ones (3 in 4) go to a stream that has credit there, within it."""
        path_id = self._path(path)
        if path_id is None:
            return
        frames: list[Frame] = [
            StreamFrame(stream_id, o, False, pattern(stream_id, o, size))
            for o in range(start, start + step * count, step)
        ]
        if self._extended(path_id) and wild != _RARE:
            stream = self._stream(stream_id)
            if stream is None or path_id not in stream.writer_paths:
                return
            if stream.open_state is not OpenState.OPEN:
                return
            sid, recv = stream.stream_id, stream.receiver
            base = recv.read_offset
            frames = []
            for o in range(base + start, base + start + step * count, step):
                end = min(o + size, recv.limit, recv.final_offset or U64_MAX)
                if end > o:
                    frames.append(StreamFrame(sid, o, False, pattern(sid, o, end - o)))
        self._send(path_id, frames, None)

    @rule(path=st.integers(0, 3), count=st.integers(1, 40), stride=st.integers(2, 5))
    def gapped_numbers(self, path: int, count: int, stride: int) -> None:
        path_id = self._path(path)
        if path_id is None:
            return
        base = self.numbers.get(path_id, 0)
        for i in range(count):
            self._feed(path, [PingFrame()], min(base + stride * (i + 1), U64_MAX))

    @rule(
        path=st.integers(0, 3),
        index=st.integers(0, 50),
        kind=st.sampled_from(["grow", "huge", "shrink", "unknown", "retired"]),
        amount=st.integers(0, 9000),
        wild=st.integers(0, 9),
    )
    def stream_credit(self, path: int, index: int, kind: str, amount: int, wild: int) -> None:
        """The peer's StreamCredit for one of our streams, or for none, and the documented
        answer: growing or huge credit is taken, shrinking credit is a protocol violation of
        that path, credit for an unknown or retired stream is ignored (KWIK v2 paths know no
        such frame: a violation; 1 in 4 only, else the example ends too soon)."""
        path_id = self._path(path)
        if path_id is None or (not self._extended(path_id) and wild != _RARE):
            return
        core = self.core
        stream = self._stream(index)
        if kind == "unknown":
            sid = next(i for i in range(1000, 2000) if core.stream_for(i) is None)
        elif kind == "retired":
            retired = [
                s for s in self.streams if s.retired and core.stream_for(s.stream_id) is None
            ]
            if not retired:
                return
            sid = retired[index % len(retired)].stream_id
        elif stream is None:
            return
        else:
            sid = stream.stream_id
        live = core.stream_for(sid)
        current = live.sender.credit if live is not None and live.sender.credit else 0
        frames: list[Frame]
        if kind == "grow":
            frames = [StreamCreditFrame(sid, min(current + amount, U64_MAX))]
        elif kind in ("huge", "unknown", "retired"):
            frames = [StreamCreditFrame(sid, U64_MAX if kind == "huge" else amount)]
        else:  # growing to the most there is, then one less: shrinking whatever the credit was
            frames = [StreamCreditFrame(sid, U64_MAX), StreamCreditFrame(sid, U64_MAX - 1 - amount)]
        handed = self._feed(path, frames, None)
        if handed is None:
            return
        if not self._extended(handed):
            check(not self._alive(handed), f"StreamCredit on v2 path {handed} was taken")
            return
        # a stream we write on this path takes credit (a forwarded stream of a relay path too)
        ours = (
            live is not None
            and live.home_path == handed
            and live.open_state is OpenState.OPEN
            and not live.retired
        )
        if kind == "shrink" and ours:
            check(not self._alive(handed), f"shrinking credit of stream {sid} was taken")
        # (a client's relay path may also forward a stream of that id: its entry takes it)
        no_forward = not core.is_client or core.is_primary(handed)
        no_forward = no_forward or core.table_sizes()["forwarded"] == 0
        if live is None and no_forward:
            check(self._alive(handed), f"credit for unknown/retired stream {sid} failed the path")
        if (kind == "huge" or (kind == "grow" and no_forward)) and ours:
            check(self._alive(handed), f"growing credit of stream {sid} failed the path")

    @rule(
        path=st.integers(0, 3),
        index=st.integers(0, 9),
        kind=st.sampled_from(["grow", "shrink", "unknown"]),
        amount=st.integers(0, 9000),
        wild=st.integers(0, 9),
    )
    def relay_credit(self, path: int, index: int, kind: str, amount: int, wild: int) -> None:
        """RelayCredit: taken by a server for a relay it knows (a shrink is a violation of the
        primary path), ignored for an unknown relay, and by a client (on a KWIK v2 path: a
        violation, 1 in 4 only)."""
        core = self.core
        path_id = self._path(path)
        if path_id is None or (not self._extended(path_id) and wild != _RARE):
            return
        relay = (
            77 if kind == "unknown" or not self.relays else self.relays[index % len(self.relays)]
        )
        if kind == "shrink":
            frames: list[Frame] = [
                RelayCreditFrame(relay, U64_MAX),
                RelayCreditFrame(relay, U64_MAX - 1 - amount),
            ]
        else:
            frames = [RelayCreditFrame(relay, amount)]
        known = core.relay_buffered(relay) is not None
        handed = self._feed(path, frames, None)
        if handed is None:
            return
        if not self._extended(handed):
            check(not self._alive(handed), f"RelayCredit on v2 path {handed} was taken")
        elif kind == "shrink" and known and not core.is_client:
            check(not self._alive(handed), f"shrinking RelayCredit of {relay} was taken")
        elif not known or core.is_client:
            check(self._alive(handed), f"ignorable RelayCredit failed path {handed}")

    @rule(
        path=st.integers(0, 3),
        index=st.integers(0, 50),
        size=st.integers(1, 900),
        chance=st.integers(0, 9),
    )
    def beyond_credit(self, path: int, index: int, size: int, chance: int) -> None:
        """Stream data past the credit granted: a protocol violation of an extended path."""
        stream = self._stream(index)
        path_id = self._path(path)
        if (
            chance != _RARE
            or stream is None
            or path_id is None
            or self.core.stream_for(stream.stream_id) is not stream
        ):
            return
        recv = stream.receiver
        if recv.cancelled or recv.limit >= U64_MAX - size:
            return
        sid = stream.stream_id
        offset = max(recv.limit, recv.read_offset)
        handed = self._feed(
            path, [StreamFrame(sid, offset, False, pattern(sid, offset, size))], None
        )
        if handed is not None and self._extended(handed) and self.core.error is None:
            # (once the session ended, what arrives is dropped)
            check(not self._alive(handed), f"stream {sid} data beyond its credit was taken")

    @rule(
        path=st.integers(0, 3),
        frames=st.lists(FRAMES, min_size=1, max_size=4),
        kind=st.sampled_from(["truncate", "flip", "extend", "count", "raw", "oversize"]),
        where=st.integers(0, 10_000),
        junk=st.binary(min_size=1, max_size=40),
        chance=st.integers(0, 9),
    )
    def malformed(
        self, path: int, frames: list[Frame], kind: str, where: int, junk: bytes, chance: int
    ) -> None:
        path_id = self._path(path)
        if path_id is None or chance != _RARE:
            return
        body = bytearray(encode_packet(min(self.numbers.get(path_id, 0) + 1, U64_MAX), frames))
        if kind == "truncate":
            del body[where % len(body) :]
        elif kind == "flip":
            body[where % len(body)] ^= 1 << (where % 8)
        elif kind == "extend":
            body += junk
        elif kind == "count":
            struct.pack_into(">Q", body, 9, len(frames) + 1 + where % 3)
        elif kind == "raw":
            body = bytearray(junk)
        if kind == "oversize":
            record = struct.pack(">I", self.core.config.max_record_size + 1 + where) + junk
        else:
            try:
                decode_packet(body, extended=self._extended(path_id))
                return  # still well-formed (the flip hit data): not what this rule is for
            except ProtocolViolationError:
                pass
            record = struct.pack(">II", len(body) + 4, len(body)) + body
        reader = self.readers[path_id]
        reachable = self.core.wants_records(path_id) and not reader.buffered
        reader.feed(record)
        self.context = "input"
        self._deliver(path_id)
        self._after()
        if reachable:  # nothing held before it: the record was handed in, and must fail it
            check(not self._alive(path_id), f"malformed record did not fail path {path_id}")

    # --- the application

    def _stream(self, index: int) -> LogicalStream | None:
        return self.streams[index % len(self.streams)] if self.streams else None

    @rule()
    def open_stream(self) -> None:
        core = self.core
        try:
            self.streams.append(core.open_stream())
        except SessionClosedError:
            primaries = [p for p in core.path_ids() if core.is_primary(p)]
            check(
                core.error is not None
                or core.closing
                or not primaries
                or all(p in self.closing_paths for p in primaries),
                "open_stream raised SessionClosedError on an open session",
            )
        self._after()

    @rule(
        size=st.integers(0, 9000),
        credit=st.integers(0, 9000),
        fin=st.booleans(),
        offset=st.one_of(st.none(), st.integers(0, 9000)),
    )
    def converse(self, size: int, credit: int, fin: bool, offset: int | None) -> None:
        """A cooperative exchange in one step: open a stream, the peer confirms it at once
        (granting ``credit`` on an extended path), write ``size`` bytes (at ``offset``)."""
        core = self.core
        primary = next((p for p in core.path_ids() if core.is_primary(p)), None)
        if primary is None or primary not in self.readers:
            return
        try:
            stream = core.open_stream()
        except SessionClosedError:
            self._after()
            return
        self.streams.append(stream)
        self._pull(primary, 1 << 20)
        opened = self.asked_opens.pop(primary, [])
        frames: list[Frame] = [OpenStreamRespFrame(sid, True) for sid in opened]
        if self._extended(primary):
            frames += [StreamCreditFrame(sid, credit) for sid in opened]
        self._send(primary, frames, None)
        try:
            if offset is not None:
                core.set_write_offset(stream, offset)
            core.write(stream, bytes(size))
            core.finish(stream, fin=fin)
        except (StreamClosedError, SessionClosedError):
            pass
        self._after()

    @rule()
    def accept_stream(self) -> None:
        stream = self.core.accept_stream()
        if stream is not None:
            check(stream in self.streams, "accept_stream handed out a stream never announced")
        self._after()

    @rule(index=st.integers(0, 50), size=st.integers(0, 5000))
    def write(self, index: int, size: int) -> None:
        stream = self._stream(index)
        if stream is None:
            return
        try:
            self.core.write(stream, bytes(size))
        except (StreamClosedError, SessionClosedError, ValueError):
            pass
        self._after()

    @rule(index=st.integers(0, 50), offset=st.one_of(st.integers(0, 9000), st.just(U64_MAX - 3)))
    def set_write_offset(self, index: int, offset: int) -> None:
        stream = self._stream(index)
        if stream is None:
            return
        try:
            self.core.set_write_offset(stream, offset)
        except (StreamClosedError, ValueError):
            pass
        self._after()

    @rule(index=st.integers(0, 50), fin=st.booleans())
    def finish(self, index: int, fin: bool) -> None:
        stream = self._stream(index)
        if stream is None:
            return
        try:
            self.core.finish(stream, fin=fin)
        except StreamClosedError:
            check(stream.open_state is OpenState.REFUSED, "finish raised on a stream not refused")
        self._after()

    @rule(index=st.integers(0, 50), n=st.integers(1, 6000))
    def read(self, index: int, n: int) -> None:
        stream = self._stream(index)
        if stream is None:
            return
        self._read(stream, n)
        self._after()

    def _read(self, stream: LogicalStream, n: int) -> None:
        offset = stream.receiver.read_offset
        readable = self.core.readable(stream)
        self.app.about_to_read(stream)
        try:
            data = self.core.read(stream, n)
        except (StreamClosedError, SessionClosedError):
            check(readable, "read() raised although readable() was False")
            data = None
        else:
            # (a read may let in a frame that waited and return its data: readable() was False)
            check(
                data is not None or not readable,
                f"readable()={readable} but read() returned None",
            )
        if data == b"":
            check(stream.receiver.at_eof, f"stream {stream.stream_id}: EOF before the final size")
        if data:
            check(len(data) <= n, f"read({n}) returned {len(data)} bytes")
            check(
                data == pattern(stream.stream_id, offset, len(data)),
                f"stream {stream.stream_id}: bytes read at offset {offset} are not the ones sent",
            )
            STATS.bytes_read += len(data)

    @rule(index=st.integers(0, 50))
    def cancel_read(self, index: int) -> None:
        stream = self._stream(index)
        if stream is not None:
            self.core.cancel_read(stream)
            check(stream.receiver.commitment == 0, "a cancelled stream still commits budget")
        self._after()

    @rule(index=st.integers(0, 50), delta=st.integers(0, 5000))
    def skip_to(self, index: int, delta: int) -> None:
        stream = self._stream(index)
        if stream is None:
            return
        target = stream.receiver.read_offset + delta
        try:
            self.core.skip_to(stream, target)
        except ValueError:
            final = stream.receiver.final_offset
            check(
                target > U64_MAX or (final is not None and target > final),
                f"skip_to({target}) raised ValueError (final offset {final})",
            )
        self._after()

    @rule(index=st.integers(0, 50))
    def abandon_open(self, index: int) -> None:
        stream = self._stream(index)
        if stream is not None:
            self.core.abandon_open(stream)
        self._after()

    @rule(address=_ADDRESSES)
    def request_relay(self, address: str) -> None:
        try:
            self.core.request_relay(address)
        except (SessionClosedError, PathError):
            pass
        except ValueError:
            check(len(address) > MAX_ADDRESS_LENGTH, f"request_relay({address!r}) refused")
        self._after()

    @rule(index=st.integers(0, 9), stream_id=_small_id(), size=st.integers(0, 3000))
    def relay_send(self, index: int, stream_id: int, size: int) -> None:
        relay = self.relays[index % len(self.relays)] if self.relays else index
        try:
            self.core.relay_send(relay, stream_id, bytes(size))
        except (PathError, SessionClosedError, ValueError):
            pass
        self._after()

    @rule(index=st.integers(0, 9))
    def remove_relay(self, index: int) -> None:
        relay = self.relays[index % len(self.relays)] if self.relays else index
        if self.core.remove_relay(relay):
            # a relay added again starts counting what it relays from 0
            for key in [k for k in self.out.granted.relayed if k[1] == relay]:
                del self.out.granted.relayed[key]
        self._after()

    @rule(ok=st.booleans(), extended=st.booleans())
    def finish_dial(self, ok: bool, extended: bool) -> None:
        if not self.dials:
            return
        address = self.dials.popleft()
        path_id = 0
        if ok and len(self.core.path_ids()) < self.core.config.max_paths:
            path_id = self._add_path(primary=False, dialed_as=address, extended=extended)
        self.core.add_path_result(address, path_id)
        self._after()

    @rule(graceful=st.booleans(), code=st.integers(0, 3), chance=st.integers(0, 9))
    def close(self, graceful: bool, code: int, chance: int) -> None:
        if chance != _RARE:  # (rarely: a closed session takes no more input)
            return
        self.context = "app"
        if graceful:
            self.core.start_closing()
        else:
            self.core.close(code, "fuzz")
        self._after()

    @rule(path=st.integers(0, 3), chance=st.integers(0, 9))
    def fail(self, path: int, chance: int) -> None:
        """The application (remove_path) or kwik's adapter fails a path: what it holds is
        delivered first."""
        path_id = self._path(path)
        if path_id is None or chance != _RARE:
            return
        self.context = "app"
        self.core.fail_path(path_id, "removed", self.now, deliver=True)
        self._after()

    # --- transport and time

    @rule(path=st.integers(0, 3), budget=st.one_of(st.integers(0, 20_000), st.just(-(1 << 20))))
    def drain(self, path: int, budget: int) -> None:
        path_id = self._path(path)
        if path_id is None:
            return
        self._pull(path_id, budget)
        self._after()

    def _pull(self, path_id: int, budget: int) -> None:
        records = self.core.data_to_send(path_id, budget, self.now)
        for frame in self.out.check(path_id, records):
            if isinstance(frame, OpenStreamFrame):
                self.asked_opens.setdefault(path_id, []).append(frame.stream_id)
            elif isinstance(frame, AddPathFrame):
                self.asked_paths.append(frame.address)

    @rule(
        path=st.integers(0, 3),
        accept=st.integers(0, 3),
        relay_id=st.integers(0, 4),
        credit=st.integers(0, 12_000),
    )
    def peer_answers(self, path: int, accept: int, relay_id: int, credit: int) -> None:
        """The peer answers what the core asked on that path (OpenStream: confirmed unless
        ``accept`` is 0, with ``credit`` on an extended path; AddPath: with ``relay_id``, and
        RelayCredit), as a cooperative peer would."""
        path_id = self._path(path)
        if path_id is None:
            return
        frames: list[Frame] = []
        for sid in self.asked_opens.pop(path_id, []):
            frames.append(OpenStreamRespFrame(sid, accept != 0))
            if accept and self._extended(path_id):
                frames.append(StreamCreditFrame(sid, credit))
        for address in self.asked_paths:
            frames.append(AddPathRespFrame(relay_id, address))
            if relay_id and self._extended(path_id):
                frames.append(RelayCreditFrame(relay_id, credit))
        self.asked_paths.clear()
        self._feed(path, frames[:200], None)

    @rule(
        path=st.integers(0, 3),
        code=st.integers(0, 2),
        by_peer=st.booleans(),
        chance=st.integers(0, 9),
    )
    def terminate(self, path: int, code: int, by_peer: bool, chance: int) -> None:
        path_id = self._path(path)
        if path_id is not None and chance == _RARE:
            self.context = "app"
            self._terminate(path_id, code, "fuzz", by_peer, True)
        self._after()

    @rule(path=st.integers(0, 3), chance=st.integers(0, 9))
    def path_closing(self, path: int, chance: int) -> None:
        """The path's connection is closing: nothing more can be sent, records still come."""
        path_id = self._path(path)
        if path_id is not None and chance == _RARE:
            self.core.path_closing(path_id)
            self.closing_paths.add(path_id)
            check(self.core.data_to_send(path_id, 1 << 20, self.now) == [], "a closing path sent")
        self._after()

    @rule(
        dt=st.floats(0.0, 2.0),
        activity=st.booleans(),
        in_flight=st.booleans(),
        withholding=st.booleans(),
        blocked=st.booleans(),
        pto=st.floats(0.01, 1.0),
    )
    def advance(
        self,
        dt: float,
        activity: bool,
        in_flight: bool,
        withholding: bool,
        blocked: bool,
        pto: float,
    ) -> None:
        self.now += dt
        core = self.core
        for path_id in core.path_ids():
            if activity:
                core.on_datagram(path_id, self.now)
            core.on_transport(
                path_id,
                self.now,
                in_flight=in_flight,
                pto=pto,
                withholding=withholding,
                blocked=blocked,
            )
        self.context = "timer"
        timer = core.get_timer()
        check(core.get_timer() == timer, "get_timer() is not pure")
        if timer is not None and timer <= self.now:
            core.handle_timer(self.now)
            self._after()
            # what the adapter does next: pull the output; then the timer must lie ahead
            # (an adapter re-arming it at once would spin)
            for path_id in core.pop_paths_with_output():
                self._pull(path_id, 1 << 30)
            self._after()
            timer = core.get_timer()
            check(
                timer is None or timer > self.now,
                f"timer {timer} not after now={self.now} once handled and output pulled",
            )
        self._after()

    @rule()
    def flush(self) -> None:
        """The peers read everything on every path. Then nothing may still wait for our own
        output to leave: no OpenStream or AddPath for the control budget (an AddPath may wait
        for a dial), no RelayData for a relay path's control budget."""
        core = self.core
        for _ in range(20):
            pulled = False
            for path_id in list(self.readers):
                before = STATS.records_out
                self._pull(path_id, 1 << 30)
                pulled = pulled or STATS.records_out > before
            self._after()
            if not pulled:
                break
        forwarder = _forwarder(core) if core.is_client else None
        for path_id in core.path_ids():
            path = _core_path(core, path_id)
            if path is None or not path.can_send or path.control_full:
                continue
            if path.control_waiting:
                head = path.control_waiting[0]
                check(
                    isinstance(head, AddPathFrame) and core.table_sizes()["dialing"] > 0,
                    f"path {path_id}: {head} still waits once every answer left",
                )
            if forwarder is None or not path.data_waiting:
                continue
            head = path.data_waiting[0]
            if not isinstance(head, RelayDataFrame) or path.extended:
                continue
            target = _core_path(core, head.relay_path_id)
            if target is None or target is path or not target.can_send or target.control_full:
                continue
            new = (head.relay_path_id, head.dest_stream_id) not in forwarder.entries
            if new and forwarder.has_room(head.relay_path_id):
                raise InvariantViolation(
                    f"path {path_id}: {head!r:.80} waits for the control budget of path "
                    f"{head.relay_path_id}, which has room"
                )

    @rule(
        path=st.integers(0, 3),
        window=st.one_of(st.integers(0, 20_000), st.just(1 << 20), st.integers(-(1 << 20), 0)),
    )
    def peer_window(self, path: int, window: int) -> None:
        """The peer's transport lets us send ``window`` bytes now (nothing, or less than
        nothing, while it withholds credit); the adapter pulls what the path has."""
        path_id = self._path(path)
        if path_id is None:
            return
        self.windows[path_id] = window
        self._pull(path_id, window)
        self._after()

    @invariant()
    def budgets_hold(self) -> None:
        if hasattr(self, "core"):
            check_core(self.core, self.streams, self.exempt, self.app)


# --- the honest scenario -------------------------------------------------------------------------

HONEST_CONFIGS = [
    Config(
        stream_receive_buffer=16 * 1024,
        session_receive_buffer=40 * 1024,
        max_stream_fragments=8,
        max_streams=16,
        stream_backlog=4,
        control_buffer=2048,
        relay_buffer=8192,
        max_stream_frame_data=4096,
        max_record_size=16 * 1024,
        path_receive_window=32 * 1024,
        max_ack_ranges=16,
        stream_send_buffer=16 * 1024,
        ack_threshold=4,
    ),
    Config(
        stream_receive_buffer=5000,
        session_receive_buffer=9000,
        max_stream_fragments=2,
        max_streams=12,
        stream_backlog=2,
        control_buffer=300,
        relay_buffer=3000,
        max_stream_frame_data=1500,
        max_record_size=1564,
        path_receive_window=4000,
        max_ack_ranges=4,
        stream_send_buffer=3000,
        ack_threshold=2,
    ),
    Config(),
]

#: The honest scenario's modes: every path with the credit extension, none (KWIK v2), or the
#: primary's with it and the relays' without.
MODES = ("credit", "v2", "mixed")


class _Direction:
    """Records in flight from one core's path to the other's: a byte stream cut by a
    :class:`RecordReader`, whose records are handed in only while the receiver wants them."""

    def __init__(self, sender: SessionCore, receiver: SessionCore, path_id: int) -> None:
        self.sender = sender
        self.receiver = receiver
        self.path_id = path_id  # the receiver's id of the path
        self.wire = bytearray()
        self.reader = RecordReader(receiver.config.max_record_size)


class _Link:
    def __init__(
        self, a: SessionCore, a_path: int, b: SessionCore, b_path: int, *, extended: bool
    ) -> None:
        self.extended = extended
        # direction keyed by the sending core
        self.out: dict[int, tuple[SessionCore, int, _Direction]] = {
            id(a): (a, a_path, _Direction(a, b, b_path)),
            id(b): (b, b_path, _Direction(b, a, a_path)),
        }


class Honest:
    """A client, a primary server and relay servers, all honest (see :func:`run_honest`)."""

    def __init__(self, rng: random.Random, config: Config, relays: int, mode: str) -> None:
        self.rng = rng
        self.config = config
        self.mode = mode
        self.now = 0.0
        self.client = SessionCore(is_client=True, config=config)
        self.primary = SessionCore(is_client=False, config=config)
        self.cores: list[SessionCore] = [self.client, self.primary]
        self.names = {id(self.client): "client", id(self.primary): "primary"}
        self.outputs = {id(c): CoreOutput(c) for c in self.cores}
        self.links: list[_Link] = []
        self.by_path: dict[tuple[int, int], _Direction] = {}  # (receiver id, path) -> direction
        self.streams: dict[int, list[LogicalStream]] = {id(c): [] for c in self.cores}
        self.app: dict[int, Readers] = {id(c): Readers() for c in self.cores}
        self.relay_of: dict[str, int] = {}  # address -> relay path id (primary's view)
        self.relay_core: dict[str, SessionCore] = {}
        self.expected: dict[int, bytes] = {}  # plan id -> bytes a reader must get
        self.requests: dict[int, tuple[bytes, int]] = {}  # plan -> (relay request, head size)
        self.verified: set[int] = set()
        self.relay_served: set[int] = set()
        self.tasks: list[Task] = []
        self.v2_out_of_order_left = 1  # a KWIK v2 receiver holds one such stream at a time
        self.closed = False
        self.exempt: dict[int, Exemptions] = {}
        extended = mode != "v2"
        cpath = self.client.add_path(primary=True, now=0.0, extended=extended)
        ppath = self.primary.add_path(primary=True, now=0.0, extended=extended)
        self._link(self.client, cpath, self.primary, ppath, extended=extended)
        for i in range(relays):
            self.primary.request_relay(f"relay{i}:443")

    def _link(
        self, a: SessionCore, a_path: int, b: SessionCore, b_path: int, *, extended: bool
    ) -> None:
        link = _Link(a, a_path, b, b_path, extended=extended)
        self.links.append(link)
        self.outputs[id(a)].extended[a_path] = extended
        self.outputs[id(b)].extended[b_path] = extended
        for _, _, direction in link.out.values():
            self.by_path[(id(direction.receiver), direction.path_id)] = direction

    # --- plumbing

    def pull(self, link: _Link, sender: SessionCore, budget: int) -> None:
        _, path_id, direction = link.out[id(sender)]
        records = sender.data_to_send(path_id, budget, self.now)
        frames = self.outputs[id(sender)].check(path_id, records)
        # the credit it granted, for the checks of what the other side sends
        self.outputs[id(direction.receiver)].granted.note(direction.path_id, frames)
        for record in records:
            direction.wire += record
        sender.on_transport(
            path_id,
            self.now,
            in_flight=bool(direction.wire or direction.reader.buffered),
            pto=0.05,
            withholding=False,
            blocked=False,
        )

    def deliver(self, direction: _Direction, chunk: int) -> None:
        if direction.wire:
            direction.reader.feed(direction.wire[:chunk])
            del direction.wire[:chunk]
            # datagrams both ways: the data, and the QUIC acknowledgements of it
            direction.receiver.on_datagram(direction.path_id, self.now)
            _, sender_path, _ = next(
                v for v in self._link_of(direction).out.values() if v[2] is not direction
            )
            direction.sender.on_datagram(sender_path, self.now)
        receiver = direction.receiver
        while receiver.wants_records(direction.path_id):
            body = direction.reader.next_record()
            if body is None:
                break
            scratch = bytearray(body)
            STATS.records_in += 1
            receiver.receive_record(direction.path_id, memoryview(scratch), self.now)
            scratch[:] = b"\xee" * len(scratch)

    def _link_of(self, direction: _Direction) -> _Link:
        return next(
            link for link in self.links if any(v[2] is direction for v in link.out.values())
        )

    def events(self) -> None:
        for core in list(self.cores):
            name = self.names[id(core)]
            while (event := core.next_event()) is not None:
                if isinstance(event, StreamArrived):
                    self.streams[id(core)].append(event.stream)
                elif isinstance(event, PathResumed):
                    self.deliver(self.by_path[(id(core), event.path_id)], 0)
                elif isinstance(event, DialRelay):
                    self._dial(event.address)
                elif isinstance(event, AddPathAnswered):
                    check(event.path_id != 0, f"relay {event.address} refused")
                    self.relay_of[event.address] = event.path_id
                elif isinstance(event, ClosePath | SessionTerminated):
                    if self.closed:
                        continue
                    raise InvariantViolation(f"{name}: honest session failed: {event}")

    def _dial(self, address: str) -> None:
        relay = SessionCore(is_client=False, config=self.config)
        extended = self.mode == "credit"
        self.cores.append(relay)
        self.names[id(relay)] = address
        self.streams[id(relay)] = []
        self.app[id(relay)] = Readers()
        self.outputs[id(relay)] = CoreOutput(relay)
        rpath = relay.add_path(primary=True, now=self.now, extended=extended)
        cpath = self.client.add_path(
            primary=False, now=self.now, dialed_as=address, extended=extended
        )
        self._link(self.client, cpath, relay, rpath, extended=extended)
        self.relay_core[address] = relay
        self.tasks.append(self._relay_server(relay))
        self.client.add_path_result(address, cpath)

    def check_all(self) -> None:
        for core in self.cores:
            exempt = self.exempt.setdefault(id(core), Exemptions())
            check_core(core, self.streams[id(core)], exempt, self.app[id(core)])

    def close_primary(self) -> None:
        """The primary closes the session once everything it wrote left it: the client's
        transport hands in every record still on the path (whatever the budgets), then the
        path ends. Nothing the primary wrote may be lost."""
        self.closed = True
        self.primary.close(0, "done")
        client = self.client
        _, path_id, direction = self.links[0].out[id(self.primary)]
        direction.reader.feed(direction.wire)
        direction.wire.clear()
        if direction.reader.buffered:
            STATS.honest_closes += 1
            STATS.close_leftovers += direction.reader.buffered
        while (body := direction.reader.next_record()) is not None:
            STATS.records_in += 1
            client.receive_record(direction.path_id, bytes(body), self.now)
        client.path_terminated(direction.path_id, 0, "done", by_peer=True, now=self.now)
        self.primary.path_terminated(path_id, 0, "done", by_peer=False, now=self.now)
        self.events()  # (the streams the drain created)
        self.exempt.setdefault(id(client), Exemptions()).after_forced_drain(
            self.streams[id(client)]
        )

    # --- the applications (generators: they yield when they must wait)

    def _v2_involved(self, relayed: bool) -> bool:
        return self.mode == "v2" or (relayed and self.mode == "mixed")

    def _credit_link(self, relayed: bool) -> bool:
        """Whether a piece written by a relay (``relayed``) or on the primary's link travels
        under credit."""
        return self.mode == "credit" or (not relayed and self.mode == "mixed")

    def _pieces(
        self, data: bytes, start: int = 0, *, shuffle: bool = True, relayed: bool = False
    ) -> list[tuple[int, bytes]]:
        rng = self.rng
        pieces = []
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 7, 100, 1000, 4096, 20_000, rng.randint(1, 70_000)])
            pieces.append((start + pos, data[pos : pos + n]))
            pos += n
        if not shuffle or len(pieces) < 2 or rng.random() < 0.5:
            return pieces
        config = self.config
        if self._v2_involved(relayed):
            # a KWIK v2 receiver holds out-of-order bytes against its session budget, and a
            # frame that waits for budget keeps the frames behind it (the ones that fill the
            # gap): out of order only within half of it, one such stream at a time
            if not self.v2_out_of_order_left or len(data) > config.session_receive_buffer // 2:
                return pieces
            self.v2_out_of_order_left -= 1
        # under credit, bytes written out of order count against stream_send_buffer while
        # they wait for credit, and a writer over it waits before writing the bytes the reader
        # needs first (test_session_fuzz.py, the strict xfail): keep them within it
        limit = config.stream_send_buffer if self._credit_link(relayed) else len(data)
        if rng.random() < 0.5:
            # far out of order: the tail first (possibly many windows beyond), then the head
            cut = rng.randint(max(len(data) - limit, 1), len(data) - 1)
            return [(start + cut, data[cut:]), (start, data[:cut])]
        if len(pieces) <= config.max_stream_fragments + 1 and len(data) <= limit:
            # shuffled, within the out-of-order pieces a receiver holds (beyond them a credit
            # receiver fails the path: the sender cannot know its max_stream_fragments)
            rng.shuffle(pieces)
        return pieces

    def _write_all(
        self, core: SessionCore, stream: LogicalStream, pieces: list[tuple[int, bytes]]
    ) -> Task:
        limit = self.config.stream_send_buffer
        for offset, chunk in pieces:
            while core.send_pending(stream) > limit:
                yield
            core.set_write_offset(stream, offset)
            core.write(stream, chunk)
            yield

    def _data(self, plan: int, size: int) -> bytes:
        data = struct.pack(">Q", plan) + self.rng.randbytes(max(size, 8) - 8)
        self.expected[plan] = data
        return data

    def _read_to_eof(self, core: SessionCore, stream: LogicalStream) -> Task:
        """The writer's side of a stream also ends: it reads the reader's (empty) answer."""
        while True:
            self.app[id(core)].about_to_read(stream)
            data = core.read(stream, 1 << 20)
            if data == b"":
                return
            check(not data, f"{self.names[id(core)]}: unexpected answer on {stream.stream_id}")
            yield

    def writer(self, core: SessionCore, plan: int, size: int, *, answered: bool = True) -> Task:
        """Open a stream, write the plan's bytes in random pieces, FIN; then read the (empty)
        answer to EOF, so that the stream ends on both sides."""
        data = self._data(plan, size)
        stream = core.open_stream()
        self.streams[id(core)].append(stream)
        yield from self._write_all(core, stream, self._pieces(data))
        core.finish(stream)
        if answered:
            yield from self._read_to_eof(core, stream)

    def two_server_writer(self, plan: int, size: int, relay_index: int) -> Task:
        """The primary opens a stream, writes its head (no FIN) and asks a relay, through the
        client, to write the tail with the FIN."""
        core = self.primary
        data = self._data(plan, size)
        address = f"relay{relay_index}:443"
        stream = core.open_stream()
        self.streams[id(core)].append(stream)
        while stream.open_state is OpenState.OPENING or address not in self.relay_of:
            yield
        check(stream.open_state is OpenState.OPEN, f"plan {plan}: stream refused")
        head = self.rng.randint(0, len(data))
        request = struct.pack(">QQQ", plan, head, len(data)) + self.rng.randbytes(
            self.rng.randint(0, 30_000)
        )
        self.requests[plan] = (request, head)
        relay = self.relay_of[address]
        # (on KWIK v2 the relay's part may hold the client's budget until the head arrives: a
        # head written out of order there would wait behind its own bytes)
        reorder = not self._v2_involved(relayed=True)
        yield from self._write_all(core, stream, self._pieces(data[:head], shuffle=reorder))
        core.finish(stream, fin=False)
        limit = self.config.stream_send_buffer
        for _, chunk in self._pieces(request, shuffle=False):
            while (core.relay_buffered(relay) or 0) > limit:
                yield
            core.relay_send(relay, stream.stream_id, chunk)
            yield
        yield from self._read_to_eof(core, stream)

    def reader(self, core: SessionCore) -> Task:
        """Accept every stream and read each to EOF (random read sizes), checking its bytes;
        then end the stream's other direction (an empty answer)."""
        reading: list[tuple[LogicalStream, bytearray]] = []
        while True:
            stream = core.accept_stream()
            if stream is not None:
                reading.append((stream, bytearray()))
            for item in list(reading):
                stream, got = item
                self.app[id(core)].about_to_read(stream)
                data = core.read(stream, self.rng.choice([1, 100, 5000, 1 << 20]))
                if data is None:
                    continue
                if data:
                    got += data
                    continue
                reading.remove(item)
                check(len(got) >= 8, f"{self.names[id(core)]}: stream of {len(got)} bytes")
                (plan,) = struct.unpack_from(">Q", got)
                expected = self.expected.get(plan)
                check(
                    expected is not None and bytes(got) == expected,
                    f"{self.names[id(core)]}: stream {stream.stream_id} (plan {plan}) delivered "
                    f"{len(got)} bytes, not the {len(expected or b'')} written"
                    + _first_difference(bytes(got), expected or b""),
                )
                check(plan not in self.verified, f"plan {plan} delivered twice")
                self.verified.add(plan)
                STATS.honest_bytes += len(got)
                if not self.closed:
                    core.finish(stream)
            yield

    def _relay_server(self, core: SessionCore) -> Task:
        """A relay: accept forwarded streams, check the request, write the tail with FIN, then
        read to EOF (the client ends the forwarded stream once the logical one is complete)."""
        serving: list[tuple[LogicalStream, bytearray]] = []
        done: list[LogicalStream] = []
        while True:
            stream = core.accept_stream()
            if stream is not None:
                serving.append((stream, bytearray()))
            for item in list(serving):
                stream, got = item
                self.app[id(core)].about_to_read(stream)
                data = core.read(stream, self.rng.choice([3, 1000, 1 << 20]))
                if data:
                    got += data
                if len(got) < 24:
                    continue
                plan, head, total = struct.unpack_from(">QQQ", got)
                request, expected_head = self.requests[plan]
                if len(got) < len(request):
                    continue
                serving.remove(item)
                check(
                    bytes(got) == request and head == expected_head,
                    f"relay: request of plan {plan} arrived as {len(got)} other bytes"
                    + _first_difference(bytes(got), request),
                )
                self.relay_served.add(plan)
                core.set_write_offset(stream, head)  # the FIN goes at the end even if no tail
                yield from self._write_all(
                    core,
                    stream,
                    self._pieces(self.expected[plan][head:total], head, relayed=True),
                )
                core.finish(stream)
                done.append(stream)
            for stream in list(done):
                self.app[id(core)].about_to_read(stream)
                data = core.read(stream, 1 << 20)
                check(not data, f"relay: bytes after the request on stream {stream.stream_id}")
                if data == b"":
                    done.remove(stream)  # the secondary learnt that the stream is complete
            yield

    # --- the end

    def quiescent(self) -> bool:
        return all(c.open_streams == 0 for c in self.cores) and not any(
            d.wire or d.reader.buffered for link in self.links for _, _, d in link.out.values()
        )

    def settle(self) -> None:
        """Exchange everything the cores still have to send (echoes, Acks, credit)."""
        for _ in range(50):
            moved = STATS.records_out
            for link in self.links:
                for sender, _, direction in link.out.values():
                    self.pull(link, sender, 1 << 30)
                    self.deliver(direction, 1 << 30)
            self.events()
            self.check_all()
            if STATS.records_out == moved:
                return

    def check_ended(self) -> None:
        """Every stream ended for every party: every table is empty again, every budget free,
        nothing left to send once the links settled."""
        self.settle()
        for core in self.cores:
            name = self.names[id(core)]
            sizes = {k: v for k, v in core.table_sizes().items() if k != "retired" and v}
            check(not sizes, f"{name}: tables not empty once every stream ended: {sizes}")
            check(core.receive_buffered == 0, f"{name}: receive_buffered={core.receive_buffered}")
            check(not core.has_unsent(), f"{name}: unsent data once every stream ended")


def _first_difference(got: bytes, want: bytes) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"; first difference at offset {i}"
    return f"; lengths {len(got)} and {len(want)}"


def _step(net: Honest, rng: random.Random) -> None:
    STATS.steps += 1
    roll = rng.random()
    if roll < 0.35 and net.tasks:
        task = rng.choice(net.tasks)
        try:
            next(task)
        except StopIteration:
            net.tasks.remove(task)
    elif roll < 0.65:
        link = rng.choice(net.links)
        sender = rng.choice([c for c, _, _ in link.out.values()])
        net.pull(link, sender, rng.choice([0, 100, 2000, 20_000, 1 << 20]))
    elif roll < 0.95:
        link = rng.choice(net.links)
        _, _, direction = rng.choice(list(link.out.values()))
        net.deliver(direction, rng.choice([1, 50, 3000, 70_000, 1 << 22]))
    else:
        net.now += rng.uniform(0, 0.05)
        for core in net.cores:
            timer = core.get_timer()
            if timer is not None and timer <= net.now:
                core.handle_timer(net.now)


def run_honest(seed: int, mode: str = "credit", max_steps: int = 40_000) -> None:
    """One honest multi-server scenario from ``seed`` in ``mode`` (see :data:`MODES`); raises
    :class:`InvariantViolation`."""
    rng = random.Random(seed)
    config = HONEST_CONFIGS[rng.randrange(len(HONEST_CONFIGS))]
    relays = rng.randint(0, 2)
    # one scenario in four: the primary pushes streams, then closes the session with data
    # still in flight (the client's reader must get every byte anyway)
    push_close = random.Random(seed ^ 0x5EED).random() < 0.25
    if push_close:
        relays = 0
    net = Honest(rng, config, relays, mode)
    plans = 0
    for _ in range(0 if push_close else rng.randint(1, 4)):
        net.tasks.append(net.writer(net.client, plans, rng.choice([8, 100, 5000, 150_000])))
        plans += 1
    pushers = []
    for _ in range(rng.randint(1, 3) if push_close else rng.randint(0, 3)):
        size = rng.choice([8, 3000, 90_000])
        pushers.append(net.writer(net.primary, plans, size, answered=not push_close))
        plans += 1
    net.tasks += pushers
    for _ in range(rng.randint(0, 3) if relays else 0):
        net.tasks.append(
            net.two_server_writer(plans, rng.choice([8, 4000, 100_000]), rng.randrange(relays))
        )
        plans += 1
    net.tasks += [net.reader(net.client), net.reader(net.primary)]
    STATS.examples += 1
    steps = 0
    for steps in range(max_steps):  # noqa: B007 - used after the loop
        _step(net, rng)
        if (
            push_close
            and not net.closed
            and not any(t in net.tasks for t in pushers)
            and not net.primary.has_unsent()
        ):
            net.close_primary()
        net.events()
        net.check_all()
        if len(net.verified) == plans and (net.closed or net.quiescent()):
            break
    missing = sorted(set(range(plans)) - net.verified)
    check(
        not missing,
        f"seed {seed} ({mode}): plans {missing} not delivered after {max_steps} steps "
        f"(relays {relays}, served {sorted(net.relay_served)}, "
        + "; ".join(
            f"{net.names[id(c)]}: {c.table_sizes()} unsent {c.has_unsent()}" for c in net.cores
        )
        + ")",
    )
    if not net.closed:
        check(
            net.quiescent(),
            f"seed {seed} ({mode}): every plan delivered, but streams do not end after "
            f"{steps} steps: "
            + "; ".join(f"{net.names[id(c)]}: {c.table_sizes()}" for c in net.cores),
        )
        net.check_ended()
    STATS.honest_runs += 1
