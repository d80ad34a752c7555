"""Kafka → hub → WebSocket delivery on a real broker and a real ``wsrt serve``."""

from __future__ import annotations

import base64
import json
import urllib.request

import websockets

from tests.integration.harness import auth, messages, next_json
from wsrt.tools.client import scrape


async def test_every_topic_reaches_its_subscribers_in_partition_order(
    make_topics, servers, producer
) -> None:
    topics = await make_topics("lines", "order_book", "analytics", partitions=3)
    server = servers(topics)
    lines, order_book, analytics = topics
    async with (
        websockets.connect(
            f"{server.url}?channels={','.join(topics)}", additional_headers=auth()
        ) as everything,
        websockets.connect(server.url, additional_headers=auth()) as only_lines,
    ):
        acks = [await next_json(everything) for _ in topics]
        assert [(a["type"], a["channel"]) for a in acks] == [("subscribed", t) for t in topics]
        await only_lines.send(json.dumps({"type": "subscribe", "channel": lines, "id": 1}))
        assert await next_json(only_lines) == {"type": "subscribed", "channel": lines, "id": 1}

        sent = {}
        keys = ["BTC-USD", "ETH-USD", None, "SOL-USD"]
        for i in range(60):
            topic = topics[i % 3]
            key = keys[i % 4]
            value = json.dumps({"topic": topic, "seq": i, "nested": {"x": [1, 2.5, None]}})
            md = await producer.send_and_wait(
                topic, value.encode(), key=key.encode() if key else None
            )
            sent[(topic, md.partition, md.offset)] = (key, md.timestamp, value)

        got = await messages(everything, 60)
        got_lines = await messages(only_lines, 20)

    for envelope in got:
        key, timestamp, value = sent[
            (envelope["channel"], envelope["partition"], envelope["offset"])
        ]
        assert envelope["type"] == "message"
        assert envelope["key"] == key
        assert envelope["timestamp"] == timestamp
        assert envelope["data"] == json.loads(value)
    assert len({(e["channel"], e["partition"], e["offset"]) for e in got}) == 60
    for topic in topics:
        for partition in range(3):
            offsets = [
                e["offset"] for e in got if e["channel"] == topic and e["partition"] == partition
            ]
            assert offsets == sorted(offsets)
    assert {e["channel"] for e in got_lines} == {lines}
    assert sorted(e["data"]["seq"] for e in got_lines) == list(range(0, 60, 3))
    assert {order_book, analytics}.isdisjoint(e["channel"] for e in got_lines)


async def test_key_channel_filters_exactly_and_delivers_once(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("order_book")
    server = servers([topic])
    async with (
        websockets.connect(
            f"{server.url}?channels={topic}:BTC", additional_headers=auth()
        ) as btc_only,
        websockets.connect(
            f"{server.url}?channels={topic},{topic}:BTC", additional_headers=auth()
        ) as both,
    ):
        await next_json(btc_only)
        await next_json(both)
        await next_json(both)
        for n, key in enumerate([b"BTC", b"ETH", b"BTC-USD", b"btc", b"BTC", None]):
            await producer.send_and_wait(topic, b'{"n":%d}' % n, key=key)
        filtered = await messages(btc_only, 2)
        everything = await messages(both, 6)
        # One more BTC message: had the filter let anything else through, it
        # would arrive before this one (single partition, Kafka order).
        await producer.send_and_wait(topic, b'{"n":6}', key=b"BTC")
        (last,) = await messages(btc_only, 1)
    assert [m["data"]["n"] for m in filtered] == [0, 4]
    assert last["data"]["n"] == 6
    assert [m["data"]["n"] for m in everything] == [0, 1, 2, 3, 4, 5]
    assert {m["key"] for m in filtered} == {"BTC"}


async def test_unsubscribe_stops_delivery(make_topics, servers, producer) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic])
    async with websockets.connect(
        f"{server.url}?channels={topic}:a,{topic}:b", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        await next_json(ws)
        await ws.send(json.dumps({"type": "unsubscribe", "channel": f"{topic}:a", "id": "u"}))
        assert await next_json(ws) == {"type": "unsubscribed", "channel": f"{topic}:a", "id": "u"}
        await producer.send_and_wait(topic, b'{"k":"a"}', key=b"a")
        await producer.send_and_wait(topic, b'{"k":"b"}', key=b"b")
        (only,) = await messages(ws, 1)
    assert only["data"] == {"k": "b"}


async def test_poison_values_are_skipped_and_the_stream_goes_on(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("analytics")
    server = servers([topic])
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        mark = server.mark()
        await producer.send_and_wait(topic, b'{"good":1}')
        await producer.send_and_wait(topic, b"{not json")
        await producer.send_and_wait(topic, b"")
        await producer.send_and_wait(topic, None, key=b"tombstone")
        await producer.send_and_wait(topic, b"\xff\xfe")
        await producer.send_and_wait(topic, b'  "a string"  ')
        await producer.send_and_wait(topic, b'{"good":2}')
        got = await messages(ws, 3)
    assert [m["data"] for m in got] == [{"good": 1}, "a string", {"good": 2}]
    assert [m["offset"] for m in got] == [
        got[0]["offset"],
        got[0]["offset"] + 5,
        got[0]["offset"] + 6,
    ]
    first = got[0]["offset"]
    # One log line per reason (rate-limited), with where the record is.
    for offset, reason in [(1, "not_json"), (2, "empty"), (3, "tombstone")]:
        skipped = server.wait_for(
            "record_skipped", lambda e, o=first + offset: e["offset"] == o, start=mark
        )
        assert (skipped["topic"], skipped["partition"], skipped["reason"]) == (topic, 0, reason)
    samples = scrape(server.http)
    for reason, count in [("not_json", 2), ("empty", 1), ("tombstone", 1), ("undecodable", 0)]:
        key = ("wsrt_kafka_skipped_records_total", (("reason", reason), ("topic", topic)))
        assert samples[key] == count, reason
    with urllib.request.urlopen(f"{server.http}/healthz") as response:
        assert json.load(response)["status"] == "ok"


async def test_key_that_is_not_utf8_is_sent_base64(make_topics, servers, producer) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic])
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        await producer.send_and_wait(topic, b"[1,2,3]", key=b"\xff\x00k")
        (m,) = await messages(ws, 1)
    assert m["key_encoding"] == "base64"
    assert base64.b64decode(m["key"]) == b"\xff\x00k"
    assert m["data"] == [1, 2, 3]
