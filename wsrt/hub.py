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

While a client's transport is paused, each topic's slow-consumer policy
(design section 11) decides what waits for it: ``disconnect`` queues the
frames and finishes the outlet past ``WS_CLIENT_BUFFER``; ``conflate`` keeps
only the newest waiting record per key; ``drop`` discards records once the
buffer is full and remembers the ranges. The two last ones need the records,
not joined bytes, so the hub hands them to :meth:`Outlet.hold` — only for a
paused outlet: a client that keeps up takes the same one write as before.
On drain :class:`Held` writes a ``gap`` per partition that lost records and
a ``conflated`` per channel that lost values before what it kept.

A subscription that replays history (design section 10) is routed through a
:class:`Gate` until its replay has handed over to the live stream: the gate
holds back the live records of every partition still replaying and drops
those the replay already delivered. Once it has nothing left to hold or
drop, the hub moves the subscription onto the ordinary routes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, TypeVar

import orjson

from wsrt.protocol import split_channel
from wsrt.wire import text_frame

_K = TypeVar("_K")

#: :attr:`Outlet.verdict` values.
SLOW_CONSUMER = "slow consumer"
WRITE_FAILED = "write failed"

#: Slow-consumer policies (design section 11).
DISCONNECT = "disconnect"
CONFLATE = "conflate"
DROP = "drop"
POLICIES = (DISCONNECT, CONFLATE, DROP)


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
    ``held`` of ``None`` holds every partition: the live stream has not been
    positioned yet, and :meth:`hold` names the partitions once it is.
    """

    __slots__ = ("floors", "held", "key")

    def __init__(self, key: str | None, held: Iterable[int] | None) -> None:
        self.key = key.encode() if key is not None else None
        self.held = set(held) if held is not None else None
        self.floors: dict[int, int] = {}

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


class DeliveryStats:
    """Frames and bytes handed to client transports, summed over all outlets.

    ``not_delivered`` counts, by (topic, policy), the messages a slow client
    did not get (replaced by a newer value, or dropped); ``notices`` the
    ``conflated`` and ``gap`` frames that told it; ``disconnects`` the clients
    closed for it.
    """

    __slots__ = ("bytes", "disconnects", "frames", "not_delivered", "notices", "write_errors")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.write_errors = 0
        self.not_delivered: Counter[tuple[str, str]] = Counter()
        self.notices: Counter[tuple[str, str]] = Counter()
        self.disconnects: Counter[tuple[str, str]] = Counter()


class Held:
    """What a paused outlet keeps for its ``conflate`` and ``drop`` channels.

    Built on the first record such a channel holds, gone on the next drain:
    an outlet that keeps up never has one.
    """

    __slots__ = ("dropped", "gaps", "latest")

    def __init__(self) -> None:
        #: conflate: channel → key (``(partition, offset)`` for no key) → newest record.
        self.latest: dict[str, dict[object, Record]] = {}
        #: conflate: channel → values replaced by a newer one.
        self.dropped: dict[str, int] = {}
        #: drop: (channel, partition) → [first offset, last offset, count] discarded.
        self.gaps: dict[tuple[str, int], list[int]] = {}

    def conflate(self, channel: str, records: Iterable[Record]) -> tuple[int, int]:
        """Keep the newest record per key; (distinct keys added, values replaced)."""
        latest = self.latest.get(channel)
        if latest is None:
            latest = self.latest[channel] = {}
        added = replaced = 0
        for r in records:
            key: object = r.key if r.key is not None else (r.partition, r.offset)
            # Re-inserted at the end: the kept values stay in arrival order,
            # hence in offset order per partition.
            if latest.pop(key, None) is None:
                added += 1
            else:
                replaced += 1
            latest[key] = r
        if replaced:
            self.dropped[channel] = self.dropped.get(channel, 0) + replaced
        return added, replaced

    def drop(self, channel: str, records: Iterable[Record]) -> int:
        """Record discarded records as ranges per partition; how many."""
        gaps = self.gaps
        n = 0
        for r in records:
            n += 1
            gap = gaps.get((channel, r.partition))
            if gap is None:
                gaps[(channel, r.partition)] = [r.offset, r.offset, 1]
            else:
                gap[1] = r.offset
                gap[2] += 1
        return n

    def forget(self, channel: str) -> int:
        """Drop what is held for an unsubscribed channel; how many queued values went."""
        self.dropped.pop(channel, None)
        for where in [w for w in self.gaps if w[0] == channel]:
            del self.gaps[where]
        return len(self.latest.pop(channel, ()))

    def release(self, delivery: DeliveryStats) -> tuple[list[bytes], int]:
        """The frames to write on drain: gaps, then per channel ``conflated`` and the values.

        Returns the chunks and how many of them are notices.
        """
        chunks: list[bytes] = []
        notices = 0
        for (channel, partition), (first, last, count) in self.gaps.items():
            chunks.append(text_frame(orjson.dumps({
                "type": "gap", "channel": channel, "partition": partition,
                "from": first, "to": last, "dropped": count,
            })))  # fmt: skip
            delivery.notices[(split_channel(channel)[0], DROP)] += 1
            notices += 1
        for channel, latest in self.latest.items():
            dropped = self.dropped.get(channel)
            if dropped:
                chunks.append(text_frame(orjson.dumps(
                    {"type": "conflated", "channel": channel, "dropped": dropped}
                )))  # fmt: skip
                delivery.notices[(split_channel(channel)[0], CONFLATE)] += 1
                notices += 1
            chunks.extend(r.frame for r in latest.values())
        return chunks, notices


class Outlet:
    """One client's outbound queue.

    ``write`` hands bytes to the transport and never blocks. ``limit`` is the
    most messages that may wait while the transport is paused. ``peer`` is the
    connection behind the outlet, opaque to the hub.
    """

    __slots__ = (
        "controls", "delivery", "error", "frames_sent", "held", "limit", "outbox", "paused",
        "peer", "queued", "verdict", "write",
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
        #: Messages waiting (in the outbox or held), bounded by ``limit``.
        self.queued = 0
        #: Control frames waiting: bounded by the control rate, not by ``limit``.
        self.controls = 0
        #: What ``conflate`` and ``drop`` channels keep while paused.
        self.held: Held | None = None
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

    def hold(self, topic: str, channel: str, records: Sequence[Record], policy: str) -> bool:
        """While paused, take the records of a ``conflate`` or ``drop`` channel.

        ``conflate`` keeps the newest record per key and fails (slow consumer)
        only when more distinct keys wait than ``limit``; ``drop`` queues
        records while there is room and counts the rest as a gap.
        """
        if self.verdict is not None:
            return True
        held = self.held
        if held is None:
            held = self.held = Held()
        if policy == CONFLATE:
            added, replaced = held.conflate(channel, records)
            self.queued += added
            if replaced:
                self.delivery.not_delivered[(topic, CONFLATE)] += replaced
            if self.queued > self.limit:
                self._finish(SLOW_CONSUMER)
                return False
            return True
        # Once a record is dropped, every later one is, until the drain: the
        # gap notice comes before anything newer of its partition.
        room = 0 if held.gaps else self.limit - self.queued
        if room > 0:
            kept = records[:room]
            self.outbox.append(b"".join([r.frame for r in kept]))
            self.queued += len(kept)
            records = records[room:]
        if records:
            self.delivery.not_delivered[(topic, DROP)] += held.drop(channel, records)
        return True

    def forget(self, channel: str) -> None:
        """The client unsubscribed ``channel``: what is held for it goes."""
        if self.held is not None:
            self.queued -= self.held.forget(channel)

    def flush(self) -> bool:
        """Write everything pending in one call, unless paused; ``False`` when the write raised.

        A write error is contained here: it finishes this outlet and never
        reaches the hub loop or another client.
        """
        box = self.outbox
        if self.paused or self.verdict is not None:
            return True
        held = self.held
        if held is not None:
            self.held = None
            chunks, notices = held.release(self.delivery)  # its values are in queued
            box.extend(chunks)
            self.controls += notices
        if not box:
            return True
        data = box[0] if len(box) == 1 else b"".join(box)
        count = self.queued + self.controls
        box.clear()
        self.queued = 0
        self.controls = 0
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
        """One control frame after whatever is pending; ``False`` when the write raised.

        Control frames do not count against ``limit``: a client that stops
        reading must not be closed for the answer to its own request.
        """
        if self.verdict is not None:
            return True
        self.outbox.append(frame)
        self.controls += 1
        return self.flush()

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
        self.controls = 0
        self.held = None


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

    def policy(self, topic: str) -> str:
        """The slow-consumer policy of ``topic``."""
        return self._policies.get(topic, DISCONNECT)

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
        """Remove a subscription (and what its outlet holds for it); idempotent."""
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
                    policy = self._policies.get(topic)
                    if policy is None:
                        for outlet in whole:
                            if not outlet.deliver(data, count):
                                self._lost(outlet, topic, finished)
                    else:  # the policy matters only to a paused client
                        for outlet in whole:
                            if outlet.paused:
                                if not outlet.hold(topic, topic, records, policy):
                                    self._lost(outlet, topic, finished)
                            elif not outlet.deliver(data, count):
                                self._lost(outlet, topic, finished)
                gated = self._gated.get(topic)
                if gated:
                    replaying: list[Outlet] = []
                    self._publish_gated(topic, records, gated, replaying, finished)
                    finished.extend(o for o in replaying if not o.flush())
                return finished

        dirty: list[Outlet] = []
        for topic, records in by_topic.items():
            policy = self._policies.get(topic)
            whole = self._whole.get(topic)
            if whole:
                data = b"".join([r.frame for r in records])
                count = len(records)
                for outlet in whole:
                    if policy is not None and outlet.paused:
                        taken = outlet.hold(topic, topic, records, policy)
                    else:
                        taken = outlet.enqueue(data, count)
                    if taken:
                        dirty.append(outlet)
                    else:
                        self._lost(outlet, topic, finished)
            gated = self._gated.get(topic)
            keyed = self._keyed.get(topic)
            if keyed:
                if gated:  # a whole topic replaying covers its keys too: once only
                    whole = (whole or set()) | {o for o, k in gated if k is None}
                for outlet, pending in _keyed_records(records, keyed, whole).items():
                    if policy is not None and outlet.paused:
                        taken = _hold_keyed(outlet, topic, pending, policy)
                    else:
                        taken = outlet.enqueue(b"".join([r.frame for r in pending]), len(pending))
                    if taken:
                        dirty.append(outlet)
                    else:
                        self._lost(outlet, topic, finished)
            if gated:
                self._publish_gated(topic, records, gated, dirty, finished)
        for outlet in dirty:
            if not outlet.flush():
                finished.append(outlet)
        return finished

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
        for (outlet, key), gate in self._gated.get(topic, {}).items():
            if gate.held is None or partition in gate.held:
                continue
            channel = topic if key is None else f"{topic}:{key}"
            told.append((outlet, channel, gate.floors.get(partition)))
        return [o for o, channel, floor in told if not o.send(notice(channel, floor))]

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
        for (outlet, key), gate in gated.items():
            wanted = gate.key
            admitted = [
                r
                for r in records
                if (wanted is None or r.key == wanted) and gate.admits(r.partition, r.offset)
            ]
            if admitted:
                if policy is not None and outlet.paused:
                    channel = topic if key is None else f"{topic}:{key}"
                    taken = outlet.hold(topic, channel, admitted, policy)
                else:
                    taken = outlet.enqueue(b"".join([r.frame for r in admitted]), len(admitted))
                if taken:
                    dirty.append(outlet)
                else:
                    self._lost(outlet, topic, finished)
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
