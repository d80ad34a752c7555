"""Offset commits for one consumer, in the background, bounded in time.

The source takes a batch, the hub delivers it, then :meth:`Committer.kick`
starts a commit unless one runs: commit only what the hub took (docs/design.md,
"Delivery: once, in order, or told"). A committer belongs to one consumer:
when that consumer is replaced
(broker restart, stall), :meth:`Committer.abandon` hands whatever it had in
flight back to the shared :class:`~wsrt.kafka.offsets.Offsets` and the
successor commits it. Nothing ever awaits a predecessor's commit: aiokafka can
retry a commit forever against a coordinator that is gone.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from wsrt.aio import Abandoned, abandon_after
from wsrt.kafka.offsets import Offsets, describe
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats


class Committer:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        offsets: Offsets,
        log: EventLogger,
        stats: Stats,
        timeout: float,
    ) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.log = log
        self.stats = stats
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[TopicPartition, int] = {}
        self._errors = RateLimited(log)

    def kick(self) -> None:
        """Commit what the hub took, in the background, unless a commit runs already."""
        if self.offsets.pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._loop(), name="wsrt-kafka-commit")

    async def _loop(self) -> None:
        while self.offsets.pending:
            if not await self._commit_once():
                return  # failed: the next kick retries with newer offsets

    async def _commit_once(self) -> bool:
        offsets = self.offsets.to_commit(self.consumer.assignment())
        if not offsets:
            return True
        self._in_flight = offsets
        try:
            await abandon_after(self.consumer.commit(offsets), self.timeout, "offset commit")
        except (KafkaError, Abandoned) as exc:
            self.offsets.commit_failed(offsets)
            self._errors.warning("commit_failed", "offset commit failed", error=str(exc)[:300])
            return False
        finally:
            self._in_flight = {}
        self.stats.kafka_last_commit = time.time()
        self.log.debug("kafka_committed", "offsets committed", offsets=describe(offsets))
        return True

    async def flush(self) -> bool:
        """A final commit (revoke, shutdown), bounded by the commit timeout; True when done."""
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
            if not done:
                self.abandon()
                return False
        return await self._commit_once()

    def abandon(self) -> None:
        """The consumer is going: give what was in flight back for the successor to commit."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        if self._in_flight:
            self.offsets.commit_failed(self._in_flight)
            self._in_flight = {}
