"""From fetched batches to the hub, and past records that cannot be read.

:class:`Encoder` turns each record into its frame once (:mod:`wsrt.wire`),
skips what cannot become a frame — counted by topic and reason and logged,
rate-limited, with topic, partition and offset — records what the hub took
in :class:`~wsrt.kafka.offsets.Offsets` and hands the batch to ``publish``.

:class:`UndecodableSkipper` handles a fetch that raises while decoding (a
codec that is not installed, a corrupt batch). aiokafka then drops the whole
``getmany`` answer, other partitions' records included, and would raise again
at the same offset forever. So: every partition is re-positioned where the
hub stopped taking (nothing dropped is lost), the partition that raises is
found by fetching each on its own, read up to the failure one record at a
time, and the record there is skipped (``undecodable``). A batch the library
cannot decode is passed one offset at a time, so every record in it is
accounted for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

from wsrt.config import Settings
from wsrt.kafka.commit import Committer
from wsrt.kafka.offsets import Offsets
from wsrt.kafka.registry import registry
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats
from wsrt.outlet import Record
from wsrt.wire import UNDECODABLE, Envelopes, Skipped

Batches = dict[TopicPartition, list[Any]]

#: What aiokafka raises for a batch it cannot decode: a codec that is not
#: installed, a corrupt batch. Live and replay both skip the record there.
DECODE_ERRORS = (UnsupportedCodecError, CorruptRecordException)


def envelopes(settings: Settings) -> Envelopes:
    """How this server's records become frames (WS_TOPIC_FORMATS, WS_HEADERS, WS_STATE_TOPICS;
    the process's schema cache for schema formats)."""
    schemas = registry(settings)
    return Envelopes(
        dict(settings.topic_formats), settings.headers, settings.state_topics,
        schemas.schemas if schemas is not None else None,
    )  # fmt: skip


class Encoder:
    def __init__(
        self,
        publish: Callable[[list[Record]], None],
        offsets: Offsets,
        stats: Stats,
        log: EventLogger,
        sample_every: int = 0,
        envelopes: Envelopes | None = None,
    ) -> None:
        self.publish = publish
        #: Formats, headers and state topics: how records become frames.
        self.envelopes = envelopes if envelopes is not None else Envelopes({}, (), ())
        self.offsets = offsets
        self.stats = stats
        self.log = log
        #: WS_LATENCY_SAMPLE_EVERY: records whose offset is a multiple of it are probes.
        self.sample_every = sample_every
        #: One rate-limited log line per skip reason: each is a different problem.
        self._skip_logs: dict[str, RateLimited] = {}

    def deliver(
        self, consumer: AIOKafkaConsumer, batches: Batches, fetched: float | None = None
    ) -> None:
        """Encode a fetched batch, hand it to the hub, count it; ``fetched``: when
        the fetch returned (epoch seconds), for the latency probes."""
        records: list[Record] = []
        timestamps: list[int] = []
        skips: list[tuple[str, int, int, str, str | None]] = []
        stats = self.stats
        # Nothing counts as taken before the hub took it: an exception while
        # encoding leaves every position where it was, for a replacement to re-read.
        frame_of = self.envelopes.frame
        framed_keys = self.envelopes.schema_topics
        route_key = self.envelopes.route_key
        for tp, messages in batches.items():
            topic = tp.topic
            keyed = topic in framed_keys
            for m in messages:
                try:
                    frame, deleted = frame_of(
                        topic, m.key, m.partition, m.offset, m.timestamp, m.value, m.headers
                    )
                except Skipped as skip:
                    skips.append((topic, m.partition, m.offset, skip.reason, skip.detail))
                    continue
                key = route_key(topic, m.key) if keyed else m.key
                records.append(
                    Record(
                        topic, key, frame, m.partition, m.offset, deleted, m.timestamp, m.headers
                    )
                )
                timestamps.append(m.timestamp)
        if not self.sample_every:
            self.publish(records)
        else:
            published = time.time()
            self.publish(records)
            self._probes(records, timestamps, fetched or published, published, time.time())
        for where in skips:  # counted once: a batch re-read after an exception is not yet taken
            self.skipped(*where)
        for tp, messages in batches.items():
            self.offsets.taken(tp, messages[-1].offset + 1, consumer.highwater(tp))
            stats.kafka_messages[tp.topic] += len(messages)
        stats.delay.observe_ms(time.time() * 1000, timestamps)

    def _probes(
        self,
        records: list[Record],
        timestamps: list[int],
        fetched: float,
        published: float,
        written: float,
    ) -> None:
        """One ``latency_sample`` line per probe record: where its time went, in ms."""
        every = self.sample_every
        for record, appended in zip(records, timestamps, strict=True):
            if record.offset % every == 0:
                self.log.info(
                    "latency_sample", "latency sample", topic=record.topic,
                    partition=record.partition, offset=record.offset, appended_ms=appended,
                    fetched_ms=round(fetched * 1000, 3), published_ms=round(published * 1000, 3),
                    written_ms=round(written * 1000, 3), batch=len(records),
                )  # fmt: skip

    def skipped(
        self, topic: str, partition: int, offset: int, reason: str, error: str | None = None
    ) -> None:
        self.stats.kafka_skipped[(topic, reason)] += 1
        limited = self._skip_logs.get(reason)
        if limited is None:
            limited = self._skip_logs[reason] = RateLimited(self.log)
        limited.warning(
            "record_skipped", "skipped a record that cannot be delivered",
            topic=topic, partition=partition, offset=offset, reason=reason, error=error,
        )  # fmt: skip


class UndecodableSkipper:
    def __init__(
        self, consumer: AIOKafkaConsumer, offsets: Offsets, encoder: Encoder, settings: Settings
    ) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.encoder = encoder
        self.fetch_ms = int(settings.kafka_fetch_max_wait * 1000) + 100
        self.max_records = settings.kafka_max_batch
        #: The partition that raised last time: tried first next time.
        self.culprit: TopicPartition | None = None
        self._fruitless = 0

    def may_skip(self, exc: BaseException) -> bool:
        """Is ``exc`` (raised by a fetch) a record the client library could not decode?

        Decoding errors of the codec libraries are not Kafka errors; network and
        broker errors are, and are left to the reconnect logic. Two searches in
        a row that find no culprit mean it was not a record after all.
        """
        decoding = isinstance(exc, DECODE_ERRORS) or not isinstance(exc, KafkaError | OSError)
        return decoding and self._fruitless < 2

    def clear(self) -> None:
        self._fruitless = 0

    async def skip(self, exc: BaseException, committer: Committer) -> None:
        consumer = self.consumer
        assigned = sorted(consumer.assignment())
        for tp in assigned:  # what the failed fetch dropped is fetched again
            position = self.offsets.positions.get(tp)
            if position is not None:
                consumer.seek(tp, position)
        order = sorted(assigned, key=lambda tp: tp != self.culprit)
        for tp in order:
            try:
                await self._fetch(tp, self.max_records, committer)
            except Exception as error:
                if not self.may_skip(error) or tp not in self.offsets.positions:
                    raise
                # Records before the bad batch may have come in the same answer:
                # walk up to it one record at a time, then skip what is there.
                consumer.seek(tp, self.offsets.positions[tp])
                await self._walk_to_failure(tp, committer)
                return
        self._fruitless += 1

    async def _fetch(self, tp: TopicPartition, max_records: int, committer: Committer) -> bool:
        """One fetch of ``tp`` alone, delivered; False when it returned nothing."""
        batch = await self.consumer.getmany(tp, timeout_ms=self.fetch_ms, max_records=max_records)
        if batch:
            self.encoder.deliver(self.consumer, batch)
            committer.kick()
        return bool(batch)

    async def _walk_to_failure(self, tp: TopicPartition, committer: Committer) -> None:
        for _ in range(self.max_records + 1):
            try:
                if not await self._fetch(tp, 1, committer):
                    return  # nothing raised this time: the next search starts again
            except Exception as error:
                if not self.may_skip(error):
                    raise
                self._skip_one(tp, error)
                committer.kick()
                return

    def _skip_one(self, tp: TopicPartition, error: BaseException) -> None:
        offset = self.offsets.positions[tp]
        self.culprit = tp
        self.consumer.seek(tp, offset + 1)
        self.offsets.taken(tp, offset + 1, self.consumer.highwater(tp))
        self.encoder.skipped(tp.topic, tp.partition, offset, UNDECODABLE, repr(error)[:200])
        self._fruitless = 0
