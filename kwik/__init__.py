"""kwik: QUIC With Intelligent Konnections, for asyncio.

A kwik session looks like one QUIC connection, but is an aggregate of paths (one aioquic
connection each), possibly to different servers: a primary server can recruit secondary servers
(:meth:`Session.add_relay`) that write into the same logical streams, and the client merges
everything by byte offset. Wire-compatible with KWIK v2 (Go).

Entry points: :func:`dial_addr` (client) and :func:`listen_addr` (server).
"""

from ._connect import dial_addr
from ._pool import PoolStats, WorkerPool, close_global_worker_pool, get_global_worker_pool
from ._version import __version__
from .config import Config, PathPolicy, TLSConfig
from .exceptions import (
    EngineError,
    HandshakeError,
    HandshakeTimeoutError,
    KwikError,
    ListenerClosedError,
    OpenStreamTimeoutError,
    PathError,
    ProtocolViolationError,
    SessionClosedError,
    StreamClosedError,
)
from .relay import Relay
from .server import Listener, listen_addr
from .session import PathInfo, Session, SessionStatistics
from .stream import Stream
from .tls import generate_self_signed_cert

__all__ = [
    "Config",
    "EngineError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "KwikError",
    "Listener",
    "ListenerClosedError",
    "OpenStreamTimeoutError",
    "PathError",
    "PathInfo",
    "PathPolicy",
    "PoolStats",
    "ProtocolViolationError",
    "Relay",
    "Session",
    "SessionClosedError",
    "SessionStatistics",
    "Stream",
    "StreamClosedError",
    "TLSConfig",
    "WorkerPool",
    "__version__",
    "close_global_worker_pool",
    "dial_addr",
    "generate_self_signed_cert",
    "get_global_worker_pool",
    "listen_addr",
]
