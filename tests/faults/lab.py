"""The fault suite's machinery: peer processes, certificates, namespaces with random loss.

* :class:`PeerProcess`: one ``python -m tests.faults.peer`` process (or another module's, e.g.
  the raw aioquic server of :mod:`.rawquic`), optionally inside a network namespace, its ready
  line parsed, frozen and thawed on demand (SIGSTOP, SIGCONT), always killed and reaped by
  :meth:`PeerProcess.stop`.
* :class:`LossLab`: ``servers`` network namespaces, each behind its own unshaped veth pair in
  198.18.0.0/15 (built by :class:`benchmarks.netns.Testbed`); the client stays in the root
  namespace. :meth:`LossLab.loss` installs ``iptables -m statistic --mode random`` DROP rules in
  both directions inside a server namespace, :meth:`LossLab.blackout` rules dropping every
  packet (total silence); both remove their rules by their exact spec afterwards, and deleting
  the namespaces (always, in ``__exit__``) removes anything left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import kwik
from benchmarks import netns

__all__ = [
    "REPO_ROOT",
    "Certificates",
    "LossLab",
    "Outage",
    "PeerProcess",
    "loss_unavailable_reason",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Tag of every iptables rule this module adds (rules are removed by their exact spec).
RULE_COMMENT = "kwik-faults-loss"
#: Tag of the rules of a blackout (every packet dropped).
BLACKOUT_COMMENT = "kwik-faults-blackout"


class Certificates:
    """One self-signed certificate naming ``hosts``, as PEM bytes and as files in ``directory``."""

    def __init__(self, directory: Path, hosts: Sequence[str]) -> None:
        self.cert_pem, self.key_pem = kwik.generate_self_signed_cert(list(hosts))
        self.cert_file = directory / "cert.pem"
        self.key_file = directory / "key.pem"
        self.cert_file.write_bytes(self.cert_pem)
        self.key_file.write_bytes(self.key_pem)

    def server_tls(self) -> kwik.TLSConfig:
        return kwik.TLSConfig(certificate=self.cert_pem, private_key=self.key_pem)

    def client_tls(self) -> kwik.TLSConfig:
        return kwik.TLSConfig(cadata=self.cert_pem)

    def serve_args(self, host: str = "127.0.0.1") -> list[str]:
        """Arguments of ``peer serve`` on ``host`` with this identity."""
        return ["serve", "--host", host, "--cert", str(self.cert_file), "--key", str(self.key_file)]


class PeerProcess:
    """A running ``python -m tests.faults.peer`` process (or ``python -m <module>``).

    :meth:`start` waits (bounded) for its first JSON line, kept in :attr:`ready`; stderr goes to
    a temporary file whose tail failure messages quote. :meth:`stop` kills and reaps it and
    never raises.
    """

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Any, args: Sequence[str]) -> None:
        self.proc = proc
        self._stderr = stderr
        self.args = list(args)
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addr(self) -> str:
        return str(self.ready["addr"])

    @classmethod
    async def start(
        cls,
        args: Sequence[str],
        prefix: Sequence[str] = (),
        timeout: float = 30.0,
        *,
        module: str = "tests.faults.peer",
    ) -> PeerProcess:
        stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            module,
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
            env=env,
        )
        peer = cls(proc, stderr, args)
        try:
            peer.ready = await peer.read_message(timeout)
        except BaseException:
            await peer.stop()
            raise
        return peer

    async def read_message(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the process prints (within ``timeout`` seconds)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"peer {self.args} exited ({code}): {self.stderr_tail()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def stderr_text(self) -> str:
        """Everything the process wrote on stderr so far (its log lines)."""
        self._stderr.seek(0)
        text: str = self._stderr.read().decode(errors="replace")
        return text

    def stderr_tail(self, limit: int = 2000) -> str:
        return self.stderr_text()[-limit:]

    def kill(self) -> None:
        """SIGKILL, as ``kill -9`` would (the process gets no chance to say goodbye)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process stops dead, its sockets stay open (a frozen peer)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)

    async def stop(self) -> None:
        """Kill the process if it still runs (frozen or not) and reap it."""
        if self.proc.returncode is None:
            self.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.proc.wait()
        self._stderr.close()

    def vm_hwm_kib(self) -> int | None:
        """The process's peak resident set (VmHWM) in KiB, None once it is gone."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


def loss_unavailable_reason() -> str | None:
    """Why :class:`LossLab` cannot run here, or None when it probably can."""
    reason = netns.unavailable_reason()
    if reason is not None:
        return reason
    if shutil.which("iptables") is None:
        return "`iptables` is not installed (apt-get install iptables; .ci/run installs it)"
    return None


@dataclass
class Outage:
    """When a :meth:`LossLab.blackout` began and ended (``time.monotonic()``): every packet
    was dropped at least from :attr:`began` (both rules in place) to :attr:`ended` (before
    the first rule was removed); :attr:`ended` is None while the blackout lasts."""

    began: float
    ended: float | None = None

    @property
    def seconds(self) -> float:
        """How long the blackout has lasted (at least)."""
        end = self.ended if self.ended is not None else time.monotonic()
        return end - self.began


class LossLab:
    """``servers`` namespaces behind unshaped veth pairs; the client is in the root namespace.

    Usable as a (synchronous) context manager; cleanup never raises and always removes every
    link and namespace, also when building fails half-way.
    """

    def __init__(self, servers: int = 2, *, name: str = "kwf") -> None:
        self.bed = netns.Testbed(servers, qdisc=None, name=name)

    def __enter__(self) -> LossLab:
        self.bed.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bed.cleanup()

    def host(self, index: int) -> str:
        """Address of server ``index`` inside its namespace."""
        return self.bed.server_host(index)

    def prefix(self, index: int) -> list[str]:
        """Command prefix running a program inside namespace ``index``."""
        return self.bed.prefix(index)

    @staticmethod
    def _rules(probability: float) -> list[list[str]]:
        spec = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            f"{probability:.4f}",
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            "DROP",
        ]
        return [["INPUT", *spec], ["OUTPUT", *spec]]

    @contextlib.contextmanager
    def loss(self, index: int, probability: float) -> Iterator[None]:
        """Drop each packet entering and each packet leaving namespace ``index`` with
        ``probability`` (so both directions of every path to it), for the ``with`` block."""
        added: list[list[str]] = []
        try:
            for rule in self._rules(probability):
                self._iptables(index, "-A", rule)
                added.append(rule)
            yield
        finally:
            for rule in added:
                with contextlib.suppress(netns.TestbedError, OSError, subprocess.SubprocessError):
                    self._iptables(index, "-D", rule)

    @contextlib.contextmanager
    def blackout(self, index: int) -> Iterator[Outage]:
        """Drop every packet entering and leaving namespace ``index`` for the ``with`` block:
        total silence on every path to it, as when a network vanishes. The rules go first in
        their chains, ahead of any loss rules; the :class:`Outage` yielded records when the
        silence began and ended."""
        spec = ["-m", "comment", "--comment", BLACKOUT_COMMENT, "-j", "DROP"]
        added: list[list[str]] = []
        outage = Outage(began=time.monotonic())
        try:
            for chain in ("INPUT", "OUTPUT"):
                self._iptables(index, "-I", [chain, "1", *spec])
                added.append([chain, *spec])
            outage.began = time.monotonic()
            yield outage
        finally:
            outage.ended = time.monotonic()
            for rule in added:
                with contextlib.suppress(netns.TestbedError, OSError, subprocess.SubprocessError):
                    self._iptables(index, "-D", rule)

    def _iptables(self, index: int, action: str, rule: list[str]) -> None:
        netns._run(*self.prefix(index), "iptables", action, *rule)

    def rules(self, index: int) -> str:
        """``iptables -S`` inside namespace ``index`` (for checks and failure messages)."""
        return netns._run(*self.prefix(index), "iptables", "-S", check=False).stdout
