"""Slow-consumer policies on a real broker (design section 11).

A client stops reading while a producer keeps writing, then reads again. Per
policy, what it receives is checked against every (partition, offset) the
producer wrote, beside a subscriber that keeps up and must get everything.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import websockets

from tests.integration.harness import StalledClient, auth, next_json
from wsrt.metrics import parse

PARTITIONS = 2
KEYS = 20
MESSAGES = 1000
#: Room for bursts: one fetch can bring a hundred records to a client that keeps up.
BUFFER = 128
#: The slow client reads again once the fast one has this many: far more than
#: the buffer, the kernel's and the transport's bytes hold together (~150).
STALL_FOR = 400
#: The producer stays at most this many messages ahead of the subscriber that
#: keeps up, so that one never falls behind however loaded the machine is.
LEAD = 32
VALUE = b'{"pad":"' + b"x" * 8000 + b'","n":%d}'


class Produced:
    """What the producer wrote, as the broker acknowledged it."""

    def __init__(self) -> None:
        self.offsets: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        self.newest: dict[str, int] = {}
        self.done = False

    def covered_by(self, seen: dict[int, list[int]]) -> bool:
        return self.done and all(seen[p][-1:] == o[-1:] for p, o in self.offsets.items())


class Frames:
    """A stalled client's frames, parsed once each, ``subscribed`` left out."""

    def __init__(self, client: StalledClient) -> None:
        self.client = client
        self.parsed: list[dict[str, Any]] = []
        self._read = 0

    def __call__(self) -> list[dict[str, Any]]:
        new = self.client.frames[self._read :]
        self._read += len(new)
        self.parsed.extend(f for f in map(json.loads, new) if f["type"] != "subscribed")
        return self.parsed


class Paced:
    """A producer of ``MESSAGES`` that stays at most ``LEAD`` ahead of ``fast``, a
    subscriber that keeps up (and must see every message, no notice); ``stalled_enough``
    is set once it has ``STALL_FOR``."""

    def __init__(self, producer: Any, topic: str, fast: Any) -> None:
        self.producer, self.topic, self.fast = producer, topic, fast
        self.produced = Produced()
        self.fast_seen: list[dict[str, Any]] = []
        self.stalled_enough = asyncio.Event()
        self.progress = asyncio.Condition()

    async def produce(self) -> None:
        for n in range(MESSAGES):
            async with self.progress:
                await self.progress.wait_for(lambda n=n: len(self.fast_seen) >= n - LEAD)
            key = f"k{n % KEYS}"
            meta = await (await self.producer.send(self.topic, VALUE % n, key=key.encode()))
            self.produced.offsets[meta.partition].append(meta.offset)
            self.produced.newest[key] = meta.offset
        self.produced.done = True

    async def read_fast(self) -> None:
        while len(self.fast_seen) < MESSAGES:
            obj = json.loads(await asyncio.wait_for(self.fast.recv(), 60))
            assert obj["type"] == "message", obj  # it keeps up: no notice, ever
            self.fast_seen.append(obj)
            async with self.progress:
                self.progress.notify_all()
            if len(self.fast_seen) == STALL_FOR:
                self.stalled_enough.set()


def coverage(frames: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Per partition, the offsets a client received or was told it missed, in order."""
    seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for f in frames:
        if f["type"] == "message":
            seen[f["partition"]].append(f["offset"])
        elif f["type"] == "gap":
            seen[f["partition"]].extend(range(f["from"], f["to"] + 1))
    return seen


def newest_received(frames: list[dict[str, Any]]) -> dict[str, int]:
    return {f["key"]: f["offset"] for f in frames if f["type"] == "message"}


class DocsRecipe:
    """The client of docs/protocol.md: on a gap, resubscribe with ``since`` and skip to the answer.

    Called with the frames after each read; True once it holds every produced offset.
    """

    def __init__(self, client: StalledClient, channel: str, produced: Produced) -> None:
        self.client, self.channel, self.produced = client, channel, produced
        self.since: dict[str, int] = {}
        self.refetching = False
        self.accepted: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        self.gaps = 0
        self._read = 0

    def __call__(self, frames: list[str]) -> bool:
        for msg in map(json.loads, frames[self._read :]):
            if msg["type"] == "gap" and not self.refetching:
                self.gaps += 1
                self.refetching = True
                self.client.send(json.dumps({"type": "unsubscribe", "channel": self.channel}))
                self.client.send(
                    json.dumps({"type": "subscribe", "channel": self.channel, "since": self.since})
                )
            elif msg["type"] == "subscribed":
                self.refetching = False
                for partition, offset in msg["positions"].items():
                    self.since.setdefault(partition, offset)
            elif msg["type"] == "message" and not self.refetching:
                self.since[str(msg["partition"])] = msg["offset"] + 1
                self.accepted[msg["partition"]].append(msg["offset"])
        self._read = len(frames)
        return self.produced.covered_by(self.accepted)


async def scenario(policy: str, make_topics, servers, producer) -> tuple[Any, ...]:
    recipe = policy == "drop, then the recipe of the docs"
    if recipe:
        policy = "drop"
    (topic,) = await make_topics("order_book", partitions=PARTITIONS)
    server = servers(
        [topic],
        {
            "WS_TOPIC_POLICIES": f"{topic}={policy}",
            "WS_CLIENT_BUFFER": str(BUFFER),
            "WS_SEND_BUFFER_BYTES": "65536",
        },
    )
    if recipe:
        slow = await StalledClient(server.url, auth("slow")).connect()
        slow.send(json.dumps({"type": "subscribe", "channel": topic, "since": {}}))
        await slow.read(lambda frames: bool(frames), stalled=True)  # subscribed
    else:
        slow = await StalledClient(f"{server.url}?channels={topic}", auth("slow")).connect()
    fast = await websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth("fast"), max_size=None
    )
    frames_of = Frames(slow)
    paced = Paced(producer, topic, fast)
    produced, fast_seen, stalled_enough = paced.produced, paced.fast_seen, paced.stalled_enough
    docs = DocsRecipe(slow, topic, produced)
    try:
        assert (await next_json(fast))["type"] == "subscribed"
        produce, read_fast = paced.produce, paced.read_fast

        async def read_slow() -> None:
            await stalled_enough.wait()  # it read nothing until now
            if recipe:
                docs(slow.frames)  # the subscribed answer
                await slow.read(docs)
            elif policy == "disconnect":
                await slow.read()  # until the close
            elif policy == "drop":
                await slow.read(lambda _: produced.covered_by(coverage(frames_of())))
            else:
                await slow.read(lambda _: produced.done
                                and newest_received(frames_of()) == produced.newest)  # fmt: skip

        await asyncio.gather(produce(), read_fast(), read_slow())
        # The subscriber that kept up got every message, in order, once.
        for p, offsets in produced.offsets.items():
            assert [m["offset"] for m in fast_seen if m["partition"] == p] == offsets
        with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as response:
            metrics = parse(response.read().decode())
        close = slow.protocol.close_rcvd
        return topic, produced, (docs if recipe else frames_of()), close, metrics
    finally:
        slow.close()
        await fast.close()


def counter(metrics: dict[Any, float], name: str, topic: str, policy: str) -> float:
    return metrics[(name, (("policy", policy), ("topic", topic)))]


async def test_disconnect_closes_1008_after_a_gap_free_prefix(
    make_topics, servers, producer
) -> None:
    topic, produced, frames, close, metrics = await scenario(
        "disconnect", make_topics, servers, producer
    )
    assert close is not None and (close.code, close.reason) == (1008, "slow consumer")
    assert {f["type"] for f in frames} == {"message"}
    for p, offsets in coverage(frames).items():
        assert offsets == produced.offsets[p][: len(offsets)]  # a prefix, no hole
    assert sum(len(o) for o in coverage(frames).values()) < MESSAGES
    assert counter(metrics, "wsrt_slow_consumer_closes_total", topic, "disconnect") == 1


async def test_drop_reports_every_missed_offset_in_a_gap(make_topics, servers, producer) -> None:
    topic, produced, frames, close, metrics = await scenario("drop", make_topics, servers, producer)
    assert close is None  # still connected
    gaps = [f for f in frames if f["type"] == "gap"]
    assert gaps, "the client fell behind, so something was dropped"
    for gap in gaps:
        assert gap["channel"] == topic and gap["dropped"] == gap["to"] - gap["from"] + 1
    # Messages received plus the gaps' ranges are every produced offset,
    # exactly once and in order: no silent hole, nothing twice.
    assert coverage(frames) == produced.offsets
    dropped = sum(g["dropped"] for g in gaps)
    assert counter(metrics, "wsrt_slow_consumer_messages_not_delivered_total", topic, "drop") == (
        dropped
    )
    assert counter(metrics, "wsrt_slow_consumer_notices_total", topic, "drop") == len(gaps)


async def test_conflate_delivers_the_newest_value_of_every_key(
    make_topics, servers, producer
) -> None:
    topic, produced, frames, close, metrics = await scenario(
        "conflate", make_topics, servers, producer
    )
    assert close is None
    notices = [n for n, f in enumerate(frames) if f["type"] == "conflated"]
    assert notices, "the client fell behind, so values were conflated"
    for n in notices:
        assert frames[n]["channel"] == topic and frames[n]["dropped"] > 0
        assert frames[n + 1]["type"] == "message"  # the kept values follow their notice
    messages = [f for f in frames if f["type"] == "message"]
    for p in range(PARTITIONS):  # Kafka order, never twice
        offsets = [m["offset"] for m in messages if m["partition"] == p]
        assert offsets == sorted(set(offsets))
    assert newest_received(frames) == produced.newest
    dropped = sum(frames[n]["dropped"] for n in notices)
    assert dropped + len(messages) == MESSAGES  # every message delivered or counted
    assert (
        counter(metrics, "wsrt_slow_consumer_messages_not_delivered_total", topic, "conflate")
        == dropped
    )
    assert counter(metrics, "wsrt_slow_consumer_notices_total", topic, "conflate") == len(notices)


async def test_a_client_following_the_docs_fills_every_gap(make_topics, servers, producer) -> None:
    _, produced, docs, close, _ = await scenario(
        "drop, then the recipe of the docs", make_topics, servers, producer
    )
    assert close is None
    assert docs.gaps, "the client fell behind, so something was dropped"
    assert docs.accepted == produced.offsets  # every offset, once, in order
