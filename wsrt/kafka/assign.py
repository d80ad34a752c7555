"""Which partitions this replica reads, and from where.

See docs/design.md, "Delivery: once, in order, or told" and "Shared mode and rebalances".

* ``broadcast``: :func:`assign_every_partition` assigns every partition of
  every served topic by hand (no group join; the group ``<group>-<replica>``
  is used for commits only, so tooling shows the lag). Partitions known when
  the replica starts begin at their end (live data); partitions that appear
  later are read from their beginning (all of them is new); partitions the
  replica already read resume where it stopped, so a reconnect leaves no gap.
* ``shared``: :class:`GroupListener` follows the group's assignment. On
  revoke it commits, releases the partitions (where they stood is kept) and
  says ``rebalancing`` (not ready: the replica holds nothing until the group
  assigns again). On assign, a partition this process delivered before
  resumes where its clients stand (not at the committed offset, which
  another member may have moved on: that would skip records for the clients
  connected here, or send them some twice); one it never delivered starts at
  the committed offset (or the reset policy) and is announced as
  ``assigned`` with that offset, so a client can resume it from its own
  position. History that retention removed meanwhile is announced as a
  ``gap``; a partition that went to another member is announced as
  ``revoked`` with the next offset, once. aiokafka
  swallows what the listener raises, so a failure is kept and raised by the
  consume loop (:meth:`GroupListener.check`), which replaces the consumer.

:class:`Assigner` does either for one consumer and reports readiness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from wsrt.aio import abandon_after
from wsrt.config import Settings
from wsrt.health import Status
from wsrt.kafka.commit import Committer
from wsrt.kafka.offsets import Offsets, Partition, describe, describe_partitions
from wsrt.kafka.options import denied_words, discover
from wsrt.logs import EventLogger
from wsrt.metrics import Stats


async def assign_every_partition(
    consumer: AIOKafkaConsumer,
    found: dict[str, set[int]],
    offsets: Offsets,
    *,
    live: bool,
    seconds: float,
) -> set[TopicPartition] | None:
    """Assign every partition in ``found``; the new assignment, or ``None`` if unchanged.

    ``live`` (the first assignment since start) positions unknown partitions
    at their end, else at their beginning. Each lookup is bounded by ``seconds``.
    """
    wanted = {TopicPartition(t, p) for t, partitions in found.items() for p in partitions}
    if wanted == consumer.assignment():
        return None
    consumer.assign(list(wanted))
    for tp in wanted:
        position = offsets.positions.get(tp)
        if position is not None:
            consumer.seek(tp, position)
        elif live:
            await abandon_after(consumer.seek_to_end(tp), seconds, f"end of {tp}")
        else:
            await abandon_after(consumer.seek_to_beginning(tp), seconds, f"start of {tp}")
    await resolve_positions(consumer, wanted, offsets, seconds)
    offsets.forget(set(offsets.positions) - wanted)
    return wanted


async def resolve_positions(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    offsets: Offsets,
    seconds: float,
) -> None:
    """Resolve lazily reset positions, so that "ready" means positioned."""
    for tp in partitions:
        offsets.positioned(
            tp, await abandon_after(consumer.position(tp), seconds, f"position of {tp}")
        )


class Notices(Protocol):
    """What the clients are told about partitions that move (shared mode)."""

    def revoked(self, partition: Partition, next_offset: int) -> None:
        """``partition`` is served elsewhere now; its subscribers had everything before."""

    def gap(self, partition: Partition, first: int, last: int, reason: str) -> None:
        """Offsets ``first`` to ``last`` of ``partition`` will not come (retention)."""

    def assigned(self, partition: Partition, start: int) -> None:
        """``partition`` is served here now, from ``start`` (where the group stands)."""


class NoNotices:
    def revoked(self, partition: Partition, next_offset: int) -> None:
        pass

    def gap(self, partition: Partition, first: int, last: int, reason: str) -> None:
        pass

    def assigned(self, partition: Partition, start: int) -> None:
        pass


class Assigner:
    """Joins a consumer to its partitions and reports readiness (``report``) as they are placed."""

    def __init__(
        self,
        settings: Settings,
        offsets: Offsets,
        log: EventLogger,
        stats: Stats,
        report: Callable[[Status, str], None],
        on_positioned: Callable[[], None] = lambda: None,
        on_unplaced: Callable[[], None] = lambda: None,
        notices: Notices | None = None,
    ) -> None:
        self.settings = settings
        self.offsets = offsets
        self.log = log
        self.stats = stats
        self.report = report
        #: Told, in the step that positioned partitions, that positions are known.
        self.on_positioned = on_positioned
        #: Told, in the step that revoked partitions, that positions are unknown until assigned.
        self.on_unplaced = on_unplaced
        self.notices = notices or NoNotices()
        #: Partitions known at the first assignment start live; later ones from their beginning.
        self._live = True
        #: Shared mode: the current consumer's listener (a replaced one must not act).
        self.listener: GroupListener | None = None
        #: Released partitions whose subscribers were told they moved.
        self.announced: set[Partition] = set()

    async def join(
        self, consumer: AIOKafkaConsumer, client: AIOKafkaClient, committer: Committer
    ) -> None:
        """Shared: subscribe in the group (it assigns later); broadcast: assign every partition."""
        s = self.settings
        if s.fanout_mode == "shared":
            if self.listener is not None:
                self.listener.retired = True
            self.listener = GroupListener(self, consumer, committer)
            consumer.subscribe(list(s.kafka_topics), listener=self.listener)
            self.report(Status.STARTING, f"joining consumer group {s.group_id}")
        else:
            await self.refresh(consumer, client)

    async def refresh(self, consumer: AIOKafkaConsumer, client: AIOKafkaClient) -> None:
        """Broadcast: look for topics and partitions, assign every one found."""
        s = self.settings
        found, missing, denied, _ = await abandon_after(
            discover(client, s.kafka_topics), s.kafka_start_timeout, "metadata"
        )
        assigned = await assign_every_partition(
            consumer, found, self.offsets, live=self._live, seconds=s.kafka_start_timeout
        )
        self._live = False
        if assigned is not None:
            self.assigned(assigned, missing + denied)
        if denied:
            self.report(Status.DEGRADED, denied_words(denied, s))
        elif missing:
            self.report(Status.DEGRADED, f"topics not found: {', '.join(missing)}")
        else:
            self.report(Status.OK, "")

    def assigned(self, assigned: set[TopicPartition], missing: list[str]) -> None:
        self.on_positioned()  # synchronous, before the loop fetches again: nothing published yet
        self.stats.kafka_rebalances += 1
        positions = {tp: self.offsets.positions[tp] for tp in assigned}
        self.log.info("kafka_positioned", "consuming from", positions=describe(positions))
        self.log.info(
            "kafka_assigned", "partitions assigned", partitions=describe_partitions(assigned),
            missing=",".join(missing) or None,
        )  # fmt: skip


class GroupListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Shared mode: commit and release on revoke; place new partitions before saying ready."""

    def __init__(
        self, assigner: Assigner, consumer: AIOKafkaConsumer, committer: Committer
    ) -> None:
        self.assigner = assigner
        self.consumer = consumer
        self.committer = committer
        #: The consumer was replaced: its late callbacks must not touch shared state.
        self.retired = False
        #: What a callback raised (aiokafka would only log it).
        self.failed: BaseException | None = None

    def check(self) -> None:
        """Raise, in the consume loop, what a callback failed with."""
        failed, self.failed = self.failed, None
        if failed is not None:
            raise failed

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if self.retired:
            return
        partitions = set(revoked)
        a = self.assigner
        try:
            await self.committer.flush()
        finally:
            a.offsets.release(partitions)
            if partitions:
                a.on_unplaced()  # in this step: no replay hands over to a position now unknown
                a.report(
                    Status.STARTING,
                    "rebalancing: waiting for the consumer group to assign partitions",
                )
        a.log.info(
            "kafka_revoked", "partitions revoked", partitions=describe_partitions(partitions)
        )

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if self.retired:
            return
        partitions = set(assigned)
        # Until placed, a fetch must not hand over records from where the group's
        # commit stands (it may lag behind what our clients already have): paused
        # in this step, before the first await lets the consume loop run.
        self.consumer.pause(*partitions)
        try:
            await self._place(partitions)
        except BaseException as exc:
            self.failed = exc
            raise
        self.consumer.resume(*partitions)

    async def _place(self, partitions: set[TopicPartition]) -> None:
        a = self.assigner
        seconds = a.settings.kafka_start_timeout
        offsets = a.offsets
        # Back within this rebalance: the live stream goes on where the clients stand.
        resume = {tp: at for tp in partitions if (at := offsets.resume_at(tp)) is not None}
        resume = {
            tp: at for tp, at in resume.items() if (tp.topic, tp.partition) not in a.announced
        }
        if resume:
            earliest = await abandon_after(
                self.consumer.beginning_offsets(list(resume)), seconds, "log start"
            )
            for tp, at in resume.items():
                if earliest[tp] > at:  # retention removed what our clients were waiting for
                    a.notices.gap((tp.topic, tp.partition), at, earliest[tp] - 1, "retention")
                    at = earliest[tp]
                self.consumer.seek(tp, at)
        await resolve_positions(self.consumer, partitions, offsets, seconds)
        # New here, or back after its subscribers were told it moved (they may have
        # resumed it elsewhere): it starts where the group stands, and they are told.
        for tp in sorted(partitions - set(resume)):
            a.notices.assigned((tp.topic, tp.partition), offsets.positions[tp])
        for tp in sorted(set(offsets.released) - a.announced):  # went to another member
            a.notices.revoked(tp, offsets.released[tp])
            a.announced.add(tp)
        a.announced -= {(tp.topic, tp.partition) for tp in partitions}
        a.assigned(partitions, [])
        a.report(Status.OK, "")
