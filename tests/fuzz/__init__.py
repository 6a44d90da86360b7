"""Fuzzing of the sans-IO session core (``kwik.protocol.session.SessionCore``).

* :mod:`tests.fuzz.core`: the machines and scenarios, and the invariants they check;
* ``tests/protocol/test_session_fuzz.py``: a bounded, reproducible run in the test suite;
* ``python -m tests.fuzz --minutes N``: a longer run with random seeds.
"""
