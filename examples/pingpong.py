"""PING/PONG over one kwik stream, printing round-trip times (port of the Go example).

Messages are 20 bytes: a 4-byte type (b"PING" or b"PONG"), a u64 counter and a u64 send time
in nanoseconds, all big-endian. The server answers each PING with a PONG carrying the same
counter and time.

    python -m examples.pingpong                         # demo: server + client, one process
    python -m examples.pingpong --mode server --addr 127.0.0.1:4242 --cert c.pem --key k.pem
    python -m examples.pingpong --mode client --addr 127.0.0.1:4242 --ca c.pem --count 10

Without ``--cert`` the server makes a self-signed certificate, which a client does not trust:
save it with ``--cert-out FILE`` and give the client ``--ca FILE``, or run the client with
``-k`` (no verification, for trying things out only)::

    python -m examples.pingpong --mode server --cert-out /tmp/pingpong-cert.pem
    python -m examples.pingpong --mode client --ca /tmp/pingpong-cert.pem
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path

import kwik

from ._common import client_tls, load_or_generate_tls, setup_logging

MESSAGE = struct.Struct(">4sQQ")
assert MESSAGE.size == 20

#: What a client that could not verify the server is told (the server's own certificate is
#: self-signed unless it was given one).
TRUST_HINT = (
    "hint: a server started without --cert uses a self-signed certificate, which this client "
    "does not trust. Start the server with --cert-out FILE and give the client --ca FILE, or "
    "run the client with -k (--insecure: no verification, for trying things out only)."
)


async def serve_session(session: kwik.Session) -> None:
    """Answer every PING of every stream of ``session`` until it closes."""
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError:
                return
            group.create_task(serve_stream(stream))


async def serve_stream(stream: kwik.Stream) -> None:
    try:
        while True:
            try:
                data = await stream.readexactly(MESSAGE.size)
            except asyncio.IncompleteReadError:
                break
            kind, counter, sent_ns = MESSAGE.unpack(data)
            if kind != b"PING":
                print(f"unexpected message type {kind!r}", file=sys.stderr)
                break
            await stream.write(MESSAGE.pack(b"PONG", counter, sent_ns))
        await stream.close()
    except kwik.SessionClosedError:
        pass


async def run_server(
    listener: kwik.Listener, *, quiet: bool = False, note: str | None = None
) -> None:
    """Accept sessions until the listener closes; ``note`` follows the listening line."""
    if not quiet:
        print(f"pingpong server listening on {listener.addr}", flush=True)
        if note:
            print(note, flush=True)
    async with asyncio.TaskGroup() as group:
        async for session in listener:
            if not quiet:
                print(f"new session from {session.remote_addr}", flush=True)
            group.create_task(serve_session(session))


async def run_client(
    addr: str, tls: kwik.TLSConfig, *, count: int, interval: float, config: kwik.Config
) -> list[float]:
    """Send ``count`` PINGs ``interval`` seconds apart; return the RTTs in seconds."""
    rtts: list[float] = []
    async with await kwik.dial_addr(addr, tls, config) as session:
        stream = await session.open_stream_sync()
        for counter in range(1, count + 1):
            await stream.write(MESSAGE.pack(b"PING", counter, time.time_ns()))
            kind, got, sent_ns = MESSAGE.unpack(await stream.readexactly(MESSAGE.size))
            rtt = (time.time_ns() - sent_ns) / 1e9
            if kind != b"PONG" or got != counter:
                raise RuntimeError(f"bad answer {kind!r} #{got} to PING #{counter}")
            rtts.append(rtt)
            print(f"PONG #{got}: RTT {rtt * 1000:.3f} ms", flush=True)
            if counter < count:
                await asyncio.sleep(interval)
        await stream.close()
    return rtts


def summary(rtts: list[float]) -> str:
    ms = sorted(r * 1000 for r in rtts)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"{len(ms)} pings: min {ms[0]:.3f} ms, median {statistics.median(ms):.3f} ms, "
        f"p99 {p99:.3f} ms, max {ms[-1]:.3f} ms"
    )


async def demo(args: argparse.Namespace) -> int:
    server_tls, cert_pem = load_or_generate_tls(args.cert, args.key)
    listener = await kwik.listen_addr(args.addr, server_tls)
    async with asyncio.TaskGroup() as group:
        group.create_task(run_server(listener, quiet=True))
        print(f"demo: server on {listener.addr}, client sends {args.count} pings", flush=True)
        try:
            rtts = await run_client(
                listener.addr,
                kwik.TLSConfig(cadata=cert_pem),
                count=args.count,
                interval=args.interval,
                config=kwik.Config(),
            )
        finally:
            await listener.close()
    print(summary(rtts), flush=True)
    return 0


async def main_async(args: argparse.Namespace) -> int:
    if args.mode == "demo":
        return await demo(args)
    if args.mode == "server":
        server_tls, cert_pem = load_or_generate_tls(args.cert, args.key)
        note = None
        if args.cert_out:
            await asyncio.to_thread(Path(args.cert_out).write_bytes, cert_pem)
            note = f"self-signed certificate saved to {args.cert_out}: clients use --ca with it"
        elif args.cert is None:
            note = "self-signed certificate: clients need -k, or --cert-out FILE here and --ca FILE"
        listener = await kwik.listen_addr(args.addr, server_tls)
        try:
            await run_server(listener, note=note)
        finally:
            await listener.close()
        return 0
    try:
        rtts = await run_client(
            args.addr,
            client_tls(args.ca, args.insecure),
            count=args.count,
            interval=args.interval,
            config=kwik.Config(),
        )
    except kwik.HandshakeError as exc:
        if args.insecure:
            raise
        print(f"error: {exc}\n{TRUST_HINT}", file=sys.stderr)
        return 1
    print(summary(rtts), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.pingpong",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=("demo", "server", "client"), default="demo")
    parser.add_argument(
        "--addr", default=None, help="server address (default 127.0.0.1:4242; demo: 127.0.0.1:0)"
    )
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between pings")
    parser.add_argument("--count", type=int, default=10, help="pings the client sends")
    parser.add_argument("--cert", help="server certificate (PEM); default: self-signed")
    parser.add_argument("--key", help="server private key (PEM)")
    parser.add_argument(
        "--cert-out",
        metavar="FILE",
        help="server: save the generated self-signed certificate here, for the client's --ca",
    )
    parser.add_argument("--ca", help="client: CA certificate (PEM) to verify the server")
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="client: do not verify the server certificate"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.addr is None:
        args.addr = "127.0.0.1:0" if args.mode == "demo" else "127.0.0.1:4242"
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.cert_out and args.cert:
        parser.error("--cert-out saves a generated certificate: not with --cert")
    setup_logging(args.verbose)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130
    except kwik.KwikError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
