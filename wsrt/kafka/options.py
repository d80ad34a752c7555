"""aiokafka client options from the settings, and partition discovery through public API.

Every wsrt Kafka client (the bridge's consumer, ``produce``, ``check --kafka``,
the demo feed) takes its brokers, TLS and SASL from :func:`client_options`.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError
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
        "isolation_level": s.kafka_isolation_level,
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


#: How long :func:`explain` tries each broker's port.
PROBE_SECONDS = 1.0


async def explain(exc: BaseException, brokers: tuple[str, ...]) -> str:
    """Why Kafka is unavailable, in plain words for readiness, logs and ``wsrt check``.

    ``cannot reach Kafka at 127.0.0.1:9999: connection refused`` rather than
    aiokafka's ``Unable to bootstrap from [('127.0.0.1', 9999, <AddressFamily…>)]``:
    when the client could not connect, each broker's port is tried to say why.
    """
    where = ",".join(brokers)
    if isinstance(exc, Abandoned | TimeoutError):
        # A hung broker, or a port that is not Kafka's.
        return f"Kafka at {where} is not answering" + (f" ({exc})" if str(exc) else "")
    if isinstance(exc, OSError | KafkaConnectionError):
        causes = await asyncio.gather(*(_tcp_reason(broker) for broker in brokers))
        if len(set(causes)) == 1:
            return f"cannot reach Kafka at {where}: {causes[0]}"
        return "cannot reach Kafka: " + "; ".join(
            f"{b} {c}" for b, c in zip(brokers, causes, strict=True)
        )
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__.removesuffix("Error")).lower()
    # aiokafka's text repeats the class: "[Error 15] GroupCoordinatorNotAvailableError: …".
    detail = str(exc).removeprefix(f"[Error {getattr(exc, 'errno', '')}] ")
    detail = detail.removeprefix(type(exc).__name__).lstrip(": ").strip()
    return f"Kafka at {where}: {words}" + (f" ({detail})" if detail else "")


async def _tcp_reason(broker: str) -> str:
    """What a plain TCP connect to ``host:port`` says, in words."""
    host, _, port = broker.rpartition(":")
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except TimeoutError:
        return f"no answer within {PROBE_SECONDS:g}s (a firewall, or the wrong address)"
    except socket.gaierror:
        return f"unknown host {host}"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return (exc.strerror or str(exc)).lower()
    writer.close()
    # The port answers, Kafka's protocol does not: a TLS or SASL mismatch, or not a broker.
    return "the port answers but not as Kafka (check WS_KAFKA_SECURITY_PROTOCOL)"
