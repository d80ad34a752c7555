"""The Kafka source: connect, assign, fetch, encode once, hand to the hub, commit.

:meth:`KafkaSource.run_links` runs one consumer lifetime after another (a
:class:`_Link`: consumer, metadata client, committer). A link that fails with
a Kafka or network error is replaced after a jittered backoff; a metadata
refresh that fails only marks readiness (aiokafka reconnects the consumer by
itself, so delivery resumes as soon as the brokers answer). The
:class:`Supervisor` that :meth:`KafkaSource.start` runs replaces a lifetime
that dies with an unexpected exception or stalls; if the supervisor itself
ever ends while the source is not stopping, the app exits non-zero.

Supervision (docs/design.md, "Never silent"): :meth:`Supervisor.run` runs the
consumer lifetimes and starts them again when they end with an unexpected
exception (logged with its traceback, counted as ``error``). Its watchdog
probes the brokers every ``WS_KAFKA_PROBE_SECONDS``: a metadata request
decides reachability (readiness follows it), end offsets against the
delivered positions decide whether records wait, and
:class:`~wsrt.kafka.watch.Watch` judges a stall (``stalled``,
``loop_stalled``), which cancels the lifetime so that a new consumer resumes
from the delivered positions.

What the hub took is kept in one :class:`~wsrt.kafka.offsets.Offsets` across
links, so a replacement consumer resumes exactly where the last one stopped:
no gap, no duplicate. Every call into aiokafka that can wait on a broker is
bounded (:func:`~wsrt.aio.abandon_after`), and nothing awaits a previous
link's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from wsrt.aio import Backoff, abandon_after, detach
from wsrt.config import Settings
from wsrt.health import Liveness, Readiness, Status
from wsrt.kafka.assign import Assigner, Notices
from wsrt.kafka.commit import Committer
from wsrt.kafka.deliver import Batches, Encoder, UndecodableSkipper, envelopes
from wsrt.kafka.offsets import Offsets
from wsrt.kafka.options import (
    DENIED,
    UNAVAILABLE,
    consumer_options,
    discover,
    explain,
    metadata_client,
    replication_words,
)
from wsrt.kafka.registry import Holding, registry
from wsrt.kafka.watch import SourceHealth, Watch
from wsrt.logs import EventLogger
from wsrt.metrics import Stats
from wsrt.outlet import Record

#: The longest a metadata request may take at one broker before the next is asked.
PROBE_METADATA_SECONDS = 3.0


class _Link:
    """One consumer's lifetime: the consumer, a metadata client and the committer."""

    def __init__(self, source: KafkaSource) -> None:
        s = source.settings
        self.settings = s
        self.consumer = AIOKafkaConsumer(**consumer_options(s))
        # Metadata answers fast: a node that does not (frozen) is left for the next one
        # within PROBE_METADATA_SECONDS, not the request time-out.
        self.client = metadata_client(
            s.replace(kafka_request_timeout=min(s.kafka_request_timeout, PROBE_METADATA_SECONDS))
        )
        self.committer = Committer(
            self.consumer, source.offsets, source.log, source.stats, s.kafka_commit_timeout
        )
        self.joined = False

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
        liveness: Liveness,
        offsets: Offsets | None = None,
        on_positioned: Callable[[], None] = lambda: None,
        on_unplaced: Callable[[], None] = lambda: None,
        notices: Notices | None = None,
    ) -> None:
        self.settings = settings
        self.readiness = readiness
        self.log = log
        self.stats = stats
        self.liveness = liveness
        #: Where the live stream stands; replays read it to hand over
        #: (docs/design.md, "Resume and replay").
        self.offsets = offsets if offsets is not None else Offsets()
        stats.kafka_lag = self.offsets.lag
        self.encoder = Encoder(
            publish, self.offsets, stats, log, settings.latency_sample_every, envelopes(settings)
        )  # fmt: skip
        self.health = SourceHealth(readiness)
        #: The Schema Registry of the schema formats' topics (``None``: no such topic).
        self.registry = registry(settings)
        #: ``on_positioned`` hears, in the step that positioned them, that positions are known.
        self.assigner = Assigner(
            settings, self.offsets, log, stats, self.health.placed, on_positioned, on_unplaced,
            notices,
        )  # fmt: skip
        self.watch = Watch(settings.kafka_stall, asyncio.get_running_loop().time())
        self.link: _Link | None = None
        #: Set by :meth:`stop`; the loops end when it is.
        self.stopping_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Run the supervised consumer in a task until :meth:`stop`."""
        self._task = asyncio.create_task(Supervisor(self).run(), name="wsrt-kafka")
        return self._task

    @property
    def stopping(self) -> bool:
        return self.stopping_event.is_set()

    async def stop(self) -> None:
        """Stop fetching, commit what the hub took, leave the group."""
        self.stopping_event.set()
        if self._task is not None:
            await self._task

    # -- consumer lifetimes ----------------------------------------------------

    async def run_links(self) -> None:
        """One consumer lifetime after another, until stopped (supervised by the caller)."""
        s = self.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        failing = False  # retrying: readiness keeps saying why, not "connecting" each time
        while not self.stopping_event.is_set():
            self.liveness.beat()
            self.link = link = _Link(self)
            try:
                if not failing:
                    where = ",".join(s.kafka_brokers)
                    self.health.placed(Status.STARTING, f"connecting to Kafka at {where}")
                await link.open()
                await self.assigner.join(link.consumer, link.client, link.committer)
                self.watch = Watch(s.kafka_stall, asyncio.get_running_loop().time())
                link.joined = True
                self.log.info(
                    "kafka_started", "kafka consumer started", mode=s.fanout_mode,
                    group=s.group_id, brokers=",".join(s.kafka_brokers),
                )  # fmt: skip
                backoff.reset()
                failing = False
                await self._consume(link)
            except UNAVAILABLE as exc:
                failing = True
                if isinstance(exc, DENIED):
                    self.health.denied(await explain(exc, s))  # until a fetch succeeds
                else:
                    self._unavailable(await explain(exc, s))
                await link.close(commit=False)
                delay = backoff.next()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping_event.wait(), delay)
            except BaseException:
                # Replaced (watchdog) or failed: the supervisor starts a new link
                # now; this one closes on its own, bounded, and nobody waits for it.
                self._leave_behind(link)
                raise
            else:
                if not await link.close(commit=True):
                    self.log.warning("commit_failed", "final offset commit did not finish")
            finally:
                self.link = None

    def _leave_behind(self, link: _Link) -> None:
        link.committer.abandon()
        detach(link.close(commit=False))

    def _unavailable(self, reason: str) -> None:
        """Readiness says why, in one line per change of reason (not one per retry)."""
        self.health.placed(
            Status.DEGRADED if self.health.ready_once else Status.STARTING, reason, problem=True
        )

    # -- the loop --------------------------------------------------------------

    async def _consume(self, link: _Link) -> None:
        s = self.settings
        consumer = link.consumer
        loop = asyncio.get_running_loop()
        skipper = UndecodableSkipper(consumer, self.offsets, self.encoder, s)
        next_refresh = loop.time() + s.kafka_metadata_refresh
        stopping = asyncio.ensure_future(self.stopping_event.wait())
        holding = self._holding(consumer)
        try:
            while not self.stopping_event.is_set():
                self.liveness.beat()
                self.watch.turned(loop.time())
                if self.assigner.listener is not None:
                    self.assigner.listener.check()  # a rebalance callback that failed
                if s.fanout_mode == "broadcast" and (
                    loop.time() >= next_refresh or not consumer.assignment()
                ):
                    if not consumer.assignment():  # no topic yet: nothing to fetch until a look
                        await asyncio.wait({stopping}, timeout=max(0, next_refresh - loop.time()))
                    next_refresh = loop.time() + s.kafka_metadata_refresh
                    await self._refresh(link)
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
                fetched = time.time() if self.encoder.sample_every else None  # latency probes
                try:
                    batches: Batches = fetch.result()
                except Exception as exc:
                    if not skipper.may_skip(exc):
                        raise
                    await skipper.skip(exc, link.committer)
                    continue
                skipper.clear()
                self.health.allowed()
                if batches and holding is not None:
                    batches = await holding.ready(batches)
                if batches:
                    self.encoder.deliver(consumer, batches, fetched)
                    self.watch.delivered(loop.time())
                    self.health.reachable()  # a fetch answered: the brokers are there
                    link.committer.kick()  # the hub took the batch: commit its offsets
        finally:
            stopping.cancel()
            if holding is not None:
                holding.close()

    def _holding(self, consumer: AIOKafkaConsumer) -> Holding | None:
        """What holds the schema topics' partitions while the registry is away, if any."""
        if self.registry is None:
            return None
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.settings.kafka_backoff_initial, self.settings.kafka_backoff_max)
        return Holding(
            self.registry, self.encoder.envelopes.schema_topics, consumer, self.health.registry,
            lambda: self.watch.delivered(loop.time()), backoff.next,
        )  # fmt: skip

    async def _refresh(self, link: _Link) -> None:
        """Broadcast: pick up new topics and partitions. Failing here only marks readiness:
        the consumer reconnects by itself, and replacing it would delay delivery."""
        try:
            await self.assigner.refresh(link.consumer, link.client)
        except UNAVAILABLE as exc:
            self.health.unreachable(await explain(exc, self.settings))


class Supervisor:
    def __init__(self, source: KafkaSource) -> None:
        self.source = source
        #: Partitions the last probe found with records waiting.
        self._waiting: list[tuple[str, int]] = []

    async def run(self) -> None:
        src = self.source
        s = src.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        while not src.stopping_event.is_set():
            run = asyncio.create_task(src.run_links(), name="wsrt-kafka-run")
            watch = asyncio.create_task(self._watch(run), name="wsrt-kafka-watch")
            try:
                await asyncio.wait({run})
            finally:
                watch.cancel()
            if run.cancelled() or src.stopping_event.is_set():
                continue  # replaced by the watchdog (counted there), or stopping
            exc = run.exception()
            if exc is None:
                continue
            src.stats.kafka_restarts["error"] += 1
            delay = backoff.next()
            src.log.exception(
                "kafka_restarted", "the Kafka consumer failed; replacing it", exc_info=exc,
                reason="error", error=repr(exc)[:300], retry_in_s=round(delay, 2),
            )  # fmt: skip
            src.health.degrade(f"the Kafka consumer failed ({type(exc).__name__}); replacing it")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(src.stopping_event.wait(), delay)

    async def _watch(self, run: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        src = self.source
        s = src.settings
        while True:
            await asyncio.sleep(s.kafka_probe_interval)
            link = src.link
            if link is None or not link.joined:
                continue  # connecting: every step of it is bounded, and readiness says so
            src.watch.observed(loop.time(), await self._probe(link))
            reason = src.watch.verdict(loop.time())
            if reason is None:
                continue
            src.stats.kafka_restarts[reason] += 1
            src.log.warning(
                "kafka_stalled", "the Kafka consumer stalled; replacing it", reason=reason,
                stall_s=s.kafka_stall, partitions_waiting=self._waiting_text(),
            )  # fmt: skip
            src.health.degrade("kafka stalled")
            run.cancel()
            return

    async def _probe(self, link: _Link) -> bool | None:
        """Can the brokers be reached, and do records wait? ``None``: unreachable."""
        src = self.source
        seconds = src.settings.kafka_request_timeout
        try:
            found = await abandon_after(
                discover(link.client, src.settings.kafka_topics), seconds, "metadata request"
            )
        except UNAVAILABLE as exc:
            src.health.unreachable(await explain(exc, src.settings))
            return None
        src.health.reachable()
        src.health.replication(*replication_words(found.replication))
        assigned = link.consumer.assignment()
        if not assigned:
            return False
        try:
            # Bounded by the probe interval: a leader that hangs must not delay the next probe.
            bound = min(seconds, max(PROBE_METADATA_SECONDS, src.settings.kafka_probe_interval))
            ends = await abandon_after(link.consumer.end_offsets(list(assigned)), bound)
        except UNAVAILABLE:
            return True  # the brokers answer, our consumer does not: as good as waiting
        self._waiting = src.offsets.behind(ends)
        return bool(self._waiting)

    def _waiting_text(self) -> str:
        return " ".join(f"{t}[{p}]" for t, p in self._waiting) or "-"
