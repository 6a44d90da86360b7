"""Fuzzing the sans-IO session core, and the defects the fuzzer found, as plain regressions.

The machines and scenarios live in :mod:`tests.fuzz.core`; this file runs them with a fixed
budget and fixed seeds (reproducible, about 30 s). ``python -m tests.fuzz --minutes N`` runs
them longer with random seeds.
"""

from __future__ import annotations

from kwik import Config
from kwik.protocol import (
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    OpenStreamFrame,
    OpenStreamRespFrame,
    RelayDataFrame,
    decode_packet,
    encode_packet,
)
from kwik.protocol.session import SessionCore

MIB = 1024 * 1024


def _frames(records: list[bytes]) -> list[object]:
    return [f for r in records for f in decode_packet(r[8:]).frames]


# --- regressions --------------------------------------------------------------------------------


def test_piggybacked_ack_never_pushes_a_record_over_max_record_size() -> None:
    """Found by the fuzzer (honest scenario, seed 0): a data frame of max_stream_frame_data
    bytes plus a piggybacked Ack made a record of L1=1112 with max_record_size=1088, which the
    peer's record reader rejects (protocol violation: the path fails)."""
    config = Config(
        max_stream_frame_data=1024, max_record_size=1088, max_ack_ranges=64, ack_threshold=2
    )
    client = SessionCore(is_client=True, config=config)
    path = client.add_path(primary=True, now=0.0)
    stream = client.open_stream()
    client.data_to_send(path, MIB, 0.0)
    confirm = encode_packet(1, [OpenStreamRespFrame(stream.stream_id, True)])
    client.receive_record(path, confirm, 0.0)  # one packet to acknowledge: worth piggybacking
    client.write(stream, bytes(3000))
    records = client.data_to_send(path, MIB, 0.0)
    assert sum(len(r) for r in records) > 3000  # the data went
    assert max(len(r) - 4 for r in records) <= config.max_record_size
    # the acknowledgement is not lost: it goes alone when its timer fires
    later = client.data_to_send(path, MIB, config.ack_interval)
    assert any(isinstance(f, AckFrame) for f in _frames(records + later))
    assert max(len(r) - 4 for r in later) <= config.max_record_size


def test_add_path_answers_stay_within_the_control_budget() -> None:
    """Found by the fuzzer: AddPath answers (AddPathResp) were queued without looking at
    ``control_buffer``, so a peer that sends AddPath floods and never reads our output grew
    the control queue without bound (40 AddPath frames on a relay path: 13,680 bytes queued
    with control_buffer=400). Now the frame waits, and its path stops, like an OpenStream."""
    config = Config(control_buffer=400)
    client = SessionCore(is_client=True, config=config)
    client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    client.data_to_send(relay, MIB, 0.0)
    flood = encode_packet(1, [AddPathFrame("a" * 300)] * 40)
    client.receive_record(relay, flood, 0.0)
    queued = client._paths[relay].control_bytes  # noqa: SLF001 - the structure under test
    assert queued <= config.control_buffer + 400  # the budget plus the answer that crossed it
    assert not client.wants_records(relay)  # the rest waits: back-pressure, nothing dropped
    # the peer reads: every AddPath is answered, within the budget each time
    answers = []
    for _ in range(100):
        records = client.data_to_send(relay, MIB, 0.0)
        if not records:
            break
        answers += [f for f in _frames(records) if isinstance(f, AddPathRespFrame)]
        assert client._paths[relay].control_bytes <= config.control_buffer + 400  # noqa: SLF001
    assert answers == [AddPathRespFrame(0, "a" * 300)] * 40
    assert client.wants_records(relay)


def test_relay_data_for_new_streams_stays_within_the_relay_paths_control_budget() -> None:
    """Found by the fuzzer: each RelayData for a new destination stream queues an OpenStream on
    the relay path, and an empty one costs nothing against ``relay_buffer``, so a primary could
    make the client queue any number of OpenStream records (300 empty RelayData frames: 10,200
    bytes queued with control_buffer=400). Now the primary waits for the relay path."""
    config = Config(control_buffer=400)
    client = SessionCore(is_client=True, config=config)
    primary = client.add_path(primary=True, now=0.0)
    relay = client.add_path(primary=False, now=0.0)
    flood = encode_packet(1, [RelayDataFrame(relay, sid, b"") for sid in range(1, 301)])
    client.receive_record(primary, flood, 0.0)
    queued = client._paths[relay].control_bytes  # noqa: SLF001 - the structure under test
    assert queued <= config.control_buffer + 64
    assert not client.wants_records(primary)  # back-pressure on the primary
    opened = []
    for _ in range(100):
        records = client.data_to_send(relay, MIB, 0.0)
        if not records:
            break
        opened += [f.stream_id for f in _frames(records) if isinstance(f, OpenStreamFrame)]
        assert client._paths[relay].control_bytes <= config.control_buffer + 64  # noqa: SLF001
    assert opened == list(range(1, 301))  # nothing dropped
    assert client.wants_records(primary)
