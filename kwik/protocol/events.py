"""What the session core tells its adapter (:meth:`~.session.SessionCore.next_event`).

Two kinds, one queue (their order matters: a command and the notifications around it are acted
on in the order the core decided them):

* **notifications**, in the past tense: something happened that may wake a coroutine;
* **commands**, in the imperative: the adapter must do something the core cannot (it has no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import SessionClosedError
from .stream import LogicalStream

__all__ = [
    "AddPathAnswered",
    "ClosePath",
    "DialRelay",
    "Event",
    "FinishClose",
    "PathResumed",
    "RelayWritable",
    "SendProbe",
    "SessionTerminated",
    "StreamArrived",
    "StreamReadable",
    "StreamWritable",
]

# --- notifications -------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamArrived:
    """The peer opened a stream; it waits for :meth:`SessionCore.accept_stream`."""

    stream: LogicalStream


@dataclass(slots=True)
class StreamReadable:
    """A stream has data, EOF or an error for its reader."""

    stream: LogicalStream


@dataclass(slots=True)
class StreamWritable:
    """A stream's send buffer went under its limit, its open was confirmed or refused, or it
    failed."""

    stream: LogicalStream


@dataclass(slots=True)
class PathResumed:
    """A path that stopped taking records takes them again: the transport must feed it."""

    path_id: int


@dataclass(slots=True)
class AddPathAnswered:
    """Server: the client answered AddPath(``address``): its path id, 0 when refused."""

    address: str
    path_id: int


@dataclass(slots=True)
class RelayWritable:
    """Server: a relay's outgoing buffer went under its limit (or the relay went away)."""

    path_id: int


@dataclass(slots=True)
class SessionTerminated:
    """The session is closed; the error every later call raises."""

    error: SessionClosedError


# --- commands ------------------------------------------------------------------------------------


@dataclass(slots=True)
class SendProbe:
    """Send a QUIC PING on the path: liveness evidence that needs no application."""

    path_id: int


@dataclass(slots=True)
class ClosePath:
    """Close the path's QUIC connection with this application error code.

    When ``deliver`` is True the core still wants the records the path holds (in its reader,
    backlog or pool queue): the adapter hands them in, in order, then calls
    :meth:`SessionCore.path_terminated`. When False (a protocol violation: what follows the bad
    record cannot be trusted) it drops them and calls it at once.
    """

    path_id: int
    code: int
    reason: str
    deliver: bool


@dataclass(slots=True)
class DialRelay:
    """Client: the primary asked for a path to ``address``; dial it and report with
    :meth:`SessionCore.add_path_result`."""

    address: str


@dataclass(slots=True)
class FinishClose:
    """Client: the primary ended the session gracefully and the streams relays wrote are
    complete: close the session gracefully (deliver what is still owed to the relays, such as
    the FINs of what they wrote, then :meth:`SessionCore.close`). The session's error is then
    the primary's (``error``), not the local close's."""

    error: SessionClosedError


Event = (
    StreamArrived
    | StreamReadable
    | StreamWritable
    | PathResumed
    | AddPathAnswered
    | RelayWritable
    | SessionTerminated
    | SendProbe
    | ClosePath
    | DialRelay
    | FinishClose
)
