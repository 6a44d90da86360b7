"""Helpers shared by the examples: certificates, logging, and a progress line that other
output does not run into."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

import kwik

#: The stream on which a progress bar left its line unfinished (it redraws it with "\r"), or
#: None. Whatever else is printed meanwhile must end that line first, or it is glued to the bar.
_open_progress_line: TextIO | None = None


def load_or_generate_tls(
    cert: str | None, key: str | None, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> tuple[kwik.TLSConfig, bytes]:
    """Server TLS from PEM files, or a freshly generated self-signed pair.

    Returns the server's TLSConfig and the certificate PEM (what a client must trust).
    """
    if cert is not None:
        cert_pem = Path(cert).read_bytes()
        key_pem = Path(key).read_bytes() if key is not None else cert_pem
    else:
        cert_pem, key_pem = kwik.generate_self_signed_cert(list(hosts))
    return kwik.TLSConfig(certificate=cert_pem, private_key=key_pem), cert_pem


def client_tls(ca: str | None, insecure: bool) -> kwik.TLSConfig:
    """Client TLS: trust ``ca`` (a PEM file), or skip verification when ``insecure``."""
    if insecure:
        return kwik.TLSConfig(insecure_skip_verify=True)
    if ca is not None:
        return kwik.TLSConfig(cafile=ca)
    return kwik.TLSConfig()


def progress_line_drawn(out: TextIO) -> None:
    """A progress bar drew its line on ``out`` and left it unfinished (no newline)."""
    global _open_progress_line
    _open_progress_line = out


def end_progress_line() -> None:
    """End the unfinished progress line, if there is one, so that the next output starts on a
    line of its own (the bar's next redraw starts a new line in turn)."""
    global _open_progress_line
    out, _open_progress_line = _open_progress_line, None
    if out is not None:
        out.write("\n")
        out.flush()


def say(message: str) -> None:
    """``print(message)`` on standard output, on a line of its own even while a progress bar
    is drawn (on standard error: in a terminal both go to the same screen)."""
    end_progress_line()
    print(message, flush=True)


class EndProgressLine(logging.Filter):
    """A handler filter that ends the progress line before the handler writes a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        end_progress_line()
        return True


def setup_logging(verbose: bool) -> None:
    """Log to standard error (DEBUG with ``verbose``, WARNING otherwise), each record on a line
    of its own even while a progress bar is drawn."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, EndProgressLine) for f in handler.filters):
            handler.addFilter(EndProgressLine())
