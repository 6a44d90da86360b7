"""examples/http: HTTP/1.1 over kwik streams, its client, and the TCP gateway.

Everything runs over loopback on port 0. The gateway is driven by curl when it is installed
(and by urllib in any case), bodies are compared byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import kwik
from examples.http._util import ProgressBar, parse_size, split_url, strip_hop_by_hop
from examples.http.client import Client, HTTPStatusError
from examples.http.gateway import Gateway
from examples.http.server import (
    App,
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Router,
    create_app,
)

REPO = Path(__file__).resolve().parent.parent
CERT, KEY = kwik.generate_self_signed_cert(["localhost", "127.0.0.1"])
CURL = shutil.which("curl")
BLOB_SIZE = 3 * 1024 * 1024
MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(60)


def kwik_config() -> kwik.Config:
    return kwik.Config(handshake_timeout=5.0)


def client_tls() -> kwik.TLSConfig:
    return kwik.TLSConfig(cadata=CERT)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(BLOB_SIZE)


@pytest.fixture
def static_dir(tmp_path: Path, blob: bytes) -> Path:
    root = tmp_path / "static"
    (root / "sub").mkdir(parents=True)
    (root / "blob.bin").write_bytes(blob)
    (root / "hello.txt").write_text("hello over kwik\n")
    (root / "sub" / "index.html").write_text("<h1>sub</h1>\n")
    (root / "empty").mkdir()
    return root


StartServer = Callable[..., Awaitable[HTTPServer]]


@pytest.fixture
async def start_server(static_dir: Path) -> AsyncIterator[StartServer]:
    """Start kwik HTTP servers (demo app over ``static_dir``); all are closed at the end."""
    servers: list[HTTPServer] = []

    async def start(max_body: int = 8 * MiB, **options: float) -> HTTPServer:
        server = HTTPServer(create_app(static_dir, max_body=max_body), **options)
        await server.start(
            "127.0.0.1:0", kwik.TLSConfig(certificate=CERT, private_key=KEY), kwik_config()
        )
        servers.append(server)
        return server

    yield start
    async with asyncio.timeout(15):
        for server in servers:
            await server.close()


@pytest.fixture
async def server(start_server: StartServer) -> HTTPServer:
    return await start_server()


@pytest.fixture
async def client(server: HTTPServer) -> AsyncIterator[Client]:
    async with Client(server.addr, client_tls(), config=kwik_config(), timeout=10.0) as c:
        yield c


@pytest.fixture
async def gateway(server: HTTPServer) -> AsyncIterator[Gateway]:
    gw = Gateway(server.addr, client_tls(), config=kwik_config(), timeout=10.0)
    await gw.start("127.0.0.1:0")
    yield gw
    async with asyncio.timeout(10):
        await gw.close()


# --- a real HTTP client for the gateway: curl, or urllib -----------------------------------------


async def fetch(
    backend: str,
    url: str,
    tmp_path: Path,
    *,
    method: str = "GET",
    data: bytes | None = None,
    chunked: bool = False,
) -> tuple[int, bytes]:
    """``(status, body)`` of one request made by a real HTTP client over TCP."""
    if backend == "curl":
        assert CURL is not None
        out = tmp_path / f"curl-out-{os.urandom(4).hex()}"
        args = [CURL, "-sS", "--max-time", "30", "-X", method, "-o", str(out)]
        args += ["-w", "%{http_code}", url]
        if data is not None:
            body_file = tmp_path / f"curl-in-{os.urandom(4).hex()}"
            body_file.write_bytes(data)
            args += [
                "--data-binary",
                f"@{body_file}",
                "-H",
                "Content-Type: application/octet-stream",
            ]
            if chunked:
                args += ["-H", "Transfer-Encoding: chunked"]
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(40):
            stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        return int(stdout), out.read_bytes()

    def blocking() -> tuple[int, bytes]:
        body: bytes | list[bytes] | None = data
        if data is not None and chunked:  # an iterable without length: urllib sends chunked
            body = [data[i : i + 65536] for i in range(0, len(data), 65536)]
        request = urllib.request.Request(url, data=body, method=method)  # type: ignore[arg-type]
        if data is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    return await asyncio.to_thread(blocking)


BACKENDS = [
    pytest.param("curl", marks=pytest.mark.skipif(CURL is None, reason="curl is not installed")),
    "urllib",
]


# --- units: no network ---------------------------------------------------------------------------


def test_router_resolution() -> None:
    router = Router()

    async def a(request: Request) -> Response:
        return Response()

    async def b(request: Request) -> Response:
        return Response()

    async def c(request: Request) -> Response:
        return Response()

    router.add("/api/items", a, ("GET", "POST"))
    router.add("/api/*", b)
    router.add("/api/items/*", c, ("GET", "DELETE"))
    assert router.resolve("GET", "/api/items") == (a, "")
    assert router.resolve("GET", "/api/other/x") == (b, "other/x")
    assert router.resolve("DELETE", "/api/items/7") == (c, "7")  # longest prefix wins
    assert router.resolve("HEAD", "/api/items") == (a, "")  # HEAD is served by GET
    with pytest.raises(HTTPError) as missing:
        router.resolve("GET", "/elsewhere")
    assert missing.value.status == 404
    with pytest.raises(HTTPError) as wrong_method:
        router.resolve("PUT", "/api/items")
    assert wrong_method.value.status == 405
    assert dict(wrong_method.value.headers)["allow"] == "GET, HEAD, POST"
    with pytest.raises(ValueError):
        router.add("/api/items", a, ("GET",))
    with pytest.raises(ValueError):
        router.add("relative", a)


async def test_middleware_order_and_errors() -> None:
    seen: list[str] = []

    async def outer(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        seen.append("outer")
        response = await call_next(request)
        response.set_header("x-outer", "1")
        return response

    async def inner(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        seen.append("inner")
        return await call_next(request)

    app = App(middleware=[outer, inner])

    @app.route("/boom")
    async def boom(request: Request) -> Response:
        raise RuntimeError("handler bug")

    def request(path: str) -> Request:
        return Request("GET", path, path, "", "1.1", ())

    response = await app.handle(request("/boom"))
    assert response.status == 500 and response.header("x-outer") == "1"
    assert seen == ["outer", "inner"]
    missing = await app.handle(request("/nowhere"))
    assert missing.status == 404 and missing.header("x-outer") == "1"  # middleware saw the 404


def test_helpers() -> None:
    assert split_url("kwik://127.0.0.1:4433/a/b?c=1") == ("127.0.0.1:4433", "/a/b?c=1")
    assert split_url("localhost:9/") == ("localhost:9", "/")
    assert split_url("https://[::1]:4433") == ("[::1]:4433", "/")
    assert split_url("/only/path") == (None, "/only/path")
    assert parse_size("64K") == 65536 and parse_size("1.5MiB") == 1572864
    assert parse_size("10") == 10
    with pytest.raises(ValueError):
        parse_size("lots")
    kept = strip_hop_by_hop(
        [("connection", "close, x-private"), ("x-private", "1"), ("keep-alive", "5"), ("a", "b")]
    )
    assert kept == [("a", "b")]
    out = io.StringIO()
    bar = ProgressBar("f.bin", file=out, enabled=True, interval=0)
    bar(512, 1024)
    bar(1024, 1024)
    bar.finish()
    text = out.getvalue()
    assert "50%" in text and "100%" in text and text.endswith("\n")
    silent = io.StringIO()
    quiet = ProgressBar("f.bin", file=silent)  # not a tty: draws nothing
    quiet(1, 2)
    quiet.finish()
    assert silent.getvalue() == ""


# --- client against server ----------------------------------------------------------------------


async def test_routes_json_and_methods(client: Client) -> None:
    async with asyncio.timeout(20):
        health = await client.get("/api/health")
        assert health.status == 200
        assert health.header("content-type") == "application/json"
        assert health.json()["status"] == "ok"
        assert int(health.header("content-length") or -1) == len(health.body)

        head = await client.head("/api/health")
        assert head.status == 200 and head.body == b""
        assert head.header("content-length") == health.header("content-length")

        described = await client.get_json("/api/request?x=1&x=2&y=")
        assert described["method"] == "GET" and described["path"] == "/api/request"
        assert described["args"] == {"x": ["1", "2"], "y": [""]}

        created = await client.post_json("/api/items", {"name": "kwik"})
        item_id = created["id"]
        assert created == {"id": item_id, "name": "kwik"}
        assert await client.get_json("/api/items") == [created]
        updated = await client.put_json(f"/api/items/{item_id}", {"name": "KWIK"})
        assert updated == {"id": item_id, "name": "KWIK"}
        assert await client.get_json(f"/api/items/{item_id}") == updated
        deleted = await client.delete(f"/api/items/{item_id}")
        assert deleted.status == 204 and deleted.body == b""
        with pytest.raises(HTTPStatusError) as gone:
            await client.get_json(f"/api/items/{item_id}")
        assert gone.value.response.status == 404

        bad_json = await client.post(
            "/api/items", b"{not json", headers={"content-type": "application/json"}
        )
        assert bad_json.status == 400 and "invalid JSON" in bad_json.json()["detail"]

        echoed = await client.post("/api/echo", b"\x00\xffbinary", headers={"content-type": "x/y"})
        assert echoed.status == 200 and echoed.body == b"\x00\xffbinary"
        assert echoed.header("content-type") == "x/y"


async def test_status_codes(client: Client) -> None:
    async with asyncio.timeout(20):
        missing = await client.get("/no/such/route")
        assert missing.status == 404 and missing.json()["error"] == "Not Found"
        assert (await client.get("/static/nothing-here.txt")).status == 404
        assert (await client.get("/static/../../../etc/passwd")).status == 404
        assert (await client.get("/static/%2e%2e/%2e%2e/etc/passwd")).status == 404

        wrong = await client.delete("/api/health")
        assert wrong.status == 405 and wrong.header("allow") == "GET, HEAD"
        assert (await client.put("/static/hello.txt", b"x")).status == 405

        moved = await client.get("/static/sub")
        assert moved.status == 301 and moved.header("location") == "/static/sub/"
        index = await client.get("/static/sub/")
        assert index.status == 200 and index.body == b"<h1>sub</h1>\n"
        listing = await client.get("/static/")
        assert listing.status == 200 and b"blob.bin" in listing.body
        text = await client.get("/static/hello.txt")
        assert text.body == b"hello over kwik\n"
        assert text.header("content-type", "").startswith("text/plain")


async def test_static_file_byte_exact(client: Client, blob: bytes, tmp_path: Path) -> None:
    async with asyncio.timeout(30):
        response = await client.get("/static/blob.bin")
        assert response.status == 200
        assert response.header("content-type") == "application/octet-stream"
        assert response.header("content-length") == str(len(blob))
        assert response.body == blob

        seen: list[tuple[int, int | None]] = []
        target = tmp_path / "downloaded.bin"
        downloaded = await client.download(
            "/static/blob.bin", target, progress=lambda done, total: seen.append((done, total))
        )
        assert downloaded.status == 200
        assert target.read_bytes() == blob
        assert not (tmp_path / "downloaded.bin.part").exists()
        assert seen[-1] == (len(blob), len(blob))
        assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))

        with pytest.raises(HTTPStatusError):
            await client.download("/static/missing.bin", tmp_path / "missing.bin")
        assert not (tmp_path / "missing.bin").exists()


async def test_upload(client: Client, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 123)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    async with asyncio.timeout(30):
        sent: list[int] = []
        created = await client.upload(
            source, "/files/upload.bin", progress=lambda done, total: sent.append(done)
        )
        assert created.status == 201
        assert created.json() == {
            "name": "upload.bin",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        assert sent[-1] == len(data)
        assert (await client.get("/files/upload.bin")).body == data
        assert await client.get_json("/files") == ["upload.bin"]
        replaced = await client.upload(source, "/files/upload.bin", method="POST")
        assert replaced.status == 200
        assert (await client.put("/files/..evil", b"x")).status == 400

        # a chunked request body: an async iterable of unknown length
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 100_000):
                yield data[start : start + 100_000]

        async with client.stream("POST", "/api/echo", content=chunks()) as streamed:
            assert streamed.status == 200
            assert await streamed.read() == data


async def test_body_limit_413(start_server: StartServer) -> None:
    small = await start_server(max_body=64 * 1024)
    async with Client(small.addr, client_tls(), config=kwik_config(), timeout=10.0) as client:
        async with asyncio.timeout(30):
            at_limit = await client.post("/api/echo", b"a" * 64 * 1024)
            assert at_limit.status == 200 and len(at_limit.body) == 64 * 1024
            # Content-Length above the limit: refused at once, although 2 MiB (more than a
            # stream's receive buffer) are on their way; the server drains them
            declared = await client.post("/api/echo", os.urandom(2 * MiB))
            assert declared.status == 413

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(8):
                    yield b"c" * 16 * 1024

            async with client.stream("POST", "/api/echo", content=chunks()) as chunked:
                assert chunked.status == 413
                assert "limit" in (await chunked.complete()).json()["detail"]
            session = await client.connect()
            assert (await client.get("/api/health")).status == 200  # the session carries on
            assert await client.connect() is session and not session.is_closed


async def raw_exchange(session: kwik.Session, request: bytes) -> bytes:
    """Write ``request`` as is on a new stream, FIN, and read everything until EOF."""
    stream = await session.open_stream_sync()
    await stream.write(request)
    await stream.close()
    chunks = []
    while data := await stream.read():
        chunks.append(data)
    return b"".join(chunks)


async def test_malformed_request_gets_400_and_session_survives(client: Client) -> None:
    async with asyncio.timeout(20):
        session = await client.connect()
        garbage = await raw_exchange(session, b"THIS IS NOT HTTP\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        truncated = await raw_exchange(
            session, b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        assert truncated.startswith(b"HTTP/1.1 400 ")
        bad_header = await raw_exchange(session, b"GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n")
        assert bad_header.startswith(b"HTTP/1.1 400 ")
        huge_head = await raw_exchange(
            session, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        assert huge_head.startswith(b"HTTP/1.1 431 ")
        assert await raw_exchange(session, b"") == b""  # FIN without a request: no answer

        ok = await raw_exchange(session, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and json.loads(body)["status"] == "ok"
        assert (await client.get("/api/health")).status == 200
        assert await client.connect() is session and not session.is_closed


async def test_many_concurrent_requests_on_one_session(client: Client) -> None:
    session = await client.connect()

    async def one(i: int) -> tuple[int, str]:
        if i % 2:
            payload = f"payload {i} ".encode() * (i * 50)
            response = await client.post("/api/echo", payload)
            assert response.status == 200 and response.body == payload
        else:
            response = await client.get(f"/api/request?i={i}")
            assert response.status == 200 and response.json()["args"] == {"i": [str(i)]}
        return i, response.header("x-kwik-stream") or ""

    async with asyncio.timeout(30):
        results = await asyncio.gather(*(one(i) for i in range(64)))
    assert sorted(i for i, _ in results) == list(range(64))
    assert len({stream for _, stream in results}) == 64  # one stream per request
    assert await client.connect() is session


async def test_abandoned_response_does_not_stall_the_session(client: Client, blob: bytes) -> None:
    async with asyncio.timeout(30):
        async with client.stream("GET", "/static/blob.bin") as response:
            assert response.status == 200
            async with contextlib.aclosing(response.iter_bytes()) as body:
                first = await anext(body)
            assert blob.startswith(first) and len(first) < len(blob)
        # the unread rest (more than a stream's receive buffer) is drained in the background;
        # left unread it would stop the whole path, and these requests would never complete
        for _ in range(3):
            assert (await client.get("/api/health")).status == 200
        assert (await client.get("/static/blob.bin")).body == blob


async def test_client_redials_after_session_closed(client: Client) -> None:
    async with asyncio.timeout(20):
        first = await client.connect()
        await first.close()
        assert (await client.get("/api/health")).status == 200
        second = await client.connect()
        assert second is not first and not second.is_closed


# --- the gateway, driven by real HTTP clients ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gateway_download_byte_exact(
    backend: str, gateway: Gateway, blob: bytes, tmp_path: Path
) -> None:
    async with asyncio.timeout(40):
        status, body = await fetch(backend, gateway.url + "static/blob.bin", tmp_path)
        assert status == 200 and body == blob
        status, body = await fetch(backend, gateway.url + "api/health", tmp_path)
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = await fetch(backend, gateway.url + "no/such/thing", tmp_path)
        assert status == 404
        status, _ = await fetch(backend, gateway.url + "api/health", tmp_path, method="DELETE")
        assert status == 405


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gateway_uploads(backend: str, gateway: Gateway, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)  # above curl's 1 MiB threshold: it sends Expect: 100-continue
    async with asyncio.timeout(40):
        status, body = await fetch(
            backend, gateway.url + "files/g.bin", tmp_path, method="PUT", data=data
        )
        assert status == 201
        assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
        status, body = await fetch(backend, gateway.url + "files/g.bin", tmp_path)
        assert status == 200 and body == data
        status, body = await fetch(
            backend, gateway.url + "api/echo", tmp_path, method="POST", data=data, chunked=True
        )
        assert status == 200 and body == data


async def test_gateway_keep_alive(gateway: Gateway) -> None:
    host, port = gateway.addr.rsplit(":", 1)

    def blocking() -> list[tuple[int, bytes]]:
        connection = http.client.HTTPConnection(host, int(port), timeout=20)
        results = []
        try:
            sockets = set()
            for path in ("/api/health", "/static/hello.txt", "/nowhere", "/api/items"):
                connection.request("GET", path)
                response = connection.getresponse()
                results.append((response.status, response.read()))
                sockets.add(id(connection.sock))
            connection.request("POST", "/api/echo", body=b"kept alive")
            response = connection.getresponse()
            results.append((response.status, response.read()))
            sockets.add(id(connection.sock))
            assert len(sockets) == 1, "the gateway closed a keep-alive connection"
        finally:
            connection.close()
        return results

    async with asyncio.timeout(30):
        results = await asyncio.to_thread(blocking)
    assert [status for status, _ in results] == [200, 200, 404, 200, 200]
    assert results[1][1] == b"hello over kwik\n" and results[4][1] == b"kept alive"


async def test_gateway_malformed_request_gets_400(gateway: Gateway, tmp_path: Path) -> None:
    host, port = gateway.addr.rsplit(":", 1)
    async with asyncio.timeout(20):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            answer = await reader.read()  # the gateway answers, then closes
        finally:
            writer.close()
            await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        status, _ = await fetch("urllib", gateway.url + "api/health", tmp_path)
        assert status == 200


async def test_gateway_survives_client_leaving_mid_download(
    gateway: Gateway, blob: bytes, tmp_path: Path
) -> None:
    host, port = gateway.addr.rsplit(":", 1)
    async with asyncio.timeout(30):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /static/blob.bin HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await writer.drain()
        first = await reader.read(65536)
        writer.close()
        await writer.wait_closed()
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        for _ in range(3):
            assert (await fetch("urllib", gateway.url + "api/health", tmp_path))[0] == 200
        assert await fetch("urllib", gateway.url + "static/blob.bin", tmp_path) == (200, blob)


async def test_gateway_redials_and_reports_unreachable_upstream(
    gateway: Gateway, tmp_path: Path
) -> None:
    async with asyncio.timeout(30):
        assert (await fetch("urllib", gateway.url + "api/health", tmp_path))[0] == 200
        session = await gateway.client.connect()
        await session.close()  # e.g. the server restarted: the next request dials again
        assert (await fetch("urllib", gateway.url + "api/health", tmp_path))[0] == 200
        assert await gateway.client.connect() is not session

        # nothing listens on this UDP port: 502 Bad Gateway, within the handshake timeout
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{probe.getsockname()[1]}"
        config = kwik.Config(handshake_timeout=1.0)
        async with Gateway(dead, client_tls(), config=config, timeout=5.0) as broken:
            await broken.start("127.0.0.1:0")
            status, body = await fetch("urllib", broken.url + "api/health", tmp_path)
        assert status == 502 and b"upstream" in body


# --- command lines ------------------------------------------------------------------------------


async def run_module(*args: str, timeout: float = 30) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
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


async def test_cli_client(server: HTTPServer, tmp_path: Path, blob: bytes) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CERT)
    url = f"kwik://{server.addr}"
    cli = "examples.http.client"
    code, out, err = await run_module(cli, "--ca", str(ca), "get", f"{url}/api/health")
    assert code == 0, err.decode()
    assert json.loads(out)["status"] == "ok"

    code, out, err = await run_module(cli, "get", f"{url}/missing", "--ca", str(ca), "-i")
    assert code == 1 and out.startswith(b"HTTP/1.1 404 Not Found\r\n")

    target = tmp_path / "cli.bin"
    code, _, err = await run_module(
        cli, "-k", "download", f"{url}/static/blob.bin", str(target), "--progress"
    )
    assert code == 0, err.decode()
    assert target.read_bytes() == blob
    assert b"100%" in err  # the progress bar, forced on although stderr is a pipe

    code, out, err = await run_module(cli, "-k", "post-json", f"{url}/api/items", '{"n": 1}')
    assert code == 0, err.decode()
    assert json.loads(out)["n"] == 1

    code, _, err = await run_module(cli, "get", f"{url}/api/health")  # self-signed: refused
    assert code == 3 and b"error" in err


async def test_demo_starts_server_and_gateway(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.http.server",
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--gateway-listen",
        "127.0.0.1:0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            url = None
            while url is None:
                line = (await process.stdout.readline()).decode()
                assert line, "the demo exited before printing its gateway URL"
                if line.startswith("gateway: "):
                    url = line.split()[1]
            assert url.startswith("http://127.0.0.1:")
            status, body = await fetch("urllib", url, tmp_path)
            assert status == 200 and b"HTTP/1.1 over kwik" in body
            status, body = await fetch("urllib", url + "static/hello.txt", tmp_path)
            assert status == 200 and body == b"Hello over kwik!\n"
            process.send_signal(signal.SIGINT)
            _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
