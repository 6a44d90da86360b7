"""Listener graceful-shutdown check (port of the Go "closure" example).

Opens a listener on 127.0.0.1:0, dials a few sessions into it, closes the listener while they
are open, and checks that every session was closed (code 0) and the listener's session count
fell to zero within its shutdown bound. Exits non-zero on any failure.

    python -m examples.closure [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import kwik


async def check(sessions: int) -> list[str]:
    failures: list[str] = []
    cert, key = kwik.generate_self_signed_cert(["127.0.0.1"])
    config = kwik.Config()
    listener = await kwik.listen_addr(
        "127.0.0.1:0", kwik.TLSConfig(certificate=cert, private_key=key), config
    )
    print(f"Listener created on {listener.addr}")
    clients = [
        await kwik.dial_addr(listener.addr, kwik.TLSConfig(cadata=cert), config)
        for _ in range(sessions)
    ]
    accepted = [await listener.accept() for _ in range(sessions)]
    print(f"Active sessions: {listener.active_session_count()}")
    if listener.active_session_count() != sessions:
        failures.append(f"expected {sessions} active sessions")
    start = time.perf_counter()
    await listener.close()
    elapsed = time.perf_counter() - start
    print(f"Listener closed in {elapsed * 1000:.1f} ms")
    print(f"Final active sessions: {listener.active_session_count()}")
    if listener.active_session_count() != 0:
        failures.append("sessions still active after close")
    if elapsed > config.listener_close_timeout + 1.0:
        failures.append(f"close took {elapsed:.2f} s, over its bound")
    for session in accepted:
        if not session.is_closed:
            failures.append(f"server session {session.session_id} still open")
    async with asyncio.timeout(5):
        for client in clients:
            await client.wait_closed()
            try:
                await client.open_stream()
            except kwik.SessionClosedError as exc:
                if exc.code != 0:
                    failures.append(f"client session closed with code {exc.code}, expected 0")
            else:
                failures.append("client session still usable after listener close")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.closure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=3)
    args = parser.parse_args(argv)
    failures = asyncio.run(check(args.sessions))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if failures:
        return 1
    print("Listener shutdown test completed successfully!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
