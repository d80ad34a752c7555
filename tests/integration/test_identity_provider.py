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
from urllib.parse import urlencode

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.harness import auth, messages, next_json
from tests.integration.test_filters import expected, produce, until_pong
from tests.integration.test_replay import subscribe
from tests.support.oidc import CLIENT_ID, Issuer, signing_key
from wsrt.tools.client import http_get

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
        # The upgrade's answer, and the plain words /ws/check adds for a person.
        cases = [
            (signed({**good, "iss": "https://elsewhere"}), "unauthorized: bad_issuer",
             f"issued by 'https://elsewhere'; this server accepts an identity provider's tokens "
             f"only from '{issuer.url}' (WS_AUTH_ISSUER)"),
            (signed({k: v for k, v in good.items() if k != "iss"}), "unauthorized: missing_claim",
             "has no 'iss' claim"),
            (jwt.encode(good, other, algorithm="RS256", headers={"kid": "key-9"}),
             "unauthorized: unknown_kid",
             f"signed with key 'key-9', which is not among the keys this server holds from the "
             f"JWKS at {issuer.jwks_url} (key-1)"),
            (jwt.encode(good, private, algorithm="RS384", headers={"kid": "key-1"}),
             "unauthorized: bad_algorithm",
             "signed with 'RS384'; this server accepts only HS256, RS256 (WS_AUTH_ALGORITHMS)"),
            (_hmac_with(public_pem, good), "unauthorized: bad_signature",
             "does not verify with this server's WS_AUTH_SECRET"),
            (jwt.encode(good, other, algorithm="RS256",
                        headers={"kid": "key-1", "jku": "http://127.0.0.1:9/keys"}),
             "unauthorized: bad_signature", "does not verify with the provider's key 'key-1'"),
        ]  # fmt: skip
        for token, body, words in cases:
            assert await refused(server.url, token) == (401, body), body
            status, said, _ = http_get(f"{server.http}/ws/check?{urlencode({'token': token})}", 5)
            code, _, plain = said.partition("\n")
            assert (status, code) == (401, body) and words in plain, (body, said)
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


async def test_a_providers_channels_and_filters_claims_grant_as_minted_ones_do(
    make_topics, servers, producer
) -> None:
    """The provider puts ``channels`` and ``filters`` into its access tokens (as an
    identity provider's claim mappers do): they grant and narrow exactly as an HMAC
    token's, accounted by (partition, offset)."""
    topic, other = await make_topics("provider-claims", "provider-other", partitions=3)
    mine = {"field": "headers.account", "eq": "acct-1"}
    claims = {"channels": [topic], "filters": {topic: mine}}
    with Issuer(keys=[signing_key("key-1")], claims=claims) as issuer:
        server = servers([topic, other], provider_env(issuer))
        token = issuer.token()
        assert jwt.decode(token, options={"verify_signature": False})["filters"] == {topic: mine}
        where = await produce(producer, topic, range(30))
        start = {"since": {"0": 0, "1": 0, "2": 0}}
        async with websockets.connect(
            server.url, additional_headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            refused = await subscribe(ws, other, request_id="o")
            assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused
            widened = await subscribe(ws, topic, **start, filter={"not": mine})
            assert widened["type"] == "subscribed", widened
            assert await until_pong(ws) == []  # the claim's filter AND its negation: nothing
            await ws.send(json.dumps({"type": "unsubscribe", "channel": topic}))
            assert (await next_json(ws))["type"] == "unsubscribed"
            assert (await subscribe(ws, topic, **start))["type"] == "subscribed"
            want = expected(mine, where, range(30))
            got = await messages(ws, len(want))
            assert await until_pong(ws) == []
        assert sorted((m["partition"], m["offset"]) for m in got) == want
        assert 0 < len(want) < len(where)
