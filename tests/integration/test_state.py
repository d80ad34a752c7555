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


async def snapshot(ws: Any, channel: str, **extra: Any) -> tuple[dict[str, Any], list[dict], dict]:
    """Subscribe with ``snapshot: true``: the reply, the snapshot messages, ``snapshot_end``."""
    await ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": 7, "snapshot": True,
                              **extra}))  # fmt: skip
    reply = await next_json(ws)
    assert reply["type"] == "subscribed", reply
    frames = []
    while True:
        frame = await next_json(ws)
        if frame["type"] == "snapshot_end":
            return reply, frames, frame
        assert frame["type"] == "message" and frame["snapshot"] is True, frame
        frames.append(frame)


async def test_a_snapshot_is_the_newest_value_of_every_key_also_after_a_restart(
    make_topics, servers, producer
) -> None:
    (book,) = await make_topics("order_book", partitions=2)
    newest: dict[str, tuple[int, int, Any]] = {}
    for n in range(60):
        key = f"k{n % 10}"
        md = await producer.send_and_wait(book, b'{"n":%d}' % n, key=key.encode())
        newest[key] = (md.partition, md.offset, {"n": n})
    await producer.send_and_wait(book, None, key=b"k3")
    del newest["k3"]
    for restart in range(2):
        server = servers([book], {"WS_STATE_TOPICS": book})
        loading = [e for e in server.events if e.get("event") == "readiness"]
        assert any(e.get("reason", "").startswith("loading state") for e in loading), loading
        async with websockets.connect(server.url, additional_headers=auth()) as ws:
            reply, frames, end = await snapshot(ws, book)
        got = {f["key"]: (f["partition"], f["offset"], f["data"]) for f in frames}
        assert got == newest, restart
        order = [(f["partition"], f["key"]) for f in frames]
        assert order == sorted(order)  # by partition, then key
        assert end == {"type": "snapshot_end", "channel": book, "keys": 9, "complete": True}
        assert reply["complete"] is True
        server.stop()


async def test_a_snapshot_taken_while_producing_then_live_misses_and_repeats_nothing(
    make_topics, servers, producer
) -> None:
    (book,) = await make_topics("order_book", partitions=2)
    server = servers([book], {"WS_STATE_TOPICS": book})
    produced: list[tuple[str, int, int, int]] = []  # key, partition, offset, n
    stop, halfway = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        for n in range(400):  # until told to stop, 200 at least
            if stop.is_set() and n >= 200:
                return
            key = f"k{n % 20}"
            md = await producer.send_and_wait(book, b'{"n":%d}' % n, key=key.encode())
            produced.append((key, md.partition, md.offset, n))
            if n == 100:
                halfway.set()

    writer = asyncio.create_task(write())
    await asyncio.wait_for(halfway.wait(), 60)  # the snapshot comes in the middle of the writes
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply, frames, end = await snapshot(ws, book)
        stop.set()
        await writer
        positions = {int(p): o for p, o in reply["positions"].items()}
        after = [r for r in produced if r[2] >= positions[r[1]]]
        live: list[dict[str, Any]] = []
        while len(live) < len(after):
            frame = await next_json(ws)
            assert frame["type"] == "message" and "snapshot" not in frame, frame
            live.append(frame)
    # Every record at or after positions, exactly once, in order per partition.
    for p in positions:
        assert [f["offset"] for f in live if f["partition"] == p] == [
            r[2] for r in after if r[1] == p
        ]
    # The snapshot is the newest value of each key before positions.
    before: dict[str, int] = {}
    for key, p, offset, n in produced:
        if offset < positions[p]:
            before[key] = n
    assert {f["key"]: f["data"]["n"] for f in frames} == before
    assert end["keys"] == len(before) and end["complete"] is True
    # And so each key's last value is the last one produced.
    last = {key: n for key, _, _, n in produced}
    seen = {f["key"]: f["data"]["n"] for f in [*frames, *live]}
    assert seen == last


async def test_snapshot_refusals_and_an_evicting_store_is_incomplete(
    make_topics, servers, producer
) -> None:
    book, lines = await make_topics("order_book", "lines")
    server = servers([book, lines], {"WS_STATE_TOPICS": book, "WS_STATE_MAX_KEYS": "3"})
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await ws.send(
            json.dumps({"type": "subscribe", "channel": lines, "id": 1, "snapshot": True})
        )
        refused = await next_json(ws)
        assert refused["code"] == "bad_request" and "WS_STATE_TOPICS" in refused["message"]
        await ws.send(json.dumps(
            {"type": "subscribe", "channel": book, "id": 2, "snapshot": True, "rewind": 3}
        ))  # fmt: skip
        assert (await next_json(ws))["code"] == "bad_request"
        await ws.send(json.dumps({"type": "subscribe", "channel": book, "id": 3}))
        await next_json(ws)
        sent = [
            (await producer.send_and_wait(book, b'{"n":%d}' % n, key=b"k%d" % n)).offset
            for n in range(5)
        ]
        await frames_until(ws, sent[-1])
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        _, frames, end = await snapshot(ws, book)
    assert [f["key"] for f in frames] == ["k2", "k3", "k4"]
    assert end["keys"] == 3 and end["complete"] is False
