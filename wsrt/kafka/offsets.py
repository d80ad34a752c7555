"""Offset bookkeeping, Sans-I/O: where each partition stands, what to commit, how far behind.

The source tells :class:`Offsets` what happened (a partition was positioned,
the hub took records up to an offset, the broker reported a high watermark)
and asks it what to commit. It holds no client and does no I/O, so the rules
are unit-tested as plain calls:

* a commit carries ``last taken offset + 1`` per partition, only for
  partitions still assigned, and only what was not committed yet;
* a failed commit hands its offsets back unless newer ones were taken since;
* a revoked partition is released: nothing of it is committed or reported,
  but where this process's clients stand in it is kept (:attr:`Offsets.released`),
  so that if the partition comes back the live stream resumes there, not at
  the group's committed offset (which another member may have moved on).

Partitions are ``(topic, partition)`` tuples; aiokafka's ``TopicPartition`` is one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

Partition = tuple[str, int]
_P = TypeVar("_P", bound=Partition)


class Offsets:
    def __init__(self) -> None:
        #: Next offset to read per partition (positioned, or after what the hub took).
        self.positions: dict[Partition, int] = {}
        #: Messages behind the high watermark per partition, as last seen.
        self.lag: dict[Partition, int] = {}
        self._uncommitted: dict[Partition, int] = {}
        #: Revoked partitions → the next offset this process's clients would have got.
        self.released: dict[Partition, int] = {}

    def positioned(self, partition: Partition, offset: int) -> None:
        """The consumer will read ``partition`` from ``offset``."""
        self.positions[partition] = offset
        self.released.pop(partition, None)

    def release(self, partitions: Iterable[Partition]) -> None:
        """``partitions`` were revoked (shared mode): keep where they stood, forget the rest."""
        for tp in partitions:
            position = self.positions.get(tp)
            if position is not None:
                self.released[tp] = position
        self.forget(partitions)

    def resume_at(self, partition: Partition) -> int | None:
        """Where the live stream must go on in ``partition`` for the clients connected now
        (``None``: this process never delivered it; the committed offset is right)."""
        position = self.positions.get(partition)
        return position if position is not None else self.released.get(partition)

    def taken(self, partition: Partition, next_offset: int, highwater: int | None) -> None:
        """The hub took every record of ``partition`` before ``next_offset``."""
        self.positions[partition] = next_offset
        self._uncommitted[partition] = next_offset
        if highwater is not None:
            self.lag[partition] = max(0, highwater - next_offset)

    @property
    def pending(self) -> bool:
        """Is anything taken but not committed yet?"""
        return bool(self._uncommitted)

    def to_commit(self, assignment: Iterable[_P]) -> dict[_P, int]:
        """What to commit now (and no longer pending), keyed by the assignment's own objects."""
        offsets = {tp: self._uncommitted[tp] for tp in assignment if tp in self._uncommitted}
        self._uncommitted.clear()
        return offsets

    def commit_failed(self, offsets: Mapping[_P, int]) -> None:
        """A commit of ``offsets`` failed: retry them with the next one, unless superseded."""
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp, -1) < offset:
                self._uncommitted[tp] = offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """``partitions`` were revoked: nothing of theirs is ours to commit or report."""
        for tp in partitions:
            self.positions.pop(tp, None)
            self.lag.pop(tp, None)
            self._uncommitted.pop(tp, None)

    def behind(self, highwaters: Mapping[Partition, int | None]) -> list[Partition]:
        """Partitions whose high watermark is beyond the position: records wait for us."""
        return sorted(
            tp
            for tp, hw in highwaters.items()
            if hw is not None and tp in self.positions and hw > self.positions[tp]
        )


def describe(offsets: Mapping[_P, int]) -> str:
    """``topic[partition]=offset`` pairs, sorted, for logs."""
    return " ".join(f"{tp[0]}[{tp[1]}]={o}" for tp, o in sorted(offsets.items()))


def describe_partitions(partitions: Iterable[Partition]) -> str:
    """``topic[0,1,2]`` per topic, sorted, for logs."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(partition)
    return " ".join(f"{t}[{','.join(map(str, sorted(p)))}]" for t, p in sorted(by_topic.items()))
