"""An ASGI 3 server over kwik: any ASGI application (Starlette, FastAPI, ...) on kwik streams.

Every stream a peer opens carries one HTTP/1.1 request; the answer goes back on the same stream,
which the server then finishes (FIN). h11 parses and produces every byte of HTTP. The
application sees a complete ``http`` scope (method, path, raw_path, query_string, headers,
client, server, scheme ``https``, http_version, root_path, the lifespan ``state``, and an
extension ``scope["extensions"]["kwik"]`` with the session and stream ids). The
``http.response.pathsend`` extension lets file responses (Starlette's ``FileResponse``, so
``StaticFiles``) hand the server a path, which it sends in large chunks.

What the server guarantees (the duties of an ASGI server):

* request bodies reach the application as it calls ``receive()`` (nothing is read ahead, so
  kwik's flow control holds a fast sender back), response bodies are written as the application
  sends them (``send()`` waits while the stream's send buffer is full);
* ``lifespan`` startup before the first request, shutdown on :meth:`ASGIServer.close`
  (``lifespan="auto"`` tolerates applications without lifespan support);
* a request h11 rejects gets 400 (431 for a head above ``max_head_size``), a body above
  ``max_body`` 413, a head that does not arrive within ``request_timeout`` 408;
* an application that raises (or returns) before starting its response gets 500; one that
  raises in the middle of the body gets its stream finished early, which the peer's HTTP parser
  reports as an incomplete response;
* after the response, whatever the peer still sends is read and dropped (bounded by
  ``drain_timeout``), so an abandoned request never stalls the session.

``asgi.spec_version`` is 2.4: ``send()`` raises :class:`OSError` once the stream or session is
gone, and ``receive()`` returns ``http.disconnect`` once the response is complete (or the peer
is gone).

From the command line (the default application is the Starlette demo, :mod:`examples.http.app`)::

    python -m examples.http.server --app myproject.asgi:app --listen 0.0.0.0:4433 \\
        --cert cert.pem --key key.pem
    python -m examples.http.server --demo       # + a uvicorn gateway for curl and browsers

The demo listens on free ports and prints its two addresses (``kwik://...`` and
``http://...``); ``--listen`` and ``--gateway-listen`` choose them. A port that is taken ends
the program with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h11

import kwik

from ._util import DEFAULT_MAX_HEAD, LOGGER, parse_size, run_cli, server_tls_config

__all__ = [
    "DEFAULT_MAX_BODY",
    "ASGIApp",
    "ASGIServer",
    "load_app",
    "main",
    "with_static_files",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Default limit on a request body; larger bodies get 413.
DEFAULT_MAX_BODY = 1024 * 1024 * 1024

#: Bytes asked of a stream per read while a request body is being received.
READ_SIZE = 256 * 1024

#: Bytes read from a file per write, for ``http.response.pathsend``.
FILE_CHUNK = 1024 * 1024

SERVER_HEADER = (b"server", b"kwik-asgi")

ACCESS_LOGGER = LOGGER.getChild("access")


def _split_host_port(address: str) -> tuple[str, int] | None:
    """``"host:port"`` / ``"[v6]:port"`` as ASGI's ``(host, port)``; None when unknown."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _error_response(status: int, detail: str = "", *, head_only: bool = False) -> bytes:
    """A complete plain-text error response of the server's own, as bytes.

    Formatted by hand rather than through the stream's ``h11.Connection``, which may be in its
    ERROR state by then (the request, or the application's response, broke the protocol).
    """
    body = f"{status} {_reason(status).decode()}\n{detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_reason(status).decode()}\r\n"
        f"date: {formatdate(usegmt=True)}\r\n"
        f"{SERVER_HEADER[0].decode()}: {SERVER_HEADER[1].decode()}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


class _StreamGone(ConnectionResetError):
    """``send()`` after the stream or its session failed (ASGI 2.4: an OSError)."""


class _BodyTooLarge(Exception):
    """Raised to the application by ``receive()`` when the body passed ``max_body``."""


class _Cycle:
    """One request/response on one stream: the ``receive`` and ``send`` the application gets."""

    def __init__(
        self,
        server: ASGIServer,
        stream: kwik.Stream,
        conn: h11.Connection,
        head: h11.Request,
    ) -> None:
        self.server = server
        self.stream = stream
        self.conn = conn
        self.head_only = head.method == b"HEAD"
        self.request_complete = False  # h11's EndOfMessage was read
        self.body_received = 0
        self.continue_sent = False
        self.too_large = False  # the body passed max_body: answer 413 if still possible
        self.response_started = False  # http.response.start was sent by the application
        self.head_written = False  # the response head went out on the stream
        self.response_complete = False
        self.failed = False  # the stream or the session failed under us
        self.status = 0
        self.body_sent = 0
        self.done = asyncio.Event()  # response complete, or the peer gone
        self.pending = b""  # the response head, until it goes out (see send)
        self._flush_handle: asyncio.Handle | None = None
        self._flushing: asyncio.Task[None] | None = None

    # --- receive --------------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.request_complete and not self.failed and not self.response_complete:
            try:
                return await self._receive_body()
            except (kwik.KwikError, OSError, TimeoutError, h11.RemoteProtocolError) as exc:
                LOGGER.debug("stream %d: request body failed: %s", self.stream.stream_id, exc)
                self.fail()
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def _receive_body(self) -> Message:
        conn = self.conn
        if conn.they_are_waiting_for_100_continue and not self.continue_sent:
            self.continue_sent = True
            interim = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await self._write(conn.send(interim))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(self.server.request_timeout):
                    conn.receive_data(await self.stream.read(READ_SIZE))
                continue
            if isinstance(event, h11.Data):
                self.body_received += len(event.data)
                if self.body_received > self.server.max_body:
                    self.too_large = True
                    raise _BodyTooLarge(f"the body limit is {self.server.max_body} bytes")
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.request_complete = True
                return {"type": "http.request", "body": b"", "more_body": False}
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a request body")

    # --- send -----------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.failed:
            raise _StreamGone(f"kwik stream {self.stream.stream_id} is gone")
        if self.too_large:
            # the server answers 413 itself; whatever the application sends is moot
            raise _StreamGone("the request body was too large")
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self.response_started = True
            self.status = int(message["status"])
            headers = list(message.get("headers", ()))
            names = {bytes(name).lower() for name, _ in headers}
            if b"date" not in names:
                headers.append((b"date", formatdate(usegmt=True).encode()))
            if b"server" not in names:
                headers.append(SERVER_HEADER)
            response = h11.Response(
                status_code=self.status, headers=headers, reason=_reason(self.status)
            )
            # held until the first body chunk, which normally follows without the application
            # yielding to the loop: one stream write per response instead of two (each costs a
            # kwik transmit). An application that does yield (a stream that waits for its first
            # chunk) gets the head flushed right then, so the client has the status meanwhile.
            self.pending = self.conn.send(response) or b""
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
        elif kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_complete:
                raise RuntimeError("http.response.body after the response was complete")
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            await self._head_in_order()
            out, self.pending = self.pending, b""
            if body and not self.head_only:
                out += self.conn.send(h11.Data(data=body)) or b""
                self.body_sent += len(body)
            if not more:
                out += self.conn.send(h11.EndOfMessage()) or b""
            if out:
                self.head_written = True
                await self._write(out)
            if not more:
                self.response_complete = True
                await self._finish()
                self.done.set()
        elif kind == "http.response.pathsend":
            if not self.response_started or self.response_complete:
                raise RuntimeError("http.response.pathsend out of place")
            await self._head_in_order()
            await self._send_file(message["path"])
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an http scope")

    async def _head_in_order(self) -> None:
        """Before body bytes: no head flush scheduled or in flight (it would race them)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flushing is not None:
            await self._flushing
            if self.failed:
                raise _StreamGone(f"kwik stream {self.stream.stream_id} is gone")

    async def _send_file(self, path: str) -> None:
        """The ``http.response.pathsend`` extension: the whole file at ``path`` is the body,
        read by the server in large chunks (in a worker thread) rather than sent by the
        application piece by piece. The application already set its Content-Length."""
        file = await asyncio.to_thread(open, path, "rb")
        try:
            out, self.pending = self.pending, b""
            while not self.head_only:
                chunk = await asyncio.to_thread(file.read, FILE_CHUNK)
                if not chunk:
                    break
                self.body_sent += len(chunk)
                out += self.conn.send(h11.Data(data=chunk)) or b""
                self.head_written = True
                await self._write(out)
                out = b""
            out += self.conn.send(h11.EndOfMessage()) or b""
            self.head_written = True
            await self._write(out)
        finally:
            file.close()
        self.response_complete = True
        await self._finish()
        self.done.set()

    def _flush_soon(self) -> None:
        """Loop callback: the application yielded after http.response.start; send the head."""
        self._flush_handle = None
        if self.pending and not self.failed:
            self._flushing = asyncio.ensure_future(self._flush_head())

    async def _flush_head(self) -> None:
        out, self.pending = self.pending, b""
        self.head_written = True
        with contextlib.suppress(_StreamGone):  # recorded in self.failed
            await self._write(out)

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except (kwik.KwikError, OSError) as exc:
            self.fail()
            raise _StreamGone(f"kwik stream {self.stream.stream_id}: {exc}") from exc

    async def _finish(self) -> None:
        """Finish our side of the stream (FIN)."""
        try:
            await self.stream.close()
        except (kwik.KwikError, OSError) as exc:
            self.fail()
            LOGGER.debug("stream %d: close failed: %s", self.stream.stream_id, exc)

    async def settle(self) -> None:
        """After the application: a held head is either on the wire or still held, no flush
        pending or in flight."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flushing is not None:
            await self._flushing

    def fail(self) -> None:
        """The peer is gone: no more reading or writing; wake ``receive()`` waiters."""
        self.failed = True
        self.done.set()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    # --- the server's part after the application ------------------------------------------------

    async def answer(self, status: int, detail: str = "") -> None:
        """Send an error response of the server's own (when the application did not start
        one), then finish the stream."""
        self.status = status
        self.response_started = self.head_written = True
        self.pending = b""  # a head the application started and never followed: replaced
        response = _error_response(status, detail, head_only=self.head_only)
        await self._write(response)
        self.response_complete = True
        await self._finish()
        self.done.set()


class ASGIServer:
    """Serves an ASGI 3 application over kwik: one HTTP/1.1 request per stream.

    Use :meth:`start` and :meth:`close` (or ``async with``), or hand sessions accepted elsewhere
    to :meth:`serve_session` (then run :meth:`startup` / :meth:`shutdown` for the lifespan).

    Args:
        app: the ASGI 3 application.
        lifespan: ``"auto"`` (run the lifespan protocol, tolerate applications that do not
            support it), ``"on"`` (a failure to start fails :meth:`start`) or ``"off"``.
        max_head_size: largest request head (request line and headers); larger ones get 431.
        max_body: largest request body; larger ones get 413.
        request_timeout: seconds a request head may take to arrive (then 408), and the longest
            silence while the application waits for body bytes.
        drain_timeout: seconds spent dropping what a peer still sends after the response.
        root_path: the ``root_path`` of every scope (when mounted below a prefix).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifespan: str = "auto",
        max_head_size: int = DEFAULT_MAX_HEAD,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = 30.0,
        drain_timeout: float = 10.0,
        root_path: str = "",
    ) -> None:
        if lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan is auto, on or off, not {lifespan!r}")
        self.app = app
        self.lifespan = lifespan
        self.max_head_size = max_head_size
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.root_path = root_path
        self.state: dict[str, Any] = {}  # the lifespan state, copied into every scope
        self._listener: kwik.Listener | None = None
        self._sessions: set[kwik.Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lifespan_task: asyncio.Task[None] | None = None
        self._lifespan_queue: asyncio.Queue[Message] = asyncio.Queue()
        self._startup: asyncio.Future[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None

    @property
    def addr(self) -> str:
        """The kwik address ("host:port") being served; empty before :meth:`start`."""
        return self._listener.addr if self._listener is not None else ""

    @property
    def sessions(self) -> frozenset[kwik.Session]:
        """The sessions being served now."""
        return frozenset(self._sessions)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(
        self, address: str, tls_config: kwik.TLSConfig, config: kwik.Config | None = None
    ) -> None:
        """Run the lifespan startup, then listen on ``address`` (port 0 picks one, see
        :attr:`addr`) and serve in the background until :meth:`close`.

        Raises:
            RuntimeError: already started, or the application's startup failed.
            OSError, ValueError: as :func:`kwik.listen_addr`.
        """
        if self._listener is not None:
            raise RuntimeError("server already started")
        await self.startup()
        try:
            self._listener = await kwik.listen_addr(address, tls_config, config)
        except BaseException:
            await self.shutdown()
            raise
        self._spawn(self._accept_loop(self._listener), "accept")
        LOGGER.debug("ASGI over kwik on %s", self._listener.addr)  # the CLI prints it

    async def close(self) -> None:
        """Stop listening, close every session (gracefully, within the listener's bound), end
        every task this server started, then run the lifespan shutdown. Idempotent."""
        if self._listener is not None:
            await self._listener.close()
        for session in list(self._sessions):
            await session.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.shutdown()

    async def __aenter__(self) -> ASGIServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"kwik-asgi-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifespan -------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Run the application's lifespan startup (nothing when ``lifespan="off"``).

        Raises:
            RuntimeError: the application reported ``lifespan.startup.failed``, or raised during
                startup with ``lifespan="on"``.
        """
        if self.lifespan == "off" or self._startup is not None:
            return
        loop = asyncio.get_running_loop()
        self._startup, self._shutdown = loop.create_future(), loop.create_future()
        self._lifespan_queue.put_nowait({"type": "lifespan.startup"})
        self._lifespan_task = asyncio.ensure_future(self._run_lifespan())
        await self._startup

    async def shutdown(self) -> None:
        """Run the lifespan shutdown, if the startup completed. Errors are logged."""
        task, self._lifespan_task = self._lifespan_task, None
        if task is None:
            return
        assert self._startup is not None and self._shutdown is not None
        if self._startup.done() and self._startup.exception() is None and not task.done():
            self._lifespan_queue.put_nowait({"type": "lifespan.shutdown"})
            try:
                await asyncio.wait_for(asyncio.shield(self._shutdown), 30.0)
            except Exception as exc:
                LOGGER.error("lifespan shutdown failed: %s", exc)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run_lifespan(self) -> None:
        startup, shutdown = self._startup, self._shutdown
        assert startup is not None and shutdown is not None
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }

        async def send(message: Message) -> None:
            kind = message["type"]
            future = startup if kind.startswith("lifespan.startup.") else shutdown
            if future.done():
                return
            if kind.endswith(".complete"):
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(f"{kind}: {message.get('message', '')}"))

        try:
            await self.app(scope, self._lifespan_queue.get, send)
        except BaseException as exc:
            if not startup.done():
                if self.lifespan == "on" or isinstance(exc, asyncio.CancelledError):
                    startup.set_exception(RuntimeError(f"lifespan startup raised {exc!r}"))
                else:
                    LOGGER.info("the application does not support lifespan (%r)", exc)
                    startup.set_result(None)
            elif not shutdown.done():
                shutdown.set_exception(RuntimeError(f"lifespan shutdown raised {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not startup.done():  # returned without a word: no lifespan support
                startup.set_result(None)
            if not shutdown.done():
                shutdown.set_result(None)

    # --- serving --------------------------------------------------------------------------------

    async def _accept_loop(self, listener: kwik.Listener) -> None:
        async for session in listener:
            self._spawn(self.serve_session(session), f"session-{session.session_id}")

    async def serve_session(self, session: kwik.Session) -> None:
        """Serve every stream ``session``'s peer opens, until the session closes."""
        self._sessions.add(session)
        client = _split_host_port(session.remote_addr)
        server = _split_host_port(session.local_addr)
        cycles: set[_Cycle] = set()
        try:
            while True:
                try:
                    stream = await session.accept_stream()
                except kwik.SessionClosedError as exc:
                    LOGGER.debug("session %d ended: %s", session.session_id, exc)
                    return
                self._spawn(
                    self._serve_stream(session, stream, client, server, cycles),
                    f"stream-{stream.stream_id}",
                )
        finally:
            self._sessions.discard(session)
            for cycle in list(cycles):  # wake every receive() waiting for the peer
                cycle.fail()

    async def _read_head(
        self, stream: kwik.Stream, conn: h11.Connection
    ) -> h11.Request | h11.ConnectionClosed:
        """The request head, or ConnectionClosed at a FIN before any request byte."""
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                # h11 rejects a head only while it is incomplete and above the limit: reading no
                # further than one byte past the limit makes every oversized head fail, however
                # the bytes arrive
                data = await stream.read(max(1, self.max_head_size + 1 - received))
                received += len(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request | h11.ConnectionClosed):
                return event
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before a request")

    async def _serve_stream(
        self,
        session: kwik.Session,
        stream: kwik.Stream,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        cycles: set[_Cycle],
    ) -> None:
        """Serve the one request ``stream`` carries. Never raises (but may be cancelled)."""
        started = time.perf_counter()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size)
        try:
            async with asyncio.timeout(self.request_timeout):
                head = await self._read_head(stream, conn)
        except h11.RemoteProtocolError as exc:
            await self._reject(stream, exc.error_status_hint, str(exc))
            return
        except TimeoutError:
            await self._reject(stream, 408, "the request head did not arrive in time")
            return
        except (kwik.KwikError, OSError) as exc:
            LOGGER.debug("stream %d: %s", stream.stream_id, exc)
            return
        if isinstance(head, h11.ConnectionClosed):  # FIN without a request: nothing to answer
            with contextlib.suppress(kwik.KwikError, OSError):
                await stream.close()
            return

        cycle = _Cycle(self, stream, conn, head)
        cycles.add(cycle)
        try:
            declared = next((v for n, v in head.headers if n == b"content-length"), None)
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                cycle.too_large = True
            else:
                await self._run_app(cycle, self._scope(session, stream, head, client, server))
            if cycle.too_large and not cycle.head_written:
                await cycle.answer(413, f"the body limit is {self.max_body} bytes")
            ACCESS_LOGGER.info(
                '%s stream %d "%s %s HTTP/%s" %d %d %.1f ms',
                session.remote_addr,
                stream.stream_id,
                head.method.decode(),
                head.target.decode("latin-1"),
                head.http_version.decode(),
                cycle.status,
                cycle.body_sent,
                (time.perf_counter() - started) * 1000,
            )
            if not cycle.failed:
                await self._drain(cycle)
        except (kwik.KwikError, OSError) as exc:
            LOGGER.debug("stream %d: %s", stream.stream_id, exc)
        finally:
            cycles.discard(cycle)
            cycle.fail()

    async def _run_app(self, cycle: _Cycle, scope: Scope) -> None:
        """Run the application on ``cycle``, then make up for what it left undone."""
        stream_id = cycle.stream.stream_id
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception as exc:
            await cycle.settle()
            if cycle.failed or cycle.too_large:
                LOGGER.debug("stream %d: application stopped: %r", stream_id, exc)
            else:
                LOGGER.error("stream %d: application raised", stream_id, exc_info=exc)
            if cycle.too_large or cycle.failed:
                return
            if not cycle.head_written:
                await cycle.answer(500)
            elif not cycle.response_complete:
                await cycle._finish()  # the peer sees the body end early
            return
        await cycle.settle()
        if cycle.failed or cycle.too_large or cycle.response_complete:
            return
        if not cycle.head_written:
            LOGGER.error("stream %d: application returned without a response", stream_id)
            await cycle.answer(500)
        else:
            LOGGER.error("stream %d: application returned in the middle of its body", stream_id)
            await cycle._finish()

    def _scope(
        self,
        session: kwik.Session,
        stream: kwik.Stream,
        head: h11.Request,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> Scope:
        target = head.target
        if not target.startswith(b"/") and b"://" in target:  # absolute-form: keep the path
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        raw_path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": head.http_version.decode(),
            "method": head.method.decode(),
            "scheme": "https",  # QUIC is always encrypted
            "path": self.root_path + unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.root_path,
            "headers": list(head.headers),  # h11 lowercases the names already
            "client": client,
            "server": server,
            "state": dict(self.state),
            "extensions": {
                "http.response.pathsend": {},
                "kwik": {"session_id": session.session_id, "stream_id": stream.stream_id},
            },
        }

    async def _reject(self, stream: kwik.Stream, status: int, why: str) -> None:
        """Answer an unusable request with ``status``, finish the stream, drop the rest."""
        LOGGER.info("stream %d: rejected with %d: %s", stream.stream_id, status, why)
        with contextlib.suppress(kwik.KwikError, OSError):
            await stream.write(_error_response(status, why))
            await stream.close()
            await self._discard(stream)

    async def _drain(self, cycle: _Cycle) -> None:
        """Drop the rest of the request the application did not read."""
        if not cycle.response_complete:
            await cycle._finish()
        await self._discard(cycle.stream)

    async def _discard(self, stream: kwik.Stream) -> None:
        """Read and drop until the peer's FIN (normally there already)."""
        dropped = 0
        try:
            async with asyncio.timeout(self.drain_timeout):
                while data := await stream.read(READ_SIZE):
                    dropped += len(data)
        except TimeoutError:
            LOGGER.debug("stream %d: the peer did not finish its side", stream.stream_id)
        except (kwik.KwikError, OSError):
            return
        if dropped:
            LOGGER.debug("stream %d: dropped %d unread bytes", stream.stream_id, dropped)


# --- helpers for the command line ---------------------------------------------------------------


def load_app(spec: str) -> ASGIApp:
    """The ASGI application named by ``"package.module:attribute"`` (dots allowed after the
    colon, e.g. ``"main:api.app"``).

    Raises:
        ValueError: ``spec`` has no colon, or the attribute is missing or not callable.
        ImportError: the module cannot be imported.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--app is MODULE:ATTRIBUTE, not {spec!r}")
    target: Any = importlib.import_module(module_name)
    try:
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ValueError(f"{module_name} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not an ASGI application")
    return target  # type: ignore[no-any-return]


def with_static_files(
    app: ASGIApp, directory: str | os.PathLike[str], prefix: str = "/static"
) -> ASGIApp:
    """``app`` with the files under ``directory`` served below ``prefix`` by Starlette's
    ``StaticFiles`` (index.html for directories); everything else, lifespan included, goes to
    ``app``."""
    from starlette.middleware.exceptions import ExceptionMiddleware
    from starlette.staticfiles import StaticFiles

    # StaticFiles raises HTTPException for 404/405: the middleware turns it into the response
    static = ExceptionMiddleware(StaticFiles(directory=directory, html=True))

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and (path == prefix or path.startswith(prefix + "/")):
            scope = dict(scope, root_path=scope.get("root_path", "") + prefix)
            await static(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def _demo_static_dir(parent: Path) -> Path:
    """A small static tree for the demo: an index, a text file and 1 MiB of random bytes."""
    root = parent / "static"
    root.mkdir()
    (root / "index.html").write_text(
        "<!doctype html><title>static files</title><h1>Static files over kwik</h1>\n"
        '<ul><li><a href="hello.txt">hello.txt</a></li>'
        '<li><a href="random.bin">random.bin</a> (1 MiB)</li></ul>\n'
    )
    (root / "hello.txt").write_text("Hello over kwik!\n")
    (root / "random.bin").write_bytes(os.urandom(1024 * 1024))
    return root


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.http.server",
        description="Serve an ASGI application over kwik, one HTTP/1.1 request per stream.",
    )
    parser.add_argument(
        "--app",
        default="examples.http.app:app",
        metavar="MODULE:ATTR",
        help="the ASGI application (default: the Starlette demo, examples.http.app:app)",
    )
    parser.add_argument(
        "--listen",
        help="kwik address (host:port; default 127.0.0.1:4433, with --demo 127.0.0.1:0: a free "
        "port, printed)",
    )
    parser.add_argument("--cert", help="certificate chain (PEM); default: a self-signed one")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument("--cert-out", help="write the generated certificate here (for --ca)")
    parser.add_argument("--static", metavar="DIR", help="serve DIR under /static/")
    parser.add_argument(
        "--max-body", type=parse_size, default=DEFAULT_MAX_BODY, help="request body limit (1G)"
    )
    parser.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="trust X-Forwarded-For/-Proto from these peers (comma-separated; the demo "
        "trusts its own gateway)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also start the uvicorn gateway, and demo static files when --static is not given",
    )
    parser.add_argument(
        "--gateway-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the demo gateway's TCP address (default: a free port on 127.0.0.1, printed)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


async def _run(args: argparse.Namespace) -> None:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from .gateway import Gateway

    if args.cert_out and args.cert:
        raise ValueError("--cert-out writes a generated certificate: not with --cert")
    tls, cert_pem = server_tls_config(args.cert, args.key)
    if args.cert_out:
        await asyncio.to_thread(Path(args.cert_out).write_bytes, cert_pem)
    with tempfile.TemporaryDirectory(prefix="kwik-http-") as scratch:
        app = load_app(args.app)
        static = args.static
        if static is None and args.demo:
            static = await asyncio.to_thread(_demo_static_dir, Path(scratch))
        if static is not None:
            app = with_static_files(app, static)
        trusted = args.forwarded_allow_ips or ("127.0.0.1,::1" if args.demo else None)
        if trusted:
            app = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type,assignment]
        server = ASGIServer(app, lifespan=args.lifespan, max_body=args.max_body)
        gateway: Gateway | None = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        listen = args.listen or ("127.0.0.1:0" if args.demo else "127.0.0.1:4433")
        try:
            try:
                await server.start(listen, tls)
            except OSError as exc:  # one line naming the address, whatever kwik's says
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(f"cannot listen on {listen} (kwik, UDP): {why}") from None
            print(f"kwik://{server.addr}", flush=True)
            if args.demo:
                gateway = Gateway(server.addr, kwik.TLSConfig(cadata=cert_pem))
                await gateway.start(args.gateway_listen)
                print(gateway.url.rstrip("/"), flush=True)
            await stop.wait()
            LOGGER.info("shutting down")
        finally:
            if gateway is not None:
                await gateway.close()
            await server.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
