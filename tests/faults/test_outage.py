"""Outages with the default ``kwik.Config``: silence is not death, and death is noticed.

* An 8 s blackout (every packet dropped in the server's namespace, both directions) fails no
  path, idle or busy: the idle session hears its next echo and echoes byte-exact afterwards,
  an upload and a download in progress finish byte-exact (:mod:`.blackout`). The idle
  blackout starts just before the client's next echo is due, its worst moment.
* A frozen server (SIGSTOP) and a vanished network (a blackout that never ends) fail the
  client's path within 20 s of the last datagram it received, idle or busy: three sessions
  (idle, an endless upload, an endless download), each to its own server process, share the
  fault, so both faults take one bound's time each.

The blackout tests need root, ``ip netns`` and ``iptables`` (skipped with the reason
otherwise); the SIGSTOP test runs on loopback. Figures are printed (``pytest -s``), and
``python -m tests.faults.blackout`` measures the largest blackout survived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

import kwik

from .blackout import MODES, Detection, Watched, blackout_trial, frozen
from .conftest import StartPeer
from .lab import Certificates, LossLab, PeerProcess, loss_unavailable_reason

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

needs_lab = pytest.mark.skipif(
    loss_unavailable_reason() is not None, reason=str(loss_unavailable_reason())
)

#: The issue's figures: silences up to this long never fail a path...
SURVIVED = 8.0
#: ...and a frozen or vanished peer fails its path within this long of its last datagram.
NOTICED = 20.0


@pytest.fixture(scope="module")
def lab() -> Iterator[LossLab]:
    with LossLab(1, name="kwo") as built:
        yield built


@pytest.fixture(scope="module")
def lab_certs(lab: LossLab, tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("outage"), [lab.host(0)])


@pytest.fixture
async def lab_servers(lab: LossLab, lab_certs: Certificates) -> AsyncIterator[list[PeerProcess]]:
    """One fault server per mode in the lab's namespace, killed at teardown (the blackout
    tests use the first)."""
    started: list[PeerProcess] = []
    try:
        for _ in MODES:
            started.append(
                await PeerProcess.start(lab_certs.serve_args(lab.host(0)), lab.prefix(0))
            )
        yield started
    finally:
        for peer in started:
            await peer.stop()


@needs_lab
@pytest.mark.parametrize("mode", MODES)
async def test_blackout_of_8_s_fails_no_path(
    lab: LossLab, lab_certs: Certificates, lab_servers: list[PeerProcess], mode: str
) -> None:
    """Total silence for 8 s, idle or in the middle of an upload or a download: the path
    survives on both sides and what was moving arrives byte-exact."""
    result = await blackout_trial(
        lab, 0, lab_servers[0].addr, lab_certs.client_tls(), mode, SURVIVED
    )
    print(
        f"\n[faults] blackout {result.outage:.2f} s, {mode}: {result.note}; the client's path "
        f"heard nothing for {result.silence:.2f} s"
    )
    assert result.survived, result
    assert result.outage >= SURVIVED
    assert lab.rules(0).count("kwik-faults-blackout") == 0  # the rules went with the blackout


async def _detect_all(
    servers: list[PeerProcess],
    tls: kwik.TLSConfig,
    fault: contextlib.AbstractContextManager[object],
    name: str,
) -> list[Detection]:
    """One session per mode, each to its own server; ``fault`` for all of them at once."""
    watched: list[Watched] = []
    try:
        for mode, server in zip(MODES, servers, strict=True):
            watched.append(await Watched.start(server.addr, tls, mode))
        with fault:
            for one in watched:
                one.fault_began()
            return list(
                await asyncio.gather(*(one.detection(name, NOTICED + 10) for one in watched))
            )
    finally:
        for one in watched:
            await one.close()


def _check(detections: list[Detection], what: str) -> None:
    for found in detections:
        if found.since_fault is None:
            print(f"\n[faults] {what}, {found.mode}: not detected")
        else:
            print(
                f"\n[faults] {what}, {found.mode}: path failed {found.since_fault:.2f} s after "
                f"the fault, {found.since_last_datagram:.2f} s after the last datagram "
                f"({found.reason})"
            )
    for found in detections:
        assert found.since_last_datagram is not None, f"{what}, {found.mode}: never detected"
        assert found.since_last_datagram <= NOTICED, found
        assert found.reason.startswith("failed"), found  # kwik failed it (no CONNECTION_CLOSE)


async def test_frozen_server_is_noticed(peers: StartPeer, certs: Certificates) -> None:
    """SIGSTOP of the server of an idle session, of one uploading and of one downloading:
    each client path fails within 20 s of the last datagram it received (the servers are
    thawed, then killed)."""
    servers = [await peers(certs.serve_args()) for _ in MODES]

    @contextlib.contextmanager
    def freeze_all() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for server in servers:
                stack.enter_context(frozen(server))
            yield

    detections = await _detect_all(servers, certs.client_tls(), freeze_all(), "SIGSTOP")
    _check(detections, "server frozen (SIGSTOP)")


@needs_lab
async def test_vanished_network_is_noticed(
    lab: LossLab, lab_certs: Certificates, lab_servers: list[PeerProcess]
) -> None:
    """A blackout that does not end (the network vanished), idle, uploading and downloading:
    each client path fails within 20 s of the last datagram it received."""
    detections = await _detect_all(
        lab_servers, lab_certs.client_tls(), lab.blackout(0), "blackout without end"
    )
    _check(detections, "network vanished (endless blackout)")
