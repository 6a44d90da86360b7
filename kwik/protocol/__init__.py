"""The sans-IO KWIK v2 protocol core: no asyncio, no sockets, no clock (time is an argument).

* :mod:`.frames`: packet and frame codec.
* :mod:`.reader`: incremental record reader over the transport stream.
* :mod:`.reassembly`: per-stream reassembly by offset.
* :mod:`.acks`: acknowledgements and duplicate detection.
* :mod:`.liveness`: is a path's peer alive (probes, failure bounds).
* :mod:`.stream`: one logical stream's sender and receiver.
* :mod:`.path`: what the core knows of one path (numbering, lanes, waiting frames).
* :mod:`.relays`: what a primary relays and what a client forwards.
* :mod:`.events`: what the core tells its adapter.
* :mod:`.session`: the session state machine (:class:`SessionCore`).
"""

from .acks import AckTracker, RangeSet
from .frames import (
    EXTENSION_ALPN,
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
    RelayCreditFrame,
    RelayDataFrame,
    StreamCreditFrame,
    StreamFrame,
    decode_packet,
    encode_packet,
    encode_record,
    is_ack_eliciting,
)
from .liveness import Liveness, LivenessAction
from .reader import RecordReader
from .reassembly import ReceiveBuffer
from .session import SessionCore
from .stream import LogicalStream, StreamReceiver, StreamSender

__all__ = [
    "EXTENSION_ALPN",
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
    "LogicalStream",
    "OpenStreamFrame",
    "OpenStreamRespFrame",
    "Packet",
    "PingFrame",
    "RangeSet",
    "RecordReader",
    "ReceiveBuffer",
    "RelayCreditFrame",
    "RelayDataFrame",
    "SessionCore",
    "StreamCreditFrame",
    "StreamFrame",
    "StreamReceiver",
    "StreamSender",
    "decode_packet",
    "encode_packet",
    "encode_record",
    "is_ack_eliciting",
]
