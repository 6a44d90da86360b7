"""The exceptions kwik raises.

Every exception kwik raises on purpose derives from :class:`KwikError`::

    KwikError
    ├── ProtocolViolationError      the peer broke the KWIK v2 wire format
    ├── SessionClosedError          (also ConnectionError) the session is closed
    ├── HandshakeError              (also ConnectionError) the QUIC/TLS handshake was refused
    ├── HandshakeTimeoutError       (also TimeoutError) nothing answered the handshake in time
    ├── PathError                   a path could not be added, found or used
    ├── StreamClosedError           the stream cannot be used: closed, refused, path gone
    ├── OpenStreamTimeoutError      (also TimeoutError) no answer to open_stream_sync in time
    ├── ListenerClosedError         accept() on a closed listener
    └── EngineError                 (also ImportError) the QUIC engine asked for is unusable

Errors from the QUIC engine (aioquic, qh3) and from the operating system are mapped to these at
the edge and raised ``from`` the original, so ``__cause__`` keeps the detail.
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "KwikError",
    "ListenerClosedError",
    "OpenStreamTimeoutError",
    "PathError",
    "ProtocolViolationError",
    "SessionClosedError",
    "StreamClosedError",
]


class KwikError(Exception):
    """Root of every exception kwik raises on purpose."""


class ProtocolViolationError(KwikError):
    """The peer sent bytes that do not follow the KWIK v2 wire format.

    Raised by the sans-IO codec and record reader. At the transport edge it closes the path it
    arrived on (application error code 1, reason ``"protocol violation: ..."``); other paths,
    streams and sessions carry on.
    """


class SessionClosedError(KwikError, ConnectionError):
    """The session is closed; pending and later calls raise this.

    Attributes:
        code: the application error code the session was closed with (0 = normal close,
            1 = failure, forced shutdown or protocol violation, other = application code).
        reason: the reason phrase.
        remote: True when the peer (or the network) closed the session, False when this side did.
    """

    def __init__(self, code: int = 0, reason: str = "", remote: bool = False) -> None:
        side = "peer" if remote else "local side"
        super().__init__(f"session closed by the {side} (code {code}): {reason or 'no reason'}")
        self.code = code
        self.reason = reason
        self.remote = remote


class HandshakeError(KwikError, ConnectionError):
    """The QUIC/TLS handshake failed, e.g. the peer's certificate did not verify."""


class HandshakeTimeoutError(KwikError, TimeoutError):
    """Nothing completed the handshake within ``Config.handshake_timeout``."""


class PathError(KwikError):
    """A path could not be added (refused, unreachable, timed out), found or used."""


class StreamClosedError(KwikError):
    """The stream cannot be used for this call: it is closed for writing (``close()`` was
    called), its reading was cancelled, the peer refused to open it, or the path it was
    written on closed."""


class OpenStreamTimeoutError(KwikError, TimeoutError):
    """The peer did not answer ``open_stream_sync`` within ``Config.open_stream_timeout``;
    the stream is given up (should the peer still confirm it, it is ended at once)."""


class ListenerClosedError(KwikError):
    """The listener is closed: no more sessions will be accepted."""


class EngineError(KwikError, ImportError):
    """The QUIC engine named by ``Config.engine`` (or ``KWIK_ENGINE``) cannot be used: it is
    unknown, not installed, or lacks (or changed) an internal kwik relies on. Raised when the
    :class:`~kwik.Config` is made; the message names the engine and the missing piece."""
