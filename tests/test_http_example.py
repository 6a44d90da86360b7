"""examples/http: ASGI applications (Starlette, FastAPI) served over kwik, httpx with the kwik
transport as their client, uvicorn as the TCP gateway for curl and a browser.

Everything runs over loopback on port 0; bodies are compared byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import h11
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import kwik
from examples.http.app import create_app, pseudo_random_bytes
from examples.http.client import KwikTransport
from examples.http.gateway import Gateway
from examples.http.server import ASGIServer, with_static_files

REPO = Path(__file__).resolve().parent.parent
CERT, KEY = kwik.generate_self_signed_cert(["localhost", "127.0.0.1"])
CURL = shutil.which("curl")
CHROMIUM = "/usr/bin/chromium"
MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(90)

App = Callable[..., Any]


def kwik_config() -> kwik.Config:
    return kwik.Config(handshake_timeout=5.0)


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@asynccontextmanager
async def serve(
    app: App, config: kwik.Config | None = None, **options: Any
) -> AsyncIterator[ASGIServer]:
    """``app`` served over kwik on a free loopback port, closed at the end."""
    server = ASGIServer(app, **options)
    await server.start(
        "127.0.0.1:0", kwik.TLSConfig(certificate=CERT, private_key=KEY), config or kwik_config()
    )
    try:
        yield server
    finally:
        async with asyncio.timeout(20):
            await server.close()


@asynccontextmanager
async def client_for(
    server: ASGIServer, config: kwik.Config | None = None, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """httpx over one kwik session to ``server``."""
    transport = KwikTransport(server.addr, kwik.TLSConfig(cadata=CERT), config or kwik_config())
    options.setdefault("timeout", 20.0)
    async with httpx.AsyncClient(
        transport=transport, base_url=f"https://{server.addr}", **options
    ) as client:
        yield client


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(MiB)


@pytest.fixture
def static_dir(tmp_path: Path, blob: bytes) -> Path:
    root = tmp_path / "static"
    root.mkdir()
    (root / "blob.bin").write_bytes(blob)
    (root / "hello.txt").write_text("hello over kwik\n")
    return root


@pytest.fixture
async def demo(static_dir: Path) -> AsyncIterator[ASGIServer]:
    """The Starlette demo application over kwik, with ``static_dir`` under /static/."""
    async with serve(create_app(static_dir)) as server:
        yield server


async def chunks_of(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- Starlette: the demo application ------------------------------------------------------------


async def test_starlette_status_codes_and_headers(demo: ASGIServer) -> None:
    async with client_for(demo) as client:
        response = await client.get("/api/health")
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        assert response.headers["content-type"] == "application/json"
        assert response.headers["server"] == "kwik-asgi" and "date" in response.headers
        assert response.http_version == "HTTP/1.1" and response.reason_phrase == "OK"

        response = await client.get("/nowhere")
        assert response.status_code == 404 and response.json()["error"] == "Not Found"
        response = await client.delete("/api/health")
        assert response.status_code == 405 and "GET" in response.headers["allow"]

        response = await client.post("/api/items", json={"name": "kwik"})
        assert response.status_code == 201
        item = response.json()
        assert response.headers["location"] == f"/api/items/{item['id']}"
        assert (await client.get(response.headers["location"])).json() == item
        response = await client.put(f"/api/items/{item['id']}", json={"name": "quic"})
        assert response.status_code == 200 and response.json()["name"] == "quic"
        assert (await client.post("/api/items", content=b"[1]")).status_code == 400
        assert (await client.delete(f"/api/items/{item['id']}")).status_code == 204
        assert (await client.get(f"/api/items/{item['id']}")).status_code == 404

        response = await client.head("/static/hello.txt")
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-length"] == str(len("hello over kwik\n"))
        response = await client.get("/static/hello.txt")
        assert response.text == "hello over kwik\n"
        assert response.headers["content-type"].startswith("text/plain")
        assert (await client.get("/static/missing.txt")).status_code == 404


async def test_scope_is_complete(demo: ASGIServer) -> None:
    async with client_for(demo) as client:
        response = await client.post(
            "/api/request?x=1&x=2&y=%C3%A9",
            content=b"payload",
            headers={"X-Custom": "Value 1", "Accept": "application/json"},
        )
        session = client._transport.session  # type: ignore[attr-defined]
        assert session is not None
        described = response.json()
    assert described["method"] == "POST"
    assert described["path"] == "/api/request"
    assert described["raw_path"] == "/api/request"
    assert described["query_string"] == "x=1&x=2&y=%C3%A9"
    assert described["args"] == {"x": ["1", "2"], "y": ["é"]}
    assert ["x-custom", "Value 1"] in described["headers"]
    assert ["host", demo.addr] in described["headers"]
    assert described["http_version"] == "1.1" and described["scheme"] == "https"
    assert described["client"] == ["127.0.0.1", split(session.local_addr)[1]]
    assert tuple(described["server"]) == split(demo.addr)
    assert described["kwik"]["stream_id"] >= 0
    assert described["body_size"] == 7
    assert described["body_sha256"] == hashlib.sha256(b"payload").hexdigest()


async def test_percent_encoded_path() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body"})

    async with serve(app, lifespan="off") as server, client_for(server) as client:
        assert (await client.get("/a%20b/%C3%A9t%C3%A9?q=%20")).status_code == 204
    assert seen[0]["path"] == "/a b/été"
    assert seen[0]["raw_path"] == b"/a%20b/%C3%A9t%C3%A9"
    assert seen[0]["query_string"] == b"q=%20"
    assert seen[0]["root_path"] == "" and seen[0]["asgi"]["version"] == "3.0"


async def test_streaming_8_mib_both_ways(demo: ASGIServer) -> None:
    data = os.urandom(8 * MiB)
    async with client_for(demo) as client:
        # echo: the request streams up while the response streams down, on one stream
        received = bytearray()
        async with client.stream("POST", "/api/echo", content=chunks_of(data)) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers  # chunked: streamed, not buffered
            async for chunk in response.aiter_raw():
                received += chunk
        assert received == data

        # download of generated bytes, against the same generator
        expected = b"".join(pseudo_random_bytes(8 * MiB, seed=7))
        response = await client.get(f"/api/bytes/{8 * MiB}", params={"seed": 7})
        assert response.headers["content-length"] == str(8 * MiB)
        assert response.content == expected


async def test_back_pressure_both_ways() -> None:
    """A stalled application holds the client's upload back, a stalled client the
    application's download: nothing is buffered without bound in between."""
    total = 4 * MiB
    # small kwik buffers: what may be in flight is what they hold, plus a chunk at either end
    small = {
        "stream_send_buffer": 256 * 1024,
        "stream_receive_buffer": 256 * 1024,
        "path_send_window": 512 * 1024,
        "path_receive_window": 512 * 1024,
    }
    in_flight = sum(small.values()) + 4 * 256 * 1024
    small["max_record_size"] = 512 * 1024 - 8  # a whole record fits the receive window
    release = asyncio.Event()
    app_sent = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal app_sent
        if scope["type"] != "http":
            return
        if scope["path"] == "/upload":
            size = len((await receive())["body"])  # one chunk, then stall
            await release.wait()
            while True:
                message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(size).encode()})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            piece = bytes(256 * 1024)
            while app_sent < total:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                app_sent += len(piece)
            await send({"type": "http.response.body"})

    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        piece = bytes(256 * 1024)
        while produced < total:
            produced += len(piece)
            yield piece

    config = kwik.Config(handshake_timeout=5.0, **small)
    async with (
        serve(app, lifespan="off", config=config) as server,
        client_for(server, config=config) as client,
    ):
        upload = asyncio.ensure_future(client.post("/upload", content=body()))
        await asyncio.sleep(1.5)
        assert produced <= in_flight, f"{produced} bytes taken while the application stalled"
        release.set()
        response = await upload
        assert response.status_code == 200 and int(response.text) == total

        async with client.stream("GET", "/download") as response:
            await asyncio.sleep(1.5)  # read nothing for a while
            assert app_sent <= in_flight, f"{app_sent} bytes sent to a stalled client"
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
        assert size == total


async def test_response_head_goes_out_before_the_body() -> None:
    """A streaming application's status and headers reach the client before its first chunk."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await release.wait()
            await send({"type": "http.response.body", "body": b"data: late\n\n"})

    async with serve(app, lifespan="off") as server, client_for(server) as client:
        async with asyncio.timeout(10), client.stream("GET", "/events") as response:
            assert response.headers["content-type"] == "text/event-stream"
            release.set()
            assert await response.aread() == b"data: late\n\n"


async def test_64_concurrent_requests_on_one_session(demo: ASGIServer) -> None:
    async with client_for(demo) as client:
        responses = await asyncio.gather(
            *(client.get("/api/request", params={"n": str(n)}) for n in range(64))
        )
    assert [r.status_code for r in responses] == [200] * 64
    described = [r.json() for r in responses]
    assert sorted(int(d["args"]["n"][0]) for d in described) == list(range(64))
    assert len({d["kwik"]["stream_id"] for d in described}) == 64
    assert len({d["kwik"]["session_id"] for d in described}) == 1
    assert len({tuple(d["client"]) for d in described}) == 1


# --- failures of the application and of the request ---------------------------------------------


async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("boom before the response")
    if path == "/silent":
        return  # no response at all
    if path in ("/raise-mid-body", "/raise-mid-chunked"):
        headers = [(b"content-length", b"1000")] if path == "/raise-mid-body" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
        raise RuntimeError("boom in the body")
    if path == "/slow":
        await asyncio.sleep(5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"fine"})


async def test_app_that_raises() -> None:
    async with serve(failing_app, lifespan="off") as server, client_for(server) as client:
        response = await client.get("/raise")
        assert response.status_code == 500
        assert (await client.get("/silent")).status_code == 500
        for path in ("/raise-mid-body", "/raise-mid-chunked"):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(path)
        session = client._transport.session  # type: ignore[attr-defined]
        response = await client.get("/ok")
        assert response.text == "fine"
        assert client._transport.session is session  # type: ignore[attr-defined]


async def test_lifespan() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello from the lifespan"}
        events.append("shutdown")

    async def greet(request: Request) -> Response:
        return JSONResponse({"greeting": request.state.greeting, "events": list(events)})

    app = Starlette(routes=[Route("/", greet)], lifespan=lifespan)
    async with serve(app, lifespan="on") as server, client_for(server) as client:
        response = await client.get("/")
        assert response.json() == {"greeting": "hello from the lifespan", "events": ["startup"]}
    assert events == ["startup", "shutdown"]

    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    server = ASGIServer(Starlette(lifespan=broken), lifespan="on")
    with pytest.raises(RuntimeError, match="no database"):
        await server.start("127.0.0.1:0", kwik.TLSConfig(certificate=CERT, private_key=KEY))
    assert server.addr == ""  # nothing listens


async def raw_exchange(address: str, data: bytes) -> tuple[h11.Response, bytes]:
    """Send ``data`` as is on a new stream, FIN, and parse what comes back."""
    async with asyncio.timeout(15):
        session = await kwik.dial_addr(address, kwik.TLSConfig(cadata=CERT), kwik_config())
        try:
            stream = await session.open_stream_sync()
            await stream.write(data)
            await stream.close()
            received = bytearray()
            while chunk := await stream.read():
                received += chunk
        finally:
            await session.close()
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.receive_data(bytes(received))
    conn.receive_data(b"")
    head = conn.next_event()
    assert isinstance(head, h11.Response), head
    body = bytearray()
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    return head, bytes(body)


async def test_h11_limits(demo: ASGIServer) -> None:
    head, body = await raw_exchange(demo.addr, b"this is not HTTP\r\n\r\n")
    assert head.status_code == 400
    async with serve(create_app(), max_body=MiB, max_head_size=4096) as small:
        async with client_for(small) as client:
            response = await client.get("/api/health", headers={"x-big": "a" * 8000})
            assert response.status_code == 431
            data = os.urandom(2 * MiB)
            response = await client.put("/files/too-big.bin", content=data)  # Content-Length
            assert response.status_code == 413
            response = await client.put("/files/too-big.bin", content=chunks_of(data))  # chunked
            assert response.status_code == 413
            assert (await client.get("/files")).json() == []  # nothing was stored
            response = await client.put("/files/fits.bin", content=data[:1000])
            assert response.status_code == 201  # and the session still serves


async def test_transport_errors(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
        transport = KwikTransport(
            dead, kwik.TLSConfig(cadata=CERT), kwik.Config(handshake_timeout=1)
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"https://{dead}/")

    other_cert, _ = kwik.generate_self_signed_cert(["localhost"])
    async with serve(failing_app, lifespan="off") as server:
        transport = KwikTransport(server.addr, kwik.TLSConfig(cadata=other_cert), kwik_config())
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://{server.addr}/")

        async with client_for(server) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/slow", timeout=httpx.Timeout(20.0, read=0.5))
            first = client._transport.session  # type: ignore[attr-defined]
            assert (await client.get("/ok")).text == "fine"
            # the server closes the session: the next request dials a new one
            for session in server.sessions:
                await session.close()
            async with asyncio.timeout(10):
                while not first.is_closed:
                    await asyncio.sleep(0.02)
            assert (await client.get("/ok")).text == "fine"
            assert client._transport.session is not first  # type: ignore[attr-defined]


# --- FastAPI ------------------------------------------------------------------------------------


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def item_store(request: Request) -> dict[int, Item]:
    """FastAPI dependency: the items, which the lifespan puts in the application's state."""
    return request.app.state.items  # type: ignore[no-any-return]


Store = Annotated[dict[int, Item], Depends(item_store)]


def fastapi_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.items = {}
        yield
        del app.state.items

    app = FastAPI(lifespan=lifespan)

    @app.post("/items/{item_id}", status_code=201)
    async def create(item_id: int, item: Item, store: Store) -> Item:
        if item_id in store:
            raise HTTPException(409, "exists")
        store[item_id] = item
        return item

    @app.get("/items/{item_id}")
    async def read(item_id: int, store: Store) -> Item:
        if item_id not in store:
            raise HTTPException(404, "no such item")
        return store[item_id]

    @app.get("/count/{n}")
    async def count(n: int) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for i in range(n):
                yield f"{i}\n".encode()

        return StreamingResponse(lines(), media_type="text/plain")

    return app


async def test_fastapi_app() -> None:
    async with serve(fastapi_app(), lifespan="on") as server, client_for(server) as client:
        item = {"name": "kwik", "price": 1.5, "tags": ["quic"]}
        response = await client.post("/items/1", json=item)
        assert response.status_code == 201 and response.json() == item
        assert (await client.post("/items/1", json=item)).status_code == 409
        assert (await client.get("/items/1")).json() == item
        assert (await client.get("/items/2")).json() == {"detail": "no such item"}
        response = await client.post("/items/3", json={"name": "no price"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "price"]
        assert (await client.get("/items/abc")).status_code == 422
        response = await client.get("/count/1000")
        assert response.text == "".join(f"{i}\n" for i in range(1000))
        response = await client.get("/openapi.json")
        assert "/items/{item_id}" in response.json()["paths"]


# --- the gateway: curl and a browser ------------------------------------------------------------


@pytest.fixture
async def gateway(demo: ASGIServer) -> AsyncIterator[Gateway]:
    gw = Gateway(demo.addr, kwik.TLSConfig(cadata=CERT), config=kwik_config(), timeout=20.0)
    await gw.start("127.0.0.1:0")
    try:
        yield gw
    finally:
        async with asyncio.timeout(20):
            await gw.close()


async def run(*argv: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout, stderr


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_through_the_gateway(gateway: Gateway, blob: bytes, tmp_path: Path) -> None:
    assert CURL is not None
    url = gateway.url
    code, out, err = await run(CURL, "-sS", "-i", url + "api/health")
    assert code == 0, err.decode()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"via: 1.1 kwik-gateway" in out.lower() and out.endswith(b'{"status":"ok"}')

    target = tmp_path / "blob.bin"
    code, _, err = await run(CURL, "-sS", "-f", "-o", str(target), url + "static/blob.bin")
    assert code == 0, err.decode()
    assert target.read_bytes() == blob

    source = tmp_path / "upload.bin"
    source.write_bytes(blob[::-1])
    code, out, err = await run(CURL, "-sS", "-f", "-T", str(source), url + "files/up.bin")
    assert code == 0, err.decode()
    assert json.loads(out)["sha256"] == hashlib.sha256(blob[::-1]).hexdigest()
    code, out, err = await run(CURL, "-sS", "-f", url + "files/up.bin")
    assert code == 0 and out == blob[::-1]

    # chunked upload (curl reads stdin), echoed back as it streams
    echoed = tmp_path / "echoed.bin"
    process = await asyncio.create_subprocess_exec(
        CURL, "-sS", "-f", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
        "-o", str(echoed), url + "api/echo",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await process.communicate(blob)
    assert process.returncode == 0, err.decode()
    assert echoed.read_bytes() == blob


async def test_gateway_without_upstream(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
        async with Gateway(
            dead, kwik.TLSConfig(cadata=CERT), config=kwik.Config(handshake_timeout=1.0)
        ) as gw:
            await gw.start("127.0.0.1:0")

            def fetch() -> tuple[int, bytes]:
                try:
                    with urllib.request.urlopen(gw.url + "api/health", timeout=20) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            status, body = await asyncio.to_thread(fetch)
    assert status == 504 and b"upstream" in body


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is not installed")
async def test_browser_through_the_gateway(static_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    demo_app = create_app(static_dir)

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            seen.append((scope["path"], headers.get(b"user-agent", b"").decode()))
        await demo_app(scope, receive, send)

    async with serve(recording) as server:
        async with Gateway(server.addr, kwik.TLSConfig(cadata=CERT), config=kwik_config()) as gw:
            await gw.start("127.0.0.1:0")
            screenshot = tmp_path / "page.png"
            code, _, err = await run(
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=800,600",
                f"--screenshot={screenshot}",
                gw.url,
                timeout=60,
            )
    assert code == 0, err.decode(errors="replace")[-2000:]
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    # the page the browser rendered came over kwik, asked for by Chromium itself
    assert any(path == "/" and "Chrome" in agent for path, agent in seen), seen


# --- command lines ------------------------------------------------------------------------------


async def test_client_cli(demo: ASGIServer, tmp_path: Path, blob: bytes) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CERT)
    url = f"kwik://{demo.addr}"
    cli = (sys.executable, "-m", "examples.http.client")
    code, out, err = await run(*cli, "--ca", str(ca), f"{url}/api/health")
    assert code == 0, err.decode()
    assert json.loads(out) == {"status": "ok"}

    code, out, _ = await run(*cli, "--ca", str(ca), "-i", f"{url}/missing")
    assert code == 1 and out.startswith(b"HTTP/1.1 404 Not Found\r\n")

    target = tmp_path / "cli.bin"
    code, _, err = await run(*cli, "-k", "--progress", "-o", str(target), f"{url}/static/blob.bin")
    assert code == 0, err.decode()
    assert target.read_bytes() == blob
    assert b"100%" in err  # the progress bar, forced on although stderr is a pipe

    code, out, err = await run(*cli, "-k", "--progress", "-T", str(target), f"{url}/files/b.bin")
    assert code == 0, err.decode()
    assert json.loads(out)["sha256"] == hashlib.sha256(blob).hexdigest() and b"100%" in err

    code, out, err = await run(*cli, "-k", "--json", '{"n": 1}', f"{url}/api/items")
    assert code == 0 and json.loads(out)["n"] == 1

    code, _, err = await run(*cli, f"{url}/api/health")  # self-signed, not trusted: refused
    assert code == 3 and b"ConnectError" in err


async def test_demo_prints_two_lines_and_serves(tmp_path: Path) -> None:
    """``--demo`` alone: free ports (not the fixed 4433/8080, which may be taken), printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.http.server", "--demo",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            kwik_line = (await process.stdout.readline()).decode()
            http_line = (await process.stdout.readline()).decode()
        assert kwik_line.startswith("kwik://127.0.0.1:"), kwik_line
        assert http_line.startswith("http://127.0.0.1:"), http_line
        ports = {int(kwik_line.rpartition(":")[2]), int(http_line.rpartition(":")[2])}
        assert ports.isdisjoint({0, 4433, 8080}), ports
        url = http_line.strip()

        def fetch(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(url + path, timeout=20) as response:
                return response.status, response.read()

        status, body = await asyncio.to_thread(fetch, "/")
        assert status == 200 and b"HTTP/1.1 over kwik" in body and b"kwik stream" in body
        status, body = await asyncio.to_thread(fetch, "/static/hello.txt")
        assert status == 200 and body == b"Hello over kwik!\n"
        status, body = await asyncio.to_thread(fetch, "/api/request")
        assert json.loads(body)["scheme"] == "http"  # X-Forwarded-Proto from the gateway
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert stdout == b""  # the two lines were all
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("busy", ["kwik", "gateway"])
async def test_demo_on_a_busy_port_says_so_in_one_line(busy: str) -> None:
    """A port given explicitly and taken: one line on stderr naming it, status 1, no
    traceback (uvicorn's own exit, SystemExit(3), used to escape from its task)."""
    kind = socket.SOCK_DGRAM if busy == "kwik" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        option = "--listen" if busy == "kwik" else "--gateway-listen"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "examples.http.server", "--demo", option, address,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(30):
                _, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and address in lines[0], lines
    assert "in use" in lines[0], lines


async def test_with_static_files_keeps_the_app_and_its_lifespan(static_dir: Path) -> None:
    app = with_static_files(create_app(), static_dir)
    async with serve(app, lifespan="on") as server, client_for(server) as client:
        assert (await client.get("/static/hello.txt")).text == "hello over kwik\n"
        assert (await client.get("/static/nothing")).status_code == 404
        # the items store comes from the demo's lifespan: it ran through the wrapper
        assert (await client.post("/api/items", json={"a": 1})).status_code == 201
