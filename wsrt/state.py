"""The newest record of every key of the state topics, Sans-I/O.

See docs/design.md, "State on subscribe". For each topic named in
``WS_STATE_TOPICS`` a :class:`TopicState` keeps, per Kafka key, the newest
record's frame as a snapshot sends it: the live stream's envelope with
``"snapshot":true``, made once per record, so that a snapshot is only joined
and written. Nothing else is kept per key (partition and offset are read back
from the frame where needed): the store costs little more than its frames.
The live stream applies every batch in the step that
publishes it (:meth:`State.apply`), so the store and the stream meet at exact
positions; a loader fills it at start from older records, which never
overwrite a newer value. A ``delete`` (a tombstone on a state topic) removes
the key. Past ``WS_STATE_MAX_KEYS`` or ``WS_STATE_MAX_BYTES`` the key updated
longest ago is evicted and counted: snapshots then say ``complete: false``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from wsrt.filters import Filter, View
from wsrt.outlet import Record
from wsrt.wire import frame_payload, text_frame

#: Bytes a key's entry costs beside its frame and key: two bytes objects' heads, the dict slot.
ENTRY_OVERHEAD = 100
#: And each Kafka header kept for filters: a tuple and two objects' heads.
HEADER_OVERHEAD = 120


class TopicState:
    """One topic's keys and their newest values, bounded."""

    def __init__(self, topic: str, max_keys: int, max_bytes: int) -> None:
        self.topic = topic
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        #: key → its newest value's snapshot frame; in update order (the first was
        #: updated longest ago).
        self.entries: dict[bytes, bytes] = {}
        #: key → the Kafka headers of its newest value, where it has any (for filters).
        self.headers: dict[bytes, Sequence[tuple[str, bytes | None]]] = {}
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
        #: Changes of the set of keys (or of a key's partition): the order of a snapshot.
        self.keyset = 0
        #: Partitions wanted → their keys in snapshot order, as of ``keyset``.
        self._orders: tuple[int, dict[frozenset[int], list[bytes]]] = (0, {})
        self._built: tuple[
            int,
            dict[tuple[frozenset[int], bytes | None, int, bytes | None], list[tuple[bytes, int]]],
        ] = (0, {})

    @property
    def complete(self) -> bool:
        """Does the store hold every key it was given (nothing evicted, history loaded)?"""
        return self.evicted == 0 and not self.failed

    def apply(
        self,
        key: bytes,
        partition: int,
        offset: int,
        frame: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> int:
        """The record at ``offset``: a new value (its live ``frame``) or a delete (``None``).

        An older record than the one held for the key changes nothing (the
        loader reads history while the live stream already moved on). Returns
        how many keys the bounds evicted.
        """
        held = self.entries.get(key)
        if held is not None:
            held_partition, held_offset = position(held)
            if held_partition == partition and held_offset >= offset:
                return 0
            self.version += 1
            if frame is None or held_partition != partition:
                self.keyset += 1
            del self.entries[key]
            self.bytes -= _cost(key, held, self.headers.pop(key, ()))
        else:
            if self.loading:
                gone = self.tombstones.get(key)
                if gone is not None and gone[0] == partition and gone[1] >= offset:
                    return 0  # the live stream deleted it after this older record
            if frame is not None:
                self.keyset += 1
        if frame is None:
            if self.loading:
                self.tombstones[key] = (partition, offset)
            return 0
        self.version += 1
        kept = self.entries[key] = snapshot_frame(frame)
        if headers:
            self.headers[key] = headers
        self.bytes += _cost(key, kept, headers)
        evicted = 0
        while len(self.entries) > self.max_keys or (self.bytes > self.max_bytes and self.entries):
            oldest = next(iter(self.entries))
            self.bytes -= _cost(oldest, self.entries.pop(oldest), self.headers.pop(oldest, ()))
            evicted += 1
        if evicted:
            self.evicted += evicted
            self.keyset += 1
        return evicted

    def chunks(
        self, partitions: Iterable[int], key: bytes | None, size: int, match: Filter | None = None
    ) -> list[tuple[bytes, int]]:
        """The ``snapshot: true`` frames of ``partitions`` (or one ``key``) that ``match``
        passes, by partition then key, joined into writes of about ``size`` bytes:
        (bytes, frames).

        Built once per change of the store and filter: clients that subscribe
        while it is unchanged (a reconnect storm) share the list, which must not
        be changed.
        """
        wanted = frozenset(partitions)
        version, built = self._built
        if version != self.version:
            built = {}
            self._built = (self.version, built)
        cached = (wanted, key, size, match.canonical if match is not None else None)
        found = built.get(cached)
        if found is None:
            held = self._build(wanted, key)
            heads = self.headers
            frames = [f for k, f in held if match is None or _passes(match, k, f, heads.get(k, ()))]
            found = built[cached] = _joined(frames, size)
        return found

    def _build(self, wanted: frozenset[int], key: bytes | None) -> list[tuple[bytes, bytes]]:
        entries = self.entries
        if key is not None:
            held = entries.get(key)
            return [(key, held)] if held is not None and position(held)[0] in wanted else []
        keyset, orders = self._orders
        if keyset != self.keyset:
            orders = {}
            self._orders = (self.keyset, orders)
        order = orders.get(wanted)
        if order is None:  # new keys since: sort again (a new value keeps its key's place)
            placed = [(position(f)[0], k) for k, f in entries.items()]
            placed.sort()
            order = orders[wanted] = [k for p, k in placed if p in wanted]
        return [(k, entries[k]) for k in order]


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
            frame = None if r.deleted else r.frame
            n = state.apply(r.key, r.partition, r.offset, frame, r.headers)
            if n:
                evicted[r.topic] = evicted.get(r.topic, 0) + n
        return evicted


_MESSAGE = b'{"type":"message",'
_PARTITION = b'"partition":'
_OFFSET = b',"offset":'


def position(frame: bytes) -> tuple[int, int]:
    """(partition, offset) of a ``message`` frame, read back from its envelope.

    The key before them is JSON text with its quotes escaped, so the first
    ``"partition":`` is the envelope's own.
    """
    start = frame.index(_PARTITION) + len(_PARTITION)
    comma = frame.index(b",", start)
    end = frame.index(b",", comma + len(_OFFSET))
    return int(frame[start:comma]), int(frame[comma + len(_OFFSET) : end])


def snapshot_frame(frame: bytes) -> bytes:
    """A ``message`` frame of the live stream as the same envelope with ``"snapshot":true``."""
    payload = frame_payload(frame)
    assert payload.startswith(_MESSAGE)
    return text_frame(_MESSAGE + b'"snapshot":true,' + payload[len(_MESSAGE) :])


def _joined(frames: list[bytes], size: int) -> list[tuple[bytes, int]]:
    """``frames`` joined into pieces of at least ``size`` bytes (the last one shorter)."""
    pieces: list[tuple[bytes, int]] = []
    first, length = 0, 0
    for n, frame in enumerate(frames, 1):
        length += len(frame)
        if length >= size:
            pieces.append((b"".join(frames[first:n]), n - first))
            first, length = n, 0
    if first < len(frames):
        pieces.append((b"".join(frames[first:]), len(frames) - first))
    return pieces


def _passes(
    match: Filter, key: bytes, frame: bytes, headers: Sequence[tuple[str, bytes | None]]
) -> bool:
    """Does the filter pass a held value (a state topic's snapshot frame)?"""
    return match.test(View.of_envelope(key, frame, headers))


def _cost(key: bytes, frame: bytes, headers: Sequence[tuple[str, bytes | None]]) -> int:
    extra = sum(len(n) + len(v or b"") + HEADER_OVERHEAD for n, v in headers) if headers else 0
    return len(frame) + len(key) + ENTRY_OVERHEAD + extra
