"""Tokens taken back before they expire, through a Kafka topic (``WS_AUTH_REVOCATION_TOPIC``).

A record ``{"sub": "alice", "exp": 1765000000}`` revokes every token of
``alice`` issued up to the record's time (so she can sign in again at once),
``{"jti": "…", "exp": …}`` one token; either holds until ``exp`` (epoch
seconds), when the tokens would have expired anyway. :class:`Revocations`
keeps them, Sans-I/O, for the verifier (a revoked token is refused, also on
``refresh``) and for the gateway (open connections of a revoked token close
``1008 token revoked``). :class:`RevocationFeed` reads the topic on every
replica, from its beginning at start, so a restarted server refuses what was
revoked before it ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from wsrt.aio import Backoff, abandon_after
from wsrt.config import Settings
from wsrt.kafka.options import UNAVAILABLE, consumer_options, discover
from wsrt.logs import EventLogger


class Revocations:
    """Revoked subjects (with when) and token ids, each until its ``exp``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        #: subject → (revoked at, until), epoch seconds.
        self.subjects: dict[str, tuple[float, float]] = {}
        #: jti → until.
        self.ids: dict[str, float] = {}

    def add(self, value: bytes | None, timestamp_ms: int) -> bool:
        """A record of the topic; ``True`` when it revokes something not yet expired."""
        try:
            record = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return False
        if not isinstance(record, dict):
            return False
        until = record.get("exp")
        if isinstance(until, bool) or not isinstance(until, int | float):
            return False
        if until <= self.clock():
            return False
        subject, token_id = record.get("sub"), record.get("jti")
        if isinstance(token_id, str) and token_id:
            self.ids[token_id] = max(until, self.ids.get(token_id, 0.0))
            return True
        if isinstance(subject, str) and subject:
            at = timestamp_ms / 1000
            held = self.subjects.get(subject)
            if held is not None:
                at, until = max(at, held[0]), max(until, held[1])
            self.subjects[subject] = (at, until)
            return True
        return False

    def revoked(self, subject: str, token_id: str | None, issued_at: float | None) -> bool:
        """Is a token (its ``sub``, ``jti``, ``iat``) revoked now?"""
        now = self.clock()
        if token_id is not None:
            until = self.ids.get(token_id)
            if until is not None and until > now:
                return True
        held = self.subjects.get(subject)
        if held is None or held[1] <= now:
            return False
        return issued_at is None or issued_at <= held[0]

    def prune(self) -> None:
        now = self.clock()
        self.ids = {k: t for k, t in self.ids.items() if t > now}
        self.subjects = {k: v for k, v in self.subjects.items() if v[1] > now}


class RevocationFeed:
    """Reads ``WS_AUTH_REVOCATION_TOPIC`` into :class:`Revocations`, calling ``revoked()``
    after each batch that revoked something (the gateway closes what it names)."""

    def __init__(
        self,
        settings: Settings,
        revocations: Revocations,
        revoked: Callable[[], None],
        log: EventLogger,
    ) -> None:
        assert settings.auth_revocation_topic is not None
        self.settings = settings
        self.topic = settings.auth_revocation_topic
        self.revocations = revocations
        self.revoked = revoked
        self.log = log
        #: Set once the topic was read to its end at start.
        self.loaded = asyncio.Event()

    async def run(self) -> None:
        """Read for ever; Kafka errors are retried from where the feed stood."""
        s = self.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        positions: dict[TopicPartition, int] = {}
        while True:
            consumer = AIOKafkaConsumer(**self._options())
            try:
                await abandon_after(consumer.start(), s.kafka_start_timeout, "revocation consumer")
                await self._read(consumer, positions)
            except UNAVAILABLE as exc:
                self.log.warning(
                    "revocations_unavailable", "cannot read the revocation topic; retrying",
                    topic=self.topic, error=str(exc)[:300],
                )  # fmt: skip
                await asyncio.sleep(backoff.next())  # a backoff, not synchronisation
            finally:
                await abandon_after(consumer.stop(), s.kafka_stop_timeout, "revocation consumer")

    @staticmethod
    async def _at(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        """Has the feed read every partition up to ``ends``?"""
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _options(self) -> dict[str, Any]:
        options = consumer_options(self.settings)
        options.update(group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=100)
        return options

    async def _read(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        seen = await abandon_after(
            discover(consumer._client, (self.topic,)), self.settings.kafka_request_timeout,
            "revocation topic metadata",
        )  # fmt: skip
        partitions = seen.found.get(self.topic, set())
        if not partitions:
            raise KafkaError(f"topic {self.topic} is not there (no partitions)")
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        for tp in assigned:
            if tp in positions:
                consumer.seek(tp, positions[tp])
        ends = await consumer.end_offsets(assigned)
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            told = False
            for tp, records in batches.items():
                for r in records:
                    told = self.revocations.add(r.value, r.timestamp) or told
                positions[tp] = records[-1].offset + 1
            if told:
                self.revocations.prune()
                self.revoked()
            if not self.loaded.is_set() and await self._at(consumer, ends):
                self.loaded.set()
                self.log.info(
                    "revocations_loaded", "revocation topic read", topic=self.topic,
                    subjects=len(self.revocations.subjects), tokens=len(self.revocations.ids),
                )  # fmt: skip
