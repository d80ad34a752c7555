"""What the operator commands use around the server, never the server itself.

* :mod:`~wsrt.tools.client`: a WebSocket and HTTP client of a wsrt server (tail, check);
* :mod:`~wsrt.tools.feed` and :mod:`~wsrt.tools.samples`: the demo records `produce` and `dev` send;
* :mod:`~wsrt.tools.progress`: one status line on a terminal, whole lines when piped;
* :mod:`~wsrt.tools.server`: a ``wsrt serve`` child process observed through its JSON log
  (the benchmarks and the tests).
"""
