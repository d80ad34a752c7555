"""The HTTP and WebSocket edge.

* :mod:`~wsrt.gateway.admission`: pure — which endpoint, or reject, or admit with claims;
* :mod:`~wsrt.gateway.ws_adapter`: the only module that touches websockets internals;
* :mod:`~wsrt.gateway.connection`: the per-connection loop, delivery verdicts, closes;
* :mod:`~wsrt.gateway.server`: listening, HTTP endpoints, shutdown.
"""
