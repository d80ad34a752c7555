from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from wsrt.auth import AuthError, Claims, Verifier, mint_token, origin_allowed

SECRET = "unit-test-secret-0123456789abcdef0123"


def verifier(**kwargs) -> Verifier:
    return Verifier(SECRET, **kwargs)


def test_minted_token_verifies() -> None:
    claims = verifier().verify(mint_token(SECRET, "alice", channels=["lines"]))
    assert claims.subject == "alice"
    assert claims.channels == ("lines",)
    assert claims.expires_at is not None and claims.expires_at > time.time()


def test_token_without_ttl_has_no_expiry() -> None:
    assert verifier().verify(mint_token(SECRET, "bob", ttl=None)).expires_at is None


def _unsigned(payload: dict) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: "", "missing"),
        (lambda: "x.y", "malformed"),
        (lambda: _unsigned({"sub": "m"}), "bad_algorithm"),
        (lambda: jwt.encode({"sub": "m"}, "other-secret-0123456789abcdef0123"), "bad_signature"),
        (lambda: mint_token(SECRET, "m", now=time.time() - 7200), "expired"),
        (lambda: jwt.encode({"iat": 1}, SECRET), "missing_claim"),
        (lambda: jwt.encode({"sub": 5}, SECRET), "bad_claim"),
        (lambda: jwt.encode({"sub": "m", "exp": str(int(time.time()) + 60)}, SECRET), "bad_claim"),
        (lambda: jwt.encode({"sub": "m", "nbf": "0"}, SECRET), "bad_claim"),
        (lambda: jwt.encode({"sub": "m", "iat": True}, SECRET), "bad_claim"),
        (lambda: mint_token(SECRET, "m", extra_claims={"nbf": time.time() + 60}), "not_yet_valid"),
        (
            lambda: mint_token(SECRET, "m", extra_claims={"iat": int(time.time()) + 60}),
            "not_yet_valid",
        ),
        (
            lambda: mint_token(SECRET, "m", channels=None, extra_claims={"channels": "lines"}),
            "bad_claim",
        ),
        (lambda: mint_token(SECRET, "m", algorithm="HS512"), "bad_algorithm"),
    ],
)
def test_refusals_carry_a_reason(make, reason: str) -> None:
    token = make()
    with pytest.raises(AuthError) as err:
        verifier().verify(token)
    assert err.value.reason == reason
    if token:
        assert token not in str(err.value)


def test_leeway_accepts_small_skew() -> None:
    token = mint_token(SECRET, "m", ttl=1, now=time.time() - 3)
    with pytest.raises(AuthError):
        verifier().verify(token)
    assert verifier(leeway=30).verify(token).subject == "m"


def test_audience() -> None:
    strict = verifier(audience="wsrt")
    assert strict.verify(mint_token(SECRET, "a", audience="wsrt")).subject == "a"
    assert (
        strict.verify(mint_token(SECRET, "a", extra_claims={"aud": ["x", "wsrt"]})).subject == "a"
    )
    for token in (mint_token(SECRET, "a"), mint_token(SECRET, "a", audience="other")):
        with pytest.raises(AuthError):
            strict.verify(token)
    # Without a configured audience, aud is not checked.
    assert verifier().verify(mint_token(SECRET, "a", audience="anything")).subject == "a"


@pytest.mark.parametrize(
    ("patterns", "channel", "allowed"),
    [
        (None, "anything", True),
        ((), "lines", False),
        (("*",), "order_book:BTC", True),
        (("lines",), "lines", True),
        (("lines",), "lines:k", True),
        (("lines",), "lines2", False),
        (("order_book:*",), "order_book:BTC", True),
        (("order_book:*",), "order_book", False),
        (("order_book:BTC",), "order_book:ETH", False),
        (("order_book:BTC",), "order_book", False),
        (("order_*",), "order_book", True),
        (("order_*",), "order_book:X", True),
        (("Lines",), "lines", False),
    ],
)
def test_channel_grants(patterns, channel: str, allowed: bool) -> None:
    assert Claims("s", None, patterns).allows(channel) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("https://app.example.com:443", False),
        ("http://app.example.com", False),
        ("https://x.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),
        ("https://evil-example.org", False),
        ("https://x.example.org:8443", False),
        ("https://x.example.net:8443", True),
        ("null", False),
    ],
)
def test_origin_allow_list(origin: str, allowed: bool) -> None:
    entries = ("https://app.example.com", "https://*.example.org", "https://*.example.net:8443")
    assert origin_allowed(origin, entries) is allowed


def test_empty_or_star_allow_list_allows_all() -> None:
    assert origin_allowed("https://anything", ())
    assert origin_allowed("https://anything", ("*",))
