"""HTTP/1.1 over kwik: the client, as a library and from the command line.

Every request travels on its own stream of one kwik session: the client opens a stream, writes
the request (h11), finishes its side (FIN) and reads the response until the stream ends. Many
requests can run at once on the same session.

Library::

    async with Client("127.0.0.1:4433", kwik.TLSConfig(cadata=cert_pem)) as client:
        response = await client.get("/api/health")
        items = await client.post_json("/api/items", {"name": "kwik"})
        await client.download("/static/big.bin", "big.bin")

Command line (URLs are ``kwik://host:port/path``; ``host:port/path`` works too)::

    python -m examples.http.client --ca cert.pem get kwik://127.0.0.1:4433/api/health
    python -m examples.http.client -k post kwik://127.0.0.1:4433/api/echo --data hello
    python -m examples.http.client -k download kwik://127.0.0.1:4433/static/a.bin a.bin
    python -m examples.http.client -k upload a.bin kwik://127.0.0.1:4433/files/a.bin
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11

import kwik

from ._util import (
    CHUNK_SIZE,
    LOGGER,
    ProgressBar,
    client_tls_config,
    decode_headers,
    header_value,
    next_event,
    split_url,
)

__all__ = [
    "Client",
    "HTTPStatusError",
    "InvalidResponseError",
    "Progress",
    "Response",
    "StreamedResponse",
    "main",
]

USER_AGENT = "kwik-http-example-client"

#: Called as ``progress(bytes_done, total_or_None)`` while a body moves.
Progress = Callable[[int, int | None], None]

#: What a request body may be: bytes, or an async iterable of chunks.
Content = bytes | bytearray | memoryview | AsyncIterable[bytes]

_FRAMING = ("content-length", "transfer-encoding")


class InvalidResponseError(ConnectionError):
    """The server's answer is not valid HTTP/1.1 (or the stream ended in the middle of it)."""


@dataclass(frozen=True)
class Response:
    """A complete response. Header names are lowercase."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    http_version: str = "1.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called ``name`` (case-insensitive), or ``default``."""
        value = header_value(self.headers, name)
        return default if value is None else value

    @property
    def ok(self) -> bool:
        """True for a status below 400."""
        return self.status < 400

    @property
    def text(self) -> str:
        """The body decoded with the ``charset`` of ``Content-Type`` (default UTF-8)."""
        charset = "utf-8"
        for param in (self.header("content-type") or "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        return self.body.decode(charset, errors="replace")

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` if it is not)."""
        return json.loads(self.body)

    def raise_for_status(self) -> Response:
        """Return ``self``, or raise :class:`HTTPStatusError` for a status of 400 or more."""
        if not self.ok:
            raise HTTPStatusError(self)
        return self


class HTTPStatusError(Exception):
    """A response with a status of 400 or more where success was required."""

    def __init__(self, response: Response) -> None:
        detail = response.body[:200].decode("utf-8", errors="replace").strip()
        super().__init__(f"{response.status} {response.reason}: {detail}")
        self.response = response


class _Exchange:
    """One request/response on one stream: the request is written by a task while the
    response is read, so an early answer (413, 404 on an upload) is seen at once."""

    def __init__(self, stream: kwik.Stream, conn: h11.Connection, timeout: float) -> None:
        self.stream = stream
        self.conn = conn
        self.timeout = timeout
        self.writer: asyncio.Task[None] | None = None
        self.sent = 0  # request bytes handed to the stream so far (progress of the writer)
        self.complete = False  # EndOfMessage seen

    async def receive(self) -> bytes:
        """The next bytes of the response; fails as soon as the request writer fails.

        Raises:
            TimeoutError: ``timeout`` seconds passed with nothing received and nothing sent.
        """
        writer = self.writer
        if writer is None or writer.done():
            if writer is not None and not writer.cancelled() and writer.exception() is not None:
                raise writer.exception()  # type: ignore[misc]
            async with asyncio.timeout(self.timeout):
                return await self.stream.read(CHUNK_SIZE)
        # the request is still being written: a read may legitimately wait for all of it
        reading = asyncio.ensure_future(self.stream.read(CHUNK_SIZE))
        try:
            while True:
                sent = self.sent
                waiting: set[asyncio.Future[Any]] = {reading}
                if not writer.done():
                    waiting.add(writer)
                done, _ = await asyncio.wait(
                    waiting, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if reading in done:
                    return reading.result()
                if writer in done:
                    if not writer.cancelled() and writer.exception() is not None:
                        raise writer.exception()  # type: ignore[misc]
                    continue  # the request is out: only the read is left
                if writer.done() or self.sent == sent:
                    raise TimeoutError(f"no progress for {self.timeout} s")
        finally:
            if not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    async def event(self) -> Any:
        try:
            return await next_event(self.conn, self.receive)
        except h11.RemoteProtocolError as exc:
            raise InvalidResponseError(f"invalid response: {exc}") from exc

    async def read_head(self) -> h11.Response:
        while True:
            event = await self.event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):  # 100 Continue: skip
                raise InvalidResponseError(f"unexpected {event!r} before the response")

    async def body(self) -> AsyncIterator[bytes]:
        while not self.complete:
            event = await self.event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
            else:
                raise InvalidResponseError(f"unexpected {event!r} in the response body")

    async def finish(self) -> bool:
        """Stop the request writer if it still runs, finish our side of the stream, and read
        the peer's FIN when the response was complete. Returns True when the stream is fully
        done, False when the response was abandoned (the caller must drain it)."""
        writer = self.writer
        if writer is not None:
            if not writer.done():
                writer.cancel()
            # also retrieves a failure nobody saw (the response was complete before it)
            await asyncio.gather(writer, return_exceptions=True)
        with contextlib.suppress(kwik.KwikError):
            await self.stream.close()
        if not self.complete:
            return False
        with contextlib.suppress(kwik.KwikError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                while await self.stream.read(CHUNK_SIZE):
                    pass  # nothing is expected after the response: ignore it
        return True

    async def drain(self) -> None:
        """Read and discard the rest of an abandoned response, so that the stream's unread
        data never stalls the session (kwik has no way to cancel a stream)."""
        with contextlib.suppress(kwik.KwikError, TimeoutError):
            while True:
                async with asyncio.timeout(self.timeout):
                    if not await self.stream.read(CHUNK_SIZE):
                        return


class StreamedResponse:
    """A response whose body is read as it arrives (see :meth:`Client.stream`)."""

    def __init__(self, head: h11.Response, exchange: _Exchange) -> None:
        self.status: int = head.status_code
        self.reason: str = head.reason.decode("latin-1")
        self.http_version: str = head.http_version.decode("ascii")
        self.headers: tuple[tuple[str, str], ...] = decode_headers(head.headers)
        self._exchange = exchange
        self._consumed = False

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called ``name`` (case-insensitive), or ``default``."""
        value = header_value(self.headers, name)
        return default if value is None else value

    @property
    def content_length(self) -> int | None:
        """``Content-Length`` as an int, None when absent."""
        value = self.header("content-length")
        return int(value) if value is not None else None

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives. Can be consumed once.

        Raises:
            InvalidResponseError: the stream ended before the body did.
            TimeoutError: nothing arrived for the client's ``timeout``.
            kwik.SessionClosedError: the session closed.
        """
        if self._consumed:
            raise RuntimeError("the body was already read")
        self._consumed = True
        async for chunk in self._exchange.body():
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def complete(self) -> Response:
        """Read the body and return the complete :class:`Response`."""
        body = await self.read()
        return Response(self.status, self.reason, self.headers, body, self.http_version)


class Client:
    """HTTP/1.1 client over one kwik session to ``address`` ("host:port").

    The session is dialed on first use (or by :meth:`connect`) and re-dialed when it has closed.
    Every request gets its own stream; any number may run concurrently. ``timeout`` bounds each
    wait for the server (opening a stream, each read), not a whole transfer. Targets are paths
    (``/a?b``) or URLs whose address is this client's.

    Methods returning a :class:`Response` do not raise for error statuses (use
    :meth:`Response.raise_for_status`); the JSON helpers and :meth:`download` do.
    """

    def __init__(
        self,
        address: str,
        tls_config: kwik.TLSConfig | None = None,
        *,
        config: kwik.Config | None = None,
        timeout: float = 30.0,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.address = address
        self.tls_config = tls_config
        self.config = config
        self.timeout = timeout
        self.headers = list(headers)
        self._session: kwik.Session | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- session --------------------------------------------------------------------------------

    async def connect(self) -> kwik.Session:
        """The live session, dialed now if there is none or it closed.

        Raises:
            kwik.HandshakeError, kwik.HandshakeTimeoutError: as :func:`kwik.dial_addr`.
            RuntimeError: the client is closed.
        """
        async with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            session = self._session
            if session is None or session.is_closed:
                if session is not None:
                    LOGGER.info("session to %s closed, dialing again", self.address)
                    await session.close()  # releases what is left of the old one
                session = await kwik.dial_addr(self.address, self.tls_config, self.config)
                self._session = session
            return session

    async def _open_stream(self) -> kwik.Stream:
        session = await self.connect()
        try:
            return await session.open_stream_sync()
        except kwik.SessionClosedError:
            # closed under us, before any byte of this request was sent: one fresh try
            session = await self.connect()
            return await session.open_stream_sync()
        except TimeoutError:
            # the peer did not even confirm a stream: the session is useless, start over
            LOGGER.warning("%s did not confirm a new stream; dropping the session", self.address)
            await session.abort("stream open timed out")
            raise

    async def close(self) -> None:
        """Stop background drains and close the session. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._lock:
            session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- requests -------------------------------------------------------------------------------

    def _target(self, target: str) -> str:
        address, path = split_url(target)
        if address is not None and address != self.address:
            raise ValueError(f"{target!r} is not on {self.address}")
        return path

    def _request_headers(
        self,
        method: str,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] | None,
        content: Content | None,
        content_length: int | None,
    ) -> list[tuple[str, str]]:
        items = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        given = {name.lower() for name, _ in items}
        merged = [(n, v) for n, v in self.headers if n.lower() not in given] + items
        merged = [(n, v) for n, v in merged if n.lower() not in _FRAMING]
        names = {name.lower() for name, _ in merged}
        if "host" not in names:
            merged.insert(0, ("host", self.address))
        if "user-agent" not in names:
            merged.append(("user-agent", USER_AGENT))
        if isinstance(content, bytes | bytearray | memoryview):
            merged.append(("content-length", str(len(content))))
        elif content is not None:
            if content_length is not None:
                merged.append(("content-length", str(content_length)))
            else:
                merged.append(("transfer-encoding", "chunked"))
        elif method in ("POST", "PUT", "PATCH"):
            merged.append(("content-length", "0"))
        return merged

    @staticmethod
    async def _write_request(
        exchange: _Exchange,
        request: h11.Request,
        content: Content | None,
        total: int | None,
        progress: Progress | None,
    ) -> None:
        """Write the request on the exchange's stream, then finish the stream (FIN)."""
        stream, conn = exchange.stream, exchange.conn
        done = 0

        async def send(event: h11.Event, *, body: int = 0) -> None:
            nonlocal done
            data = conn.send(event)
            assert data is not None
            await stream.write(data)
            exchange.sent += len(data)
            if body:
                done += body
                if progress is not None:
                    progress(done, total)

        await send(request)
        if isinstance(content, bytes | bytearray | memoryview):
            view = memoryview(content)
            step = CHUNK_SIZE * 4
            for start in range(0, len(view), step):
                piece = bytes(view[start : start + step])
                await send(h11.Data(data=piece), body=len(piece))
        elif content is not None:
            iterator = aiter(content)
            try:
                async for chunk in iterator:
                    if chunk:
                        await send(h11.Data(data=chunk), body=len(chunk))
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
        await send(h11.EndOfMessage())
        if progress is not None:
            progress(done, total)
        await stream.close()

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        target: str,
        *,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        content: Content | None = None,
        content_length: int | None = None,
        upload_progress: Progress | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        """Send a request and yield the response once its head arrived; read the body from it.

        ``content`` is the body: bytes (sent with ``Content-Length``) or an async iterable of
        chunks (sent with ``Content-Length: content_length`` when given, else chunked). The
        request body is written concurrently with reading the response. Framing headers in
        ``headers`` are ignored: the client sets them. ``Host`` defaults to the address.

        Leaving the block before the body was read is fine: the rest is discarded in the
        background.

        Raises:
            InvalidResponseError: the answer is not HTTP/1.1.
            TimeoutError: the server was silent for ``timeout`` seconds.
            kwik.KwikError: dialing failed, or the session closed.
            ValueError: ``target`` is on another address.
        """
        method = method.upper()
        path = self._target(target)
        request_headers = self._request_headers(method, headers, content, content_length)
        request = h11.Request(method=method, target=path, headers=request_headers)
        total = len(content) if isinstance(content, bytes | bytearray | memoryview) else None
        total = total if total is not None else content_length
        stream = await self._open_stream()
        conn = h11.Connection(h11.CLIENT)
        exchange = _Exchange(stream, conn, self.timeout)
        writer = asyncio.ensure_future(
            self._write_request(exchange, request, content, total, upload_progress)
        )
        writer.set_name(f"kwik-http-client-write-{stream.stream_id}")
        exchange.writer = writer
        try:
            head = await exchange.read_head()
            yield StreamedResponse(head, exchange)
        finally:
            finished = await exchange.finish()
            if not finished and not stream.session.is_closed:
                self._spawn(exchange.drain(), f"drain-{stream.stream_id}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"kwik-http-client-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        content: Content | None = None,
        content_length: int | None = None,
        json: Any = None,
    ) -> Response:
        """Send a request and return the complete response (whatever its status).

        ``json`` (if not None) is serialized as the body with ``Content-Type:
        application/json``. Raises as :meth:`stream`.
        """
        if json is not None:
            content = _json_bytes(json)
            headers = [*_header_items(headers), ("content-type", "application/json")]
        async with self.stream(
            method, target, headers=headers, content=content, content_length=content_length
        ) as response:
            return await response.complete()

    async def get(self, target: str, **kwargs: Any) -> Response:
        """``GET``; keyword arguments as :meth:`request`."""
        return await self.request("GET", target, **kwargs)

    async def head(self, target: str, **kwargs: Any) -> Response:
        """``HEAD``: the response has the headers of a GET, and no body."""
        return await self.request("HEAD", target, **kwargs)

    async def post(self, target: str, content: Content | None = None, **kwargs: Any) -> Response:
        """``POST`` ``content``."""
        return await self.request("POST", target, content=content, **kwargs)

    async def put(self, target: str, content: Content | None = None, **kwargs: Any) -> Response:
        """``PUT`` ``content``."""
        return await self.request("PUT", target, content=content, **kwargs)

    async def delete(self, target: str, **kwargs: Any) -> Response:
        """``DELETE``."""
        return await self.request("DELETE", target, **kwargs)

    # --- JSON helpers ---------------------------------------------------------------------------

    async def request_json(self, method: str, target: str, data: Any = None) -> Any:
        """Send ``data`` as JSON (if not None), return the decoded JSON answer (None for an empty
        body).

        Raises:
            HTTPStatusError: the status is 400 or more.
            ValueError: the answer is not JSON.
        """
        response = await self.request(
            method, target, json=data, headers=[("accept", "application/json")]
        )
        response.raise_for_status()
        return response.json() if response.body else None

    async def get_json(self, target: str) -> Any:
        """``GET`` and decode JSON (see :meth:`request_json`)."""
        return await self.request_json("GET", target)

    async def post_json(self, target: str, data: Any) -> Any:
        """``POST`` ``data`` as JSON and decode the JSON answer."""
        return await self.request_json("POST", target, data)

    async def put_json(self, target: str, data: Any) -> Any:
        """``PUT`` ``data`` as JSON and decode the JSON answer."""
        return await self.request_json("PUT", target, data)

    # --- files ----------------------------------------------------------------------------------

    async def download(
        self, target: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Response:
        """``GET`` ``target`` into the file ``path``, streamed (never held in memory).

        The file is written as ``path.part`` and renamed when complete, so ``path`` never holds
        a partial download. Returns the response with an empty body.

        Raises:
            HTTPStatusError: the status is 400 or more (no file is written).
            and as :meth:`stream`.
        """
        destination = Path(path)
        partial = destination.with_name(destination.name + ".part")
        async with self.stream("GET", target) as response:
            if response.status >= 400:
                raise HTTPStatusError(await response.complete())
            total = response.content_length
            done = 0
            file = await asyncio.to_thread(partial.open, "wb")
            try:
                try:
                    async for chunk in response.iter_bytes():
                        await asyncio.to_thread(file.write, chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                finally:
                    file.close()
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            if progress is not None:
                progress(done, total)
            partial.replace(destination)
            return Response(
                response.status, response.reason, response.headers, b"", response.http_version
            )

    async def upload(
        self,
        path: str | os.PathLike[str],
        target: str,
        *,
        method: str = "PUT",
        content_type: str = "application/octet-stream",
        progress: Progress | None = None,
    ) -> Response:
        """Send the file ``path`` as the body of ``method`` ``target``, streamed with its
        ``Content-Length``. Returns the complete response (whatever its status).

        Raises:
            OSError: the file cannot be read.
            and as :meth:`stream`.
        """
        source = Path(path)
        size = (await asyncio.to_thread(source.stat)).st_size
        async with self.stream(
            method,
            target,
            headers=[("content-type", content_type)],
            content=_file_chunks(source, size),
            content_length=size,
            upload_progress=progress,
        ) as response:
            return await response.complete()


async def _file_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    """Exactly ``size`` bytes of ``path`` (fails if the file shrank meanwhile)."""
    file = await asyncio.to_thread(path.open, "rb")
    try:
        left = size
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK_SIZE * 4, left))
            if not chunk:
                raise OSError(f"{path} shrank while it was being sent")
            left -= len(chunk)
            yield chunk
    finally:
        file.close()


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data).encode()


def _header_items(
    headers: Iterable[tuple[str, str]] | Mapping[str, str] | None,
) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items() if isinstance(headers, Mapping) else headers)


# --- command line -------------------------------------------------------------------------------


def _add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes. They are accepted before the command (with their
    defaults) and after it (``suppress``: then they only override what was given before)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--ca", metavar="FILE", default=default(None), help="trust this PEM")
    parser.add_argument(
        "-k",
        "--insecure",
        action="store_true",
        default=default(False),
        help="do not verify the server's certificate",
    )
    parser.add_argument(
        "--server-name", default=default(None), help="name to verify (default: the URL's host)"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=default([]),
        metavar="'NAME: VALUE'",
        help="add a request header",
    )
    parser.add_argument(
        "-i",
        "--include",
        action="store_true",
        default=default(False),
        help="print the status line and headers",
    )
    parser.add_argument(
        "--timeout", type=float, default=default(30.0), help="seconds of silence allowed"
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        default=default(False),
        help="progress bar even when stderr is not a terminal",
    )
    parser.add_argument("-v", "--verbose", action="count", default=default(0))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, suppress=True)

    def body_options(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group()
        group.add_argument("-d", "--data", help="body text")
        group.add_argument("--data-file", metavar="FILE", help="body from FILE")
        group.add_argument("--json", metavar="JSON", help="JSON body (sets Content-Type)")
        sub.add_argument("--content-type", help="Content-Type of the body")

    parser = argparse.ArgumentParser(
        prog="python -m examples.http.client", description="HTTP/1.1 over kwik."
    )
    _add_common_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("get", "head", "delete"):
        sub = commands.add_parser(name, parents=[common], help=f"{name.upper()} URL")
        sub.add_argument("url")
    for name in ("post", "put"):
        sub = commands.add_parser(name, parents=[common], help=f"{name.upper()} URL with a body")
        sub.add_argument("url")
        body_options(sub)
    sub = commands.add_parser("get-json", parents=[common], help="GET URL, print JSON")
    sub.add_argument("url")
    for name in ("post-json", "put-json"):
        sub = commands.add_parser(name, parents=[common], help="send JSON, print JSON")
        sub.add_argument("url")
        sub.add_argument("data", help="a JSON document")
    sub = commands.add_parser("download", parents=[common], help="GET URL into FILE")
    sub.add_argument("url")
    sub.add_argument("file")
    sub = commands.add_parser("upload", parents=[common], help="send FILE to URL")
    sub.add_argument("file")
    sub.add_argument("url")
    sub.add_argument("--method", default="PUT", choices=("PUT", "POST"))
    return parser


def _parse_headers(values: list[str]) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"a header is 'Name: value', not {value!r}")
        headers.append((name.strip(), rest.strip()))
    return headers


def _print_head(response: Response, out: Any) -> None:
    out.write(f"HTTP/{response.http_version} {response.status} {response.reason}\r\n".encode())
    for name, value in response.headers:
        out.write(f"{name}: {value}\r\n".encode("latin-1"))
    out.write(b"\r\n")


async def _run(args: argparse.Namespace) -> int:
    address, target = split_url(args.url)
    if address is None:
        raise ValueError(f"the URL needs a host: {args.url!r}")
    tls = client_tls_config(args.ca, insecure=args.insecure, server_name=args.server_name)
    headers = _parse_headers(args.header)
    out = sys.stdout.buffer
    show_progress = True if args.progress else None
    async with Client(address, tls, timeout=args.timeout, headers=headers) as client:
        command = args.command
        if command in ("get-json", "post-json", "put-json"):
            data = json.loads(args.data) if command != "get-json" else None
            method = command.split("-")[0].upper()
            result = await client.request_json(method, target, data)
            out.write(json.dumps(result, indent=2).encode() + b"\n")
            return 0
        if command == "download":
            bar = ProgressBar(Path(args.file).name, enabled=show_progress)
            try:
                response = await client.download(target, args.file, progress=bar)
            finally:
                bar.finish()
            if args.include:
                _print_head(response, out)
            return 0
        if command == "upload":
            bar = ProgressBar(Path(args.file).name, enabled=show_progress)
            try:
                response = await client.upload(args.file, target, method=args.method, progress=bar)
            finally:
                bar.finish()
        else:
            content: bytes | None = None
            request_headers: list[tuple[str, str]] = []
            if command in ("post", "put"):
                if args.json is not None:
                    content = json.dumps(json.loads(args.json)).encode()
                    request_headers.append(("content-type", "application/json"))
                elif args.data_file is not None:
                    content = await asyncio.to_thread(Path(args.data_file).read_bytes)
                else:
                    content = (args.data or "").encode()
                if args.content_type:
                    request_headers = [("content-type", args.content_type)]
            response = await client.request(
                command.upper(), target, headers=request_headers, content=content
            )
        if args.include:
            _print_head(response, out)
        out.write(response.body)
        out.flush()
        if not response.ok:
            print(f"error: {response.status} {response.reason}", file=sys.stderr)
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Exit status: 0 success, 1 HTTP status of 400 or more,
    2 usage error, 3 connection or protocol failure."""
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    if args.verbose < 2:
        logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-connection chatter
    try:
        return asyncio.run(_run(args))
    except HTTPStatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, TimeoutError, kwik.KwikError, h11.LocalProtocolError) as exc:
        # OSError covers ConnectionError: SessionClosedError, HandshakeError, bad responses
        print(f"error: {exc or type(exc).__name__}", file=sys.stderr)
        return 3 if isinstance(exc, ConnectionError | TimeoutError | kwik.KwikError) else 2


if __name__ == "__main__":
    sys.exit(main())
