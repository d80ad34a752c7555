"""Kafka with TLS and SASL, for real: SASL_SSL (SCRAM, PLAIN, OAUTHBEARER) and mutual TLS.

The broker's certificate is signed by a CA this run makes; the SCRAM user is
created with Kafka's own storage tool; OAUTHBEARER tokens come from a real
issuer (oidc-provider, tests/support/oidc.py) whose signing keys the broker
validates them with. Each working combination delivers a
record end to end, and each mistake an operator makes gets its own plain
words, the same from ``wsrt check --kafka`` and from ``/healthz``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from aiokafka import AIOKafkaProducer

from tests.integration.harness import auth, messages, next_json
from tests.integration.test_replay import needs_apache
from tests.support.oidc import CLIENT_ID, CLIENT_SECRET, Issuer
from tests.support.secure_kafka import (
    LIMITED_PASSWORD,
    LIMITED_USER,
    PLAIN_PASSWORD,
    PLAIN_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    SecureKafka,
)
from wsrt.brokers import Broker, create_topics, free_port

pytestmark = pytest.mark.integration

TOPIC = "secured"


#: The issuer's tokens live this long: a test outlives several.
TOKEN_TTL = 8


@pytest.fixture(scope="module")
def issuer(broker: Broker) -> Iterator[Issuer]:
    needs_apache(broker, "SASL_SSL here (this module runs in the Apache Kafka run only)")
    with Issuer(ttl=TOKEN_TTL) as started:
        yield started


@pytest.fixture(scope="module")
def secure(
    broker: Broker, issuer: Issuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureKafka]:
    """One SASL_SSL broker for the module, stopped at its end (also on failure)."""
    needs_apache(broker, "SASL_SSL here (this module runs in the Apache Kafka run only)")
    kafka = SecureKafka(tmp_path_factory.mktemp("secure-kafka"), issuer)
    kafka.start()
    try:
        asyncio.run(create_topics(kafka.bootstrap, {TOPIC: 1}))
        yield kafka
    finally:
        kafka.stop()


def sasl_ssl(kafka: SecureKafka, mechanism: str, user: str, password: str) -> dict[str, str]:
    return {
        "WS_KAFKA_BROKERS": kafka.secure_bootstrap,
        "WS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WS_KAFKA_SASL_MECHANISM": mechanism,
        "WS_KAFKA_SASL_USERNAME": user,
        "WS_KAFKA_SASL_PASSWORD": password,
        "WS_KAFKA_SSL_CAFILE": str(kafka.certificates.ca),
    }


def oauthbearer(
    kafka: SecureKafka, secret: str = CLIENT_SECRET, token_url: str | None = None
) -> dict[str, str]:
    return {
        "WS_KAFKA_BROKERS": kafka.secure_bootstrap,
        "WS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WS_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "WS_KAFKA_SASL_OAUTH_TOKEN_URL": token_url or kafka.issuer.token_url,
        "WS_KAFKA_SASL_OAUTH_CLIENT_ID": CLIENT_ID,
        "WS_KAFKA_SASL_OAUTH_CLIENT_SECRET": secret,
        "WS_KAFKA_SSL_CAFILE": str(kafka.certificates.ca),
    }


def mtls(kafka: SecureKafka, cert: Path | None = None, key: Path | None = None) -> dict[str, str]:
    c = kafka.certificates
    return {
        "WS_KAFKA_BROKERS": kafka.mtls_bootstrap,
        "WS_KAFKA_SECURITY_PROTOCOL": "SSL",
        "WS_KAFKA_SSL_CAFILE": str(c.ca),
        "WS_KAFKA_SSL_CERTFILE": str(cert or c.client),
        "WS_KAFKA_SSL_KEYFILE": str(key or c.client_key),
    }


async def arrives(server: Any, kafka: SecureKafka, data: dict[str, str]) -> None:
    """A record produced (over PLAINTEXT) reaches a client of ``server``."""
    async with websockets.connect(
        f"{server.url}?channels={TOPIC}", additional_headers=auth()
    ) as ws:
        assert (await next_json(ws))["type"] == "subscribed"
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait(TOPIC, json.dumps(data).encode())
        finally:
            await producer.stop()
        (got,) = await messages(ws, 1)
    assert (got["offset"], got["data"]) == (sent.offset, data)


def check_kafka(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsrt", "check", "--kafka", "--topics", TOPIC],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "WS_AUTH_SECRET": "x" * 32, "WS_KAFKA_TOPICS": TOPIC, **env},
    )  # fmt: skip


def kafka_line(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"^(ok|FAIL)\s+kafka\s+(.*)$", result.stdout, re.M)
    assert found, result.stdout + result.stderr
    return f"{found[1]} {found[2]}"


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-512", "PLAIN", "OAUTHBEARER", "mutual TLS", "no host name check"]
)
async def test_each_security_setup_delivers_end_to_end(
    secure: SecureKafka, servers: Any, mechanism: str
) -> None:
    env = {
        "SCRAM-SHA-512": lambda: sasl_ssl(secure, mechanism, SCRAM_USER, SCRAM_PASSWORD),
        "PLAIN": lambda: sasl_ssl(secure, mechanism, PLAIN_USER, PLAIN_PASSWORD),
        "OAUTHBEARER": lambda: oauthbearer(secure),
        "mutual TLS": lambda: mtls(secure),
        # The certificate is for 127.0.0.1: by name it is accepted only unchecked.
        "no host name check": lambda: {
            **sasl_ssl(secure, "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD),
            "WS_KAFKA_BROKERS": f"localhost:{secure.secure_port}",
            "WS_KAFKA_SSL_CHECK_HOSTNAME": "false",
        },
    }[mechanism]()
    assert kafka_line(check_kafka(env)).startswith(f"ok {env['WS_KAFKA_BROKERS']}")
    server = servers([TOPIC], env, brokers=env["WS_KAFKA_BROKERS"])
    await arrives(server, secure, {"via": mechanism})


MISTAKES = {
    "wrong SCRAM password": (
        lambda k: {**sasl_ssl(k, "SCRAM-SHA-512", SCRAM_USER, "wrong")},
        "Kafka refused the SASL login for user wsrt (SCRAM-SHA-512)",
    ),
    "wrong PLAIN password": (
        lambda k: {**sasl_ssl(k, "PLAIN", PLAIN_USER, "wrong")},
        "Kafka refused the SASL login for user wsrt-plain (PLAIN)",
    ),
    "a mechanism the listener does not offer": (
        lambda k: {**sasl_ssl(k, "SCRAM-SHA-256", SCRAM_USER, SCRAM_PASSWORD)},
        "Kafka does not offer SASL SCRAM-SHA-256 there (WS_KAFKA_SASL_MECHANISM)",
    ),
    "a CA that did not sign the broker's certificate": (
        lambda k: {
            **sasl_ssl(k, "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD),
            "WS_KAFKA_SSL_CAFILE": str(k.certificates.other_ca),
        },
        "Kafka's certificate is not trusted (self-signed certificate in certificate chain): "
        "WS_KAFKA_SSL_CAFILE must name the CA that signed it",
    ),
    "a host name the certificate is not for": (
        lambda k: {
            **sasl_ssl(k, "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD),
            "WS_KAFKA_BROKERS": f"localhost:{k.secure_port}",
        },
        "Kafka's certificate is not for localhost",
    ),
    "a wrong OAuth client secret": (
        lambda k: oauthbearer(k, secret="wrong"),
        f"refused client {CLIENT_ID} (HTTP 401: invalid_client",
    ),
    "an OAuth token endpoint that is down": (
        lambda k: oauthbearer(k, token_url=f"http://127.0.0.1:{free_port()}/token"),
        "cannot reach the OAuth token endpoint http://127.0.0.1:",
    ),
    "PLAINTEXT against the SASL_SSL listener": (
        lambda k: {"WS_KAFKA_BROKERS": k.secure_bootstrap},
        "the port speaks TLS, and WS_KAFKA_SECURITY_PROTOCOL is PLAINTEXT (SSL or SASL_SSL?)",
    ),
    "no client certificate where Kafka wants one": (
        lambda k: {**mtls(k), "WS_KAFKA_SSL_CERTFILE": "", "WS_KAFKA_SSL_KEYFILE": ""},
        "Kafka wants a client certificate (mutual TLS): set WS_KAFKA_SSL_CERTFILE and "
        "WS_KAFKA_SSL_KEYFILE",
    ),
    "a client certificate from a CA the broker does not trust": (
        lambda k: mtls(k, k.certificates.stranger, k.certificates.stranger_key),
        "Kafka refused the client certificate",
    ),
    "SSL against the PLAINTEXT listener": (
        lambda k: {
            "WS_KAFKA_BROKERS": k.bootstrap,
            "WS_KAFKA_SECURITY_PROTOCOL": "SSL",
            "WS_KAFKA_SSL_CAFILE": str(k.certificates.ca),
        },
        "it may not speak TLS (WS_KAFKA_SECURITY_PROTOCOL: PLAINTEXT?)",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_gets_its_own_words_from_check(secure: SecureKafka, mistake: str) -> None:
    settings, words = MISTAKES[mistake]
    result = check_kafka(settings(secure))
    assert result.returncode == 1
    line = kafka_line(result)
    assert line.startswith("FAIL cannot reach Kafka at ") and words in line, line


def test_healthz_says_the_same_as_check(secure: SecureKafka, servers: Any) -> None:
    settings, words = MISTAKES["wrong SCRAM password"]
    env = settings(secure)
    server = servers([TOPIC], env, ready=False, brokers=env["WS_KAFKA_BROKERS"])
    said = server.wait_for("readiness", lambda e: words in e.get("reason", ""))
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"{server.http}/healthz", timeout=10)
    assert answer.value.code == 503 and json.load(answer.value)["reason"] == said["reason"]
    assert kafka_line(check_kafka(env)) == f"FAIL {said['reason']}"


async def test_each_missing_acl_gets_its_own_words_and_readiness_never_flaps(
    secure: SecureKafka, servers: Any
) -> None:
    """A user with no ACLs, then Describe on the topic, then Read on the group, then Read on
    the topic: each step's refusal is named, readiness stays down while Kafka refuses
    (the consumer is retried, but a successful assignment does not make it ok), and once
    the last ACL exists the server is ready by itself and delivers."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": secure.bootstrap})

    def allow(
        kind: ResourceType, name: str, operation: AclOperation, prefixed: bool = False
    ) -> None:
        pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
        binding = AclBinding(
            kind, name, pattern, f"User:{LIMITED_USER}", "*", operation, AclPermissionType.ALLOW
        )
        for done in admin.create_acls([binding]).values():
            done.result(timeout=30)

    env = {
        **sasl_ssl(secure, "SCRAM-SHA-512", LIMITED_USER, LIMITED_PASSWORD),
        "WS_REPLICA_ID": "acl",
    }
    describe = f"Kafka does not let user {LIMITED_USER} describe topic(s) {TOPIC}"
    assert describe in kafka_line(check_kafka(env))
    server = servers([TOPIC], env, ready=False, brokers=env["WS_KAFKA_BROKERS"])
    server.wait_for("readiness", lambda e: describe in e.get("reason", ""))

    allow(ResourceType.TOPIC, TOPIC, AclOperation.DESCRIBE)
    group = f"Kafka does not let user {LIMITED_USER} use consumer group ws-realtime-acl"
    server.wait_for("readiness", lambda e: group in e.get("reason", ""))

    allow(ResourceType.GROUP, "ws-realtime", AclOperation.READ, prefixed=True)
    read = f"Kafka does not let user {LIMITED_USER} read topic(s) {TOPIC}"
    denied = server.wait_for("readiness", lambda e: read in e.get("reason", ""))
    start = server.events.index(denied)
    for _ in range(3):  # three more consumers joined and were refused
        start = server.events.index(server.wait_for("kafka_started", start=start + 1))
    after = server.events[server.events.index(denied) + 1 :]
    changes = [(e["status"], e.get("reason")) for e in after if e.get("event") == "readiness"]
    assert all(status != "ok" for status, _ in changes), changes  # never ok while refused

    allow(ResourceType.TOPIC, TOPIC, AclOperation.READ)
    server.wait_ready()
    await arrives(server, secure, {"acl": "granted"})


async def test_oauthbearer_tokens_are_renewed_before_they_expire(
    secure: SecureKafka, issuer: Issuer, servers: Any
) -> None:
    """Delivery over three token lifetimes, every record once and in order.

    The broker closes an OAUTHBEARER connection when its token expires
    (``connections.max.reauth.ms``); the client connects again with the
    next token, which wsrt fetched before the last one expired.
    """
    env = oauthbearer(secure)
    server = servers([TOPIC], env, brokers=env["WS_KAFKA_BROKERS"])
    granted = issuer.tokens()
    sent: list[int] = []
    async with websockets.connect(
        f"{server.url}?channels={TOPIC}", additional_headers=auth()
    ) as ws:
        assert (await next_json(ws))["type"] == "subscribed"
        producer = AIOKafkaProducer(bootstrap_servers=secure.bootstrap)
        await producer.start()
        try:
            deadline = time.monotonic() + 10 * TOKEN_TTL
            while not await asyncio.to_thread(issuer.wait_tokens, granted + 3, 0.2):
                assert time.monotonic() < deadline, f"{issuer.tokens() - granted} new tokens"
                sent.append((await producer.send_and_wait(TOPIC, b'{"renewed":1}')).offset)
        finally:
            await producer.stop()
        got = await messages(ws, len(sent))
    assert [m["offset"] for m in got] == sent
    said = [e for e in server.events if e.get("event") == "readiness"]
    ready = next(i for i, e in enumerate(said) if e.get("status") == "ok")
    lapses = [e for e in said[ready:] if e.get("status") != "ok"]
    assert not lapses, [e.get("reason") for e in lapses]  # never a lapse while tokens change
