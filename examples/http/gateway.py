"""A plain TCP HTTP/1.1 endpoint in front of a kwik HTTP server.

curl, browsers and ``urllib`` speak HTTP over TCP; the gateway accepts them
(:func:`asyncio.start_server`, h11 on the TCP side, keep-alive included) and forwards each
request on a new stream of ONE shared kwik session to the upstream kwik HTTP server (the session
is dialed on first use and again whenever it has closed). Bodies are streamed both ways.
Hop-by-hop headers are not forwarded; ``X-Forwarded-For`` and ``Via`` are added. An upstream
that cannot be reached gives 502, one that is silent too long 504::

    python -m examples.http.gateway --listen 127.0.0.1:8080 --upstream 127.0.0.1:4433 --ca cert.pem
    curl http://127.0.0.1:8080/api/health
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import h11

import kwik

from ._util import (
    CHUNK_SIZE,
    DEFAULT_MAX_HEAD,
    LOGGER,
    client_tls_config,
    decode_headers,
    header_value,
    next_event,
    reason_phrase,
    run_cli,
    strip_hop_by_hop,
)
from .client import Client, InvalidResponseError

__all__ = ["Gateway", "main"]

VIA = "1.1 kwik-gateway"


class _ResponseStarted(Exception):
    """The upstream failed after the response head was sent: only closing the TCP connection
    can tell the client."""


class Gateway:
    """Forwards HTTP/1.1 from TCP clients to the kwik HTTP server at ``upstream``.

    ``timeout`` bounds each wait for the upstream (see :class:`~examples.http.client.Client`);
    ``keep_alive_timeout`` how long an idle TCP connection is kept for its next request (and how
    long a request head may take to arrive).
    """

    def __init__(
        self,
        upstream: str,
        tls_config: kwik.TLSConfig | None = None,
        *,
        config: kwik.Config | None = None,
        timeout: float = 30.0,
        keep_alive_timeout: float = 60.0,
        max_head_size: int = DEFAULT_MAX_HEAD,
    ) -> None:
        self.upstream = upstream
        self.client = Client(upstream, tls_config, config=config, timeout=timeout)
        self.keep_alive_timeout = keep_alive_timeout
        self.max_head_size = max_head_size
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def addr(self) -> str:
        """The TCP address ("host:port") being served; empty before :meth:`start`."""
        if self._server is None or not self._server.sockets:
            return ""
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        return f"http://{self.addr}/"

    async def start(self, listen: str) -> None:
        """Accept TCP connections on ``listen`` ("host:port"; port 0 picks one).

        The kwik session is dialed lazily, with the first request. Raises ``OSError`` when the
        address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("gateway already started")
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._handle_connection, host.strip("[]") or None, int(port)
        )
        LOGGER.info("gateway %s -> kwik://%s", self.url, self.upstream)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening, drop open TCP connections and close the kwik session. Idempotent."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.client.close()
        self._closed.set()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- one TCP connection ---------------------------------------------------------------------

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name("kwik-http-gateway-connection")
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if peer else "unknown"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size)

        async def receive() -> bytes:
            return await reader.read(CHUNK_SIZE)

        try:
            while True:
                try:
                    async with asyncio.timeout(self.keep_alive_timeout):
                        event = await next_event(conn, receive)
                except TimeoutError:
                    break
                except h11.RemoteProtocolError as exc:
                    LOGGER.info("gateway: bad request from %s: %s", peer_host, exc)
                    await self._send_error(conn, writer, exc.error_status_hint, str(exc))
                    break
                if not isinstance(event, h11.Request):
                    break  # ConnectionClosed
                await self._forward(conn, event, receive, writer, peer_host)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    break  # Connection: close, HTTP/1.0, or a request body left unread
        except _ResponseStarted:
            pass
        except (ConnectionError, OSError) as exc:
            LOGGER.debug("gateway: connection from %s: %s", peer_host, exc)
        except Exception:  # a bug, or an upstream response h11 refuses to relay
            LOGGER.exception("gateway: connection from %s failed", peer_host)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _send_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, detail: str
    ) -> None:
        """Answer ``status`` with a short text body, if a response can still be sent."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status} {reason_phrase(status)}: {detail}\n".encode()
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
            ("connection", "close"),
            ("via", VIA),
        ]
        out = conn.send(
            h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
        )
        out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        writer.write(out)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()

    async def _request_body(
        self,
        conn: h11.Connection,
        receive: Callable[[], Awaitable[bytes]],
        writer: asyncio.StreamWriter,
    ) -> AsyncIterator[bytes]:
        """The TCP client's request body, as it arrives (answers ``Expect: 100-continue``)."""
        if conn.they_are_waiting_for_100_continue:
            writer.write(
                conn.send(h11.InformationalResponse(status_code=100, headers=[], reason="Continue"))
            )
            await writer.drain()
        while True:
            event = await next_event(conn, receive)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body")

    async def _forward(
        self,
        conn: h11.Connection,
        request: h11.Request,
        receive: Callable[[], Awaitable[bytes]],
        writer: asyncio.StreamWriter,
        peer_host: str,
    ) -> None:
        """Forward one request upstream and relay the response.

        Raises:
            _ResponseStarted: the upstream failed mid-response (the connection must close).
            ConnectionError: the TCP client went away.
        """
        method = request.method.decode("ascii")
        target = _origin_form(request.target.decode("latin-1"))
        headers = decode_headers(request.headers)
        length_header = header_value(headers, "content-length")
        chunked = header_value(headers, "transfer-encoding") is not None
        content_length = int(length_header) if length_header is not None else None
        forwarded = strip_hop_by_hop(headers)
        forwarded = [(k, v) for k, v in forwarded if k != "content-length"]
        prior = header_value(forwarded, "x-forwarded-for")
        forwarded = [(k, v) for k, v in forwarded if k not in ("x-forwarded-for", "via")]
        forwarded.append(("x-forwarded-for", f"{prior}, {peer_host}" if prior else peer_host))
        previous_via = header_value(headers, "via")
        forwarded.append(("via", f"{previous_via}, {VIA}" if previous_via else VIA))
        body = None
        if chunked or (content_length or 0) > 0:
            body = self._request_body(conn, receive, writer)
        else:  # no body: h11 has the EndOfMessage ready, take it so that keep-alive can go on
            end = await next_event(conn, receive)
            assert isinstance(end, h11.EndOfMessage), end
        started = False
        status = 0
        try:
            async with self.client.stream(
                method,
                target,
                headers=forwarded,
                content=body,
                content_length=None if chunked else content_length,
            ) as upstream:
                status = upstream.status
                response_headers = strip_hop_by_hop(upstream.headers)
                response_headers = [(k, v) for k, v in response_headers if k != "via"]
                response_headers.append(("via", VIA))
                writer.write(
                    conn.send(
                        h11.Response(
                            status_code=upstream.status,
                            headers=response_headers,
                            reason=upstream.reason,
                        )
                    )
                )
                started = True
                async for chunk in upstream.iter_bytes():
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
        except h11.RemoteProtocolError as exc:  # the TCP client's body was malformed
            if started:
                raise _ResponseStarted from exc
            await self._send_error(conn, writer, exc.error_status_hint, str(exc))
            status = exc.error_status_hint
        except (TimeoutError, kwik.KwikError, InvalidResponseError, ConnectionError) as exc:
            if writer.is_closing():
                raise ConnectionError("client went away") from exc
            if started:
                LOGGER.warning("gateway: upstream failed mid-response: %r", exc)
                raise _ResponseStarted from exc
            # unreachable or refusing upstream: 502; an upstream that stopped answering: 504
            handshake = isinstance(exc, kwik.HandshakeError | kwik.HandshakeTimeoutError)
            status = 504 if isinstance(exc, TimeoutError) and not handshake else 502
            LOGGER.warning("gateway: %s %s: upstream failed: %r", method, target, exc)
            await self._send_error(conn, writer, status, f"upstream kwik://{self.upstream}: {exc}")
        LOGGER.info('gateway: %s "%s %s" %d', peer_host, method, target, status)


def _origin_form(target: str) -> str:
    """``http://host/a?b`` (absolute form, as sent to proxies) → ``/a?b``."""
    if target.startswith("/") or target == "*":
        return target
    _, sep, rest = target.partition("://")
    if not sep:
        return target
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.http.gateway",
        description="Plain HTTP/1.1 over TCP in front of a kwik HTTP server.",
    )
    parser.add_argument("--listen", default="127.0.0.1:8080", help="TCP address (host:port)")
    parser.add_argument("--upstream", required=True, help="kwik HTTP server (host:port)")
    parser.add_argument("--ca", metavar="FILE", help="trust this certificate (PEM)")
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="do not verify the upstream's certificate"
    )
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
        print(f"gateway: {gateway.url} -> kwik://{args.upstream}", flush=True)
        await stop.wait()
    finally:
        await gateway.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
