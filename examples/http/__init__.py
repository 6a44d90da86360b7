"""HTTP over kwik the ecosystem's way: any ASGI application served, httpx as the client, uvicorn
as the TCP gateway.

One request per stream: the client opens a kwik stream, writes an HTTP/1.1 request (h11 on both
sides), finishes its side (FIN) and reads the response until the server finishes the stream.

* :mod:`examples.http.server`: :class:`~examples.http.server.ASGIServer`, an ASGI 3 server over
  kwik for Starlette, FastAPI or any ASGI application
  (``python -m examples.http.server --app MODULE:ATTR [--demo]``);
* :mod:`examples.http.app`: the demo application, plain Starlette (routes, JSON endpoints,
  uploads, ``StaticFiles``);
* :mod:`examples.http.client`: :class:`~examples.http.client.KwikTransport` for
  ``httpx.AsyncClient``, and a curl-like command line
  (``python -m examples.http.client kwik://127.0.0.1:4433/api/health``);
* :mod:`examples.http.gateway`: uvicorn serving an ASGI proxy to a kwik server, for curl and
  browsers (``python -m examples.http.gateway --upstream HOST:PORT``).

Needs h11, Starlette, httpx and uvicorn (``pip install -e '.[http]'``).
"""
