"""The Kafka source: connect, assign, fetch, encode once, hand to the hub, commit.

Three tasks, each short (design section 9, "never stop silently"):

* :meth:`KafkaSource._supervise` runs the consumer loop and replaces it when
  it dies with an unexpected exception (logged with its traceback) or when the
  watchdog finds it stalled. It is the task :meth:`start` returns: if it ever
  ends while the source is not stopping, the app exits non-zero.
* :meth:`KafkaSource._run`: one consumer lifetime after another (a
  :class:`_Link`: consumer, metadata client, committer). A link that fails
  with a Kafka or network error is replaced after a jittered backoff; a
  metadata refresh that fails only marks readiness (aiokafka reconnects the
  consumer by itself, so delivery resumes as soon as the brokers answer).
* :meth:`KafkaSource._watch` probes the brokers every
  ``WS_KAFKA_PROBE_SECONDS``: readiness follows reachability, and
  :class:`~wsrt.kafka.watch.Watch` judges whether records wait while nothing
  is delivered.

What the hub took is kept in one :class:`~wsrt.kafka.offsets.Offsets` across
links, so a replacement consumer resumes exactly where the last one stopped:
no gap, no duplicate. Every call into aiokafka that can wait on a broker is
bounded (:func:`~wsrt.aio.abandon_after`), and nothing awaits a previous
link's work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from wsrt.aio import Abandoned, Backoff, abandon_after
from wsrt.config import Settings
from wsrt.health import Liveness, Readiness, Status
from wsrt.hub import Record
from wsrt.kafka.assign import Assigner
from wsrt.kafka.commit import Committer
from wsrt.kafka.deliver import Batches, Encoder, UndecodableSkipper
from wsrt.kafka.offsets import Offsets
from wsrt.kafka.options import consumer_options, discover, metadata_client
from wsrt.kafka.watch import Watch
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats

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
    ) -> None:
        self.settings = settings
        self.readiness = readiness
        self.log = log
        self.stats = stats
        self.liveness = liveness
        self.offsets = Offsets()
        stats.kafka_lag = self.offsets.lag
        self.encoder = Encoder(publish, self.offsets, stats, log)
        self.assigner = Assigner(settings, self.offsets, log, stats, self._placed)
        self.watch = Watch(settings.kafka_stall, asyncio.get_running_loop().time())
        self.link: _Link | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready_once = False
        #: Readiness from the assignment, and why the brokers are unreachable (None: reachable).
        self._placement: tuple[Status, str] = (Status.STARTING, "starting up")
        self._unreachable: str | None = None
        self._leftovers: set[asyncio.Task[Any]] = set()
        #: Partitions the last probe found with records waiting.
        self._waiting: list[tuple[str, int]] = []
        self._error_log = RateLimited(log)

    def start(self) -> asyncio.Task[None]:
        """Run the supervised consumer in a task until :meth:`stop`."""
        self._task = asyncio.create_task(self._supervise(), name="wsrt-kafka")
        return self._task

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stop(self) -> None:
        """Stop fetching, commit what the hub took, leave the group."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    # -- supervision -----------------------------------------------------------

    async def _supervise(self) -> None:
        s = self.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        while not self._stopping.is_set():
            run = asyncio.create_task(self._run(), name="wsrt-kafka-run")
            watch = asyncio.create_task(self._watch(run), name="wsrt-kafka-watch")
            try:
                await asyncio.wait({run})
            finally:
                watch.cancel()
            if run.cancelled() or self._stopping.is_set():
                continue  # replaced by the watchdog (counted there), or stopping
            exc = run.exception()
            if exc is None:
                continue
            self.stats.kafka_restarts["error"] += 1
            delay = backoff.next()
            self.log.exception(
                "kafka_restarted", "the Kafka consumer failed; replacing it", exc_info=exc,
                reason="error", error=repr(exc)[:300], retry_in_s=round(delay, 2),
            )  # fmt: skip
            self._set(Status.DEGRADED, f"kafka consumer failed: {type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _watch(self, run: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        while True:
            await asyncio.sleep(s.kafka_probe_interval)
            link = self.link
            if link is None or not link.joined:
                continue  # connecting: every step of it is bounded, and readiness says so
            self.watch.observed(loop.time(), await self._probe(link))
            reason = self.watch.verdict(loop.time())
            if reason is None:
                continue
            self.stats.kafka_restarts[reason] += 1
            self.log.warning(
                "kafka_stalled", "the Kafka consumer stalled; replacing it", reason=reason,
                stall_s=s.kafka_stall, partitions_waiting=self._waiting_text(),
            )  # fmt: skip
            self._set(Status.DEGRADED, "kafka stalled")
            run.cancel()
            return

    async def _probe(self, link: _Link) -> bool | None:
        """Can the brokers be reached, and do records wait? ``None``: unreachable."""
        seconds = self.settings.kafka_request_timeout
        where = ",".join(self.settings.kafka_brokers)
        try:
            await abandon_after(
                discover(link.client, self.settings.kafka_topics), seconds, "metadata request"
            )
        except UNAVAILABLE as exc:
            self._unreachable = f"cannot reach Kafka at {where}: {type(exc).__name__}: {exc}"
            self._apply()
            return None
        self._unreachable = None
        self._apply()
        assigned = link.consumer.assignment()
        if not assigned:
            return False
        try:
            ends = await abandon_after(link.consumer.end_offsets(list(assigned)), seconds)
        except UNAVAILABLE:
            return True  # the brokers answer, our consumer does not: as good as waiting
        self._waiting = self.offsets.behind(ends)
        return bool(self._waiting)

    def _waiting_text(self) -> str:
        return " ".join(f"{t}[{p}]" for t, p in self._waiting) or "-"

    # -- consumer lifetimes ----------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        while not self._stopping.is_set():
            self.liveness.beat()
            self.link = link = _Link(self)
            try:
                self._placed(Status.STARTING, f"connecting to kafka at {','.join(s.kafka_brokers)}")
                await link.open()
                await self.assigner.join(link.consumer, link.client, link.committer)
                self.watch = Watch(s.kafka_stall, asyncio.get_running_loop().time())
                link.joined = True
                self.log.info(
                    "kafka_started", "kafka consumer started", mode=s.fanout_mode,
                    group=s.group_id, brokers=",".join(s.kafka_brokers),
                )  # fmt: skip
                backoff.reset()
                await self._consume(link)
            except UNAVAILABLE as exc:
                delay = backoff.next()
                self._unavailable(exc, delay)
                await link.close(commit=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
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
        task = asyncio.ensure_future(link.close(commit=False))
        self._leftovers.add(task)
        task.add_done_callback(self._leftovers.discard)

    def _unavailable(self, exc: BaseException, retry_in: float) -> None:
        reason = f"kafka unavailable: {type(exc).__name__}: {exc}"
        self._placed(Status.DEGRADED if self._ready_once else Status.STARTING, reason)
        self._error_log.warning(
            "kafka_error",
            "kafka error; retrying",
            error=str(exc)[:300],
            retry_in_s=round(retry_in, 2),
        )

    # -- the loop --------------------------------------------------------------

    async def _consume(self, link: _Link) -> None:
        s = self.settings
        consumer = link.consumer
        loop = asyncio.get_running_loop()
        skipper = UndecodableSkipper(consumer, self.offsets, self.encoder, s)
        next_refresh = loop.time() + s.kafka_metadata_refresh
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                self.liveness.beat()
                self.watch.turned(loop.time())
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
                try:
                    batches: Batches = fetch.result()
                except Exception as exc:
                    if not skipper.may_skip(exc):
                        raise
                    await skipper.skip(exc, link.committer)
                    continue
                skipper.clear()
                if batches:
                    self.encoder.deliver(consumer, batches)
                    self.watch.delivered(loop.time())
                    if self._unreachable is not None:  # a fetch answered: the brokers are back
                        self._unreachable = None
                        self._apply()
                    link.committer.kick()  # the hub took the batch: commit its offsets
        finally:
            stopping.cancel()

    async def _refresh(self, link: _Link) -> None:
        """Broadcast: pick up new topics and partitions. Failing here only marks readiness:
        the consumer reconnects by itself, and replacing it would delay delivery."""
        try:
            await self.assigner.refresh(link.consumer, link.client)
        except UNAVAILABLE as exc:
            self._unreachable = f"kafka unavailable: {type(exc).__name__}: {exc}"
            self._apply()

    # -- readiness -------------------------------------------------------------

    def _placed(self, status: Status, reason: str) -> None:
        """What the assignment says; brokers that cannot be reached override it."""
        self._placement = (status, reason)
        if status is Status.OK:
            self._ready_once = True
            self._unreachable = None
        self._apply()

    def _set(self, status: Status, reason: str) -> None:
        self._placement = (status, reason)
        self._apply()

    def _apply(self) -> None:
        if self._unreachable is not None:
            self.readiness.set(Status.DEGRADED, self._unreachable)
        else:
            self.readiness.set(*self._placement)
