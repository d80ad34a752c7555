"""The replay's pacing against a fake consumer and a fake transport: history is written only
while the client's transport takes data, and a paused client holds no slot."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from wsrt.config import load_settings
from wsrt.hub import Gate
from wsrt.kafka.replay import Replayer, ReplayJob
from wsrt.logs import EventLogger
from wsrt.metrics import Stats
from wsrt.outlet import Outlet
from wsrt.protocol import Channel, Rewind

TOPIC = "lines"


class FakeConsumer:
    """A partition of ``count`` records, read from the position as aiokafka does."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.positions: dict[TopicPartition, int] = {}
        self._assigned: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def assign(self, tps: list[TopicPartition]) -> None:
        self._assigned = set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.count for tp in tps}

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> Any:
        out = {}
        for tp in tps:
            start = self.positions[tp]
            end = min(self.count, start + max_records)
            if end > start:
                out[tp] = [
                    SimpleNamespace(key=None, partition=tp.partition, offset=o, timestamp=0,
                                    value=b'{"n":%d}' % o, headers=())
                    for o in range(start, end)
                ]  # fmt: skip
                self.positions[tp] = end
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


class Transport:
    """Pauses the outlet after a write while ``pausing`` (as pause_writing does)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.pausing = 0
        self.outlet: Outlet | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.pausing and self.outlet is not None:
            self.pausing -= 1
            self.outlet.paused = True


def make_job(outlet: Outlet, writable: Any, replies: list[bytes]) -> ReplayJob:
    def reply(data: bytes) -> bool:
        replies.append(data)
        return True

    return ReplayJob(
        outlet, writable, Channel(TOPIC, TOPIC, None), Rewind(50), 1, Gate(None, {0}),
        {0: 50}, reply, lambda: None,
    )  # fmt: skip


def replayer(count: int, concurrency: int = 1) -> tuple[Replayer, Stats]:
    settings = load_settings(
        environ={"WS_AUTH_SECRET": "x" * 32, "WS_REPLAY_CONCURRENCY": str(concurrency)}
    )
    stats = Stats()
    r = Replayer(settings, {(TOPIC, 0): count}, EventLogger(), stats)

    async def make_consumer() -> FakeConsumer:
        return FakeConsumer(count)

    async def partitions(topic: str) -> set[int]:
        return {0}

    r.history.consumer = make_consumer  # type: ignore[method-assign,assignment]
    r.history.release = lambda c: None  # type: ignore[method-assign]
    r.history.partitions = partitions  # type: ignore[method-assign]
    return r, stats


def test_a_transport_that_pauses_again_on_resume_gets_no_history_while_paused() -> None:
    """A resume writes the live frames that waited and pauses again: the woken replay
    must wait again, not queue history against WS_CLIENT_BUFFER (a slow-consumer close)."""

    async def run() -> tuple[Outlet, Transport]:
        r, _ = replayer(50)
        r.live_placed()
        transport = Transport()
        outlet = Outlet(transport.write, limit=1)
        transport.outlet = outlet
        outlet.paused = True
        outlet.enqueue(b"live", 1)
        resumes = 0

        async def writable() -> None:
            nonlocal resumes
            resumes += 1
            if resumes == 1:
                transport.pausing = 1  # the waiting live frame fills the socket again
            outlet.resume()

        job = make_job(outlet, writable, [])
        await r.run(job)
        assert resumes == 2
        return outlet, transport

    outlet, transport = asyncio.run(run())
    assert outlet.verdict is None  # never closed for history
    assert transport.written[0] == b"live"
    assert b"".join(transport.written[1:]).count(b'"type":"message"') == 50


def test_a_client_that_stops_reading_mid_replay_gives_its_slot_back() -> None:
    async def run() -> tuple[Stats, list[bytes]]:
        r, stats = replayer(50, concurrency=1)
        r.live_placed()
        transport = Transport()
        stalled = Outlet(transport.write, limit=10)
        transport.outlet = stalled
        transport.pausing = 1  # the first history write fills its socket; it never reads
        never = asyncio.Event()

        async def wait_forever() -> None:
            await never.wait()

        first = asyncio.create_task(r.run(make_job(stalled, wait_forever, [])))
        other = Transport()
        healthy = Outlet(other.write, limit=10)

        async def at_once() -> None:
            pass

        await asyncio.wait_for(r.run(make_job(healthy, at_once, [])), 5)
        running = stats.replays_running
        first.cancel()
        return stats, other.written if running == 0 else [b"slot held"]

    stats, written = asyncio.run(run())
    assert b"".join(written).count(b'"type":"message"') == 50
    assert stats.replays_running == 0
