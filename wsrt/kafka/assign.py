"""Which partitions this replica reads, and from where (design section 6).

* ``broadcast``: :func:`assign_every_partition` assigns every partition of
  every served topic by hand (no group join; the group ``<group>-<replica>``
  is used for commits only, so tooling shows the lag). Partitions known when
  the replica starts begin at their end (live data); partitions that appear
  later are read from their beginning (all of them is new); partitions the
  replica already read resume where it stopped, so a reconnect leaves no gap.
* ``shared``: :class:`GroupListener` follows the group's assignment: commit
  on revoke, resolve each new partition's position (committed offset, or the
  reset policy) before reporting ready.

:class:`Assigner` does either for one consumer and reports readiness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from wsrt.aio import abandon_after
from wsrt.config import Settings
from wsrt.health import Status
from wsrt.kafka.commit import Committer
from wsrt.kafka.offsets import Offsets, describe, describe_partitions
from wsrt.kafka.options import discover
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
    ) -> None:
        self.settings = settings
        self.offsets = offsets
        self.log = log
        self.stats = stats
        self.report = report
        #: Told, in the step that positioned partitions, that positions are known.
        self.on_positioned = on_positioned
        #: Partitions known at the first assignment start live; later ones from their beginning.
        self._live = True

    async def join(
        self, consumer: AIOKafkaConsumer, client: AIOKafkaClient, committer: Committer
    ) -> None:
        """Shared: subscribe in the group (it assigns later); broadcast: assign every partition."""
        s = self.settings
        if s.fanout_mode == "shared":
            consumer.subscribe(
                list(s.kafka_topics), listener=GroupListener(self, consumer, committer)
            )
            self.report(Status.STARTING, f"joining consumer group {s.group_id}")
        else:
            await self.refresh(consumer, client)

    async def refresh(self, consumer: AIOKafkaConsumer, client: AIOKafkaClient) -> None:
        """Broadcast: look for topics and partitions, assign every one found."""
        s = self.settings
        found, missing = await abandon_after(
            discover(client, s.kafka_topics), s.kafka_start_timeout, "metadata"
        )
        assigned = await assign_every_partition(
            consumer, found, self.offsets, live=self._live, seconds=s.kafka_start_timeout
        )
        self._live = False
        if assigned is not None:
            self.assigned(assigned, missing)
        if missing:
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
    """Shared mode: commit on revoke; position new partitions before saying ready."""

    def __init__(
        self, assigner: Assigner, consumer: AIOKafkaConsumer, committer: Committer
    ) -> None:
        self.assigner = assigner
        self.consumer = consumer
        self.committer = committer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = set(revoked)
        await self.committer.flush()
        self.assigner.offsets.forget(partitions)
        self.assigner.log.info(
            "kafka_revoked", "partitions revoked", partitions=describe_partitions(partitions)
        )

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = set(assigned)
        a = self.assigner
        await resolve_positions(
            self.consumer, partitions, a.offsets, a.settings.kafka_start_timeout
        )
        a.assigned(partitions, [])
        a.report(Status.OK, "")
