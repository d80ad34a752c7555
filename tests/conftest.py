"""Fixtures on a real broker that this test run starts and stops itself.

Shared by the integration and browser suites, so one broker serves both.

``WSRT_TEST_BROKER=apache|embedded`` chooses the broker; by default Apache
Kafka where Java (and Maven) are present, else the embedded broker.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.harness import SECRET, ServerProcess
from wsrt.brokers import Broker, create_topics, default_kind, make_broker
from wsrt.brokers.apache import KAFKA_VERSION

pytestmark = pytest.mark.integration


def pytest_report_header(config: pytest.Config) -> str:
    """The broker choice, first thing in the run's output."""
    kind = default_kind()
    what = {"apache": f"Apache Kafka {KAFKA_VERSION} (KRaft, from Maven Central jars)",
            "embedded": "the embedded broker of wsrt dev (tansu)"}[kind]  # fmt: skip
    how = "WSRT_TEST_BROKER" if os.environ.get("WSRT_TEST_BROKER") else "Java and Maven found"
    if kind == "embedded" and not os.environ.get("WSRT_TEST_BROKER"):
        how = "no Java or Maven"
    return f"wsrt: integration and browser tests run on {what} ({how})"


@pytest.fixture(scope="session")
def broker(pytestconfig: pytest.Config) -> Iterator[Broker]:
    kind = default_kind()
    b = make_broker(kind)
    # Shown as it happens, not captured: the first run downloads Kafka's jars.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stderr.write("\n")
        b.start()
        sys.stderr.write(f"wsrt tests: broker {b.describe()} started\n")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def bootstrap(broker: Broker) -> str:
    return broker.bootstrap


TopicFactory = Callable[..., Awaitable[list[str]]]


@pytest.fixture
def make_topics(bootstrap: str) -> TopicFactory:
    """Create fresh topics for one test: ``await make_topics("lines", partitions=3)``."""

    async def make(*names: str, partitions: int = 1) -> list[str]:
        suffix = uuid.uuid4().hex[:8]
        topics = [f"{name}-{suffix}" for name in names]
        await create_topics(bootstrap, {t: partitions for t in topics})
        return topics

    return make


@pytest.fixture
def servers(bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``wsrt serve`` processes; each is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(
        topics: list[str],
        env: dict[str, str] | None = None,
        *,
        ready: bool = True,
        brokers: str | None = None,
        command: list[str] | None = None,
    ) -> ServerProcess:
        server = ServerProcess(
            brokers or bootstrap, topics, tmp_path, env, secret=SECRET, command=command
        )
        started.append(server)
        server.start()
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
