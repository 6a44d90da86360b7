"""AddPath address policy: scope classification, same-scope rules and checked resolution."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import kwik
from kwik._scope import (
    AddressRefusedError,
    ResolvedAddress,
    Scope,
    allowed_scopes,
    classify,
    resolve_relay_address,
)

L, P, G, F = Scope.LOOPBACK, Scope.PRIVATE, Scope.GLOBAL, Scope.FORBIDDEN

CLASSIFICATION = [
    # loopback
    ("127.0.0.1", L),
    ("127.255.255.254", L),
    ("::1", L),
    ("::ffff:127.0.0.1", L),
    # private: RFC 1918, CGNAT, benchmarking, ULA
    ("10.0.0.1", P),
    ("10.255.255.255", P),
    ("172.16.0.1", P),
    ("172.31.255.254", P),
    ("192.168.1.1", P),
    ("100.64.0.1", P),
    ("100.127.255.254", P),
    ("198.18.0.1", P),
    ("198.19.255.254", P),
    ("fc00::1", P),
    ("fd12:3456::1", P),
    ("::ffff:10.1.2.3", P),
    # global
    ("8.8.8.8", G),
    ("1.1.1.1", G),
    ("172.32.0.1", G),  # just outside 172.16/12
    ("100.128.0.1", G),  # just outside 100.64/10
    ("198.20.0.1", G),  # just outside 198.18/15
    ("2606:4700:4700::1111", G),
    ("::ffff:8.8.8.8", G),
    ("64:ff9b::808:808", G),  # NAT64 of 8.8.8.8
    # never
    ("169.254.169.254", F),  # cloud metadata
    ("169.254.0.1", F),
    ("fe80::1", F),
    ("fe80::1%eth0", F),
    ("224.0.0.1", F),
    ("239.255.255.250", F),
    ("ff02::1", F),
    ("ff0e::1", F),
    ("0.0.0.0", F),
    ("0.1.2.3", F),
    ("::", F),
    ("255.255.255.255", F),
    ("240.0.0.1", F),
    ("192.0.2.1", F),  # documentation
    ("2001:db8::1", F),  # documentation
    ("fec0::1", F),  # deprecated site-local
    ("::ffff:169.254.169.254", F),  # mapped metadata address
    ("64:ff9b::a9fe:a9fe", F),  # NAT64 of 169.254.169.254
    ("64:ff9b::7f00:1", L),  # NAT64 of 127.0.0.1: judged as loopback, never global
]


@pytest.mark.parametrize(("address", "scope"), CLASSIFICATION)
def test_classify(address: str, scope: Scope) -> None:
    """Each address falls in the scope the module docstring's table gives."""
    assert classify(address) is scope


def test_classify_rejects_names() -> None:
    with pytest.raises(ValueError):
        classify("localhost")


@pytest.mark.parametrize(
    ("primary", "allowed"),
    [
        ("127.0.0.1", {L}),
        ("::1", {L}),
        ("192.168.0.10", {P, G}),
        ("198.18.0.1", {P, G}),
        ("fd00::1", {P, G}),
        ("8.8.4.4", {G}),
        ("2606:4700::1", {G}),
        ("fe80::2", {P, G}),  # a link-local primary counts as private
    ],
)
def test_allowed_scopes(primary: str, allowed: set[Scope]) -> None:
    """Same scope: loopback -> loopback; private -> private or global; global -> global;
    never forbidden."""
    assert allowed_scopes(primary) == allowed
    assert F not in allowed_scopes(primary)


# --- resolution ---------------------------------------------------------------------------------


def resolve(address: str, primary: str, **kwargs: Any) -> ResolvedAddress | AddressRefusedError:
    """Run resolve_relay_address; return its result or the refusal raised."""

    async def run() -> ResolvedAddress | AddressRefusedError:
        try:
            return await resolve_relay_address(address, primary, **kwargs)
        except AddressRefusedError as exc:
            return exc

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("address", "primary", "ok"),
    [
        ("127.0.0.1:4433", "127.0.0.1", True),
        ("[::1]:4433", "127.0.0.1", True),
        ("localhost:4433", "127.0.0.1", True),
        ("127.0.0.1:22", "10.0.0.5", False),  # a private primary cannot name loopback
        ("127.0.0.1:22", "8.8.8.8", False),
        ("10.0.0.7:4433", "10.0.0.5", True),
        ("8.8.8.8:4433", "10.0.0.5", True),
        ("8.8.8.8:4433", "127.0.0.1", False),  # loopback names loopback only
        ("10.0.0.7:4433", "8.8.8.8", False),  # a global primary cannot reach into a LAN
        ("198.18.0.2:4433", "8.8.8.8", False),
        ("1.1.1.1:4433", "8.8.8.8", True),
        ("169.254.169.254:80", "10.0.0.5", False),
        ("169.254.169.254:80", "127.0.0.1", False),
        ("[fe80::1]:4433", "fe80::2", False),
        ("224.0.0.1:4433", "10.0.0.5", False),
        ("0.0.0.0:4433", "127.0.0.1", False),
        ("255.255.255.255:4433", "10.0.0.5", False),
        ("[::ffff:127.0.0.1]:4433", "8.8.8.8", False),
        ("127.0.0.1:4433", "::ffff:127.0.0.1", True),
    ],
)
def test_scope_check_on_literal_and_local_names(address: str, primary: str, ok: bool) -> None:
    """Literal addresses and 'localhost' are resolved (no external DNS) and judged by scope."""
    result = resolve(address, primary, timeout=5.0)
    if ok:
        assert not isinstance(result, AddressRefusedError), result
    else:
        assert isinstance(result, AddressRefusedError)
        assert isinstance(result, kwik.PathError)
        assert "not allowed" in result.reason


def test_result_is_a_checked_socket_address() -> None:
    """The result names one concrete address to dial plus the host for verification."""
    result = resolve("localhost:4433", "127.0.0.1", timeout=5.0)
    assert not isinstance(result, AddressRefusedError)
    assert result.host == "localhost"
    assert result.port == 4433
    assert result.family == socket.AF_INET  # primary's family
    assert result.sockaddr == ("127.0.0.1", 4433)
    assert classify(result.ip) is Scope.LOOPBACK
    v6 = resolve("[::1]:5000", "::1", timeout=5.0)
    assert not isinstance(v6, AddressRefusedError)
    assert v6.family == socket.AF_INET6
    assert v6.sockaddr[:2] == ("::1", 5000)


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to one allowed and one forbidden address is refused as a whole
    (DNS rebinding); the order of the answers does not matter."""
    answers = [
        (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("8.8.8.8", 4433)),
        (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("169.254.169.254", 4433)),
    ]

    async def fake_getaddrinfo(self: object, host: str, port: int, **kwargs: object) -> object:
        assert host == "rebind.example"
        return answers

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_getaddrinfo)
    for order in (answers, answers[::-1]):
        answers[:] = order
        refused = resolve("rebind.example:4433", "10.0.0.5", timeout=5.0)
        assert isinstance(refused, AddressRefusedError)
        assert "169.254.169.254" in refused.reason
    both = list(answers)
    answers[:] = [a for a in both if a[4][0] == "8.8.8.8"]
    accepted = resolve("rebind.example:4433", "10.0.0.5", timeout=5.0)
    assert not isinstance(accepted, AddressRefusedError)
    assert accepted.sockaddr == ("8.8.8.8", 4433)
    answers[:] = both
    unchecked = resolve("rebind.example:4433", "10.0.0.5", timeout=5.0, scope_check=False)
    assert not isinstance(unchecked, AddressRefusedError)  # the check can be turned off
    assert unchecked.ip in ("8.8.8.8", "169.254.169.254")


def test_resolution_is_bounded_by_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that never answers is given up on after ``timeout``: the name is refused."""

    async def hang(self: object, *args: object, **kwargs: object) -> object:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", hang)

    async def run() -> object:
        try:
            async with asyncio.timeout(5.0):
                return await resolve_relay_address("slow.example:1", "10.0.0.5", timeout=0.05)
        except AddressRefusedError as exc:
            return exc

    result = asyncio.run(run())
    assert isinstance(result, AddressRefusedError)
    assert "within" in result.reason


def test_unresolvable_name_is_refused() -> None:
    """A name the resolver fails on (invalid label: no network query) is refused."""
    result = resolve("bad..name.invalid:4433", "127.0.0.1", timeout=5.0)
    assert isinstance(result, AddressRefusedError)
    assert "not resolved" in result.reason


@pytest.mark.parametrize("address", ["nope", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:0"])
def test_malformed_address_is_refused(address: str) -> None:
    result = resolve(address, "127.0.0.1", timeout=5.0)
    assert isinstance(result, AddressRefusedError)


def test_user_policy_consulted_before_resolving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config.path_policy sees the address string first; a refusal never reaches the resolver,
    an exception counts as a refusal, and an approval still goes through the scope check."""
    looked_up: list[str] = []
    real = asyncio.BaseEventLoop.getaddrinfo

    async def spy(self: asyncio.BaseEventLoop, host: str, *args: Any, **kw: Any) -> object:
        looked_up.append(host)
        return await real(self, host, *args, **kw)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", spy)
    seen: list[str] = []

    def deny(address: str) -> bool:
        seen.append(address)
        return False

    def boom(address: str) -> bool:
        raise RuntimeError("policy bug")

    refused = resolve("localhost:4433", "127.0.0.1", policy=deny, timeout=5.0)
    assert isinstance(refused, AddressRefusedError) and refused.reason == "path_policy"
    assert seen == ["localhost:4433"]
    assert looked_up == []
    refused = resolve("localhost:4433", "127.0.0.1", policy=boom, timeout=5.0)
    assert isinstance(refused, AddressRefusedError) and refused.reason == "path_policy"
    refused = resolve("10.0.0.1:4433", "127.0.0.1", policy=lambda a: True, timeout=5.0)
    assert isinstance(refused, AddressRefusedError) and "not allowed" in refused.reason
    ok = resolve("127.0.0.1:4433", "127.0.0.1", policy=lambda a: True, timeout=5.0)
    assert not isinstance(ok, AddressRefusedError)


def test_config_knobs() -> None:
    """The AddPath knobs default to the safe side and are validated."""
    config = kwik.Config()
    assert config.path_scope_check is True
    assert config.relay_insecure_skip_verify is False
    assert config.path_resolve_timeout > 0
    assert config.max_ack_ranges >= 1
    with pytest.raises(ValueError):
        kwik.Config(path_resolve_timeout=0)
    with pytest.raises(ValueError):
        kwik.Config(max_ack_ranges=0)
