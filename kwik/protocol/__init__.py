"""The sans-IO KWIK v2 protocol core: no asyncio, no sockets, no clock (time is an argument).

* :mod:`.frames`: packet and frame codec.
* :mod:`.reader`: incremental record reader over the transport stream.
* :mod:`.reassembly`: per-stream reassembly by offset.
* :mod:`.acks`: acknowledgements and duplicate detection.
* :mod:`.liveness`: is a path's peer alive (probes, failure bounds).
* :mod:`.session`: the session state machine (:class:`SessionCore`).
"""

from .acks import AckTracker, RangeSet
from .frames import (
    MAX_FRAMES_PER_PACKET,
    MAX_RECORD_SIZE,
    AckFrame,
    AddPathFrame,
    AddPathRespFrame,
    Frame,
    FrameType,
    OpenStreamFrame,
    OpenStreamRespFrame,
    Packet,
    PingFrame,
    RelayDataFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
    encode_record,
    is_ack_eliciting,
)
from .liveness import Liveness, LivenessAction
from .reader import RecordReader
from .reassembly import ReceiveBuffer
from .session import SessionCore, StreamState

__all__ = [
    "MAX_FRAMES_PER_PACKET",
    "MAX_RECORD_SIZE",
    "AckFrame",
    "AckTracker",
    "AddPathFrame",
    "AddPathRespFrame",
    "Frame",
    "FrameType",
    "Liveness",
    "LivenessAction",
    "OpenStreamFrame",
    "OpenStreamRespFrame",
    "Packet",
    "PingFrame",
    "RangeSet",
    "RecordReader",
    "ReceiveBuffer",
    "RelayDataFrame",
    "SessionCore",
    "StreamFrame",
    "StreamState",
    "decode_packet",
    "encode_packet",
    "encode_record",
    "is_ack_eliciting",
]
