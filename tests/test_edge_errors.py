"""Errors at the edge name their cause at once (issue 19): TLS files, DNS, a missing server
identity, port 0, a busy address, and the engine's own log lines on a refused certificate."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import kwik

from .conftest import CERT, KEY

SERVER_TLS = kwik.TLSConfig(certificate=CERT, private_key=KEY)


async def _fails_fast(call: object, exc: type[BaseException], match: str) -> BaseException:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(exc, match=match) as info:
        async with asyncio.timeout(5):
            await call  # type: ignore[misc]
    assert loop.time() - started < 1.0, "the error came late: after packets, not before"
    return info.value


async def test_missing_cafile_fails_at_once_naming_it() -> None:
    tls = kwik.TLSConfig(cafile="missing.pem")
    await _fails_fast(kwik.dial_addr("127.0.0.1:9", tls), ValueError, "cafile.*'missing.pem'")


async def test_non_pem_cafile_fails_at_once_naming_it(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("this is not a certificate\n")
    tls = kwik.TLSConfig(cafile=bogus)
    await _fails_fast(kwik.dial_addr("127.0.0.1:9", tls), ValueError, f"{bogus}.*not a PEM")


async def test_bad_certfile_fails_at_listen_naming_it(tmp_path: Path) -> None:
    missing = kwik.TLSConfig(certfile=tmp_path / "nope.pem", keyfile=tmp_path / "nope.key")
    await _fails_fast(kwik.listen_addr("127.0.0.1:0", missing), ValueError, "nope.pem")
    (tmp_path / "cert.pem").write_bytes(CERT)
    (tmp_path / "key.pem").write_text("garbage")
    bad_key = kwik.TLSConfig(certfile=tmp_path / "cert.pem", keyfile=tmp_path / "key.pem")
    await _fails_fast(kwik.listen_addr("127.0.0.1:0", bad_key), ValueError, "key.pem.*private key")


async def test_listen_without_tls_config_says_a_server_needs_one() -> None:
    with pytest.raises(TypeError, match="server needs a kwik.TLSConfig with an identity"):
        await kwik.listen_addr("127.0.0.1:0", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server needs an identity"):
        await kwik.listen_addr("127.0.0.1:0", kwik.TLSConfig())


async def test_dial_port_zero_is_refused_at_once() -> None:
    await _fails_fast(
        kwik.dial_addr("127.0.0.1:0", kwik.TLSConfig(insecure_skip_verify=True)),
        ValueError,
        "port 0 cannot be dialed",
    )


async def test_dns_failure_is_a_resolution_failure() -> None:
    error = await _fails_fast(
        kwik.dial_addr("no-such-host.invalid:4433", kwik.TLSConfig(insecure_skip_verify=True)),
        kwik.HandshakeError,
        "'no-such-host.invalid'.*does not resolve",
    )
    assert "refused" not in str(error)
    assert isinstance(error.__cause__, socket.gaierror)


def test_cli_connect_prints_the_resolution_failure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kwik", "connect", "no-such-host.invalid:4433", "--insecure"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "does not resolve" in err and "no-such-host.invalid" in err
    assert "refused" not in err


async def test_busy_address_names_it_and_keeps_the_errno() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            await kwik.listen_addr(f"127.0.0.1:{port}", SERVER_TLS)
    finally:
        holder.close()
    assert info.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in str(info.value) and "in use" in str(info.value)


async def test_refused_certificate_does_not_log_the_engine_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate the client refuses: kwik's HandshakeError says why; the engine's own
    WARNING saying the same ("Error: 298, reason: ...") is demoted to DEBUG, still there for
    whoever turns the ``quic`` logger on."""
    caplog.set_level(logging.DEBUG, logger="quic")
    config = kwik.Config(handshake_timeout=5.0)
    async with asyncio.timeout(20):
        listener = await kwik.listen_addr("127.0.0.1:0", SERVER_TLS, config)
        with pytest.raises(kwik.HandshakeError):
            # the system trust store does not know a self-signed certificate
            await kwik.dial_addr(listener.addr, kwik.TLSConfig(), config)
        await listener.close()
    engine_records = [r for r in caplog.records if r.name == "quic"]
    loud = [r for r in engine_records if r.levelno > logging.DEBUG]
    assert loud == [], [r.getMessage() for r in loud]
    if config.engine == "aioquic":
        # aioquic logs the refusal on the client's connection; it is still there, at DEBUG
        assert any("298" in r.getMessage() for r in engine_records)
