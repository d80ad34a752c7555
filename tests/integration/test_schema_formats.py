"""Avro, Protobuf and JSON Schema values through a real Schema Registry (Apicurio 2.6).

Records are written by confluent-kafka's own serializers (their framing and
schema ids, the schemas registered by them), never by wsrt's code. Each
arrives as the JSON the mapping promises, live and in a replay; an Avro key
is a ``topic:key`` channel; an id the registry does not know and a value
its schema does not decode are skipped by reason while the records around
them arrive; and a registry that is away holds the records until it is back,
skipping none, with /healthz naming it meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.integration.harness import auth, messages, next_json
from tests.integration.test_replay import needs_apache, subscribe
from tests.integration.test_state import snapshot
from tests.support import protos
from wsrt.brokers import Broker
from wsrt.brokers.registry import ApicurioRegistry
from wsrt.tools.client import scrape

pytestmark = pytest.mark.integration

QUOTE = {
    "type": "record", "name": "Quote", "namespace": "wsrt.test",
    "fields": [
        {"name": "event", "type": "string"},
        {"name": "price", "type": {
            "type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "side", "type": {"type": "enum", "name": "Side", "symbols": ["BACK", "LAY"]}},
        {"name": "raw", "type": "bytes"},
        {"name": "legs", "type": {"type": "array", "items": {
            "type": "record", "name": "Leg", "fields": [{"name": "odds", "type": "double"}]}}},
        {"name": "tags", "type": {"type": "map", "values": "int"}},
    ],
}  # fmt: skip
KEY = {"type": "record", "name": "EventKey", "fields": [{"name": "event", "type": "string"}]}
AT = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def quote(n: int, note: str | None = None) -> dict[str, Any]:
    return {
        "event": f"EVT-{n % 2}", "price": decimal.Decimal(f"{n}.25"),
        "at": AT + datetime.timedelta(milliseconds=n), "note": note,
        "side": "LAY" if n % 2 else "BACK", "raw": bytes([n, 255]),
        "legs": [{"odds": 1.5 + n}], "tags": {"n": n},
    }  # fmt: skip


def as_json(n: int, note: str | None = None) -> dict[str, Any]:
    """What the mapping promises for :func:`quote`."""
    return {
        "event": f"EVT-{n % 2}", "price": f"{n}.25",
        "at": int(AT.timestamp() * 1000) + n, "note": note,
        "side": "LAY" if n % 2 else "BACK", "raw": base64.b64encode(bytes([n, 255])).decode(),
        "legs": [{"odds": 1.5 + n}], "tags": {"n": n},
    }  # fmt: skip


@pytest.fixture(scope="module")
def registry(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApicurioRegistry]:
    needs_apache(broker, "a Schema Registry here (Apicurio runs in the Apache Kafka run only)")
    with ApicurioRegistry(tmp_path_factory.mktemp("registry")) as started:
        yield started


class Writer:
    """confluent-kafka's serializers, registering their schemas as a producer would."""

    def __init__(self, registry: ApicurioRegistry, topic: str) -> None:
        self.client = SchemaRegistryClient({"url": registry.url})
        self.topic = topic
        self.value = AvroSerializer(self.client, json.dumps(QUOTE))
        self.key = AvroSerializer(self.client, json.dumps(KEY))

    def values(self, *records: dict[str, Any]) -> list[bytes]:
        ctx = SerializationContext(self.topic, MessageField.VALUE)
        return [self.value(r, ctx) for r in records]

    def key_of(self, event: str) -> bytes:
        return self.key({"event": event}, SerializationContext(self.topic, MessageField.KEY))


def skips(server: Any, topic: str) -> dict[str, float]:
    """The skipped records of ``topic`` by reason, from the server's /metrics."""
    return {
        dict(labels)["reason"]: v for (name, labels), v in scrape(server.http).items()
        if name == "wsrt_kafka_skipped_records_total" and dict(labels).get("topic") == topic
        and v
    }  # fmt: skip


def check_registry(registry: ApicurioRegistry, **more: str) -> str:
    """The ``registry`` line of ``wsrt check --kafka`` (brokers and topics are not asked)."""
    result = subprocess.run(
        [sys.executable, "-m", "wsrt", "check", "--kafka", "--timeout", "5"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "WS_SCHEMA_REGISTRY_URL": registry.url, "WS_KAFKA_BROKERS": "127.0.0.1:9",
             **more},
    )  # fmt: skip
    found = re.search(r"^(ok|FAIL)\s+registry\s+(.*)$", result.stdout, re.M)
    assert found, result.stdout + result.stderr
    return f"{found[1]} registry {found[2]}"


async def read_topic(bootstrap: str, topic: str, count: int) -> list[bytes]:
    """The first ``count`` values of ``topic``, as bytes on the broker."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    raw: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(raw) < count:
                batches = await consumer.getmany(timeout_ms=1000)
                raw += [r.value for rs in batches.values() for r in rs]
    finally:
        await consumer.stop()
    return raw


def env(registry: ApicurioRegistry, formats: str) -> dict[str, str]:
    return {"WS_TOPIC_FORMATS": formats, "WS_SCHEMA_REGISTRY_URL": registry.url}


async def test_avro_values_and_keys_arrive_as_json_live_by_key_and_replayed(
    registry: ApicurioRegistry, make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("avro")
    writer = Writer(registry, topic)
    server = servers([topic], env(registry, f"{topic}=avro"))
    key_channel = f'{topic}:{{"event":"EVT-1"}}'
    whole_url = f"{server.url}?channels={topic}"
    async with (
        websockets.connect(whole_url, additional_headers=auth()) as ws,
        websockets.connect(server.url, additional_headers=auth()) as by_key,
    ):
        assert (await next_json(ws))["type"] == "subscribed"
        assert (await subscribe(by_key, key_channel))["type"] == "subscribed"
        values = writer.values(*(quote(n, note="x" if n == 2 else None) for n in range(4)))
        for n, value in enumerate(values):
            await producer.send_and_wait(topic, value, key=writer.key_of(f"EVT-{n % 2}"))
        whole = await messages(ws, 4)
        keyed = await messages(by_key, 2)
    assert [m["data"] for m in whole] == [as_json(n, "x" if n == 2 else None) for n in range(4)]
    assert [m["key"] for m in whole] == ['{"event":"EVT-0"}', '{"event":"EVT-1"}'] * 2
    assert [(m["key"], m["offset"]) for m in keyed] == [('{"event":"EVT-1"}', n) for n in (1, 3)]

    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        reply = await subscribe(ws, key_channel, since={"0": 0})
        assert reply["type"] == "subscribed", reply
        replayed = await messages(ws, 2)
    assert [m["data"] for m in replayed] == [as_json(1), as_json(3)]


async def test_json_schema_values_and_what_cannot_be_decoded(
    registry: ApicurioRegistry, make_topics, servers, producer
) -> None:
    avro, documents = await make_topics("avro-bad", "jsonschema")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    client = SchemaRegistryClient({"url": registry.url})
    to_json = JSONSerializer(json.dumps(schema), client)
    ctx = SerializationContext(documents, MessageField.VALUE)
    server = servers([avro, documents], env(registry, f"{avro}=avro,{documents}=json-schema"))
    (good,) = Writer(registry, avro).values(quote(7))
    unknown = b"\0" + struct.pack(">I", 987_654) + good[5:]  # an id nobody registered
    mismatch = good[:5] + b"\x01"  # the schema's id, not its shape
    url = f"{server.url}?channels={avro},{documents}"
    async with websockets.connect(url, additional_headers=auth()) as ws:
        assert [(await next_json(ws))["type"] for _ in range(2)] == ["subscribed"] * 2
        for value in (unknown, mismatch, b"not framed", good):
            await producer.send_and_wait(avro, value)
        for n in range(3):
            await producer.send_and_wait(documents, to_json({"n": n}, ctx))
        live = await messages(ws, 4)
    assert [m["data"] for m in live if m["channel"] == documents] == [{"n": n} for n in range(3)]
    decoded = [m for m in live if m["channel"] == avro]
    assert [(m["offset"], m["data"]) for m in decoded] == [(3, as_json(7))]
    assert skips(server, avro) == {"unknown_schema": 1.0, "schema_mismatch": 2.0}


#: The registry outage under load: how long, and the producer's rate meanwhile.
OUTAGE_SECONDS, RATE = 20.0, 40.0


async def test_a_registry_away_20s_under_load_holds_its_topic_and_no_other(
    registry: ApicurioRegistry, make_topics, servers, producer
) -> None:
    """Records of a schema new to the server keep coming while the registry is stopped for
    20 s: nothing skipped, /healthz degraded naming the registry within 15 s, a JSON topic
    beside it delivered meanwhile, then every record, in order, and ok again within 15 s."""
    topic, beside = await make_topics("avro-outage", "json-beside")
    writer = Writer(registry, topic)
    server = servers([topic, beside], env(registry, f"{topic}=avro"))
    count = int(OUTAGE_SECONDS * RATE * 1.5)
    values = writer.values(*(quote(n % 100) for n in range(count)))  # registered beforehand
    url = f"{server.url}?channels={topic},{beside}"
    got: list[tuple[float, dict[str, Any]]] = []
    sent: list[int] = []
    async with websockets.connect(url, additional_headers=auth()) as ws:
        assert [(await next_json(ws))["type"] for _ in range(2)] == ["subscribed"] * 2

        async def read() -> None:
            async for frame in ws:
                message = json.loads(frame)
                if message["type"] == "message":
                    got.append((time.monotonic(), message))

        async def produce() -> None:
            for n, value in enumerate(values):
                sent.append((await producer.send_and_wait(topic, value)).offset)
                if n % 10 == 0:
                    await producer.send_and_wait(beside, b'{"beside":%d}' % n)
                await asyncio.sleep(1 / RATE)  # the steady load of the scenario

        reader = asyncio.create_task(read())
        assert check_registry(registry).startswith(f"ok registry {registry.url}: ")
        stopped = time.monotonic()
        await asyncio.to_thread(registry.stop)
        mark = server.mark()
        writing = asyncio.create_task(produce())
        said = await asyncio.to_thread(
            server.wait_for, "readiness", lambda e: "Schema Registry" in e.get("reason", ""),
            30, mark,
        )  # fmt: skip
        assert said is not None and said["status"] == "degraded", said
        assert time.monotonic() - stopped <= 15
        with pytest.raises(urllib.error.HTTPError) as answer:
            await asyncio.to_thread(urllib.request.urlopen, f"{server.http}/healthz", timeout=10)
        assert answer.value.code == 503 and registry.url in json.load(answer.value)["reason"]
        assert check_registry(registry).startswith(
            f"FAIL registry cannot reach the Schema Registry at {registry.url}: connection refused"
        )
        await asyncio.sleep(max(0.0, stopped + OUTAGE_SECONDS - time.monotonic()))  # the outage
        # Started from this thread: a child dies with the thread that started it (and the
        # threads of this test's event loop end with the test).
        registry.start()
        back = time.monotonic()
        ok = await asyncio.to_thread(
            server.wait_for, "readiness", lambda e: e.get("status") == "ok", 30, mark
        )
        assert ok is not None and time.monotonic() - back <= 15
        await writing
        deadline = time.monotonic() + 60
        while len([m for _, m in got if m["channel"] == topic]) < len(sent):
            assert time.monotonic() < deadline, f"{len(got)} messages, {len(sent)} sent"
            await asyncio.sleep(0.1)  # the reader task appends as frames arrive
        reader.cancel()
    avro = [m for _, m in got if m["channel"] == topic]
    assert [m["offset"] for m in avro] == sent  # every record once, in order
    assert [m["data"] for m in avro] == [as_json(n % 100) for n in range(count)]
    during = [m for t, m in got if m["channel"] == beside and t < back]
    assert len(during) >= OUTAGE_SECONDS * RATE / 10 / 2, len(during)  # the other topic flowed
    assert skips(server, topic) == {}


async def test_an_avro_state_topic_keeps_one_value_per_decoded_key_loaded_and_live(
    registry: ApicurioRegistry, make_topics, servers, producer
) -> None:
    """Keys loaded from history at start and keys of the live stream are the same keys."""
    (topic,) = await make_topics("avro-state")
    writer = Writer(registry, topic)
    for n, value in enumerate(writer.values(*(quote(n) for n in range(4)))):
        await producer.send_and_wait(topic, value, key=writer.key_of(f"EVT-{n % 2}"))
    server = servers([topic], {**env(registry, f"{topic}=avro"), "WS_STATE_TOPICS": topic})
    url = f"{server.url}?channels={topic}"
    async with (
        websockets.connect(url, additional_headers=auth()) as live,
        websockets.connect(server.url, additional_headers=auth()) as late,
    ):
        assert (await next_json(live))["type"] == "subscribed"
        (update,) = writer.values(quote(4))
        await producer.send_and_wait(topic, update, key=writer.key_of("EVT-0"))
        assert [m["offset"] for m in await messages(live, 1)] == [4]  # the hub took it
        _, frames, end = await snapshot(late, topic)
    assert end["keys"] == 2, (end, [f["key"] for f in frames])
    assert {f["key"]: f["data"] for f in frames} == {
        '{"event":"EVT-0"}': as_json(4), '{"event":"EVT-1"}': as_json(3)
    }  # fmt: skip


LINE = {
    "type": "record", "name": "Line",
    "fields": [
        {"name": "event", "type": "string"}, {"name": "odds", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}  # fmt: skip


async def test_wsrt_produce_writes_avro_that_confluents_deserializer_reads(
    registry: ApicurioRegistry, bootstrap: str, make_topics, servers, tmp_path
) -> None:
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    (topic,) = await make_topics("produced-avro")
    lines = [
        {"event": "EVT-1", "odds": 2.5, "note": None},
        {"event": "EVT-2", "odds": 1.25, "note": "x"},
    ]
    (tmp_path / "line.avsc").write_text(json.dumps(LINE))
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines))
    server = servers([topic], env(registry, f"{topic}=avro"))
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        assert (await next_json(ws))["type"] == "subscribed"
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "wsrt", "produce", "-t", topic, "--file", "lines.jsonl",
             "--format", "avro", "--schema", "line.avsc", "--registry", registry.url,
             "--brokers", bootstrap, "--rate", "0"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert [m["data"] for m in await messages(ws, 2)] == lines

    raw = await read_topic(bootstrap, topic, len(lines))
    read = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    assert [read(value, ctx) for value in raw] == lines

    bad = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "wsrt", "produce", "-t", topic, "--file", "-", "--format", "avro",
         "--schema", "line.avsc", "--registry", registry.url, "--brokers", bootstrap],
        input='{"event": "EVT-3"}\n', capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: --file: line 1 does not fit"), (
        bad.stderr
    )


async def test_protobuf_values_and_keys_with_an_import_arrive_as_canonical_json(
    registry: ApicurioRegistry, make_topics, servers, producer, tmp_path
) -> None:
    """confluent-kafka's serializer registers the file (and its import, as a reference) as a
    descriptor; two messages of one file share a schema id and differ by message index."""
    (topic,) = await make_topics("protobuf")
    made = protos.classes(tmp_path / "protoc")  # not in the server's working directory
    quote, other, money = (
        made[n] for n in ("wsrt.test.Quote", "wsrt.test.Other", "wsrt.common.Money")
    )
    client = SchemaRegistryClient({"url": registry.url})
    conf = {"use.deprecated.format": False}
    values = ProtobufSerializer(quote, client, conf), ProtobufSerializer(other, client, conf)
    keys = ProtobufSerializer(money, client, conf)
    value_ctx = SerializationContext(topic, MessageField.VALUE)
    key_ctx = SerializationContext(topic, MessageField.KEY)
    server = servers([topic], env(registry, f"{topic}=protobuf"))
    key_channel = f'{topic}:{{"currency":"EUR","units":"5"}}'
    async with (
        websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth()) as ws,
        websockets.connect(server.url, additional_headers=auth()) as by_key,
    ):
        assert (await next_json(ws))["type"] == "subscribed"
        assert (await subscribe(by_key, key_channel))["type"] == "subscribed"
        for n in range(3):
            q = quote(event_id=f"E{n}", side=n % 2, raw=bytes([n]))
            q.price.currency, q.price.units = "EUR", 2**40 + n
            q.at.FromMilliseconds(1_700_000_000_001 + n)
            q.legs.add(odds=1.5 + n)
            key = keys(money(currency="EUR", units=5 if n != 1 else 6), key_ctx)
            await producer.send_and_wait(topic, values[0](q, value_ctx), key=key)
        await producer.send_and_wait(topic, values[1](other(x=7), value_ctx))
        whole = await messages(ws, 4)
        keyed = await messages(by_key, 2)

    def as_json(n: int) -> dict[str, Any]:
        return {
            "event_id": f"E{n}", "price": {"currency": "EUR", "units": str(2**40 + n)},
            "at": f"2023-11-14T22:13:20.{n + 1:03d}Z", "legs": [{"odds": 1.5 + n}],
            "raw": base64.b64encode(bytes([n])).decode(), **({"side": "LAY"} if n % 2 else {}),
        }  # fmt: skip

    assert [m["data"] for m in whole] == [as_json(0), as_json(1), as_json(2), {"x": 7}]
    assert [m["key"] for m in whole[:3]] == [
        '{"currency":"EUR","units":"5"}', '{"currency":"EUR","units":"6"}',
        '{"currency":"EUR","units":"5"}',
    ]  # fmt: skip
    assert [(m["offset"], m["data"]) for m in keyed] == [(0, as_json(0)), (2, as_json(2))]
    assert skips(server, topic) == {}

    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        assert (await subscribe(ws, topic, since={"0": 1}))["type"] == "subscribed"
        replayed = await messages(ws, 3)
    assert [m["data"] for m in replayed] == [as_json(1), as_json(2), {"x": 7}]


def put_compatibility(registry: ApicurioRegistry, subject: str, level: str) -> None:
    request = urllib.request.Request(
        f"{registry.url}/config/{subject}", method="PUT",
        data=json.dumps({"compatibility": level}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


async def test_an_avro_schema_evolves_while_clients_are_connected(
    registry: ApicurioRegistry, make_topics, servers, producer
) -> None:
    """BACKWARD compatibility: v2 adds a field with a default; each record arrives as the
    schema it was written with says, old producers' records too, and an incompatible v3 is
    refused by the registry, not by wsrt."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    (topic,) = await make_topics("avro-evolves")
    v1 = {"type": "record", "name": "Price", "fields": [{"name": "odds", "type": "double"}]}
    venue = {"name": "venue", "type": "string", "default": "ANY"}
    v2 = {**v1, "fields": [*v1["fields"], venue]}
    v3 = {**v1, "fields": [*v1["fields"], {"name": "stake", "type": "long"}]}
    client = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    old = AvroSerializer(client, json.dumps(v1))
    await producer.send_and_wait(topic, old({"odds": 1.0}, ctx))  # registers v1
    put_compatibility(registry, f"{topic}-value", "BACKWARD")
    server = servers([topic], env(registry, f"{topic}=avro"))
    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        assert (await next_json(ws))["type"] == "subscribed"
        await producer.send_and_wait(topic, old({"odds": 1.5}, ctx))
        new = AvroSerializer(client, json.dumps(v2))
        await producer.send_and_wait(topic, new({"odds": 2.0, "venue": "LON"}, ctx))
        await producer.send_and_wait(topic, old({"odds": 2.5}, ctx))  # a producer not yet moved
        await producer.send_and_wait(topic, new({"odds": 3.0}, ctx))  # the default
        live = await messages(ws, 4)
        with pytest.raises(SchemaRegistryError) as refused:
            AvroSerializer(client, json.dumps(v3))({"odds": 4.0, "stake": 1}, ctx)
        assert refused.value.http_status_code == 409
    assert [m["data"] for m in live] == [
        {"odds": 1.5}, {"odds": 2.0, "venue": "LON"}, {"odds": 2.5}, {"odds": 3.0, "venue": "ANY"}
    ]  # fmt: skip
    assert skips(server, topic) == {}


LINE_PROTO = """syntax = "proto3";
package wsrt.line;
import "google/protobuf/timestamp.proto";
message Line { string event = 1; double odds = 2; google.protobuf.Timestamp at = 3; }
"""


async def test_wsrt_produce_writes_protobuf_registered_as_proto_text(
    registry: ApicurioRegistry, bootstrap: str, make_topics, servers, tmp_path
) -> None:
    """The .proto text goes to the registry as a Java producer's would, so the server
    compiles it; the bytes on the topic are what protoc's own class reads."""
    (topic,) = await make_topics("produced-protobuf")
    lines = [
        {"event": "EVT-1", "odds": 2.5, "at": "2026-12-07T12:00:00Z"},
        {"event": "EVT-2", "odds": 1.25, "at": "2026-12-07T12:00:01.500Z"},
    ]
    (tmp_path / "line.proto").write_text(LINE_PROTO)
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines))
    server = servers([topic], env(registry, f"{topic}=protobuf"))

    def produce(*more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wsrt", "produce", "-t", topic, "--file", "lines.jsonl",
             "--format", "protobuf", "--schema", "line.proto", "--registry", registry.url,
             "--brokers", bootstrap, "--rate", "0", *more],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip

    async with websockets.connect(
        f"{server.url}?channels={topic}", additional_headers=auth()
    ) as ws:
        assert (await next_json(ws))["type"] == "subscribed"
        result = await asyncio.to_thread(produce, "--message", "Line")
        assert result.returncode == 0, result.stderr
        assert [m["data"] for m in await messages(ws, 2)] == lines
    bad = await asyncio.to_thread(produce, "--message", "Nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --message: no message Nope"), (
        bad.stderr
    )

    raw = await read_topic(bootstrap, topic, len(lines))
    compiled = protos.compile_files(tmp_path / "protoc", {"line.proto": LINE_PROTO}, "line.proto")
    line = protos.classes_of(compiled, ["wsrt.line.Line"])["wsrt.line.Line"]
    assert {v[:1] + v[5:6] for v in raw} == {b"\0\0"}  # framing, then message indexes [0]
    decoded = [line.FromString(v[6:]) for v in raw]
    assert [(m.event, m.odds, m.at.ToJsonString()) for m in decoded] == [
        (v["event"], v["odds"], v["at"]) for v in lines
    ]


async def test_a_registry_behind_tls_and_basic_auth(
    broker: Broker, make_topics, servers, producer, tmp_path
) -> None:
    """Apicurio answering https only, with basic auth exchanged for client-credentials tokens
    of a real OpenID provider (oidc-provider): records decode with the CA file and the
    credentials; without either, /healthz and ``wsrt check`` say which is missing."""
    from tests.support.oidc import CLIENT_ID, CLIENT_SECRET, Issuer
    from tests.support.secure_kafka import make_certificates

    needs_apache(broker, "a Schema Registry here (Apicurio runs in the Apache Kafka run only)")
    certs = make_certificates(tmp_path)
    (topic,) = await make_topics("avro-secured")
    with Issuer() as issuer:
        auth_options = [
            "-Dregistry.auth.enabled=true", "-Dquarkus.oidc.tenant-enabled=true",
            f"-Dquarkus.oidc.auth-server-url={issuer.url}", "-Dquarkus.oidc.client-id=registry",
            "-Dregistry.auth.basic-auth-client-credentials.enabled=true",
            f"-Dregistry.auth.token.endpoint={issuer.token_url}",
        ]  # fmt: skip
        with ApicurioRegistry(
            tmp_path / "registry", tls=(certs.client, certs.client_key),
            options=auth_options, cafile=certs.ca,
        ) as registry:  # fmt: skip
            secured = {
                "WS_SCHEMA_REGISTRY_USERNAME": CLIENT_ID,
                "WS_SCHEMA_REGISTRY_PASSWORD": CLIENT_SECRET,
                "WS_SCHEMA_REGISTRY_CAFILE": str(certs.ca),
            }
            client = SchemaRegistryClient({
                "url": registry.url, "basic.auth.user.info": f"{CLIENT_ID}:{CLIENT_SECRET}",
                "ssl.ca.location": str(certs.ca),
            })  # fmt: skip
            ctx = SerializationContext(topic, MessageField.VALUE)
            write = AvroSerializer(client, json.dumps(QUOTE))
            server = servers([topic], {**env(registry, f"{topic}=avro"), **secured})
            url = f"{server.url}?channels={topic}"
            async with websockets.connect(url, additional_headers=auth()) as ws:
                assert (await next_json(ws))["type"] == "subscribed"
                for n in range(2):
                    await producer.send_and_wait(topic, write(quote(n), ctx))
                assert [m["data"] for m in await messages(ws, 2)] == [as_json(0), as_json(1)]

            no_password = {**secured, "WS_SCHEMA_REGISTRY_PASSWORD": "not-the-secret"}
            blind = servers([topic], {**env(registry, f"{topic}=avro"), **no_password})
            await asyncio.to_thread(blind.wait_for, "kafka_assigned")
            await producer.send_and_wait(topic, write(quote(2), ctx))  # needs the schema
            said = await asyncio.to_thread(
                blind.wait_for, "readiness", lambda e: "refused" in e.get("reason", ""), 30
            )
            assert said is not None and said["status"] == "degraded", said
            assert skips(blind, topic) == {}  # held, not skipped
            lines = await asyncio.gather(*(
                asyncio.to_thread(check_registry, registry, **more)
                for more in (
                    secured, no_password,
                    {k: v for k, v in secured.items() if "CAFILE" in k},
                    {k: v for k, v in secured.items() if "CAFILE" not in k},
                )
            ))  # fmt: skip
    assert lines[0].startswith(f"ok registry {registry.url}: ")
    assert lines[1] == (
        f"FAIL registry the Schema Registry at {registry.url} refused "
        "WS_SCHEMA_REGISTRY_USERNAME and its password (HTTP 401)"
    )
    assert lines[2].startswith(f"FAIL registry the Schema Registry at {registry.url} asks")
    assert lines[3].startswith(
        f"FAIL registry the Schema Registry at {registry.url} has a certificate that is not "
        "trusted (unable to get local issuer certificate): set WS_SCHEMA_REGISTRY_CAFILE"
    ), lines[3]
