"""The Kafka-side classes' logic with fake consumers: what the hub gets, what is committed,
what is skipped (docs/design.md, "Delivery: once, in order, or told" and "Never silent")."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, UnsupportedCodecError

from wsrt.config import load_settings
from wsrt.kafka.commit import Committer
from wsrt.kafka.deliver import Encoder, UndecodableSkipper
from wsrt.kafka.offsets import Offsets
from wsrt.logs import EventLogger
from wsrt.metrics import Stats
from wsrt.outlet import Record

TP = TopicPartition("lines", 0)


def record(offset: int, value: bytes | None, key: bytes | None = b"k") -> Any:
    return SimpleNamespace(
        key=key,
        value=value,
        partition=TP.partition,
        offset=offset,
        timestamp=1_000 + offset,
        headers=(),
    )


class Highwater:
    def highwater(self, tp: TopicPartition) -> int:
        return 100


def test_the_encoder_hands_the_hub_frames_and_skips_what_cannot_be_one() -> None:
    published: list[list[Record]] = []
    offsets, stats = Offsets(), Stats()
    encoder = Encoder(published.append, offsets, stats, EventLogger())
    batch = {TP: [record(0, b'{"a":1}'), record(1, b"not json"), record(2, None), record(3, b"[]")]}
    encoder.deliver(Highwater(), batch)  # type: ignore[arg-type]
    (records,) = published
    assert [(r.offset, r.key) for r in records] == [(0, b"k"), (3, b"k")]
    assert b'"data":{"a":1}' in records[0].frame
    # Every offset of the batch is taken (the skipped ones too), and counted by reason.
    assert offsets.positions[TP] == 4 and offsets.lag[TP] == 96
    assert stats.kafka_skipped[("lines", "not_json")] == 1
    assert stats.kafka_skipped[("lines", "tombstone")] == 1


def test_nothing_counts_as_taken_when_the_hub_raises() -> None:
    offsets = Offsets()

    def publish(records: list[Record]) -> None:
        raise RuntimeError("hub")

    encoder = Encoder(publish, offsets, Stats(), EventLogger())
    with pytest.raises(RuntimeError):
        encoder.deliver(Highwater(), {TP: [record(0, b"{}")]})  # type: ignore[arg-type]
    assert TP not in offsets.positions  # a replacement reads it again


class CommitConsumer:
    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            self.fail -= 1
            raise KafkaConnectionError("down")
        self.commits.append(dict(offsets))


def test_commits_carry_what_the_hub_took_and_a_failed_one_is_retried() -> None:
    async def run() -> CommitConsumer:
        offsets = Offsets()
        consumer = CommitConsumer(fail=1)
        committer = Committer(consumer, offsets, EventLogger(), Stats(), 5)  # type: ignore[arg-type]
        offsets.taken(TP, 10, None)
        assert await committer.flush() is False  # the broker refused: handed back
        offsets.taken(TP, 12, None)
        assert await committer.flush() is True
        assert await committer.flush() is True  # nothing new: nothing sent
        return consumer

    assert asyncio.run(run()).commits == [{TP: 12}]


class DecodeConsumer:
    """One partition whose record at ``bad`` cannot be decoded, as aiokafka behaves."""

    def __init__(self, count: int, bad: int) -> None:
        self.count, self.bad = count, bad
        self.position = 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    def highwater(self, tp: TopicPartition) -> int:
        return self.count

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass

    async def getmany(self, *tps: Any, timeout_ms: int, max_records: int) -> Any:
        end = min(self.count, self.position + max_records)
        if self.position <= self.bad < end:
            if self.position == self.bad:
                raise UnsupportedCodecError("lz4")
            end = self.bad  # a record before the bad one comes on its own first
        out = [record(o, b'{"n":%d}' % o) for o in range(self.position, end)]
        self.position = end
        return {TP: out} if out else {}


def test_an_undecodable_record_is_stepped_over_and_every_other_one_delivered() -> None:
    async def run() -> tuple[list[int], Offsets, Stats]:
        consumer = DecodeConsumer(count=6, bad=3)
        offsets, stats = Offsets(), Stats()
        offsets.positioned(TP, 0)
        got: list[int] = []
        encoder = Encoder(
            lambda rs: got.extend(r.offset for r in rs), offsets, stats, EventLogger()
        )
        settings = load_settings(environ={"WS_AUTH_SECRET": "x" * 32})
        skipper = UndecodableSkipper(consumer, offsets, encoder, settings)  # type: ignore[arg-type]
        committer = Committer(consumer, offsets, EventLogger(), stats, 5)  # type: ignore[arg-type]
        # As the consume loop does: fetch; a fetch that raises goes to the skipper.
        for _ in range(20):
            if offsets.positions[TP] >= 6:
                break
            try:
                batch = await consumer.getmany(TP, timeout_ms=0, max_records=10)
            except UnsupportedCodecError as error:
                assert skipper.may_skip(error)
                await skipper.skip(error, committer)
                continue
            encoder.deliver(consumer, batch)  # type: ignore[arg-type]
        return got, offsets, stats

    got, offsets, stats = asyncio.run(run())
    assert offsets.positions[TP] == 6
    assert got == [0, 1, 2, 4, 5]
    assert stats.kafka_skipped[("lines", "undecodable")] == 1


def test_a_network_error_is_not_taken_for_a_bad_record() -> None:
    settings = load_settings(environ={"WS_AUTH_SECRET": "x" * 32})
    skipper = UndecodableSkipper(None, Offsets(), None, settings)  # type: ignore[arg-type]
    assert not skipper.may_skip(KafkaConnectionError("down"))
    assert not skipper.may_skip(ConnectionResetError())
    assert skipper.may_skip(UnsupportedCodecError("snappy"))
