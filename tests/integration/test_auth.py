"""Authentication and authorisation at the real gateway (design section 4)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.harness import SECRET, auth, messages, next_json, token


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


UNSIGNED = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'mallory'})}."


@pytest.fixture
async def server(make_topics, servers):
    topics = await make_topics("order_book", "lines")
    return servers(topics, {"WS_ALLOWED_ORIGINS": "https://app.example.com,https://*.example.org"})


async def status_of(url: str, **kwargs) -> int:
    try:
        async with websockets.connect(url, **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_missing_token_is_401(server) -> None:
    assert await status_of(server.url) == 401
    assert await status_of(server.url, additional_headers={"Authorization": "Basic eDp5"}) == 401
    assert await status_of(f"{server.url}?token=") == 401


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(
            lambda: jwt.encode({"sub": "x"}, "another-secret-of-enough-length-000"),
            id="bad-signature",
        ),
        pytest.param(
            lambda: token(ttl=None, extra_claims={"exp": int(time.time()) - 60}), id="expired"
        ),
        pytest.param(lambda: UNSIGNED, id="alg-none"),
        pytest.param(lambda: jwt.encode({"iat": int(time.time())}, SECRET), id="missing-sub"),
        pytest.param(
            lambda: token(extra_claims={"iat": int(time.time()) + 600}), id="iat-in-future"
        ),
        pytest.param(
            lambda: token(extra_claims={"nbf": int(time.time()) + 600}), id="not-yet-valid"
        ),
        pytest.param(
            lambda: jwt.encode({"sub": "x"}, SECRET, algorithm="HS512"), id="unpinned-alg"
        ),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
    ],
)
async def test_invalid_tokens_get_401_before_upgrade(server, bad) -> None:
    bad_token = bad()
    assert (
        await status_of(server.url, additional_headers={"Authorization": f"Bearer {bad_token}"})
        == 401
    )
    assert await status_of(f"{server.url}?token={bad_token}") == 401
    assert bad_token not in "".join(server.raw)


async def test_valid_token_in_header_or_query(server) -> None:
    good = token("alice")
    assert (
        await status_of(server.url, additional_headers={"Authorization": f"Bearer {good}"}) == 101
    )
    assert await status_of(f"{server.url}?token={good}") == 101
    server.wait_for("connection_closed", lambda e: e.get("subject") == "alice")
    assert good not in "".join(server.raw)
    assert SECRET not in "".join(server.raw)


async def test_audience_is_enforced_when_configured(make_topics, servers) -> None:
    topics = await make_topics("lines")
    server = servers(topics, {"WS_AUTH_AUDIENCE": "wsrt-clients"})
    assert await status_of(f"{server.url}?token={token()}") == 401
    assert await status_of(f"{server.url}?token={token(audience='someone-else')}") == 401
    assert await status_of(f"{server.url}?token={token(audience='wsrt-clients')}") == 101
    listed = token(extra_claims={"aud": ["other", "wsrt-clients"]})
    assert await status_of(f"{server.url}?token={listed}") == 101


async def test_origin_allow_list(server) -> None:
    headers = auth()
    assert (
        await status_of(server.url, additional_headers=headers, origin="https://evil.example.com")
        == 403
    )
    assert (
        await status_of(server.url, additional_headers=headers, origin="http://app.example.com")
        == 403
    )
    assert (
        await status_of(
            server.url, additional_headers=headers, origin="https://app.example.com:8443"
        )
        == 403
    )
    assert (
        await status_of(server.url, origin="https://evil.example.com") == 403
    )  # origin before token
    assert (
        await status_of(server.url, additional_headers=headers, origin="https://app.example.com")
        == 101
    )
    assert (
        await status_of(server.url, additional_headers=headers, origin="https://a.b.example.org")
        == 101
    )
    assert (
        await status_of(server.url, additional_headers=headers, origin="https://example.org") == 403
    )
    assert (
        await status_of(server.url, additional_headers=headers) == 101
    )  # no Origin: not a browser


async def test_channels_claim_limits_subscriptions(server) -> None:
    order_book, lines = sorted(server.env["WS_KAFKA_TOPICS"].split(","))
    restricted = auth(channels=[f"{order_book}:BTC*"])
    async with websockets.connect(server.url, additional_headers=restricted) as ws:
        for channel, expected in [
            (f"{order_book}:BTC-USD", "subscribed"),
            (order_book, "forbidden"),
            (lines, "forbidden"),
            ("no-such-topic", "forbidden"),  # no hint that it does not exist
        ]:
            await ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": channel}))
            reply = await next_json(ws)
            assert reply.get("code", reply["type"]) == expected, reply
            assert reply["id"] == channel
    async with websockets.connect(server.url, additional_headers=auth(channels=[order_book])) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": f"{order_book}:ETH"}))
        assert (await next_json(ws))["type"] == "subscribed"
        await ws.send(json.dumps({"type": "subscribe", "channel": "no-such-topic"}))
        assert (await next_json(ws))["code"] == "forbidden"
    async with websockets.connect(server.url, additional_headers=auth(channels=[])) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": lines}))
        assert (await next_json(ws))["code"] == "forbidden"
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": "no-such-topic", "id": 5}))
        assert await next_json(ws) == {
            "type": "error", "code": "unknown_channel", "message": "no such channel",
            "channel": "no-such-topic", "id": 5,
        }  # fmt: skip


async def test_token_expiry_closes_the_connection(server) -> None:
    expires = int(time.time()) + 2
    async with websockets.connect(
        server.url, additional_headers=auth(ttl=None, extra_claims={"exp": expires})
    ) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1008
    assert ws.close_reason == "token expired"
    assert time.time() >= expires


async def test_refresh_extends_expiry_and_narrows_grants(server, producer) -> None:
    order_book, lines = sorted(server.env["WS_KAFKA_TOPICS"].split(","))
    first_expiry = int(time.time()) + 2
    async with websockets.connect(
        f"{server.url}?channels={order_book},{lines}",
        additional_headers=auth("carol", ttl=None, extra_claims={"exp": first_expiry}),
    ) as ws:
        await next_json(ws)
        await next_json(ws)
        await ws.send(json.dumps({"type": "refresh", "token": token("mallory"), "id": 1}))
        assert (await next_json(ws))["code"] == "unauthorized"
        await ws.send(json.dumps({"type": "refresh", "token": "garbage", "id": 2}))
        assert (await next_json(ws))["code"] == "unauthorized"
        await ws.send(json.dumps({"type": "refresh", "id": 3}))
        assert (await next_json(ws))["code"] == "bad_request"

        second_expiry = int(time.time()) + 4
        fresh = token("carol", ttl=None, channels=[lines], extra_claims={"exp": second_expiry})
        await ws.send(json.dumps({"type": "refresh", "token": fresh, "id": 4}))
        assert await next_json(ws) == {
            "type": "unsubscribed", "channel": order_book, "reason": "forbidden",
        }  # fmt: skip
        assert await next_json(ws) == {"type": "refreshed", "exp": second_expiry, "id": 4}

        await producer.send_and_wait(order_book, b'{"hidden":true}')
        await producer.send_and_wait(lines, b'{"shown":true}')
        (m,) = await messages(ws, 1)
        assert m["channel"] == lines
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code == 1008 and ws.close_reason == "token expired"
    # The first token's expiry passed while the connection stayed open.
    assert time.time() >= second_expiry > first_expiry
    assert fresh not in "".join(server.raw)


# -- the JWT attack list: every forged or malformed token gets its 401 reason ---


def forge(header: dict[str, object], payload: object, key: str = SECRET) -> str:
    """A token with any header, HMAC-SHA256-signed with ``key`` ("" leaves the signature empty).

    A ``bytes`` payload is used as it is (not JSON-encoded).
    """
    import hashlib
    import hmac

    body = (
        base64.urlsafe_b64encode(payload).decode().rstrip("=")
        if isinstance(payload, bytes)
        else _b64(payload)
    )  # type: ignore[arg-type]
    signing_input = f"{_b64(header)}.{body}"
    if not key:
        return signing_input + "."
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


HS = {"alg": "HS256", "typ": "JWT"}
SUB = {"sub": "mallory"}
SOON = int(time.time()) + 3600
ATTACKS = [
    ("alg none", forge({"alg": "none"}, SUB, key=""), "bad_algorithm"),
    ("alg None", forge({"alg": "None"}, SUB, key=""), "bad_algorithm"),
    ("alg NONE, signed", forge({"alg": "NONE"}, SUB), "bad_algorithm"),
    ("alg nOnE", forge({"alg": "nOnE"}, SUB, key=""), "bad_algorithm"),
    ("alg missing", forge({"typ": "JWT"}, SUB), "bad_algorithm"),
    ("alg hs256 (case)", forge({"alg": "hs256"}, SUB), "bad_algorithm"),
    ("RS256 header, HMAC signature", forge({"alg": "RS256"}, SUB), "bad_algorithm"),
    ("ES256 header, HMAC signature", forge({"alg": "ES256"}, SUB), "bad_algorithm"),
    ("alg as a list", forge({"alg": ["HS256"]}, SUB), "bad_algorithm"),
    ("empty signature", forge(HS, SUB, key=""), "bad_signature"),
    ("wrong key", forge(HS, SUB, key="another-secret-of-enough-length-000"), "bad_signature"),
    ("exp a numeric string", forge(HS, {**SUB, "exp": str(SOON)}), "bad_claim"),
    ("exp a boolean", forge(HS, {**SUB, "exp": True}), "bad_claim"),
    ("nbf a string", forge(HS, {**SUB, "nbf": "0"}), "bad_claim"),
    ("iat a list", forge(HS, {**SUB, "iat": [1]}), "bad_claim"),
    ("exp in the past", forge(HS, {**SUB, "exp": int(time.time()) - 60}), "expired"),
    ("nbf in the future", forge(HS, {**SUB, "nbf": SOON}), "not_yet_valid"),
    ("iat in the future", forge(HS, {**SUB, "iat": SOON}), "not_yet_valid"),
    ("sub missing", forge(HS, {"exp": SOON}), "missing_claim"),
    ("sub empty", forge(HS, {"sub": ""}), "missing_claim"),
    ("sub a number", forge(HS, {"sub": 7}), "bad_claim"),
    ("sub an object", forge(HS, {"sub": {"admin": True}}), "bad_claim"),
    ("channels a string", forge(HS, {**SUB, "channels": "lines"}), "bad_claim"),
    ("payload not JSON, signed", forge(HS, b"not-json"), "malformed"),
    ("payload a JSON list, signed", forge(HS, b'["sub"]'), "malformed"),
]


async def refusal(url: str, token: str) -> tuple[int, str]:
    try:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}):
            return 101, ""
    except InvalidStatus as exc:
        return exc.response.status_code, (exc.response.body or b"").decode().strip()


async def test_every_attack_on_the_token_gets_its_401_reason(server) -> None:
    answers = {name: await refusal(server.url, bad) for name, bad, _ in ATTACKS}
    expected = {name: (401, f"unauthorized: {reason}") for name, _, reason in ATTACKS}
    assert answers == expected
    assert await refusal(server.url, forge(HS, {**SUB, "exp": SOON})) == (101, "")


async def test_audience_variants_get_their_401_reason(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic], {"WS_AUTH_AUDIENCE": "wsrt"})
    cases = {
        "aud matches": ({**SUB, "aud": "wsrt"}, (101, "")),
        "aud list containing it": ({**SUB, "aud": ["other", "wsrt"]}, (101, "")),
        "aud missing": (SUB, (401, "unauthorized: missing_claim")),
        "aud another": ({**SUB, "aud": "other"}, (401, "unauthorized: bad_audience")),
        "aud list without it": ({**SUB, "aud": ["other"]}, (401, "unauthorized: bad_audience")),
        "aud of another case": ({**SUB, "aud": "WSRT"}, (401, "unauthorized: bad_audience")),
    }
    answers = {
        name: await refusal(server.url, forge(HS, claims)) for name, (claims, _) in cases.items()
    }
    assert answers == {name: answer for name, (_, answer) in cases.items()}
