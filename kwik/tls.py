"""TLS helpers: self-signed certificates for development and tests, and the engine-neutral
TLS material of a :class:`~kwik.TLSConfig`, read and checked before any packet is sent."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import TLSConfig

__all__ = ["TLSMaterial", "generate_self_signed_cert", "load_tls_material"]


def generate_self_signed_cert(
    hosts: Sequence[str] = ("localhost", "127.0.0.1"), *, days: int = 365
) -> tuple[bytes, bytes]:
    """Generate a self-signed certificate and its private key, both PEM-encoded.

    The certificate names every entry of ``hosts`` (DNS names or IP addresses) as a subject
    alternative name. It is a leaf (``CA:FALSE``, key usage digital signature, no extended key
    usage), signed by its own key, so a client trusts it with ``TLSConfig(cadata=cert_pem)`` on
    every engine: rustls (qh3) refuses a CA certificate used as a server's identity, and qh3
    does not take a certificate with an extended key usage as a trust anchor. For development
    and tests only.

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
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


@dataclass(frozen=True)
class TLSMaterial:
    """A :class:`~kwik.TLSConfig` read and checked: PEM bytes every engine loads the same way.

    ``certificate_chain`` and ``private_key`` are this side's identity (PEM, leaf first), or
    None; ``cadata`` the trust anchors (PEM) or None for the system store; ``verify`` False
    only with ``insecure_skip_verify``.
    """

    certificate_chain: bytes | None
    private_key: bytes | None
    cadata: bytes | None
    verify: bool
    server_name: str | None
    alpn_protocols: tuple[str, ...]


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"TLSConfig.{what}: cannot read {os.fspath(path)!r}: {exc}") from exc


def _pem_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{what}: not a PEM certificate ({exc})") from None
    if not chain:  # pragma: no cover - cryptography raises on an empty input
        raise ValueError(f"{what}: no PEM certificate in it")
    return chain


_KEY_MARKERS = (
    b"-----BEGIN PRIVATE KEY-----",
    b"-----BEGIN EC PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----",
)


def _split_key(data: bytes) -> tuple[bytes, bytes | None]:
    """A certfile may hold the key after the certificates (aioquic's convention)."""
    for marker in _KEY_MARKERS:
        at = data.find(marker)
        if at >= 0:
            return data[:at], data[at:]
    return data, None


def _check_key(data: bytes, what: str) -> bytes:
    try:
        serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: not an unencrypted PEM private key ({exc})") from None
    return data


def load_tls_material(tls: TLSConfig | None, *, is_server: bool) -> TLSMaterial:
    """Read and check every file and PEM blob of ``tls`` now, before any packet.

    Raises:
        TypeError: ``tls`` is not a :class:`~kwik.TLSConfig` (a server needs one).
        ValueError: a file cannot be read or is not PEM (the message names it), a key does not
            match its use, or a server has no identity.
    """
    if not isinstance(tls, TLSConfig):
        if is_server:
            raise TypeError(
                "a server needs a kwik.TLSConfig with an identity (certfile/keyfile or "
                f"certificate/private_key), got {type(tls).__name__}"
            )
        raise TypeError(f"tls_config must be a kwik.TLSConfig or None, got {type(tls).__name__}")
    chain: bytes | None = None
    key: bytes | None = None
    if tls.certfile is not None:
        name = f"TLSConfig.certfile {os.fspath(tls.certfile)!r}"
        chain, key = _split_key(_read(tls.certfile, "certfile"))
        _pem_certificates(chain, name)
        if tls.keyfile is not None:
            key = _read(tls.keyfile, "keyfile")
            name = f"TLSConfig.keyfile {os.fspath(tls.keyfile)!r}"
        if key is None:
            raise ValueError(f"{name}: no private key (give TLSConfig.keyfile)")
        _check_key(key, name)
    elif tls.certificate is not None:
        if tls.private_key is None:
            raise ValueError("TLSConfig.certificate needs TLSConfig.private_key")
        chain = bytes(tls.certificate)
        _pem_certificates(chain, "TLSConfig.certificate")
        key = _check_key(bytes(tls.private_key), "TLSConfig.private_key")
    elif is_server:
        raise ValueError(
            "a server needs an identity: TLSConfig.certfile/keyfile or certificate/private_key"
        )
    cadata: bytes | None = None
    if not is_server and not tls.insecure_skip_verify:
        parts: list[bytes] = []
        if tls.cafile is not None:
            data = _read(tls.cafile, "cafile")
            _pem_certificates(data, f"TLSConfig.cafile {os.fspath(tls.cafile)!r}")
            parts.append(data)
        if tls.cadata is not None:
            data = tls.cadata.encode() if isinstance(tls.cadata, str) else bytes(tls.cadata)
            _pem_certificates(data, "TLSConfig.cadata")
            parts.append(data)
        if parts:
            cadata = b"\n".join(parts)
    if not tls.alpn_protocols:
        raise ValueError("TLSConfig.alpn_protocols must name at least one protocol")
    return TLSMaterial(
        certificate_chain=chain,
        private_key=key,
        cadata=cadata,
        verify=not tls.insecure_skip_verify,
        server_name=tls.server_name,
        alpn_protocols=tuple(tls.alpn_protocols),
    )


def system_cadata() -> bytes | None:
    """The system trust store as PEM, for engines that need the anchors as data (None when
    Python's ``ssl`` knows no default file)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            try:
                with open(candidate, "rb") as file:
                    return file.read()
            except OSError:
                continue
    return None
