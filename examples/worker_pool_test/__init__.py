"""The global worker pool with many sessions (port of the Go ``examples/worker_pool_test``).

    python -m examples.worker_pool_test          # integration check, PASS/FAIL, exit status
    python -m examples.worker_pool_test.bench    # pool against inline processing, figures

See ``__main__.py`` for what the check verifies and ``bench.py`` for how the figures are taken.
"""
