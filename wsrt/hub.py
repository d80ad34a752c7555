"""Channel → subscribers routing of already-encoded records, Sans-I/O.

The hub never awaits: :meth:`Hub.publish` takes a whole Kafka batch of
already-encoded frames, hands every subscriber the bytes it must receive
(through its :class:`~wsrt.outlet.Outlet`) and returns the outlets that must
be closed. Per batch and channel the frames are joined once, so a subscriber
of a bare topic costs one ``write()`` per batch, whatever the number of
messages (docs/design.md, "Encode once, write once").

Filtered subscriptions and those with ``max_rate`` (docs/protocol.md,
"Filters") are routed by :class:`~wsrt.narrow.Narrowed`.

A subscription that replays history is routed through a :class:`Gate` until
its replay has handed over to the live stream: the gate holds back the live
records of every partition still replaying and drops those the replay
already delivered. Once it has nothing left to hold or drop, the hub moves
the subscription onto the ordinary routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from wsrt.filters import Filter, View
from wsrt.narrow import Narrowed, Take, views
from wsrt.outlet import (
    CONFLATE,
    DISCONNECT,
    DROP,
    POLICIES,
    SLOW_CONSUMER,
    WRITE_FAILED,
    Outlet,
    Record,
)

__all__ = [
    "CONFLATE", "DISCONNECT", "DROP", "POLICIES", "SLOW_CONSUMER", "WRITE_FAILED", "Gate", "Hub",
    "Outlet", "Record",
]  # fmt: skip

_K = TypeVar("_K")


class Gate:
    """Which live records a replaying subscription takes, per partition.

    ``held`` partitions are still being replayed: none of their live records
    pass. :meth:`join` ends a partition's replay at ``floor``, the offset after
    the last record the replay delivered, when the live stream is behind it;
    live records below it are duplicates and are dropped, the first at or
    above it clears the floor.
    Partitions the gate does not name (not replayed, or new) pass.
    ``held`` of ``None`` holds every partition: the live stream has not been
    positioned yet, and :meth:`hold` names the partitions once it is.
    """

    __slots__ = ("floors", "held", "key", "match", "rate")

    def __init__(
        self,
        key: str | None,
        held: Iterable[int] | None,
        match: Filter | None = None,
        rate: float | None = None,
    ) -> None:
        self.key = key.encode() if key is not None else None
        self.held = set(held) if held is not None else None
        self.floors: dict[int, int] = {}
        #: The subscription's filter: the replay and the live records it admits pass it.
        self.match = match
        #: Its ``max_rate``, which applies from the handover on.
        self.rate = rate

    def hold(self, partitions: Iterable[int]) -> None:
        """Hold exactly ``partitions`` (the live stream's, now that it is positioned)."""
        self.held = set(partitions)

    def join(self, partition: int, floor: int | None) -> None:
        """The replay of ``partition`` delivered every record before ``floor``.

        ``None``: the live stream itself is at that offset, nothing to drop.
        """
        assert self.held is not None, "a replay joins only once the live stream is positioned"
        self.held.discard(partition)
        if floor is not None:
            self.floors[partition] = floor

    def admits(self, partition: int, offset: int) -> bool:
        held = self.held
        if held is None or partition in held:
            return False
        floor = self.floors.get(partition)
        if floor is None:
            return True
        if offset < floor:
            return False
        del self.floors[partition]
        return True

    @property
    def settled(self) -> bool:
        """Nothing left to hold back or drop: the ordinary route gives the same stream."""
        return self.held is not None and not self.held and not self.floors


class Hub:
    """Routes published batches to the outlets subscribed to their channels.

    A channel is ``(topic, None)`` for a whole topic or ``(topic, key)`` for
    the messages of one Kafka key. An outlet subscribed to a topic and to some
    of its keys receives each message once. ``policies`` maps topics to their
    slow-consumer policy (:data:`DISCONNECT` where not named).
    """

    def __init__(self, topics: Iterable[str], policies: Mapping[str, str] | None = None) -> None:
        self.topics = frozenset(topics)
        #: topic → its policy, for the topics that do not disconnect.
        self._policies: dict[str, str] = {}
        for topic, policy in (policies or {}).items():
            if topic not in self.topics or policy not in POLICIES:
                raise ValueError(f"no policy {policy!r} for topic {topic!r}")
            if policy != DISCONNECT:
                self._policies[topic] = policy
        #: topic → outlets subscribed to the whole topic.
        self._whole: dict[str, set[Outlet]] = {}
        #: topic → key → outlets subscribed to ``topic:key``.
        self._keyed: dict[str, dict[bytes, set[Outlet]]] = {}
        #: outlet → its channels, for unsubscribe-all on removal.
        self._channels: dict[Outlet, set[tuple[str, str | None]]] = {}
        #: topic → (outlet, key) → the gate of a subscription that is replaying.
        self._gated: dict[str, dict[tuple[Outlet, str | None], Gate]] = {}
        #: Filtered and rate-capped subscriptions.
        self._narrowed = Narrowed()
        #: Monotonic seconds, for ``max_rate``.
        self.clock: Callable[[], float] = time.monotonic

    def policy(self, topic: str) -> str:
        """The slow-consumer policy of ``topic``."""
        return self._policies.get(topic, DISCONNECT)

    def subscribe(
        self,
        outlet: Outlet,
        topic: str,
        key: str | None = None,
        gate: Gate | None = None,
        match: Filter | None = None,
        rate: float | None = None,
    ) -> None:
        """Add a subscription (through ``gate`` while it replays, the gate holding its
        filter and rate; through ``match`` and ``rate`` once live); idempotent.

        Raises KeyError for a topic not served.
        """
        if topic not in self.topics:
            raise KeyError(topic)
        if gate is not None:
            self._gated.setdefault(topic, {})[(outlet, key)] = gate
        elif match is not None or rate is not None:
            self._narrowed.add(outlet, topic, key, match, rate)
        elif key is None:
            self._whole.setdefault(topic, set()).add(outlet)
        else:
            self._keyed.setdefault(topic, {}).setdefault(key.encode(), set()).add(outlet)
        self._channels.setdefault(outlet, set()).add((topic, key))

    def settle(self, outlet: Outlet, topic: str, key: str | None) -> None:
        """Move a replayed subscription whose gate has settled onto the ordinary route."""
        gated = self._gated.get(topic)
        gate = gated.pop((outlet, key), None) if gated is not None else None
        if gated is not None and gate is not None:
            if not gated:
                del self._gated[topic]
            self.subscribe(outlet, topic, key, match=gate.match, rate=gate.rate)

    def unsubscribe(self, outlet: Outlet, topic: str, key: str | None = None) -> None:
        """Remove a subscription (and what its outlet holds for it); idempotent."""
        gated = self._gated.get(topic)
        if gated is not None and gated.pop((outlet, key), None) is not None and not gated:
            del self._gated[topic]
        if self._narrowed.remove(outlet, topic, key):
            pass  # it was on neither of the plain routes
        elif key is None:
            _discard(self._whole, topic, outlet)
        else:
            keyed = self._keyed.get(topic)
            if keyed is not None:
                _discard(keyed, key.encode(), outlet)
                if not keyed:
                    del self._keyed[topic]
        if outlet.held is not None:
            outlet.forget(topic if key is None else f"{topic}:{key}")
        channels = self._channels.get(outlet)
        if channels is not None:
            channels.discard((topic, key))
            if not channels:
                del self._channels[outlet]

    def remove(self, outlet: Outlet) -> None:
        """Forget every subscription of a closing outlet."""
        for topic, key in list(self._channels.get(outlet, ())):
            self.unsubscribe(outlet, topic, key)

    def subscription_count(self, topic: str) -> int:
        """Subscriptions to ``topic`` and its ``topic:key`` channels."""
        whole = len(self._whole.get(topic, ()))
        gated = len(self._gated.get(topic, ()))
        filtered = self._narrowed.count(topic)
        return whole + gated + filtered + sum(len(s) for s in self._keyed.get(topic, {}).values())

    def subscribers(self, topic: str, key: bytes | None) -> set[Outlet]:
        """The outlets that receive a message of ``topic`` with ``key`` (unfiltered routes)."""
        outlets = set(self._whole.get(topic, ()))
        if key is not None:
            outlets |= self._keyed.get(topic, {}).get(key, set())
        return outlets

    @property
    def outlet_count(self) -> int:
        return len(self._channels)

    def publish(self, batch: Sequence[Record]) -> list[Outlet]:
        """Deliver a batch, in order, to every subscriber; never blocks.

        Frames are grouped per topic (order within a topic, hence within each
        partition, is kept), joined once per topic for its whole-topic
        subscribers and once per subscriber for keyed subscriptions. Returns
        the outlets finished by this publish (see :attr:`Outlet.verdict`): the
        caller closes them and removes them from the hub.
        """
        by_topic: dict[str, list[Record]] = {}
        for record in batch:
            records = by_topic.get(record.topic)
            if records is None:
                by_topic[record.topic] = [record]
            else:
                records.append(record)
        finished: list[Outlet] = []
        if len(by_topic) == 1:
            ((topic, records),) = by_topic.items()
            if topic not in self._keyed and topic not in self._narrowed:  # the usual case
                self._publish_whole(topic, records, finished)
                return finished
        dirty: list[Outlet] = []
        for topic, records in by_topic.items():
            policy = self._policies.get(topic)
            whole = self._whole.get(topic)
            if whole:
                data = b"".join([r.frame for r in records])
                for outlet in whole:
                    self._take(outlet, topic, topic, records, policy, data, dirty, finished)
            gated = self._gated.get(topic)
            keyed = self._keyed.get(topic)
            if keyed:
                if gated:  # a whole topic replaying covers its keys too: once only
                    whole = (whole or set()) | {o for o, k in gated if k is None}
                for outlet, pending in _keyed_records(records, keyed, whole).items():
                    self._take(outlet, topic, None, pending, policy, None, dirty, finished)
            if topic in self._narrowed:
                take = self._taker(topic, dirty, finished)
                self._narrowed.publish(topic, records, self.clock(), take)
            if gated:
                self._publish_gated(topic, records, gated, dirty, finished)
        finished.extend(o for o in dirty if not o.flush())
        return finished

    def _publish_whole(self, topic: str, records: list[Record], finished: list[Outlet]) -> None:
        """One topic, no keyed routes: each whole-topic subscriber gets the joined chunk in
        one write (:meth:`Outlet.deliver`); only a paused one on a conflate/drop topic holds."""
        whole = self._whole.get(topic)
        if whole:
            data = b"".join([r.frame for r in records])
            count = len(records)
            policy = self._policies.get(topic)
            for outlet in whole:
                if policy is not None and outlet.paused:
                    taken = outlet.hold(topic, topic, records, policy)
                else:
                    taken = outlet.deliver(data, count)
                if not taken:
                    self._lost(outlet, topic, finished)
        gated = self._gated.get(topic)
        if gated:
            replaying: list[Outlet] = []
            self._publish_gated(topic, records, gated, replaying, finished)
            finished.extend(o for o in replaying if not o.flush())

    def _take(
        self,
        outlet: Outlet,
        topic: str,
        channel: str | None,
        records: list[Record],
        policy: str | None,
        data: bytes | None,
        dirty: list[Outlet],
        finished: list[Outlet],
    ) -> None:
        """One subscriber's share of a publish: held (paused, on a conflate or drop topic)
        or queued; then the outlet is flushed later (``dirty``) or reported lost.

        ``channel`` ``None`` is a keyed route: each key is its own channel.
        ``data`` is the records' frames joined, when the caller has them.
        """
        if policy is not None and outlet.paused:
            if channel is None:
                taken = _hold_keyed(outlet, topic, records, policy)
            else:
                taken = outlet.hold(topic, channel, records, policy)
        else:
            chunk = data if data is not None else b"".join([r.frame for r in records])
            taken = outlet.enqueue(chunk, len(records))
        if taken:
            dirty.append(outlet)
        else:
            self._lost(outlet, topic, finished)

    def tell(
        self, topic: str, partition: int, notice: Callable[[str, int | None], bytes]
    ) -> list[Outlet]:
        """Send every subscriber of ``topic`` a notice about ``partition``; the outlets finished.

        ``notice(channel, floor)`` builds the frame for a channel name; ``floor``
        is where a replayed subscription's gate starts that partition, if it
        does. A subscription still replaying ``partition`` is left out: its
        replay tells it itself.
        """
        told: list[tuple[Outlet, str, int | None]] = [
            (o, topic, None) for o in self._whole.get(topic, ())
        ]
        for raw, outlets in self._keyed.get(topic, {}).items():
            told += [(o, f"{topic}:{raw.decode()}", None) for o in outlets]
        told += [(o, channel, None) for o, channel in self._narrowed.channels(topic)]
        for (outlet, key), gate in self._gated.get(topic, {}).items():
            if gate.held is None or partition in gate.held:
                continue
            channel = topic if key is None else f"{topic}:{key}"
            told.append((outlet, channel, gate.floors.get(partition)))
        return [o for o, channel, floor in told if not o.send(notice(channel, floor))]

    @property
    def waiting(self) -> bool:
        """Some ``max_rate`` value waits for :meth:`release`."""
        return self._narrowed.waiting

    def release(self, now: float) -> list[Outlet]:
        """``max_rate`` values whose keys may send again (:meth:`Narrowed.release
        <wsrt.narrow.Narrowed.release>`); the outlets finished."""
        finished: list[Outlet] = []
        dirty: list[Outlet] = []
        self._narrowed.release(now, lambda topic: self._taker(topic, dirty, finished))
        finished.extend(o for o in dirty if not o.flush())
        return finished

    def _taker(self, topic: str, dirty: list[Outlet], finished: list[Outlet]) -> Take:
        """:meth:`_take` for the narrowed subscriptions of ``topic``."""
        policy = self._policies.get(topic)

        def take(outlet: Outlet, channel: str, taken: list[Record], data: bytes | None) -> None:
            self._take(outlet, topic, channel, taken, policy, data, dirty, finished)

        return take

    def next_release(self) -> float | None:
        """When :meth:`release` has something to send next (monotonic seconds), if ever."""
        return self._narrowed.next_release()

    def _lost(self, outlet: Outlet, topic: str, finished: list[Outlet]) -> None:
        """``outlet`` failed on a record of ``topic``: report it, and count a disconnect."""
        finished.append(outlet)
        if outlet.verdict == SLOW_CONSUMER:
            outlet.delivery.disconnects[(topic, self.policy(topic))] += 1

    def _publish_gated(
        self,
        topic: str,
        records: list[Record],
        gated: dict[tuple[Outlet, str | None], Gate],
        dirty: list[Outlet],
        finished: list[Outlet],
    ) -> None:
        """Replaying subscriptions: each takes what its gate admits; settled gates move on."""
        policy = self._policies.get(topic)
        settled: list[tuple[Outlet, str | None]] = []
        seen: list[View] | None = None
        for (outlet, key), gate in gated.items():
            wanted, match = gate.key, gate.match
            if match is not None and seen is None:
                seen = views(records)
            admitted = [
                r
                for n, r in enumerate(records)
                if (wanted is None or r.key == wanted)
                and gate.admits(r.partition, r.offset)
                and (match is None or seen is None or match.test(seen[n]))
            ]
            if admitted:
                channel = topic if key is None else f"{topic}:{key}"
                self._take(outlet, topic, channel, admitted, policy, None, dirty, finished)
            if gate.settled:
                settled.append((outlet, key))
        for outlet, key in settled:
            self.settle(outlet, topic, key)


def _keyed_records(
    records: list[Record], keyed: dict[bytes, set[Outlet]], whole: set[Outlet] | None
) -> dict[Outlet, list[Record]]:
    """Per keyed subscriber, the records of its keys, in order; whole-topic subscribers skipped."""
    routed: dict[Outlet, list[Record]] = {}
    for record in records:
        subscribers = keyed.get(record.key) if record.key is not None else None
        if not subscribers:
            continue
        for outlet in subscribers:
            if whole and outlet in whole:
                continue  # already has the whole topic: once only
            pending = routed.get(outlet)
            if pending is None:
                routed[outlet] = [record]
            else:
                pending.append(record)
    return routed


def _hold_keyed(outlet: Outlet, topic: str, records: list[Record], policy: str) -> bool:
    """:meth:`Outlet.hold` for keyed subscriptions: each key is its own channel."""
    by_key: dict[bytes, list[Record]] = {}
    for r in records:
        assert r.key is not None  # keyed routes only carry keyed records
        by_key.setdefault(r.key, []).append(r)
    return all(
        outlet.hold(topic, f"{topic}:{key.decode()}", keyed, policy)
        for key, keyed in by_key.items()
    )


def _discard(index: dict[_K, set[Outlet]], key: _K, outlet: Outlet) -> None:
    subscribers = index.get(key)
    if subscribers is not None:
        subscribers.discard(outlet)
        if not subscribers:
            del index[key]
