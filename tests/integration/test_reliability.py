"""Never stop silently (design section 9), on a real broker and a real ``wsrt serve``.

Compressed topics, records that cannot be decoded, an unexpected error in the
consumer loop, a client whose write raises, and a consumer that stalls: in
each case every other record reaches the client, in offset order, once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import websockets
from aiokafka import AIOKafkaProducer

from tests.integration.harness import auth, messages, next_json
from tests.support.faults import TRIGGER_RAISE, TRIGGER_STALL
from wsrt.tools.client import http_get, scrape

ROOT = Path(__file__).resolve().parents[2]
CODECS = ["gzip", "snappy", "lz4", "zstd", None]


def faulty(fault: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """``servers(...)`` arguments for a server with ``fault`` injected (tests/support/faults.py)."""
    return {
        "command": [sys.executable, "-m", "tests.support.faults", "serve"],
        "env": {"WSRT_INJECT": fault, "PYTHONPATH": str(ROOT), **(env or {})},
    }


def sample(server, name: str, **labels: str) -> float:
    samples = scrape(server.http)
    return samples[(name, tuple(sorted(labels.items())))]


async def produce_compressed(bootstrap: str, topic: str, values: list[tuple[str | None, bytes]]):
    """Each value sent with its own codec (one producer per codec); the (offset, value) pairs."""
    producers = {
        c: AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=c) for c in CODECS
    }
    for p in producers.values():
        await p.start()
    try:
        sent = []
        for codec, value in values:
            md = await producers[codec].send_and_wait(topic, value, partition=0)
            sent.append((md.offset, value))
        return sent
    finally:
        for p in producers.values():
            await p.stop()


async def test_every_codec_is_read_interleaved_with_plain_records(
    bootstrap, make_topics, servers
) -> None:
    (topic,) = await make_topics("order_book")
    server = servers([topic])
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        values = [
            (CODECS[i % 5], b'{"codec":"%s","n":%d}' % (str(CODECS[i % 5]).encode(), i))
            for i in range(20)
        ]
        sent = await produce_compressed(bootstrap, topic, values)
        got = await messages(ws, len(sent))
    assert [
        (m["offset"], json.dumps(m["data"], separators=(",", ":")).encode()) for m in got
    ] == sent
    assert (
        sample(server, "wsrt_kafka_skipped_records_total", topic=topic, reason="undecodable") == 0
    )


async def test_a_record_the_client_library_cannot_decode_is_skipped(
    bootstrap, make_topics, servers, tmp_path
) -> None:
    # This server runs without the codec library, as wsrt did before it became a
    # dependency: lz4 records are then undecodable for it.
    hidden = tmp_path / "no-codecs" / "cramjam"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("cramjam hidden by the test")\n')
    (topic,) = await make_topics("lines")
    server = servers([topic], {"PYTHONPATH": str(hidden.parent)})
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        mark = server.mark()
        plan = [(None, b'{"n":0}'), ("lz4", b'{"n":1}'), (None, b'{"n":2}'), ("lz4", b'{"n":3}'),
                ("lz4", b'{"n":4}'), (None, b'{"n":5}'), ("gzip", b'{"n":6}')]  # fmt: skip
        sent = await produce_compressed(bootstrap, topic, plan)
        got = await messages(ws, 4)
    readable = [s for s, (codec, _) in zip(sent, plan, strict=True) if codec != "lz4"]
    assert [m["offset"] for m in got] == [offset for offset, _ in readable]
    skipped = await asyncio.to_thread(
        server.wait_for, "record_skipped", lambda e: e["reason"] == "undecodable", start=mark
    )
    assert (skipped["topic"], skipped["partition"], skipped["offset"]) == (topic, 0, sent[1][0])
    assert (
        sample(server, "wsrt_kafka_skipped_records_total", topic=topic, reason="undecodable") == 3
    )
    assert http_get(f"{server.http}/healthz", 5)[0] == 200


async def test_an_unexpected_error_in_the_consumer_loop_is_survived(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    server = servers([topic], **faulty("consumer_raises"))
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        values = (
            [b'{"n":%d}' % i for i in range(10)]
            + [TRIGGER_RAISE]
            + [b'{"n":%d}' % i for i in range(10, 20)]
        )
        sent = [
            (await producer.send_and_wait(topic, v, partition=i % 2), v)
            for i, v in enumerate(values)
        ]
        got = await messages(ws, len(sent), timeout=60)
    expected = sorted((md.partition, md.offset) for md, _ in sent)
    assert sorted((m["partition"], m["offset"]) for m in got) == expected  # once each
    for partition in (0, 1):
        offsets = [m["offset"] for m in got if m["partition"] == partition]
        assert offsets == sorted(offsets)
    failure = server.wait_for("kafka_restarted")
    assert failure["reason"] == "error" and "RuntimeError: injected" in failure["exception"]
    assert "Traceback" in failure["exception"]
    assert sample(server, "wsrt_kafka_consumer_restarts_total", reason="error") == 1
    assert http_get(f"{server.http}/healthz", 5)[0] == 200


async def test_a_client_whose_write_raises_is_closed_1011_and_the_others_carry_on(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic], **faulty("client_write_raises"))
    url = f"{server.url}?channels={topic}"
    async with (
        websockets.connect(url, additional_headers=auth("faulty")) as bad,
        websockets.connect(url, additional_headers=auth("fine")) as good,
    ):
        await next_json(bad)
        await next_json(good)
        offsets = [(await producer.send_and_wait(topic, b'{"n":%d}' % i)).offset for i in range(30)]
        got = await messages(good, 30)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(bad.recv(), 10)
        assert bad.close_code == 1011
        assert [m["offset"] for m in got] == offsets
    closed = server.wait_for("connection_closed", lambda e: e.get("subject") == "faulty")
    assert closed["code"] == 1011
    assert server.wait_for("write_failed")["subject"] == "faulty"
    assert sample(server, "wsrt_client_write_errors_total") == 1
    assert http_get(f"{server.http}/healthz", 5)[0] == 200


@pytest.mark.parametrize(
    ("fault", "reason"), [("consumer_goes_quiet", "stalled"), ("consumer_hangs", "loop_stalled")]
)
async def test_a_stalled_consumer_is_replaced_without_a_gap(
    make_topics, servers, producer, fault: str, reason: str
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    env = {"WS_KAFKA_STALL_SECONDS": "3", "WS_KAFKA_PROBE_SECONDS": "0.5"}
    server = servers([topic], **faulty(fault, env))
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        await next_json(ws)
        before = [
            await producer.send_and_wait(topic, b'{"n":%d}' % i, partition=i % 2) for i in range(6)
        ]
        assert len(await messages(ws, 6)) == 6
        mark = server.mark()
        stalled = [await producer.send_and_wait(topic, TRIGGER_STALL, partition=0)]
        stalled += [
            await producer.send_and_wait(topic, b'{"m":%d}' % i, partition=i % 2) for i in range(6)
        ]
        degraded = await asyncio.to_thread(
            server.wait_for, "readiness", lambda e: e.get("reason") == "kafka stalled", start=mark
        )
        assert degraded["status"] == "degraded"
        got = await messages(ws, len(stalled), timeout=60)
    assert sorted((m["partition"], m["offset"]) for m in got) == sorted(
        (md.partition, md.offset) for md in stalled
    )
    assert {md.offset for md in before}  # produced and delivered before the stall
    event = server.wait_for("kafka_stalled", start=mark)
    assert event["reason"] == reason
    assert sample(server, "wsrt_kafka_consumer_restarts_total", reason=reason) == 1
    server.wait_for("readiness", lambda e: e.get("status") == "ok", start=mark)
    assert http_get(f"{server.http}/healthz", 5)[0] == 200


async def test_a_replay_steps_over_undecodable_records_and_loses_no_other_partition(
    bootstrap, make_topics, servers, producer, tmp_path
) -> None:
    """History with records the server cannot decode (lz4 without its codec) in one
    partition and plain records in another: every readable record of both, once, in
    order, then live; only the undecodable offsets are missing."""
    hidden = tmp_path / "no-codecs" / "cramjam"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("cramjam hidden by the test")\n')
    (topic,) = await make_topics("lines", partitions=2)
    plan = [(None, b'{"n":0}'), ("lz4", b'{"n":1}'), ("lz4", b'{"n":2}'), (None, b'{"n":3}'),
            ("lz4", b'{"n":4}'), (None, b'{"n":5}')]  # fmt: skip
    sent = await produce_compressed(bootstrap, topic, plan)  # partition 0
    other = [(await producer.send_and_wait(topic, b'{"m":%d}' % n, partition=1)).offset
             for n in range(30)]  # fmt: skip
    server = servers([topic], {"PYTHONPATH": str(hidden.parent)})
    readable = [o for (o, _), (codec, _) in zip(sent, plan, strict=True) if codec != "lz4"]
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await ws.send(json.dumps(
            {"type": "subscribe", "channel": topic, "id": 1, "since": {"0": 0, "1": 0}}
        ))  # fmt: skip
        reply = await next_json(ws)
        assert reply["positions"] == {"0": 0, "1": 0}, reply
        got: dict[int, list[int]] = {}

        async def until(last: dict[int, int]) -> None:
            while not all(got.get(p) and got[p][-1] >= o for p, o in last.items()):
                frame = await next_json(ws)
                assert frame["type"] == "message", frame
                got.setdefault(frame["partition"], []).append(frame["offset"])

        await asyncio.wait_for(until({0: readable[-1], 1: other[-1]}), 60)
        live = (await producer.send_and_wait(topic, b'{"live":1}', partition=0)).offset
        await asyncio.wait_for(until({0: live}), 60)
    assert got == {0: [*readable, live], 1: other}
