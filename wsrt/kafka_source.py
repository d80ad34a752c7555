"""The Kafka side: fetch batches, encode each record once, hand them to the hub.

Offsets are committed only for records the hub has taken (``last.offset + 1``
per partition), by a background commit so fetching never waits on the
coordinator; a final commit runs on revoke and on shutdown.

Two fan-out modes (design section 6):

* ``broadcast``: this replica assigns itself every partition of every topic,
  in its own group ``<group>-<replica>`` (used only for commits, so tooling
  shows its lag), starting at the end of each partition. Partitions that
  appear later are read from their beginning.
* ``shared``: all replicas subscribe in one group and split the partitions,
  resuming from committed offsets.

The consumer starts even when Kafka is unreachable: it retries with backoff
and ``/healthz`` says why it is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from wsrt import health
from wsrt.config import Settings
from wsrt.hub import Hub, Record
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats
from wsrt.protocol import encode_envelope, text_frame

_T = TypeVar("_T")

#: Reconnect backoff: first wait, and the cap it doubles up to.
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
#: How long a consumer may take to leave its group and close.
STOP_TIMEOUT_SECONDS = 5.0
#: How long a consumer may take to connect before it is retried.
START_TIMEOUT_SECONDS = 15.0


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka client options shared by every wsrt Kafka client (TLS, SASL, brokers)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.kafka_brokers),
        "security_protocol": settings.kafka_security_protocol,
        "client_id": f"wsrt-{settings.replica_id}",
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[set[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._on_assigned(set(assigned))


class KafkaSource:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        readiness: health.Readiness,
        log: EventLogger,
        stats: Stats,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.hub = hub
        self.readiness = readiness
        self.log = log
        self.consumer: AIOKafkaConsumer | None = None
        self.consumed = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._commit_task: asyncio.Task[None] | None = None
        #: Next offset to read per partition, for records the hub took.
        self._positions: dict[TopicPartition, int] = {}
        #: Partitions known at the first assignment start at their end (live
        #: data); partitions found later are read from their beginning.
        self._assigned_once = False
        self._invalid_log = RateLimited(log)
        self._error_log = RateLimited(log)

    # -- lifecycle -------------------------------------------------------------

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
        backoff = BACKOFF_INITIAL_SECONDS
        try:
            while not self._stopping.is_set():
                try:
                    await self._start()
                    backoff = BACKOFF_INITIAL_SECONDS
                    await self._consume()
                except (KafkaError, OSError) as exc:
                    reason = f"kafka unavailable: {type(exc).__name__}: {exc}"
                    self._set_health(health.DEGRADED if self.consumed else health.STARTING, reason)
                    self._error_log.warning(
                        "kafka_error", "kafka error; retrying", error=str(exc)[:300],
                        retry_in_s=backoff,
                    )  # fmt: skip
                    await self._close_consumer(commit=False)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
        finally:
            await self._close_consumer(commit=True)

    async def _start(self) -> None:
        s = self.settings
        self._set_health(health.STARTING, f"connecting to kafka at {','.join(s.kafka_brokers)}")
        consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.kafka_offset_reset if s.fanout_mode == "shared" else "latest",
            fetch_max_wait_ms=max(1, int(s.kafka_fetch_max_wait * 1000)),
            metadata_max_age_ms=int(s.kafka_metadata_refresh * 1000),
        )
        self.consumer = consumer
        # A broker that accepts connections but does not answer yet (starting
        # up) can keep start() waiting: give up and retry with backoff.
        if not await self._bounded(consumer.start(), START_TIMEOUT_SECONDS):
            raise KafkaError(
                f"no answer from {','.join(s.kafka_brokers)} within {START_TIMEOUT_SECONDS:g}s"
            )
        if s.fanout_mode == "shared":
            consumer.subscribe(
                list(s.kafka_topics), listener=_Listener(self._on_revoked, self._on_assigned)
            )
            self._set_health(health.STARTING, f"joining consumer group {s.group_id}")
        else:
            await self._assign_all()
        self.log.info(
            "kafka_started", "kafka consumer started", mode=s.fanout_mode, group=s.group_id,
            brokers=",".join(s.kafka_brokers),
        )  # fmt: skip

    async def _close_consumer(self, *, commit: bool) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        try:
            if commit:
                # A broker that is gone would keep the commit retrying: leave
                # half of the shutdown budget for leaving the group.
                async with asyncio.timeout(self.settings.shutdown_timeout / 2):
                    await self._flush_commits(consumer)
        except TimeoutError:
            self.log.warning("commit_failed", "final offset commit timed out; Kafka unreachable?")
        finally:
            # aiokafka's stop() can wait a long time for a broker that is gone,
            # and shields parts of itself from cancellation: it runs as its own
            # task, left behind if it takes too long, so that a replacement
            # consumer (or the exit) does not wait with it.
            try:
                if not await self._bounded(consumer.stop(), STOP_TIMEOUT_SECONDS):
                    self.log.warning("kafka_stop", "kafka consumer did not stop in time; left")
            except (KafkaError, OSError) as exc:
                self.log.warning(
                    "kafka_stop", "kafka consumer stopped with an error", error=str(exc)
                )

    async def _bounded(self, coro: Awaitable[None], seconds: float) -> bool:
        """Await ``coro`` for at most ``seconds``; False (and it goes on alone) if longer."""
        try:
            await self._within(coro, seconds, "")
        except _Late:
            return False
        return True

    async def _within(self, coro: Awaitable[_T], seconds: float, what: str) -> _T:
        """The result of ``coro``, or :class:`KafkaError` after ``seconds``.

        aiokafka shields parts of its coroutines from cancellation, so a
        timeout cannot interrupt them: they run as tasks that are left behind.
        Their errors are re-raised; one cancelled from inside is a KafkaError.
        """
        task = asyncio.ensure_future(coro)
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            raise _Late(f"{what or 'kafka call'}: no answer within {seconds:g}s")
        if task.cancelled():
            raise KafkaError("the Kafka client was cancelled from within")
        return task.result()

    # -- broadcast mode: every partition, assigned by hand ---------------------

    async def _assign_all(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        # consumer.topics() returns names only; the partitions come from the
        # same metadata request on the consumer's client.
        cluster = await self._within(
            consumer._client.fetch_all_metadata(), START_TIMEOUT_SECONDS, "metadata"
        )
        wanted: set[TopicPartition] = set()
        missing = []
        for topic in self.settings.kafka_topics:
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                missing.append(topic)
                continue
            wanted.update(TopicPartition(topic, p) for p in partitions)
        current = consumer.assignment()
        if wanted != current:
            await self._flush_commits(consumer)
            consumer.assign(list(wanted))
            for tp in wanted:
                position = self._positions.get(tp)
                if position is not None:
                    consumer.seek(tp, position)
                elif self._assigned_once:
                    # A partition that appeared while we run: all of it is new.
                    await consumer.seek_to_beginning(tp)
                else:
                    await consumer.seek_to_end(tp)
            for tp in wanted:  # resolve lazily reset positions before saying "ready"
                self._positions[tp] = await self._within(
                    consumer.position(tp), START_TIMEOUT_SECONDS, f"position of {tp}"
                )
            self.log.info(
                "kafka_positioned", "consuming from",
                positions=_offsets({tp: self._positions[tp] for tp in wanted}),
            )  # fmt: skip
            self.stats.kafka_rebalances += 1
            self.log.info(
                "kafka_assigned", "partitions assigned",
                partitions=_describe(wanted), missing=",".join(missing) or None,
            )  # fmt: skip
        self._assigned_once = True
        if missing:
            self._set_health(health.DEGRADED, f"topics not found: {', '.join(missing)}")
        else:
            self._set_health(health.OK)

    # -- shared mode: the group assigns ----------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.consumer is not None:
            await self._flush_commits(self.consumer)
        for tp in revoked:
            self._positions.pop(tp, None)
            self.stats.kafka_lag.pop((tp.topic, tp.partition), None)
        self.log.info("kafka_revoked", "partitions revoked", partitions=_describe(revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Resolve where each partition resumes (committed offset, or the reset
        # policy) before anything is fetched, so readiness means "positioned".
        consumer = self.consumer
        assert consumer is not None
        self.stats.kafka_rebalances += 1
        for tp in assigned:
            self._positions[tp] = await consumer.position(tp)
        self.log.info(
            "kafka_positioned", "consuming from",
            positions=_offsets({tp: self._positions[tp] for tp in assigned}),
        )  # fmt: skip
        self._set_health(health.OK)

    # -- the loop --------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        s = self.settings
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + s.kafka_metadata_refresh
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                if s.fanout_mode == "broadcast" and not consumer.assignment():
                    # No topic exists yet: nothing to fetch until the next look.
                    await asyncio.wait({stopping}, timeout=max(0.0, next_refresh - loop.time()))
                    next_refresh = loop.time() + s.kafka_metadata_refresh
                    await self._assign_all()
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
                    self._publish(batches)
                if s.fanout_mode == "broadcast" and loop.time() >= next_refresh:
                    next_refresh = loop.time() + s.kafka_metadata_refresh
                    await self._assign_all()
        finally:
            stopping.cancel()

    def _publish(self, batches: dict[TopicPartition, list[Any]]) -> None:
        records: list[Record] = []
        timestamps: list[int] = []
        stats = self.stats
        for tp, messages in batches.items():
            topic = tp.topic
            invalid = 0
            for m in messages:
                payload = encode_envelope(topic, m.key, m.partition, m.offset, m.timestamp, m.value)
                if payload is None:
                    invalid += 1
                    self._invalid_log.warning(
                        "invalid_message", "skipped a message whose value is not JSON",
                        topic=topic, partition=m.partition, offset=m.offset,
                    )  # fmt: skip
                    continue
                records.append(Record(topic, m.key, text_frame(payload)))
                timestamps.append(m.timestamp)
            next_offset = messages[-1].offset + 1
            self._positions[tp] = next_offset
            self._uncommitted[tp] = next_offset
            stats.kafka_messages[topic] += len(messages)
            if invalid:
                stats.kafka_invalid[topic] += invalid
        self.hub.publish(records)
        stats.delay.observe_ms(time.time() * 1000, timestamps)
        self.consumed += len(records)
        consumer = self.consumer
        if consumer is not None:
            for tp in batches:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    stats.kafka_lag[(tp.topic, tp.partition)] = highwater - self._positions[tp]
        # The hub has taken the batch: its offsets may be committed now.
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = asyncio.create_task(self._commit_loop(self.consumer))

    # -- commits ---------------------------------------------------------------

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        # Stop when the consumer was replaced (restart): its successor commits.
        while self._uncommitted and self._is_current(consumer):
            offsets, self._uncommitted = self._uncommitted, {}
            assignment = consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if tp in assignment}
            if not offsets:
                continue
            try:
                await consumer.commit(offsets)
                self.stats.kafka_last_commit = time.time()
                self.log.debug("kafka_committed", "offsets committed", offsets=_offsets(offsets))
            except KafkaError as exc:
                # A later commit carries newer offsets; a revoked partition's
                # new owner resumes from the last successful one.
                self._error_log.warning("commit_failed", "offset commit failed", error=str(exc))

    def _is_current(self, consumer: AIOKafkaConsumer) -> bool:
        return self.consumer is consumer

    async def _flush_commits(self, consumer: AIOKafkaConsumer) -> None:
        task = self._commit_task
        if task is not None and not task.done():
            await asyncio.shield(task)
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            assignment = consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if tp in assignment}
            if offsets:
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:
                    self.log.warning("commit_failed", "final offset commit failed", error=str(exc))

    def _set_health(self, status: str, reason: str = "") -> None:
        if self.readiness.set(status, reason):
            level = logging.INFO if status in (health.OK, health.STARTING) else logging.WARNING
            self.log.log(
                level, "readiness", f"readiness {status}", status=status, reason=reason or None
            )


class _Late(KafkaError):  # type: ignore[misc]
    """A Kafka call that did not answer in time (it goes on, abandoned)."""


def _describe(partitions: Iterable[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return " ".join(f"{t}[{','.join(map(str, sorted(p)))}]" for t, p in sorted(by_topic.items()))


def _offsets(offsets: dict[TopicPartition, int]) -> str:
    """``topic[partition]=offset`` pairs, sorted, for logs."""
    return " ".join(f"{tp.topic}[{tp.partition}]={o}" for tp, o in sorted(offsets.items()))
