"""kwik's multi-server suite (issue 17): kwik servers over real QUIC on 127.0.0.1, a primary
and its secondaries writing into the client's logical streams.

Every test checks the bytes exactly and leaves no task behind (the autouse check of
``tests/conftest.py``); it waits for conditions, bounded, never for a fixed time.

* :mod:`.apps`: the applications (a primary that splits a response between itself and its
  relays, a secondary that writes the part it is told) and the client's requests;
* :mod:`.test_streams`: request/response through secondaries, thousands of streams (1,000 by
  default; the 10,000 of issue 17 on demand, see below), streams a secondary opens, several
  relays at once, relays recruited and removed mid-session;
* :mod:`.test_ending`: the primary closing while relays write (the secondary still reads its
  stream's end), the client closing while relays write, a relay's
  death mid-stream and recovery through the primary, relay data scheduled fairly with the
  primary's own bulk.

On demand: the test marked ``slow`` (10,000 streams) is left out of the README's command
(``addopts`` in ``pyproject.toml``); ``python3 -m pytest -n 0 -m slow`` runs it, and CI does.
"""
