"""A TCP gateway in front of a kwik HTTP server: uvicorn serving a small ASGI proxy.

curl and browsers speak HTTP over TCP. uvicorn accepts them and hands every request to
:class:`ProxyApp`, which forwards it through one :class:`~examples.http.client.KwikTransport`
(so over one kwik session) and streams both bodies through, never holding a whole one.
Hop-by-hop headers stay on their hop; ``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``Via``
are added (a server run with ``--forwarded-allow-ips`` turns them back into the real client
and scheme). An upstream that cannot be reached gives 502, one that is silent too long 504::

    python -m examples.http.gateway --upstream 127.0.0.1:4433 --ca cert.pem --listen 127.0.0.1:8080
    curl http://127.0.0.1:8080/api/health
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import uvicorn

import kwik

from ._util import LOGGER, client_tls_config, run_cli, strip_hop_by_hop
from .client import KwikTransport
from .server import Message, Receive, Scope, Send

__all__ = ["Gateway", "ProxyApp", "main"]

VIA = b"1.1 kwik-gateway"


class _Disconnected(Exception):
    """The TCP client went away while its request body was being forwarded."""


class ProxyApp:
    """An ASGI application forwarding every HTTP request through ``transport``.

    ``timeout`` is httpx's (connect, read and write bounds on the kwik side). WebSocket scopes
    are refused (HTTP/1.1 over kwik has no upgrade).
    """

    def __init__(self, transport: KwikTransport, timeout: float = 30.0) -> None:
        self.transport = transport
        self.timeout = httpx.Timeout(timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"the gateway serves HTTP only, not {scope['type']}")
        has_body = self._has_body(scope)
        body_read = asyncio.Event()  # the client's request body was forwarded whole
        if not has_body:
            body_read.set()
        request = httpx.Request(
            scope["method"],
            self._url(scope),
            headers=self._forward_headers(scope),
            content=self._request_body(receive, body_read) if has_body else None,
            extensions={"timeout": self.timeout.as_dict()},
        )
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.TimeoutException as exc:
            await self._error(send, 504, f"upstream timed out: {exc}")
            return
        except (httpx.TransportError, _Disconnected) as exc:
            await self._error(send, 502, f"upstream failed: {exc}")
            return
        # uvicorn (ASGI 2.3) reports a client that went away only through receive(), once the
        # request body is read: watch it, so that a download nobody reads is not pulled on
        gone: asyncio.Task[None] | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [*strip_hop_by_hop(response.headers.raw), (b"via", VIA)],
                }
            )
            # a failure from here on can only be told by closing the connection: uvicorn does
            # that when the application raises after starting its response
            async for chunk in response.stream:  # type: ignore[union-attr]
                if gone is None and body_read.is_set():
                    gone = asyncio.ensure_future(self._disconnect(receive))
                if gone is not None and gone.done():
                    LOGGER.info("gateway: the client left during the response")
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if gone is not None:
                gone.cancel()
            await response.aclose()

    @staticmethod
    def _has_body(scope: Scope) -> bool:
        names = {name.lower() for name, _ in scope["headers"]}
        return b"content-length" in names or b"transfer-encoding" in names

    @staticmethod
    def _url(scope: Scope) -> httpx.URL:
        path = scope.get("raw_path") or scope["path"].encode()
        url = b"https://kwik" + path
        if scope.get("query_string"):
            url += b"?" + scope["query_string"]
        return httpx.URL(url.decode("ascii"))

    @staticmethod
    def _forward_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
        headers = strip_hop_by_hop(scope["headers"])
        client = scope.get("client")
        if client:
            forwarded = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
            chain = b", ".join([*forwarded, client[0].encode()])
            headers = [(k, v) for k, v in headers if k.lower() != b"x-forwarded-for"]
            headers.append((b"x-forwarded-for", chain))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        headers.append((b"via", VIA))
        return headers

    @staticmethod
    async def _request_body(receive: Receive, done: asyncio.Event) -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected("the client went away")
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                done.set()
                return

    @staticmethod
    async def _disconnect(receive: Receive) -> None:
        """Return when the client has gone (what is left of a body unread is skipped)."""
        while (await receive())["type"] != "http.disconnect":
            pass

    @staticmethod
    async def _error(send: Send, status: int, detail: str) -> None:
        LOGGER.warning("gateway: %d %s", status, detail)
        body = json.dumps({"status": status, "detail": detail}).encode() + b"\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"via", VIA),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.transport.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the program embedding it decides when
    to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """uvicorn serving :class:`ProxyApp` to ``upstream`` (a kwik HTTP server), in the running
    event loop.

    Args:
        upstream: the kwik server's "host:port".
        tls_config, config: for the kwik session (see :class:`KwikTransport`).
        timeout: httpx timeout of each forwarded request.
    """

    def __init__(
        self,
        upstream: str,
        tls_config: kwik.TLSConfig | None = None,
        *,
        config: kwik.Config | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.upstream = upstream
        self.transport = KwikTransport(upstream, tls_config, config)
        self.app = ProxyApp(self.transport, timeout)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def addr(self) -> str:
        """The TCP address ("host:port") being served; empty before :meth:`start`."""
        if self._server is None or not self._server.servers:
            return ""
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        return f"http://{self.addr}/"

    async def start(self, listen: str) -> None:
        """Serve on ``listen`` ("host:port"; port 0 picks one) until :meth:`close`.

        Raises:
            RuntimeError: already started.
            OSError: uvicorn could not start (e.g. the port is taken).
        """
        if self._server is not None:
            raise RuntimeError("gateway already started")
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        # bound here rather than by uvicorn, which logs a bind failure and calls sys.exit(3) in
        # its task (a SystemExit that escapes the event loop): a busy port is one clear OSError
        try:
            sock = socket.create_server(
                (host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(f"the gateway cannot listen on {listen}: {why}") from None
        config = uvicorn.Config(
            self.app,
            host=host,
            port=int(port),
            lifespan="on",
            ws="none",
            log_config=None,  # the embedding program configures logging
            access_log=False,
            server_header=False,
            date_header=False,
        )
        self._server = server = _Server(config)
        self._task = asyncio.ensure_future(self._serve(server, sock))
        while not server.started:
            if self._task.done():
                self._task.result()  # the OSError of a failed start
                raise OSError(f"the gateway could not start on {listen}")
            await asyncio.sleep(0.01)
        LOGGER.info("gateway %s -> kwik://%s", self.url, self.upstream)

    @staticmethod
    async def _serve(server: _Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn's way of failing: an error, not an exit
            raise OSError(f"the gateway stopped: uvicorn exited with status {exc.code}") from None
        finally:
            sock.close()

    async def close(self) -> None:
        """Stop uvicorn (open connections get a few seconds to finish) and close the kwik
        session. Idempotent."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.config.timeout_graceful_shutdown = 5
            with contextlib.suppress(Exception):
                await self._task
        await self.transport.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.http.gateway",
        description="HTTP over TCP (uvicorn) in front of a kwik HTTP server.",
    )
    parser.add_argument("--upstream", required=True, help="the kwik server (host:port)")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="TCP address (host:port)")
    parser.add_argument("--ca", metavar="FILE", help="trust this PEM certificate")
    parser.add_argument("-k", "--insecure", action="store_true", help="do not verify the server")
    parser.add_argument("--server-name", help="name to verify (default: the upstream's host)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds of upstream silence")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


async def _run(args: argparse.Namespace) -> None:
    tls = client_tls_config(args.ca, insecure=args.insecure, server_name=args.server_name)
    gateway = Gateway(args.upstream, tls, timeout=args.timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start(args.listen)
        print(gateway.url.rstrip("/"), flush=True)
        await stop.wait()
    finally:
        await gateway.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
