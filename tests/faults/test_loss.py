"""Random packet loss between network namespaces: transfers stay byte-exact.

A primary and a relay server each run in their own network namespace (``ip netns exec``),
behind their own veth pair in 198.19.x.0/24; the client is this process, in the root
namespace. ``iptables -m statistic --mode random`` drops packets in both directions inside
a server's namespace. Every transfer uses default ``kwik.Config`` and is checked by SHA-256.
Needs root, ``ip netns`` and ``iptables`` (skipped with the reason otherwise).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from .lab import Certificates, LossLab, PeerProcess, loss_unavailable_reason
from .loss import download, split_download, upload

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        loss_unavailable_reason() is not None, reason=str(loss_unavailable_reason())
    ),
    pytest.mark.timeout(120),
]

MIB = 1024 * 1024
#: a few seconds per transfer at 5 % on a 2-core machine (about 1 MiB/s at 5 %, 3 at 1 %)
SIZE = 8 * MIB
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
    """The primary (namespace 0) and the relay (namespace 1), killed at teardown."""
    started: list[PeerProcess] = []
    try:
        for index in (0, 1):
            started.append(
                await PeerProcess.start(lab_certs.serve_args(lab.host(index)), lab.prefix(index))
            )
        yield started
    finally:
        for peer in started:
            await peer.stop()


def _report(what: str, percent: float, seconds: float) -> None:
    print(f"\n[faults] {what} {SIZE // MIB} MiB at {percent:g} % loss: {seconds:.2f} s")


@pytest.mark.parametrize("percent", [1, 5])
@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_transfer_under_loss_is_byte_exact(
    lab: LossLab, lab_certs: Certificates, servers: list[PeerProcess], direction: str, percent: int
) -> None:
    """Client -> server (upload) and server -> client (download) arrive byte-exact under
    random loss in both directions of the path."""
    primary = servers[0]
    transfer = upload if direction == "upload" else download
    with lab.loss(0, percent / 100):
        assert "kwik-faults-loss" in lab.rules(0)
        started = time.monotonic()
        async with _timeout():
            seconds = await transfer(primary.addr, lab_certs.client_tls(), SIZE, seed=percent)
        _report(direction, percent, seconds)
        assert time.monotonic() - started < TRANSFER_TIMEOUT
    assert "kwik-faults-loss" not in lab.rules(0)  # the rules are gone with the block


async def test_relay_transfer_under_loss_is_byte_exact(
    lab: LossLab, lab_certs: Certificates, servers: list[PeerProcess]
) -> None:
    """A download served half by the primary, half by a relay (odd 64 KiB chunks through
    ``add_relay``/``send_raw_data``), both paths losing 5 %, merges byte-exact."""
    primary, relay = servers
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
