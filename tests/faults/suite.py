"""The fault suite (design section 9): a broker or a server fails under load; what reaches a client?

One rig: Apache Kafka (KRaft) on loopback, one ``wsrt serve``, a WebSocket
client subscribed to a 3-partition topic, and a producer sending at a steady
rate with ``acks=all`` throughout. Each scenario injects one fault per cycle:

* ``stop``:   broker SIGTERM, down 20 s, started again on the same log;
* ``kill``:   broker SIGKILL, started again at once;
* ``freeze``: broker SIGSTOP 20 s, then SIGCONT (a hung broker);
* ``server-kill``: in ``shared`` mode, the server SIGKILLed and started again
  while producing; the client reconnects (at-least-once: duplicates are
  reported, and allowed, across the reconnect).

Per cycle it measures the seconds until ``/healthz`` said degraded (from the
fault), until it said ok again and until the first message produced after the
fault reached the client (both from the end of the fault). At the end, every
acknowledged (partition, offset) is accounted for at the client: lost,
duplicated (twice on one connection, or again after a reconnect), out of
order (per partition, on one connection).

``python -m tests.faults.suite --cycles 3`` prints the table (the README's);
``tests/faults/test_faults.py`` runs one cycle of each and asserts the zeros.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from aiokafka import AIOKafkaProducer

from wsrt.brokers import Broker, create_topics, make_broker
from wsrt.tokens import mint_token
from wsrt.tools.client import http_get
from wsrt.tools.server import ServerProcess

SECRET = "wsrt-fault-suite-secret-0123456789abcdef"
PARTITIONS = 3
RATE = 50.0
DOWN_SECONDS = 20.0
SCENARIOS = ("stop", "kill", "freeze", "server-kill")
#: Longest a recovery may take before the suite gives up on a cycle.
RECOVERY_TIMEOUT = 90.0


@dataclass
class Cycle:
    degraded_s: float | None = None
    ok_s: float | None = None
    resumed_s: float | None = None


@dataclass
class Outcome:
    scenario: str
    cycles: list[Cycle] = field(default_factory=list)
    produced: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    #: The reasons /healthz gave while degraded (from the server's readiness log lines).
    reasons: set[str] = field(default_factory=set)

    @property
    def recovered(self) -> bool:
        return all(c.ok_s is not None and c.resumed_s is not None for c in self.cycles)


class Rig:
    """The broker, the server, the client, the producer and the /healthz sampler."""

    def __init__(self, workdir: Path, mode: str) -> None:
        self.workdir = workdir
        self.mode = mode
        self.topic = f"faults-{uuid.uuid4().hex[:8]}"
        self.broker: Broker = make_broker("apache")
        self.server: ServerProcess | None = None
        #: (partition, offset, send time) of every acknowledged record.
        self.acked: list[tuple[int, int, float]] = []
        #: Per connection, (partition, offset, arrival time) in arrival order.
        self.connections: list[list[tuple[int, int, float]]] = []
        #: (time, HTTP status) of every /healthz sample whose status changed.
        self.health: list[tuple[float, int]] = []
        self.arrived = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producing = True

    async def __aenter__(self) -> Rig:
        await asyncio.to_thread(self.broker.start)
        await create_topics(self.broker.bootstrap, {self.topic: PARTITIONS})
        await self.start_server()
        assert self.server is not None
        await asyncio.to_thread(self.server.wait_ready)
        self._tasks.append(asyncio.create_task(self._client()))
        # Produce only once the client is subscribed: everything acknowledged must reach it.
        await asyncio.wait_for(self.subscribed.wait(), 60)
        for work in (self._produce(), self._sample_health()):
            self._tasks.append(asyncio.create_task(work))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        await asyncio.to_thread(self.broker.stop)

    async def start_server(self) -> None:
        env = {"WS_FANOUT_MODE": self.mode, "WS_LOG_LEVEL": "INFO", "WS_KAFKA_GROUP_ID": "faults"}
        server = ServerProcess(
            self.broker.bootstrap, [self.topic], self.workdir, env, secret=SECRET
        )
        await asyncio.to_thread(server.start)
        self.server = server  # the client and the sampler switch to it once it listens

    # -- the three workers -------------------------------------------------------

    async def _client(self) -> None:
        """Subscribed all along; reconnects at once when the server goes away."""
        token = mint_token(SECRET, "fault-client", ttl=3600)
        while True:
            assert self.server is not None
            url = f"{self.server.url}?channels={self.topic}"
            try:
                async with websockets.connect(
                    url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=2
                ) as ws:
                    arrivals: list[tuple[int, int, float]] = []
                    self.connections.append(arrivals)
                    async for frame in ws:
                        m = json.loads(frame)
                        if m.get("type") == "message":
                            arrivals.append((m["partition"], m["offset"], time.monotonic()))
                            self.arrived.set()
                        elif m.get("type") == "subscribed":
                            self.subscribed.set()
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            await asyncio.sleep(0.05)  # reconnect pacing while the server restarts

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.broker.bootstrap, acks="all", linger_ms=0,
            request_timeout_ms=5000, retry_backoff_ms=100,
        )  # fmt: skip
        await producer.start()
        pending: set[asyncio.Future[None]] = set()
        n = 0
        try:
            while self._producing:
                sent_at = time.monotonic()
                pending.add(asyncio.ensure_future(self._send(producer, n, sent_at)))
                pending = {p for p in pending if not p.done()}
                n += 1
                await asyncio.sleep(1 / RATE)  # the steady rate of the scenario
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, n: int, sent_at: float) -> None:
        try:
            md = await producer.send_and_wait(self.topic, b'{"n":%d}' % n, partition=n % PARTITIONS)
        except Exception:  # not acknowledged (broker away): not counted as produced
            return
        self.acked.append((md.partition, md.offset, sent_at))

    async def _sample_health(self) -> None:
        last = None
        while True:
            assert self.server is not None
            try:
                status = (await asyncio.to_thread(http_get, f"{self.server.http}/healthz", 2))[0]
            except OSError:
                status = 0  # not answering (the server is restarting)
            if status != last:
                self.health.append((time.monotonic(), status))
                last = status
            await asyncio.sleep(0.1)  # the sampling period of the measurement

    # -- measuring ---------------------------------------------------------------

    async def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait, on arrivals, until ``condition`` holds; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 1.0))
        return True

    def first_health(self, after: float, ok: bool) -> float | None:
        for t, status in self.health:
            if t >= after and (status == 200) == ok:
                return t - after
        return None

    async def cycle(self, fault: Callable[[], Awaitable[None]]) -> Cycle:
        started = time.monotonic()
        await fault()
        ended = time.monotonic()

        def resumed() -> bool:
            sent_after = {(p, o) for p, o, t in self.acked if t >= ended}
            return any((p, o) in sent_after for c in self.connections for p, o, _ in c)

        await self.until(resumed, RECOVERY_TIMEOUT)
        sent_after = {(p, o) for p, o, t in self.acked if t >= ended}
        arrivals = [t for c in self.connections for p, o, t in c if (p, o) in sent_after]
        await self.until(lambda: self.first_health(ended, ok=True) is not None, RECOVERY_TIMEOUT)
        return Cycle(
            degraded_s=self.first_health(started, ok=False),
            ok_s=self.first_health(ended, ok=True),
            resumed_s=min(arrivals) - ended if arrivals else None,
        )

    async def account(self, scenario: str, cycles: list[Cycle]) -> Outcome:
        self._producing = False
        await asyncio.gather(self._tasks[1], return_exceptions=True)  # the producer
        acked = {(p, o) for p, o, _ in self.acked}

        def received() -> set[tuple[int, int]]:
            return {(p, o) for c in self.connections for p, o, _ in c}

        await self.until(lambda: acked <= received(), 60)
        outcome = Outcome(scenario, cycles, produced=len(acked))
        seen: set[tuple[int, int]] = set()
        for arrivals in self.connections:
            top: dict[int, int] = {}
            for p, o, _ in arrivals:
                outcome.received += 1
                if (p, o) in seen:
                    outcome.duplicated += 1
                seen.add((p, o))
                if o < top.get(p, -1):
                    outcome.out_of_order += 1
                top[p] = max(top.get(p, -1), o)
        outcome.lost = len(acked - seen)
        assert self.server is not None
        outcome.reasons = {
            e.get("reason", "") for e in self.server.events
            if e.get("event") == "readiness" and e.get("status") == "degraded"
        }  # fmt: skip
        return outcome


async def run_scenario(scenario: str, cycles: int, workdir: Path) -> Outcome:
    mode = "shared" if scenario == "server-kill" else "broadcast"
    async with Rig(workdir, mode) as rig:
        broker = rig.broker

        async def stop() -> None:
            await asyncio.to_thread(broker.stop, keep_data=True)
            await asyncio.sleep(DOWN_SECONDS)  # the outage being measured
            await asyncio.to_thread(broker.start)

        async def kill() -> None:
            broker.signal(signal.SIGKILL)
            await asyncio.to_thread(broker.wait_exit, 30)
            await asyncio.to_thread(broker.stop, keep_data=True)
            await asyncio.to_thread(broker.start)

        async def freeze() -> None:
            broker.signal(signal.SIGSTOP)
            await asyncio.sleep(DOWN_SECONDS)  # the hang being measured
            broker.signal(signal.SIGCONT)

        async def server_kill() -> None:
            assert rig.server is not None
            rig.server.signal(signal.SIGKILL)
            await asyncio.to_thread(rig.server.wait_exit, 30)
            await rig.start_server()

        faults = {"stop": stop, "kill": kill, "freeze": freeze, "server-kill": server_kill}
        results = []
        for _ in range(cycles):
            # Two seconds of steady delivery before each fault.
            floor = sum(map(len, rig.connections)) + 2 * RATE
            await rig.until(lambda f=floor: sum(map(len, rig.connections)) >= f, 60)
            results.append(await rig.cycle(faults[scenario]))
        return await rig.account(scenario, results)


async def run(scenarios: tuple[str, ...], cycles: int) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="wsrt-faults-") as tmp:
        return [await run_scenario(s, cycles, Path(tmp)) for s in scenarios]


def _seconds(values: list[float | None]) -> str:
    shown = [f"{v:.1f}" if v is not None else "never" for v in values]
    return " / ".join(shown)


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| scenario | cycles | /healthz degraded after s | /healthz ok after s | delivery resumed after s "
        "| produced (acked) | received | lost | duplicated | out of order |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.scenario} | {len(o.cycles)} | {_seconds([c.degraded_s for c in o.cycles])} "
            f"| {_seconds([c.ok_s for c in o.cycles])} | {_seconds([c.resumed_s for c in o.cycles])} "
            f"| {o.produced} | {o.received} | {o.lost} | {o.duplicated} | {o.out_of_order} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the producer's retries, expected
    outcomes = asyncio.run(run(tuple(args.scenario or SCENARIOS), args.cycles))
    from importlib.metadata import version

    print(
        f"Apache Kafka 4.1.1 (KRaft), wsrt {version('wsrt')}, aiokafka {version('aiokafka')}, "
        f"{PARTITIONS} partitions, {RATE:g} msg/s acks=all, faults of {DOWN_SECONDS:g} s"
    )
    print(table(outcomes))


if __name__ == "__main__":
    main()
