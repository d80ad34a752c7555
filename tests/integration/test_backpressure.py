"""A client that stops reading is closed with 1008; the others get everything."""

from __future__ import annotations

import asyncio
import json

import websockets

from tests.integration.harness import StalledClient, auth, messages, next_json

GOOD_CLIENTS = 50
MESSAGES = 600
VALUE = b'{"pad":"' + b"x" * 8000 + b'","n":%d}'


async def test_slow_consumer_is_closed_and_others_receive_everything(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("order_book")
    # The default buffer: the good clients share one busy test process.
    server = servers([topic], {"WS_CLIENT_BUFFER": "256"})
    slow = await StalledClient(f"{server.url}?channels={topic}", auth("slow")).connect()
    good = [
        await websockets.connect(
            f"{server.url}?channels={topic}", additional_headers=auth(f"good-{i}"), max_size=None
        )
        for i in range(GOOD_CLIENTS)
    ]
    try:
        for ws in good:
            assert (await next_json(ws))["type"] == "subscribed"
        mark = server.mark()

        async def produce() -> None:
            for n in range(MESSAGES):
                await producer.send(topic, VALUE % n)
            await producer.flush()

        async def drain_slow_after_drop() -> tuple[int | None, str | None]:
            # As soon as the server gives up on it, the slow client reads what
            # it was sent, before the server's close timeout aborts it.
            dropped = await asyncio.to_thread(server.wait_for, "slow_consumer", start=mark)
            assert dropped["subject"] == "slow"
            return await slow.drain()

        _, (code, reason), *results = await asyncio.gather(
            produce(),
            drain_slow_after_drop(),
            *(messages(ws, MESSAGES, timeout=120) for ws in good),
        )
        for received in results:
            assert [m["data"]["n"] for m in received] == list(range(MESSAGES))
            offsets = [m["offset"] for m in received]
            assert offsets == list(range(offsets[0], offsets[0] + MESSAGES))

        assert (code, reason) == (1008, "slow consumer")
        frames = [json.loads(f) for f in slow.frames]
        assert frames[0]["type"] == "subscribed"
        numbers = [m["data"]["n"] for m in frames[1:]]
        assert numbers == list(range(len(numbers)))  # a gap-free prefix
        assert len(numbers) < MESSAGES
    finally:
        slow.close()
        for ws in good:
            await ws.close()
