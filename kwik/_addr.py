"""Parsing and formatting of ``"host:port"`` addresses (IPv6 as ``"[::1]:4433"``)."""

from __future__ import annotations

__all__ = ["format_address", "parse_address"]


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)``.

    Raises:
        ValueError: not of the form ``host:port`` / ``[v6]:port`` with a port in 0..65535.
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a 'host:port' string, got {type(address).__name__}")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"invalid address {address!r}: expected '[v6 address]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"invalid address {address!r}: expected 'host:port'")
    if not host:
        raise ValueError(f"invalid address {address!r}: empty host")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid address {address!r}: port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid address {address!r}: port out of range")
    return host, port


def format_address(host: str, port: int) -> str:
    """Inverse of :func:`parse_address`; strips an IPv4-mapped IPv6 prefix."""
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
