"""Replays: history from Kafka to one client, paced by its socket, then the live stream.

A subscription with a start field (docs/design.md, "Resume and replay") is installed in the hub
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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from wsrt import protocol
from wsrt.aio import Backoff, TickBudget
from wsrt.config import Settings
from wsrt.filters import View
from wsrt.hub import Gate
from wsrt.kafka.deliver import envelopes
from wsrt.kafka.history import History
from wsrt.kafka.options import UNAVAILABLE
from wsrt.kafka.snapshot import Snapshots
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats
from wsrt.outlet import Outlet
from wsrt.protocol import Channel, Since, SinceTime, Snapshot, Start
from wsrt.replay import Plan
from wsrt.wire import Skipped

#: Bytes all snapshots together write per event-loop iteration: about a millisecond of
#: socket writes, so the live stream's steps never wait long behind a snapshot storm.
SNAPSHOT_BYTES_PER_TICK = 1024 * 1024


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
    #: A snapshot's chunks (bytes, frames) still to write, then its ``snapshot_end``.
    snapshot: deque[tuple[bytes, int]] | None = None
    snapshot_end: bytes = b""
    #: When the job was made (monotonic seconds): snapshots are timed from it.
    created: float = field(default_factory=time.monotonic)

    async def until_writable(self) -> None:
        """Return once the client's transport takes data, or the client is gone."""
        while self.outlet.paused and not self.outlet.closed:
            await self.writable()

    async def write_snapshot(self, budget: TickBudget, stats: Stats) -> bool | None:
        """The snapshot's frames, paced by the socket and by ``budget`` (shared by every
        snapshot, so that together they never make one event-loop iteration long), then
        ``snapshot_end``: ``None`` when written, ``True`` when the transport paused first,
        ``False`` when the client is gone."""
        chunks, outlet = self.snapshot, self.outlet
        assert chunks is not None
        while chunks:
            await budget.take(len(chunks[0][0]))
            if outlet.closed:
                return False
            if outlet.paused:
                return True
            data, count = chunks.popleft()  # joined once for every client of this store state
            if not outlet.deliver(data, count):
                return False
        self.snapshot = None
        stats.snapshot_seconds[self.channel.topic] += time.monotonic() - self.created
        return None if self.reply(self.snapshot_end) else False


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
        #: How records become frames, as the live stream makes them.
        self.envelopes = envelopes(settings)
        #: The live stream's positions (the source's :class:`Offsets`), read, never written.
        self.live = live
        self.log = log
        #: Clients can ask for history that is gone as often as they like.
        self._incomplete = RateLimited(log)
        self.stats = stats
        self._slots = asyncio.Semaphore(settings.replay_concurrency)
        #: The Kafka side: bounds, reads, the consumer pool.
        self.history = History(settings)
        #: Set once the live stream has been positioned (:meth:`live_placed`).
        self._placed = asyncio.Event()
        #: Jobs whose subscribe came before that: their gates hold every partition.
        self._unplaced: set[ReplayJob] = set()
        #: The state topics' loader and snapshots (set by the app when there are any).
        self.snapshots: Snapshots | None = None
        #: What all snapshots together may write per event-loop iteration.
        self.budget = TickBudget(SNAPSHOT_BYTES_PER_TICK)

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
        if self.snapshots is not None:
            self.snapshots.start_loading()  # up to exactly where the live stream starts

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
        reading mid-replay holds neither. A snapshot without ``since`` is
        written from memory with neither (all of them together at most
        :data:`SNAPSHOT_BYTES_PER_TICK` per event-loop iteration); only the
        records published meanwhile are read from Kafka.
        """
        stats = self.stats
        try:
            await self._placed.wait()  # at once, but while a restarted server starts
        finally:
            self._unplaced.discard(job)
        started = time.monotonic()
        backoff = Backoff(self.settings.kafka_backoff_initial, self.settings.kafka_backoff_max)
        try:
            if isinstance(job.start, Snapshot) and job.start.after is None:
                await self._snapshot(job)  # from memory: no consumer
                self._join_caught_up(job)
            while not job.replied or job.pending or job.snapshot is not None:
                await self._take_slot(job)
                consumer = await self.history.consumer()
                try:
                    paused = await self._run(consumer, job)
                except UNAVAILABLE as exc:
                    self.history.discard(consumer)
                    self._give_slot(job)
                    delay = backoff.next()
                    self.log.warning(
                        "replay_kafka_error", "kafka error during a replay; retrying",
                        channel=job.channel.name, error=str(exc)[:300], retry_in_s=round(delay, 2),
                    )  # fmt: skip
                    await asyncio.sleep(delay)  # a backoff, not synchronisation
                    continue
                except BaseException:
                    self.history.discard(consumer)
                    raise
                self.history.release(consumer)
                self._give_slot(job)
                if not paused:
                    break
                await job.until_writable()
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

    async def _snapshot(self, job: ReplayJob) -> None:
        """Take a snapshot, answer and write it, paced by the socket; then only the records
        published meanwhile are left (``job.pending``), for the replay that follows."""
        gone = not self._reply(job, await self._take_snapshot(job))
        while not gone and job.snapshot is not None:
            written = await job.write_snapshot(self.budget, self.stats)  # True: paused
            if written is True:
                await job.until_writable()
            gone = written is False
        if gone:
            job.pending.clear()  # the client went away
            job.snapshot = None

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
        await self.history.close()

    # -- one attempt -------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer, job: ReplayJob) -> bool:
        """Plan and reply (the first time), then read; ``True`` when it stopped for a
        paused transport and must go on once the client takes data."""
        if not job.replied:
            start = job.start
            planned = None
            if not isinstance(start, Snapshot) or start.after is not None:
                since = start.after if isinstance(start, Snapshot) else start
                assert since is not None
                planned = await self.history.plan(
                    consumer, job.channel, since, job.request_id, job.live_then
                )
            if isinstance(start, Snapshot) and (planned is None or not planned.complete):
                planned = await self._take_snapshot(job)  # state instead of missing history
            assert planned is not None
            if not self._reply(job, planned):
                return False
        return await self._read(consumer, job)

    async def _take_snapshot(self, job: ReplayJob) -> Plan:
        """The newest value per key now, and the live positions it stands at (one step)."""
        assert self.snapshots is not None
        topic = job.channel.topic
        await self.snapshots.loaded(topic)
        positions, chunks, keys, complete = self.snapshots.take(
            topic, job.live_then, job.gate.key, job.gate.match
        )
        job.snapshot = deque(chunks)
        job.snapshot_end = protocol.snapshot_end_reply(job.channel.name, keys, complete)
        self.stats.snapshots[topic] += 1
        self.stats.snapshot_keys[topic] += keys
        return Plan(positions, complete)

    def _reply(self, job: ReplayJob, planned: Plan) -> bool:
        job.pending = dict(planned.starts)
        if not planned.complete and job.snapshot is None:
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
            snapshot=None if job.snapshot is None else len(job.snapshot),
        )  # fmt: skip
        return True

    # -- reading -----------------------------------------------------------------

    async def _read(self, consumer: AIOKafkaConsumer, job: ReplayJob) -> bool:
        """Deliver history until the handover; ``True`` when the transport paused first.

        Paced by the client: history is written only while its transport takes
        data (checked in the same step as the write), so it never waits in the
        outlet and never counts as live backlog.
        """
        if job.snapshot is not None:
            written = await job.write_snapshot(self.budget, self.stats)
            if written is not None:
                return written
        topic = job.channel.topic
        key, match = job.gate.key, job.gate.match
        frame_of = self.envelopes.frame
        route_key = self.envelopes.route_key
        outlet = job.outlet
        while True:
            self._join_caught_up(job)
            if not job.pending or outlet.closed:
                return False
            if outlet.paused:
                return True
            batches, reached = await self.history.fetch(consumer, topic, job.pending)
            frames: list[bytes] = []
            for messages in batches.values():
                for m in messages:
                    routed = route_key(topic, m.key) if key or match else m.key
                    if key is not None and routed != key:
                        continue
                    try:
                        frame, _ = frame_of(
                            topic, m.key, m.partition, m.offset, m.timestamp, m.value, m.headers
                        )
                    except Skipped:
                        continue  # invalid records are the only ones missing ("Never silent")
                    if match is None or match.test(
                        View(routed, m.partition, m.timestamp, m.headers, frame)
                    ):  # a record the filter passes over is not a gap
                        frames.append(frame)
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


def _positions(starts: Mapping[int, int]) -> str:
    return ",".join(f"{p}={o}" for p, o in sorted(starts.items())) or "-"


def _describe(start: Start) -> str:
    if isinstance(start, Since):
        return "since " + _positions(start.offsets)
    if isinstance(start, SinceTime):
        return f"since_time {start.ms}"
    if isinstance(start, Snapshot):
        return "snapshot" + (", " + _describe(start.after) if start.after else "")
    return f"rewind {start.count}"
