"""Three Apache Kafka nodes on loopback as one KRaft cluster, for the cluster fault scenarios.

Each node is its own JVM with a small heap, a combined broker and controller
(the three form the controller quorum), formatted with one cluster id. Topics
are replicated three times with ``min.insync.replicas=2``, so the cluster
serves every partition with one node away, and a producer with ``acks=all``
has every acknowledged record on at least two nodes. A node is fenced, and
leaves the in-sync sets, after ``broker.session.timeout.ms`` (6 s here)
without a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from wsrt.brokers.apache import ApacheKafka

SIZE = 3
REPLICATION = 3
MIN_INSYNC = 2


class ClusterNode(ApacheKafka):
    def __init__(self, node_id: int, workdir: Path, cluster: KafkaCluster) -> None:
        super().__init__(workdir=workdir)
        self.node_id = node_id
        self.cluster = cluster
        self.heap = ("-Xms128m", "-Xmx384m")

    def describe(self) -> str:
        return f"Apache Kafka node {self.node_id} of {SIZE} on {self.bootstrap}"

    def properties(self, data: Path) -> list[str]:
        replaced = {
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.cluster.voters,
            "offsets.topic.replication.factor": str(REPLICATION),
            "transaction.state.log.replication.factor": str(REPLICATION),
            "transaction.state.log.min.isr": str(MIN_INSYNC),
            "share.coordinator.state.topic.replication.factor": str(REPLICATION),
            "share.coordinator.state.topic.min.isr": str(MIN_INSYNC),
        }
        lines = [
            f"{key}={replaced[key]}" if key in replaced else f"{key}={value}"
            for key, _, value in (line.partition("=") for line in super().properties(data))
        ]
        return [
            *lines,
            f"default.replication.factor={REPLICATION}",
            f"min.insync.replicas={MIN_INSYNC}",
            # A node that stops heartbeating is fenced (and leaves the ISR) sooner than 9 s.
            "broker.session.timeout.ms=6000",
            "broker.heartbeat.interval.ms=1000",
            "replica.lag.time.max.ms=6000",
        ]


class KafkaCluster:
    """``SIZE`` nodes; a context manager that starts them together and stops them all."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="wsrt-cluster-"))
        self.nodes: list[ClusterNode] = []
        for node_id in range(1, SIZE + 1):
            node = ClusterNode(node_id, self.workdir / f"node-{node_id}", self)
            self.nodes.append(node)
        for node in self.nodes[1:]:
            node.cluster_id = self.nodes[0].cluster_id
        self.voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def describe(self) -> str:
        return f"an Apache Kafka cluster of {SIZE} KRaft nodes on {self.bootstrap}"

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    async def start(self) -> KafkaCluster:
        """All nodes at once: none finishes starting before a quorum of controllers runs."""
        try:
            await asyncio.gather(*(asyncio.to_thread(n.start) for n in self.nodes))
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(n.stop) for n in self.nodes))
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> KafkaCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def partitions(self, topic: str) -> dict[int, tuple[int, list[int]]]:
        """Each partition's leader (-1: none) and in-sync replicas, as the cluster says now.

        Asked of any node that answers: with one away, a request sent to it fails and
        is sent again (the admin client picks a node by itself).
        """
        for _ in range(50):
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                (described,) = await admin.describe_topics([topic])
            except (KafkaError, OSError, TimeoutError):
                await asyncio.sleep(0.2)  # pacing the retries while a node is away
                continue
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            return {
                p["partition"]: (p["leader"], sorted(p["isr"])) for p in described["partitions"]
            }  # fmt: skip
        raise AssertionError(f"no node of {self.describe()} described topic {topic}")
