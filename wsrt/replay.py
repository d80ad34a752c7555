"""Where a replay starts and what it may read, Sans-I/O (docs/design.md, "Resume and replay").

A ``subscribe`` with a start field (``since``, ``since_time``, ``rewind``)
becomes a :class:`Plan`: per partition, the first offset to read, and whether
all the history asked for is still there. The Kafka side looks up each
partition's :class:`Bounds` (log start and end offsets) and, for
``since_time``, the offsets for the time; everything else is decided here:

* ``since``: the named partitions from the given offsets, clamped into
  ``[earliest, latest]``; partitions not named start live (from where the live
  stream stood when the subscribe arrived);
* ``since_time``: each partition from the first record at or after the time,
  or from its end when there is none;
* ``rewind N``: each partition from ``latest - N``; for ``topic:key``, from the
  N-th last record of that key found by a :class:`KeyScan` of the newest
  records.

No subscribe reads more than ``budget`` records of history
(``WS_REPLAY_MAX_MESSAGES``): :func:`fit` moves starts forward so the total
fits, giving each partition an equal share and the unused part of a small
partition's share to the others. ``complete`` is ``False`` when the plan had
to start later than asked: history removed by retention, or over the budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from wsrt.protocol import Rewind, Since, SinceTime, Start


class Bounds(NamedTuple):
    """A partition's log start offset and end offset (the next offset to be written)."""

    earliest: int
    latest: int


class Plan(NamedTuple):
    #: Partition → the first offset to read.
    starts: dict[int, int]
    #: ``False`` when some requested history is not in Kafka or over the budget.
    complete: bool


def fit(ranges: Mapping[int, tuple[int, int]], budget: int) -> tuple[dict[int, int], bool]:
    """Starts for ``[start, end)`` ranges so that at most ``budget`` records are read in all.

    Ranges keep their end; when their sum is over the budget each partition
    gets an equal share, and what a shorter range leaves goes to the longer
    ones. The second value is ``False`` when a start had to move.
    """
    sizes = {p: max(0, end - start) for p, (start, end) in ranges.items()}
    if sum(sizes.values()) <= budget:
        return {p: start for p, (start, _) in ranges.items()}, True
    left = budget
    order = sorted(sizes, key=lambda p: (sizes[p], p))
    starts: dict[int, int] = {}
    for i, p in enumerate(order):
        take = min(sizes[p], left // (len(order) - i))
        left -= take
        starts[p] = ranges[p][1] - take
    return starts, False


def plan(
    start: Start,
    bounds: Mapping[int, Bounds],
    live: Mapping[int, int],
    budget: int,
    for_time: Mapping[int, int | None] | None = None,
) -> Plan:
    """The starts of a whole-topic replay (or a keyed ``since``/``since_time``).

    ``bounds`` has the partitions this replica consumes; ``live`` where the
    live stream stood for each when the subscribe arrived; ``for_time`` the
    offsets Kafka found for a ``since_time`` (``None``: no record that late).
    A keyed ``rewind`` is planned by :func:`scan_window` and :class:`KeyScan`.
    """
    complete = True
    ranges: dict[int, tuple[int, int]] = {}
    starts: dict[int, int] = {}
    for p, (earliest, latest) in bounds.items():
        if isinstance(start, Since):
            wanted = start.offsets.get(p)
            if wanted is None:  # not named: live, from where it stood
                starts[p] = min(max(live.get(p, latest), earliest), latest)
                continue
        elif isinstance(start, SinceTime):
            assert for_time is not None
            found = for_time.get(p)
            wanted = latest if found is None else found
            # Kafka found no later record than the oldest kept one: whatever
            # retention removed may have been at or after the time.
            if found is not None and found <= earliest and earliest > 0:
                complete = False
        else:
            assert isinstance(start, Rewind), "a snapshot is planned by the state store"
            wanted = latest - start.count
        if wanted < earliest:
            if earliest > 0:
                complete = False  # removed by retention
            wanted = earliest
        ranges[p] = (min(wanted, latest), latest)
    fitted, within = fit(ranges, budget)
    starts.update(fitted)
    return Plan(starts, complete and within)


def scan_window(bounds: Mapping[int, Bounds], budget: int) -> Plan:
    """The newest records a keyed ``rewind`` may scan: ``budget`` in all, from each end.

    ``complete`` here says whether the window reaches back to offset 0 in
    every partition (nothing older exists that could hold the key).
    """
    starts, _ = fit({p: (b.earliest, b.latest) for p, b in bounds.items()}, budget)
    return Plan(starts, all(starts[p] == 0 for p in starts))


class KeyScan:
    """The offsets of the last ``count`` records of one key per partition, over a scan."""

    def __init__(self, count: int, window: Plan, ends: Mapping[int, int]) -> None:
        self.count = count
        self.window = window
        self.ends = dict(ends)
        self.found: dict[int, deque[int]] = {p: deque(maxlen=count) for p in window.starts}

    def matched(self, partition: int, offset: int) -> None:
        self.found[partition].append(offset)

    def plan(self) -> Plan:
        """From the N-th last match (or the window's end if there is none) per partition."""
        starts = {}
        short = False
        for p, offsets in self.found.items():
            starts[p] = offsets[0] if offsets else self.ends[p]
            short = short or len(offsets) < self.count
        return Plan(starts, self.window.complete or not short)


def is_keyed_rewind(start: Start, key: str | None) -> bool:
    return isinstance(start, Rewind) and key is not None and start.count > 0
