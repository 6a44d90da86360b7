"""kwik's own fault suite (issue 11): what must keep working when the network or a peer fails.

Every test here carries the ``faults`` marker: the default ``pytest`` run leaves them out,
``python3 -m pytest -n 0 -m faults`` runs only them (CI runs them with the slow tests,
``-m 'faults or slow'``). Modules:

* :mod:`.test_loss`: random loss (``iptables -m statistic``) between network namespaces:
  4 MiB uploads and downloads stay byte-exact at 1 % and 5 %, each within 3x raw aioquic's
  time measured beside it, and a relay download stays byte-exact at 5 % (root, ``ip netns``
  and ``iptables`` needed, skipped otherwise);
* :mod:`.test_outage`: an 8 s blackout (every packet dropped) fails no path, idle, uploading
  or downloading; a frozen server (SIGSTOP) and a vanished network fail the client's path
  within 20 s of its last datagram, idle or busy (the blackouts need what the loss tests do);
* :mod:`.test_kill`: kill -9 of a server, a relay and a client process; the survivors must
  notice within issue 11's bounds and keep serving other sessions;
* :mod:`.test_load`: 50 sessions x 10 streams x 100 KiB echoed through one listener;
* :mod:`.test_leaks`: 300 dial/close cycles, clean and failing, leave nothing behind;
* :mod:`.test_soak`: a few seconds of ``python -m benchmarks soak`` (the long run is on demand).

Support: :mod:`.peer` (the application and the ``python -m tests.faults.peer`` processes),
:mod:`.rawquic` (the same transfers on raw aioquic, the baseline), :mod:`.lab` (processes,
certificates, namespaces with loss or blackouts), :mod:`.loss` (byte-exact transfers),
:mod:`.blackout` (blackout and detection trials), :mod:`.workload` (the dial/close cycle kinds).

Figures: ``python -m pytest -n 0 -m faults -s tests/faults`` prints them;
``KWIK_FAULTS_KILL_WAIT=120`` makes the kill tests measure detections slower than their bound.
On demand (root):

* ``python -m tests.faults.loss --against-aioquic``: 4 MiB up, down and through a relay at 1,
  5, 10 and 20 % loss, kwik beside raw aioquic with the ratio (``--loss``, ``--size``,
  ``--runs`` change it);
* ``python -m tests.faults.blackout``: the largest blackout survived idle, uploading and
  downloading (bisection); ``--detect`` adds the time to notice a frozen server and a vanished
  network.
"""
