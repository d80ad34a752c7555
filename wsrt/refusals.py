"""A refused token in plain words, for a person (``/ws/check``, ``wsrt check``, ``wsrt tail``).

The upgrade answers a short code (``401 unauthorized: bad_issuer``) that
clients and metrics match on. :func:`explain` says what that code means for
this token on this server: what the token carries (read unverified, the way
any holder of it could) against what the server accepts. It runs only when
someone asks, never on the upgrade path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wsrt.jwks import KeySet, fits
from wsrt.tokens import HMAC_ALGORITHMS


@dataclass(frozen=True)
class Accepts:
    """What a verifier accepts: the settings a refusal is explained against."""

    algorithms: Sequence[str]
    audience: str | None
    issuer: str | None
    keys: KeySet | None
    leeway: float


@dataclass(frozen=True)
class _Token:
    header: dict[str, Any]
    payload: dict[str, Any]

    @property
    def algorithm(self) -> str:
        return str(self.header.get("alg"))

    @property
    def provider(self) -> bool:
        return self.algorithm not in HMAC_ALGORITHMS


def _read(token: str) -> _Token:
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return _Token({}, {})
    return _Token(header, payload if isinstance(payload, dict) else {})


def _when(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    moment = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    seconds = round(value - time.time())
    return f"{moment} ({abs(seconds)} s {'from now' if seconds > 0 else 'ago'})"


def _missing(t: _Token, a: Accepts) -> str:
    required = ["sub", *(["aud"] if a.audience else []), *(["iss"] if a.issuer else [])]
    absent = [name for name in required if name not in t.payload]
    if absent:
        return f"The token has no {absent[0]!r} claim, which this server requires."
    return "The token lacks a claim this server requires."


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key on {key.curve.name}"
    return "an Ed25519/Ed448 key"


def _unknown_kid(t: _Token, a: Accepts) -> str:
    kid = t.header.get("kid")
    keys = a.keys
    held = sorted({*keys.pinned, *keys.fetched}) if keys is not None else []
    where = f"the JWKS at {keys.url}" if keys is not None and keys.url else "its key files"
    if kid is None:
        return (
            f"The token names no key (no 'kid' header) and this server holds {len(held)} "
            f"keys ({', '.join(held) or 'none'}): it cannot tell which one signed it."
        )
    key = (keys.fetched.get(kid) or keys.pinned.get(kid)) if keys is not None else None
    if key is not None and not fits(key, t.algorithm):
        return (
            f"The token says key {kid!r} signed it with {t.algorithm}, but that key "
            f"is {_kind(key)}: it never verifies {t.algorithm}."
        )
    words = (
        f"The token was signed with key {kid!r}, which is not among the keys this server "
        f"holds from {where} ({', '.join(held) or 'none'}): a token of another identity "
        "provider, or a key the provider has not published."
    )
    if keys is not None and keys.problem:
        words += f" The server cannot check for new keys now: {keys.problem}."
    return words


def _bad_signature(t: _Token, a: Accepts) -> str:
    if t.provider:
        return (
            f"The signature does not verify with the provider's key {t.header.get('kid')!r}: "
            "the token was changed after it was signed, or signed by another key."
        )
    return (
        "The signature does not verify with this server's WS_AUTH_SECRET: the token was "
        "minted with another secret, or changed after it was signed."
    )


_WORDS: dict[str, Callable[[_Token, Accepts], str]] = {
    "missing": lambda t, a: (
        "No token was sent: send it as 'Authorization: Bearer <jwt>' or '?token=<jwt>'."
    ),
    "malformed": lambda t, a: "The token is not a JWT (three base64url parts joined by dots).",
    "bad_algorithm": lambda t, a: (
        f"The token is signed with {t.header.get('alg')!r}; this server accepts only "
        f"{', '.join(a.algorithms)} (WS_AUTH_ALGORITHMS)."
    ),
    "unknown_kid": _unknown_kid,
    "bad_issuer": lambda t, a: (
        f"The token was issued by {t.payload.get('iss')!r}; this server accepts an identity "
        f"provider's tokens only from {a.issuer!r} (WS_AUTH_ISSUER)."
    ),
    "expired": lambda t, a: (
        f"The token expired at {_when(t.payload.get('exp'))}: get a new one."
        + (f" (Leeway: {a.leeway:g} s.)" if a.leeway else "")
    ),
    "not_yet_valid": lambda t, a: (
        f"The token's nbf claim makes it valid only from {_when(t.payload.get('nbf'))}: "
        "check the clocks of the issuer and this server (WS_AUTH_LEEWAY_SECONDS)."
    ),
    "bad_signature": _bad_signature,
    "bad_audience": lambda t, a: (
        f"The token is for the audience {t.payload.get('aud')!r}; this server is "
        f"{a.audience!r} (WS_AUTH_AUDIENCE)."
    ),
    "missing_claim": _missing,
    "revoked": lambda t, a: (
        "The token was revoked (WS_AUTH_REVOCATION_TOPIC) before it expired: sign in again."
    ),
}


def explain(token: str, reason: str, detail: str, accepts: Accepts) -> str:
    """One or two sentences on why ``token`` was refused with ``reason`` (``detail``: the
    verifier's own words, used where there is nothing more to say)."""
    token_read = _read(token)
    words = _WORDS.get(reason)
    if words is None or (reason == "malformed" and token_read.header):
        return detail[:1].upper() + detail[1:] + ("" if detail.endswith(".") else ".")
    return words(token_read, accepts)
