"""Kafka failures in plain words (readiness, logs, ``wsrt check --kafka``)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError

from wsrt.aio import Abandoned
from wsrt.brokers import free_port
from wsrt.config import Settings, load_settings
from wsrt.kafka.options import explain


def brokers(*names: str) -> Settings:
    return load_settings(
        environ={"WS_AUTH_SECRET": "x" * 32, "WS_KAFKA_BROKERS": ",".join(names)}, env_file=None
    )


BOOTSTRAP_FAILED = KafkaConnectionError(
    "Unable to bootstrap from [('127.0.0.1', 9999, <AddressFamily.AF_INET: 2>)]"
)


async def test_a_closed_port_reads_connection_refused() -> None:
    broker = f"127.0.0.1:{free_port()}"
    assert await explain(BOOTSTRAP_FAILED, brokers(broker)) == (
        f"cannot reach Kafka at {broker}: connection refused"
    )


async def test_a_port_that_is_not_kafka_says_so() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reason = await explain(BOOTSTRAP_FAILED, brokers(f"127.0.0.1:{port}"))
    finally:
        server.close()
        await server.wait_closed()
    assert reason.endswith("the port answers but not as Kafka (check WS_KAFKA_SECURITY_PROTOCOL)")


async def test_each_broker_gets_its_own_reason_when_they_differ() -> None:
    refused = f"127.0.0.1:{free_port()}"
    reason = await explain(BOOTSTRAP_FAILED, brokers(refused, "nosuchhost.invalid:9092"))
    assert reason == (
        f"cannot reach Kafka: {refused} connection refused; "
        "nosuchhost.invalid:9092 unknown host nosuchhost.invalid"
    )


async def test_no_python_internals_reach_the_reason() -> None:
    hung = await explain(Abandoned("metadata request: no answer within 10s"), brokers("k:9092"))
    assert hung == "Kafka at k:9092 is not answering (metadata request: no answer within 10s)"
    assert await explain(TimeoutError(), brokers("k:9092")) == "Kafka at k:9092 is not answering"
    words = await explain(GroupCoordinatorNotAvailableError(), brokers("k:9092"))
    assert words.startswith("Kafka at k:9092: group coordinator not available")
    for text in (hung, words):
        assert "Error" not in text and "AddressFamily" not in text
