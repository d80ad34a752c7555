"""The HTTP and WebSocket edge.

* :mod:`~wsrt.gateway.admission`: pure — which endpoint, or reject, or admit with claims;
* :mod:`~wsrt.gateway.ws_adapter`: the only module that touches websockets internals;
* :mod:`~wsrt.gateway.server`: serving, the per-connection loop, closing and shutdown.
"""

from wsrt.gateway.server import Gateway

__all__ = ["Gateway"]
