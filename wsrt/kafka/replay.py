"""Replays: history from Kafka to one client, paced by its socket, then the live stream.

A subscription with a start field (design section 10) is installed in the hub
behind a :class:`~wsrt.hub.Gate` that holds back every partition the live
stream serves, and its :class:`ReplayJob` runs here: wait for one of
``WS_REPLAY_CONCURRENCY`` slots, look up the partitions' bounds, plan the
starts (:mod:`wsrt.replay`), reply ``subscribed`` with ``positions``, then
read each partition with a pooled consumer of its own, only while the
client's transport takes data.

The handover holds by construction, not by timing. The live stream's
position ``L`` of a partition (the offset after the last record the hub took,
from :class:`~wsrt.kafka.offsets.Offsets`) and the replay's position ``R``
(after the last record it delivered) are compared, and the gate changed, in
one event-loop step with no ``await`` in between; the hub's publish is
synchronous too, so ``L`` cannot move during the comparison. While
``R < L`` the live records of the partition stay held and the replay reads
on. As soon as ``R >= L``, :meth:`Gate.join <wsrt.hub.Gate.join>` lets live
records through from ``R`` on: the live stream has published exactly the
offsets below ``L``, every later live record has an offset of at least ``L``,
the replay delivered ``[start, R)``, and the gate drops live offsets in
``[L, R)``. So each offset from the start on reaches the client once, in
order, and the live stream continues with no gap.

A subscribe can arrive before the live stream is positioned: a server accepts
connections while its consumer starts, and a client that resumes after a
restart is typically there first. Its gate then holds every partition, and
:meth:`Replayer.live_placed`, called by the source in the very step that
positioned the partitions (before it publishes anything), fills in the job's
``live_then`` and names the held partitions; the replay plans only then.
Without that it would find no live partition to read and answer
``complete``, and the records produced while no server ran would be missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition

from wsrt import protocol
from wsrt.aio import Backoff, abandon_after, detach
from wsrt.config import Settings
from wsrt.hub import Gate, Outlet
from wsrt.kafka.deliver import DECODE_ERRORS
from wsrt.kafka.options import UNAVAILABLE, consumer_options, discover, metadata_client
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats
from wsrt.protocol import Channel, ProtocolError, Since, SinceTime, Start
from wsrt.replay import Bounds, KeyScan, Plan, is_keyed_rewind, plan, scan_window
from wsrt.wire import Skipped, record_frame

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


@dataclass(eq=False)
class ReplayJob:
    """One subscription replaying, as the gateway hands it over."""

    outlet: Outlet
    #: Resolves when the client's transport takes data (at once if it does).
    writable: Callable[[], Awaitable[None]]
    channel: Channel
    start: Start
    request_id: protocol.RequestId
    gate: Gate
    #: Partition → where the live stream stood when the subscribe arrived.
    live_then: dict[int, int]
    #: Send a control reply (``False``: the write failed, the outlet is finished).
    reply: Callable[[bytes], bool]
    #: The gate settled: move the subscription onto the ordinary route.
    settle: Callable[[], None]
    subject: str | None = None
    #: Partition → next offset to read, for partitions still replaying.
    pending: dict[int, int] = field(default_factory=dict)
    replied: bool = False
    messages: int = 0
    #: Holds one of the ``WS_REPLAY_CONCURRENCY`` slots now.
    slot: bool = False


class Replayer:
    """Runs replay jobs: at most ``WS_REPLAY_CONCURRENCY`` reading at once, the rest queued."""

    def __init__(
        self,
        settings: Settings,
        live: Mapping[tuple[str, int], int],
        log: EventLogger,
        stats: Stats,
    ) -> None:
        self.settings = settings
        #: The live stream's positions (the source's :class:`Offsets`), read, never written.
        self.live = live
        self.log = log
        #: Clients can ask for history that is gone as often as they like.
        self._incomplete = RateLimited(log)
        self.stats = stats
        self._slots = asyncio.Semaphore(settings.replay_concurrency)
        self.rate = RateLimit(settings.replay_rate)
        self._idle: list[AIOKafkaConsumer] = []
        self._client: AIOKafkaClient | None = None
        #: Set once the live stream has been positioned (:meth:`live_placed`).
        self._placed = asyncio.Event()
        #: Jobs whose subscribe came before that: their gates hold every partition.
        self._unplaced: set[ReplayJob] = set()

    @property
    def placed(self) -> bool:
        """Is the live stream positioned (so :meth:`live_positions` says where it stands)?"""
        return self._placed.is_set()

    def live_positions(self, topic: str) -> dict[int, int]:
        """Where the live stream stands in each partition of ``topic`` it serves."""
        return {p: offset for (t, p), offset in list(self.live.items()) if t == topic}

    def track(self, job: ReplayJob) -> None:
        """Note a job installed before the live stream was positioned (call in the same step)."""
        if not self.placed:
            self._unplaced.add(job)

    def live_placed(self) -> None:
        """The source positioned its partitions and has published nothing since.

        Called in that same step, so the waiting jobs' ``live_then`` is exactly
        where the live stream starts, and their gates have held everything.
        """
        for job in self._unplaced:
            job.live_then.update(self.live_positions(job.channel.topic))
            job.gate.hold(job.live_then)
        self._unplaced.clear()
        self._placed.set()

    def live_unplaced(self) -> None:
        """Shared mode: the group revoked partitions; where the live stream stands is
        unknown until it assigns again. Replays hand nothing over meanwhile, and a
        new one waits, its gate holding every partition, as at start."""
        self._placed.clear()

    async def run(self, job: ReplayJob) -> None:
        """Replay ``job`` until it has handed over to the live stream.

        Raises :class:`ProtocolError` for a request Kafka shows to be wrong (an
        unknown partition) before anything was sent. Kafka errors are retried
        with backoff from where the replay stood. While the client's transport
        is paused the job gives its slot and consumer back: a client that stops
        reading mid-replay holds neither.
        """
        stats = self.stats
        try:
            await self._placed.wait()  # at once, but while a restarted server starts
        finally:
            self._unplaced.discard(job)
        started = time.monotonic()
        backoff = Backoff(self.settings.kafka_backoff_initial, self.settings.kafka_backoff_max)
        try:
            while True:
                await self._take_slot(job)
                consumer = await self._consumer()
                try:
                    paused = await self._run(consumer, job)
                except UNAVAILABLE as exc:
                    self._discard(consumer)
                    self._give_slot(job)
                    delay = backoff.next()
                    self.log.warning(
                        "replay_kafka_error", "kafka error during a replay; retrying",
                        channel=job.channel.name, error=str(exc)[:300], retry_in_s=round(delay, 2),
                    )  # fmt: skip
                    await asyncio.sleep(delay)  # a backoff, not synchronisation
                    continue
                except BaseException:
                    self._discard(consumer)
                    raise
                self._release(consumer)
                self._give_slot(job)
                if not paused:
                    break
                while job.outlet.paused and not job.outlet.closed:
                    await job.writable()
        except BaseException:
            stats.replays_cancelled += 1
            raise
        finally:
            self._give_slot(job)
        if job.pending or not job.replied or job.outlet.closed:
            stats.replays_cancelled += 1  # the client went away before the handover
            return
        stats.replays_completed += 1
        seconds = time.monotonic() - started
        self.log.debug(
            "replay_caught_up", "replay handed over to the live stream", subject=job.subject,
            channel=job.channel.name, messages=job.messages, duration_ms=round(seconds * 1000),
            rate=round(job.messages / seconds) if seconds > 0 else None,
        )  # fmt: skip

    async def _take_slot(self, job: ReplayJob) -> None:
        """Wait for one of ``WS_REPLAY_CONCURRENCY`` slots (counted as waiting meanwhile)."""
        if self._slots.locked():
            self.log.debug(
                "replay_waiting", "replay waiting for a slot", subject=job.subject,
                channel=job.channel.name, running=self.settings.replay_concurrency,
            )  # fmt: skip
        self.stats.replays_waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.stats.replays_waiting -= 1
        job.slot = True
        self.stats.replays_running += 1

    def _give_slot(self, job: ReplayJob) -> None:
        if job.slot:
            job.slot = False
            self.stats.replays_running -= 1
            self._slots.release()

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

    # -- one attempt -------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer, job: ReplayJob) -> bool:
        """Plan and reply (the first time), then read; ``True`` when it stopped for a
        paused transport and must go on once the client takes data."""
        if not job.replied:
            planned = await self._plan(consumer, job)
            job.pending = dict(planned.starts)
            if not planned.complete:
                self.stats.replays_incomplete += 1
                self._incomplete.warning(
                    "replay_incomplete", "requested history is not all in Kafka any more "
                    "(retention) or over WS_REPLAY_MAX_MESSAGES; starting at the earliest kept",
                    subject=job.subject, channel=job.channel.name, start=_describe(job.start),
                    positions=_positions(planned.starts),
                )  # fmt: skip
            job.replied = True
            reply = protocol.subscribed_reply(
                job.channel.name, job.request_id, planned.starts, planned.complete
            )
            if not job.reply(reply):
                return False
            self.log.debug(
                "replay_started", "replay started", subject=job.subject, channel=job.channel.name,
                positions=_positions(planned.starts), complete=planned.complete,
            )  # fmt: skip
        return await self._read(consumer, job)

    async def _plan(self, consumer: AIOKafkaConsumer, job: ReplayJob) -> Plan:
        s = self.settings
        topic = job.channel.topic
        seconds = s.kafka_request_timeout
        known = await self._partitions(topic)
        start = job.start
        if isinstance(start, Since):
            unknown = sorted(set(start.offsets) - known)
            if unknown:
                raise ProtocolError(
                    protocol.BAD_REQUEST,
                    f"'since' names partitions that {topic} does not have: "
                    + ", ".join(map(str, unknown[:10])),
                    job.request_id,
                    job.channel.name,
                )
        # Only what this replica serves (shared mode: its share) is replayed.
        tps = [TopicPartition(topic, p) for p in sorted(job.live_then) if p in known]
        if not tps:
            return Plan({}, True)
        earliest = await abandon_after(consumer.beginning_offsets(tps), seconds, "log start")
        latest = await abandon_after(consumer.end_offsets(tps), seconds, "end offsets")
        bounds = {tp.partition: Bounds(earliest[tp], latest[tp]) for tp in tps}
        if is_keyed_rewind(start, job.channel.key):
            return await self._scan(consumer, job, bounds)
        for_time = None
        if isinstance(start, SinceTime):
            found = await abandon_after(
                consumer.offsets_for_times({tp: start.ms for tp in tps}), seconds, "offsets"
            )
            for_time = {tp.partition: (o.offset if o else None) for tp, o in found.items()}
        return plan(start, bounds, job.live_then, s.replay_max_messages, for_time)

    async def _scan(
        self, consumer: AIOKafkaConsumer, job: ReplayJob, bounds: dict[int, Bounds]
    ) -> Plan:
        """Keyed ``rewind``: find the last N records of the key among the newest records."""
        start = job.start
        assert isinstance(start, protocol.Rewind)
        window = scan_window(bounds, self.settings.replay_max_messages)
        ends = {p: b.latest for p, b in bounds.items()}
        scan = KeyScan(start.count, window, ends)
        key = job.gate.key
        reading = {p: o for p, o in window.starts.items() if o < ends[p]}
        topic = job.channel.topic
        while reading:
            batches, reached = await self._fetch(consumer, topic, reading)
            for tp, messages in batches.items():
                p = tp.partition
                for m in messages:
                    if m.offset < ends[p] and m.key == key:
                        scan.matched(p, m.offset)
            reading.update(reached)
            reading = {p: o for p, o in reading.items() if o < ends[p]}
        consumer.assign([])  # the replay proper positions it afresh
        return scan.plan()

    # -- reading -----------------------------------------------------------------

    async def _read(self, consumer: AIOKafkaConsumer, job: ReplayJob) -> bool:
        """Deliver history until the handover; ``True`` when the transport paused first.

        Paced by the client: history is written only while its transport takes
        data (checked in the same step as the write), so it never waits in the
        outlet and never counts as live backlog.
        """
        topic = job.channel.topic
        key = job.gate.key
        outlet = job.outlet
        while True:
            self._join_caught_up(job)
            if not job.pending or outlet.closed:
                return False
            if outlet.paused:
                return True
            batches, reached = await self._fetch(consumer, topic, job.pending)
            frames: list[bytes] = []
            for messages in batches.values():
                for m in messages:
                    if key is not None and m.key != key:
                        continue
                    try:
                        frames.append(
                            record_frame(topic, m.key, m.partition, m.offset, m.timestamp, m.value)
                        )
                    except Skipped:
                        continue  # invalid records are the only ones missing (section 9)
            if outlet.closed:
                return False
            if outlet.paused:
                return True  # read again from the same positions once it takes data
            if frames and not outlet.deliver(b"".join(frames), len(frames)):
                return False  # the write raised: the gateway closes the connection
            job.pending.update(reached)
            job.messages += len(frames)
            self.stats.replay_messages += len(frames)
            if batches:
                # Reads from the consumer's buffer do not yield: let live publishes in.
                await asyncio.sleep(0)

    def _join_caught_up(self, job: ReplayJob) -> None:
        """Hand each partition whose replay reached the live stream over to it.

        While a shared-mode rebalance is under way nothing is handed over: the
        replay reads on, and a partition that comes back continues where the
        live stream stood. One that went to another member ends here, and the
        client is told where to resume it (``revoked``).
        """
        if not self.placed:
            return
        topic = job.channel.topic
        for p, replayed in list(job.pending.items()):
            live = self.live.get((topic, p))
            if live is None:
                job.gate.join(p, None)
                del job.pending[p]
                if job.replied:
                    job.reply(protocol.revoked_notice(job.channel.name, p, replayed))
            elif replayed >= live:
                job.gate.join(p, replayed if replayed > live else None)
                del job.pending[p]
        if not job.pending and job.gate.settled:
            job.settle()

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

    # -- the consumer pool -----------------------------------------------------

    async def _consumer(self) -> AIOKafkaConsumer:
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

    def _release(self, consumer: AIOKafkaConsumer) -> None:
        consumer.assign([])
        self._idle.append(consumer)

    def _discard(self, consumer: AIOKafkaConsumer) -> None:
        detach(abandon_after(consumer.stop(), self.settings.kafka_stop_timeout, "replay consumer"))

    async def _partitions(self, topic: str) -> set[int]:
        seconds = self.settings.kafka_request_timeout
        if self._client is None:
            client = metadata_client(self.settings)
            await abandon_after(client.bootstrap(), self.settings.kafka_start_timeout, "metadata")
            self._client = client
        found, _ = await abandon_after(discover(self._client, (topic,)), seconds, "metadata")
        return found.get(topic, set())


def _positions(starts: Mapping[int, int]) -> str:
    return ",".join(f"{p}={o}" for p, o in sorted(starts.items())) or "-"


def _describe(start: Start) -> str:
    if isinstance(start, Since):
        return "since " + _positions(start.offsets)
    if isinstance(start, SinceTime):
        return f"since_time {start.ms}"
    return f"rewind {start.count}"
