"""Pieces shared by the HTTP example's server, client and gateway.

Nothing here parses HTTP (h11, httpx and uvicorn do). These helpers pick apart URLs, filter
hop-by-hop headers, build TLS configurations, parse sizes and draw the progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import kwik

from .._common import EndProgressLine, end_progress_line, progress_line_drawn

__all__ = [
    "DEFAULT_MAX_HEAD",
    "DEFAULT_PORT",
    "HOP_BY_HOP_HEADERS",
    "LOGGER",
    "ProgressBar",
    "client_tls_config",
    "format_size",
    "parse_size",
    "server_tls_config",
    "split_url",
    "strip_hop_by_hop",
]

LOGGER = logging.getLogger("kwik.examples.http")

#: Default kwik port of the examples (there is no registered one).
DEFAULT_PORT = 4433

#: Default limit on a request head (request line + headers); larger heads get 431.
DEFAULT_MAX_HEAD = 16 * 1024

#: Connection-level headers (RFC 9110 section 7.6.1): meaningful on one hop only, never
#: forwarded by the gateway. Framing (Content-Length aside) is redone on each hop.
HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Raw ``headers`` without :data:`HOP_BY_HOP_HEADERS` and without the headers a
    ``Connection`` header names (RFC 9110 section 7.6.1). Names compare case-insensitively."""
    headers = list(headers)
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return [
        (key, value)
        for key, value in headers
        if key.lower() not in HOP_BY_HOP_HEADERS and key.lower() not in named
    ]


def split_url(url: str) -> tuple[str | None, str]:
    """Split ``url`` into the kwik address ("host:port") and the request target.

    Accepted forms: ``kwik://host:port/path?q`` (also ``https://`` and ``http://``, the scheme is
    not used), ``host:port/path`` and a bare ``/path?q`` (address None). A missing port means
    :data:`DEFAULT_PORT`; a missing path means ``/``.

    Raises:
        ValueError: the URL has no host or a port that is not a number.
    """
    if url.startswith("/"):
        return None, url
    if "://" not in url:
        url = "kwik://" + url
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    port = parts.port if parts.port is not None else DEFAULT_PORT  # ValueError if not numeric
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return f"{host}:{port}", target


def client_tls_config(
    ca: str | None = None,
    *,
    cadata: bytes | None = None,
    insecure: bool = False,
    server_name: str | None = None,
) -> kwik.TLSConfig:
    """TLS for a client: trust the PEM file ``ca`` and/or ``cadata``, or nothing but the system
    store, or skip verification altogether when ``insecure`` (development only)."""
    if insecure:
        return kwik.TLSConfig(insecure_skip_verify=True, server_name=server_name)
    return kwik.TLSConfig(cafile=ca, cadata=cadata, server_name=server_name)


def server_tls_config(
    cert: str | None, key: str | None, hosts: Iterable[str] = ("localhost", "127.0.0.1")
) -> tuple[kwik.TLSConfig, bytes]:
    """TLS for a server: the PEM files ``cert``/``key``, or a fresh self-signed pair for
    ``hosts`` when ``cert`` is None.

    Returns the configuration and the certificate PEM, which is what clients must trust.

    Raises:
        ValueError: ``key`` without ``cert``.
        OSError: a file cannot be read.
    """
    if cert is None:
        if key is not None:
            raise ValueError("--key needs --cert")
        cert_pem, key_pem = kwik.generate_self_signed_cert(list(hosts))
    else:
        cert_pem = Path(cert).read_bytes()
        key_pem = Path(key).read_bytes() if key is not None else cert_pem
    return kwik.TLSConfig(certificate=cert_pem, private_key=key_pem), cert_pem


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """``"512"``, ``"64K"``, ``"32M"``, ``"1.5GiB"`` → bytes (binary units).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: float) -> str:
    """Bytes as a short human string: ``"512 B"``, ``"1.5 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """A one-line text progress bar, redrawn in place on ``file`` (default: stderr).

    Call it as ``bar(done, total)`` (``total`` None when unknown) each time bytes move, then
    :meth:`finish`. It draws only when ``enabled``, which defaults to ``file.isatty()``, and
    redraws at most every ``interval`` seconds. No dependency beyond the standard library.
    """

    def __init__(
        self,
        label: str,
        *,
        file: TextIO | None = None,
        enabled: bool | None = None,
        width: int = 30,
        interval: float = 0.1,
    ) -> None:
        self.label = label
        self.file = file if file is not None else sys.stderr
        self.enabled = self.file.isatty() if enabled is None else enabled
        self.width = width
        self.interval = interval
        self.done = 0
        self.total: int | None = None
        self._started = time.monotonic()
        self._last_draw = -math.inf
        self._shown: tuple[int, int | None] | None = None  # (done, total) last drawn

    def __call__(self, done: int, total: int | None) -> None:
        self.done = done
        self.total = total
        now = time.monotonic()
        complete = total is not None and done >= total
        if now - self._last_draw >= self.interval or (complete and not self._is_shown()):
            self._last_draw = now
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        """The bar as text, e.g. ``file.bin [#######.......]  50%  1.0 MiB/2.0 MiB  3.1 MiB/s``."""
        elapsed = max((now if now is not None else time.monotonic()) - self._started, 1e-6)
        rate = f"{format_size(self.done / elapsed)}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            return (
                f"{self.label} [{bar}] {fraction:4.0%}  "
                f"{format_size(self.done)}/{format_size(self.total)}  {rate}"
            )
        return f"{self.label} {format_size(self.done)}  {rate}"

    def _is_shown(self) -> bool:
        return self._shown == (self.done, self.total)

    def _draw(self, now: float) -> None:
        if not self.enabled:
            return
        self.file.write("\r" + self.render(now) + "\x1b[K")
        self.file.flush()
        self._shown = (self.done, self.total)
        progress_line_drawn(self.file)  # a log line ends it first

    def finish(self) -> None:
        """Draw the final state (unless it is on screen already) and end the line; nothing
        when disabled."""
        if not self.enabled:
            return
        if not self._is_shown():
            self._draw(time.monotonic())
        end_progress_line()


def run_cli(
    args: argparse.Namespace, run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]
) -> int:
    """Configure logging from ``args.verbose`` (a count), run ``run(args)``; the exit status.

    Logging: ``-v`` shows kwik's and aioquic's messages too, ``-vv`` everything at DEBUG.
    """
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(EndProgressLine())  # a record never lands on a progress bar's line
    if not args.verbose:
        logging.getLogger("kwik").setLevel(logging.WARNING)
        logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-connection chatter
        LOGGER.setLevel(logging.INFO)
    try:
        asyncio.run(run(args))
    except (OSError, ValueError, ImportError) as exc:
        end_progress_line()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
