"""The listener's demultiplexer: one UDP socket, many QUIC connections (what aioquic's
``QuicServer`` did, engine-neutral).

For every datagram it parses the QUIC header (:func:`parse_header`), answers an unsupported
version with Version Negotiation, finds the connection by destination connection id (the
client's original one and every id the engine issues, retired ids removed), and creates a
connection (a server :class:`~kwik._path.Path`) for a new client Initial. A batch from the
socket is handed over per connection: each connection receives its run of datagrams at once,
processes its events once and transmits once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._engines.base import SMALLEST_INITIAL
from ._udp import UdpEndpoint

if TYPE_CHECKING:
    from ._path import Path

__all__ = ["Demultiplexer", "QuicHeader", "encode_version_negotiation", "parse_header"]

logger = logging.getLogger("kwik.listener")

#: QUIC version 2 (RFC 9369) numbers its long-header packet types differently.
_VERSION_2 = 0x6B3343CF
_INITIAL_V1 = 0
_INITIAL_V2 = 1


class QuicHeader:
    """What the demultiplexer reads of a packet: ``version`` is None for a short header and 0
    for Version Negotiation."""

    __slots__ = ("version", "is_initial", "dcid", "scid")

    def __init__(self, version: int | None, is_initial: bool, dcid: bytes, scid: bytes) -> None:
        self.version = version
        self.is_initial = is_initial
        self.dcid = dcid
        self.scid = scid


def parse_header(data: bytes, cid_length: int) -> QuicHeader | None:
    """The invariant part of a QUIC header (RFC 8999), or None when ``data`` is none."""
    if not data:
        return None
    first = data[0]
    if not first & 0x80:  # short header: the connection id has the length we issue
        if len(data) < 1 + cid_length:
            return None
        return QuicHeader(None, False, bytes(data[1 : 1 + cid_length]), b"")
    if len(data) < 7:
        return None
    version = int.from_bytes(data[1:5], "big")
    dcid_length = data[5]
    at = 6 + dcid_length
    if dcid_length > 20 or len(data) < at + 1:
        return None
    dcid = bytes(data[6:at])
    scid_length = data[at]
    if scid_length > 20 or len(data) < at + 1 + scid_length:
        return None
    scid = bytes(data[at + 1 : at + 1 + scid_length])
    kind = (first & 0x30) >> 4
    initial = kind == (_INITIAL_V2 if version == _VERSION_2 else _INITIAL_V1) and version != 0
    return QuicHeader(version, initial, dcid, scid)


def encode_version_negotiation(dcid: bytes, scid: bytes, versions: tuple[int, ...]) -> bytes:
    """A Version Negotiation packet (RFC 9000 section 17.2.1) listing ``versions``."""
    first = 0x80 | (os.urandom(1)[0] & 0x7F)
    return b"".join(
        [
            bytes([first]),
            b"\x00\x00\x00\x00",
            bytes([len(dcid)]),
            dcid,
            bytes([len(scid)]),
            scid,
            *(v.to_bytes(4, "big") for v in versions),
        ]
    )


class Demultiplexer:
    """Routes a listener's datagrams to its connections (see the module docstring).

    ``new_path(original_dcid, addr)`` makes the server path for a new client Initial (or
    returns None to drop it); the path reports the ids its engine issues and retires, and its
    end, back here (:class:`~kwik._path.CidListener`).
    """

    def __init__(
        self,
        endpoint: UdpEndpoint,
        *,
        cid_length: int,
        supported_versions: tuple[int, ...],
        new_path: Callable[[bytes, Any], Path | None],
    ) -> None:
        self.endpoint = endpoint
        self._cid_length = cid_length
        self._versions = supported_versions
        self._new_path = new_path
        self._paths: dict[bytes, Path] = {}
        self._cids: dict[Path, set[bytes]] = {}
        self.closed = False
        endpoint.set_handler(self)

    @property
    def connections(self) -> int:
        return len(self._cids)

    def send(self, datagrams: list[bytes], addr: Any) -> None:
        self.endpoint.send(datagrams, addr)

    # --- UdpHandler -----------------------------------------------------------------------------

    def udp_received(self, items: list[tuple[bytes, Any, int]]) -> None:
        if self.closed:
            return
        batches: dict[Path, list[tuple[bytes, Any, int]]] = {}
        for item in items:
            data, addr, segment = item
            header = parse_header(data, self._cid_length)
            if header is None:
                continue
            if header.version is not None and header.version not in self._versions:
                if header.version != 0:  # never answer a Version Negotiation (reflection)
                    self.endpoint.send(
                        [encode_version_negotiation(header.scid, header.dcid, self._versions)],
                        addr,
                    )
                continue
            path = self._paths.get(header.dcid)
            if path is None:
                first = segment if segment else len(data)
                if not header.is_initial or first < SMALLEST_INITIAL:
                    continue
                path = self._new_path(header.dcid, addr)
                if path is None:
                    continue
                self._register(path, header.dcid)
                self._register(path, path.host_cid)
            batch = batches.get(path)
            if batch is None:
                batches[path] = [item]
            else:
                batch.append(item)
        for path, batch in batches.items():
            path.udp_received(batch)

    def udp_error(self, exc: OSError) -> None:
        # an unconnected socket learns of ICMP errors only for the last datagram sent, to any
        # client: a hint about one of them, never a reason to drop anything
        logger.debug("listener socket error (ignored): %s", exc)

    # --- CidListener ----------------------------------------------------------------------------

    def _register(self, path: Path, cid: bytes) -> None:
        self._paths[cid] = path
        self._cids.setdefault(path, set()).add(cid)

    def cid_issued(self, path: Path, cid: bytes) -> None:
        if path in self._cids:
            self._register(path, cid)

    def cid_retired(self, path: Path, cid: bytes) -> None:
        cids = self._cids.get(path)
        if cids is not None and cid in cids:
            cids.discard(cid)
            if self._paths.get(cid) is path:
                del self._paths[cid]

    def path_gone(self, path: Path) -> None:
        for cid in self._cids.pop(path, ()):
            if self._paths.get(cid) is path:
                del self._paths[cid]

    # --- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection still open at once (their close leaves now) and the socket."""
        if self.closed:
            return
        self.closed = True
        for path in list(self._cids):
            path.abort()
        self._paths.clear()
        self._cids.clear()
        self.endpoint.close()
