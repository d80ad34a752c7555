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


async def test_tail_snapshot_prints_every_keys_newest_value_then_live(
    make_topics, servers, producer, tmp_path
) -> None:
    import subprocess
    import sys

    from tests.integration.harness import SECRET

    (book,) = await make_topics("order_book")
    for n in range(12):
        await producer.send_and_wait(book, b'{"n":%d}' % n, key=b"k%d" % (n % 4))
    server = servers([book], {"WS_STATE_TOPICS": book})
    tail = subprocess.Popen(
        [sys.executable, "-m", "wsrt", "tail", "-c", book, "--snapshot", "--url", server.url,
         "--secret", SECRET, "--output", "json", "--count", "5", "--timeout", "60"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tail.stderr is not None
        while "snapshot of" not in (line := tail.stderr.readline()):
            assert line, "tail ended before the snapshot"
        assert f"snapshot of {book}: 4 keys" in line
        live = (await producer.send_and_wait(book, b'{"n":12}', key=b"k0")).offset
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [(m["key"], m["data"]["n"], m.get("snapshot")) for m in got] == [
        ("k0", 8, True),
        ("k1", 9, True),
        ("k2", 10, True),
        ("k3", 11, True),
        ("k0", 12, None),
    ]
    assert got[-1]["offset"] == live


COMPACT = {
    "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "100", "min.compaction.lag.ms": "0",
}  # fmt: skip


async def test_a_compacted_topic_gives_the_same_state_as_its_whole_log(
    broker, bootstrap, servers, producer
) -> None:
    """Compaction really runs (segments rolled, records removed), and the snapshot is the
    state the uncompacted log had: the newest value of every key, deleted keys absent."""
    import uuid

    from aiokafka import AIOKafkaConsumer

    from tests.integration.test_replay import needs_apache
    from wsrt.brokers import create_topics

    needs_apache(broker, "log compaction")
    book = f"compacted-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, {book: 1}, COMPACT)
    truth: dict[str, int | None] = {}
    produced = 0
    for n in range(300):
        key = f"k{n % 15}"
        value = None if n % 11 == 10 else b'{"n":%d}' % n
        await producer.send_and_wait(book, value, key=key.encode())
        truth[key], produced = (None if value is None else n), produced + 1

    async def kept() -> int:
        consumer = AIOKafkaConsumer(
            book,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=2000, max_records=10_000)
            return sum(len(messages) for messages in batches.values())
        finally:
            await consumer.stop()

    for _ in range(120):  # until the log cleaner has run (each record after segment.ms rolls)
        await producer.send_and_wait(book, b'{"roll":1}', key=b"roll")
        truth["roll"], produced = -1, produced + 1
        if await kept() < produced // 2:
            break
        await asyncio.sleep(0.5)  # the cleaner's pace, polled; bounded by the loop
    else:
        raise AssertionError("the log was never compacted")
    server = servers([book], {"WS_STATE_TOPICS": book})
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        _, frames, end = await snapshot(ws, book)
    got = {f["key"]: f["data"].get("n", -1) for f in frames}
    assert got == {k: n for k, n in truth.items() if n is not None}
    assert end["complete"] is True
