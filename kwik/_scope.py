"""Which addresses a server may send a client to (AddPath), and the one address to dial.

AddPath lets the primary server name any ``"host:port"`` for the client to dial. Unchecked, it
turns every client into a probe of its own networks (``127.0.0.1:22``, RFC 1918 hosts, the
cloud metadata service at ``169.254.169.254``). The default policy is *same scope*:

================  ==============================================================
primary reached   the AddPath address may resolve to
================  ==============================================================
loopback          loopback only
private           private or global
global            global only
================  ==============================================================

* **loopback**: ``127.0.0.0/8``, ``::1``.
* **private**: RFC 1918 (``10/8``, ``172.16/12``, ``192.168/16``), CGNAT ``100.64/10``,
  benchmarking ``198.18/15``, RFC 4193 ULA ``fc00::/7``.
* **global**: what :mod:`ipaddress` reports globally routable.
* **never**, whatever the primary: link-local (``169.254/16``, ``fe80::/10``), multicast,
  unspecified (``0.0.0.0/8``, ``::``), broadcast, and every other reserved or special-purpose
  range (documentation, ``240/4``, site-local ``fec0::/10``, ...). A primary itself reached on
  such an address (a link-local neighbour, say) is treated as private.

IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::/96``) IPv6 addresses are judged by the
IPv4 address they carry.

API. :func:`resolve_relay_address` is the one entry point the client uses: it consults the
user's ``Config.path_policy`` (with the address string, before any lookup, so a refused name is
never even resolved), resolves the name with ``loop.getaddrinfo`` within a timeout, checks
EVERY address the name resolves to (one disallowed address refuses the whole name: a name that
resolves to both a public and a private address is exactly the DNS-rebinding trick), and returns
a :class:`ResolvedAddress`: one checked socket address to dial, so that the dial never resolves
the name again (which could yield something else). Certificate verification must still use the
original host name (:attr:`ResolvedAddress.host`). Refusals raise :class:`AddressRefusedError`
(a :class:`~kwik.PathError`) whose ``reason`` is short text for logs. :func:`classify` and
:func:`allowed_scopes` expose the rules for tests and for callers with their own policy.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
from dataclasses import dataclass

from ._addr import parse_address
from .config import PathPolicy
from .exceptions import PathError

__all__ = [
    "AddressRefusedError",
    "ResolvedAddress",
    "Scope",
    "allowed_scopes",
    "classify",
    "resolve_relay_address",
]

logger = logging.getLogger("kwik.scope")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Scope(enum.Enum):
    """Where an address leads. ``FORBIDDEN`` is never dialled on a server's request."""

    LOOPBACK = "loopback"
    PRIVATE = "private"
    GLOBAL = "global"
    FORBIDDEN = "forbidden"


_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "198.18.0.0/15",
        "fc00::/7",
    )
)
# Checked before anything else: never dialled, even where ipaddress calls them global.
_FORBIDDEN_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",  # reserved, and 255.255.255.255 (broadcast)
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "::/128",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefusedError(PathError):
    """An AddPath address the client refuses to dial; ``reason`` says why (for logs)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"AddPath address {address!r} refused: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    """The one checked address to dial for an AddPath request.

    ``family`` and ``sockaddr`` are as ``getaddrinfo`` returned them (pass them straight to the
    UDP endpoint); ``ip`` is the checked address as text; ``host`` and ``port`` are the name as
    the server wrote it (``host`` is the name to verify the relay's certificate against).
    """

    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    ip: str
    host: str
    port: int


def _embedded_v4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address stands for, else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify(address: str | IPAddress) -> Scope:
    """The :class:`Scope` of one IP address (text or :mod:`ipaddress` object).

    A zone suffix (``fe80::1%eth0``) is ignored. Raises ValueError for text that is not an IP
    address.
    """
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    ip = _embedded_v4(address)
    if any(ip in net for net in _FORBIDDEN_NETS):
        return Scope.FORBIDDEN
    if ip.is_loopback:
        return Scope.LOOPBACK
    if any(ip in net for net in _PRIVATE_NETS):
        return Scope.PRIVATE
    if ip.is_global and not ip.is_multicast and not ip.is_reserved:
        return Scope.GLOBAL
    return Scope.FORBIDDEN


_ALLOWED = {
    Scope.LOOPBACK: frozenset({Scope.LOOPBACK}),
    Scope.PRIVATE: frozenset({Scope.PRIVATE, Scope.GLOBAL}),
    Scope.GLOBAL: frozenset({Scope.GLOBAL}),
    # a primary on a special-purpose address (link-local neighbour...) counts as private
    Scope.FORBIDDEN: frozenset({Scope.PRIVATE, Scope.GLOBAL}),
}


def allowed_scopes(primary_peer_ip: str | IPAddress) -> frozenset[Scope]:
    """Scopes an AddPath address may resolve to when the primary server is ``primary_peer_ip``
    (the address the client reached it at). Never contains :attr:`Scope.FORBIDDEN`."""
    return _ALLOWED[classify(primary_peer_ip)]


async def resolve_relay_address(
    address: str,
    primary_peer_ip: str,
    *,
    policy: PathPolicy | None = None,
    scope_check: bool = True,
    timeout: float = 5.0,
) -> ResolvedAddress:
    """Check and resolve an AddPath ``address`` (``"host:port"``); return the address to dial.

    Steps, in order: the address must parse; ``policy`` (the user's ``Config.path_policy``)
    must return True for the string (an exception counts as False); the name is resolved within
    ``timeout`` seconds; with ``scope_check``, every resolved address must be in
    :func:`allowed_scopes` of ``primary_peer_ip``. Of the addresses resolved, the first of the
    primary's address family is returned (else the first), so the relay is dialled over the
    family that already works.

    Raises:
        AddressRefusedError: any step refuses; ``reason`` says which.
    """
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise AddressRefusedError(address, str(exc)) from None
    if port == 0:
        raise AddressRefusedError(address, "port 0")
    if policy is not None:
        try:
            allowed = policy(address)
        except Exception:
            logger.exception("path_policy raised for %s", address)
            allowed = False
        if not allowed:
            raise AddressRefusedError(address, "path_policy")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
            )
    except TimeoutError:
        raise AddressRefusedError(address, f"not resolved within {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise AddressRefusedError(address, f"not resolved: {exc}") from None
    candidates = [
        (family, sockaddr) for family, _, _, _, sockaddr in infos if isinstance(sockaddr[0], str)
    ]
    if not candidates:
        raise AddressRefusedError(address, "resolved to no IP address")
    primary = ipaddress.ip_address(primary_peer_ip.split("%", 1)[0])
    if scope_check:
        allowed_set = allowed_scopes(primary)
        for _, sockaddr in candidates:
            scope = classify(sockaddr[0])
            if scope not in allowed_set:
                raise AddressRefusedError(
                    address,
                    f"resolves to {sockaddr[0]} ({scope.value}), not allowed for a primary at "
                    f"{primary_peer_ip} ({classify(primary).value})",
                )
    want = socket.AF_INET6 if _embedded_v4(primary).version == 6 else socket.AF_INET
    family, sockaddr = next(((f, s) for f, s in candidates if f == want), candidates[0])
    return ResolvedAddress(
        family=socket.AddressFamily(family),
        sockaddr=sockaddr,
        ip=str(sockaddr[0]),
        host=host,
        port=port,
    )
