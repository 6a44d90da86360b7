"""Two rate-limited paths to two server namespaces (the multipath testbed).

The recipe of ``shared/research/multipath-anchor.md``: for each server ``i`` a network namespace
and a veth pair; the root end gets ``<subnet_i>.1/24``, the namespace end ``<subnet_i>.2/24``;
``tbf rate 20mbit burst 32kbit latency 50ms`` at the root of the server-side veth shapes the
server-to-client direction. The client runs in the root namespace. Addresses come from the
benchmarking range 198.18.0.0/15 (here 198.19.x.0/24, x picked so that no existing route
overlaps); names carry the process id so that concurrent runs do not collide.

:class:`Testbed` always cleans up (links, namespaces, processes left in them), also when setting
up fails half-way, on exceptions and on SIGTERM (the runner turns it into ``SystemExit``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

__all__ = ["Testbed", "TestbedError", "unavailable_reason"]

TBF = ("tbf", "rate", "20mbit", "burst", "32kbit", "latency", "50ms")


class TestbedError(RuntimeError):
    """The namespaces could not be built."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TestbedError(f"`{' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def unavailable_reason() -> str | None:
    """Why the testbed cannot be built here, or None when it probably can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    try:
        probe = _run("ip", "netns", "list", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable: {exc}"
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


class Testbed:
    """Context manager building ``paths`` namespaces, each behind a tbf-shaped veth.

    ``qdisc`` is the root qdisc put on every server-side veth (default: :data:`TBF`); None
    leaves the links unshaped (the fault suite's loss tests). ``name`` replaces ``kwb`` in the
    names of the links and namespaces, so that different users of the testbed never collide.
    """

    def __init__(
        self, paths: int = 2, *, qdisc: Sequence[str] | None = TBF, name: str = "kwb"
    ) -> None:
        tag = os.getpid() % 100000
        self.qdisc = tuple(qdisc) if qdisc is not None else None
        self.namespaces = [f"{name}{tag}n{i + 1}" for i in range(paths)]
        self._root_links = [f"{name}{tag}r{i + 1}" for i in range(paths)]
        self._ns_links = [f"{name}{tag}s{i + 1}" for i in range(paths)]
        self.subnets = self._pick_subnets(paths, tag)
        self._built = False

    @staticmethod
    def _pick_subnets(paths: int, tag: int) -> list[str]:
        routes = _run("ip", "-4", "route", "show", check=False).stdout
        for attempt in range(60):
            first = 100 + (tag + 2 * attempt) % 140
            candidates = [f"198.19.{first + i}" for i in range(paths)]
            if all(f"{c}." not in routes for c in candidates) and first + paths <= 250:
                return candidates
        raise TestbedError("no free 198.19.x.0/24 subnets")

    def server_host(self, index: int) -> str:
        """Address of server ``index`` (0-based) inside its namespace."""
        return f"{self.subnets[index]}.2"

    def prefix(self, index: int) -> list[str]:
        """Command prefix running a program in namespace ``index``."""
        return ["ip", "netns", "exec", self.namespaces[index]]

    def __enter__(self) -> Testbed:
        try:
            for i, ns in enumerate(self.namespaces):
                root, inner, net = self._root_links[i], self._ns_links[i], self.subnets[i]
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", root, "type", "veth", "peer", "name", inner)
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "addr", "add", f"{net}.1/24", "dev", root)
                _run("ip", "link", "set", root, "up")
                _run(*self.prefix(i), "ip", "addr", "add", f"{net}.2/24", "dev", inner)
                _run(*self.prefix(i), "ip", "link", "set", inner, "up")
                _run(*self.prefix(i), "ip", "link", "set", "lo", "up")
                if self.qdisc is not None:
                    _run(*self.prefix(i), "tc", "qdisc", "add", "dev", inner, "root", *self.qdisc)
            self._built = True
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def qdisc_stats(self) -> list[str]:
        """``tc -s qdisc`` of every server-side veth (for the record)."""
        out = []
        for i, inner in enumerate(self._ns_links):
            proc = _run(*self.prefix(i), "tc", "-s", "qdisc", "show", "dev", inner, check=False)
            out.append(proc.stdout.strip())
        return out

    def cleanup(self) -> None:
        """Remove everything this testbed created; never raises."""
        for i, ns in enumerate(self.namespaces):
            try:
                pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
                for pid in pids:  # only our own server workers can live in our namespace
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
                _run("ip", "link", "del", self._root_links[i], check=False)
                _run("ip", "netns", "del", ns, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._built = False
