"""Publishing JSON messages to Kafka: ``wsrt produce`` and the ``wsrt dev`` demo feed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaProducer

from wsrt.config import Settings
from wsrt.kafka.options import client_options
from wsrt.tools.samples import sample


def producer(settings: Settings, linger_ms: int = 5) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_options(settings), linger_ms=linger_ms, acks=1)


class Pacer:
    """Spaces events ``1/rate`` seconds apart on the loop clock (rate 0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next: float | None = None

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next is None or self._next < now - 1.0:  # do not burst after a stall
            self._next = now
        delay = self._next - now
        self._next += self.interval
        if delay > 0:
            await asyncio.sleep(delay)


async def samples(
    topics: Sequence[str], count: int, seed: int | None = None
) -> AsyncIterator[tuple[str, bytes | None, bytes]]:
    """``(topic, key, value)`` round-robin over ``topics``; ``count`` 0 means forever."""
    rng = random.Random(seed)
    seq = 0
    while count == 0 or seq < count:
        topic = topics[seq % len(topics)]
        key, value = sample(topic, seq // len(topics), rng)
        yield topic, key, value
        seq += 1


async def publish(
    kafka: AIOKafkaProducer,
    messages: AsyncIterator[tuple[str, bytes | None, bytes]],
    rate: float,
    stop: asyncio.Event | None = None,
) -> int:
    """Send every message at ``rate`` per second until exhausted or ``stop``; the number sent."""
    pacer = Pacer(rate)
    sent = 0
    pending: list[asyncio.Future[object]] = []
    async for topic, key, value in messages:
        if stop is not None and stop.is_set():
            break
        await pacer.wait()
        pending.append(await kafka.send(topic, value, key=key))
        sent += 1
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return sent
