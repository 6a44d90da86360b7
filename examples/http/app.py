"""The demo application: plain Starlette, nothing kwik-specific (it runs under uvicorn as well).

============================  =====================  ===========================================
path                          methods                what
============================  =====================  ===========================================
``/``                         GET                    an HTML page (which kwik stream carried it)
``/api/health``               GET                    ``{"status": "ok"}``
``/api/request``              GET, POST              the request described in JSON (body hashed
                                                     as it streams in)
``/api/echo``                 POST, PUT              the request body, streamed back as it comes
``/api/bytes/{size}``         GET                    ``size`` pseudo-random bytes (``?seed=N``),
                                                     streamed with their Content-Length
``/api/items``                GET, POST              list / create JSON objects (201 + Location)
``/api/items/{id}``           GET, PUT, DELETE       one item; 404 when missing
``/files``                    GET                    names, sizes and SHA-256 of the uploads
``/files/{name}``             PUT, POST, GET,        upload (streamed, 201 + size and SHA-256),
                              DELETE                 download, delete
``/static/...``               GET                    files under ``static_dir`` (``StaticFiles``)
============================  =====================  ===========================================

The items and uploads live in the lifespan state (``request.state``), so every server that runs
the lifespan protocol gives the application fresh, empty stores. Errors are JSON documents:
``{"status": 404, "error": "Not Found", "detail": ...}``.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import mimetypes
import os
import random
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["app", "create_app", "pseudo_random_bytes"]

_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")

#: Largest body ``/api/bytes/{size}`` produces.
MAX_GENERATED = 1 << 34


def pseudo_random_bytes(size: int, seed: int = 0, chunk: int = 256 * 1024) -> list[bytes]:
    """What ``GET /api/bytes/{size}?seed=N`` sends, as the list of its chunks (for checks)."""
    return list(_generate(size, seed, chunk))


def _generate(size: int, seed: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    rng = random.Random(seed)
    for start in range(0, size, chunk):
        yield rng.randbytes(min(chunk, size - start))


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        document = await request.json()
    except ValueError as exc:
        raise _error(400, f"invalid JSON body: {exc}") from None
    if not isinstance(document, dict):
        raise _error(400, "an item is a JSON object")
    return document


def _page(request: Request) -> str:
    kwik_info = request.scope.get("extensions", {}).get("kwik")
    carrier = (
        f"kwik stream {kwik_info['stream_id']} of session {kwik_info['session_id']}"
        if kwik_info
        else "a server that is not kwik"
    )
    links = [
        "/api/health",
        "/api/request?hello=world",
        "/api/items",
        "/files",
        "/static/",
    ]
    items = "\n".join(f'<li><a href="{url}">{html.escape(url)}</a></li>' for url in links)
    return (
        "<!doctype html>\n<html><head><meta charset=utf-8><title>kwik HTTP example</title>\n"
        "<style>body{font-family:sans-serif;margin:2em;background:#f4f7fb}"
        "h1{color:#1d4e89}</style></head>\n<body><h1>HTTP/1.1 over kwik</h1>\n"
        f"<p id=carrier>This page came over {html.escape(carrier)}.</p>\n"
        f"<ul>\n{items}\n</ul>\n</body></html>\n"
    )


async def index(request: Request) -> Response:
    return HTMLResponse(_page(request))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def describe(request: Request) -> Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    scope = request.scope
    return JSONResponse(
        {
            "method": request.method,
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "args": {key: request.query_params.getlist(key) for key in request.query_params},
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "client": list(scope["client"]) if scope.get("client") else None,
            "server": list(scope["server"]) if scope.get("server") else None,
            "kwik": scope.get("extensions", {}).get("kwik"),
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        }
    )


async def echo(request: Request) -> Response:
    content_type = request.headers.get("content-type", "application/octet-stream")
    headers = {}
    if "content-length" in request.headers:
        headers["content-length"] = request.headers["content-length"]
    return StreamingResponse(request.stream(), headers=headers, media_type=content_type)


async def generate(request: Request) -> Response:
    size: int = request.path_params["size"]
    if size > MAX_GENERATED:
        raise _error(400, f"at most {MAX_GENERATED} bytes")
    try:
        seed = int(request.query_params.get("seed", "0"))
    except ValueError:
        raise _error(400, "seed is an integer") from None

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in _generate(size, seed):
            yield chunk

    return StreamingResponse(
        chunks(), headers={"content-length": str(size)}, media_type="application/octet-stream"
    )


async def items_collection(request: Request) -> Response:
    items: dict[int, dict[str, Any]] = request.state.items
    if request.method == "GET":
        return JSONResponse([{"id": i, **item} for i, item in sorted(items.items())])
    item = await _json_object(request)
    item_id = next(request.state.next_id)
    items[item_id] = item
    return JSONResponse({"id": item_id, **item}, 201, headers={"location": f"/api/items/{item_id}"})


async def item_resource(request: Request) -> Response:
    items: dict[int, dict[str, Any]] = request.state.items
    item_id: int = request.path_params["item_id"]
    if request.method == "PUT":
        item = await _json_object(request)
        created = item_id not in items
        items[item_id] = item
        return JSONResponse({"id": item_id, **item}, 201 if created else 200)
    if item_id not in items:
        raise _error(404, f"no item {item_id}")
    if request.method == "DELETE":
        del items[item_id]
        return Response(status_code=204)
    return JSONResponse({"id": item_id, **items[item_id]})


def _describe_file(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def list_files(request: Request) -> Response:
    files: dict[str, bytes] = request.state.files
    return JSONResponse([_describe_file(name, files[name]) for name in sorted(files)])


async def file_resource(request: Request) -> Response:
    files: dict[str, bytes] = request.state.files
    name: str = request.path_params["name"]
    if not _FILE_NAME.match(name):
        raise _error(400, f"invalid file name {name!r}")
    if request.method in ("PUT", "POST"):
        body = bytearray()
        async for chunk in request.stream():  # streamed in: never more than one chunk extra
            body += chunk
        replaced = name in files
        files[name] = bytes(body)
        return JSONResponse(
            _describe_file(name, files[name]),
            200 if replaced else 201,
            headers={"location": f"/files/{name}"},
        )
    if name not in files:
        raise _error(404, f"no file {name!r}")
    if request.method == "DELETE":
        del files[name]
        return Response(status_code=204)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(files[name], media_type=content_type)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    document: dict[str, Any] = {
        "status": exc.status_code,
        "error": HTTPStatus(exc.status_code).phrase,
    }
    if exc.detail and exc.detail != document["error"]:
        document["detail"] = exc.detail
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(document, exc.status_code, headers=exc.headers)


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    # the stores of the application: fresh at every startup, handed to requests as their state
    yield {"items": {}, "next_id": itertools.count(1), "files": {}}


def create_app(static_dir: str | os.PathLike[str] | None = None) -> Starlette:
    """The demo application; ``static_dir`` (if given) is served under ``/static/``."""
    routes: list[Route | Mount] = [
        Route("/", index),
        Route("/api/health", health),
        Route("/api/request", describe, methods=["GET", "POST"]),
        Route("/api/echo", echo, methods=["POST", "PUT"]),
        Route("/api/bytes/{size:int}", generate),
        Route("/api/items", items_collection, methods=["GET", "POST"]),
        Route("/api/items/{item_id:int}", item_resource, methods=["GET", "PUT", "DELETE"]),
        Route("/files", list_files),
        Route("/files/{name}", file_resource, methods=["GET", "PUT", "POST", "DELETE"]),
    ]
    if static_dir is not None:
        routes.append(Mount("/static", StaticFiles(directory=static_dir, html=True)))
    return Starlette(
        routes=routes, lifespan=_lifespan, exception_handlers={HTTPException: _http_error}
    )


#: The demo application without static files (``--app examples.http.app:app``).
app = create_app()
