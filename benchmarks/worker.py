"""One benchmark process: ``python -m benchmarks.worker '<json spec>'``.

The harness (:mod:`benchmarks.harness`) starts a server worker and waits for its
``READY {"addr": ...}`` line, then starts a client worker and reads its ``RESULT {...}`` line
(``ERROR {...}`` when it failed), then stops the server with SIGTERM. The spec says which
system (``kwik`` or ``aioquic``), role, event loop, QUIC settings and task to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import app, peer_aioquic, peer_kwik, peer_raw
from .common import QuicSettings, dumps_line, gather_all, run_loop
from .paths import PathSampler

__all__ = ["main"]


async def _server(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = QuicSettings.from_dict(spec["quic"])
    if spec["system"] == "kwik":
        addr, listener, _ = await peer_kwik.start_server(
            spec["host"], settings, spec["cert_pem"], spec["key_pem"], spec.get("worker_pool", True)
        )
        print(dumps_line("READY", {"addr": addr, "pid": os.getpid()}), flush=True)
        await stop.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                await listener.close()
    elif settings.engine == "qh3":
        ctx = app.ServerContext()
        addr, raw_server = await peer_raw.start_server(
            spec["host"], settings, spec["cert_pem"], spec["key_pem"], ctx
        )
        print(dumps_line("READY", {"addr": addr, "pid": os.getpid()}), flush=True)
        await stop.wait()
        raw_server.close()
    else:
        ctx = app.ServerContext()
        addr, server = await peer_aioquic.start_server(
            spec["host"], settings, spec["cert"], spec["key"], ctx
        )
        print(dumps_line("READY", {"addr": addr, "pid": os.getpid()}), flush=True)
        await stop.wait()
        server.close()


async def _kwik_client(spec: dict[str, Any], settings: QuicSettings) -> dict[str, Any]:
    import kwik

    cadata: bytes = spec["cert_pem"]
    params = spec["params"]
    task = spec["task"]
    pool = spec.get("worker_pool", True)
    if task == "sessions":
        return await peer_kwik.establish_sessions(
            spec["addr"], settings, cadata, params["count"], pool
        )
    config = peer_kwik.kwik_config(settings, worker_pool=pool)
    addrs: list[str] = spec.get("addrs") or [spec["addr"]]
    session = await kwik.dial_addr(addrs[0], kwik.TLSConfig(cadata=cadata), config)
    try:
        if task == "multipath":
            size = params["size"]
            if params["mode"] == "dual":
                await peer_kwik.relay_setup(session, addrs[1])
            # per-path throughput over time, for the chart of the relay's share (--plot)
            sampler = PathSampler(session, interval=0.1)
            sampler.start()
            try:
                if params["mode"] == "dual":
                    result = await app.client_download(
                        session.open_stream_sync, size, header=f"SPLIT {size}\n".encode()
                    )
                else:
                    result = await app.client_download(session.open_stream_sync, size)
            finally:
                series = await sampler.stop()
            result["path_samples"] = series
            result["paths"] = [
                {"address": p.address, "bytes_received": p.bytes_received} for p in session.paths
            ]
        else:
            result = await _common_task(task, params, session.open_stream_sync)
        result["client_pool"] = peer_kwik.pool_stats()
    finally:
        await session.close()
    return result


async def _aioquic_client(spec: dict[str, Any], settings: QuicSettings) -> dict[str, Any]:
    cadata: bytes = spec["cert_pem"]
    params = spec["params"]
    task = spec["task"]
    # the raw baseline of the settings' engine
    peer: Any = peer_raw if settings.engine == "qh3" else peer_aioquic
    if task == "sessions":
        return await peer.establish_sessions(spec["addr"], settings, cadata, params["count"])
    if task == "multipath":
        size = params["size"]
        addrs: list[str] = spec["addrs"] if params["mode"] == "dual" else spec["addrs"][:1]
        async with contextlib.AsyncExitStack() as stack:
            connections = [
                await stack.enter_async_context(peer.dial(a, settings, cadata)) for a in addrs
            ]
            shares = [size // len(addrs)] * len(addrs)
            shares[-1] += size - sum(shares)
            loop = asyncio.get_running_loop()
            start, cpu = loop.time(), time.process_time()
            await gather_all(
                [
                    app.client_download(c.open_stream_async, share)
                    for c, share in zip(connections, shares, strict=True)
                ]
            )
            elapsed = loop.time() - start
            cpu = time.process_time() - cpu
        return {
            "seconds": elapsed,
            "mbps": size / elapsed / 1e6,
            "bytes": size,
            "cpu_seconds": cpu,
        }
    async with peer.dial(spec["addr"], settings, cadata) as connection:
        result: dict[str, Any] = await _common_task(task, params, connection.open_stream_async)
        return result


async def _common_task(task: str, params: dict[str, Any], open_stream: app.OpenStream) -> Any:
    if task == "upload":
        return await app.client_upload(open_stream, params["size"], params.get("alloc", False))
    if task == "download":
        return await app.client_download(open_stream, params["size"])
    if task == "streams":
        return await app.client_streams(open_stream, params["count"], params["size"])
    if task == "rtt":
        return await app.client_rtt(open_stream, params["count"], params["warmup"])
    raise ValueError(f"unknown task {task!r}")


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    settings = QuicSettings.from_dict(spec["quic"])
    async with asyncio.timeout(spec.get("timeout", 300)):
        if spec["system"] == "kwik":
            return await _kwik_client(spec, settings)
        return await _aioquic_client(spec, settings)


def main(argv: list[str] | None = None) -> int:
    """Run the worker described by the JSON spec in ``argv[0]``; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    spec: dict[str, Any] = json.loads(args[0])
    spec["cert_pem"] = Path(spec["cert"]).read_bytes()
    if "key" in spec:
        spec["key_pem"] = Path(spec["key"]).read_bytes()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if spec["role"] == "server":
            run_loop(spec["loop"], lambda: _server(spec))
            return 0
        result = run_loop(spec["loop"], lambda: _client(spec))
        print(dumps_line("RESULT", result), flush=True)
        return 0
    except Exception as exc:
        traceback.print_exc()
        print(dumps_line("ERROR", {"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
