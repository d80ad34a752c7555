"""Channel → subscribers routing with bounded per-client outlets, Sans-I/O.

The hub never awaits: :meth:`Hub.publish` takes a whole Kafka batch of
already-encoded frames, hands every subscriber the bytes it must receive and
returns the outlets that must be closed. Per batch and channel the frames are
joined once, so a subscriber of a bare topic costs one ``write()`` per batch,
whatever the number of messages (design section 7).

An :class:`Outlet` is one client's outbound side, over a write function the
gateway injects. It has two verbs: :meth:`Outlet.enqueue` takes frames and
:meth:`Outlet.flush` writes everything pending in one call
(:meth:`Outlet.deliver` is both at once, without a list, for the hot path). While the
transport is paused (above its high-water mark) frames wait, counted in
messages. Either verb answers ``False`` when the outlet is finished — its
queue overflowed (``slow consumer``) or its write raised — and records the
:attr:`Outlet.verdict`. Like centrifuge's ``writer.enqueue``, the outlet never
calls up into the gateway: the caller closes the connection, once.

A subscription that replays history (design section 10) is routed through a
:class:`Gate` until its replay has handed over to the live stream: the gate
holds back the live records of every partition still replaying and drops
those the replay already delivered. Once it has nothing left to hold or
drop, the hub moves the subscription onto the ordinary routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

_K = TypeVar("_K")

#: :attr:`Outlet.verdict` values.
SLOW_CONSUMER = "slow consumer"
WRITE_FAILED = "write failed"


class Record(NamedTuple):
    """One Kafka message, encoded once for every subscriber."""

    topic: str
    key: bytes | None
    frame: bytes
    partition: int
    offset: int


class Gate:
    """Which live records a replaying subscription takes, per partition.

    ``held`` partitions are still being replayed: none of their live records
    pass. :meth:`join` ends a partition's replay at ``floor``, the offset after
    the last record the replay delivered, when the live stream is behind it;
    live records below it are duplicates and are dropped, the first at or
    above it clears the floor.
    Partitions the gate does not name (not replayed, or new) pass.
    """

    __slots__ = ("floors", "held", "key")

    def __init__(self, key: str | None, held: Iterable[int]) -> None:
        self.key = key.encode() if key is not None else None
        self.held = set(held)
        self.floors: dict[int, int] = {}

    def join(self, partition: int, floor: int | None) -> None:
        """The replay of ``partition`` delivered every record before ``floor``.

        ``None``: the live stream itself is at that offset, nothing to drop.
        """
        self.held.discard(partition)
        if floor is not None:
            self.floors[partition] = floor

    def admits(self, partition: int, offset: int) -> bool:
        if partition in self.held:
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
        return not self.held and not self.floors


class DeliveryStats:
    """Frames and bytes handed to client transports, summed over all outlets."""

    __slots__ = ("bytes", "frames", "write_errors")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.write_errors = 0


class Outlet:
    """One client's outbound queue.

    ``write`` hands bytes to the transport and never blocks. ``limit`` is the
    most messages that may wait while the transport is paused. ``peer`` is the
    connection behind the outlet, opaque to the hub.
    """

    __slots__ = (
        "delivery", "error", "frames_sent", "limit", "outbox", "paused", "peer", "queued",
        "verdict", "write",
    )  # fmt: skip

    def __init__(
        self,
        write: Callable[[bytes], object],
        limit: int,
        delivery: DeliveryStats | None = None,
        peer: object = None,
    ) -> None:
        self.write = write
        self.limit = limit
        self.delivery = delivery if delivery is not None else DeliveryStats()
        self.peer = peer
        self.outbox: list[bytes] = []
        self.queued = 0
        self.paused = False
        #: Why the outlet stopped delivering (:data:`SLOW_CONSUMER`,
        #: :data:`WRITE_FAILED`, or ``"closed"``); ``None`` while it delivers.
        self.verdict: str | None = None
        #: The exception of a failed write.
        self.error: BaseException | None = None
        #: Frames written to this client (logged when it closes).
        self.frames_sent = 0

    @property
    def closed(self) -> bool:
        return self.verdict is not None

    def enqueue(self, data: bytes, count: int) -> bool:
        """Take ``count`` frames; ``False`` when this publish overflowed the outlet.

        Nothing is written here: call :meth:`flush` (the hub does, once per
        outlet per batch). A closed outlet takes nothing and reports nothing
        more: its verdict was reported once.
        """
        if self.verdict is not None:
            return True
        self.outbox.append(data)
        self.queued += count
        if self.paused and self.queued > self.limit:
            self._finish(SLOW_CONSUMER)
            return False
        return True

    def flush(self) -> bool:
        """Write everything pending in one call, unless paused; ``False`` when the write raised.

        A write error is contained here: it finishes this outlet and never
        reaches the hub loop or another client.
        """
        box = self.outbox
        if self.paused or self.verdict is not None or not box:
            return True
        data = box[0] if len(box) == 1 else b"".join(box)
        count = self.queued
        box.clear()
        self.queued = 0
        return self._write(data, count)

    def deliver(self, data: bytes, count: int) -> bool:
        """:meth:`enqueue` then :meth:`flush`, for a publish with one chunk for this outlet.

        The common case (nothing pending, transport accepting) is one write with
        no list in between: this runs once per subscriber per batch.
        """
        if self.outbox or self.paused or self.verdict is not None:
            return self.enqueue(data, count) and self.flush()
        return self._write(data, count)

    def _write(self, data: bytes, count: int) -> bool:
        try:
            self.write(data)
        except Exception as exc:  # any transport or library error, for this client only
            self.error = exc
            self.delivery.write_errors += 1
            self._finish(WRITE_FAILED)
            return False
        self.frames_sent += count
        delivery = self.delivery
        delivery.frames += count
        delivery.bytes += len(data)
        return True

    def send(self, frame: bytes) -> bool:
        """One control frame after whatever is pending; ``False`` as for the two verbs."""
        return self.enqueue(frame, 1) and self.flush()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> bool:
        """The transport takes data again: write what waited (``False``: the write raised)."""
        self.paused = False
        return self.flush()

    def close(self) -> None:
        """Stop delivering: pending frames are dropped."""
        if self.verdict is None:
            self._finish("closed")

    def _finish(self, verdict: str) -> None:
        self.verdict = verdict
        self.outbox.clear()
        self.queued = 0


class Hub:
    """Routes published batches to the outlets subscribed to their channels.

    A channel is ``(topic, None)`` for a whole topic or ``(topic, key)`` for
    the messages of one Kafka key. An outlet subscribed to a topic and to some
    of its keys receives each message once.
    """

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        #: topic → outlets subscribed to the whole topic.
        self._whole: dict[str, set[Outlet]] = {}
        #: topic → key → outlets subscribed to ``topic:key``.
        self._keyed: dict[str, dict[bytes, set[Outlet]]] = {}
        #: outlet → its channels, for unsubscribe-all on removal.
        self._channels: dict[Outlet, set[tuple[str, str | None]]] = {}
        #: topic → (outlet, key) → the gate of a subscription that is replaying.
        self._gated: dict[str, dict[tuple[Outlet, str | None], Gate]] = {}

    def subscribe(
        self, outlet: Outlet, topic: str, key: str | None = None, gate: Gate | None = None
    ) -> None:
        """Add a subscription (through ``gate`` while it replays); idempotent.

        Raises KeyError for a topic not served.
        """
        if topic not in self.topics:
            raise KeyError(topic)
        if gate is not None:
            self._gated.setdefault(topic, {})[(outlet, key)] = gate
        elif key is None:
            self._whole.setdefault(topic, set()).add(outlet)
        else:
            self._keyed.setdefault(topic, {}).setdefault(key.encode(), set()).add(outlet)
        self._channels.setdefault(outlet, set()).add((topic, key))

    def settle(self, outlet: Outlet, topic: str, key: str | None) -> None:
        """Move a replayed subscription whose gate has settled onto the ordinary route."""
        gated = self._gated.get(topic)
        if gated is not None and gated.pop((outlet, key), None) is not None:
            if not gated:
                del self._gated[topic]
            self.subscribe(outlet, topic, key)

    def unsubscribe(self, outlet: Outlet, topic: str, key: str | None = None) -> None:
        """Remove a subscription; idempotent."""
        gated = self._gated.get(topic)
        if gated is not None and gated.pop((outlet, key), None) is not None and not gated:
            del self._gated[topic]
        if key is None:
            _discard(self._whole, topic, outlet)
        else:
            keyed = self._keyed.get(topic)
            if keyed is not None:
                _discard(keyed, key.encode(), outlet)
                if not keyed:
                    del self._keyed[topic]
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
        return whole + gated + sum(len(s) for s in self._keyed.get(topic, {}).values())

    def subscribers(self, topic: str, key: bytes | None) -> set[Outlet]:
        """The outlets that receive a message of ``topic`` with ``key``."""
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
            # One topic in this batch (the usual case): whole-topic subscribers
            # without keyed routes for it get the joined chunk in one write.
            ((topic, records),) = by_topic.items()
            if topic not in self._keyed:
                whole = self._whole.get(topic)
                if whole:
                    data = b"".join([r.frame for r in records])
                    count = len(records)
                    for outlet in whole:
                        if not outlet.deliver(data, count):
                            finished.append(outlet)
                gated = self._gated.get(topic)
                if gated:
                    replaying: list[Outlet] = []
                    self._publish_gated(topic, records, gated, replaying, finished)
                    finished.extend(o for o in replaying if not o.flush())
                return finished

        dirty: list[Outlet] = []
        for topic, records in by_topic.items():
            whole = self._whole.get(topic)
            if whole:
                data = b"".join([r.frame for r in records])
                count = len(records)
                for outlet in whole:
                    if outlet.enqueue(data, count):
                        dirty.append(outlet)
                    else:
                        finished.append(outlet)
            gated = self._gated.get(topic)
            keyed = self._keyed.get(topic)
            if keyed:
                if gated:  # a whole topic replaying covers its keys too: once only
                    whole = (whole or set()) | {o for o, k in gated if k is None}
                for outlet, pending in _keyed_frames(records, keyed, whole).items():
                    if outlet.enqueue(b"".join(pending), len(pending)):
                        dirty.append(outlet)
                    else:
                        finished.append(outlet)
            if gated:
                self._publish_gated(topic, records, gated, dirty, finished)
        for outlet in dirty:
            if not outlet.flush():
                finished.append(outlet)
        return finished

    def _publish_gated(
        self,
        topic: str,
        records: list[Record],
        gated: dict[tuple[Outlet, str | None], Gate],
        dirty: list[Outlet],
        finished: list[Outlet],
    ) -> None:
        """Replaying subscriptions: each takes what its gate admits; settled gates move on."""
        settled: list[tuple[Outlet, str | None]] = []
        for (outlet, key), gate in gated.items():
            wanted = gate.key
            frames = [
                r.frame
                for r in records
                if (wanted is None or r.key == wanted) and gate.admits(r.partition, r.offset)
            ]
            if frames:
                if outlet.enqueue(b"".join(frames), len(frames)):
                    dirty.append(outlet)
                else:
                    finished.append(outlet)
            if gate.settled:
                settled.append((outlet, key))
        for outlet, key in settled:
            self.settle(outlet, topic, key)


def _keyed_frames(
    records: list[Record], keyed: dict[bytes, set[Outlet]], whole: set[Outlet] | None
) -> dict[Outlet, list[bytes]]:
    """Per keyed subscriber, the frames of its keys, in order; whole-topic subscribers skipped."""
    frames: dict[Outlet, list[bytes]] = {}
    for record in records:
        subscribers = keyed.get(record.key) if record.key is not None else None
        if not subscribers:
            continue
        for outlet in subscribers:
            if whole and outlet in whole:
                continue  # already has the whole topic: once only
            pending = frames.get(outlet)
            if pending is None:
                frames[outlet] = [record.frame]
            else:
                pending.append(record.frame)
    return frames


def _discard(index: dict[_K, set[Outlet]], key: _K, outlet: Outlet) -> None:
    subscribers = index.get(key)
    if subscribers is not None:
        subscribers.discard(outlet)
        if not subscribers:
            del index[key]
