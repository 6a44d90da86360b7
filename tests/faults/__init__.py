"""kwik's own fault suite (issue 11): what must keep working when the network or a peer fails.

Every test here carries the ``faults`` marker (``pytest -n 0 -m faults`` runs only them; they run by
default too). Modules:

* :mod:`.test_loss`: random loss (``iptables -m statistic``) between network namespaces:
  uploads, downloads and a relay download stay byte-exact at 1 % and 5 % (root, ``ip netns``
  and ``iptables`` needed, skipped otherwise);
* :mod:`.test_kill`: kill -9 of a server, a relay and a client process; the survivors must
  notice within issue 11's bounds and keep serving other sessions;
* :mod:`.test_load`: 50 sessions x 10 streams x 100 KiB echoed through one listener;
* :mod:`.test_leaks`: 300 dial/close cycles, clean and failing, leave nothing behind;
* :mod:`.test_soak`: a few seconds of ``python -m benchmarks soak`` (the long run is on demand).

Support: :mod:`.peer` (the application and the ``python -m tests.faults.peer`` processes),
:mod:`.lab` (processes, certificates, namespaces with loss), :mod:`.loss` (byte-exact transfers
and ``python -m tests.faults.loss`` to measure them at any loss rate), :mod:`.workload` (the
dial/close cycle kinds).

Figures: ``python -m pytest tests/faults -s`` prints them; ``KWIK_FAULTS_KILL_WAIT=120`` makes
the kill tests measure detections slower than their bound.
"""
