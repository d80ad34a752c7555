"""Benchmarks on a real broker: ``wsrt bench`` (docs/performance.md).

:mod:`wsrt.bench.client` is the load client, run as its own process;
:mod:`wsrt.bench.run` starts the broker, the server and the clients for each
scenario (:mod:`wsrt.bench.handshakes` those of token algorithms), and
:mod:`wsrt.bench.suite` runs the ones asked for by name; :mod:`wsrt.bench.baseline` is the
``broadcast()``-per-message server it compares against. The server-process
harness they share with the integration tests is :mod:`wsrt.tools.server`.
"""
