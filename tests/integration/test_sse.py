"""Server-Sent Events on Apache Kafka (docs/protocol.md, "Server-Sent Events"): the same
streams as /ws, accounted by (partition, offset) at a real client; Last-Event-ID resumes
across a server restart with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.integration.harness import auth, next_json, token
from tests.integration.test_policies import (
    BUFFER,
    KEYS,
    MESSAGES,
    PARTITIONS,
    VALUE,
    Paced,
    coverage,
    newest_received,
)
from wsrt.sse import decode_positions
from wsrt.tools.events import Event, SseClient


async def produce(
    producer: Any, topic: str, numbers: range, partitions: int = 3
) -> list[tuple[int, int]]:
    where = []
    for n in numbers:
        md = await producer.send_and_wait(
            topic, json.dumps({"n": n}).encode(), key=f"k{n % 7}".encode(), partition=n % partitions
        )
        where.append((md.partition, md.offset))
    return where


def positions(events: list[Event]) -> list[tuple[int, int]]:
    return [(e.json()["partition"], e.json()["offset"]) for e in events]


async def test_refusals_are_http_answers(make_topics, servers) -> None:
    (topic,) = await make_topics("sse-refused", partitions=3)
    app = "https://app.example.com"
    server = servers([topic], {"WS_ALLOWED_ORIGINS": app})
    plain = await SseClient.open(server.http, channels=topic)
    assert (plain.status, plain.body) == (401, b"unauthorized: missing\n")
    good = token()
    # The Origin rules of /ws: a page of another origin is refused, the app's may read.
    evil = await SseClient.open(
        server.http, {"Origin": "https://evil.example"}, channels=topic, token=good
    )
    assert (evil.status, evil.body) == (403, b"origin not allowed\n")
    page = await SseClient.open(server.http, {"Origin": app}, channels=topic, token=good)
    assert page.status == 200 and page.headers["access-control-allow-origin"] == app
    await page.close()
    cases = {
        "nonsense": (400, "Last-Event-ID is not a position token of this server (an event id it sent)"),
        f"1;{topic}=0:1,7:3": (400, f"Last-Event-ID names partition 7 of {topic}, which has partitions 0 to 2"),
        f"1;{topic}=0:x": (400, f"Last-Event-ID has a bad position '0:x' for '{topic}'"),
    }  # fmt: skip
    for last_id, (status, said) in cases.items():
        client = await SseClient.open(
            server.http, {"Last-Event-ID": last_id}, channels=topic, token=good
        )
        assert (client.status, client.body.decode().strip()) == (status, said), last_id
    none = await SseClient.open(server.http, token=good)
    assert none.status == 400 and b"name the channels" in none.body


async def test_a_stream_delivers_every_record_with_positions_as_ids(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("sse-stream", partitions=3)
    server = servers([topic])
    client = await SseClient.open(server.http, channels=topic, token=token())
    assert client.status == 200
    assert client.headers["content-type"].startswith("text/event-stream")
    (subscribed,) = await client.until("subscribed")
    assert subscribed.json()["positions"] == {"0": 0, "1": 0, "2": 0}
    assert decode_positions(subscribed.last_id or "") == {topic: {0: 0, 1: 0, 2: 0}}
    assert client.retry is not None and 1000 <= client.retry <= 5000
    where = await produce(producer, topic, range(60))
    got = await client.messages(60)
    assert sorted(positions(got)) == sorted(where)
    after: dict[int, int] = {0: 0, 1: 0, 2: 0}
    for event in got:
        p, o = event.json()["partition"], event.json()["offset"]
        assert o == after[p]  # in offset order per partition, none missing
        after[p] = o + 1
        assert event.has_id and decode_positions(event.last_id or "") == {topic: dict(after)}
    await client.close()


async def test_last_event_id_resumes_across_a_restart_with_no_gap_and_no_duplicate(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("sse-resume", partitions=3)
    first = servers([topic])
    client = await SseClient.open(first.http, channels=topic, token=token())
    await client.until("subscribed")
    where = await produce(producer, topic, range(40))
    got = await client.messages(17)
    last = got[-1].last_id
    await client.close()
    first.stop()
    where += await produce(producer, topic, range(40, 70))
    second = servers([topic])
    again = await SseClient.open(
        second.http, {"Last-Event-ID": last or ""}, channels=topic, token=token()
    )
    assert again.status == 200
    (subscribed,) = await again.until("subscribed")
    assert decode_positions(last or "")[topic] == {
        int(p): o for p, o in subscribed.json()["positions"].items()
    }
    rest = await again.messages(70 - 17)
    assert sorted(positions(got) + positions(rest)) == sorted(where)  # no gap, no duplicate
    await again.close()


@pytest.mark.parametrize("policy", ["disconnect", "drop", "conflate"])
async def test_a_slow_reader_under_each_policy(policy: str, make_topics, servers, producer) -> None:
    """An SSE client that stops reading while a producer writes, beside a WebSocket client
    that keeps up: the topic's policy applies to the stream as to a socket."""
    (topic,) = await make_topics("sse-slow", partitions=PARTITIONS)
    server = servers([topic], {
        "WS_TOPIC_POLICIES": f"{topic}={policy}", "WS_CLIENT_BUFFER": str(BUFFER),
        "WS_SEND_BUFFER_BYTES": "65536",
    })  # fmt: skip
    slow = await SseClient.open(server.http, small=True, channels=topic, token=token("slow"))
    fast = await websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth("fast"), max_size=None
    )
    paced = Paced(producer, topic, fast)
    produced = paced.produced
    events: list[Event] = []
    try:
        assert (await next_json(fast))["type"] == "subscribed"

        def frames() -> list[dict[str, Any]]:
            return [e.json() for e in events if e.kind in ("message", "gap", "conflated")]

        def done() -> bool:
            if policy == "drop":
                return produced.covered_by(coverage(frames()))
            return produced.done and newest_received(frames()) == produced.newest

        async def read_slow() -> None:
            await paced.stalled_enough.wait()  # it read nothing until now
            slow.grow()
            async with asyncio.timeout(120):
                while not (events and events[-1].kind == "close") and not (
                    policy != "disconnect" and done()
                ):
                    events.append(await slow.next())

        await asyncio.gather(paced.produce(), paced.read_fast(), read_slow())
    finally:
        await slow.close()
        await fast.close()
    got = frames()
    if policy == "disconnect":
        assert events[-1].json() == {"type": "close", "code": 1008, "reason": "slow consumer"}
        assert {f["type"] for f in got} == {"message"}
        for p, offsets in coverage(got).items():
            assert offsets == produced.offsets[p][: len(offsets)]  # a prefix, no hole
        assert sum(len(o) for o in coverage(got).values()) < MESSAGES
        return
    kinds = {f["type"] for f in got}
    assert ("gap" if policy == "drop" else "conflated") in kinds, kinds
    if policy == "drop":
        assert coverage(got) == produced.offsets  # received or told, each exactly once
    messages = [f for f in got if f["type"] == "message"]
    for p in range(PARTITIONS):  # Kafka order, never twice
        offsets = [m["offset"] for m in messages if m["partition"] == p]
        assert offsets == sorted(set(offsets))
    # The stream's position stands after the newest record it delivered, per partition.
    last = decode_positions(events[-1].last_id or "")[topic]
    assert last == {p: max(m["offset"] for m in messages if m["partition"] == p) + 1
                    for p in range(PARTITIONS)}  # fmt: skip


async def test_heartbeats_keep_a_stream_and_a_stalled_one_is_closed(
    make_topics, servers, producer
) -> None:
    """Comments every WS_SSE_HEARTBEAT_SECONDS; a stream whose socket takes nothing for a
    whole interval (a frozen tab on a conflate topic, which the hub never closes) is ended
    ``1011 stream stalled``, as an unanswered ping ends a WebSocket."""
    (topic,) = await make_topics("sse-heartbeat")
    server = servers([topic], {
        "WS_SSE_HEARTBEAT_SECONDS": "1", "WS_PING_INTERVAL_SECONDS": "1",
        "WS_CLOSE_TIMEOUT_SECONDS": "1",
        "WS_TOPIC_POLICIES": f"{topic}=conflate", "WS_SEND_BUFFER_BYTES": "65536",
    })  # fmt: skip
    alive = await SseClient.open(server.http, channels=topic, token=token("alive"))
    frozen = await SseClient.open(server.http, small=True, channels=topic, token=token("frozen"))
    await alive.until("subscribed")
    await frozen.until("subscribed")

    async def produce_all() -> None:
        for n in range(150):
            await producer.send_and_wait(topic, VALUE % n, key=f"k{n % KEYS}".encode())

    await asyncio.gather(produce_all(), alive.messages(150))  # alive reads all the while
    closed = await asyncio.to_thread(
        server.wait_for, "connection_closed", lambda e: e.get("subject") == "frozen"
    )
    assert (closed["code"], closed["reason"]) == (1011, "stream stalled")
    # It read nothing through the close timeout either: the server aborted the socket.
    frozen.grow()
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError, EOFError)):
        while True:
            assert (await frozen.next()).kind in ("message", "conflated", "close")
    await alive.heartbeat()  # the one that reads is kept, a comment line each interval
    await alive.heartbeat()
    await alive.close()
    await frozen.close()


async def test_a_stream_ends_with_a_close_event_when_its_token_expires(
    make_topics, servers
) -> None:
    (topic,) = await make_topics("sse-expiry")
    server = servers([topic])
    client = await SseClient.open(server.http, channels=topic, token=token("brief", ttl=2))
    seen = await client.until("close")
    assert seen[-1].json() == {"type": "close", "code": 1008, "reason": "token expired"}
    with pytest.raises(EOFError):
        await client.next()  # the body ended there
    closed = await asyncio.to_thread(
        server.wait_for, "connection_closed", lambda e: e.get("subject") == "brief"
    )
    assert (closed["code"], closed["reason"]) == (1008, "token expired")
    await client.close()
