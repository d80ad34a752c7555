"""The hub's narrowed subscriptions: filtered ones and those with ``max_rate``, Sans-I/O.

:class:`Narrowed` keeps them for :class:`~wsrt.hub.Hub`. A filtered
subscription is routed through a :class:`Route` shared by every subscriber
of the same channel with the same filter: each distinct filter is evaluated
once per record, on a :class:`~wsrt.filters.View` made once per record for
all of them. A subscription with ``max_rate`` has a :class:`Capped` of its
own: at most that many messages per second per key, the newest value held
back and released by :meth:`Narrowed.release` once the key may send again,
after a ``conflated`` notice counting the values it replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import orjson

from wsrt.filters import Filter, View
from wsrt.outlet import Outlet, Record
from wsrt.wire import text_frame

#: Hand ``records`` (``data``: their frames joined, if at hand) of ``channel`` to an outlet.
Take = Callable[[Outlet, str, list[Record], bytes | None], None]


class Route:
    """The subscribers of one channel through one filter (equal filters: one route)."""

    __slots__ = ("channel", "key", "match", "outlets")

    def __init__(self, channel: str, key: bytes | None, match: Filter) -> None:
        self.channel = channel
        self.key = key
        self.match = match
        self.outlets: set[Outlet] = set()

    def admitted(self, records: list[Record], views: list[View]) -> list[Record]:
        """The records of its channel that its filter passes, in order."""
        test, key = self.match.test, self.key
        return [
            r for r, v in zip(records, views, strict=True)
            if (key is None or r.key == key) and test(v)
        ]  # fmt: skip


#: The label of values a ``max_rate`` replaced, in the delivery counters.
MAX_RATE = "max_rate"


class Capped:
    """One subscription with ``max_rate``: each key sends at most once per ``1 / rate``
    seconds; what comes sooner waits, the newest value of each key replacing the older."""

    __slots__ = ("channel", "dropped", "interval", "key", "match", "next_at", "outlet", "pending")

    def __init__(
        self, outlet: Outlet, channel: str, key: bytes | None, match: Filter | None, rate: float
    ) -> None:
        self.outlet = outlet
        self.channel = channel
        self.key = key
        self.match = match
        self.interval = 1.0 / rate
        #: key (``(partition, offset)`` for none) → when it may send again.
        self.next_at: dict[object, float] = {}
        #: key → its newest value waiting, in arrival order.
        self.pending: dict[object, Record] = {}
        #: Values replaced while waiting, not yet told.
        self.dropped = 0

    def admit(self, records: Iterable[Record], now: float) -> list[Record]:
        """The records to send now; the others wait (newest per key)."""
        sent: list[Record] = []
        pending, next_at = self.pending, self.next_at
        for r in records:
            key: object = r.key if r.key is not None else (r.partition, r.offset)
            if now >= next_at.get(key, 0.0):
                if pending.pop(key, None) is not None:
                    self.dropped += 1
                sent.append(r)
                next_at[key] = now + self.interval
            else:
                if pending.pop(key, None) is not None:
                    self.dropped += 1
                pending[key] = r
        return sent

    def due(self, now: float) -> list[Record]:
        """The waiting values whose keys may send again; forgets keys long quiet."""
        released = [k for k in self.pending if now >= self.next_at[k]]
        out = [self.pending.pop(k) for k in released]
        for k in released:
            self.next_at[k] = now + self.interval
        if len(self.next_at) > 2 * len(self.pending) + 64:
            self.next_at = {k: t for k, t in self.next_at.items() if t > now or k in self.pending}
        return out

    @property
    def wake(self) -> float | None:
        """When the first waiting value may go, if one waits."""
        return min((self.next_at[k] for k in self.pending), default=None)


def views(records: Sequence[Record]) -> list[View]:
    """Each record as filters see it (its value parsed only if a filter reads ``data``)."""
    return [View(r.key, r.partition, r.timestamp, r.headers, r.frame) for r in records]


class Narrowed:
    """Every topic's filtered and rate-capped subscriptions."""

    def __init__(self) -> None:
        #: topic → (channel, the filter's canonical text) → its route.
        self.filtered: dict[str, dict[tuple[str, bytes], Route]] = {}
        #: (outlet, topic, key) → the route of a filtered subscription.
        self.routes: dict[tuple[Outlet, str, str | None], Route] = {}
        #: topic → (outlet, key) → a subscription with ``max_rate``.
        self.capped: dict[str, dict[tuple[Outlet, str | None], Capped]] = {}
        #: Some ``max_rate`` value waits: :meth:`next_release` has an answer.
        self.waiting = False

    def __contains__(self, topic: str) -> bool:
        return topic in self.filtered or topic in self.capped

    def add(
        self, outlet: Outlet, topic: str, key: str | None, match: Filter | None, rate: float | None
    ) -> None:
        channel = topic if key is None else f"{topic}:{key}"
        raw = key.encode() if key is not None else None
        if rate is not None:
            self.capped.setdefault(topic, {})[(outlet, key)] = Capped(
                outlet, channel, raw, match, rate
            )
            return
        assert match is not None
        routes = self.filtered.setdefault(topic, {})
        route = routes.get((channel, match.canonical))
        if route is None:
            route = routes[(channel, match.canonical)] = Route(channel, raw, match)
        route.outlets.add(outlet)
        self.routes[(outlet, topic, key)] = route

    def remove(self, outlet: Outlet, topic: str, key: str | None) -> bool:
        """Forget a narrowed subscription; ``False`` when it is not one."""
        capped = self.capped.get(topic)
        if capped is not None and capped.pop((outlet, key), None) is not None:
            if not capped:
                del self.capped[topic]
            return True
        route = self.routes.pop((outlet, topic, key), None)
        if route is None:
            return False
        route.outlets.discard(outlet)
        if not route.outlets:
            routes = self.filtered[topic]
            del routes[(route.channel, route.match.canonical)]
            if not routes:
                del self.filtered[topic]
        return True

    def count(self, topic: str) -> int:
        filtered = sum(len(r.outlets) for r in self.filtered.get(topic, {}).values())
        return filtered + len(self.capped.get(topic, ()))

    def channels(self, topic: str) -> list[tuple[Outlet, str]]:
        """Each narrowed subscriber of ``topic`` and its channel (for notices)."""
        told = [(o, r.channel) for r in self.filtered.get(topic, {}).values() for o in r.outlets]
        return told + [(c.outlet, c.channel) for c in self.capped.get(topic, {}).values()]

    def publish(self, topic: str, records: list[Record], now: float, take: Take) -> None:
        """Hand each narrowed subscriber of ``topic`` its share of ``records``."""
        filtered, capped = self.filtered.get(topic), self.capped.get(topic)
        seen = views(records)
        for cap in (capped or {}).values():
            key, match = cap.key, cap.match
            wanted = [
                r for r, v in zip(records, seen, strict=True)
                if (key is None or r.key == key) and (match is None or match.test(v))
            ]  # fmt: skip
            sent = cap.admit(wanted, now) if wanted else None
            if sent:
                take(cap.outlet, cap.channel, sent, None)
            if cap.pending:
                self.waiting = True
        for route in (filtered or {}).values():
            admitted = route.admitted(records, seen)
            if admitted:
                data = b"".join([r.frame for r in admitted])
                for outlet in route.outlets:
                    take(outlet, route.channel, admitted, data)

    def release(self, now: float, take: Callable[[str], Take]) -> None:
        """``max_rate`` values whose keys may send again, each channel's after a
        ``conflated`` notice of what they replaced (``take(topic)`` hands them over)."""
        for topic, capped in self.capped.items():
            for cap in capped.values():
                released = cap.due(now) if cap.pending else None
                if not released:
                    continue
                outlet = cap.outlet
                if cap.dropped:
                    outlet.queue_control(text_frame(orjson.dumps(
                        {"type": "conflated", "channel": cap.channel, "dropped": cap.dropped}
                    )))  # fmt: skip
                    outlet.delivery.not_delivered[(topic, MAX_RATE)] += cap.dropped
                    outlet.delivery.notices[(topic, MAX_RATE)] += 1
                    cap.dropped = 0
                take(topic)(outlet, cap.channel, released, None)
        self.waiting = any(c.pending for capped in self.capped.values() for c in capped.values())

    def next_release(self) -> float | None:
        """When :meth:`release` has something to send next (monotonic seconds), if ever."""
        if not self.waiting:
            return None
        return min(
            (w for capped in self.capped.values() for c in capped.values()
             if (w := c.wake) is not None),
            default=None,
        )  # fmt: skip
