"""aiokafka client options from the settings, and partition discovery through public API.

Every wsrt Kafka client (the bridge's consumer, ``produce``, ``check --kafka``,
the demo feed) takes its brokers, TLS and SASL from :func:`client_options`.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from wsrt.aio import Abandoned
from wsrt.config import Settings

#: Errors that mean "Kafka is not reachable or not answering": retry, report, never crash.
UNAVAILABLE = (KafkaError, OSError, Abandoned)


def client_options(settings: Settings) -> dict[str, Any]:
    """Options shared by every wsrt Kafka client (brokers, TLS, SASL, client id)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.kafka_brokers),
        "security_protocol": settings.kafka_security_protocol,
        "client_id": f"wsrt-{settings.replica_id}",
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def consumer_options(settings: Settings) -> dict[str, Any]:
    """Options of the bridge's consumer: manual commits, the mode's offset reset, fetch bounds."""
    s = settings
    return {
        **client_options(s),
        "group_id": s.group_id,
        "enable_auto_commit": False,
        # Broadcast replicas serve live data from the end of each partition.
        "auto_offset_reset": s.kafka_offset_reset if s.fanout_mode == "shared" else "latest",
        "fetch_max_wait_ms": max(1, int(s.kafka_fetch_max_wait * 1000)),
        "metadata_max_age_ms": int(s.kafka_metadata_refresh * 1000),
        "request_timeout_ms": int(s.kafka_request_timeout * 1000),
    }


def metadata_client(settings: Settings) -> AIOKafkaClient:
    """A client for metadata requests only (not started)."""
    return AIOKafkaClient(
        **client_options(settings), request_timeout_ms=int(settings.kafka_request_timeout * 1000)
    )


async def discover(
    client: AIOKafkaClient, topics: tuple[str, ...]
) -> tuple[dict[str, set[int]], list[str]]:
    """One metadata request: the partitions of each of ``topics`` that exists, and the missing."""
    cluster = await client.fetch_all_metadata()
    found: dict[str, set[int]] = {}
    missing: list[str] = []
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            found[topic] = set(partitions)
        else:
            missing.append(topic)
    return found, missing
