"""Fixtures for the sans-IO protocol tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> Iterator[None]:
    """Override the session-level task-leak check: the sans-IO core never touches asyncio.

    The check in tests/conftest.py needs an event loop and a gc.collect() per test, which made
    this purely synchronous suite several times slower without checking anything.
    """
    yield
