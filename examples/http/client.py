"""httpx over kwik: :class:`KwikTransport`, and a command-line client built on it.

``httpx.AsyncClient(transport=KwikTransport(address, tls_config))`` sends every request on its
own stream of one kwik session to ``address``: the transport opens a stream, writes the request
(h11) while it reads the response, finishes its side (FIN) after the request, and the response
ends with the server's FIN. Any number of requests may run at once on the one session. The
URL's host and port are not used to route (the transport always talks to ``address``): they
only fill the ``Host`` header, like a transport for a Unix socket.

Library::

    transport = KwikTransport("127.0.0.1:4433", kwik.TLSConfig(cadata=cert_pem))
    async with httpx.AsyncClient(transport=transport, base_url="https://127.0.0.1:4433") as client:
        response = await client.get("/api/health")
        async with client.stream("GET", "/static/big.bin") as response:
            async for chunk in response.aiter_bytes():
                ...

Command line (``kwik://host:port/path``; ``host:port/path`` and ``https://`` work too)::

    python -m examples.http.client --ca cert.pem kwik://127.0.0.1:4433/api/health
    python -m examples.http.client -k -o big.bin kwik://127.0.0.1:4433/static/random.bin
    python -m examples.http.client -k -T big.bin kwik://127.0.0.1:4433/files/big.bin
    python -m examples.http.client -k --json '{"name": "kwik"}' kwik://127.0.0.1:4433/api/items
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h11
import httpx

import kwik

from .._common import EndProgressLine
from ._util import LOGGER, ProgressBar, client_tls_config, split_url

__all__ = ["KwikTransport", "main"]

#: Bytes asked of a stream per read of a response.
READ_SIZE = 256 * 1024

#: How long closing a finished exchange waits for the server's FIN.
FIN_TIMEOUT = 5.0


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeout: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeout


class _Exchange:
    """One request and its response on one stream."""

    def __init__(
        self,
        transport: KwikTransport,
        stream: kwik.Stream,
        request: httpx.Request,
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.request = request
        self.conn = h11.Connection(h11.CLIENT)
        timeouts = _timeouts(request)
        self.read_timeout = timeouts.get("read")
        self.write_timeout = timeouts.get("write")
        self.writer: asyncio.Task[None] | None = None
        self.reading: asyncio.Future[bytes] | None = None  # the read in flight, if any
        self.complete = False  # the response's EndOfMessage was read
        self.closed = False

    # --- the request ----------------------------------------------------------------------------

    async def write_request(self) -> None:
        """Write the request head and body, then finish our side of the stream."""
        request, conn = self.request, self.conn
        target = request.url.raw_path  # path and query, as bytes
        head = h11.Request(method=request.method, target=target, headers=request.headers.raw)
        await self._send(conn.send(head))
        async for chunk in request.stream:  # type: ignore[union-attr]
            if chunk:
                await self._send(conn.send(h11.Data(data=chunk)))
        await self._send(conn.send(h11.EndOfMessage()))
        try:
            await self.stream.close()
        except (kwik.KwikError, OSError) as exc:
            raise httpx.WriteError(f"kwik: {exc}", request=self.request) from exc

    async def _send(self, data: bytes | None) -> None:
        if not data:
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.stream.write(data)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(
                f"the stream stayed full for {self.write_timeout} s", request=self.request
            ) from exc
        except (kwik.KwikError, OSError) as exc:
            raise httpx.WriteError(f"kwik: {exc}", request=self.request) from exc

    # --- the response ---------------------------------------------------------------------------

    async def _read(self) -> bytes:
        """The next bytes of the response. While the request is still being written a slow
        answer is normal (the server may read the whole body first), so only the writer's own
        timeouts apply then; afterwards each read waits at most the read timeout."""
        if self.reading is None:
            self.reading = asyncio.ensure_future(self.stream.read(READ_SIZE))
        reading = self.reading
        writer = self.writer
        while writer is not None and not writer.done():
            waiting: set[asyncio.Future[Any]] = {reading, writer}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                break
        if writer is not None and writer.done() and not writer.cancelled():
            if (failure := writer.exception()) is not None and not reading.done():
                raise failure
        try:
            async with asyncio.timeout(self.read_timeout):
                data = await asyncio.shield(reading)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(
                f"nothing received for {self.read_timeout} s", request=self.request
            ) from exc
        except (kwik.KwikError, OSError) as exc:
            self.reading = None
            raise httpx.RemoteProtocolError(
                f"the response was cut short: {exc}", request=self.request
            ) from exc
        self.reading = None
        return data

    async def _event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self._read())
                    continue
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(
                    f"invalid response: {exc}", request=self.request
                ) from exc
            return event

    async def read_head(self) -> h11.Response:
        while True:
            event = await self._event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):  # 100 Continue: skip
                raise httpx.RemoteProtocolError(
                    f"unexpected {type(event).__name__} before the response", request=self.request
                )

    async def body(self) -> AsyncIterator[bytes]:
        while not self.complete:
            event = await self._event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
            else:
                raise httpx.RemoteProtocolError(
                    f"unexpected {type(event).__name__} in the response body",
                    request=self.request,
                )

    async def close(self) -> None:
        """End the exchange: stop the request writer if it still runs (the response is all
        there is to wait for), finish our side, and collect the server's FIN. An abandoned
        response is drained in the background (kwik cannot reset a stream), so that unread
        bytes never hold the session's flow control."""
        if self.closed:
            return
        self.closed = True
        writer = self.writer
        if writer is not None:
            if not writer.done():
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        with contextlib.suppress(kwik.KwikError, OSError):
            await self.stream.close()
        self.transport._spawn(self._drain(), f"drain-{self.stream.stream_id}")

    async def _drain(self) -> None:
        with contextlib.suppress(kwik.KwikError, OSError, TimeoutError):
            async with asyncio.timeout(FIN_TIMEOUT if self.complete else 60.0):
                if self.reading is not None:
                    await self.reading
                while await self.stream.read(READ_SIZE):
                    pass


class _ResponseStream(httpx.AsyncByteStream):
    """The response body as httpx reads it; closing it ends the exchange."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._exchange.body():
            yield chunk

    async def aclose(self) -> None:
        await self._exchange.close()


class KwikTransport(httpx.AsyncBaseTransport):
    """An httpx transport sending every request on its own stream of one kwik session.

    The session to ``address`` ("host:port") is dialed with the first request, reused by the
    next ones (concurrently as well), and dialed again when it has closed. Timeouts come from
    httpx: ``connect`` bounds dialing and opening a stream, ``write`` each write of the request,
    ``read`` each wait for the response once the request is out.

    Errors are httpx's: :class:`httpx.ConnectError` (cannot dial, certificate refused),
    :class:`httpx.ConnectTimeout`, :class:`httpx.WriteError` / :class:`httpx.WriteTimeout`,
    :class:`httpx.ReadTimeout`, :class:`httpx.RemoteProtocolError` (not HTTP/1.1, or the
    response cut short, e.g. by the session closing).
    """

    def __init__(
        self,
        address: str,
        tls_config: kwik.TLSConfig | None = None,
        config: kwik.Config | None = None,
    ) -> None:
        self.address = address
        self.tls_config = tls_config
        self.config = config
        self._session: kwik.Session | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def session(self) -> kwik.Session | None:
        """The current session (None before the first request)."""
        return self._session

    async def _connect(self, request: httpx.Request) -> kwik.Session:
        async with self._lock:
            if self._closed:
                raise RuntimeError("the transport is closed")
            session = self._session
            if session is not None and not session.is_closed:
                return session
            if session is not None:
                LOGGER.info("session to %s closed, dialing again", self.address)
                with contextlib.suppress(kwik.KwikError, OSError):
                    await session.close()
            try:
                async with asyncio.timeout(_timeouts(request).get("connect")):
                    session = await kwik.dial_addr(self.address, self.tls_config, self.config)
            except TimeoutError as exc:  # kwik.HandshakeTimeoutError is one too
                raise httpx.ConnectTimeout(
                    f"no kwik session with {self.address}: {exc or 'timed out'}", request=request
                ) from exc
            except (kwik.KwikError, OSError) as exc:
                raise httpx.ConnectError(
                    f"no kwik session with {self.address}: {exc}", request=request
                ) from exc
            self._session = session
            return session

    async def _open_stream(self, request: httpx.Request) -> kwik.Stream:
        for attempt in (1, 2):
            session = await self._connect(request)
            try:
                async with asyncio.timeout(_timeouts(request).get("connect")):
                    return await session.open_stream_sync()
            except kwik.SessionClosedError as exc:
                # closed under us before any byte of the request went out: one fresh try
                if attempt == 2:
                    raise httpx.ConnectError(
                        f"kwik session closed: {exc}", request=request
                    ) from exc
            except TimeoutError as exc:
                # the server did not even confirm a stream: the session is useless
                LOGGER.warning(
                    "%s did not confirm a new stream; dropping the session", self.address
                )
                with contextlib.suppress(kwik.KwikError, OSError):
                    await session.close()
                raise httpx.ConnectTimeout("no stream confirmed in time", request=request) from exc
        raise AssertionError("unreachable")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = await self._open_stream(request)
        exchange = _Exchange(self, stream, request)
        exchange.writer = asyncio.ensure_future(exchange.write_request())
        try:
            head = await exchange.read_head()
        except BaseException:
            await exchange.close()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=list(head.headers),
            stream=_ResponseStream(exchange),
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
                "kwik_stream_id": stream.stream_id,
            },
        )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"kwik-httpx-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop background drains and close the session. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._lock:
            session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(kwik.KwikError, OSError):
                await session.close()


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.http.client",
        description="HTTP/1.1 over kwik with httpx (curl-like).",
    )
    parser.add_argument("url", help="kwik://host:port/path (or host:port/path)")
    parser.add_argument("-X", "--request", dest="method", help="method (default GET, or POST/PUT)")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("-d", "--data", help="request body text (POST)")
    body.add_argument("--json", metavar="JSON", help="JSON request body (POST)")
    body.add_argument(
        "-T", "--upload-file", metavar="FILE", help="send FILE, streamed (PUT), progress bar"
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the body to FILE, progress bar"
    )
    parser.add_argument("-i", "--include", action="store_true", help="print the response head")
    parser.add_argument("--ca", metavar="FILE", help="trust this PEM certificate")
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    parser.add_argument("--server-name", help="name to verify (default: the URL's host)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds of silence allowed")
    parser.add_argument(
        "--progress", action="store_true", help="progress bar even when stderr is not a terminal"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _headers(values: list[str]) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"a header is 'Name: value', not {value!r}")
        headers.append((name.strip(), rest.strip()))
    return headers


async def _file_chunks(path: Path, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(path.open, "rb")
    try:
        done = 0
        while chunk := await asyncio.to_thread(file.read, READ_SIZE):
            done += len(chunk)
            progress(done)
            yield chunk
    finally:
        file.close()


def _print_head(response: httpx.Response, out: Any) -> None:
    out.write(
        f"{response.http_version} {response.status_code} {response.reason_phrase}\r\n".encode()
    )
    for name, value in response.headers.raw:
        out.write(name + b": " + value + b"\r\n")
    out.write(b"\r\n")


async def _run(args: argparse.Namespace) -> int:
    address, target = split_url(args.url)
    if address is None:
        raise ValueError(f"the URL needs a host: {args.url!r}")
    tls = client_tls_config(args.ca, insecure=args.insecure, server_name=args.server_name)
    headers = _headers(args.header)
    show_progress = True if args.progress else None
    out = sys.stdout.buffer
    content: Any = None
    method = args.method
    upload_bar: ProgressBar | None = None
    if args.upload_file is not None:
        source = Path(args.upload_file)
        size = (await asyncio.to_thread(source.stat)).st_size
        upload_bar = ProgressBar(source.name, enabled=show_progress)
        bar = upload_bar
        content = _file_chunks(source, lambda done: bar(done, size))
        headers.append(("content-length", str(size)))
        method = method or "PUT"
    elif args.json is not None:
        content = json.dumps(json.loads(args.json)).encode()
        headers.append(("content-type", "application/json"))
    elif args.data is not None:
        content = args.data.encode()
    method = (method or ("POST" if content is not None else "GET")).upper()

    transport = KwikTransport(address, tls)
    timeout = httpx.Timeout(args.timeout)
    base_url = f"https://{address}"
    async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout) as client:
        request = client.build_request(method, target, headers=headers, content=content)
        try:
            response = await client.send(request, stream=True)
        finally:
            if upload_bar is not None:
                upload_bar.finish()
        try:
            if args.include:
                _print_head(response, out)
            if args.output is not None and response.is_success:
                await _download(response, Path(args.output), show_progress)
            else:
                async for chunk in response.aiter_raw():
                    out.write(chunk)
            out.flush()
        finally:
            await response.aclose()
    if response.is_error:
        print(f"error: {response.status_code} {response.reason_phrase}", file=sys.stderr)
        return 1
    return 0


async def _download(response: httpx.Response, path: Path, show_progress: bool | None) -> None:
    """The body into ``path`` (via ``path.part``, renamed when complete), with a progress bar."""
    total = (
        int(response.headers["content-length"]) if "content-length" in response.headers else None
    )
    bar = ProgressBar(path.name, enabled=show_progress)
    partial = path.with_name(path.name + ".part")
    file = await asyncio.to_thread(partial.open, "wb")
    try:
        try:
            async for chunk in response.aiter_raw():
                await asyncio.to_thread(file.write, chunk)
                bar(response.num_bytes_downloaded, total)
        finally:
            file.close()
            bar.finish()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Exit status: 0 success, 1 HTTP status of 400 or more,
    2 usage error, 3 connection or protocol failure."""
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(EndProgressLine())  # a record never lands on the progress bar's line
    if args.verbose < 2:
        logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-connection chatter
    try:
        return asyncio.run(_run(args))
    except httpx.TransportError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
