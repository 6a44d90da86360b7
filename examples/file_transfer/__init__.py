"""file_transfer: one download served by two servers over one kwik stream (port of KWIK v2's
Go example).

The client dials the primary server only and asks for a file on a stream it opens. The primary
recruits a secondary server (the relay) with ``session.add_relay``: the client dials it as a
second path of the same session. Both servers then write chunk records into the client's one
logical stream, at absolute offsets the primary computes (even chunks: primary, odd chunks:
relay); the client reads a single ordinary stream, acknowledges each window of 10 chunks and
checks the SHA-256 at the end.

* :mod:`examples.file_transfer.protocol`: messages, records, commands and the stream layout;
* :mod:`examples.file_transfer.server`: the primary (``python -m examples.file_transfer.server``,
  ``--demo`` runs everything in one process);
* :mod:`examples.file_transfer.relay`: the secondary server
  (``python -m examples.file_transfer.relay``);
* :mod:`examples.file_transfer.client`: :func:`~examples.file_transfer.client.download` and the
  command line (``python -m examples.file_transfer.client FILE``).
"""
