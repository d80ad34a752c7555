"""Minting HMAC JWTs with the standard library only.

This module imports nothing outside the standard library so that
``scripts/ws_realtime/generate_token.py`` runs with a plain ``python`` from a
checkout. Verification (:mod:`wsrt.auth`) uses PyJWT; the tests check that
both agree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
#: The HMAC algorithms wsrt signs and accepts (verification pins a subset of them).
HMAC_ALGORITHMS = tuple(_DIGESTS)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def mint_token(
    secret: str,
    subject: str,
    *,
    ttl: float | None = 3600,
    audience: str | None = None,
    channels: Iterable[str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    algorithm: str = "HS256",
    now: float | None = None,
) -> str:
    """An HMAC-signed JWT for ``subject``; ``ttl`` of ``None`` or 0 means no ``exp``."""
    if algorithm not in _DIGESTS:
        raise ValueError(f"algorithm must be one of {', '.join(_DIGESTS)}, got {algorithm!r}")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": subject, "iat": issued}
    if ttl:
        payload["exp"] = issued + int(ttl)
    if audience is not None:
        payload["aud"] = audience
    if channels is not None:
        payload["channels"] = list(channels)
    payload.update(extra_claims or {})
    signing_input = f"{_b64(_json({'alg': algorithm, 'typ': 'JWT'}))}.{_b64(_json(payload))}"
    signature = hmac.new(secret.encode(), signing_input.encode(), _DIGESTS[algorithm]).digest()
    return f"{signing_input}.{_b64(signature)}"
