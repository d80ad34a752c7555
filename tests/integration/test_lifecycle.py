"""Start before Kafka, readiness, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.harness import StalledClient, auth, messages, next_json
from wsrt.brokers import Broker, create_topics, make_broker
from wsrt.tools.client import wait_healthy


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def test_server_waits_for_kafka_and_then_delivers(broker: Broker, servers) -> None:
    late = make_broker(broker.kind)
    try:
        server = servers(["late"], ready=False, brokers=late.bootstrap)
        server.wait_for("readiness", lambda e: e.get("reason", "").startswith("cannot reach Kafka"))
        status, body = get(f"{server.http}/healthz")
        assert status == 503
        assert body["status"] == "starting"
        assert body["reason"] == f"cannot reach Kafka at {late.bootstrap}: connection refused"
        assert get(f"{server.http}/livez") == (200, {"status": "ok"})
        # Upgrades are accepted while Kafka is away.
        async with websockets.connect(
            f"{server.url}?channels=late", additional_headers=auth()
        ) as ws:
            assert (await next_json(ws))["type"] == "subscribed"
            await asyncio.to_thread(late.start)
            await create_topics(late.bootstrap, {"late": 1})
            await asyncio.to_thread(server.wait_ready)
            assert get(f"{server.http}/healthz")[0] == 200
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(bootstrap_servers=late.bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait("late", b'{"hello":"late"}')
            finally:
                await producer.stop()
            (m,) = await messages(ws, 1)
            assert m["data"] == {"hello": "late"}
        # Retried for seconds, said once: one readiness line per change, in plain words.
        reasons = [e.get("reason", "") for e in server.events if e["event"] == "readiness"]
        assert reasons[0] == f"connecting to Kafka at {late.bootstrap}", reasons
        assert reasons.count(reasons[0]) == 1, reasons
        assert reasons.count(body["reason"]) == 1, reasons
        for line in server.raw:
            assert "KafkaConnectionError" not in line and "AddressFamily" not in line, line
    finally:
        late.stop()


async def test_sigterm_drains_with_1001_and_exits_in_time(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic], {"WS_SHUTDOWN_TIMEOUT_SECONDS": "6"})
    clients = [
        await websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth(f"c{i}"))
        for i in range(5)
    ]
    for ws in clients:
        await next_json(ws)
    # One client that never answers the close handshake keeps the drain going
    # for the close timeout: long enough to see what the server says meanwhile.
    stalled = await StalledClient(server.url, auth("stalled")).connect()
    try:
        mark = server.mark()
        started = time.monotonic()
        server.signal()
        server.wait_for("readiness", lambda e: e.get("status") == "draining", start=mark)
        status, body = get(f"{server.http}/healthz")
        assert (status, body["status"]) == (503, "draining")
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(server.url, additional_headers=auth()):
                pass
        assert refused.value.response.status_code == 503
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1001
        code = await asyncio.to_thread(server.wait_exit, 30)
        elapsed = time.monotonic() - started
    finally:
        stalled.close()
        for ws in clients:
            await ws.close()
    assert code == 0
    assert elapsed < 6 + 1  # the configured bound, plus process exit
    server.wait_for("shutdown_complete", start=mark)


async def test_broker_restart_keeps_clients_connected(broker: Broker, servers) -> None:
    """A broker that goes away and comes back: same process, same client connection.

    It restarts a broker of the suite's kind. Apache Kafka keeps its log across
    the restart: every record produced before and after reaches the client that
    stayed connected, in offset order, once. The embedded broker keeps nothing.
    """
    from aiokafka import AIOKafkaProducer

    own = make_broker(broker.kind)
    await asyncio.to_thread(own.start)
    try:
        await create_topics(own.bootstrap, {"restart": 1})
        server = servers(["restart"], brokers=own.bootstrap)
        async with websockets.connect(
            f"{server.url}?channels=restart", additional_headers=auth()
        ) as ws:
            await next_json(ws)

            async def send(values: list[bytes]) -> list[int]:
                producer = AIOKafkaProducer(bootstrap_servers=own.bootstrap, acks="all")
                await producer.start()
                try:
                    return [(await producer.send_and_wait("restart", v)).offset for v in values]
                finally:
                    await producer.stop()

            before = await send([b'{"before":%d}' % i for i in range(5)])
            assert [m["offset"] for m in await messages(ws, 5)] == before

            await asyncio.to_thread(own.stop, keep_data=True)
            await asyncio.to_thread(own.start)
            if own.kind == "embedded":
                # It keeps no data: the topic comes back empty, its offsets start
                # again below where the consumer stopped. Records reach the client
                # again once the new log passes that point.
                await create_topics(own.bootstrap, {"restart": 1})
                offsets = await send([b'{"after":%d}' % i for i in range(len(before) + 5)])
                got = await messages(ws, 1, timeout=60)
                assert got[0]["offset"] in offsets and "after" in got[0]["data"]
            else:
                after = await send([b'{"after":%d}' % i for i in range(5)])
                got = await messages(ws, 5, timeout=60)
                assert [m["offset"] for m in got] == after, server.log_text()
                assert [m["data"] for m in got] == [{"after": i} for i in range(5)]
        # Ready again within the 15 s of design section 9 (a broker that came
        # back quicker than the probe noticed it never made it degraded).
        assert await asyncio.to_thread(wait_healthy, server.http, 15)
        assert server.poll() is None
    finally:
        own.stop()


async def test_keepalive_closes_a_silent_client_and_keeps_the_others(make_topics, servers) -> None:
    """One keepalive task pings every connection; a client that never answers is closed 1011."""
    (topic,) = await make_topics("lines")
    server = servers([topic], {"WS_PING_INTERVAL_SECONDS": "0.5"})
    alive = [
        await websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth(f"a{i}"))
        for i in range(3)
    ]
    for ws in alive:
        assert (await next_json(ws))["type"] == "subscribed"
    silent = await StalledClient(server.url, auth("silent")).connect()  # reads, so answers, nothing
    closed = await asyncio.to_thread(
        server.wait_for, "connection_closed", lambda e: e.get("subject") == "silent"
    )
    assert (closed["code"], closed["reason"]) == (1011, "keepalive ping timeout")
    # The others answered every ping meanwhile (two rounds at least) and are open.
    assert closed["duration_ms"] >= 1000
    for ws in alive:
        pong = await ws.ping()
        await asyncio.wait_for(pong, 10)
        assert ws.close_code is None
    assert not [
        e for e in server.events if e["event"] == "connection_closed" and e["subject"] != "silent"
    ]
    silent.close()
    for ws in alive:
        await ws.close()
