"""Supervision of the Kafka source (design section 9): replace a consumer that fails or stalls.

:meth:`Supervisor.run` runs the source's consumer lifetimes
(:meth:`~wsrt.kafka.source.KafkaSource.run_links`) and starts them again when
they end with an unexpected exception (logged with its traceback, counted as
``error``). Its watchdog probes the brokers every ``WS_KAFKA_PROBE_SECONDS``:
a metadata request decides reachability (readiness follows it), end offsets
against the delivered positions decide whether records wait, and
:class:`~wsrt.kafka.watch.Watch` judges a stall (``stalled``,
``loop_stalled``), which cancels the lifetime so that a new consumer resumes
from the delivered positions.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from wsrt.aio import Backoff, abandon_after
from wsrt.kafka.options import UNAVAILABLE, discover, explain

if TYPE_CHECKING:
    from wsrt.kafka.source import KafkaSource, _Link


class Supervisor:
    def __init__(self, source: KafkaSource) -> None:
        self.source = source
        #: Partitions the last probe found with records waiting.
        self._waiting: list[tuple[str, int]] = []

    async def run(self) -> None:
        src = self.source
        s = src.settings
        backoff = Backoff(s.kafka_backoff_initial, s.kafka_backoff_max)
        while not src.stopping_event.is_set():
            run = asyncio.create_task(src.run_links(), name="wsrt-kafka-run")
            watch = asyncio.create_task(self._watch(run), name="wsrt-kafka-watch")
            try:
                await asyncio.wait({run})
            finally:
                watch.cancel()
            if run.cancelled() or src.stopping_event.is_set():
                continue  # replaced by the watchdog (counted there), or stopping
            exc = run.exception()
            if exc is None:
                continue
            src.stats.kafka_restarts["error"] += 1
            delay = backoff.next()
            src.log.exception(
                "kafka_restarted", "the Kafka consumer failed; replacing it", exc_info=exc,
                reason="error", error=repr(exc)[:300], retry_in_s=round(delay, 2),
            )  # fmt: skip
            src.health.degrade(f"the Kafka consumer failed ({type(exc).__name__}); replacing it")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(src.stopping_event.wait(), delay)

    async def _watch(self, run: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        src = self.source
        s = src.settings
        while True:
            await asyncio.sleep(s.kafka_probe_interval)
            link = src.link
            if link is None or not link.joined:
                continue  # connecting: every step of it is bounded, and readiness says so
            src.watch.observed(loop.time(), await self._probe(link))
            reason = src.watch.verdict(loop.time())
            if reason is None:
                continue
            src.stats.kafka_restarts[reason] += 1
            src.log.warning(
                "kafka_stalled", "the Kafka consumer stalled; replacing it", reason=reason,
                stall_s=s.kafka_stall, partitions_waiting=self._waiting_text(),
            )  # fmt: skip
            src.health.degrade("kafka stalled")
            run.cancel()
            return

    async def _probe(self, link: _Link) -> bool | None:
        """Can the brokers be reached, and do records wait? ``None``: unreachable."""
        src = self.source
        seconds = src.settings.kafka_request_timeout
        try:
            await abandon_after(
                discover(link.client, src.settings.kafka_topics), seconds, "metadata request"
            )
        except UNAVAILABLE as exc:
            src.health.unreachable(await explain(exc, src.settings.kafka_brokers))
            return None
        src.health.reachable()
        assigned = link.consumer.assignment()
        if not assigned:
            return False
        try:
            ends = await abandon_after(link.consumer.end_offsets(list(assigned)), seconds)
        except UNAVAILABLE:
            return True  # the brokers answer, our consumer does not: as good as waiting
        self._waiting = src.offsets.behind(ends)
        return bool(self._waiting)

    def _waiting_text(self) -> str:
        return " ".join(f"{t}[{p}]" for t, p in self._waiting) or "-"
