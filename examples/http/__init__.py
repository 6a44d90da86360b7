"""HTTP/1.1 over kwik streams (the port of KWIK's ``kwikhttp`` example).

One request per stream: the client opens a kwik stream, writes an HTTP/1.1 request, finishes
its side (FIN) and reads the response until the stream ends. Unlike upstream, where a request
could only end by timeout, FIN ends every message cleanly. h11 parses and produces all HTTP.

* :mod:`examples.http.server`: routes, middleware, static files, JSON endpoints
  (``python -m examples.http.server [--demo]``);
* :mod:`examples.http.client`: :class:`~examples.http.client.Client`, and a command line
  (``python -m examples.http.client get kwik://127.0.0.1:4433/``);
* :mod:`examples.http.gateway`: plain HTTP over TCP in front of the kwik server, for curl,
  browsers and ``urllib`` (``python -m examples.http.gateway --upstream HOST:PORT``).

Needs h11 (``pip install -e '.[examples]'``).
"""
