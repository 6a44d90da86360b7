"""``python -m kwik``: check an installation, and talk KWIK from a shell.

Subcommands:

* ``doctor``: versions, the QUIC engines available and the internals of each kwik relies on,
  the system's UDP buffer limit;
  a verdict and exit status 0 (usable) or 1 (broken).
* ``connect ADDR``: like netcat. Opens a session and one stream, copies standard input to the
  stream (FIN at end of input) and the stream to standard output; exits at the stream's EOF.
* ``listen ADDR --echo|--discard|--serve FILE``: a server answering every stream of every
  session. It prints ``listening on HOST:PORT`` on standard error once bound (port 0 picks a
  free port), so scripts and tests can read the address.

Everything the tool says goes to standard error; standard output carries only stream data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import platform
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from . import _engines
from ._addr import parse_address
from ._version import __version__
from .config import Config, TLSConfig
from .exceptions import KwikError, SessionClosedError
from .tls import generate_self_signed_cert

__all__ = ["main"]

logger = logging.getLogger("kwik.cli")

#: Bytes moved per read or write by ``connect`` and ``--serve``.
CHUNK = 64 * 1024

#: Where Linux publishes the largest SO_RCVBUF an unprivileged socket may ask for.
RMEM_MAX = Path("/proc/sys/net/core/rmem_max")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# doctor


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report.

    ``status`` is ``"ok"``, ``"info"`` (nothing to judge), ``"warn"`` (kwik works, but worse
    than it could) or ``"fail"`` (kwik cannot be trusted to work).
    """

    name: str
    status: str
    detail: str


def engine_report() -> list[tuple[str, str, list[tuple[str, bool, str]]]]:
    """For each QUIC engine: ``(engine, status, [(internal, present?, detail), ...])``, status
    ``"ok"``, ``"missing"`` (not installed) or ``"broken"`` (``kwik._engines``, whose engine
    modules also refuse to import when an internal is missing)."""
    return [
        (name, status, [(c.name, c.ok, c.detail) for c in checks])
        for name, status, checks in _engines.report()
    ]


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _required_range(name: str) -> str | None:
    """The version range kwik's installed metadata requires for ``name``, e.g. ">=1.2,<1.8"."""
    try:
        requirements = metadata.requires("kwik") or []
    except metadata.PackageNotFoundError:  # a checkout used without installing it
        return None
    for requirement in requirements:
        head = requirement.split(";")[0].strip()
        if head.startswith(name) and head[len(name) : len(name) + 1] in "<>=!~ (":
            return head[len(name) :].strip(" ()") or None
    return None


def _aioquic_check() -> Check:
    version = _distribution_version("aioquic")
    if version is None:
        return Check("aioquic", "fail", "not installed")
    wanted = _required_range("aioquic")
    if not wanted:
        return Check("aioquic", "info", f"{version} (kwik's supported range unknown)")
    try:
        specifiers = importlib.import_module("packaging.specifiers")
    except ImportError:
        return Check("aioquic", "info", f"{version} (kwik supports {wanted}; not compared)")
    if specifiers.SpecifierSet(wanted).contains(version, prereleases=True):
        return Check("aioquic", "ok", f"{version} (kwik supports {wanted})")
    return Check("aioquic", "fail", f"{version}, outside the range kwik supports: {wanted}")


def _udp_buffer_check(rmem_max_file: Path = RMEM_MAX) -> Check:
    wanted = Config().udp_receive_buffer
    try:
        limit = int(rmem_max_file.read_text().strip())
    except (OSError, ValueError):
        return Check(
            "UDP receive buffer",
            "info",
            f"the system's limit is unknown ({rmem_max_file} unreadable); "
            f"kwik asks for {wanted} bytes (Config.udp_receive_buffer)",
        )
    if limit >= wanted:
        return Check(
            "UDP receive buffer",
            "ok",
            f"net.core.rmem_max = {limit} bytes >= Config.udp_receive_buffer = {wanted}",
        )
    return Check(
        "UDP receive buffer",
        "warn",
        f"net.core.rmem_max = {limit} bytes < Config.udp_receive_buffer = {wanted}: the kernel "
        f"caps kwik's sockets, and busy listeners drop datagrams. As root: "
        f"sysctl -w net.core.rmem_max={wanted}",
    )


def doctor_checks() -> list[Check]:
    """Every check the doctor makes, in report order."""
    checks = [
        Check("kwik", "info", __version__),
        Check(
            "Python",
            "info",
            f"{platform.python_version()} ({platform.python_implementation()}, "
            f"{platform.system()} {platform.machine()})",
        ),
        _aioquic_check(),
        Check("qh3", "info", _distribution_version("qh3") or "not installed (optional engine)"),
        Check("cryptography", "info", _distribution_version("cryptography") or "not installed"),
    ]
    uvloop = _distribution_version("uvloop")
    checks.append(Check("uvloop", "info", uvloop or "not installed (optional; faster event loop)"))
    default = _engines.default_engine()
    checks.append(
        Check(
            "engine",
            "info",
            f"default {default!r} (KWIK_ENGINE={os.environ.get('KWIK_ENGINE', '')!r}); "
            f"kwik knows {', '.join(_engines.ENGINES)}",
        )
    )
    try:
        engines = engine_report()
    except Exception as exc:  # a broken engine module is itself the finding
        checks.append(Check("engines", "fail", f"cannot be checked: {exc!r}"))
        engines = []
    for engine, status, hooks in engines:
        if status == "missing":
            # an optional engine that is not installed is no failure, unless it is the default
            detail = hooks[0][2] if hooks else "not installed"
            checks.append(Check(f"{engine}", "fail" if engine == default else "info", detail))
            continue
        checks.append(
            Check(
                f"{engine}",
                "ok" if status == "ok" else "fail",
                "engine usable: every internal kwik relies on is present"
                if status == "ok"
                else "engine unusable: an internal kwik relies on changed",
            )
        )
        for name, present, detail in hooks:
            checks.append(Check(f"{engine}: {name}", "ok" if present else "fail", detail))
    checks.append(_udp_buffer_check())
    return checks


def _doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks()
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{check.status:4}  {check.name:{width}}  {check.detail}")
    failures = sum(check.status == "fail" for check in checks)
    warnings = sum(check.status == "warn" for check in checks)
    if failures:
        print(f"verdict: BROKEN, {failures} failed check(s): kwik cannot be trusted here")
        return 1
    if warnings:
        print(f"verdict: OK, with {warnings} warning(s)")
    else:
        print("verdict: OK")
    return 0


# --------------------------------------------------------------------------------------------
# connect


def _config(args: argparse.Namespace) -> Config:
    changes: dict[str, object] = {}
    if args.max_datagram_size is not None:
        changes["max_datagram_size"] = args.max_datagram_size
    return Config(**changes)  # type: ignore[arg-type]


def _stdin_thread(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes], fd: int | None
) -> None:
    """Feed standard input into ``queue``, b"" last. Runs in a daemon thread.

    ``os.read`` on the raw descriptor, not ``sys.stdin.buffer``: a daemon thread blocked
    inside a buffered reader can abort the interpreter at exit.
    """
    try:
        while True:
            chunk = os.read(fd, CHUNK) if fd is not None else b""
            # waits while the queue is full: back-pressure from the stream reaches the pipe
            asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            if not chunk:
                return
    except (OSError, RuntimeError, asyncio.CancelledError):
        # stdin unreadable, or the loop is gone because the command is exiting
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(queue.put(b""), loop)


async def _pump_stdin(stream: Any, fd: int | None) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    loop = asyncio.get_running_loop()
    threading.Thread(
        target=_stdin_thread, args=(loop, queue, fd), name="kwik-stdin", daemon=True
    ).start()
    while chunk := await queue.get():
        await stream.write(chunk)
    await stream.close()  # FIN: the peer reads EOF


def _stdin_fd() -> int | None:
    if sys.stdin is None:
        return None
    try:
        return sys.stdin.fileno()
    except (OSError, ValueError):
        return None


async def _connect(args: argparse.Namespace) -> int:
    from . import dial_addr  # the public entry point, imported once kwik is complete

    if args.insecure and args.ca:
        _say("--insecure and --ca exclude each other")
        return 2
    tls = TLSConfig(
        cafile=args.ca, insecure_skip_verify=args.insecure, server_name=args.server_name
    )
    try:
        session = await dial_addr(args.addr, tls, _config(args))
    except (KwikError, OSError, ValueError) as exc:
        _say(f"kwik connect: cannot connect to {args.addr}: {exc}")
        return 1
    out: BinaryIO = sys.stdout.buffer
    async with session:
        logger.info("connected to %s", session.remote_addr)
        try:
            stream = await session.open_stream_sync()
            sender = asyncio.create_task(_pump_stdin(stream, _stdin_fd()))
            try:
                while data := await stream.read(CHUNK):
                    out.write(data)
                    out.flush()
            finally:
                if not sender.done():
                    sender.cancel()  # the peer finished first: stop sending (netcat -N)
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        except (KwikError, OSError) as exc:
            _say(f"kwik connect: {exc}")
            return 1
    return 0


# --------------------------------------------------------------------------------------------
# listen


StreamHandler = Callable[[Any], Coroutine[Any, Any, None]]


async def _echo(stream: Any) -> None:
    while data := await stream.read(CHUNK):
        await stream.write(data)
    await stream.close()


async def _discard(stream: Any) -> None:
    total = 0
    while data := await stream.read(CHUNK):
        total += len(data)
    await stream.close()
    _say(f"stream {stream.stream_id}: discarded {total} bytes")


def _server(path: Path) -> StreamHandler:
    async def serve(stream: Any) -> None:
        async def drain_input() -> None:
            # keep reading: unread data would stall the path, and with it the file's bytes
            while await stream.read(CHUNK):
                pass

        reader = asyncio.create_task(drain_input())
        try:
            with path.open("rb") as source:
                while chunk := source.read(CHUNK):
                    await stream.write(chunk)
            await stream.close()
            await reader
        finally:
            reader.cancel()

    return serve


async def _serve_session(session: Any, handler: StreamHandler) -> None:
    _say(f"session from {session.remote_addr}")

    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
        except (KwikError, OSError) as exc:  # the peer went away: routine for a server
            logger.info("stream %s: %s", stream.stream_id, exc)
        except Exception:  # a bug in one stream's handler must not stop the server
            logger.exception("stream %s failed", stream.stream_id)

    async with asyncio.TaskGroup() as tasks:
        while True:
            try:
                stream = await session.accept_stream()
            except SessionClosedError:
                break
            tasks.create_task(guarded(stream))
    _say(f"session from {session.remote_addr} closed")


def _server_tls(args: argparse.Namespace) -> TLSConfig:
    if args.cert:
        return TLSConfig(certfile=args.cert, keyfile=args.key)
    host, _ = parse_address(args.addr)
    hosts = ["localhost", "127.0.0.1", "::1"]
    if host not in hosts and host not in ("0.0.0.0", "::"):
        hosts.insert(0, host)
    cert, key = generate_self_signed_cert(hosts)
    if args.cert_out:
        Path(args.cert_out).write_bytes(cert)
        _say(f"self-signed certificate for {', '.join(hosts)} written to {args.cert_out}")
    else:
        _say("using a generated self-signed certificate (clients need --insecure)")
    return TLSConfig(certificate=cert, private_key=key)


async def _listen(args: argparse.Namespace) -> int:
    from . import listen_addr

    handler: StreamHandler = (
        _echo if args.echo else _discard if args.discard else _server(Path(args.serve))
    )
    try:
        tls = _server_tls(args)
        listener = await listen_addr(args.addr, tls, _config(args))
    except (KwikError, OSError, ValueError) as exc:
        _say(f"kwik listen: cannot listen on {args.addr}: {exc}")
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)

    async def accept_all() -> None:
        async with asyncio.TaskGroup() as sessions:
            async for session in listener:
                task = sessions.create_task(_serve_session(session, handler))
                if args.once:
                    await task
                    stop.set()
                    return

    async with listener:
        _say(f"listening on {listener.addr}")
        acceptor = asyncio.create_task(accept_all())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({acceptor, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (acceptor, stopper):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, KwikError):
            await acceptor
    _say("listener closed")
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kwik",
        description="kwik's command-line tool: check an installation, or talk KWIK v2 from "
        "a shell. Addresses are host:port ([v6]:port for IPv6).",
    )
    parser.add_argument("--version", action="version", version=f"kwik {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log kwik's events (-vv: debug)"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop for connect and listen (default: asyncio)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "doctor",
        help="check versions, QUIC engines and UDP buffers",
        description="Report kwik's, Python's, aioquic's, qh3's and uvloop's versions, the QUIC "
        "engines kwik can use (aioquic, qh3) and whether every internal of each kwik relies "
        "on is present, and the system's UDP receive buffer "
        "limit against Config.udp_receive_buffer. Exit status 0 when kwik is usable "
        "(warnings included), 1 when a check failed.",
    )

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--max-datagram-size",
            type=int,
            metavar="BYTES",
            help="Config.max_datagram_size (default 1200; 1452 is faster on a 1500-byte MTU)",
        )

    connect = commands.add_parser(
        "connect",
        help="netcat over KWIK: stdin to a stream, the stream to stdout",
        description="Open a session to ADDR and one stream. Standard input goes to the "
        "stream (end of input sends FIN), the stream goes to standard output. Exits 0 at "
        "the stream's end, 1 when the session fails. The server is verified against the "
        "system trust store unless --ca or --insecure is given.",
    )
    connect.add_argument("addr", metavar="ADDR", help="server address, host:port")
    connect.add_argument("--ca", metavar="FILE", help="trust the CA certificate(s) in FILE (PEM)")
    connect.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    connect.add_argument(
        "--server-name", metavar="NAME", help="name to verify (default: the host of ADDR)"
    )
    common(connect)

    listen = commands.add_parser(
        "listen",
        help="a server that echoes, discards or serves a file on every stream",
        description="Listen on ADDR (port 0 picks a free port) and answer every stream of "
        "every session. Prints 'listening on HOST:PORT' on standard error once bound. "
        "Without --cert/--key it generates a self-signed certificate; --cert-out saves it "
        "for clients' --ca. Stops on SIGINT or SIGTERM (or after one session with --once).",
    )
    listen.add_argument("addr", metavar="ADDR", help="address to bind, host:port")
    action = listen.add_mutually_exclusive_group(required=True)
    action.add_argument("--echo", action="store_true", help="send every stream back")
    action.add_argument(
        "--discard", action="store_true", help="read and drop every stream, then FIN"
    )
    action.add_argument(
        "--serve", metavar="FILE", help="send FILE on every stream, then FIN (input is read)"
    )
    listen.add_argument("--cert", metavar="FILE", help="certificate chain (PEM)")
    listen.add_argument("--key", metavar="FILE", help="private key of --cert (PEM)")
    listen.add_argument(
        "--cert-out", metavar="FILE", help="write the generated self-signed certificate here"
    )
    listen.add_argument(
        "--once", action="store_true", help="exit after the first session has closed"
    )
    common(listen)
    return parser


def _run(coroutine: Coroutine[Any, Any, int], loop: str) -> int:
    if loop == "uvloop":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            _say("kwik: uvloop is not installed")
            return 2
        result: int = uvloop.run(coroutine)
        return result
    return asyncio.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m kwik``; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "listen" and bool(args.cert) != bool(args.key):
        parser.error("listen: --cert and --key go together")
    if args.command == "listen" and args.cert and args.cert_out:
        parser.error("listen: --cert-out only applies to a generated certificate")
    if args.command == "listen" and args.serve is not None and not Path(args.serve).is_file():
        parser.error(f"listen: --serve {args.serve}: not a file")
    coroutine = _connect(args) if args.command == "connect" else _listen(args)
    try:
        return _run(coroutine, args.loop)
    except KeyboardInterrupt:
        return 130
