"""JWT verification and channel grants, Sans-I/O.

:class:`Verifier` turns a token into :class:`Claims` or raises
:class:`AuthError` with a short, loggable reason (never the token itself).
:meth:`Claims.allows` answers "may this connection use this channel?" with
the grant rules of docs/design.md, "Authentication". Tokens are minted by
:func:`wsrt.tokens.mint_token`, which is stdlib-only (re-exported here).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from wsrt.errors import WsrtError
from wsrt.filters import Filter, FilterError, both, parse
from wsrt.jwks import ASYMMETRIC_ALGORITHMS, KeySet

if TYPE_CHECKING:
    from wsrt.revocation import Revocations
from wsrt.protocol import split_channel
from wsrt.refusals import Accepts, explain
from wsrt.tokens import HMAC_ALGORITHMS, mint_token

# The configuration warns once about a short WS_AUTH_SECRET; PyJWT would warn
# on every token.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

__all__ = ["UNKNOWN_KID", "AuthError", "Claims", "Verifier", "mint_token", "origin_allowed"]


class AuthError(WsrtError):
    """A token was refused. ``reason`` is a short code safe to log and count."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token lets a connection do."""

    subject: str
    #: ``exp`` as a UNIX time, or ``None`` for a token that does not expire.
    expires_at: int | None
    #: Channel patterns of the ``channels`` claim; ``None`` grants every channel.
    channels: tuple[str, ...] | None
    #: The ``filters`` claim: topic pattern → the filter every subscription to a matching
    #: topic is AND-ed with (docs/protocol.md, "Filters").
    filters: tuple[tuple[str, Filter], ...] = ()
    #: ``jti`` and ``iat``, for revocations (wsrt/revocation.py).
    token_id: str | None = None
    issued_at: float | None = None

    def filter_for(self, topic: str) -> Filter | None:
        """What the token imposes on ``topic`` (every matching pattern's filter, AND-ed)."""
        if not self.filters:
            return None
        return both(*(f for pattern, f in self.filters if fnmatchcase(topic, pattern)))

    def allows(self, channel: str) -> bool:
        """May this token subscribe to ``channel``?

        A pattern matches the channel itself (``fnmatch`` style). A grant of a
        bare topic (a pattern without ``:``) also covers its ``topic:key``
        sub-channels; ``order_book:*`` does not cover ``order_book``.
        """
        if self.channels is None:
            return True
        topic, key = split_channel(channel)
        for pattern in self.channels:
            if fnmatchcase(channel, pattern):
                return True
            if key is not None and ":" not in pattern and fnmatchcase(topic, pattern):
                return True
        return False


#: A provider token signed with a key the server does not hold (yet).
UNKNOWN_KID = "unknown_kid"

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    # PyJWT 2.10+ checks that sub is a string; older versions leave it to us.
    (getattr(jwt.exceptions, "InvalidSubjectError", jwt.MissingRequiredClaimError), "bad_claim"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.DecodeError, "malformed"),
)


#: Registered claims that are NumericDates (RFC 7519 section 4.1).
_TIME_CLAIMS = ("exp", "nbf", "iat")
_NO_TIMES = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


class Verifier:
    """Verifies JWTs with pinned algorithms (``none`` is never accepted): HMAC ones with
    the secret, an identity provider's (RS…, PS…, ES…, EdDSA) with ``keys`` by ``kid``,
    and those with ``issuer`` as their ``iss`` when it is set."""

    def __init__(
        self,
        secret: str,
        *,
        algorithms: Iterable[str] = HMAC_ALGORITHMS[:1],
        audience: str | None = None,
        leeway: float = 0.0,
        keys: KeySet | None = None,
        issuer: str | None = None,
    ) -> None:
        self._secret = secret
        known = (*HMAC_ALGORITHMS, *(ASYMMETRIC_ALGORITHMS if keys is not None else ()))
        self._algorithms = [a for a in algorithms if a in known]
        if not self._algorithms:
            raise ValueError("a Verifier needs at least one algorithm it has keys for")
        self._audience = audience
        self.leeway = leeway
        self.keys = keys
        self._issuer = issuer
        #: WS_AUTH_REVOCATION_TOPIC's revocations, once the server reads them.
        self.revocations: Revocations | None = None
        required = ["sub", "aud"] if audience is not None else ["sub"]
        self._options: Any = {"require": required, "verify_aud": audience is not None}
        self._provider_options: Any = {
            **self._options, "require": [*required, *(["iss"] if issuer else [])],
        }  # fmt: skip

    def verify(self, token: str) -> Claims:
        if not token:
            raise AuthError("missing", "no token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed", f"token is malformed: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise AuthError("bad_algorithm", f"algorithm {algorithm!r} is not accepted")
        key, issuer, options = self._secret, None, self._options
        if algorithm not in HMAC_ALGORITHMS:  # an identity provider's: its key by kid
            assert self.keys is not None
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise AuthError("malformed", "the kid header must be a string")
            key = self.keys.key(kid, algorithm)
            if key is None:
                raise AuthError(UNKNOWN_KID, f"no {algorithm} key {kid!r} is known")
            issuer, options = self._issuer, self._provider_options
        # The signature first, times not yet: PyJWT takes "exp": "1700000000"
        # (a string) for a date, RFC 7519 says a NumericDate is a JSON number.
        payload = self._decode(token, key, algorithm, issuer, {**options, **_NO_TIMES})
        for name in _TIME_CLAIMS:
            value = payload.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise AuthError("bad_claim", f"the {name} claim must be a number (NumericDate)")
        claims = claims_from_payload(self._decode(token, key, algorithm, issuer, options))
        revoked = self.revocations
        if revoked is not None and revoked.revoked(
            claims.subject, claims.token_id, claims.issued_at
        ):
            raise AuthError("revoked", "the token was revoked")
        return claims

    def explain(self, token: str, error: AuthError) -> str:
        """Why ``token`` got ``error``, in plain words for a person (``/ws/check``)."""
        accepts = Accepts(self._algorithms, self._audience, self._issuer, self.keys, self.leeway)
        return explain(token, error.reason, error.detail, accepts)

    def _decode(
        self, token: str, key: Any, algorithm: str, issuer: str | None, options: Any
    ) -> dict[str, Any]:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],  # the one the header named, already allowed
                audience=self._audience,
                issuer=issuer,
                leeway=self.leeway,
                options=options,
            )
        except jwt.PyJWTError as exc:
            reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), "invalid")
            raise AuthError(reason, f"token rejected: {exc}") from None
        return payload


def claims_from_payload(payload: Mapping[str, Any]) -> Claims:
    subject = payload.get("sub")
    if subject is not None and not isinstance(subject, str):
        raise AuthError("bad_claim", "the sub claim must be a string")
    if not subject:
        raise AuthError("missing_claim", "token has no subject (sub)")
    exp = payload.get("exp")
    channels = payload.get("channels")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise AuthError("bad_claim", "the channels claim must be a list of strings")
    return Claims(
        subject=subject,
        expires_at=int(exp) if exp is not None else None,
        channels=tuple(channels) if channels is not None else None,
        filters=_claimed_filters(payload.get("filters")),
        token_id=payload["jti"] if isinstance(payload.get("jti"), str) else None,
        issued_at=payload.get("iat") if isinstance(payload.get("iat"), int | float) else None,
    )


#: Bound on one filter of a token's ``filters`` claim.
CLAIM_FILTER_BYTES = 16384


def _claimed_filters(claim: object) -> tuple[tuple[str, Filter], ...]:
    if claim is None:
        return ()
    if not isinstance(claim, dict) or not all(isinstance(k, str) and k for k in claim):
        raise AuthError("bad_claim", "the filters claim must be an object of topic → filter")
    try:
        return tuple(
            (pattern, parse(expression, CLAIM_FILTER_BYTES, f"filters[{pattern[:40]!r}]"))
            for pattern, expression in sorted(claim.items())
        )
    except FilterError as exc:
        raise AuthError("bad_claim", f"the filters claim: {exc}") from None


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Is a browser ``Origin`` in the allow list?

    An empty list or ``*`` allows every origin. Entries match scheme, host and
    port exactly; ``https://*.example.com`` matches any subdomain of
    example.com over https (not example.com itself).
    """
    if not allowed or "*" in allowed:
        return True
    origin = origin.lower().rstrip("/")
    for entry in allowed:
        if origin == entry:
            return True
        scheme, sep, rest = entry.partition("://*.")
        if sep and origin.startswith(scheme + "://"):
            host_port = origin[len(scheme) + 3 :]
            suffix = "." + rest
            host, _, port = host_port.partition(":")
            want_host, _, want_port = suffix.partition(":")
            if host.endswith(want_host) and len(host) > len(want_host) and port == want_port:
                return True
    return False
