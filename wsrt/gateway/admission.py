"""What to do with an HTTP request, Sans-I/O (docs/design.md, "HTTP endpoints and readiness").

:func:`admit` maps a request's path, headers and query to an endpoint
(``/healthz``, ``/livez``, ``/metrics``), a rejection, or an admitted
WebSocket upgrade carrying the verified claims and the ``?channels=`` list.
``/ws`` is checked in the documented order: draining (503), Origin (403),
token (401), all before any upgrade.

Two more paths take the same checks without upgrading (:class:`Target`):
``/ws/check`` answers a browser why its upgrade would be refused (the
browser WebSocket API shows any refusal as a bare 1006), and
``/console/channels`` lists what a token may subscribe to for the console.
``/sse`` takes the upgrade's checks and becomes an event stream.
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


class Target(enum.Enum):
    """A path admitted by the checks of a WebSocket upgrade."""

    #: The upgrade itself.
    UPGRADE = "/ws"
    #: The same checks, answered in plain HTTP: ``200 ok`` or the refusal.
    CHECK = "/ws/check"
    #: The console's channel picker: the served topics this token may use.
    CHANNELS = "/console/channels"
    #: The same streams as Server-Sent Events (docs/protocol.md, "Server-Sent Events").
    SSE = "/sse"


_TARGETS = {t.value: t for t in Target}


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
    target: Target = Target.UPGRADE


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
    kind = _TARGETS.get(path)
    if kind is None:
        return NOT_FOUND
    if draining:
        return DRAINING
    params = parse_qs(query)
    origin = headers.get("Origin")
    if origin is None and kind is Target.CHECK:
        # A same-origin fetch() carries no Origin header, but the upgrade it
        # asks about does: the page names its origin so the answer is the same.
        origin = next(iter(params.get("origin", [])), None)
    if origin is not None and not origin_allowed(origin, allowed_origins):
        return ORIGIN
    token = bearer(headers) or next(iter(params.get("token", [])), "")
    try:
        claims = verifier.verify(token)
    except AuthError as exc:
        body = f"unauthorized: {exc.reason}"
        if kind is Target.CHECK:  # asked by a person's tool: the code, then plain words
            body += "\n" + verifier.explain(token, exc)
        return Reject(401, body, exc.reason, "authentication failed")
    return Admit(claims, channel_list(params.get("channels", [])), kind)
