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

from tests.support.kafka_cluster import REPLICATION, SIZE, ClusterNode, KafkaCluster
from wsrt.brokers import Broker, create_topics, make_broker
from wsrt.tokens import mint_token
from wsrt.tools.client import http_get
from wsrt.tools.server import ServerProcess

SECRET = "wsrt-fault-suite-secret-0123456789abcdef"
PARTITIONS = 3
RATE = 50.0
DOWN_SECONDS = 20.0
SCENARIOS = ("stop", "kill", "freeze", "server-kill")
#: On a three-node cluster (tests/support/kafka_cluster.py), each in broadcast and shared mode.
CLUSTER_SCENARIOS = ("leader-kill", "rolling", "isr-shrink")
#: The server's log events that say what its consumer did.
CONSUMER_EVENTS = (
    "kafka_assigned", "kafka_revoked", "kafka_positioned", "kafka_restarted", "kafka_stalled",
)  # fmt: skip
#: How long a cluster's node stays away once the cluster has noticed (fenced it).
AWAY_SECONDS = 10.0
#: Longest a recovery may take before the suite gives up on a cycle.
RECOVERY_TIMEOUT = 90.0


@dataclass
class Cycle:
    degraded_s: float | None = None
    ok_s: float | None = None
    resumed_s: float | None = None
    #: Seconds from the fault until /healthz named it while staying ok (a cluster's node away).
    noted_s: float | None = None


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
    #: The reasons it gave while ok (a cluster that serves every partition with a node away).
    notes: set[str] = field(default_factory=set)
    #: What the server's consumer did (assigned, revoked, restarted), for a failure's message.
    consumer: list[str] = field(default_factory=list)

    @property
    def recovered(self) -> bool:
        return all(c.ok_s is not None and c.resumed_s is not None for c in self.cycles)


Kafka = Broker | KafkaCluster


class Lane:
    """One ``wsrt serve`` in one fan-out mode, its client and its /healthz samples."""

    def __init__(self, rig: Rig, mode: str) -> None:
        self.rig = rig
        self.mode = mode
        self.server: ServerProcess | None = None
        #: Per connection, (partition, offset, arrival time) in arrival order.
        self.connections: list[list[tuple[int, int, float]]] = []
        #: (time, HTTP status, reason) of every /healthz sample that changed either.
        self.health: list[tuple[float, int, str]] = []
        self.subscribed = asyncio.Event()

    @property
    def received(self) -> int:
        return sum(map(len, self.connections))

    async def start_server(self) -> None:
        env = {
            "WS_FANOUT_MODE": self.mode, "WS_LOG_LEVEL": "INFO",
            "WS_KAFKA_GROUP_ID": f"faults-{self.mode}",
        }  # fmt: skip
        server = ServerProcess(
            self.rig.kafka.bootstrap, [self.rig.topic], self.rig.workdir, env, secret=SECRET
        )
        await asyncio.to_thread(server.start)
        self.server = server  # the client and the sampler switch to it once it listens

    async def client(self) -> None:
        """Subscribed all along; reconnects at once when the server goes away."""
        token = mint_token(SECRET, "fault-client", ttl=3600)
        topic = self.rig.topic
        while True:
            assert self.server is not None
            url = f"{self.server.url}?channels={topic}"
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
                            self.rig.arrived.set()
                        elif m.get("type") == "subscribed":
                            self.subscribed.set()
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            await asyncio.sleep(0.05)  # reconnect pacing while the server restarts

    async def sample_health(self) -> None:
        last = None
        while True:
            assert self.server is not None
            try:
                status, body, _ = await asyncio.to_thread(
                    http_get, f"{self.server.http}/healthz", 2
                )
                reason = str(json.loads(body).get("reason", ""))
            except (OSError, ValueError):
                status, reason = 0, ""  # not answering (the server is restarting)
            if (status, reason) != last:
                self.health.append((time.monotonic(), status, reason))
                last = (status, reason)
            await asyncio.sleep(0.1)  # the sampling period of the measurement

    def first_health(self, after: float, ok: bool) -> float | None:
        """Seconds from ``after`` until /healthz said ok (or not); 0 when it already did."""
        before = [status for t, status, _ in self.health if t < after]
        if before and (before[-1] == 200) == ok:
            return 0.0
        for t, status, _ in self.health:
            if t >= after and (status == 200) == ok:
                return t - after
        return None

    def first_note(self, after: float) -> float | None:
        for t, status, reason in self.health:
            if t >= after and status == 200 and reason:
                return t - after
        return None

    def cycle(self, started: float, ended: float) -> Cycle:
        sent_after = {(p, o) for p, o, t in self.rig.acked if t >= ended}
        arrivals = [t for c in self.connections for p, o, t in c if (p, o) in sent_after]
        return Cycle(
            degraded_s=self.first_health(started, ok=False),
            ok_s=self.first_health(ended, ok=True),
            resumed_s=min(arrivals) - ended if arrivals else None,
            noted_s=self.first_note(started),
        )

    def _repeats(self) -> list[tuple[int, int, int]]:
        """(connection, partition, offset) of each arrival at or below one seen before."""
        found = []
        for n, arrivals in enumerate(self.connections):
            top: dict[int, int] = {}
            for p, o, _ in arrivals:
                if o <= top.get(p, -1):
                    found.append((n, p, o))
                top[p] = max(top.get(p, -1), o)
        return found

    def account(self, scenario: str, cycles: list[Cycle], acked: set[tuple[int, int]]) -> Outcome:
        name = scenario if len(self.rig.lanes) == 1 else f"{scenario} ({self.mode})"
        outcome = Outcome(name, cycles, produced=len(acked))
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
        outcome.consumer = [
            f"{e.get('ts')} {e.get('event')} "
            f"{e.get('reason') or e.get('positions') or e.get('partitions') or ''}"
            for e in self.server.events
            if e.get("event") in CONSUMER_EVENTS
        ]
        if outcome.duplicated or outcome.out_of_order:
            outcome.consumer += [f"{self.mode}: first repeats {self._repeats()[:10]}"]
        for e in self.server.events:
            if e.get("event") == "readiness" and e.get("reason"):
                target = outcome.notes if e.get("status") == "ok" else outcome.reasons
                target.add(e["reason"])
        return outcome


class Rig:
    """The brokers, a server per mode (each with its client and sampler) and the producer."""

    def __init__(self, workdir: Path, modes: tuple[str, ...], kafka: Kafka) -> None:
        self.workdir = workdir
        self.topic = f"faults-{uuid.uuid4().hex[:8]}"
        self.kafka = kafka
        self.lanes = [Lane(self, mode) for mode in modes]
        #: (partition, offset, send time) of every acknowledged record.
        self.acked: list[tuple[int, int, float]] = []
        self.arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: asyncio.Task[None] | None = None
        self._producing = True

    async def __aenter__(self) -> Rig:
        if isinstance(self.kafka, KafkaCluster):
            await self.kafka.start()
            replication = REPLICATION
        else:
            await asyncio.to_thread(self.kafka.start)
            replication = 1
        await create_topics(self.kafka.bootstrap, {self.topic: PARTITIONS}, replication=replication)
        await asyncio.gather(*(lane.start_server() for lane in self.lanes))
        for lane in self.lanes:
            assert lane.server is not None
            await asyncio.to_thread(lane.server.wait_ready)
            self._tasks.append(asyncio.create_task(lane.client()))
        # Produce only once the clients are subscribed: everything acknowledged must reach them.
        for lane in self.lanes:
            await asyncio.wait_for(lane.subscribed.wait(), 60)
            self._tasks.append(asyncio.create_task(lane.sample_health()))
        self._producer = asyncio.create_task(self._produce())
        self._tasks.append(self._producer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for lane in self.lanes:
            if lane.server is not None:
                await asyncio.to_thread(lane.server.stop)
        if isinstance(self.kafka, KafkaCluster):
            await self.kafka.stop()
        else:
            await asyncio.to_thread(self.kafka.stop)

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap, acks="all", linger_ms=0,
            request_timeout_ms=5000, retry_backoff_ms=100,
            # The producer on a cluster; one broker's scenarios measured without.
            enable_idempotence=isinstance(self.kafka, KafkaCluster),
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

    async def steady(self) -> None:
        """Two seconds of steady delivery on every lane before a fault."""
        floors = [lane.received + 2 * RATE for lane in self.lanes]
        await self.until(
            lambda: all(lane.received >= f for lane, f in zip(self.lanes, floors, strict=True)), 60
        )

    async def cycle(self, fault: Callable[[], Awaitable[None]]) -> list[Cycle]:
        """Inject ``fault`` once; what each lane's /healthz and client saw of it."""
        started = time.monotonic()
        await fault()
        ended = time.monotonic()

        def resumed(lane: Lane) -> bool:
            sent_after = {(p, o) for p, o, t in self.acked if t >= ended}
            return any((p, o) in sent_after for c in lane.connections for p, o, _ in c)

        await self.until(lambda: all(resumed(lane) for lane in self.lanes), RECOVERY_TIMEOUT)
        await self.until(
            lambda: all(lane.first_health(ended, ok=True) is not None for lane in self.lanes),
            RECOVERY_TIMEOUT,
        )
        return [lane.cycle(started, ended) for lane in self.lanes]

    async def account(self, scenario: str, cycles: list[list[Cycle]]) -> list[Outcome]:
        self._producing = False
        assert self._producer is not None
        await asyncio.gather(self._producer, return_exceptions=True)
        acked = {(p, o) for p, o, _ in self.acked}

        def received(lane: Lane) -> set[tuple[int, int]]:
            return {(p, o) for c in lane.connections for p, o, _ in c}

        await self.until(lambda: all(acked <= received(lane) for lane in self.lanes), 60)
        return [
            lane.account(scenario, [c[i] for c in cycles], acked)
            for i, lane in enumerate(self.lanes)
        ]


def _single_broker_faults(rig: Rig) -> dict[str, Callable[[], Awaitable[None]]]:
    broker = rig.kafka
    assert isinstance(broker, Broker)

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
        (lane,) = rig.lanes
        assert lane.server is not None
        lane.server.signal(signal.SIGKILL)
        await asyncio.to_thread(lane.server.wait_exit, 30)
        await lane.start_server()

    return {"stop": stop, "kill": kill, "freeze": freeze, "server-kill": server_kill}


def _cluster_faults(rig: Rig) -> dict[str, Callable[[], Awaitable[None]]]:
    cluster = rig.kafka
    assert isinstance(cluster, KafkaCluster)

    async def until_isr(done: Callable[[dict[int, list[int]]], bool]) -> None:
        """Until the in-sync sets of the topic's partitions satisfy ``done``."""
        while True:
            described = await cluster.partitions(rig.topic)
            if done({p: isr for p, (_, isr) in described.items()}):
                return
            await asyncio.sleep(0.5)  # polling the cluster's metadata

    def all_in_sync(isrs: dict[int, list[int]]) -> bool:
        return all(len(isr) == SIZE for isr in isrs.values())

    async def away(node: ClusterNode) -> None:
        """Until the cluster dropped ``node`` from every in-sync set, then AWAY_SECONDS more."""
        await until_isr(lambda isrs: all(node.node_id not in isr for isr in isrs.values()))
        await asyncio.sleep(AWAY_SECONDS)  # the outage of one broker, as measured

    async def leader_kill() -> None:
        leader, _ = (await cluster.partitions(rig.topic))[0]
        node = cluster.node(leader)
        node.signal(signal.SIGKILL)
        await asyncio.to_thread(node.wait_exit, 30)
        await away(node)
        await asyncio.to_thread(node.stop, keep_data=True)
        await asyncio.to_thread(node.start)
        await until_isr(all_in_sync)

    async def rolling() -> None:
        for node in cluster.nodes:  # as an operator rolls a cluster: the next once all in sync
            await asyncio.to_thread(node.stop, keep_data=True)
            await asyncio.to_thread(node.start)
            await until_isr(all_in_sync)

    async def isr_shrink() -> None:
        node = cluster.nodes[-1]
        node.signal(signal.SIGSTOP)
        try:
            await away(node)
        finally:
            node.signal(signal.SIGCONT)
        await until_isr(all_in_sync)

    return {"leader-kill": leader_kill, "rolling": rolling, "isr-shrink": isr_shrink}


async def run_scenario(scenario: str, cycles: int, workdir: Path) -> list[Outcome]:
    """``cycles`` faults of ``scenario``; one outcome per fan-out mode it runs in."""
    if scenario in CLUSTER_SCENARIOS:
        kafka: Kafka = KafkaCluster(workdir / f"{scenario}-cluster")
        modes: tuple[str, ...] = ("broadcast", "shared")
    else:
        kafka = make_broker("apache")
        modes = ("shared",) if scenario == "server-kill" else ("broadcast",)
    async with Rig(workdir, modes, kafka) as rig:
        faults = (
            _cluster_faults(rig) if scenario in CLUSTER_SCENARIOS else _single_broker_faults(rig)
        )
        results = []
        for _ in range(cycles):
            await rig.steady()
            results.append(await rig.cycle(faults[scenario]))
        return await rig.account(scenario, results)


async def run(scenarios: tuple[str, ...], cycles: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="wsrt-faults-") as tmp:
        for scenario in scenarios:
            outcomes += await run_scenario(scenario, cycles, Path(tmp))
    return outcomes


def _seconds(values: list[float | None]) -> str:
    shown = [f"{v:.1f}" if v is not None else "never" for v in values]
    return " / ".join(shown)


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| scenario | cycles | /healthz degraded after s | /healthz named it, ok, after s "
        "| /healthz ok after s | delivery resumed after s "
        "| produced (acked) | received | lost | duplicated | out of order |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.scenario} | {len(o.cycles)} | {_seconds([c.degraded_s for c in o.cycles])} "
            f"| {_seconds([c.noted_s for c in o.cycles])} "
            f"| {_seconds([c.ok_s for c in o.cycles])} | {_seconds([c.resumed_s for c in o.cycles])} "
            f"| {o.produced} | {o.received} | {o.lost} | {o.duplicated} | {o.out_of_order} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS + CLUSTER_SCENARIOS)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the three-node cluster scenarios (default: one broker)",
    )
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the producer's retries, expected
    chosen = args.scenario or (CLUSTER_SCENARIOS if args.cluster else SCENARIOS)
    outcomes = asyncio.run(run(tuple(chosen), args.cycles))
    from importlib.metadata import version

    print(
        f"Apache Kafka 4.1.1 (KRaft), wsrt {version('wsrt')}, aiokafka {version('aiokafka')}, "
        f"{PARTITIONS} partitions, {RATE:g} msg/s acks=all (idempotent on a cluster), "
        f"faults of {DOWN_SECONDS:g} s; "
        f"clusters of {SIZE} nodes, replication {REPLICATION}, min.insync.replicas 2"
    )
    print(table(outcomes))


if __name__ == "__main__":
    main()
