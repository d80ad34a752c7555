"""The state topics' store (docs/design.md, "State on subscribe"): newest value per key,
deletes, bounds, and snapshots of exact positions."""

from __future__ import annotations

import orjson

from wsrt.outlet import Record
from wsrt.state import ENTRY_OVERHEAD, State, TopicState, position, snapshot_frame
from wsrt.wire import Envelopes, delete_frame, frame_payload, record_frame


def frame(key: bytes, offset: int, value: bytes = b'{"v":1}', partition: int = 0) -> bytes:
    return record_frame("book", key, partition, offset, 1_000, value)


def test_the_newest_value_per_key_wins_and_an_older_one_never_replaces_it() -> None:
    state = TopicState("book", max_keys=10, max_bytes=1 << 20)
    state.apply(b"BTC", 0, 5, frame(b"BTC", 5, b'{"v":5}'))
    state.apply(b"BTC", 0, 3, frame(b"BTC", 3, b'{"v":3}'))  # the loader, behind the live stream
    state.apply(b"ETH", 1, 2, frame(b"ETH", 2, partition=1))
    assert {k: position(f) for k, f in state.entries.items()} == {b"BTC": (0, 5), b"ETH": (1, 2)}
    state.apply(b"BTC", 0, 6, None)  # a delete
    assert list(state.entries) == [b"ETH"] and state.complete


def test_past_its_bounds_the_key_updated_longest_ago_is_evicted() -> None:
    state = TopicState("book", max_keys=2, max_bytes=1 << 20)
    for offset, key in enumerate([b"a", b"b", b"a", b"c"]):
        state.apply(key, 0, offset, frame(key, offset))
    assert list(state.entries) == [b"a", b"c"]  # b was updated longest ago
    assert state.evicted == 1 and not state.complete
    small = TopicState(
        "book",
        max_keys=100,
        max_bytes=2 * (len(snapshot_frame(frame(b"a", 0))) + 1 + ENTRY_OVERHEAD),
    )
    for offset, key in enumerate([b"a", b"b", b"c"]):
        small.apply(key, 0, offset, frame(key, offset))
    assert list(small.entries) == [b"b", b"c"] and small.bytes <= small.max_bytes


def frames(state: TopicState, partitions: set[int], key: bytes | None = None) -> list[bytes]:
    """A snapshot's frames one by one (writes of at least one byte: one frame each)."""
    return [f for f, _ in state.chunks(partitions, key, 1)]


def test_a_snapshot_is_the_same_envelope_marked_snapshot_by_partition_then_key() -> None:
    state = TopicState("book", max_keys=10, max_bytes=1 << 20)
    state.apply(b"z", 0, 1, frame(b"z", 1))
    state.apply(b"a", 1, 2, frame(b"a", 2, partition=1))
    state.apply(b"m", 0, 3, frame(b"m", 3))
    got = [orjson.loads(frame_payload(f)) for f in frames(state, {0, 1})]
    assert [(m["partition"], m["key"], m["snapshot"]) for m in got] == [
        (0, "m", True), (0, "z", True), (1, "a", True)
    ]  # fmt: skip
    assert [orjson.loads(frame_payload(f))["key"] for f in frames(state, {0})] == ["m", "z"]
    assert [orjson.loads(frame_payload(f))["offset"] for f in frames(state, {1}, b"a")] == [2]
    assert frames(state, {0}, b"a") == []  # that key lives in partition 1
    live = frame(b"z", 1)
    assert orjson.loads(frame_payload(snapshot_frame(live))) == {
        **orjson.loads(frame_payload(live)), "snapshot": True
    }  # fmt: skip


def test_partition_and_offset_are_read_back_from_any_key() -> None:
    for key in [b'x","partition":7,"offset":8,', b"\xff\x00", b"plain"]:
        for partition, offset in [(0, 0), (12, 2**40)]:
            held = snapshot_frame(record_frame("book", key, partition, offset, 5, b"{}"))
            assert position(held) == (partition, offset)


def test_a_tombstone_is_a_delete_on_a_state_topic_and_skipped_elsewhere() -> None:
    state, plain = Envelopes({}, (), ["book"]), Envelopes({}, (), [])
    delete, deleted = state.frame("book", b"BTC", 0, 9, 1_000, None)
    assert deleted and orjson.loads(frame_payload(delete)) == {
        "type": "delete", "channel": "book", "key": "BTC", "partition": 0, "offset": 9,
        "timestamp": 1_000,
    }  # fmt: skip
    assert delete == delete_frame("book", b"BTC", 0, 9, 1_000)
    import pytest

    from wsrt.wire import Skipped

    with pytest.raises(Skipped):
        plain.frame("book", b"BTC", 0, 9, 1_000, None)
    with pytest.raises(Skipped):
        state.frame("book", None, 0, 9, 1_000, None)  # no key: nothing to delete


def test_the_store_takes_only_its_topics_keyed_records_from_a_batch() -> None:
    state = State(["book"], max_keys=10, max_bytes=1 << 20)
    state.apply([
        Record("book", b"BTC", frame(b"BTC", 0), 0, 0),
        Record("lines", b"E1", frame(b"E1", 0), 0, 0),
        Record("book", None, frame(b"x", 1), 0, 1),
        Record("book", b"ETH", frame(b"ETH", 2), 0, 2),
        Record("book", b"BTC", delete_frame("book", b"BTC", 0, 3, 0), 0, 3, deleted=True),
    ])  # fmt: skip
    assert list(state.topics) == ["book"]
    assert list(state.topics["book"].entries) == [b"ETH"]
