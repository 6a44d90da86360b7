"""TLS helpers: self-signed certificates for development and tests, and the translation of
:class:`~kwik.TLSConfig` + :class:`~kwik.Config` into an aioquic ``QuicConfiguration``."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicFileLogger
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import Config, TLSConfig

__all__ = ["generate_self_signed_cert"]


def generate_self_signed_cert(
    hosts: Sequence[str] = ("localhost", "127.0.0.1"), *, days: int = 365
) -> tuple[bytes, bytes]:
    """Generate a self-signed certificate and its private key, both PEM-encoded.

    The certificate names every entry of ``hosts`` (DNS names or IP addresses) as a subject
    alternative name and is its own CA, so a client trusts it with
    ``TLSConfig(cadata=cert_pem)``. For development and tests only.

    Returns:
        ``(cert_pem, key_pem)``
    """
    if not hosts:
        raise ValueError("at least one host name or address is needed")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def quic_configuration(
    *, is_client: bool, tls: TLSConfig, config: Config, server_name: str | None = None
) -> QuicConfiguration:
    """Build the aioquic configuration of one path.

    Raises:
        ValueError: a server without an identity, or unreadable key material.
    """
    qc = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(tls.alpn_protocols),
        idle_timeout=config.idle_timeout,
        max_datagram_size=config.max_datagram_size,
        congestion_control_algorithm=config.congestion_control,
        # stream credit is kwik's (kwik._aioquic.install_credit_control: the transport stream
        # gets what kwik consumed plus the window, every other stream almost nothing);
        # connection-level credit must never be the tighter limit
        max_stream_data=config.path_receive_window,
        max_data=max(config.path_receive_window * 2, 1024 * 1024),
    )
    if config.qlog_dir is not None:
        os.makedirs(config.qlog_dir, exist_ok=True)
        qc.quic_logger = QuicFileLogger(os.fspath(config.qlog_dir))
    if tls.certfile is not None:
        qc.load_cert_chain(tls.certfile, tls.keyfile)
    elif tls.certificate is not None:
        if tls.private_key is None:
            raise ValueError("TLSConfig.certificate needs TLSConfig.private_key")
        chain = x509.load_pem_x509_certificates(tls.certificate)
        qc.certificate = chain[0]
        qc.certificate_chain = chain[1:]
        qc.private_key = serialization.load_pem_private_key(tls.private_key, password=None)
    elif not is_client:
        raise ValueError("a server needs TLSConfig.certfile/keyfile or certificate/private_key")
    if is_client:
        qc.server_name = tls.server_name or server_name
        if tls.insecure_skip_verify:
            qc.verify_mode = ssl.CERT_NONE
        elif tls.cafile is not None or tls.cadata is not None:
            cadata = tls.cadata.encode() if isinstance(tls.cadata, str) else tls.cadata
            qc.load_verify_locations(
                cafile=os.fspath(tls.cafile) if tls.cafile is not None else None,
                cadata=cadata,
            )
    return qc
