"""Helpers shared by the examples: certificates and logging."""

from __future__ import annotations

import logging
from pathlib import Path

import kwik


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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
