"""Values that are not JSON, and Kafka headers, on a real broker (WS_TOPIC_FORMATS, WS_HEADERS).

A producer writes text to a ``string`` topic and arbitrary bytes to a
``bytes`` topic, with headers. Live and in a replay, each record arrives as
the envelope says: text as a JSON string, bytes as base64, the named headers
forwarded; a value that is not UTF-8 on the text topic is skipped and counted
as ``not_text``, and the records around it still arrive.
"""

from __future__ import annotations

import base64

import pytest
import websockets

from tests.integration.harness import auth, messages, next_json
from tests.integration.test_replay import subscribe
from wsrt.tools.client import scrape

pytestmark = pytest.mark.integration

TEXT = ["caf\u00e9 \u2615", "", "plain words, not JSON", '{"looks": "like json"}']
BLOBS = [bytes(range(256)), b"", b"\x00\xff" * 10]


async def test_text_and_bytes_topics_with_headers_live_and_replayed(
    make_topics, servers, producer
) -> None:
    audit, blobs = await make_topics("audit", "blobs")
    server = servers(
        [audit, blobs],
        {"WS_TOPIC_FORMATS": f"{audit}=string,{blobs}=bytes", "WS_HEADERS": "trace,bin"},
    )
    headers = [("trace", b"t-1"), ("bin", b"\xfe\xff"), ("ignored", b"x")]
    url = f"{server.url}?channels={audit},{blobs}"
    async with websockets.connect(url, additional_headers=auth(), max_size=None) as ws:
        replies = [await next_json(ws) for _ in range(2)]
        assert {(r["type"], r["channel"]) for r in replies} == {
            ("subscribed", audit), ("subscribed", blobs)
        }  # fmt: skip
        for text in TEXT[:2]:
            await producer.send_and_wait(audit, text.encode(), headers=headers)
        await producer.send_and_wait(audit, b"\xff not utf-8")  # skipped: not_text
        for text in TEXT[2:]:
            await producer.send_and_wait(audit, text.encode(), headers=headers)
        for blob in BLOBS:
            await producer.send_and_wait(blobs, blob, headers=headers)
        live = await messages(ws, len(TEXT) + len(BLOBS))
    texts = [m for m in live if m["channel"] == audit]
    assert [m["data"] for m in texts] == TEXT
    assert [m["offset"] for m in texts] == [0, 1, 3, 4]  # offset 2 was the skipped one
    raw = [m for m in live if m["channel"] == blobs]
    assert [base64.b64decode(m["data"]) for m in raw] == BLOBS
    assert {m["data_encoding"] for m in raw} == {"base64"}
    for m in live:
        assert m["headers"] == {"trace": "t-1"}, m
        assert m["headers_base64"] == {"bin": base64.b64encode(b"\xfe\xff").decode()}, m

    async with websockets.connect(server.url, additional_headers=auth(), max_size=None) as ws:
        reply = await subscribe(ws, audit, "replay", since={"0": 0})
        assert reply["positions"] == {"0": 0}, reply
        assert await messages(ws, len(TEXT)) == texts  # the same envelopes as live

    metrics = scrape(server.http)
    skipped = [
        v for (name, labels), v in metrics.items()
        if name == "wsrt_kafka_skipped_records_total" and dict(labels).get("topic") == audit
        and dict(labels).get("reason") == "not_text"
    ]  # fmt: skip
    assert skipped == [1.0]
