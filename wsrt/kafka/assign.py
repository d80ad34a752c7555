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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from wsrt.aio import abandon_after
from wsrt.kafka.offsets import Offsets


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


class GroupListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Shared mode: the group's rebalances, turned into the source's callbacks."""

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
