"""Benchmarks on a real broker: ``wsrt bench`` (design section 7, issue 4).

:mod:`tests.bench.client` is the load client, run as its own process;
:mod:`tests.bench.run` starts the broker, the server and the clients for each
scenario and prints the table; :mod:`tests.bench.baseline` is the
``broadcast()``-per-message server it compares against. The server-process
harness they share with the integration tests is :mod:`tests.support.server`.
"""
