"""kwik against raw aioquic, side by side, in one run: ``python -m benchmarks``.

Each scenario runs the same application (:mod:`benchmarks.app`) on kwik
(:mod:`benchmarks.peer_kwik`) and on plain aioquic (:mod:`benchmarks.peer_aioquic`), client and
server in separate processes (:mod:`benchmarks.worker`, driven by :mod:`benchmarks.harness`),
under the same QUIC settings (:class:`benchmarks.common.QuicSettings`), and reports medians,
spreads and kwik/aioquic ratios. See ``benchmarks/README.md``.
"""
