"""Resume and replay from Kafka (design section 10), with (partition, offset) accounting.

Every test compares what a real websockets client received, per partition,
with the offsets the producer got back from the broker: a gap, a duplicate or
a reordering fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.integration.harness import auth, next_json
from tests.integration.test_reliability import faulty
from tests.support.faults import TRIGGER_STALL
from wsrt.brokers import Broker
from wsrt.tools.client import scrape
from wsrt.tools.server import EVENT_TIMEOUT

Offsets = dict[int, list[int]]


async def subscribe(ws: Any, channel: str, request_id: str = "r", **start: Any) -> dict[str, Any]:
    """Send a subscribe (with a start field) and return its reply."""
    await ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": request_id, **start}))
    return await next_json(ws)


async def receive_until(
    ws: Any, want: dict[int, int], got: Offsets | None = None, timeout: float = EVENT_TIMEOUT
) -> Offsets:
    """Offsets received per partition until each partition of ``want`` reached its offset."""
    got = got if got is not None else {}

    def done() -> bool:
        return all(got.get(p) and got[p][-1] >= last for p, last in want.items())

    async def run() -> None:
        while not done():
            obj = json.loads(await ws.recv())
            assert obj["type"] == "message", obj
            got.setdefault(obj["partition"], []).append(obj["offset"])

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        tails = {p: o[-3:] for p, o in got.items()}
        raise AssertionError(f"wanted up to {want}, got tails {tails}") from None
    return got


def assert_exact(got: Offsets, produced: Offsets, start: dict[int, int]) -> None:
    """Per partition: every produced offset from ``start`` on, once, in order."""
    for p, offsets in produced.items():
        expected = [o for o in offsets if o >= start.get(p, 0)]
        assert got.get(p, []) == expected, f"partition {p}: {got.get(p, [])[:5]}… ≠ {expected[:5]}…"


async def produce(
    producer: AIOKafkaProducer, topic: str, count: int, partitions: int, **kwargs: Any
) -> Offsets:
    """``count`` JSON records spread over ``partitions``; the offsets the broker gave them.

    One record per request: the embedded broker reports a wrong end offset for
    a partition written in multi-record batches (it counts the batches).
    """
    offsets: Offsets = {}
    for n in range(count):
        md = await producer.send_and_wait(
            topic, b'{"n":%d}' % n, partition=n % partitions, **kwargs
        )
        offsets.setdefault(md.partition, []).append(md.offset)
    return offsets


class SteadyProducer:
    """Keeps writing to every partition at a steady rate until stopped; records offsets.

    With ``keys``, record n has key ``k{n % keys}`` (so, where ``keys`` is a
    multiple of ``partitions``, a key stays in one partition).
    """

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, partitions: int, keys: int = 0
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.keys = keys
        #: key → offset of its newest record, where keyed.
        self.newest: dict[str, int] = {}
        self._wrote = asyncio.Event()
        self.produced: Offsets = {}
        self.count = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while not self._stop.is_set():
            p = self.count % self.partitions
            key = f"k{self.count % self.keys}" if self.keys else None
            md = await self.producer.send_and_wait(
                self.topic, b'{"n":%d}' % self.count, partition=p,
                key=key.encode() if key else None,
            )  # fmt: skip
            self.produced.setdefault(md.partition, []).append(md.offset)
            if key is not None:
                self.newest[key] = md.offset
            self.count += 1
            self._wrote.set()
            # Pacing of the load (about 500 msg/s), not synchronisation.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.002)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SteadyProducer]:
        self._task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            await self.stop()

    async def written(self, count: int) -> None:
        """Returns once ``count`` records were acknowledged in all."""
        while self.count < count:
            self._wrote.clear()
            await self._wrote.wait()

    async def stop(self) -> None:
        """Stop writing; returns once the last write was acknowledged."""
        self._stop.set()
        assert self._task is not None
        await self._task

    @property
    def last(self) -> dict[int, int]:
        return {p: o[-1] for p, o in self.produced.items()}


async def receive_count(ws: Any, got: Offsets, count: int) -> None:
    """Receive until ``got`` holds ``count`` offsets in all."""
    while sum(map(len, got.values())) < count:
        obj = await next_json(ws)
        assert obj["type"] == "message", obj
        got.setdefault(obj["partition"], []).append(obj["offset"])


async def test_since_that_arrives_before_the_live_stream_is_positioned(
    make_topics, servers, producer
) -> None:
    """A client resuming at a restarted server usually subscribes before its consumer is
    positioned: the history it asks for still comes, and unnamed partitions start live."""
    (topic,) = await make_topics("lines", partitions=2)
    history = await produce(producer, topic, 20, 2)  # produced while no server ran
    server = servers([topic], ready=False, **faulty("positioning_waits_for_a_replay"))
    since = {"0": history[0][4]}  # partition 1 is not named: it starts live
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, since=since)
        server.wait_ready()
        # The live stream was positioned after the subscribe, at the end of partition 1.
        assert reply["positions"] == {**since, "1": history[1][-1] + 1}, reply
        assert reply["complete"] is True
        got = await receive_until(ws, {0: history[0][-1]})
        live = await produce(producer, topic, 6, 2)
        await receive_until(ws, {p: o[-1] for p, o in live.items()}, got)
    assert_exact(got, {0: history[0] + live[0], 1: live[1]}, {0: history[0][4]})
    ready = server.wait_for("readiness", lambda e: e.get("status") == "ok")
    assert server.events.index(server.wait_for("connection_opened")) < server.events.index(ready)


async def test_since_resumes_across_a_server_restart_while_producing(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines", partitions=3)
    first = servers([topic])
    steady = SteadyProducer(producer, topic, 3)
    got: Offsets = {}
    async with steady.running():
        async with websockets.connect(first.url, additional_headers=auth()) as ws:
            assert (await subscribe(ws, topic))["type"] == "subscribed"
            await receive_count(ws, got, 60)  # live traffic, then the server goes away
        start = {p: o[0] for p, o in got.items()}
        first.stop()
        second = servers([topic])
        since = {str(p): o[-1] + 1 for p, o in got.items()}
        async with websockets.connect(second.url, additional_headers=auth()) as ws:
            reply = await subscribe(ws, topic, since=since)
            assert reply["type"] == "subscribed", reply
            assert reply["positions"] == since and reply["complete"] is True
            # Producing goes on through the replay and the handover; when it
            # stops, the client must end with every offset produced.
            await receive_count(ws, got, 1500)
            await steady.stop()
            await receive_until(ws, steady.last, got)
    assert sorted(start) == [0, 1, 2]
    assert_exact(got, steady.produced, start)
    second.wait_for("replay_caught_up", lambda e: e["channel"] == topic)


def needs_apache(broker: Broker, what: str) -> None:
    if broker.kind != "apache":
        pytest.skip(f"the embedded broker (tansu) does not implement {what}")


async def test_since_time_starts_at_the_first_record_at_or_after_it(
    broker, make_topics, servers, producer
) -> None:
    needs_apache(broker, "offsets for times (it answers offset 0 for every time)")
    (topic,) = await make_topics("order_book", partitions=2)
    old = await produce(producer, topic, 10, 2, timestamp_ms=1_700_000_000_000)
    new = await produce(producer, topic, 10, 2, timestamp_ms=1_700_000_060_000)
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, since_time=1_700_000_030_000)
        assert reply["positions"] == {str(p): o[0] for p, o in new.items()}
        assert reply["complete"] is True
        got = await receive_until(ws, {p: o[-1] for p, o in new.items()})
        live = await produce(producer, topic, 4, 2)
        await receive_until(ws, {p: o[-1] for p, o in live.items()}, got)
    assert_exact(got, {p: new[p] + live[p] for p in new}, {})
    assert all(o not in got[p] for p, offsets in old.items() for o in offsets)


async def test_rewind_gives_the_last_n_per_partition_then_live(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    history = await produce(producer, topic, 40, 2)
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, rewind=5)
        assert reply["positions"] == {str(p): o[-5] for p, o in history.items()}
        got = await receive_until(ws, {p: o[-1] for p, o in history.items()})
        live = await produce(producer, topic, 6, 2)
        await receive_until(ws, {p: o[-1] for p, o in live.items()}, got)
    assert_exact(got, {p: history[p][-5:] + live[p] for p in history}, {})


async def test_rewind_on_a_key_channel_gives_that_keys_last_n(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("order_book", partitions=1)
    keys = {b"BTC": [], b"ETH": []}
    for n in range(30):
        key = b"BTC" if n % 3 == 0 else b"ETH"
        md = await producer.send_and_wait(topic, b'{"n":%d}' % n, key=key, partition=0)
        keys[key].append(md.offset)
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, f"{topic}:BTC", rewind=4)
        assert reply["positions"] == {"0": keys[b"BTC"][-4]} and reply["complete"] is True
        got = await receive_until(ws, {0: keys[b"BTC"][-1]})
        md = await producer.send_and_wait(topic, b"{}", key=b"BTC", partition=0)
        await producer.send_and_wait(topic, b"{}", key=b"ETH", partition=0)
        await receive_until(ws, {0: md.offset}, got)
    assert got == {0: [*keys[b"BTC"][-4:], md.offset]}


async def test_history_beyond_retention_is_incomplete_and_starts_at_the_earliest(
    broker, bootstrap, make_topics, servers, producer
) -> None:
    needs_apache(broker, "DeleteRecords (it drops the connection), which stands in for retention")
    (topic,) = await make_topics("lines", partitions=1)
    history = await produce(producer, topic, 20, 1)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(10)}, 10_000)
    finally:
        await admin.close()
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, since={"0": 2})
        assert reply["positions"] == {"0": 10} and reply["complete"] is False
        got = await receive_until(ws, {0: history[0][-1]})
    assert got == {0: history[0][10:]}
    server.wait_for("replay_incomplete", lambda e: e["channel"] == topic)


async def test_history_over_the_replay_budget_is_cut_and_incomplete(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    history = await produce(producer, topic, 40, 2)
    server = servers([topic], {"WS_REPLAY_MAX_MESSAGES": "6"})
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, since={"0": 0, "1": 0})
        # Six records in all, shared equally: the newest three of each partition.
        assert reply["positions"] == {str(p): o[-3] for p, o in history.items()}
        assert reply["complete"] is False
        got = await receive_until(ws, {p: o[-1] for p, o in history.items()})
    assert got == {p: o[-3:] for p, o in history.items()}


@pytest.mark.parametrize(
    ("start", "says"),
    [
        ({"since": {"7": 0}}, "partitions"),
        ({"since": {"0": -1}}, "integer"),
        ({"since": {"0": 1.5}}, "integer"),
        ({"since": {"x": 1}}, "partition"),
        ({"since": [1]}, "object"),
        ({"since_time": -5}, "integer"),
        ({"since_time": "yesterday"}, "integer"),
        ({"rewind": True}, "integer"),
        ({"rewind": 5, "since_time": 0}, "at most one"),
        # Past Kafka's 64-bit offsets and timestamps: refused, not a crash (1011).
        ({"since_time": 2**63}, "2^63-1"),
        ({"rewind": 2**63}, "2^63-1"),
        ({"since": {"0": 2**63}}, "2^63-1"),
    ],
)
async def test_bad_start_fields_are_bad_requests(
    make_topics, servers, producer, start: dict[str, Any], says: str
) -> None:
    (topic,) = await make_topics("lines", partitions=1)
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, "42", **start)
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
        assert reply["id"] == "42" and reply["channel"] == topic and says in reply["message"]
        # Not subscribed: a plain subscribe is a new subscription, and live delivery works.
        assert (await subscribe(ws, topic, "43")) == {
            "type": "subscribed", "channel": topic, "id": "43"
        }  # fmt: skip
        md = await producer.send_and_wait(topic, b'{"live":1}', partition=0)
        assert (await receive_until(ws, {0: md.offset})) == {0: [md.offset]}


async def test_a_start_field_on_a_subscribed_or_overlapping_channel_is_a_bad_request(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("order_book", partitions=1)
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        assert (await subscribe(ws, topic, "1"))["type"] == "subscribed"
        again = await subscribe(ws, topic, "2", since={"0": 0})
        assert again["code"] == "bad_request" and "already subscribed" in again["message"]
        keyed = await subscribe(ws, f"{topic}:BTC", "3", rewind=2)
        assert keyed["code"] == "bad_request" and "overlaps" in keyed["message"]
        await ws.send(json.dumps({"type": "unsubscribe", "channel": topic}))
        assert (await next_json(ws))["type"] == "unsubscribed"
        replayed = await subscribe(ws, f"{topic}:BTC", "4", rewind=2)
        assert replayed["type"] == "subscribed" and replayed["positions"] == {"0": 0}
        whole = await subscribe(ws, topic, "5")
        assert whole["code"] == "bad_request" and "start field" in whole["message"]


async def test_a_start_ahead_of_a_stalled_live_stream_drops_what_is_before_it(
    make_topics, servers, producer
) -> None:
    """The client asks for offsets the live stream has not reached: it joins with a floor."""
    (topic,) = await make_topics("lines", partitions=1)
    env = {"WS_KAFKA_STALL_SECONDS": "5", "WS_KAFKA_PROBE_SECONDS": "0.5"}
    server = servers([topic], **faulty("consumer_goes_quiet", env))
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        mark = server.mark()
        # The live consumer stops delivering at the trigger; ten records wait behind it.
        trigger = await producer.send_and_wait(topic, TRIGGER_STALL, partition=0)
        waiting = (await produce(producer, topic, 10, 1))[0]
        reply = await subscribe(ws, topic, since={"0": waiting[4]})
        assert reply["positions"] == {"0": waiting[4]}
        # The watchdog replaces the live consumer, which reads from the trigger
        # again: what is before the client's start must not reach it.
        got = await receive_until(ws, {0: waiting[-1]})
        later = (await produce(producer, topic, 3, 1))[0]
        await receive_until(ws, {0: later[-1]}, got)
    assert got == {0: [*waiting[4:], *later]}
    assert trigger.offset < waiting[4]
    caught_up = server.wait_for("replay_caught_up", lambda e: e["channel"] == topic)
    stalled = server.wait_for("kafka_stalled", start=mark)
    # The replay joined while the live stream was still behind it.
    assert server.events.index(caught_up) < server.events.index(stalled)


async def test_replay_metrics_count_what_happened(make_topics, servers, producer) -> None:
    (topic,) = await make_topics("lines", partitions=1)
    history = await produce(producer, topic, 12, 1)
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        assert (await subscribe(ws, topic, rewind=5))["complete"] is True
        await receive_until(ws, {0: history[0][-1]})
    server.wait_for("replay_caught_up")
    samples = scrape(server.http)
    assert samples[("wsrt_replays_completed_total", ())] == 1
    assert samples[("wsrt_replay_messages_total", ())] == 5
    assert samples[("wsrt_replays_running", ())] == 0
    assert samples[("wsrt_replays_waiting", ())] == 0
    assert samples[("wsrt_replays_incomplete_total", ())] == 0


async def test_a_replay_across_transaction_markers_hands_over_to_live(
    broker, bootstrap, make_topics, servers, producer
) -> None:
    """A log that ends in a commit marker: the marker takes an offset and is no record.

    A replay that advanced only from returned records would never reach the
    live stream's position past it: the gate would hold the partition for
    good (no live message), and a keyed rewind's scan would never end.
    """
    import uuid

    needs_apache(broker, "transactions")
    (topic,) = await make_topics("lines", partitions=1)
    tx = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"wsrt-test-{uuid.uuid4().hex[:8]}"
    )
    await tx.start()
    try:
        async with tx.transaction():
            sent = [await tx.send(topic, b'{"n":%d}' % n, key=b"k") for n in range(5)]
        history = [(await s).offset for s in sent]
    finally:
        await tx.stop()
    assert history == [0, 1, 2, 3, 4]  # and the commit marker at 5
    server = servers([topic])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, topic, "1", rewind=6)  # offsets: the marker counts
        assert reply["positions"] == {"0": 0}, reply
        got = await receive_until(ws, {0: 4})
        # Handed over with nothing more produced: its slot is free, live flows.
        await asyncio.to_thread(server.wait_for, "replay_caught_up", timeout=30)
        live = await produce(producer, topic, 2, 1)
        await receive_until(ws, {0: live[0][-1]}, got)
    assert got == {0: history + live[0]}
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, f"{topic}:k", "2", rewind=2)
        assert reply["positions"] == {"0": 3}, reply
        got = await receive_until(ws, {0: 4})
    assert got == {0: [3, 4]}
