"""Revocation through Kafka (WS_AUTH_REVOCATION_TOPIC), on two replicas in broadcast mode.

A record naming a subject closes that subject's connections on both replicas
with ``1008 token revoked`` within a second, leaves everyone else connected,
refuses the revoked tokens (a new token issued after the record is fine),
and still refuses them after a replica restarts; a record naming a token id
revokes that token alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.harness import next_json, token
from wsrt.brokers import free_port

pytestmark = pytest.mark.integration


def bearer(jwt: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt}"}


async def closed_at(ws: Any) -> tuple[float, int | None, str | None]:
    """When the server closed ``ws`` (monotonic), with its code and reason."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await ws.recv()
    return time.monotonic(), ws.close_code, ws.close_reason


async def refused(url: str, jwt: str) -> str:
    with pytest.raises(InvalidStatus) as refusal:
        async with websockets.connect(url, additional_headers=bearer(jwt)):
            pass
    return f"{refusal.value.response.status_code} {refusal.value.response.body.decode().strip()}"


async def test_a_revoked_subject_is_closed_on_every_replica_within_a_second(
    make_topics, servers, producer
) -> None:
    topic, revocations = await make_topics("guarded", "revocations")
    env = {"WS_AUTH_REVOCATION_TOPIC": revocations}
    fixed = {**env, "WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}"}
    replicas = [servers([topic], fixed), servers([topic], env)]
    issued = time.time() - 5
    alice = token("alice", now=issued, extra_claims={"jti": "alice-1"})
    bob = token("bob", now=issued, extra_claims={"jti": "bob-1"})
    clients = [
        await websockets.connect(f"{r.url}?channels={topic}", additional_headers=bearer(t))
        for r in replicas for t in (alice, bob)
    ]  # fmt: skip
    try:
        for ws in clients:
            assert (await next_json(ws))["type"] == "subscribed"
        watching = [asyncio.create_task(closed_at(ws)) for ws in clients[0::2]]  # alice's
        until = int(time.time()) + 3600
        await producer.send_and_wait(
            revocations,
            json.dumps({"sub": "alice", "exp": until}).encode(),
            timestamp_ms=int(issued + 1) * 1000,  # revoked then: tokens issued since pass
        )
        sent = time.monotonic()
        for when, code, reason in await asyncio.gather(*watching):
            assert (code, reason) == (1008, "token revoked")
            assert when - sent <= 1.0, when - sent  # on both replicas, within a second
        await producer.send_and_wait(topic, b'{"still":"here"}')
        for ws in clients[1::2]:  # bob's, on both replicas
            assert (await next_json(ws))["data"] == {"still": "here"}
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))

    url = f"{replicas[1].url}?channels={topic}"
    assert await refused(url, alice) == "401 unauthorized: revoked"
    fresh = token("alice", extra_claims={"jti": "alice-2"})  # issued after the revocation
    async with websockets.connect(url, additional_headers=bearer(fresh)) as ws:
        assert (await next_json(ws))["type"] == "subscribed"

    await producer.send_and_wait(revocations, json.dumps({"jti": "bob-1", "exp": until}).encode())
    other_bob = token("bob", now=issued, extra_claims={"jti": "bob-2"})
    replicas[0].stop()  # read back from the topic after a restart
    restarted = servers([topic], fixed)
    url = f"{restarted.url}?channels={topic}"
    assert await refused(url, alice) == "401 unauthorized: revoked"
    assert await refused(url, bob) == "401 unauthorized: revoked"
    for jwt in (fresh, other_bob):
        async with websockets.connect(url, additional_headers=bearer(jwt)) as ws:
            assert (await next_json(ws))["type"] == "subscribed"
