"""Offsets committed after the hub took a batch; broadcast and shared fan-out."""

from __future__ import annotations

import re
import uuid

import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.harness import auth, messages, next_json


def positions(event: dict) -> dict[tuple[str, int], int]:
    """``topic[p]=o`` pairs of a kafka_positioned / kafka_committed log event."""
    return {
        (m["topic"], int(m["p"])): int(m["o"])
        for m in re.finditer(
            r"(?P<topic>[^\s\[]+)\[(?P<p>\d+)\]=(?P<o>\d+)",
            event.get("offsets") or event["positions"],
        )
    }


async def committed(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[tuple[str, int], int]:
    """The group's committed offsets, read through a consumer of that group (no join)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {
            (topic, p): await consumer.committed(TopicPartition(topic, p))
            for p in range(partitions)
        }
    finally:
        await consumer.stop()


async def test_committed_offset_is_the_next_to_read(
    bootstrap, make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("order_book", partitions=2)
    group = f"offsets-{uuid.uuid4().hex[:6]}"
    server = servers([topic], {"WS_KAFKA_GROUP_ID": group, "WS_REPLICA_ID": "r1"})
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        mark = server.mark()
        last = {}
        for n in range(10):
            md = await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % 2)
            last[(topic, md.partition)] = md.offset
        await messages(ws, 10)
    want = {tp: offset + 1 for tp, offset in last.items()}
    # Commits may be split over several requests: wait until each partition's arrived.
    for tp, offset in want.items():
        server.wait_for(
            "kafka_committed",
            lambda e, tp=tp, offset=offset: positions(e).get(tp) == offset,
            start=mark,
        )
    # Broadcast mode commits in the replica's own group.
    assert await committed(bootstrap, f"{group}-r1", topic, 2) == want


async def test_shared_mode_restart_resumes_from_committed_offsets(
    bootstrap, make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    group = f"shared-{uuid.uuid4().hex[:6]}"
    env = {
        "WS_FANOUT_MODE": "shared",
        "WS_KAFKA_GROUP_ID": group,
        "WS_KAFKA_OFFSET_RESET": "earliest",
    }
    first = servers([topic], env)
    async with websockets.connect(f"{first.url}?channels={topic}", additional_headers=auth()) as ws:
        await next_json(ws)
        for n in range(6):
            await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % 2)
        got = await messages(ws, 6)
    assert sorted(m["data"]["n"] for m in got) == list(range(6))
    first.signal()
    assert first.wait_exit() == 0
    assert await committed(bootstrap, group, topic, 2) == {(topic, 0): 3, (topic, 1): 3}

    for n in range(6, 10):
        await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % 2)
    second = servers([topic], env)
    start = second.wait_for("kafka_positioned")
    # Without the commits the group would start from the earliest offsets (0).
    assert positions(start) == {(topic, 0): 3, (topic, 1): 3}
    async with websockets.connect(
        f"{second.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        await producer.send_and_wait(topic, b'{"n":10}', partition=0)
        got = []
        while not got or got[-1]["data"]["n"] != 10:
            got += await messages(ws, 1)
    # Whatever of n=6..9 arrived before the subscription, nothing committed came again.
    assert all(m["data"]["n"] >= 6 for m in got)
    assert (got[-1]["partition"], got[-1]["offset"]) == (0, 5)


async def test_broadcast_replicas_each_deliver_every_message(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("analytics", partitions=3)
    group = f"bcast-{uuid.uuid4().hex[:6]}"
    one = servers([topic], {"WS_KAFKA_GROUP_ID": group})
    two = servers([topic], {"WS_KAFKA_GROUP_ID": group})
    async with (
        websockets.connect(f"{one.url}?channels={topic}", additional_headers=auth()) as a,
        websockets.connect(f"{two.url}?channels={topic}", additional_headers=auth()) as b,
    ):
        await next_json(a)
        await next_json(b)
        for n in range(30):
            await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % 3)
        got_a = await messages(a, 30)
        got_b = await messages(b, 30)
    assert sorted(m["data"]["n"] for m in got_a) == list(range(30))
    assert sorted(m["data"]["n"] for m in got_b) == list(range(30))


async def test_shared_mode_splits_partitions_between_replicas(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("order_book", partitions=2)
    env = {"WS_FANOUT_MODE": "shared", "WS_KAFKA_GROUP_ID": f"split-{uuid.uuid4().hex[:6]}"}
    one = servers([topic], env)
    mark = one.mark()
    two = servers([topic], env, ready=False)
    # After the second member joins, each holds one partition.
    owned_two = positions(two.wait_for("kafka_positioned", lambda e: bool(e["positions"])))
    owned_one = positions(
        one.wait_for("kafka_positioned", lambda e: len(positions(e)) == 1, start=mark)
    )
    assert {p for _, p in owned_one} | {p for _, p in owned_two} == {0, 1}
    (p_one,) = [p for _, p in owned_one]
    (p_two,) = [p for _, p in owned_two]
    async with (
        websockets.connect(f"{one.url}?channels={topic}", additional_headers=auth()) as a,
        websockets.connect(f"{two.url}?channels={topic}", additional_headers=auth()) as b,
    ):
        await next_json(a)
        await next_json(b)
        for n in range(20):
            await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % 2)
        got_a = await messages(a, 10)
        got_b = await messages(b, 10)
    assert {m["partition"] for m in got_a} == {p_one}
    assert {m["partition"] for m in got_b} == {p_two}
    assert sorted(m["data"]["n"] for m in got_a + got_b) == list(range(20))
