"""What to do with an HTTP request, Sans-I/O (design section 3).

:func:`admit` maps a request's path, headers and query to an endpoint
(``/healthz``, ``/livez``, ``/metrics``), a rejection, or an admitted
WebSocket upgrade carrying the verified claims and the ``?channels=`` list.
``/ws`` is checked in the documented order: draining (503), Origin (403),
token (401), all before any upgrade.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs

from wsrt.auth import AuthError, Claims, Verifier, origin_allowed
from wsrt.protocol import channel_list


class Endpoint(enum.Enum):
    HEALTHZ = "/healthz"
    LIVEZ = "/livez"
    METRICS = "/metrics"


@dataclass(frozen=True)
class Reject:
    status: int
    #: The plain-text body the client sees.
    body: str
    #: The ``reason`` label of ``wsrt_handshakes_rejected`` (``None``: not counted).
    reason: str | None = None
    #: The (rate-limited) warning logged, if any.
    log: str | None = None


@dataclass(frozen=True)
class Admit:
    claims: Claims
    channels: list[str]


class _Headers(Protocol):
    def get(self, key: str, /) -> str | None: ...


NOT_FOUND = Reject(404, "not found; WebSocket clients use /ws")
DRAINING = Reject(503, "server is shutting down", "draining")
ORIGIN = Reject(403, "origin not allowed", "origin", "origin not allowed")


def bearer(headers: _Headers) -> str | None:
    """The token of an ``Authorization: Bearer …`` header."""
    header = headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def admit(
    target: str,
    headers: _Headers,
    *,
    draining: bool,
    allowed_origins: tuple[str, ...],
    verifier: Verifier,
) -> Endpoint | Reject | Admit:
    """The decision for a request to ``target`` (path and query string)."""
    path, _, query = target.partition("?")
    for endpoint in Endpoint:
        if path == endpoint.value:
            return endpoint
    if path != "/ws":
        return NOT_FOUND
    if draining:
        return DRAINING
    origin = headers.get("Origin")
    if origin is not None and not origin_allowed(origin, allowed_origins):
        return ORIGIN
    params = parse_qs(query)
    token = bearer(headers) or next(iter(params.get("token", [])), "")
    try:
        claims = verifier.verify(token)
    except AuthError as exc:
        return Reject(401, f"unauthorized: {exc.reason}", exc.reason, "authentication failed")
    return Admit(claims, channel_list(params.get("channels", [])))
