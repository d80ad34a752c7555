"""Channel → subscribers routing with bounded per-client outboxes.

The hub never awaits: :meth:`Hub.publish` takes a whole Kafka batch of
already-encoded frames, hands every subscriber the bytes it must receive and
returns. Per batch and channel the frames are joined once, so a subscriber of
a bare topic costs one list append and one ``write()`` per batch, whatever the
number of messages (design section 7).

An :class:`Outlet` is one client's outbound side. While its transport accepts
data, what a publish gives it is written at the end of that publish in one
call. While the transport is paused (above its high-water mark) the frames wait
in the outbox, counted in messages; a publish that would take the outbox past
the client's limit drops the outbox and reports the outlet as overflowing, so
the gateway closes it with 1008 and every other subscriber carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

_K = TypeVar("_K")


class Record(NamedTuple):
    """One Kafka message, encoded once for every subscriber."""

    topic: str
    key: bytes | None
    frame: bytes


class DeliveryStats:
    """Frames and bytes handed to client transports, summed over all outlets."""

    __slots__ = ("bytes", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0


class Outlet:
    """One client's outbound queue. Subclasses provide the transport.

    ``limit`` is the most messages that may wait while the transport is
    paused. ``on_overflow`` is called once, synchronously, when a publish
    exceeds it: it must not call back into the hub.
    """

    def __init__(
        self,
        limit: int,
        on_overflow: Callable[[Outlet], None],
        delivery: DeliveryStats | None = None,
    ) -> None:
        self.limit = limit
        self.on_overflow = on_overflow
        self.delivery = delivery if delivery is not None else DeliveryStats()
        self.outbox: list[bytes] = []
        self.queued = 0
        self.paused = False
        self.closed = False
        #: Frames written to this client (logged when it closes).
        self.frames_sent = 0

    def write(self, data: bytes) -> None:
        """Hand bytes to the transport (never blocks)."""
        raise NotImplementedError

    def push(self, data: bytes, count: int) -> bool:
        """Queue ``count`` frames; True when the outlet needs a :meth:`flush`."""
        if self.closed:
            return False
        self.outbox.append(data)
        self.queued += count
        if not self.paused:
            return len(self.outbox) == 1
        if self.queued > self.limit:
            self.overflow()
        return False

    def flush(self) -> None:
        """Write everything pending in one call, unless the transport is paused."""
        box = self.outbox
        if self.paused or self.closed or not box:
            return
        data = box[0] if len(box) == 1 else b"".join(box)
        self.frames_sent += self.queued
        delivery = self.delivery
        delivery.frames += self.queued
        delivery.bytes += len(data)
        box.clear()
        self.queued = 0
        self.write(data)

    def deliver(self, data: bytes, count: int) -> None:
        """:meth:`push` then :meth:`flush`, for a publish that has one chunk for this outlet.

        The common case (nothing pending, transport accepting) is one write,
        with no list in between: this runs once per subscriber per batch.
        """
        if self.outbox or self.paused or self.closed:
            if self.push(data, count):
                self.flush()
            return
        self.frames_sent += count
        delivery = self.delivery
        delivery.frames += count
        delivery.bytes += len(data)
        self.write(data)

    def send(self, frame: bytes) -> None:
        """Send one control frame, after whatever is already pending."""
        if self.push(frame, 1):
            self.flush()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.flush()

    def overflow(self) -> None:
        self.closed = True
        self.outbox.clear()
        self.queued = 0
        self.on_overflow(self)

    def close(self) -> None:
        """Stop delivering: pending frames are dropped."""
        self.closed = True
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

    def subscribe(self, outlet: Outlet, topic: str, key: str | None = None) -> None:
        """Add a subscription; idempotent. Raises KeyError for a topic not served."""
        if topic not in self.topics:
            raise KeyError(topic)
        if key is None:
            self._whole.setdefault(topic, set()).add(outlet)
        else:
            self._keyed.setdefault(topic, {}).setdefault(key.encode(), set()).add(outlet)
        self._channels.setdefault(outlet, set()).add((topic, key))

    def unsubscribe(self, outlet: Outlet, topic: str, key: str | None = None) -> None:
        """Remove a subscription; idempotent."""
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
        return whole + sum(len(s) for s in self._keyed.get(topic, {}).values())

    @property
    def outlet_count(self) -> int:
        return len(self._channels)

    def publish(self, batch: Sequence[Record]) -> None:
        """Deliver a batch, in order, to every subscriber; never blocks.

        Frames are grouped per topic (order within a topic, hence within each
        partition, is kept), joined once per topic for its whole-topic
        subscribers and once per subscriber for keyed subscriptions.
        """
        by_topic: dict[str, list[Record]] = {}
        for record in batch:
            records = by_topic.get(record.topic)
            if records is None:
                by_topic[record.topic] = [record]
            else:
                records.append(record)

        if len(by_topic) == 1:
            # One topic in this batch (the usual case): whole-topic subscribers
            # without keyed routes for it get the joined chunk in one write.
            ((topic, records),) = by_topic.items()
            whole = self._whole.get(topic)
            if whole and topic not in self._keyed:
                data = b"".join([r.frame for r in records])
                count = len(records)
                for outlet in whole:
                    outlet.deliver(data, count)
                return

        dirty: list[Outlet] = []
        for topic, records in by_topic.items():
            whole = self._whole.get(topic)
            if whole:
                data = b"".join([r.frame for r in records])
                count = len(records)
                for outlet in whole:
                    if outlet.push(data, count):
                        dirty.append(outlet)
            keyed = self._keyed.get(topic)
            if keyed:
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
                for outlet, pending in frames.items():
                    if outlet.push(b"".join(pending), len(pending)):
                        dirty.append(outlet)
        for outlet in dirty:
            outlet.flush()


def _discard(index: dict[_K, set[Outlet]], key: _K, outlet: Outlet) -> None:
    subscribers = index.get(key)
    if subscribers is not None:
        subscribers.discard(outlet)
        if not subscribers:
            del index[key]
