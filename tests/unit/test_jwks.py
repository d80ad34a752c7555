"""An identity provider's keys (wsrt/jwks.py) and the verifier's use of them."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from wsrt.auth import UNKNOWN_KID, AuthError, Verifier
from wsrt.jwks import KeySet, parse_jwks, read_pem_files

SECRET = "s" * 40


def public_jwk(key: Any, kid: str, algorithm: type[Any]) -> dict[str, Any]:
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


def test_a_jwks_gives_public_signing_keys_by_kid_and_nothing_else(keys: dict[str, Any]) -> None:
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    private = {**RSAAlgorithm.to_jwk(keys["rsa"], as_dict=True), "kid": "private"}
    document = {"keys": [
        public_jwk(keys["rsa"], "r", RSAAlgorithm), public_jwk(keys["ec"], "e", ECAlgorithm),
        public_jwk(keys["ed"], "d", OKPAlgorithm), private,
        {**public_jwk(keys["rsa"], "enc", RSAAlgorithm), "use": "enc"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, {"kty": "RSA", "kid": "broken"},
        {k: v for k, v in public_jwk(keys["rsa"], "none", RSAAlgorithm).items() if k != "kid"},
    ]}  # fmt: skip
    found = parse_jwks(json.dumps(document).encode())
    assert sorted(found) == ["d", "e", "r"]
    held = KeySet()
    held.fetched = found
    assert held.key("r", "RS256") is not None and held.key("r", "PS256") is not None
    assert held.key("r", "ES256") is None and held.key("e", "RS256") is None  # never crossed
    assert held.key("e", "ES256") is not None and held.key("e", "ES384") is None  # the curve
    assert held.key("d", "EdDSA") is not None and held.key("x", "RS256") is None
    assert held.key(None, "RS256") is None  # no kid among several keys: not guessed
    for bad in (b"[]", b'{"keys": 1}', b"not json"):
        with pytest.raises(ValueError):
            parse_jwks(bad)


def test_pem_files_are_keys_named_by_file(keys: dict[str, Any], tmp_path) -> None:
    pem = (
        keys["ec"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "idp-2026.pem").write_bytes(pem)
    (tmp_path / "junk.pem").write_text("junk")
    held = KeySet(files=[str(tmp_path / "idp-2026.pem")])
    assert held.key("idp-2026", "ES256") is not None
    assert held.key(None, "ES256") is not None  # one key: a token without kid is clear
    with pytest.raises(ValueError, match=r"junk\.pem is not a PEM public key"):
        read_pem_files([str(tmp_path / "junk.pem")])
    with pytest.raises(ValueError, match=r"cannot read .*missing\.pem"):
        read_pem_files([str(tmp_path / "missing.pem")])


def test_unknown_kids_ask_the_provider_at_most_once_per_interval() -> None:
    now = [100.0]
    held = KeySet("http://127.0.0.1:9/jwks", min_refresh=10, clock=lambda: now[0])
    assert held.may_refresh()
    held._last_asked = now[0]  # what refresh(asked=True) notes
    now[0] += 9.9
    assert not held.may_refresh()
    now[0] += 0.1
    assert held.may_refresh()
    assert not KeySet().may_refresh()  # no URL: nothing to ask


def test_the_verifier_takes_the_algorithm_from_its_list_and_the_key_from_the_set(
    keys: dict[str, Any],
) -> None:
    held = KeySet()
    held.fetched = {"k1": keys["rsa"].public_key(), "k2": keys["ec"].public_key()}
    verifier = Verifier(
        SECRET, algorithms=["HS256", "RS256", "ES256"], keys=held, issuer="https://idp"
    )
    claims = {"sub": "u", "iss": "https://idp", "exp": 2**31}
    ok = jwt.encode(claims, keys["rsa"], algorithm="RS256", headers={"kid": "k1"})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert verifier.verify(ok).subject == "u"
    assert verifier.verify(jwt.encode({"sub": "h"}, SECRET, algorithm="HS256")).subject == "h"
    cases = {
        UNKNOWN_KID: jwt.encode(claims, keys["rsa"], algorithm="RS256", headers={"kid": "k9"}),
        "bad_signature": jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"}),
        "unknown_kid ": jwt.encode(claims, keys["ec"], algorithm="ES256", headers={"kid": "k1"}),
        "bad_issuer": jwt.encode({**claims, "iss": "x"}, keys["rsa"], algorithm="RS256",
                                 headers={"kid": "k1"}),
        "bad_algorithm": jwt.encode(claims, keys["rsa"], algorithm="RS512", headers={"kid": "k1"}),
        "malformed": ".".join([_b64({"alg": "RS256", "kid": 7}), *ok.split(".")[1:]]),
    }  # fmt: skip
    for reason, token in cases.items():  # "unknown_kid ": k1 is an RSA key, not an ES256 one
        with pytest.raises(AuthError) as refused:
            verifier.verify(token)
        assert refused.value.reason == reason.strip(), (reason, refused.value.detail)
    with pytest.raises(ValueError, match="at least one algorithm"):
        Verifier(SECRET, algorithms=["RS256"])  # no keys: nothing it could verify


def _b64(header: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")
