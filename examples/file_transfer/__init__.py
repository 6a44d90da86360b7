"""file_transfer: one download served by several servers over one kwik stream (port of KWIK
v2's Go example), that survives the death of any relay.

The client dials the primary server only and asks for a file on a stream it opens. The primary
recruits secondary servers (relays) with ``session.add_relay``: the client dials each as another
path of the same session. The servers then write chunk records into the client's one logical
stream, at absolute offsets the primary computes (with one relay: even chunks the primary's,
odd chunks the relay's); the client reads a single ordinary stream, acknowledges each window of
10 chunks and checks the SHA-256 at the end.

A relay that dies (or whose path fails) mid-download costs nothing: the client
(``Session.add_path_closed_callback``, ``Stream.received_ranges``) asks the primary for the
chunks that never arrived, and the primary writes them itself. See ``README.md`` here.

* :mod:`examples.file_transfer.protocol`: messages, records, commands and the stream layout;
* :mod:`examples.file_transfer.server`: the primary (``python -m examples.file_transfer.server``,
  ``--demo`` runs everything in one process);
* :mod:`examples.file_transfer.relay`: a secondary server
  (``python -m examples.file_transfer.relay``);
* :mod:`examples.file_transfer.client`: :func:`~examples.file_transfer.client.download` and the
  command line (``python -m examples.file_transfer.client FILE``).
"""
