"""Shared mode's rebalance listener against a fake consumer: where partitions resume, what
clients are told, and that a failed callback is not swallowed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from wsrt.config import load_settings
from wsrt.health import Status
from wsrt.kafka.assign import Assigner, GroupListener
from wsrt.kafka.offsets import Offsets
from wsrt.logs import EventLogger
from wsrt.metrics import Stats

T0, T1 = TopicPartition("lines", 0), TopicPartition("lines", 1)


class FakeConsumer:
    """The consumer calls the listener makes: committed offsets, log starts, seeks."""

    def __init__(self, committed: dict[TopicPartition, int], earliest: int = 0) -> None:
        self.committed = committed
        self.earliest = earliest
        self.seeks: dict[TopicPartition, int] = {}
        self.fail_position = False
        self.paused: set[TopicPartition] = set()
        #: What was paused while the listener waited on the broker (the loop could fetch then).
        self.paused_while_waiting: list[set[TopicPartition]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.paused_while_waiting.append(set(self.paused))
        return {tp: self.earliest for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        if self.fail_position:
            raise TimeoutError("position")
        return self.seeks.get(tp, self.committed[tp])


class FakeCommitter:
    async def flush(self) -> bool:
        return True


class Told:
    def __init__(self) -> None:
        self.notices: list[tuple[Any, ...]] = []

    def revoked(self, partition: tuple[str, int], next_offset: int) -> None:
        self.notices.append(("revoked", tuple(partition), next_offset))

    def gap(self, partition: tuple[str, int], first: int, last: int, reason: str) -> None:
        self.notices.append(("gap", tuple(partition), first, last, reason))

    def assigned(self, partition: tuple[str, int], start: int) -> None:
        self.notices.append(("assigned", tuple(partition), start))


def rig(consumer: FakeConsumer) -> tuple[GroupListener, Offsets, Told, list[tuple[Status, str]]]:
    settings = load_settings(environ={"WS_AUTH_SECRET": "x" * 32, "WS_FANOUT_MODE": "shared"})
    offsets = Offsets()
    told = Told()
    reports: list[tuple[Status, str]] = []
    assigner = Assigner(
        settings, offsets, EventLogger(), Stats(), lambda s, r: reports.append((s, r)),
        notices=told,
    )  # fmt: skip
    listener = GroupListener(assigner, consumer, FakeCommitter())  # type: ignore[arg-type]
    assigner.listener = listener
    return listener, offsets, told, reports


def test_a_partition_back_after_a_rebalance_resumes_where_the_clients_stand() -> None:
    """Not at the committed offset: the clients connected here had 50 already."""
    consumer = FakeConsumer({T0: 40, T1: 7})
    listener, offsets, told, reports = rig(consumer)
    asyncio.run(listener.on_partitions_assigned([T0, T1]))
    offsets.taken(T0, 50, None)
    asyncio.run(listener.on_partitions_revoked([T0, T1]))
    assert reports[-1][0] is Status.STARTING and reports[-1][1].startswith("rebalancing")
    asyncio.run(listener.on_partitions_assigned([T0]))
    assert offsets.positions[T0] == 50 and consumer.seeks[T0] == 50  # nothing sent twice
    assert reports[-1] == (Status.OK, "")
    # T1 went to another member: its subscribers hear once where to resume it.
    assert ("revoked", ("lines", 1), 7) in told.notices
    asyncio.run(listener.on_partitions_revoked([T0]))
    asyncio.run(listener.on_partitions_assigned([T0]))
    assert [n for n in told.notices if n[0] == "revoked"] == [("revoked", ("lines", 1), 7)]


def test_a_partition_back_after_it_was_announced_starts_where_the_group_stands() -> None:
    consumer = FakeConsumer({T0: 0, T1: 7})
    listener, offsets, told, _ = rig(consumer)
    asyncio.run(listener.on_partitions_assigned([T0, T1]))
    asyncio.run(listener.on_partitions_revoked([T0, T1]))
    asyncio.run(listener.on_partitions_assigned([T0]))  # T1 announced as revoked at 7
    consumer.committed[T1] = 90  # another member served it meanwhile
    asyncio.run(listener.on_partitions_revoked([T0]))
    asyncio.run(listener.on_partitions_assigned([T0, T1]))
    assert offsets.positions[T1] == 90
    assert told.notices[-1] == ("assigned", ("lines", 1), 90)


def test_history_removed_by_retention_while_away_is_a_gap() -> None:
    consumer = FakeConsumer({T0: 0})
    listener, offsets, told, _ = rig(consumer)
    asyncio.run(listener.on_partitions_assigned([T0]))
    offsets.taken(T0, 10, None)
    asyncio.run(listener.on_partitions_revoked([T0]))
    consumer.earliest = 25
    asyncio.run(listener.on_partitions_assigned([T0]))
    assert told.notices[-1] == ("gap", ("lines", 0), 10, 24, "retention")
    assert offsets.positions[T0] == 25


def test_a_failed_assignment_callback_is_raised_in_the_consume_loop() -> None:
    """aiokafka only logs what the listener raises: readiness would wait for ever."""
    consumer = FakeConsumer({T0: 0})
    listener, _, _, reports = rig(consumer)
    consumer.fail_position = True
    with pytest.raises(TimeoutError):
        asyncio.run(listener.on_partitions_assigned([T0]))
    with pytest.raises(TimeoutError):
        listener.check()
    listener.check()  # raised once
    assert not [r for r in reports if r[0] is Status.OK]


def test_a_replaced_consumers_late_callbacks_change_nothing() -> None:
    consumer = FakeConsumer({T0: 0})
    listener, offsets, _, _ = rig(consumer)
    asyncio.run(listener.on_partitions_assigned([T0]))
    offsets.taken(T0, 5, None)
    listener.retired = True
    asyncio.run(listener.on_partitions_revoked([T0]))
    assert offsets.positions[T0] == 5


def test_no_fetch_is_handed_over_until_a_partition_back_is_placed() -> None:
    """The group's commit may lag behind what the clients have: the consume loop,
    which runs while the listener awaits the broker, must not deliver from it."""
    consumer = FakeConsumer({T0: 40, T1: 7})
    listener, offsets, _, _ = rig(consumer)
    asyncio.run(listener.on_partitions_assigned([T0, T1]))
    offsets.taken(T0, 50, None)
    asyncio.run(listener.on_partitions_revoked([T0, T1]))
    asyncio.run(listener.on_partitions_assigned([T0, T1]))
    assert consumer.paused_while_waiting[-1] == {T0, T1}
    assert consumer.paused == set() and consumer.seeks[T0] == 50
