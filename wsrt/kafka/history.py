"""Reading Kafka's history for replays: bounds and starts, reads, the consumer pool.

:class:`History` is the Kafka side of a replay (:mod:`wsrt.kafka.replay`
runs the job and hands over to the live stream): it looks up a partition's
log start and end (and offsets for a time), plans the starts with the pure
rules of :mod:`wsrt.replay`, scans for a key's last records, and reads
chunks of ``CHUNK_RECORDS`` with consumers of no group from a pool, all of
them together at most ``WS_REPLAY_RATE`` records a second. Every call that
waits on a broker is bounded (:func:`~wsrt.aio.abandon_after`).

Where a partition stands after a read is the consumer's position, not the
last record's offset plus one: a transaction's commit marker takes an
offset and is no record. A read the client library cannot decode is
stepped over one offset at a time, as the live stream does
(:data:`~wsrt.kafka.deliver.DECODE_ERRORS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition

from wsrt import protocol
from wsrt.aio import abandon_after, detach
from wsrt.config import Settings
from wsrt.kafka.deliver import DECODE_ERRORS, envelopes
from wsrt.kafka.options import UNAVAILABLE, consumer_options, discover, metadata_client
from wsrt.kafka.registry import registry
from wsrt.protocol import Channel, ProtocolError, Since, SinceTime, Start
from wsrt.replay import Bounds, KeyScan, Plan, is_keyed_rewind, plan, scan_window

#: Records per replay read: one read's decoding and encoding stay well under a
#: millisecond, so live publishes interleave with replays, never wait behind them.
CHUNK_RECORDS = 200


class RateLimit:
    """A token bucket of records per second shared by every replay (``WS_REPLAY_RATE``).

    It keeps the history all replays read together below what the event loop
    (and the brokers) can give without slowing the live stream, however many
    clients resume at once. One second of burst.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.last = clock()

    def allowance(self, most: int) -> tuple[int, float]:
        """How many records may be read now (≤ ``most``), or else how long to wait."""
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            return min(most, int(self.tokens)), 0.0
        return 0, (1 - self.tokens) / self.rate

    def took(self, count: int) -> None:
        self.tokens -= count


#: Bytes a replay consumer fetches ahead per partition (Kafka still returns
#: one whole batch when it is larger).
FETCH_BYTES_PER_PARTITION = 256 * 1024


class History:
    """The Kafka reads of every replay of one server, and their pool of consumers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rate = RateLimit(settings.replay_rate)
        self.registry = registry(settings)
        #: How records become frames; its ``schema_topics`` need the registry first.
        self.envelopes = envelopes(settings)
        self._idle: list[AIOKafkaConsumer] = []
        self._client: AIOKafkaClient | None = None

    async def close(self) -> None:
        """Close the pooled consumers and the metadata client (bounded)."""
        seconds = self.settings.kafka_stop_timeout
        closing = [c.stop() for c in self._idle]
        self._idle.clear()
        if self._client is not None:
            closing.append(self._client.close())
            self._client = None
        for work in closing:
            with contextlib.suppress(*UNAVAILABLE):
                await abandon_after(work, seconds, "stopping a replay consumer")

    async def plan(
        self,
        consumer: AIOKafkaConsumer,
        channel: Channel,
        start: Start,
        request_id: protocol.RequestId,
        live_then: dict[int, int],
    ) -> Plan:
        """Where a replay of ``channel`` from ``start`` begins, in the partitions the live
        stream serves here (``live_then``): bounds from Kafka, the rest by :mod:`wsrt.replay`.

        Raises :class:`ProtocolError` for a ``since`` naming partitions the topic lacks.
        """
        s = self.settings
        topic = channel.topic
        seconds = s.kafka_request_timeout
        known = await self.partitions(topic)
        if isinstance(start, Since):
            unknown = sorted(set(start.offsets) - known)
            if unknown:
                raise ProtocolError(
                    protocol.BAD_REQUEST,
                    f"'since' names partitions that {topic} does not have: "
                    + ", ".join(map(str, unknown[:10])),
                    request_id,
                    channel.name,
                )
        # Only what this replica serves (shared mode: its share) is replayed.
        tps = [TopicPartition(topic, p) for p in sorted(live_then) if p in known]
        if not tps:
            return Plan({}, True)
        earliest = await abandon_after(consumer.beginning_offsets(tps), seconds, "log start")
        latest = await abandon_after(consumer.end_offsets(tps), seconds, "end offsets")
        bounds = {tp.partition: Bounds(earliest[tp], latest[tp]) for tp in tps}
        if is_keyed_rewind(start, channel.key):
            assert isinstance(start, protocol.Rewind) and channel.key is not None
            return await self._scan(consumer, topic, channel.key.encode(), start.count, bounds)
        for_time = None
        if isinstance(start, SinceTime):
            found = await abandon_after(
                consumer.offsets_for_times({tp: start.ms for tp in tps}), seconds, "offsets"
            )
            for_time = {tp.partition: (o.offset if o else None) for tp, o in found.items()}
        return plan(start, bounds, live_then, s.replay_max_messages, for_time)

    async def _scan(
        self, consumer: AIOKafkaConsumer, topic: str, key: bytes, count: int,
        bounds: dict[int, Bounds],
    ) -> Plan:  # fmt: skip
        """Keyed ``rewind``: find the last ``count`` records of ``key`` among the newest."""
        window = scan_window(bounds, self.settings.replay_max_messages)
        ends = {p: b.latest for p, b in bounds.items()}
        scan = KeyScan(count, window, ends)
        reading = {p: o for p, o in window.starts.items() if o < ends[p]}
        while reading:
            batches, reached = await self.fetch(consumer, topic, reading)
            for tp, messages in batches.items():
                p = tp.partition
                for m in messages:
                    if m.offset < ends[p] and self.envelopes.route_key(topic, m.key) == key:
                        scan.matched(p, m.offset)
            reading.update(reached)
            reading = {p: o for p, o in reading.items() if o < ends[p]}
        consumer.assign([])  # the replay proper positions it afresh
        return scan.plan()

    async def fetch(
        self, consumer: AIOKafkaConsumer, topic: str, positions: dict[int, int]
    ) -> tuple[dict[TopicPartition, list[Any]], dict[int, int]]:
        """:meth:`_fetch`, and the schemas its records need loaded (a schema format).

        A registry that does not answer pauses the replay or the state load
        until it does: an outage, never a skipped record.
        """
        batches, reached = await self._fetch(consumer, topic, positions)
        framed = self.envelopes.schema_topics
        if self.registry is not None and topic in framed and batches:
            await self.registry.load_waiting(self.registry.needed(framed, batches))
        return batches, reached

    async def _fetch(
        self, consumer: AIOKafkaConsumer, topic: str, positions: dict[int, int]
    ) -> tuple[dict[TopicPartition, list[Any]], dict[int, int]]:
        """One read of ``positions``' partitions (assigned and positioned as needed).

        Returns the records per partition and where each partition stands after
        them. That is the consumer's position, not the last record's offset plus
        one: a transaction's commit marker takes an offset and is no record, so
        a log that ends in one would never be read to its end otherwise.
        """
        tps = {TopicPartition(topic, p) for p in positions}
        if consumer.assignment() != tps:
            # Positioned only when the assignment changes: a seek to the
            # current position would still drop what the consumer fetched ahead.
            consumer.assign(list(tps))
            for tp in tps:
                consumer.seek(tp, positions[tp.partition])
        s = self.settings
        while True:
            allowed, wait = self.rate.allowance(CHUNK_RECORDS)
            if allowed:
                break
            await asyncio.sleep(wait)  # pacing under WS_REPLAY_RATE
        fetch_ms = int(s.kafka_fetch_max_wait * 1000)
        try:
            batches: dict[TopicPartition, list[Any]] = await abandon_after(
                consumer.getmany(*tps, timeout_ms=fetch_ms, max_records=allowed),
                s.kafka_request_timeout,
                "replay fetch",
            )
        except DECODE_ERRORS:
            return await self._past_undecodable(consumer, tps, positions)
        self.rate.took(sum(len(messages) for messages in batches.values()))
        reached = {tp.partition: await consumer.position(tp) for tp in tps}
        return {tp: messages for tp, messages in batches.items() if messages}, reached

    async def _past_undecodable(
        self,
        consumer: AIOKafkaConsumer,
        tps: set[TopicPartition],
        positions: dict[int, int],
    ) -> tuple[dict[TopicPartition, list[Any]], dict[int, int]]:
        """A read raised while decoding: find the partition, and step over its record.

        aiokafka dropped the whole answer, so every partition is first put
        back where the replay stands. Then each is read on its own, one
        record: the first that raises has its record skipped (one offset,
        as the live stream does, :mod:`wsrt.kafka.deliver`); the first that
        returns a record returns it.
        """
        s = self.settings
        fetch_ms = int(s.kafka_fetch_max_wait * 1000) + 100
        for tp in tps:
            consumer.seek(tp, positions[tp.partition])
        reached = dict(positions)
        for tp in sorted(tps):
            try:
                one = await abandon_after(
                    consumer.getmany(tp, timeout_ms=fetch_ms, max_records=1),
                    s.kafka_request_timeout,
                    "replay fetch",
                )
            except DECODE_ERRORS:
                reached[tp.partition] = positions[tp.partition] + 1
                consumer.seek(tp, reached[tp.partition])
                return {}, reached
            if one.get(tp):
                reached[tp.partition] = await consumer.position(tp)
                return {tp: one[tp]}, reached
        return {}, reached

    async def consumer(self) -> AIOKafkaConsumer:
        """A pooled consumer of no group (nothing committed), started."""
        if self._idle:
            return self._idle.pop()
        options = consumer_options(self.settings)
        options.update(
            group_id=None, max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
            fetch_max_bytes=4 * FETCH_BYTES_PER_PARTITION, auto_offset_reset="earliest",
        )  # fmt: skip
        consumer = AIOKafkaConsumer(**options)
        await abandon_after(
            consumer.start(), self.settings.kafka_start_timeout, "starting a replay consumer"
        )
        return consumer

    def release(self, consumer: AIOKafkaConsumer) -> None:
        """Back to the pool, unassigned."""
        consumer.assign([])
        self._idle.append(consumer)

    def discard(self, consumer: AIOKafkaConsumer) -> None:
        """A consumer that failed: stopped on its own, bounded."""
        detach(abandon_after(consumer.stop(), self.settings.kafka_stop_timeout, "replay consumer"))

    async def partitions(self, topic: str) -> set[int]:
        """The partitions ``topic`` has, from a metadata request."""
        seconds = self.settings.kafka_request_timeout
        if self._client is None:
            client = metadata_client(self.settings)
            await abandon_after(client.bootstrap(), self.settings.kafka_start_timeout, "metadata")
            self._client = client
        seen = await abandon_after(discover(self._client, (topic,)), seconds, "metadata")
        return seen.found.get(topic, set())
