"""The Kafka source: connect, assign, fetch, encode once, hand to the hub, commit.

One consumer lifetime is a :class:`_Link` (consumer, metadata client,
committer). :meth:`KafkaSource._run` opens a link, consumes until the link
fails or the source stops, and on failure opens a new one after a jittered
backoff. What the hub took is kept in one :class:`~wsrt.kafka.offsets.Offsets`
across links, so a new consumer resumes exactly where the last one stopped.
Every call into aiokafka that can wait on a broker is bounded
(:func:`~wsrt.aio.abandon_after`): a broker that is gone or hung never keeps
the loop from retrying, and nothing awaits a previous link's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from wsrt.aio import Abandoned, Backoff, abandon_after
from wsrt.config import Settings
from wsrt.health import Readiness, Status
from wsrt.hub import Record
from wsrt.kafka.assign import GroupListener, assign_every_partition, resolve_positions
from wsrt.kafka.commit import Committer
from wsrt.kafka.offsets import Offsets, describe, describe_partitions
from wsrt.kafka.options import consumer_options, discover, metadata_client
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats
from wsrt.wire import Skipped, record_frame

#: Errors that mean "Kafka is not reachable or not answering": retry with backoff.
UNAVAILABLE = (KafkaError, OSError, Abandoned)


class _Link:
    """One consumer's lifetime: the consumer, a metadata client and the committer."""

    def __init__(self, source: KafkaSource) -> None:
        s = source.settings
        self.settings = s
        self.consumer = AIOKafkaConsumer(**consumer_options(s))
        self.client = metadata_client(s)
        self.committer = Committer(
            self.consumer, source.offsets, source.log, source.stats, s.kafka_commit_timeout
        )

    async def open(self) -> None:
        seconds = self.settings.kafka_start_timeout
        await abandon_after(self.consumer.start(), seconds, "connecting to Kafka")
        await abandon_after(self.client.bootstrap(), seconds, "connecting to Kafka")

    async def close(self, *, commit: bool) -> bool:
        """Final commit (when asked), then stop both clients; False when a step was abandoned."""
        clean = await self.committer.flush() if commit else True
        self.committer.abandon()
        seconds = self.settings.kafka_stop_timeout
        for closing, what in ((self.consumer.stop(), "consumer"), (self.client.close(), "client")):
            try:
                await abandon_after(closing, seconds, f"stopping the Kafka {what}")
            except UNAVAILABLE:
                clean = False
        return clean


class KafkaSource:
    """Feeds ``publish`` with every batch of the served topics, for as long as it runs."""

    def __init__(
        self,
        settings: Settings,
        publish: Callable[[list[Record]], None],
        readiness: Readiness,
        log: EventLogger,
        stats: Stats,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self.readiness = readiness
        self.log = log
        self.stats = stats
        self.offsets = Offsets()
        stats.kafka_lag = self.offsets.lag
        self.link: _Link | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Partitions known at the first assignment start live; later ones from their beginning.
        self._live = True
        self._ready_once = False
        self._skip_log = RateLimited(log)
        self._error_log = RateLimited(log)

    def start(self) -> asyncio.Task[None]:
        """Run the consumer in a task until :meth:`stop`."""
        self._task = asyncio.create_task(self._run(), name="wsrt-kafka")
        return self._task

    async def stop(self) -> None:
        """Stop fetching, commit what the hub took, leave the group."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        s = self.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        while not self._stopping.is_set():
            self.link = link = _Link(self)
            try:
                self._set(Status.STARTING, f"connecting to kafka at {','.join(s.kafka_brokers)}")
                await link.open()
                await self._join(link)
                backoff.reset()
                await self._consume(link)
            except UNAVAILABLE as exc:
                delay = backoff.next()
                self._unavailable(exc, delay)
                await link.close(commit=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            else:
                if not await link.close(commit=True):
                    self.log.warning("commit_failed", "final offset commit did not finish")
            finally:
                self.link = None

    def _unavailable(self, exc: BaseException, retry_in: float) -> None:
        reason = f"kafka unavailable: {type(exc).__name__}: {exc}"
        self._set(Status.DEGRADED if self._ready_once else Status.STARTING, reason)
        self._error_log.warning(
            "kafka_error",
            "kafka error; retrying",
            error=str(exc)[:300],
            retry_in_s=round(retry_in, 2),
        )

    async def _join(self, link: _Link) -> None:
        s = self.settings
        if s.fanout_mode == "shared":
            link.consumer.subscribe(
                list(s.kafka_topics), listener=GroupListener(self._on_revoked, self._on_assigned)
            )
            self._set(Status.STARTING, f"joining consumer group {s.group_id}")
        else:
            await self._assign(link)
        self.log.info(
            "kafka_started", "kafka consumer started", mode=s.fanout_mode, group=s.group_id,
            brokers=",".join(s.kafka_brokers),
        )  # fmt: skip

    # -- broadcast: every partition, by hand -----------------------------------

    async def _assign(self, link: _Link) -> None:
        s = self.settings
        found, missing = await abandon_after(
            discover(link.client, s.kafka_topics), s.kafka_start_timeout, "metadata"
        )
        assigned = await assign_every_partition(
            link.consumer, found, self.offsets, live=self._live, seconds=s.kafka_start_timeout
        )
        self._live = False
        if assigned is not None:
            self.stats.kafka_rebalances += 1
            self._log_assignment(assigned, missing)
        if missing:
            self._set(Status.DEGRADED, f"topics not found: {', '.join(missing)}")
        else:
            self._set(Status.OK)

    # -- shared: the group assigns ---------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.link is not None:
            await self.link.committer.flush()
        self.offsets.forget(revoked)
        self.log.info(
            "kafka_revoked", "partitions revoked", partitions=describe_partitions(revoked)
        )

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self.link is not None
        self.stats.kafka_rebalances += 1
        await resolve_positions(
            self.link.consumer, assigned, self.offsets, self.settings.kafka_start_timeout
        )
        self._log_assignment(assigned, [])
        self._set(Status.OK)

    def _log_assignment(self, assigned: set[TopicPartition], missing: list[str]) -> None:
        positions = {tp: self.offsets.positions[tp] for tp in assigned}
        self.log.info("kafka_positioned", "consuming from", positions=describe(positions))
        self.log.info(
            "kafka_assigned", "partitions assigned", partitions=describe_partitions(assigned),
            missing=",".join(missing) or None,
        )  # fmt: skip

    # -- the loop --------------------------------------------------------------

    async def _consume(self, link: _Link) -> None:
        s = self.settings
        consumer = link.consumer
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + s.kafka_metadata_refresh
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                if s.fanout_mode == "broadcast" and (
                    loop.time() >= next_refresh or not consumer.assignment()
                ):
                    if not consumer.assignment():  # no topic yet: nothing to fetch until a look
                        await asyncio.wait({stopping}, timeout=max(0, next_refresh - loop.time()))
                    next_refresh = loop.time() + s.kafka_metadata_refresh
                    await self._assign(link)
                    continue
                fetch = asyncio.ensure_future(
                    consumer.getmany(
                        timeout_ms=int(s.kafka_fetch_max_wait * 1000) + 100,
                        max_records=s.kafka_max_batch,
                    )
                )
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batches = fetch.result()
                if batches:
                    self._deliver(link, batches)
        finally:
            stopping.cancel()

    def _deliver(self, link: _Link, batches: dict[TopicPartition, list[Any]]) -> None:
        records: list[Record] = []
        timestamps: list[int] = []
        stats = self.stats
        consumer = link.consumer
        for tp, messages in batches.items():
            topic = tp.topic
            for m in messages:
                try:
                    frame = record_frame(topic, m.key, m.partition, m.offset, m.timestamp, m.value)
                except Skipped as skip:
                    self._skipped(topic, m.partition, m.offset, skip.reason)
                    continue
                records.append(Record(topic, m.key, frame))
                timestamps.append(m.timestamp)
            self.offsets.taken(tp, messages[-1].offset + 1, consumer.highwater(tp))
            stats.kafka_messages[topic] += len(messages)
        self.publish(records)
        stats.delay.observe_ms(time.time() * 1000, timestamps)
        # The hub has taken the batch: its offsets may be committed now.
        link.committer.kick()

    def _skipped(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.stats.kafka_invalid[topic] += 1
        self._skip_log.warning(
            "invalid_message", "skipped a message whose value is not JSON",
            topic=topic, partition=partition, offset=offset, reason=reason,
        )  # fmt: skip

    def _set(self, status: Status, reason: str = "") -> None:
        self.readiness.set(status, reason)
        if status is Status.OK:
            self._ready_once = True
