"""Snapshots of the state topics: the store filled from history at start, and taken at once.

See docs/design.md, "State on subscribe". :meth:`Snapshots.start_loading`
runs once, when the live stream is first positioned: for each state topic it
reads every partition from its log start (or ``WS_STATE_LOOKBACK`` back) up to
where the live stream started, into the :class:`~wsrt.state.State` the live
stream keeps current meanwhile (an older record never replaces a newer one,
and a key the live stream deleted stays deleted). Readiness says ``loading
state`` until it is done. :meth:`Snapshots.take` reads the live positions and
the store's frames in one step with no ``await``: the snapshot and the live
stream meet at exactly those positions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from wsrt.aio import abandon_after, detach
from wsrt.config import Settings
from wsrt.filters import Filter
from wsrt.kafka.deliver import envelopes
from wsrt.kafka.history import History
from wsrt.kafka.offsets import Offsets
from wsrt.logs import EventLogger
from wsrt.state import State
from wsrt.wire import Skipped

#: Bytes per write of a snapshot: frames from memory, so a write is a join, never a read.
CHUNK_BYTES = 256 * 1024


class Snapshots:
    def __init__(
        self,
        settings: Settings,
        state: State,
        history: History,
        offsets: Offsets,
        log: EventLogger,
        loading: Callable[[str | None], None],
    ) -> None:
        self.settings = settings
        #: How records become frames, as the live stream makes them.
        self.envelopes = envelopes(settings)
        self.state = state
        self.history = history
        #: Where the live stream stands (read, never written).
        self.live: Mapping[tuple[str, int], int] = offsets.positions
        self.log = log
        #: Says readiness is held (a reason) or free again (``None``).
        self.loading = loading
        self._loaded = {topic: asyncio.Event() for topic in state.topics}
        self._started = False

    def start_loading(self) -> None:
        """Once, in the step the live stream was first positioned: fill the store up to there."""
        if self._started or not self.state.topics:
            return
        self._started = True
        upto = dict(self.live)
        for topic_state in self.state.topics.values():
            topic_state.loading = True
        self.loading(f"loading state: {', '.join(sorted(self.state.topics))}")
        detach(self._load_all(upto))

    async def loaded(self, topic: str) -> None:
        await self._loaded[topic].wait()

    def take(
        self,
        topic: str,
        partitions: Mapping[int, int],
        key: bytes | None,
        match: Filter | None = None,
    ) -> tuple[dict[int, int], list[tuple[bytes, int]], int, bool]:
        """Where the live stream stands now in ``partitions``; the newest value of every key
        there (or of ``key``) that ``match`` passes, in writes of about
        :data:`CHUNK_BYTES`; how many keys; and whether that is every key. No
        ``await``: one step."""
        live = self.live
        positions = {p: live[(topic, p)] for p in sorted(partitions) if (topic, p) in live}
        held = self.state.topics[topic]
        chunks = held.chunks(positions, key, CHUNK_BYTES, match)
        return positions, chunks, sum(n for _, n in chunks), held.complete

    async def _load_all(self, upto: dict[tuple[str, int], int]) -> None:
        started = time.monotonic()
        try:
            for topic, held in self.state.topics.items():
                partitions = {p: o for (t, p), o in upto.items() if t == topic}
                try:
                    await self._load(topic, partitions)
                except Exception as exc:  # the store stays incomplete, and says so
                    held.failed = True
                    self.log.error(
                        "state_load_failed", "loading a state topic failed; its snapshots "
                        "say complete: false", topic=topic, error=repr(exc)[:300],
                    )  # fmt: skip
                held.loading = False
                held.tombstones.clear()
                self._loaded[topic].set()
                self.log.info(
                    "state_loaded", "state topic loaded", topic=topic, keys=len(held.entries),
                    bytes=held.bytes, duration_ms=round((time.monotonic() - started) * 1000),
                )  # fmt: skip
        finally:
            self.loading(None)

    async def _load(self, topic: str, upto: dict[int, int]) -> None:
        consumer = await self.history.consumer()
        try:
            reading = await self._starts(consumer, topic, upto)
            held = self.state.topics[topic]
            frame_of = self.envelopes.frame
            while reading:
                batches, reached = await self.history.fetch(consumer, topic, reading)
                for tp, messages in batches.items():
                    end = upto[tp.partition]
                    for m in messages:
                        if m.offset >= end or m.key is None:
                            continue
                        try:
                            frame, deleted = frame_of(
                                topic, m.key, m.partition, m.offset, m.timestamp, m.value,
                                m.headers,
                            )  # fmt: skip
                        except Skipped:
                            continue
                        key = self.envelopes.route_key(topic, m.key) or m.key  # as live
                        held.apply(
                            key, m.partition, m.offset, None if deleted else frame, m.headers
                        )
                reading.update(reached)
                reading = {p: o for p, o in reading.items() if o < upto[p]}
        finally:
            self.history.release(consumer)

    async def _starts(
        self, consumer: AIOKafkaConsumer, topic: str, upto: dict[int, int]
    ) -> dict[int, int]:
        """Where loading starts per partition: the log start, or ``WS_STATE_LOOKBACK`` back."""
        tps = [TopicPartition(topic, p) for p in sorted(upto)]
        if not tps:
            return {}
        seconds = self.settings.kafka_request_timeout
        earliest = await abandon_after(consumer.beginning_offsets(tps), seconds, "log start")
        starts = {tp.partition: earliest[tp] for tp in tps}
        lookback = self.settings.state_lookback
        if lookback:
            since = int((time.time() - lookback) * 1000)
            found = await abandon_after(
                consumer.offsets_for_times({tp: since for tp in tps}), seconds, "offsets"
            )
            for tp, at in found.items():
                starts[tp.partition] = upto[tp.partition] if at is None else at.offset
        return {p: o for p, o in starts.items() if o < upto[p]}
