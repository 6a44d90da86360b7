"""Fixtures of the fault suite: peer processes that are always killed, and certificates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from .lab import Certificates, PeerProcess

StartPeer = Callable[..., Awaitable[PeerProcess]]


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    """A certificate for loopback servers (files for peer processes, PEM for in-process use)."""
    return Certificates(tmp_path, ["localhost", "127.0.0.1"])


@pytest.fixture
async def peers() -> AsyncIterator[StartPeer]:
    """``await start(args, prefix=())`` starts a peer process; all are killed at teardown."""
    started: list[PeerProcess] = []

    async def start(args: Sequence[str], prefix: Sequence[str] = ()) -> PeerProcess:
        peer = await PeerProcess.start(args, prefix)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            await peer.stop()
