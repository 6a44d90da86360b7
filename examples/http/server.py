"""HTTP/1.1 over kwik: a small server, one request per kwik stream.

The peer opens a stream, writes one HTTP/1.1 request and finishes its side (FIN); the server
answers on the same stream and finishes it. h11 parses and produces every byte of HTTP.

Building blocks, usable on their own:

* :class:`Request` / :class:`Response` (what handlers see and return), :class:`HTTPError`;
* :class:`Router`: exact paths (``/api/items``) and prefix patterns (``/static/*``);
* :class:`App`: a router, a middleware chain (:func:`log_requests`, :func:`server_header`) and
  the body limit;
* :func:`static_files`: a handler serving a directory;
* :class:`HTTPServer`: serves an :class:`App` on a kwik listener.

:func:`create_app` wires the demo application. From the command line::

    python -m examples.http.server --listen 127.0.0.1:4433 --static ./public
    python -m examples.http.server --demo        # + a TCP gateway for curl and browsers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import html
import json
import mimetypes
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import h11

import kwik

from ._util import (
    CHUNK_SIZE,
    DEFAULT_MAX_HEAD,
    LOGGER,
    decode_headers,
    header_value,
    next_event,
    parse_size,
    reason_phrase,
    run_cli,
    server_tls_config,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "App",
    "HTTPError",
    "HTTPServer",
    "Handler",
    "Middleware",
    "Request",
    "Response",
    "Router",
    "create_app",
    "log_requests",
    "main",
    "server_header",
    "static_files",
]

#: Default limit on a request body; larger bodies get 413.
DEFAULT_MAX_BODY = 32 * 1024 * 1024

SERVER_NAME = "kwik-http-example"


class HTTPError(Exception):
    """Raise from a handler to answer with ``status``; the body is a JSON error document.

    Attributes:
        status: the HTTP status code.
        detail: a human explanation (goes into the body).
        headers: extra response headers (e.g. ``Allow`` for 405).
    """

    def __init__(
        self, status: int, detail: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(f"{status} {detail or reason_phrase(status)}")
        self.status = status
        self.detail = detail
        self.headers = list(headers)


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request, body included (bounded by :attr:`App.max_body`).

    ``path`` is the percent-decoded path of ``target``; ``query`` its raw query string.
    ``tail`` is what a prefix route's ``*`` matched (``""`` for exact routes). Header names are
    lowercase.
    """

    method: str
    target: str
    path: str
    query: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    remote: str = ""
    stream_id: int = -1
    tail: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called ``name`` (case-insensitive), or ``default``."""
        value = header_value(self.headers, name)
        return default if value is None else value

    @property
    def args(self) -> dict[str, list[str]]:
        """The query string, decoded: ``?a=1&a=2`` → ``{"a": ["1", "2"]}``."""
        return parse_qs(self.query, keep_blank_values=True)

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            HTTPError: 400 when the body is not valid UTF-8 JSON.
        """
        try:
            return json.loads(self.body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise HTTPError(400, f"invalid JSON body: {exc}") from None


#: A response body: bytes, or an async iterable of chunks (then set ``content_length`` if known;
#: without it the body is sent chunked).
Body = bytes | AsyncIterable[bytes]


@dataclass
class Response:
    """What a handler returns. ``Content-Length`` is added for ``bytes`` bodies."""

    status: int = 200
    body: Body = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_length: int | None = None

    @classmethod
    def json(
        cls, data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """``data`` serialized as JSON (``application/json``)."""
        body = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
        return cls(status, body, [("content-type", "application/json"), *headers])

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain") -> Response:
        """``text`` encoded as UTF-8."""
        return cls(status, text.encode(), [("content-type", f"{content_type}; charset=utf-8")])

    @classmethod
    def error(
        cls, status: int, detail: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """A JSON error document: ``{"status": 404, "error": "Not Found", "detail": ...}``."""
        document: dict[str, Any] = {"status": status, "error": reason_phrase(status)}
        if detail:
            document["detail"] = detail
        return cls.json(document, status, headers)

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)

    def set_header(self, name: str, value: str) -> None:
        """Replace every header called ``name`` with one ``name: value``."""
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name.lower(), value))

    @property
    def size(self) -> int | None:
        """Body size in bytes, when known."""
        if isinstance(self.body, bytes | bytearray | memoryview):
            return len(self.body)
        return self.content_length


Handler = Callable[[Request], Awaitable[Response]]
"""Turns a request into a response. May raise :class:`HTTPError`."""

Middleware = Callable[[Request, Handler], Awaitable[Response]]
"""Wraps the rest of the chain: ``await call_next(request)`` runs it and returns its response."""


# --- routing ------------------------------------------------------------------------------------


@dataclass
class _Route:
    pattern: str
    methods: dict[str, Handler]


class Router:
    """Maps paths to handlers.

    A pattern is an exact path (``/api/items``) or a prefix ending in ``*`` (``/static/*``
    matches ``/static/a/b.txt`` with ``tail == "a/b.txt"``). Resolution picks the exact route if
    there is one, else the longest matching prefix; only that route's methods are considered, so
    a path it matches with another method gets 405 (with ``Allow``), an unmatched path 404.
    ``HEAD`` is served by the ``GET`` handler (the body is dropped on the wire).
    """

    def __init__(self) -> None:
        self._exact: dict[str, _Route] = {}
        self._prefixes: list[_Route] = []

    def add(self, pattern: str, handler: Handler, methods: Iterable[str] = ("GET",)) -> None:
        """Route ``methods`` on ``pattern`` to ``handler``.

        Raises:
            ValueError: the pattern does not start with ``/``, or a method is already routed.
        """
        if not pattern.startswith("/"):
            raise ValueError(f"a route pattern starts with '/': {pattern!r}")
        if pattern.endswith("*"):
            route = next((r for r in self._prefixes if r.pattern == pattern), None)
            if route is None:
                route = _Route(pattern, {})
                self._prefixes.append(route)
                self._prefixes.sort(key=lambda r: len(r.pattern), reverse=True)
        else:
            route = self._exact.setdefault(pattern, _Route(pattern, {}))
        for method in methods:
            method = method.upper()
            if method in route.methods:
                raise ValueError(f"{method} {pattern} is already routed")
            route.methods[method] = handler

    def route(
        self, pattern: str, methods: Iterable[str] = ("GET",)
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def register(handler: Handler) -> Handler:
            self.add(pattern, handler, methods)
            return handler

        return register

    def resolve(self, method: str, path: str) -> tuple[Handler, str]:
        """The handler for ``method`` on ``path`` and the tail the pattern's ``*`` matched.

        Raises:
            HTTPError: 404 when no pattern matches, 405 when the method is not routed there.
        """
        route = self._exact.get(path)
        tail = ""
        if route is None:
            for candidate in self._prefixes:
                prefix = candidate.pattern[:-1]
                if path.startswith(prefix):
                    route, tail = candidate, path[len(prefix) :]
                    break
        if route is None:
            raise HTTPError(404, f"no route for {path}")
        handler = route.methods.get(method)
        if handler is None and method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            allowed = set(route.methods)
            if "GET" in allowed:
                allowed.add("HEAD")
            raise HTTPError(
                405,
                f"{method} is not allowed on {path}",
                [("allow", ", ".join(sorted(allowed)))],
            )
        return handler, tail


# --- middleware ---------------------------------------------------------------------------------


async def log_requests(request: Request, call_next: Handler) -> Response:
    """Middleware: one INFO line per request on ``kwik.examples.http``, in the spirit of the
    common log format: peer, stream, request line, status, body size, and the time the inner
    chain took (a streamed body, e.g. a static file, is sent after that)."""
    started = time.perf_counter()
    response = await call_next(request)
    size = response.size
    LOGGER.info(
        '%s stream %d "%s %s HTTP/%s" %d %s %.1f ms',
        request.remote,
        request.stream_id,
        request.method,
        request.target,
        request.http_version,
        response.status,
        "-" if size is None else size,
        (time.perf_counter() - started) * 1000,
    )
    return response


async def server_header(request: Request, call_next: Handler) -> Response:
    """Middleware: adds ``Server`` and ``X-Kwik-Stream`` (the stream that carried the request)."""
    response = await call_next(request)
    response.set_header("server", SERVER_NAME)
    response.set_header("x-kwik-stream", str(request.stream_id))
    return response


# --- application --------------------------------------------------------------------------------


class App:
    """A router, a middleware chain and a body limit: turns a :class:`Request` into a
    :class:`Response`. Never raises: :class:`HTTPError` becomes its response and any other
    exception a logged 500.

    Middleware run in the order given, the first one outermost.
    """

    def __init__(
        self,
        router: Router | None = None,
        middleware: Iterable[Middleware] = (log_requests, server_header),
        *,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if max_body < 0:
            raise ValueError("max_body must not be negative")
        self.router = router if router is not None else Router()
        self.middleware = list(middleware)
        self.max_body = max_body

    def route(
        self, pattern: str, methods: Iterable[str] = ("GET",)
    ) -> Callable[[Handler], Handler]:
        """Decorator: route ``methods`` on ``pattern`` (see :class:`Router`)."""
        return self.router.route(pattern, methods)

    def use(self, middleware: Middleware) -> None:
        """Append ``middleware`` (innermost so far)."""
        self.middleware.append(middleware)

    async def handle(self, request: Request) -> Response:
        """Run ``request`` through the middleware chain and its route."""
        chain: Handler = self._dispatch
        for middleware in reversed(self.middleware):
            chain = _bind(middleware, chain)
        try:
            return await chain(request)
        except HTTPError as exc:
            return Response.error(exc.status, exc.detail, exc.headers)
        except Exception:
            LOGGER.exception("middleware failed on %s %s", request.method, request.target)
            return Response.error(500)

    async def _dispatch(self, request: Request) -> Response:
        try:
            handler, tail = self.router.resolve(request.method, request.path)
            return await handler(dataclasses.replace(request, tail=tail))
        except HTTPError as exc:
            return Response.error(exc.status, exc.detail, exc.headers)
        except Exception:
            LOGGER.exception("handler failed on %s %s", request.method, request.target)
            return Response.error(500)


def _bind(middleware: Middleware, call_next: Handler) -> Handler:
    async def handler(request: Request) -> Response:
        return await middleware(request, call_next)

    return handler


# --- static files -------------------------------------------------------------------------------


async def _file_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of ``path``, read in a worker thread chunk by chunk."""
    file = await asyncio.to_thread(path.open, "rb")
    try:
        left = size
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK_SIZE * 4, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
    finally:
        file.close()


def static_files(root: str | os.PathLike[str], *, index: str = "index.html") -> Handler:
    """A handler (for a prefix route such as ``/static/*``) serving the files under ``root``.

    The route's tail names the file. Paths escaping ``root`` (``..``, symlinks out) are 404. A
    directory is served by its ``index`` file if present, else as an HTML listing; a directory
    asked for without its trailing slash is redirected (301). Files are streamed, never loaded
    whole; ``Content-Type`` comes from the file name.
    """
    base = Path(root).resolve()
    if not base.is_dir():
        raise ValueError(f"not a directory: {root}")

    def locate(tail: str, url_path: str) -> Response | tuple[Path, os.stat_result]:
        """Blocking part (runs in a thread): the file to send and its stat, or a response."""
        if "\0" in tail or any(part == ".." for part in tail.split("/")):
            raise HTTPError(404, f"{url_path} not found")
        path = (base / tail.lstrip("/")).resolve()
        if (path != base and not path.is_relative_to(base)) or not path.exists():
            raise HTTPError(404, f"{url_path} not found")
        if path.is_dir():
            if not url_path.endswith("/"):
                return Response(301, b"", [("location", quote(url_path) + "/")])
            if not (path / index).is_file():
                return _listing(url_path, path)
            path = path / index
        if not path.is_file():
            raise HTTPError(404, f"{url_path} not found")
        return path, path.stat()

    async def handler(request: Request) -> Response:
        found = await asyncio.to_thread(locate, request.tail, request.path)
        if isinstance(found, Response):
            return found
        path, stat = found
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = [
            ("content-type", content_type),
            ("last-modified", formatdate(stat.st_mtime, usegmt=True)),
        ]
        return Response(200, _file_chunks(path, stat.st_size), headers, stat.st_size)

    return handler


def _listing(url_path: str, directory: Path) -> Response:
    entries = sorted(directory.iterdir(), key=lambda p: (not p.is_dir(), p.name))
    items = "\n".join(
        f'<li><a href="{quote(p.name)}{"/" if p.is_dir() else ""}">'
        f"{html.escape(p.name)}{'/' if p.is_dir() else ''}</a></li>"
        for p in entries
        if not p.name.startswith(".")
    )
    title = html.escape(url_path)
    page = f"<!doctype html><title>{title}</title><h1>{title}</h1><ul>\n{items}\n</ul>\n"
    return Response.text(page, content_type="text/html")


# --- the server ---------------------------------------------------------------------------------


class _Reject(Exception):
    """Answer ``response`` without running the application (bad or oversized request)."""

    def __init__(self, response: Response, request_line: str = "-") -> None:
        super().__init__(response.status)
        self.response = response
        self.request_line = request_line


class HTTPServer:
    """Serves an :class:`App` over kwik: every stream a peer opens carries one request.

    Per stream: the request is read with h11 (``request_timeout`` bounds the whole request),
    bodies above ``app.max_body`` get 413 (at once when ``Content-Length`` says so), requests h11
    rejects get 400 (431 for oversized heads), then the response is written and the stream
    finished. Whatever the peer still sends is read and discarded (bounded by
    ``drain_timeout``) so that an abandoned stream never stalls the session. A bad request only
    ever affects its own stream.

    Use :meth:`start` + :meth:`close` (or ``async with``), or hand sessions to
    :meth:`serve_session` yourself.
    """

    def __init__(
        self,
        app: App,
        *,
        request_timeout: float = 30.0,
        drain_timeout: float = 10.0,
        max_head_size: int = DEFAULT_MAX_HEAD,
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.max_head_size = max_head_size
        self._listener: kwik.Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def addr(self) -> str:
        """The kwik address ("host:port") being served; empty before :meth:`start`."""
        return self._listener.addr if self._listener is not None else ""

    async def start(
        self, address: str, tls_config: kwik.TLSConfig, config: kwik.Config | None = None
    ) -> None:
        """Listen on ``address`` (port 0 picks one, see :attr:`addr`) and serve in the
        background until :meth:`close`.

        Raises:
            RuntimeError: already started.
            OSError, ValueError: as :func:`kwik.listen_addr`.
        """
        if self._listener is not None:
            raise RuntimeError("server already started")
        self._listener = await kwik.listen_addr(address, tls_config, config)
        self._spawn(self._accept_loop(self._listener), "accept")
        LOGGER.info("HTTP over kwik on %s", self._listener.addr)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop accepting, close every session (gracefully, within the listener's bound), and
        end every task this server started. Idempotent."""
        if self._listener is not None:
            await self._listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._closed.set()

    async def __aenter__(self) -> HTTPServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"kwik-http-server-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: kwik.Listener) -> None:
        async for session in listener:
            self._spawn(self.serve_session(session), f"session-{session.session_id}")

    async def serve_session(self, session: kwik.Session) -> None:
        """Serve every stream ``session``'s peer opens, until the session closes."""
        remote = session.remote_addr
        LOGGER.debug("session %d from %s", session.session_id, remote)
        while True:
            try:
                stream = await session.accept_stream()
            except kwik.SessionClosedError as exc:
                LOGGER.debug("session %d from %s ended: %s", session.session_id, remote, exc)
                return
            self._spawn(self.handle_stream(stream, remote), f"stream-{stream.stream_id}")

    async def handle_stream(self, stream: kwik.Stream, remote: str = "") -> None:
        """Serve the one request ``stream`` carries. Never raises (but may be cancelled)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size)
        try:
            method = await self._exchange(conn, stream, remote)
            if method is None:
                return
            await stream.close()
            await self._drain(stream)
        except (kwik.SessionClosedError, kwik.StreamClosedError) as exc:
            LOGGER.debug("stream %d: %s", stream.stream_id, exc)
        except h11.LocalProtocolError as exc:
            # the application produced a response h11 refuses (e.g. a short body): the peer
            # sees the stream end early, which its h11 reports as an incomplete response
            LOGGER.error("stream %d: invalid response: %s", stream.stream_id, exc)
            with contextlib.suppress(kwik.KwikError):
                await stream.close()
        except Exception:
            LOGGER.exception("stream %d: unexpected failure", stream.stream_id)
            with contextlib.suppress(kwik.KwikError):
                await stream.close()

    async def _exchange(self, conn: h11.Connection, stream: kwik.Stream, remote: str) -> str | None:
        """Read the request, answer it. Returns the method (``"-"`` if rejected), or None when
        the peer finished the stream without sending anything."""
        try:
            async with asyncio.timeout(self.request_timeout):
                request = await self._read_request(conn, stream, remote)
        except _Reject as reject:
            response = reject.response
            LOGGER.info(
                '%s stream %d "%s" %d rejected',
                remote,
                stream.stream_id,
                reject.request_line,
                response.status,
            )
            await self._write_response(conn, stream, response, head_only=False)
            return "-"
        except TimeoutError:
            LOGGER.info("%s stream %d: request timed out", remote, stream.stream_id)
            await self._write_response(conn, stream, Response.error(408), head_only=False)
            return "-"
        if request is None:
            await stream.close()
            return None
        response = await self.app.handle(request)
        await self._write_response(conn, stream, response, head_only=request.method == "HEAD")
        return request.method

    async def _read_request(
        self, conn: h11.Connection, stream: kwik.Stream, remote: str
    ) -> Request | None:
        head: h11.Request | None = None
        line = "-"
        body = bytearray()
        max_body = self.app.max_body

        received = 0

        async def receive() -> bytes:
            # h11 rejects a head only while it is incomplete and longer than the limit: reading
            # no further than one byte past the limit before the head is parsed makes every
            # head longer than max_head_size fail, however the bytes arrive
            nonlocal received
            if head is None:
                data = await stream.read(max(1, self.max_head_size + 1 - received))
            else:
                data = await stream.read(CHUNK_SIZE)
            received += len(data)
            return data

        while True:
            try:
                event = await next_event(conn, receive)
            except h11.RemoteProtocolError as exc:
                raise _Reject(Response.error(exc.error_status_hint, str(exc)), line) from None
            if isinstance(event, h11.Request):
                head = event
                line = f"{event.method.decode()} {event.target.decode('latin-1')}"
                declared = header_value(decode_headers(event.headers), "content-length")
                if declared is not None and int(declared) > max_body:
                    raise _Reject(self._too_large(max_body), line)
                if conn.they_are_waiting_for_100_continue:
                    await stream.write(
                        conn.send(
                            h11.InformationalResponse(
                                status_code=100, headers=[], reason="Continue"
                            )
                        )
                    )
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise _Reject(self._too_large(max_body), line)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return self._request(head, bytes(body), remote, stream.stream_id)
            elif isinstance(event, h11.ConnectionClosed):
                return None  # FIN before any byte of a request
            else:  # PAUSED cannot come before EndOfMessage
                raise AssertionError(f"unexpected h11 event {event!r}")

    @staticmethod
    def _too_large(max_body: int) -> Response:
        return Response.error(413, f"the body limit is {max_body} bytes")

    @staticmethod
    def _request(head: h11.Request, body: bytes, remote: str, stream_id: int) -> Request:
        target = head.target.decode("latin-1")
        parts = urlsplit(target)
        return Request(
            method=head.method.decode("ascii"),
            target=target,
            path=unquote(parts.path) or "/",
            query=parts.query,
            http_version=head.http_version.decode("ascii"),
            headers=decode_headers(head.headers),
            body=body,
            remote=remote,
            stream_id=stream_id,
        )

    async def _write_response(
        self, conn: h11.Connection, stream: kwik.Stream, response: Response, *, head_only: bool
    ) -> None:
        status = response.status
        body = response.body
        no_body = head_only or status in (204, 304) or status < 200
        headers = [
            (k, v) for k, v in response.headers if k.lower() not in ("content-length", "date")
        ]
        headers.append(("date", formatdate(usegmt=True)))
        size = response.size
        if size is not None and status not in (204, 304) and status >= 200:
            headers.append(("content-length", str(size)))
        start = conn.send(
            h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
        )
        if isinstance(body, bytes | bytearray | memoryview):
            out = start
            if body and not no_body:
                out += conn.send(h11.Data(data=body))
            await stream.write(out + conn.send(h11.EndOfMessage()))
            return
        await stream.write(start)
        chunks = aiter(body)
        try:
            if not no_body:
                async for chunk in chunks:
                    if chunk:
                        await stream.write(conn.send(h11.Data(data=chunk)))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await stream.write(conn.send(h11.EndOfMessage()))

    async def _drain(self, stream: kwik.Stream) -> None:
        """Read and discard until the peer's FIN (normally already there)."""
        discarded = 0
        try:
            async with asyncio.timeout(self.drain_timeout):
                while data := await stream.read(CHUNK_SIZE):
                    discarded += len(data)
        except TimeoutError:
            LOGGER.debug("stream %d: peer did not finish its side", stream.stream_id)
        if discarded:
            LOGGER.debug("stream %d: discarded %d unread bytes", stream.stream_id, discarded)


# --- the demo application -----------------------------------------------------------------------


_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")


class FileStore:
    """Uploaded files, by name: in memory, or in ``directory`` when given."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, bytes] = {}

    @staticmethod
    def check_name(name: str) -> str:
        """``name`` if it is a plain file name (letters, digits, ``._-``).

        Raises:
            HTTPError: 400 otherwise.
        """
        if not _FILE_NAME.match(name):
            raise HTTPError(400, f"invalid file name {name!r}")
        return name

    async def put(self, name: str, data: bytes) -> bool:
        """Store ``data`` as ``name``; True if it replaced a file."""
        if self.directory is None:
            existed = name in self._memory
            self._memory[name] = data
            return existed
        path = self.directory / name
        existed = path.exists()
        await asyncio.to_thread(path.write_bytes, data)
        return existed

    async def get(self, name: str) -> bytes | None:
        if self.directory is None:
            return self._memory.get(name)
        path = self.directory / name
        return await asyncio.to_thread(path.read_bytes) if path.is_file() else None

    async def delete(self, name: str) -> bool:
        if self.directory is None:
            return self._memory.pop(name, None) is not None
        path = self.directory / name
        if not path.is_file():
            return False
        path.unlink()
        return True

    def names(self) -> list[str]:
        if self.directory is None:
            return sorted(self._memory)
        return sorted(p.name for p in self.directory.iterdir() if p.is_file())


def _describe(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def create_app(
    static_dir: str | os.PathLike[str] | None = None,
    *,
    uploads: FileStore | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> App:
    """The demo application.

    ============================  =====================  =====================================
    path                          methods                what
    ============================  =====================  =====================================
    ``/``                         GET                    index page (``static_dir/index.html``
                                                         if present)
    ``/api/health``               GET                    ``{"status": "ok"}``
    ``/api/request``              GET, POST              the request, described in JSON
    ``/api/echo``                 POST, PUT              the request body, unchanged
    ``/api/items``                GET, POST              list / create (JSON objects) → 201
    ``/api/items/*``              GET, PUT, DELETE       one item; 404 when missing
    ``/files``                    GET                    names of the uploaded files
    ``/files/*``                  GET, PUT, POST,        upload (→ 201 + size and SHA-256),
                                  DELETE                 download, delete
    ``/static/*``                 GET                    files under ``static_dir``
    ============================  =====================  =====================================
    """
    app = App(max_body=max_body)
    store = uploads if uploads is not None else FileStore()
    items: dict[int, dict[str, Any]] = {}
    next_id = iter(range(1, 1 << 62))
    static_root = Path(static_dir) if static_dir is not None else None

    @app.route("/")
    async def index(request: Request) -> Response:
        if static_root is not None and (static_root / "index.html").is_file():
            data = await asyncio.to_thread((static_root / "index.html").read_bytes)
            return Response(200, data, [("content-type", "text/html; charset=utf-8")])
        links = [
            "/api/health",
            "/api/request?hello=world",
            "/api/items",
            "/files",
            *(["/static/"] if static_root is not None else []),
        ]
        items_html = "\n".join(f'<li><a href="{url}">{html.escape(url)}</a></li>' for url in links)
        page = (
            "<!doctype html><title>kwik HTTP example</title>"
            "<h1>HTTP/1.1 over kwik</h1>"
            f"<p>This page came over kwik stream {request.stream_id}.</p>"
            f"<ul>\n{items_html}\n</ul>\n"
        )
        return Response.text(page, content_type="text/html")

    @app.route("/api/health")
    async def health(request: Request) -> Response:
        return Response.json({"status": "ok", "stream": request.stream_id})

    @app.route("/api/request", methods=("GET", "POST"))
    async def describe(request: Request) -> Response:
        return Response.json(
            {
                "method": request.method,
                "target": request.target,
                "path": request.path,
                "args": request.args,
                "headers": [list(h) for h in request.headers],
                "body_size": len(request.body),
                "body_sha256": hashlib.sha256(request.body).hexdigest(),
                "stream": request.stream_id,
                "remote": request.remote,
            }
        )

    @app.route("/api/echo", methods=("POST", "PUT"))
    async def echo(request: Request) -> Response:
        content_type = request.header("content-type", "application/octet-stream")
        assert content_type is not None
        return Response(200, request.body, [("content-type", content_type)])

    @app.route("/api/items", methods=("GET", "POST"))
    async def items_collection(request: Request) -> Response:
        if request.method == "GET":
            return Response.json([{"id": i, **item} for i, item in sorted(items.items())])
        item = request.json()
        if not isinstance(item, dict):
            raise HTTPError(400, "an item is a JSON object")
        item_id = next(next_id)
        items[item_id] = item
        return Response.json({"id": item_id, **item}, 201, [("location", f"/api/items/{item_id}")])

    @app.route("/api/items/*", methods=("GET", "PUT", "DELETE"))
    async def item_resource(request: Request) -> Response:
        try:
            item_id = int(request.tail)
        except ValueError:
            raise HTTPError(404, f"no item {request.tail!r}") from None
        if request.method == "PUT":
            item = request.json()
            if not isinstance(item, dict):
                raise HTTPError(400, "an item is a JSON object")
            created = item_id not in items
            items[item_id] = item
            return Response.json({"id": item_id, **item}, 201 if created else 200)
        if item_id not in items:
            raise HTTPError(404, f"no item {item_id}")
        if request.method == "DELETE":
            del items[item_id]
            return Response(204)
        return Response.json({"id": item_id, **items[item_id]})

    @app.route("/files")
    async def list_files(request: Request) -> Response:
        return Response.json(store.names())

    @app.route("/files/*", methods=("GET", "PUT", "POST", "DELETE"))
    async def file_resource(request: Request) -> Response:
        name = FileStore.check_name(request.tail)
        if request.method in ("PUT", "POST"):
            replaced = await store.put(name, request.body)
            return Response.json(
                _describe(name, request.body),
                200 if replaced else 201,
                [("location", request.path)],
            )
        if request.method == "DELETE":
            if not await store.delete(name):
                raise HTTPError(404, f"no file {name!r}")
            return Response(204)
        data = await store.get(name)
        if data is None:
            raise HTTPError(404, f"no file {name!r}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(200, data, [("content-type", content_type)])

    if static_root is not None:
        app.router.add("/static/*", static_files(static_root))
    return app


# --- command line -------------------------------------------------------------------------------


def _demo_static_dir(parent: Path) -> Path:
    """A small static tree for the demo: a text file and 1 MiB of random bytes."""
    root = parent / "static"
    root.mkdir()
    (root / "hello.txt").write_text("Hello over kwik!\n")
    (root / "random.bin").write_bytes(os.urandom(1024 * 1024))
    return root


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.http.server",
        description="HTTP/1.1 over kwik, one request per stream.",
    )
    parser.add_argument("--listen", default="127.0.0.1:4433", help="kwik address (host:port)")
    parser.add_argument("--cert", help="certificate chain (PEM); default: a self-signed one")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument(
        "--cert-out", help="write the (generated) certificate here, for clients' --ca"
    )
    parser.add_argument("--static", metavar="DIR", help="serve DIR under /static/")
    parser.add_argument("--uploads", metavar="DIR", help="keep uploads in DIR (default: memory)")
    parser.add_argument(
        "--max-body", type=parse_size, default=DEFAULT_MAX_BODY, help="request body limit (32M)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="also start a TCP gateway for curl and browsers"
    )
    parser.add_argument(
        "--gateway-listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="the demo gateway's TCP address",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


async def _run(args: argparse.Namespace) -> None:
    from .gateway import Gateway

    tls, cert_pem = server_tls_config(args.cert, args.key)
    with tempfile.TemporaryDirectory(prefix="kwik-http-") as scratch:
        cert_path = args.cert or args.cert_out or os.path.join(scratch, "cert.pem")
        if args.cert is None:
            await asyncio.to_thread(Path(cert_path).write_bytes, cert_pem)
        static = args.static
        if static is None and args.demo:
            static = await asyncio.to_thread(_demo_static_dir, Path(scratch))
        app = create_app(static, uploads=FileStore(args.uploads), max_body=args.max_body)
        server = HTTPServer(app)
        gateway: Gateway | None = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await server.start(args.listen, tls)
            print(f"kwik HTTP server: kwik://{server.addr}/", flush=True)
            print(f"certificate: {cert_path}", flush=True)
            if static is not None:
                print(f"static files: {static} -> /static/", flush=True)
            if args.demo:
                gateway = Gateway(server.addr, kwik.TLSConfig(cadata=cert_pem))
                await gateway.start(args.gateway_listen)
                print(f"gateway: {gateway.url} -> kwik://{server.addr}", flush=True)
                print(f"try: curl {gateway.url}api/health", flush=True)
                print(f"     curl -o random.bin {gateway.url}static/random.bin", flush=True)
            print(
                f"     python -m examples.http.client --ca {cert_path} "
                f"get kwik://{server.addr}/api/health",
                flush=True,
            )
            await stop.wait()
        finally:
            print("shutting down", file=sys.stderr, flush=True)
            if gateway is not None:
                await gateway.close()
            await server.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
