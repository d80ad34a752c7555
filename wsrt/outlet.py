"""One client's outbound side: a bounded queue over a write function, Sans-I/O.

An :class:`Outlet` has two verbs: :meth:`Outlet.enqueue` takes frames and
:meth:`Outlet.flush` writes everything pending in one call
(:meth:`Outlet.deliver` is both at once, without a list, for the hot path).
While the transport is paused (above its high-water mark) frames wait,
counted in messages. Either verb answers ``False`` when the outlet is
finished — its queue overflowed (``slow consumer``) or its write raised —
and records the :attr:`Outlet.verdict`. Like centrifuge's
``writer.enqueue``, the outlet never calls up into the gateway: the caller
closes the connection, once.

While a client's transport is paused, each topic's slow-consumer policy
decides what waits for it: ``disconnect`` queues the frames and finishes the
outlet past ``WS_CLIENT_BUFFER``; ``conflate`` keeps only the newest waiting
record per key; ``drop`` discards records once the buffer is full and
remembers the ranges. Those two need the records, not joined bytes, so they
go to :meth:`Outlet.hold` — only for a paused outlet: a client that keeps up
takes the same one write as before. On drain :class:`Held` writes a ``gap``
per partition that lost records and a ``conflated`` per channel that lost
values before what it kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import orjson

from wsrt.protocol import split_channel
from wsrt.wire import text_frame

#: :attr:`Outlet.verdict` values.
SLOW_CONSUMER = "slow consumer"
WRITE_FAILED = "write failed"

#: Slow-consumer policies (docs/design.md, "A slow client harms nobody").
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
    #: A ``delete`` event (a tombstone on a state topic), not a ``message``.
    deleted: bool = False
    #: Kafka's timestamp and headers, for filters (wsrt.filters.View).
    timestamp: int = 0
    headers: Sequence[tuple[str, bytes | None]] = ()


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
        "compress", "controls", "delivery", "error", "frames_sent", "held", "limit", "outbox",
        "paused", "peer", "queued", "verdict", "write",
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
        #: permessage-deflate: the frames as this client takes them (``None``: plain).
        self.compress: Callable[[bytes], bytes] | None = None

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
            if self.compress is not None:
                data = self.compress(data)
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

    def queue_control(self, frame: bytes) -> None:
        """A control frame before what comes next, written with it (:meth:`flush`)."""
        if self.verdict is None:
            self.outbox.append(frame)
            self.controls += 1

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
