"""Processes: start server workers, run a client worker, stop everything, account for CPU.

Every sample runs in fresh processes: the servers first (each prints ``READY``), then one
client, whose ``RESULT`` line is the sample. The machine is shared, so each sample also records
``foreign_cores``: CPU used on the machine during the client's run by processes other than the
benchmark's own (from ``/proc/stat`` minus our processes' CPU time), in cores. Before a sample
the harness can wait a little for other load to calm down (:func:`wait_for_quiet`).
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HarnessError", "Server", "ServerSpec", "run_sample", "wait_for_quiet"]

#: Directory holding the ``benchmarks`` package (put on the workers' PYTHONPATH).
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class HarnessError(RuntimeError):
    """A worker failed, timed out or answered nonsense."""


@dataclass
class ServerSpec:
    """A server worker to start, optionally behind a command prefix (``ip netns exec NS``)."""

    spec: dict[str, Any]
    prefix: Sequence[str] = ()
    #: write a cProfile of the worker to this file
    profile: str | None = None


@dataclass
class Server:
    """A running server worker."""

    proc: subprocess.Popen[bytes]
    addr: str
    stderr: Any
    pid: int

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + path if path else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _command(spec: dict[str, Any], prefix: Sequence[str], profile: str | None = None) -> list[str]:
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", profile]
    return [*prefix, *python, "-m", "benchmarks.worker", json.dumps(spec)]


def _tail(handle: Any, limit: int = 2000) -> str:
    handle.flush()
    handle.seek(0)
    text: str = handle.read().decode(errors="replace")
    return text[-limit:].strip()


def start_server(server: ServerSpec, timeout: float = 30.0) -> Server:
    """Start a server worker and wait for its READY line.

    Raises:
        HarnessError: it exited or said nothing within ``timeout``.
    """
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        _command(server.spec, server.prefix, server.profile),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_env(),
        cwd=PACKAGE_ROOT,
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise HarnessError(f"server gave no READY line within {timeout} s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise HarnessError(f"server exited ({proc.wait()}): {_tail(stderr)}")
            line += chunk
    except BaseException:
        Server(proc, "", stderr, proc.pid).stop(timeout=1)
        raise
    finally:
        selector.close()
    tag, _, payload = line.decode().strip().partition(" ")
    if tag != "READY":
        Server(proc, "", stderr, proc.pid).stop(timeout=1)
        raise HarnessError(f"server said {line!r}")
    info = json.loads(payload)
    return Server(proc, info["addr"], stderr, int(info["pid"]))


# --- CPU accounting -----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    """CPU seconds spent by everything on the machine (user + nice + system), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / _TICK


def _process_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def foreign_load(interval: float = 0.25) -> float | None:
    """Cores used by other processes over ``interval`` seconds (None where unknown)."""
    before, own_before = _busy_seconds(), _self_seconds()
    time.sleep(interval)
    after, own_after = _busy_seconds(), _self_seconds()
    if before is None or after is None:
        return None
    return max(0.0, (after - before) - (own_after - own_before)) / interval


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float | None:
    """Wait up to ``max_wait`` seconds until other processes use less than ``threshold``
    cores; return the last load measured."""
    deadline = time.monotonic() + max_wait
    load = foreign_load()
    while load is not None and load > threshold and time.monotonic() < deadline:
        load = foreign_load()
    return load


@dataclass
class Sample:
    """One client run: its RESULT payload and how busy the machine was meanwhile."""

    result: dict[str, Any]
    wall_seconds: float
    foreign_cores: float | None
    #: CPU seconds of the client process (whole life) and of the servers during its run
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    servers: list[str] = field(default_factory=list)


def run_sample(
    servers: Sequence[ServerSpec],
    client_spec: dict[str, Any],
    timeout: float,
    profile: str | None = None,
) -> Sample:
    """Start ``servers``, run one client against them, stop the servers.

    The client spec gets ``addr`` (the first server) and ``addrs`` (all of them) filled in.
    With ``profile``, the client runs under cProfile and writes its profile there.

    Raises:
        HarnessError: a worker failed or timed out.
    """
    running: list[Server] = []
    try:
        for server in servers:
            running.append(start_server(server))
        spec = dict(client_spec)
        spec["addrs"] = [s.addr for s in running]
        spec["addr"] = running[0].addr
        spec["timeout"] = timeout
        busy0, children0, self0 = _busy_seconds(), _children_seconds(), _self_seconds()
        servers0 = sum(_process_seconds(s.pid) for s in running)
        start = time.monotonic()
        with tempfile.TemporaryFile() as stderr:
            client = subprocess.Popen(
                _command(spec, (), profile),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=_env(),
                cwd=PACKAGE_ROOT,
            )
            try:
                out, _ = client.communicate(timeout=timeout + 15)
            except subprocess.TimeoutExpired:
                client.kill()
                client.communicate()
                raise HarnessError(
                    f"client timed out after {timeout + 15:.0f} s: {_tail(stderr)}"
                ) from None
            except BaseException:  # interrupted (SIGTERM, Ctrl-C): leave no client behind
                client.kill()
                client.wait()
                raise
            wall = time.monotonic() - start
            busy1, children1, self1 = _busy_seconds(), _children_seconds(), _self_seconds()
            servers1 = sum(_process_seconds(s.pid) for s in running)
            lines = out.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
            tag, _, payload = last.partition(" ")
            if client.returncode != 0 or tag != "RESULT":
                detail = json.loads(payload)["error"] if tag == "ERROR" else last
                raise HarnessError(
                    f"client failed ({client.returncode}): {detail}\n{_tail(stderr)}"
                )
        foreign = None
        if busy0 is not None and busy1 is not None and wall > 0:
            own = (children1 - children0) + (servers1 - servers0) + (self1 - self0)
            foreign = round(max(0.0, (busy1 - busy0) - own) / wall, 3)
        return Sample(
            json.loads(payload),
            wall,
            foreign,
            client_cpu=round(children1 - children0, 3),
            server_cpu=round(servers1 - servers0, 3),
            servers=[s.addr for s in running],
        )
    finally:
        for started in running:
            started.stop()
