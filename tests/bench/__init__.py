"""Benchmarks on a real broker: ``wsrt bench`` (design section 7, issue 4).

:mod:`wsrt.bench.client` is the load client, run as its own process;
:mod:`wsrt.bench.run` starts the broker, the server and the clients for each
scenario and prints the table; :mod:`wsrt.bench.server` is the server-process
harness the integration tests share.
"""
