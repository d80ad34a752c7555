"""Transactions on a real broker: what an aborted transaction wrote never reaches a client.

A producer writes one transaction and aborts it, then writes another and
commits it. Live, a replay across the aborted records and both control
markers, and a snapshot of the topic as a state topic (kept live, and loaded
from the log by a server that starts afterwards): each gives exactly the
committed records, in order.
"""

from __future__ import annotations

import json
import uuid

import pytest
import websockets
from aiokafka import AIOKafkaProducer

from tests.integration.harness import auth, next_json
from tests.integration.test_replay import needs_apache, receive_until, subscribe

pytestmark = pytest.mark.integration


async def test_an_aborted_transaction_never_reaches_a_client(
    broker, bootstrap, make_topics, servers
) -> None:
    needs_apache(broker, "transactions")
    (topic,) = await make_topics("lines", partitions=1)
    server = servers([topic], {"WS_STATE_TOPICS": topic})
    tx = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"wsrt-test-{uuid.uuid4().hex[:8]}"
    )
    await tx.start()
    try:
        async with websockets.connect(server.url, additional_headers=auth()) as live:
            assert (await subscribe(live, topic, "live"))["type"] == "subscribed"
            await tx.begin_transaction()
            for n in range(3):
                await tx.send(topic, b'{"aborted":%d}' % n, key=b"a%d" % n)
            await tx.abort_transaction()
            async with tx.transaction():
                sent = [await tx.send(topic, b'{"n":%d}' % n, key=b"k%d" % n) for n in range(3)]
            committed = [(await s).offset for s in sent]
            got = await receive_until(live, {0: committed[-1]})
        assert got == {0: committed}  # the aborted three never came
    finally:
        await tx.stop()
    assert committed[0] > 3  # after three aborted records and the abort marker

    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, "replay", since={"0": 0})
        assert reply["positions"] == {"0": 0} and reply["complete"], reply
        assert await receive_until(ws, {0: committed[-1]}) == {0: committed}

    # A server that starts now loads the state from the log, across both markers:
    # it must get ready (the loader reaches the end) with the committed keys only.
    for serving in (server, servers([topic], {"WS_STATE_TOPICS": topic})):
        async with websockets.connect(serving.url, additional_headers=auth()) as ws:
            await ws.send(json.dumps({"type": "subscribe", "channel": topic, "snapshot": True}))
            assert (await next_json(ws))["type"] == "subscribed"
            frames = [await next_json(ws) for _ in range(4)]
        assert [(f["key"], f["offset"]) for f in frames[:3]] == [
            (f"k{n}", offset) for n, offset in enumerate(committed)
        ]
        assert frames[3]["type"] == "snapshot_end" and frames[3]["keys"] == 3, frames[3]
