"""Outages: total silence on a path (a blackout), a frozen peer, and how kwik rides them out.

Two kinds of trial, each on a new single-path session to a :mod:`tests.faults.peer` server with
default ``kwik.Config`` (the client is this process):

* :func:`blackout_trial`: the path goes completely silent for a while (:meth:`LossLab.blackout`
  drops every packet in the server's namespace), idle or in the middle of an upload or a
  download, then the network comes back. The path must not fail: an idle one must hear its
  next KWIK echo and echo a stream byte-exact, a busy one must finish its transfer byte-exact.
  An idle blackout begins just before the next echo is due (``interval - 0.1`` s after one),
  the worst moment for the client, whose evidence of life is the echo; a busy one as soon as
  1 MiB has moved (data records are evidence too, so the moment matters little).
* :func:`detection_trial`: the server is frozen (SIGSTOP), or the network vanishes for good (a
  blackout that does not end), idle or busy; the time until the client's path fails is
  measured from the fault and from the last datagram the client's path received.

The last-datagram clock is kwik's own (the path's :class:`kwik.protocol.Liveness`, an internal
the figures read but never change); the longest silence a trial's path saw is sampled from it
every 10 ms.

Measuring (root only): the largest blackout each of idle, upload and download survives, by
bisection between ``--low`` and ``--high`` (one trial per probe: the figure is one sample of a
random process, not a guarantee), and with ``--detect`` the detection times::

    python -m tests.faults.blackout
    python -m tests.faults.blackout --modes idle --low 10 --high 14 --resolution 0.1 --detect
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kwik
from kwik.protocol import Liveness

from .lab import Certificates, LossLab, PeerProcess, loss_unavailable_reason
from .loss import download_over, upload_over
from .peer import CHUNK, echo_over, pattern, request

__all__ = [
    "MODES",
    "BlackoutResult",
    "Detection",
    "SilenceWatch",
    "Watched",
    "blackout_trial",
    "detection_trial",
    "path_liveness",
]

MIB = 1024 * 1024
MODES = ("idle", "upload", "download")
#: A transfer long enough to still be running when its blackout begins (1 MiB in).
BUSY_SIZE = 16 * MIB
ENDLESS = 1 << 40
#: Bound of every wait that is not the fault itself (a hang fails the trial instead).
WAIT = 60.0


def path_liveness(session: kwik.Session, path_id: int = 1) -> Liveness:
    """The liveness state of a path of ``session`` (kwik internals, read only)."""
    liveness: Liveness = session._core._paths[path_id].liveness
    return liveness


class SilenceWatch:
    """Samples a path's last-datagram clock every 10 ms, from the ``with`` block's start to its
    end: :attr:`longest` is the longest the path went without a datagram."""

    def __init__(self, liveness: Liveness) -> None:
        self.liveness = liveness
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.longest = max(self.longest, loop.time() - self.liveness._last_datagram)
            await asyncio.sleep(0.01)

    def __enter__(self) -> SilenceWatch:
        self._task = asyncio.ensure_future(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


class PathEnd:
    """Records when (``loop.time()``) and how the session's primary path ended."""

    def __init__(self, session: kwik.Session) -> None:
        self.at: float | None = None
        self.info: kwik.PathInfo | None = None
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        session.add_path_closed_callback(self._ended)

    def _ended(self, info: kwik.PathInfo) -> None:
        if self.at is None:
            self.at = self._loop.time()
            self.info = info
            self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Whether the path ended within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        return self.at is not None

    @property
    def reason(self) -> str:
        if self.info is None:
            return ""
        return f"{self.info.state}: {self.info.close_reason}"


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        await asyncio.sleep(0.01)


def _primary(session: kwik.Session) -> kwik.PathInfo:
    return session.paths[0]


async def _next_echo(session: kwik.Session, timeout: float) -> bool:
    """Wait for the primary path's next KWIK echo; False if the path ends first or none comes
    within ``timeout``."""
    seen = _primary(session).pongs_received
    with contextlib.suppress(TimeoutError):
        await _until(
            lambda: _primary(session).pongs_received > seen or _primary(session).state != "active",
            timeout,
            "an echo",
        )
    return _primary(session).pongs_received > seen and _primary(session).state == "active"


async def _moved(session: kwik.Session, mode: str, amount: int) -> None:
    """Wait until the busy path has moved ``amount`` bytes in its transfer's direction."""

    def done() -> bool:
        info = _primary(session)
        return (info.bytes_sent if mode == "upload" else info.bytes_received) >= amount

    await _until(done, WAIT, f"{amount} bytes of the {mode}")


@dataclass
class BlackoutResult:
    """One :func:`blackout_trial`."""

    mode: str
    requested: float
    #: seconds every packet was dropped (at least)
    outage: float
    #: longest the client's path went without a datagram
    silence: float
    survived: bool
    #: the transfer's seconds, the first echo's delay after the blackout, or why the path failed
    note: str

    def line(self) -> str:
        verdict = "survived" if self.survived else "FAILED"
        return (
            f"{self.mode:>8}  {self.requested:7.2f}  {self.outage:7.2f}  {self.silence:7.2f}  "
            f"{verdict:>8}  {self.note}"
        )


BLACKOUT_HEADER = f"{'mode':>8}  {'asked':>7}  {'outage':>7}  {'silence':>7}  {'result':>8}"


async def blackout_trial(
    lab: LossLab,
    index: int,
    addr: str,
    tls: kwik.TLSConfig,
    mode: str,
    seconds: float,
    *,
    config: kwik.Config | None = None,
    size: int = BUSY_SIZE,
    phase: float | None = None,
    seed: int = 5,
) -> BlackoutResult:
    """A blackout of ``seconds`` on a new session to ``addr`` (namespace ``index`` of ``lab``),
    idle or in the middle of an ``upload``/``download`` of ``size`` bytes. ``phase``: for an
    idle trial, seconds between a KWIK echo and the blackout (default ``heartbeat_interval -
    0.1``: just before the next echo is due). Never raises for a failed path: the result says.
    """
    config = config or kwik.Config()
    if phase is None:
        phase = max(config.heartbeat_interval - 0.1, 0.0)
    session = await kwik.dial_addr(addr, tls, config)
    loop = asyncio.get_running_loop()
    transfer: asyncio.Task[float] | None = None
    try:
        end = PathEnd(session)
        with SilenceWatch(path_liveness(session)) as watch:
            if mode == "idle":
                await echo_over(session, pattern(seed, 0, 64 * 1024))
                if not await _next_echo(session, 2 * config.heartbeat_interval + 5):
                    raise RuntimeError(f"no echo before the blackout ({end.reason})")
                await asyncio.sleep(phase)
            else:
                run = upload_over if mode == "upload" else download_over
                transfer = asyncio.ensure_future(run(session, size, seed))
                await _moved(session, mode, MIB)
            with lab.blackout(index) as outage:
                if transfer is not None and transfer.done():
                    raise RuntimeError(
                        f"the {mode} ended before its blackout began (size {size} too small)"
                    )
                await end.wait(seconds)  # ends early if the path fails in the blackout
            back = loop.time()
            if mode == "idle":
                # alive once the next echo arrives (both sides heard each other), and a
                # stream still echoes byte-exact
                ok = end.at is None and await _next_echo(session, WAIT)
                note = f"echo {loop.time() - back:.2f} s after" if ok else "no echo after it"
                if ok:
                    async with asyncio.timeout(WAIT):
                        await echo_over(session, pattern(seed, 7, 7 + 256 * 1024))
            else:
                assert transfer is not None
                try:
                    async with asyncio.timeout(WAIT + seconds):
                        took = await transfer
                    ok = True
                    note = f"{size // MIB} MiB in {took:.2f} s, {loop.time() - back:.2f} s after"
                except (kwik.KwikError, ConnectionError, TimeoutError) as exc:
                    ok, note = False, repr(exc)  # a TransferError (bytes wrong) raises
            survived = ok and end.at is None and _primary(session).state == "active"
        return BlackoutResult(
            mode,
            seconds,
            outage.seconds,
            watch.longest,
            survived,
            note if survived else (end.reason or note),
        )
    finally:
        if transfer is not None and not transfer.done():
            transfer.cancel()
            await asyncio.gather(transfer, return_exceptions=True)
        async with asyncio.timeout(WAIT):
            await session.close()


@dataclass
class Detection:
    """One :func:`detection_trial`: seconds until the path failed."""

    mode: str
    fault: str
    #: from the fault (the SIGSTOP, or the start of the blackout) to the failure
    since_fault: float | None
    #: from the last datagram the client's path received to the failure
    since_last_datagram: float | None
    reason: str

    def line(self) -> str:
        if self.since_fault is None or self.since_last_datagram is None:
            return f"{self.fault:>8}  {self.mode:>8}  not detected within the wait"
        return (
            f"{self.fault:>8}  {self.mode:>8}  {self.since_fault:7.2f}  "
            f"{self.since_last_datagram:7.2f}  {self.reason}"
        )


DETECTION_HEADER = f"{'fault':>8}  {'mode':>8}  {'fault->':>7}  {'dgram->':>7}  reason"


async def _endless(session: kwik.Session, mode: str) -> None:
    """An upload or download that never ends (until the session fails)."""
    if mode == "upload":
        stream = await request(session, "UPLOAD")
        piece = pattern(3, 0, CHUNK)
        while True:
            await stream.write(piece)
    stream = await request(session, f"DOWNLOAD {ENDLESS} 3")
    while await stream.read(CHUNK):
        pass
    raise AssertionError("EOF on a download that never ends")


class Watched:
    """A new session to a server, idle or busy (an endless upload or download), whose path
    failure is timed: :meth:`start`, then the fault, :meth:`fault_began`, :meth:`detection`,
    and always :meth:`close`."""

    def __init__(self, session: kwik.Session, mode: str) -> None:
        self.session = session
        self.mode = mode
        self.end = PathEnd(session)
        self.liveness = path_liveness(session)
        self.busy: asyncio.Task[None] | None = None
        self.began: float | None = None

    @classmethod
    async def start(
        cls, addr: str, tls: kwik.TLSConfig, mode: str, config: kwik.Config | None = None
    ) -> Watched:
        session = await kwik.dial_addr(addr, tls, config or kwik.Config())
        watched = cls(session, mode)
        try:
            await echo_over(session, pattern(4, 0, 64 * 1024))
            if mode != "idle":
                watched.busy = asyncio.ensure_future(_endless(session, mode))
                await _moved(session, mode, 2 * MIB)
        except BaseException:
            await watched.close()
            raise
        return watched

    def fault_began(self) -> None:
        self.began = asyncio.get_running_loop().time()

    async def detection(self, name: str, wait: float = WAIT) -> Detection:
        """Wait (at most ``wait`` seconds) for the path to fail."""
        if self.busy is not None and self.busy.done() and self.end.at is None:
            self.busy.result()  # the transfer broke without the path failing: say why
        await self.end.wait(wait)
        if self.end.at is None or self.began is None:
            return Detection(self.mode, name, None, None, "")
        return Detection(
            self.mode,
            name,
            self.end.at - self.began,
            self.end.at - self.liveness._last_datagram,
            self.end.reason,
        )

    async def close(self) -> None:
        if self.busy is not None:
            self.busy.cancel()
            await asyncio.gather(self.busy, return_exceptions=True)
        async with asyncio.timeout(WAIT):
            await self.session.close()


async def detection_trial(
    addr: str,
    tls: kwik.TLSConfig,
    mode: str,
    fault: Callable[[], contextlib.AbstractContextManager[object]],
    *,
    name: str,
    config: kwik.Config | None = None,
    wait: float = WAIT,
) -> Detection:
    """Enter ``fault`` (a context manager, kept entered until the failure or ``wait``
    seconds) on a new :class:`Watched` session to ``addr`` and time the client's path
    failure."""
    watched = await Watched.start(addr, tls, mode, config)
    try:
        with fault():
            watched.fault_began()
            return await watched.detection(name, wait)
    finally:
        await watched.close()


@contextlib.contextmanager
def frozen(peer: PeerProcess) -> Iterator[PeerProcess]:
    """SIGSTOP ``peer`` for the block, SIGCONT after (also on failure)."""
    peer.freeze()
    try:
        yield peer
    finally:
        peer.thaw()


# --- command line ------------------------------------------------------------------------------


async def _largest_survived(
    lab: LossLab,
    server: PeerProcess,
    tls: kwik.TLSConfig,
    mode: str,
    low: float,
    high: float,
    resolution: float,
) -> str:
    async def survives(seconds: float) -> bool:
        result = await blackout_trial(lab, 0, server.addr, tls, mode, seconds)
        print(result.line(), flush=True)
        return result.survived

    if not await survives(low):
        return f"< {low:g} s"
    if await survives(high):
        return f">= {high:g} s"
    while high - low > resolution:
        middle = (low + high) / 2
        if await survives(middle):
            low = middle
        else:
            high = middle
    return f"{low:.2f} s (fails at {high:.2f} s)"


async def _run(args: argparse.Namespace) -> int:
    config = kwik.Config()
    with tempfile.TemporaryDirectory(prefix="kwik-blackout-") as tmp, LossLab(1, name="kwo") as lab:
        certs = Certificates(Path(tmp), [lab.host(0)])
        tls = certs.client_tls()
        server = await PeerProcess.start(certs.serve_args(lab.host(0)), lab.prefix(0))
        try:
            print(
                f"default Config: heartbeat {config.heartbeat_interval:g} s x "
                f"{config.heartbeat_miss_threshold}, stall_timeout {config.stall_timeout}; "
                f"engine {config.engine}; busy transfers of {BUSY_SIZE // MIB} MiB"
            )
            print(f"{BLACKOUT_HEADER}  (seconds)", flush=True)
            found: dict[str, str] = {}
            for mode in args.modes:
                found[mode] = await _largest_survived(
                    lab, server, tls, mode, args.low, args.high, args.resolution
                )
            print("largest blackout survived:")
            for mode, text in found.items():
                print(f"  {mode:>8}: {text}")
            if args.detect:
                print("detection (seconds from the fault, from the last datagram)")
                print(DETECTION_HEADER, flush=True)
                for name in ("sigstop", "vanish"):
                    for mode in args.modes:

                        def fault(name: str = name) -> contextlib.AbstractContextManager[object]:
                            return frozen(server) if name == "sigstop" else lab.blackout(0)

                        result = await detection_trial(server.addr, tls, mode, fault, name=name)
                        print(result.line(), flush=True)
        finally:
            await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Find the largest blackout survived (idle, upload, download); optionally time detections."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.blackout")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--low", type=float, default=8.0, help="seconds expected to be survived")
    parser.add_argument("--high", type=float, default=18.0, help="seconds expected to fail")
    parser.add_argument("--resolution", type=float, default=0.25, metavar="SECONDS")
    parser.add_argument(
        "--detect",
        action="store_true",
        help="also time the failure of a frozen server (SIGSTOP) and of a vanished network",
    )
    args = parser.parse_args(argv)
    reason = loss_unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    status = asyncio.run(_run(args))
    print(f"took {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
