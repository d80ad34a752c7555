"""Bad input from clients gets the documented answer; other clients carry on."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.integration.harness import auth, messages, next_json


@pytest.fixture
async def setup(make_topics, servers):
    (topic,) = await make_topics("lines")
    server = servers(
        [topic],
        {"WS_MAX_FRAME_BYTES": "1024", "WS_CONTROL_RATE": "10", "WS_MAX_CLIENT_ERRORS": "5",
         "WS_MAX_SUBSCRIPTIONS": "2"},
    )  # fmt: skip
    return server, topic


async def closed_with(ws) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 30)
    return ws.close_code, ws.close_reason


async def test_bad_requests_get_errors_and_abuse_gets_closed(setup, producer) -> None:
    server, topic = setup
    async with (
        websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth("bystander")) as bystander,
        websockets.connect(server.url, additional_headers=auth("clumsy")) as ws,
    ):  # fmt: skip
        await next_json(bystander)
        cases = [
            ("{not json", {"code": "bad_request"}),
            ("[1,2]", {"code": "bad_request"}),
            ('{"type":"dance","id":"d1"}', {"code": "bad_request", "id": "d1"}),
            ('{"type":"subscribe","id":7}', {"code": "bad_request", "id": 7}),
            ('{"type":"subscribe","channel":"nope","id":8}', {"code": "unknown_channel", "id": 8}),
        ]
        for frame, expected in cases:
            await ws.send(frame)
            reply = await next_json(ws)
            assert reply["type"] == "error" and reply["message"]
            assert {k: reply.get(k) for k in expected} == expected, reply
        await producer.send_and_wait(topic, b'{"n":1}')
        assert (await messages(bystander, 1))[0]["data"] == {"n": 1}
        # The sixth error within the window crosses WS_MAX_CLIENT_ERRORS=5.
        await ws.send("garbage")
        assert (await next_json(ws))["code"] == "bad_request"
        assert await closed_with(ws) == (1008, "too many invalid messages")
        await producer.send_and_wait(topic, b'{"n":2}')
        assert (await messages(bystander, 1))[0]["data"] == {"n": 2}


async def test_subscription_limit_and_idempotence(setup) -> None:
    server, topic = setup
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        for n, channel in enumerate([topic, topic, f"{topic}:a"]):
            await ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": n}))
            assert await next_json(ws) == {"type": "subscribed", "channel": channel, "id": n}
        await ws.send(json.dumps({"type": "subscribe", "channel": f"{topic}:b", "id": 3}))
        reply = await next_json(ws)
        assert (reply["code"], reply["id"], reply["channel"]) == (
            "too_many_subscriptions",
            3,
            f"{topic}:b",
        )
        await ws.send(json.dumps({"type": "unsubscribe", "channel": f"{topic}:zzz", "id": 4}))
        assert (await next_json(ws))["type"] == "unsubscribed"
        await ws.send(json.dumps({"type": "ping", "id": 5.5}))
        assert await next_json(ws) == {"type": "pong", "id": 5.5}


async def test_oversized_frame_closes_1009(setup, producer) -> None:
    server, topic = setup
    async with (
        websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth()) as bystander,
        websockets.connect(server.url, additional_headers=auth()) as ws,
    ):  # fmt: skip
        await next_json(bystander)
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 2000}))
        assert (await closed_with(ws))[0] == 1009
        await producer.send_and_wait(topic, b'{"after":"oversized"}')
        assert (await messages(bystander, 1))[0]["data"] == {"after": "oversized"}


async def test_binary_frame_closes_1003(setup) -> None:
    server, _ = setup
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await ws.send(b'{"type":"ping"}')
        assert (await closed_with(ws))[0] == 1003


async def test_flood_is_rate_limited_then_closed(setup, producer) -> None:
    server, topic = setup
    async with (
        websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth()) as bystander,
        websockets.connect(server.url, additional_headers=auth("flooder")) as ws,
    ):  # fmt: skip
        await next_json(bystander)
        for n in range(200):
            try:
                await ws.send(json.dumps({"type": "ping", "id": n}))
            except ConnectionClosed:
                break
        replies = []
        with pytest.raises(ConnectionClosed):
            while True:
                replies.append(await asyncio.wait_for(next_json(ws), 30))
        assert ws.close_code == 1008 and ws.close_reason == "rate limit exceeded"
        kinds = [r.get("code", r["type"]) for r in replies]
        assert kinds[0] == "pong"
        assert "rate_limited" in kinds
        await producer.send_and_wait(topic, b'{"after":"flood"}')
        assert (await messages(bystander, 1))[0]["data"] == {"after": "flood"}


# -- arbitrary malformed control messages --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
control_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["subscribe", "unsubscribe", "ping", "refresh", "", "SUBSCRIBE"])
        | st.text(max_size=10)
    },
    optional={"channel": json_values, "id": json_values, "token": json_values},
)
frames = st.text(max_size=200) | json_values.map(json.dumps) | control_like.map(json.dumps)


#: What the server may answer a control frame with (design section 5; docs/protocol.md).
REPLIES = {"error", "subscribed", "unsubscribed", "pong", "refreshed"}
ERROR_CODES = {
    "bad_request", "unknown_channel", "unauthorized", "forbidden", "too_many_subscriptions",
    "rate_limited",
}  # fmt: skip
#: Close codes a frame may earn: binary (1003), abuse (1008), over WS_MAX_FRAME_BYTES (1009).
CLOSES = {1003, 1008, 1009}


def test_arbitrary_frames_get_a_documented_answer_and_a_canary_gets_everything(
    setup, bootstrap
) -> None:
    """Fuzz the control protocol: text, JSON, control-like objects and raw bytes.

    Every frame is answered with a documented reply or ends its connection
    with a documented close; meanwhile one message is produced per example,
    and a canary subscribed on the same server must receive all, in order.
    """
    from aiokafka import AIOKafkaProducer

    server, topic = setup
    loop = asyncio.new_event_loop()
    canary = loop.run_until_complete(
        websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth("canary"))
    )

    async def start_producer() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        return producer

    producer = loop.run_until_complete(start_producer())
    produced: list[int] = []

    async def answer(ws) -> dict | None:
        """The next frame that is not a message; None when the server closed the connection."""
        while True:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            except ConnectionClosed:
                assert ws.close_code in CLOSES, (ws.close_code, ws.close_reason)
                return None
            if frame["type"] != "message":
                return frame

    async def one(batch: list[str | bytes]) -> None:
        n = len(produced)
        await producer.send_and_wait(topic, b'{"n":%d}' % n)
        produced.append(n)
        async with websockets.connect(server.url, additional_headers=auth("fuzz")) as ws:
            for frame in batch:
                await ws.send(frame)
                reply = await answer(ws)
                if reply is None:
                    return
                assert reply["type"] in REPLIES, reply
                if reply["type"] == "error":
                    assert reply["code"] in ERROR_CODES and isinstance(reply["message"], str)
            await ws.send('{"type":"ping","id":"alive"}')
            reply = await answer(ws)
            assert reply is None or reply == {"type": "pong", "id": "alive"}

    @settings(max_examples=60, deadline=None)
    @given(batch=st.lists(frames | st.binary(max_size=200), min_size=1, max_size=5))
    def fuzz(batch: list[str | bytes]) -> None:
        loop.run_until_complete(one(batch))

    try:
        fuzz()
        received = loop.run_until_complete(messages(canary, len(produced), timeout=60))
        assert [m["data"]["n"] for m in received] == produced
    finally:
        loop.run_until_complete(canary.close())
        loop.run_until_complete(producer.stop())
        loop.close()
