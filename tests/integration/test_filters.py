"""Server-side filters on Apache Kafka, accounted by (partition, offset) at real clients.

Records of three partitions carry keys, headers, timestamps and values that
the filters read. What each client receives is compared with what the plain
reference evaluator of the unit tests says of the records produced: the same
(partition, offset) pairs, in order per partition, nothing more. Live,
resumed with ``since``, as a snapshot, with ``keys``; and under a token's
``filters`` claim that the client tries to widen every way it can.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from tests.integration.harness import auth, messages, next_json
from tests.integration.test_replay import subscribe
from tests.integration.test_state import snapshot
from tests.unit.test_filters import reference

pytestmark = pytest.mark.integration

#: A day ago (Kafka refuses timestamps far in the future), whole seconds.
BASE_MS = (int(time.time()) - 86_400) * 1000
MARKETS = ("moneyline", "spread", "total")
REGIONS = ("eu", "uk", "us")

FILTERS: list[dict[str, Any]] = [
    {"field": "data.market", "eq": "moneyline"},
    {"field": "data.market", "ne": "moneyline"},
    {"field": "key", "in": ["EVT-1", "EVT-3"]},
    {"field": "headers.region", "nin": ["eu", "uk"]},
    {"field": "data.odds", "lt": 2},
    {"field": "data.odds", "lte": 2},
    {"field": "data.odds", "gt": 3.5},
    {"field": "timestamp", "gte": BASE_MS + 40},
    {"field": "data.note", "exists": True},
    {"field": "data.market", "prefix": "mo"},
    {"all": [{"field": "partition", "eq": 1}, {"field": "data.live", "eq": True}]},
    {"any": [{"field": "data.legs.0.n", "eq": 3}, {"field": "key", "eq": "EVT-0"}]},
    {"not": {"field": "headers.region", "eq": "eu"}},
]


def record(n: int) -> dict[str, Any]:
    """The n-th record as the reference evaluator sees it (and as it is produced)."""
    data: dict[str, Any] = {
        "market": MARKETS[n % 3], "odds": 1 + (n % 7) * 0.5, "n": n, "live": n % 2 == 0,
        "legs": [{"n": n % 4}],
    }  # fmt: skip
    if n % 5 == 0:
        data["note"] = "x"
    return {
        "key": f"EVT-{n % 5}", "partition": n % 3, "timestamp": BASE_MS + n,
        "headers": {"region": REGIONS[(n // 3) % 3], "account": f"acct-{n % 4}"},
        "data": data,
    }  # fmt: skip


async def produce(
    producer: Any, topic: str, numbers: range, by_key: bool = False
) -> dict[int, tuple[int, int]]:
    """Write ``record(n)`` for each n (``by_key``: each key to one partition, as a state
    topic's producer does); n → its (partition, offset)."""
    where = {}
    for n in numbers:
        r = record(n)
        md = await producer.send_and_wait(
            topic, json.dumps(r["data"]).encode(), key=r["key"].encode(),
            partition=(n % 5) % 3 if by_key else r["partition"], timestamp_ms=r["timestamp"],
            headers=[(k, v.encode()) for k, v in r["headers"].items()],
        )  # fmt: skip
        where[n] = (md.partition, md.offset)
    return where


def expected(
    expression: dict[str, Any], where: dict[int, tuple[int, int]], numbers: range
) -> list[tuple[int, int]]:
    return sorted(where[n] for n in numbers if reference(expression, record(n)))


async def until_pong(ws: Any) -> list[tuple[int, int]]:
    """Every message received before the answer to a ping (all that was queued before it)."""
    await ws.send(json.dumps({"type": "ping", "id": "end"}))
    got = []
    while True:
        frame = await next_json(ws)
        if frame["type"] == "pong":
            return sorted(got)
        assert frame["type"] == "message", frame
        got.append((frame["partition"], frame["offset"]))


async def live_at(server: Any, topic: str, where: dict[int, tuple[int, int]]) -> None:
    """Until the server's live stream stands after every record of ``where`` (a snapshot's
    ``positions`` say where it stands): its state holds them all. A broker may report a
    record's end offset a moment after acknowledging it."""
    ends: dict[str, int] = {}
    for partition, offset in where.values():
        ends[str(partition)] = max(ends.get(str(partition), 0), offset + 1)
    async with asyncio.timeout(30):
        while True:
            async with websockets.connect(server.url, additional_headers=auth()) as ws:
                reply, _, _ = await snapshot(ws, topic)
            if all(reply["positions"].get(p, 0) >= end for p, end in ends.items()):
                return


def in_order(frames: list[dict[str, Any]]) -> bool:
    by_partition: dict[int, list[int]] = {}
    for f in frames:
        by_partition.setdefault(f["partition"], []).append(f["offset"])
    return all(offsets == sorted(offsets) for offsets in by_partition.values())


async def test_each_operator_and_combinator_on_real_records(make_topics, servers, producer) -> None:
    """One client per filter (and a second client with the first filter, sharing its
    evaluation), a ``keys`` client and an unfiltered one; each gets exactly its records."""
    (topic,) = await make_topics("filtered", partitions=3)
    server = servers([topic])
    wanted = [*FILTERS, FILTERS[0]]
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as everything:
        assert (await next_json(everything))["type"] == "subscribed"
        clients = [
            await websockets.connect(server.url, additional_headers=auth())
            for _ in range(len(wanted) + 1)
        ]
        try:
            for ws, expression in zip(clients, wanted, strict=False):
                reply = await subscribe(ws, topic, filter=expression)
                assert reply == {"type": "subscribed", "channel": topic, "id": "r"}, reply
            keyed = clients[-1]
            assert (await subscribe(keyed, topic, keys=["EVT-2", "EVT-4"]))["type"] == "subscribed"
            numbers = range(60)
            where = await produce(producer, topic, numbers)
            assert len(await messages(everything, len(numbers))) == len(numbers)
            for ws, expression in zip(clients, wanted, strict=False):
                assert await until_pong(ws) == expected(expression, where, numbers), expression
            keys_filter = {"field": "key", "in": ["EVT-2", "EVT-4"]}
            assert await until_pong(keyed) == expected(keys_filter, where, numbers)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
    assert all(expected(f, where, numbers) for f in FILTERS)  # no filter passes nothing
    assert all(len(expected(f, where, numbers)) < len(numbers) for f in FILTERS)


async def test_a_filtered_client_resumes_with_since_and_misses_nothing(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("filtered-resume", partitions=3)
    server = servers([topic])
    expression = {
        "any": [{"field": "data.market", "eq": "spread"}, {"field": "key", "eq": "EVT-0"}]
    }
    since: dict[str, int] = {}
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, filter=expression, since={})
        assert reply["type"] == "subscribed", reply
        since.update(reply["positions"])
        first = await produce(producer, topic, range(30))
        got = await messages(ws, len(expected(expression, first, range(30))))
        for m in got:
            since[str(m["partition"])] = m["offset"] + 1
    assert sorted((m["partition"], m["offset"]) for m in got) == expected(
        expression, first, range(30)
    )
    later = await produce(producer, topic, range(30, 70))  # while the client is away
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, filter=expression, since=since)
        assert reply["type"] == "subscribed" and reply["complete"] is True, reply
        more = await produce(producer, topic, range(70, 80))  # the live stream after it
        count = len(expected(expression, {**later, **more}, range(30, 80)))
        resumed = await messages(ws, count)
        assert await until_pong(ws) == []  # nothing else
    assert sorted((m["partition"], m["offset"]) for m in resumed) == expected(
        expression, {**later, **more}, range(30, 80)
    )
    assert in_order(resumed)


async def test_a_snapshot_under_a_filter_holds_the_newest_passing_value_per_key(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("filtered-state", partitions=3)
    server = servers([topic], {"WS_STATE_TOPICS": topic})
    where = await produce(producer, topic, range(40), by_key=True)
    newest = {record(n)["key"]: n for n in range(40)}  # key → its newest record
    expression = {"field": "data.odds", "gte": 2.5}
    await live_at(server, topic, where)
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        _, frames, end = await snapshot(ws, topic, filter=expression)
    passing = sorted(where[n] for n in newest.values() if reference(expression, record(n)))
    assert sorted((f["partition"], f["offset"]) for f in frames) == passing
    assert end["keys"] == len(passing) and 0 < len(passing) < len(newest)


async def test_a_claim_filter_cannot_be_widened(make_topics, servers, producer) -> None:
    """The token says acct-1 only: plain, by key, by keys, with a filter of the client's
    own, replayed and as a snapshot, the client gets acct-1's records and no other."""
    (topic,) = await make_topics("filtered-claim", partitions=3)
    server = servers([topic], {"WS_STATE_TOPICS": topic})
    mine = {"field": "headers.account", "eq": "acct-1"}
    headers = auth("acct-1", extra_claims={"filters": {topic: mine}})
    where = await produce(producer, topic, range(40), by_key=True)
    own = expected(mine, where, range(40))
    key_owned = f"{topic}:EVT-1"  # EVT-1 records belong to several accounts
    attempts: list[tuple[str, dict[str, Any], list[tuple[int, int]]]] = [
        (topic, {"since": {"0": 0, "1": 0, "2": 0}}, own),
        (topic, {"since": {"0": 0, "1": 0, "2": 0},
                 "filter": {"any": [mine, {"field": "headers.account", "exists": True}]}}, own),
        (topic, {"since": {"0": 0, "1": 0, "2": 0}, "filter": {"not": mine}}, []),
        (topic, {"since": {"0": 0, "1": 0, "2": 0}, "keys": ["EVT-1", "EVT-2"]},
         expected({"all": [mine, {"field": "key", "in": ["EVT-1", "EVT-2"]}]}, where, range(40))),
        (key_owned, {"since": {"0": 0, "1": 0, "2": 0}},
         expected({"all": [mine, {"field": "key", "eq": "EVT-1"}]}, where, range(40))),
    ]  # fmt: skip
    for channel, fields, want in attempts:
        async with websockets.connect(server.url, additional_headers=headers) as ws:
            reply = await subscribe(ws, channel, **fields)
            assert reply["type"] == "subscribed", reply
            got = await messages(ws, len(want)) if want else []
            assert await until_pong(ws) == []
        assert sorted((m["partition"], m["offset"]) for m in got) == want, (channel, fields)

    await live_at(server, topic, where)
    async with websockets.connect(server.url, additional_headers=headers) as ws:
        _, frames, _ = await snapshot(ws, topic)
        live_reply = await subscribe(ws, f"{topic}:EVT-2")  # overlaps: refused, not widened
        assert live_reply["type"] == "error" and live_reply["code"] == "bad_request"
        assert (await subscribe(ws, "other-topic", request_id="x"))["type"] == "error"
    newest = {record(n)["key"]: n for n in range(40)}
    assert sorted((f["partition"], f["offset"]) for f in frames) == sorted(
        where[n] for n in newest.values() if reference(mine, record(n))
    )

    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=headers
    ) as ws:
        assert (await next_json(ws))["type"] == "subscribed"
        live = await produce(producer, topic, range(40, 60), by_key=True)
        want = expected(mine, live, range(40, 60))
        got = await messages(ws, len(want))
        assert await until_pong(ws) == []
    assert sorted((m["partition"], m["offset"]) for m in got) == want


async def test_a_bad_filter_is_a_bad_request_naming_the_part(make_topics, servers) -> None:
    (topic,) = await make_topics("filtered-bad")
    server = servers([topic], {"WS_FILTER_MAX_BYTES": "200"})
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        for fields, said in (
            ({"filter": {"all": [{"field": "data.a", "eq": 1}, {"field": "x", "eq": 1}]}},
             "filter.all[1].field 'x' is not key"),
            ({"filter": {"field": "data.a", "eq": "x" * 300}}, "filter is 3"),
            ({"keys": []}, "'keys' must be a non-empty list"),
        ):  # fmt: skip
            reply = await subscribe(ws, topic, **fields)
            assert reply["type"] == "error" and reply["code"] == "bad_request", reply
            assert reply["message"].startswith(said) and reply["channel"] == topic, reply
        reply = await subscribe(ws, f"{topic}:k", keys=["a"])
        assert reply["message"] == "'keys' goes with a topic channel, not topic:key", reply
        assert (await subscribe(ws, topic, filter={"field": "key", "eq": "k"}))["type"] == (
            "subscribed"
        )
        reply = await subscribe(ws, topic, filter={"field": "key", "eq": "other"})
        assert reply["message"] == (
            "already subscribed: unsubscribe first to change the filter or max_rate"
        )


async def test_max_rate_delivers_the_newest_value_per_key(make_topics, servers, producer) -> None:
    """A burst of 20 values of two keys to a max_rate 1 subscription: the first of each key
    at once, then, a second later, a conflated notice and the newest of each; an unlimited
    client beside it gets all 40."""
    (topic,) = await make_topics("capped")
    server = servers([topic])
    async with (
        websockets.connect(server.url, additional_headers=auth()) as capped,
        websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth()) as plain,
    ):
        assert (await next_json(plain))["type"] == "subscribed"
        assert (await subscribe(capped, topic, max_rate=1))["type"] == "subscribed"
        sent = [
            await producer.send(topic, b'{"n":%d}' % n, key="AB"[n % 2].encode()) for n in range(40)
        ]  # one burst: the producer batches them
        offsets = [md.offset for md in await asyncio.gather(*sent)]
        newest = {"A": offsets[38], "B": offsets[39]}
        assert len(await messages(plain, 40)) == 40
        got: list[tuple[float, dict[str, Any]]] = []
        async with asyncio.timeout(30):
            while {m.get("key"): m["offset"] for _, m in got if m["type"] == "message"} != newest:
                got.append((time.monotonic(), await next_json(capped)))
        assert await until_pong(capped) == []
    frames = [m for _, m in got]
    by_key = {k: [(t, m["offset"]) for t, m in got if m.get("key") == k] for k in "AB"}
    assert [o for _, o in by_key["A"]] == [0, newest["A"]] and len(by_key["B"]) == 2
    for (first, _), (second, _) in by_key.values():
        assert second - first >= 0.5  # the second value of a key waited for its second
    notices = [m for m in frames if m["type"] == "conflated"]
    assert notices == [{"type": "conflated", "channel": topic, "dropped": 36}]
    assert frames.index(notices[0]) == 2  # before the released values
