"""Tokens from a real OpenID provider (oidc-provider, run with Node), verified by its JWKS.

The app's way: client credentials at the provider's token endpoint, an RS256
access token, its ``kid`` looked up in the provider's JWKS as the provider
serves it. A key rotation while a client is connected: the old token's
connection stays (and takes the new token by ``refresh``), a new token (new
``kid``) is accepted at once; the provider away: cached keys keep working and
``/healthz`` says so.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.harness import auth, next_json
from tests.support.oidc import CLIENT_ID, Issuer, signing_key

pytestmark = pytest.mark.integration


def provider_env(issuer: Issuer) -> dict[str, str]:
    return {
        "WS_AUTH_ALGORITHMS": "HS256,RS256", "WS_AUTH_JWKS_URL": issuer.jwks_url,
        "WS_AUTH_ISSUER": issuer.url, "WS_AUTH_JWKS_REFRESH_SECONDS": "1",
        "WS_AUTH_JWKS_MIN_REFRESH_SECONDS": "1",
    }  # fmt: skip


async def refused(url: str, token: str) -> tuple[int, str]:
    """Status and body of a refused upgrade."""
    with pytest.raises(InvalidStatus) as refusal:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}):
            pass
    response = refusal.value.response
    return response.status_code, response.body.decode().strip()


def health(server: Any) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{server.http}/healthz", timeout=10) as answer:
            return dict(json.load(answer))
    except urllib.error.HTTPError as exc:
        return dict(json.load(exc))


async def test_provider_tokens_through_a_key_rotation_and_an_outage(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("provider")
    old, new, newer = signing_key("key-1"), signing_key("key-2"), signing_key("key-3")
    issuer = Issuer(keys=[old])
    issuer.start()
    try:
        # No periodic fetch in the test's time: only tokens with an unknown kid fetch.
        env = {**provider_env(issuer), "WS_AUTH_JWKS_REFRESH_SECONDS": "300",
               "WS_AUTH_JWKS_MIN_REFRESH_SECONDS": "0.001"}  # fmt: skip
        server = servers([topic], env)
        first = await asyncio.to_thread(issuer.token)
        header = jwt.get_unverified_header(first)
        assert header["alg"] == "RS256" and header["kid"] == "key-1"
        url = f"{server.url}?channels={topic}"
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {first}"}
        ) as before:
            assert (await next_json(before))["type"] == "subscribed"
            async with websockets.connect(url, additional_headers=auth()) as hmac_client:
                assert (await next_json(hmac_client))["type"] == "subscribed"  # HMAC still

            issuer.stop()
            issuer.keys = [new, old]  # the provider signs with key-2, still publishes key-1
            issuer.start()
            second = await asyncio.to_thread(issuer.token)
            assert jwt.get_unverified_header(second)["kid"] == "key-2"
            async with websockets.connect(
                url, additional_headers={"Authorization": f"Bearer {second}"}
            ) as after:  # an unknown kid: the server asks the provider at once
                assert (await next_json(after))["type"] == "subscribed"
                await producer.send_and_wait(topic, b'{"n":1}')
                for ws in (before, after):
                    message = await next_json(ws)
                    assert message["type"] == "message" and message["data"] == {"n": 1}

            issuer.stop()
            issuer.keys = [newer, new, old]  # rotated again: key-3 signs
            issuer.start()
            third = await asyncio.to_thread(issuer.token)
            await before.send(json.dumps({"type": "refresh", "token": third, "id": "r"}))
            refreshed = await next_json(before)  # the open connection takes the new token
            expires = jwt.decode(third, options={"verify_signature": False})["exp"]
            assert refreshed == {"type": "refreshed", "exp": expires, "id": "r"}, refreshed

            mark = server.mark()
            issuer.stop()  # the provider away: the keys held keep working
            stranger = jwt.encode(
                {"sub": "x", "iss": issuer.url}, jwt.PyJWK(signing_key("k")).key,
                algorithm="RS256", headers={"kid": "key-9"},
            )  # fmt: skip
            async with asyncio.timeout(30):  # until an unknown kid has asked the provider
                while "auth" not in health(server):
                    assert await refused(url, stranger) == (401, "unauthorized: unknown_kid")
            said = await asyncio.to_thread(
                server.wait_for, "jwks_unavailable", lambda e: True, 30, mark
            )
            assert "cannot reach the JWKS" in said["reason"]
            assert health(server)["auth"].startswith(f"cannot reach the JWKS at {issuer.jwks_url}")
            async with websockets.connect(
                url, additional_headers={"Authorization": f"Bearer {third}"}
            ) as during:
                assert (await next_json(during))["type"] == "subscribed"
    finally:
        issuer.stop()


async def test_provider_tokens_that_must_be_refused(make_topics, servers) -> None:
    """Wrong issuer, a kid nobody published, an algorithm not allowed, alg confusion (an
    HMAC token signed with the provider's public key) and a jku header pointing elsewhere."""
    from cryptography.hazmat.primitives import serialization

    (topic,) = await make_topics("provider-refused")
    key = signing_key("key-1")
    private = jwt.PyJWK(key).key
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with Issuer(keys=[key]) as issuer:
        server = servers([topic], provider_env(issuer))
        good = {"sub": CLIENT_ID, "iss": issuer.url, "exp": 2**31}

        def signed(claims: dict[str, Any], **headers: Any) -> str:
            return jwt.encode(
                claims, private, algorithm="RS256", headers={"kid": "key-1", **headers}
            )

        other = jwt.PyJWK(signing_key("key-x")).key
        cases = [
            (signed({**good, "iss": "https://elsewhere"}), "unauthorized: bad_issuer"),
            (signed({k: v for k, v in good.items() if k != "iss"}), "unauthorized: missing_claim"),
            (jwt.encode(good, other, algorithm="RS256", headers={"kid": "key-9"}),
             "unauthorized: unknown_kid"),
            (jwt.encode(good, private, algorithm="RS384", headers={"kid": "key-1"}),
             "unauthorized: bad_algorithm"),
            (_hmac_with(public_pem, good), "unauthorized: bad_signature"),
            (jwt.encode(good, other, algorithm="RS256",
                        headers={"kid": "key-1", "jku": "http://127.0.0.1:9/keys"}),
             "unauthorized: bad_signature"),
        ]  # fmt: skip
        for token, body in cases:
            assert await refused(server.url, token) == (401, body), body
        async with websockets.connect(
            f"{server.url}?channels={topic}",
            additional_headers={"Authorization": f"Bearer {signed(good)}"},
        ) as ws:
            assert (await next_json(ws))["type"] == "subscribed"


def _hmac_with(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token whose secret is the provider's public key (the alg confusion attack)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "key-1"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()
