"""A refused token in plain words (wsrt/refusals.py): what ``/ws/check`` says to a person."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wsrt.auth import AuthError, Verifier
from wsrt.jwks import KeySet

SECRET = "s" * 40
ISSUER = "https://idp.example"


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def words(verifier: Verifier, token: str) -> tuple[str, str]:
    with pytest.raises(AuthError) as refused:
        verifier.verify(token)
    return refused.value.reason, verifier.explain(token, refused.value)


def test_a_refused_provider_token_is_explained_against_what_the_server_accepts(
    rsa_key: Any,
) -> None:
    held = KeySet("https://idp.example/jwks")
    held.fetched = {
        "k1": rsa_key.public_key(),
        "e1": ec.generate_private_key(ec.SECP256R1()).public_key(),
    }
    held.problem = "cannot reach the JWKS at https://idp.example/jwks: connection refused"
    verifier = Verifier(
        SECRET, algorithms=["HS256", "RS256", "ES256"], keys=held, issuer=ISSUER, audience="wsrt"
    )
    good = {"sub": "u", "iss": ISSUER, "aud": "wsrt", "exp": int(time.time()) + 600}

    def signed(claims: dict[str, Any], kid: str | None = "k1", algorithm: str = "RS256") -> str:
        return jwt.encode(claims, rsa_key, algorithm=algorithm, headers={"kid": kid} if kid else {})

    cases = {
        "bad_issuer": (signed({**good, "iss": "https://elsewhere"}),
                       "issued by 'https://elsewhere'; this server accepts an identity provider's "
                       "tokens only from 'https://idp.example' (WS_AUTH_ISSUER)"),
        "unknown_kid": (signed(good, kid="k9"),
                        "signed with key 'k9', which is not among the keys this server holds "
                        "from the JWKS at https://idp.example/jwks (e1, k1)"),
        "unknown_kid ": (signed(good, kid="e1"),
                         "says key 'e1' signed it with RS256, but that key is an EC key on "
                         "secp256r1"),
        "unknown_kid  ": (signed(good, kid=None), "names no key (no 'kid' header)"),
        "bad_algorithm": (signed(good, algorithm="RS512"),
                          "signed with 'RS512'; this server accepts only HS256, RS256, ES256 "
                          "(WS_AUTH_ALGORITHMS)"),
        "bad_signature": (jwt.encode(good, rsa.generate_private_key(public_exponent=65537,
                                                                    key_size=2048),
                                     algorithm="RS256", headers={"kid": "k1"}),
                          "does not verify with the provider's key 'k1'"),
        "missing_claim": (signed({k: v for k, v in good.items() if k != "iss"}),
                          "has no 'iss' claim"),
        "bad_audience": (signed({**good, "aud": "other"}),
                         "for the audience 'other'; this server is 'wsrt'"),
        "expired": (signed({**good, "exp": 1_700_000_000}), "expired at 2023-11-14 22:13:20 UTC"),
    }  # fmt: skip
    for reason, (token, phrase) in cases.items():
        said = words(verifier, token)
        assert said[0] == reason.strip() and phrase in said[1], (reason, said)
    # A provider that cannot be reached is named beside an unknown kid.
    assert (
        "cannot check for new keys now: cannot reach" in words(verifier, cases["unknown_kid"][0])[1]
    )


def test_hmac_refusals_name_the_secret_and_the_clock() -> None:
    verifier = Verifier(SECRET, leeway=5)
    nbf = jwt.encode({"sub": "u", "nbf": time.time() + 3600}, SECRET, algorithm="HS256")
    assert words(verifier, nbf)[1].startswith("The token's nbf claim makes it valid only from ")
    other = jwt.encode({"sub": "u"}, "t" * 40, algorithm="HS256")
    assert "WS_AUTH_SECRET" in words(verifier, other)[1]
    assert words(verifier, "")[1].startswith("No token was sent")
    assert words(verifier, "abc")[1] == (
        "The token is not a JWT (three base64url parts joined by dots)."
    )
    stale = jwt.encode({"sub": "u", "exp": 1_700_000_000}, SECRET, algorithm="HS256")
    assert words(verifier, stale)[1].endswith("get a new one. (Leeway: 5 s.)")
    channels = jwt.encode({"sub": "u", "channels": "all"}, SECRET, algorithm="HS256")
    assert words(verifier, channels) == (
        "bad_claim",
        "The channels claim must be a list of strings.",
    )
