"""Metrics and logs observed on a real server through a whole scenario."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.harness import SECRET, StalledClient, auth, messages, next_json, token
from wsrt.metrics import parse


def scrape(server) -> dict:
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_and_logs_follow_a_scenario(make_topics, servers, producer) -> None:
    (topic,) = await make_topics("order_book")
    server = servers([topic], {"WS_CLIENT_BUFFER": "64", "WS_SHUTDOWN_TIMEOUT_SECONDS": "6"})
    before = scrape(server)
    assert value(before, "wsrt_ready", status="ok") == 1
    assert value(before, "wsrt_connections") == 0
    assert (
        value(
            before,
            "wsrt_build_info",
            version=next(iter(dict(k[1]) for k in before if k[0] == "wsrt_build_info"))["version"],
        )
        == 1
    )

    # A bad token and a foreign-looking origin are counted by reason.
    forged = token(ttl=None, extra_claims={"exp": 1})
    try:
        async with websockets.connect(f"{server.url}?token={forged}"):
            raise AssertionError("expired token accepted")
    except InvalidStatus as exc:
        assert exc.response.status_code == 401

    refresh_token = token("watcher")
    good = await websockets.connect(
        f"{server.url}?channels={topic},{topic}:BTC", additional_headers=auth("watcher")
    )
    await next_json(good)
    await next_json(good)
    await good.send(json.dumps({"type": "refresh", "token": refresh_token}))
    assert (await next_json(good))["type"] == "refreshed"
    slow = await StalledClient(f"{server.url}?channels={topic}", auth("sluggard")).connect()
    during = scrape(server)
    assert value(during, "wsrt_connections") == 2
    assert value(during, "wsrt_connections_opened_total") == 2
    assert value(during, "wsrt_subscriptions", topic=topic) == 3  # topic twice, topic:BTC once
    assert value(during, "wsrt_handshakes_rejected_total", reason="expired") == 1

    mark = server.mark()
    reading = asyncio.create_task(messages(good, 401, timeout=120))
    big = b'{"pad":"' + b"x" * 20000 + b'"}'
    for _ in range(400):
        await producer.send(topic, big, key=b"BTC")
    await producer.send(topic, b"not json at all")
    await producer.send_and_wait(topic, b'{"last":true}')
    await asyncio.to_thread(server.wait_for, "slow_consumer", start=mark)
    got = await reading
    assert got[-1]["data"] == {"last": True}
    slow.close()
    await asyncio.to_thread(
        server.wait_for, "connection_closed", lambda e: e.get("subject") == "sluggard"
    )

    after = scrape(server)
    assert value(after, "wsrt_kafka_messages_total", topic=topic) == 402
    assert value(after, "wsrt_kafka_skipped_records_total", topic=topic, reason="not_json") == 1
    assert value(after, "wsrt_kafka_skipped_records_total", topic=topic, reason="empty") == 0
    assert value(after, "wsrt_slow_consumer_disconnects_total") == 1
    assert value(after, "wsrt_slow_consumer_disconnects_recent") == 1
    assert value(after, "wsrt_connections_closed_total", reason="slow_consumer") == 1
    assert value(after, "wsrt_frames_delivered_total") >= 401
    assert value(after, "wsrt_bytes_sent_total") > 401 * 20000
    assert value(after, "wsrt_delivery_delay_seconds_count") == 401
    assert value(after, "wsrt_kafka_last_commit_timestamp_seconds") > 0
    assert value(after, "wsrt_kafka_rebalances_total") == 1
    assert value(after, "wsrt_kafka_lag", topic=topic, partition="0") == 0

    # A client that leaves with 1001 (a tab closing, a k6 session ending) is not a shutdown.
    leaving = await websockets.connect(server.url, additional_headers=auth("leaver"))
    await leaving.close(1001, "tab closed")
    await asyncio.to_thread(
        server.wait_for, "connection_closed", lambda e: e.get("subject") == "leaver"
    )
    left = scrape(server)
    assert value(left, "wsrt_connections_closed_total", reason="client_going_away") == 1
    assert value(left, "wsrt_connections_closed_total", reason="shutdown") == 0

    # Shutdown: the open client is closed 1001 and counted while /metrics still answers.
    stalled = await StalledClient(server.url, auth("staller")).connect()  # keeps the drain open
    mark = server.mark()
    server.signal()
    await asyncio.to_thread(
        server.wait_for, "connection_closed", lambda e: e.get("subject") == "watcher", start=mark
    )
    draining = scrape(server)
    assert value(draining, "wsrt_connections_closed_total", reason="shutdown") == 1
    assert value(draining, "wsrt_ready", status="draining") == 0
    assert await asyncio.to_thread(server.wait_exit) == 0
    stalled.close()
    await good.close()

    # Every line is a JSON object with the stable fields; no secret, no token.
    events = [json.loads(line) for line in server.raw]
    for e in events:
        assert {"ts", "level", "event", "message"} <= e.keys(), e
    closed = [e for e in events if e["event"] == "connection_closed"]
    assert {e["subject"] for e in closed} >= {"watcher", "sluggard"}
    for e in closed:
        assert {"remote", "code", "duration_ms"} <= e.keys()
    assert any(e["event"] == "subscribed" and e["channel"] == f"{topic}:BTC" for e in events)
    assert any(e["event"] == "handshake_rejected" and e["reason"] == "expired" for e in events)
    text = "".join(server.raw)
    for secret in (SECRET, forged, refresh_token, auth("watcher")["Authorization"][7:]):
        assert secret not in text
