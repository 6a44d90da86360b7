"""Random packet loss between network namespaces: transfers stay byte-exact, and kwik stays
within 3x raw aioquic's time.

A primary and a relay server each run in their own network namespace (``ip netns exec``),
behind their own veth pair in 198.19.x.0/24; the raw aioquic server (:mod:`.rawquic`) runs
beside the primary, in its namespace; the client is this process, in the root namespace.
``iptables -m statistic --mode random`` drops packets in both directions inside a server's
namespace. Every kwik transfer uses default ``kwik.Config``, the raw aioquic one the same QUIC
settings, and each is checked by SHA-256. Needs root, ``ip netns`` and ``iptables`` (skipped
with the reason otherwise). 10 and 20 % are measured on demand::

    python -m tests.faults.loss --against-aioquic
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from .lab import Certificates, LossLab, PeerProcess, loss_unavailable_reason
from .loss import download, split_download, upload
from .rawquic import raw_download, raw_upload

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        loss_unavailable_reason() is not None, reason=str(loss_unavailable_reason())
    ),
    pytest.mark.timeout(120),
]

MIB = 1024 * 1024
#: issue 18's size: a few seconds per transfer at 5 % on a 2-core machine
SIZE = 4 * MIB
#: kwik may take at most this many times raw aioquic's time in the same conditions
RATIO = 3.0
#: generous bound a hang would break (the transfers take seconds)
TRANSFER_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def lab() -> Iterator[LossLab]:
    with LossLab(2) as built:
        yield built


@pytest.fixture(scope="module")
def lab_certs(lab: LossLab, tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("lab"), [lab.host(0), lab.host(1)])


@pytest.fixture
async def servers(lab: LossLab, lab_certs: Certificates) -> AsyncIterator[list[PeerProcess]]:
    """The primary (namespace 0), the relay (namespace 1) and the raw aioquic server
    (namespace 0, beside the primary), killed at teardown."""
    started: list[PeerProcess] = []
    try:
        for index in (0, 1):
            started.append(
                await PeerProcess.start(lab_certs.serve_args(lab.host(index)), lab.prefix(index))
            )
        started.append(
            await PeerProcess.start(
                lab_certs.serve_args(lab.host(0)), lab.prefix(0), module="tests.faults.rawquic"
            )
        )
        yield started
    finally:
        for peer in started:
            await peer.stop()


def _report(what: str, percent: float, seconds: float) -> None:
    print(f"\n[faults] {what} {SIZE // MIB} MiB at {percent:g} % loss: {seconds:.2f} s")


@pytest.mark.parametrize("percent", [1, 5])
@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_transfer_under_loss_is_byte_exact_and_within_3x_aioquic(
    lab: LossLab, lab_certs: Certificates, servers: list[PeerProcess], direction: str, percent: int
) -> None:
    """Client -> server (upload) and server -> client (download) arrive byte-exact under
    random loss in both directions of the path, over kwik and over raw aioquic in turn, in the
    same lab at the same loss; kwik takes at most 3x raw aioquic's time."""
    primary, _, raw = servers
    transfer = upload if direction == "upload" else download
    raw_transfer = raw_upload if direction == "upload" else raw_download
    with lab.loss(0, percent / 100):
        assert "kwik-faults-loss" in lab.rules(0)
        started = time.monotonic()
        async with _timeout():
            raw_seconds = await raw_transfer(raw.addr, lab_certs.cert_pem, SIZE, seed=percent)
        async with _timeout():
            seconds = await transfer(primary.addr, lab_certs.client_tls(), SIZE, seed=percent)
        print(
            f"\n[faults] {direction} {SIZE // MIB} MiB at {percent:g} % loss: kwik "
            f"{seconds:.2f} s, raw aioquic {raw_seconds:.2f} s ({seconds / raw_seconds:.2f}x)"
        )
        assert time.monotonic() - started < 2 * TRANSFER_TIMEOUT
    assert "kwik-faults-loss" not in lab.rules(0)  # the rules are gone with the block
    assert seconds <= RATIO * raw_seconds, (
        f"kwik took {seconds:.2f} s, more than {RATIO:g}x raw aioquic's {raw_seconds:.2f} s"
    )


async def test_relay_transfer_under_loss_is_byte_exact(
    lab: LossLab, lab_certs: Certificates, servers: list[PeerProcess]
) -> None:
    """A download served half by the primary, half by a relay (odd 64 KiB chunks through
    ``add_relay``/``send_raw_data``), both paths losing 5 %, merges byte-exact."""
    primary, relay, _ = servers
    with lab.loss(0, 0.05), lab.loss(1, 0.05):
        async with _timeout():
            seconds, paths = await split_download(
                primary.addr, relay.addr, lab_certs.client_tls(), SIZE, seed=7
            )
    _report("relay download", 5, seconds)
    assert [p.path_id for p in paths] == [1, 2]
    assert paths[1].address == relay.addr and not paths[1].is_primary
    for path in paths:  # each server carried about half of the file
        assert path.bytes_received > SIZE * 0.4, path


def _timeout() -> asyncio.Timeout:
    return asyncio.timeout(TRANSFER_TIMEOUT)


def test_lab_leaves_nothing_behind() -> None:
    """Building and tearing down a lab removes its namespace and links by name, also when
    the block fails."""
    with pytest.raises(RuntimeError, match="boom"), LossLab(1, name="kwg") as lab:
        namespace = lab.bed.namespaces[0]
        with lab.loss(0, 0.5):
            assert "kwik-faults-loss" in lab.rules(0)
            raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace not in listed.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert namespace.replace("n1", "r1") not in links
