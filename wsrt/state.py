"""The newest record of every key of the state topics, Sans-I/O.

See docs/design.md, "State on subscribe". For each topic named in
``WS_STATE_TOPICS`` a :class:`TopicState` keeps, per Kafka key, the newest
record's frame (the same bytes the live stream sends, encoded once) with its
partition and offset. The live stream applies every batch in the step that
publishes it (:meth:`State.apply`), so the store and the stream meet at exact
positions; a loader fills it at start from older records, which never
overwrite a newer value. A ``delete`` (a tombstone on a state topic) removes
the key. Past ``WS_STATE_MAX_KEYS`` or ``WS_STATE_MAX_BYTES`` the key updated
longest ago is evicted and counted: snapshots then say ``complete: false``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from wsrt.outlet import Record
from wsrt.wire import frame_payload, text_frame

#: Bytes a key's entry costs beside its frame: the dict slot, the tuple, the key.
ENTRY_OVERHEAD = 120


class Entry(NamedTuple):
    partition: int
    offset: int
    #: The record's ``message`` frame as the live stream sent it.
    frame: bytes


class TopicState:
    """One topic's keys and their newest values, bounded."""

    def __init__(self, topic: str, max_keys: int, max_bytes: int) -> None:
        self.topic = topic
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        #: key → newest entry; in update order (the first was updated longest ago).
        self.entries: dict[bytes, Entry] = {}
        #: Frame bytes held, plus :data:`ENTRY_OVERHEAD` and the key per entry.
        self.bytes = 0
        #: Keys evicted by the bounds since start.
        self.evicted = 0
        #: The loader is still reading history: deletes are remembered meanwhile.
        self.loading = False
        #: While loading: key → (partition, offset) of the delete that removed it.
        self.tombstones: dict[bytes, tuple[int, int]] = {}
        #: Loading from history failed: the store holds only what came live.
        self.failed = False
        #: Changes so far: snapshots of an unchanged store are built once.
        self.version = 0
        self._built: tuple[int, dict[tuple[frozenset[int], bytes | None, int], list[Any]]] = (0, {})

    @property
    def complete(self) -> bool:
        """Does the store hold every key it was given (nothing evicted, history loaded)?"""
        return self.evicted == 0 and not self.failed

    def apply(self, key: bytes, partition: int, offset: int, frame: bytes | None) -> int:
        """The record at ``offset``: a new value (``frame``) or a delete (``None``).

        An older record than the one held for the key changes nothing (the
        loader reads history while the live stream already moved on). Returns
        how many keys the bounds evicted.
        """
        held = self.entries.get(key)
        if held is not None:
            if held.partition == partition and held.offset >= offset:
                return 0
            self.version += 1
            del self.entries[key]
            self.bytes -= _cost(key, held.frame)
        elif self.loading:
            gone = self.tombstones.get(key)
            if gone is not None and gone[0] == partition and gone[1] >= offset:
                return 0  # the live stream deleted it after this older record
        if frame is None:
            if self.loading:
                self.tombstones[key] = (partition, offset)
            return 0
        self.version += 1
        self.entries[key] = Entry(partition, offset, frame)
        self.bytes += _cost(key, frame)
        evicted = 0
        while len(self.entries) > self.max_keys or (self.bytes > self.max_bytes and self.entries):
            oldest = next(iter(self.entries))
            self.bytes -= _cost(oldest, self.entries.pop(oldest).frame)
            evicted += 1
        self.evicted += evicted
        return evicted

    def snapshot(self, partitions: Iterable[int], key: bytes | None = None) -> list[bytes]:
        """The ``snapshot: true`` frames of ``partitions`` (or one ``key``): by partition, key.

        Built once per change of the store: clients that subscribe while it is
        unchanged (a reconnect storm) share the list, which must not be changed.
        """
        return self._cached(frozenset(partitions), key, 0)

    def chunks(
        self, partitions: Iterable[int], key: bytes | None, size: int
    ) -> list[tuple[bytes, int]]:
        """:meth:`snapshot` joined ``size`` frames at a time: (bytes, frames) to write."""
        return self._cached(frozenset(partitions), key, size)

    def _cached(self, wanted: frozenset[int], key: bytes | None, size: int) -> list[Any]:
        version, built = self._built
        if version != self.version:
            built = {}
            self._built = (self.version, built)
        found = built.get((wanted, key, size))
        if found is None:
            frames = built.get((wanted, key, 0))
            if frames is None:
                frames = built[(wanted, key, 0)] = self._build(wanted, key)
            if size:
                found = [
                    (b"".join(frames[i : i + size]), len(frames[i : i + size]))
                    for i in range(0, len(frames), size)
                ]
                built[(wanted, key, size)] = found
            else:
                found = frames
        return found

    def _build(self, wanted: frozenset[int], key: bytes | None) -> list[bytes]:
        if key is not None:
            held = self.entries.get(key)
            chosen = [(key, held)] if held is not None and held.partition in wanted else []
        else:
            chosen = [(k, e) for k, e in self.entries.items() if e.partition in wanted]
        chosen.sort(key=lambda item: (item[1].partition, item[0]))
        return [snapshot_frame(e.frame) for _, e in chosen]


class State:
    """Every state topic's :class:`TopicState`."""

    def __init__(self, topics: Iterable[str], max_keys: int, max_bytes: int) -> None:
        self.topics: dict[str, TopicState] = {t: TopicState(t, max_keys, max_bytes) for t in topics}

    def apply(self, records: Iterable[Record]) -> Mapping[str, int]:
        """A published batch; the keys evicted, by topic (only where any were)."""
        topics = self.topics
        evicted: dict[str, int] = {}
        for r in records:
            state = topics.get(r.topic)
            if state is None or r.key is None:
                continue  # not a state topic, or no key to be the state of
            n = state.apply(r.key, r.partition, r.offset, None if r.deleted else r.frame)
            if n:
                evicted[r.topic] = evicted.get(r.topic, 0) + n
        return evicted


_MESSAGE = b'{"type":"message",'


def snapshot_frame(frame: bytes) -> bytes:
    """A ``message`` frame of the live stream as the same envelope with ``"snapshot":true``."""
    payload = frame_payload(frame)
    assert payload.startswith(_MESSAGE)
    return text_frame(_MESSAGE + b'"snapshot":true,' + payload[len(_MESSAGE) :])


def _cost(key: bytes, frame: bytes) -> int:
    return len(frame) + len(key) + ENTRY_OVERHEAD
