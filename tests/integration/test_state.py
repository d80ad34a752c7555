"""State topics on a real broker (docs/design.md, "State on subscribe"): tombstones are
``delete`` events, live and in replays, and the store holds the newest value per key."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.integration.harness import auth, next_json
from wsrt.tools.client import scrape


async def frames_until(ws: Any, last: int) -> list[dict[str, Any]]:
    """Message and delete frames until the one at offset ``last``."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["offset"] < last:
        frame = await next_json(ws)
        assert frame["type"] in ("message", "delete"), frame
        got.append(frame)
    return got


async def test_tombstones_on_a_state_topic_are_deletes_live_and_in_replays(
    make_topics, servers, producer
) -> None:
    book, lines = await make_topics("order_book", "lines")
    server = servers([book, lines], {"WS_STATE_TOPICS": book})
    async with websockets.connect(
        f"{server.url}?channels={book},{lines}", additional_headers=auth()
    ) as ws:
        assert {(await next_json(ws))["channel"] for _ in range(2)} == {book, lines}
        plan: list[tuple[bytes, bytes | None]] = [
            (b"BTC", b'{"bid":1}'), (b"ETH", b'{"bid":2}'), (b"BTC", None),
            (b"SOL", b'{"bid":3}'), (b"ETH", b'{"bid":4}'),
        ]  # fmt: skip
        sent = [(await producer.send_and_wait(book, v, key=k)).offset for k, v in plan]
        got = await frames_until(ws, sent[-1])
        # Elsewhere a tombstone is still skipped: the next record after it arrives.
        await producer.send_and_wait(lines, None, key=b"E1")
        after = (await producer.send_and_wait(lines, b'{"e":1}', key=b"E1")).offset
        (live,) = [f for f in [await next_json(ws)] if f["channel"] == lines]
        assert live["type"] == "message" and live["offset"] == after
    assert [(f["type"], f["key"], f["offset"]) for f in got] == [
        ("message" if v is not None else "delete", k.decode(), o)
        for (k, v), o in zip(plan, sent, strict=True)
    ]
    assert "data" not in got[2] and got[2]["partition"] == 0
    samples = await asyncio.to_thread(scrape, server.http)
    assert samples[("wsrt_state_keys", (("topic", book),))] == 2  # ETH and SOL; BTC deleted
    assert samples[("wsrt_state_evictions_total", (("topic", book),))] == 0

    # A replay across the tombstone delivers the delete too.
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": book, "id": 1, "rewind": 5}))
        reply = await next_json(ws)
        assert reply["positions"] == {"0": sent[0]}, reply
        replayed = await frames_until(ws, sent[-1])
    assert [(f["type"], f["offset"]) for f in replayed] == [(f["type"], f["offset"]) for f in got]


async def test_a_state_topic_over_its_bounds_evicts_the_oldest_keys(
    make_topics, servers, producer
) -> None:
    (book,) = await make_topics("order_book")
    server = servers([book], {"WS_STATE_TOPICS": book, "WS_STATE_MAX_KEYS": "3"})
    mark = server.mark()
    async with websockets.connect(f"{server.url}?channels={book}", additional_headers=auth()) as ws:
        await next_json(ws)
        sent = [
            (await producer.send_and_wait(book, b'{"n":%d}' % n, key=b"k%d" % n)).offset
            for n in range(5)
        ]
        await frames_until(ws, sent[-1])  # published, so the store took them in that step
    evicted = await asyncio.to_thread(server.wait_for, "state_evicted", start=mark)
    assert evicted["topic"] == book
    samples = await asyncio.to_thread(scrape, server.http)
    assert samples[("wsrt_state_keys", (("topic", book),))] == 3
    assert samples[("wsrt_state_evictions_total", (("topic", book),))] == 2


def test_a_state_topic_that_is_not_served_stops_the_server_with_one_line(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "wsrt", "serve"],
        env={"WS_AUTH_SECRET": "x" * 32, "WS_KAFKA_TOPICS": "lines", "WS_STATE_TOPICS": "book",
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: WS_STATE_TOPICS: names book, which is not in WS_KAFKA_TOPICS (lines)"
    )
