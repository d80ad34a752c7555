"""Schema-framed values to JSON (wsrt/schemas.py, wsrt/protobuf.py); payloads written by
fastavro and protobuf themselves, Protobuf's message indexes by confluent-kafka's serializer."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import protos
from wsrt import protobuf
from wsrt.schemas import SchemaNotLoaded, Schemas, schema_id
from wsrt.wire import SCHEMA_MISMATCH, UNKNOWN_SCHEMA, Skipped

TRADE = {
    "type": "record", "name": "Trade",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {
            "type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 3}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "maybe", "type": ["null", "double"]},
        {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 2}},
        {"name": "venue", "type": "Venue"},
    ],
}  # fmt: skip
VENUE = {"type": "record", "name": "Venue", "fields": [{"name": "name", "type": "string"}]}


def framed(ident: int, payload: bytes) -> bytes:
    return b"\0" + ident.to_bytes(4, "big") + payload


def avro_payload(record: dict[str, object]) -> bytes:
    named: dict[str, object] = {}
    fastavro.parse_schema(VENUE, named_schemas=named)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(TRADE, named_schemas=named), record)
    return out.getvalue()


def test_avro_maps_to_plain_json_with_its_references() -> None:
    import datetime
    import decimal

    schemas = Schemas()
    schemas.add(7, "AVRO", json.dumps(TRADE), [("wsrt.Venue", json.dumps(VENUE))])
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    value = framed(7, avro_payload({
        "id": 1, "amount": decimal.Decimal("12.345"), "day": datetime.date(2026, 1, 2),
        "at": at, "maybe": 0.5, "tag": b"\x00\xff", "venue": {"name": "x"},
    }))  # fmt: skip
    assert schemas.missing([value, None, b"not framed"]) == set()
    assert orjson.loads(schemas.decode(value)) == {
        "id": 1, "amount": "12.345", "day": 20455, "at": int(at.timestamp()) * 1_000_000 + 6,
        "maybe": 0.5, "tag": "AP8=", "venue": {"name": "x"},
    }  # fmt: skip


def test_ids_not_loaded_unknown_or_not_matching() -> None:
    schemas = Schemas()
    value = framed(9, b"\x02")
    assert schema_id(value) == 9 and schema_id(b"\x01abcd") is None and schema_id(None) is None
    assert schemas.missing([value]) == {9}
    with pytest.raises(SchemaNotLoaded):
        schemas.decode(value)  # the registry must be asked first: never skipped for that
    schemas.mark_unknown(9)
    with pytest.raises(Skipped) as unknown:
        schemas.decode(value)
    assert unknown.value.reason == UNKNOWN_SCHEMA and schemas.missing([value]) == set()
    schemas.add(3, "AVRO", '"long"')
    for bad in (framed(3, b""), framed(3, b"\x02\x02"), b"plain"):  # short, bytes left, unframed
        with pytest.raises(Skipped) as mismatch:
            schemas.decode(bad)
        assert mismatch.value.reason == SCHEMA_MISMATCH
    assert schemas.decode(framed(3, b"\x02")) == b"1"
    schemas.add(4, "JSON", '{"type":"object"}')
    assert schemas.decode(framed(4, b'{"a": 1}')) == b'{"a": 1}'
    schemas.add(5, "AVRO", "{ not a schema")  # unreadable: its values do not decode
    with pytest.raises(Skipped) as unreadable:
        schemas.decode(framed(5, b"\x02"))
    assert unreadable.value.detail and unreadable.value.detail.startswith("schema 5 could not")


def confluent_indexes(path: list[int]) -> bytes:
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    out = io.BytesIO()
    ProtobufSerializer._encode_varints(out, path)
    return out.getvalue()


@pytest.mark.parametrize("form", ["descriptor", "text"])
def test_protobuf_maps_to_canonical_json_with_an_import(form: str, tmp_path: Path) -> None:
    files = protos.compiled(tmp_path)
    made = protos.classes(tmp_path)
    quote_class, leg_class = made["wsrt.test.Quote"], made["wsrt.test.Quote.Leg"]
    quote = quote_class(event_id="E1", side=1, raw=b"\x00\xff", note="")
    quote.price.currency, quote.price.units = "EUR", 2**40
    quote.at.FromMilliseconds(1_700_000_000_250)
    quote.legs.add(odds=2.5)
    quote.tags["n"] = 3
    own = {f.name: f for f in files}
    if form == "descriptor":  # as confluent-kafka's serializer registers it
        schema = base64.b64encode(own["wsrt/quote.proto"].SerializeToString()).decode()
        common = base64.b64encode(own["wsrt/common.proto"].SerializeToString()).decode()
    else:  # as a Java producer registers it
        schema, common = protos.QUOTE, protos.COMMON
    schemas = Schemas()
    schemas.add(11, "PROTOBUF", schema, [("wsrt/common.proto", common)])
    value = framed(11, confluent_indexes([1]) + quote.SerializeToString())
    assert orjson.loads(schemas.decode(value)) == {
        "event_id": "E1", "price": {"currency": "EUR", "units": str(2**40)},
        "at": "2023-11-14T22:13:20.250Z", "side": "LAY", "legs": [{"odds": 2.5}],
        "raw": "AP8=", "tags": {"n": 3}, "note": "",
    }  # fmt: skip
    nested = framed(11, confluent_indexes([1, 0]) + leg_class(odds=1.5).SerializeToString())
    assert orjson.loads(schemas.decode(nested)) == {"odds": 1.5}
    other = framed(11, confluent_indexes([0]) + b"\x08\x07")
    assert orjson.loads(schemas.decode(other)) == {"x": 7}
    for bad in (confluent_indexes([5]), confluent_indexes([1]) + b"\x0a\xff", b"\x80"):
        with pytest.raises(Skipped) as mismatch:  # no such message; a cut field; cut indexes
            schemas.decode(framed(11, bad))
        assert mismatch.value.reason == SCHEMA_MISMATCH


def test_a_protobuf_schema_that_cannot_be_read_says_why() -> None:
    schemas = Schemas()
    schemas.add(12, "PROTOBUF", protos.QUOTE)  # its import has no reference
    schemas.add(13, "PROTOBUF", 'syntax = "proto3"; message A { strin x = 1; }')
    for ident, said in ((12, "wsrt/common.proto"), (13, "strin")):
        with pytest.raises(Skipped) as unreadable:
            schemas.decode(framed(ident, b"\x00"))
        assert unreadable.value.reason == SCHEMA_MISMATCH
        assert unreadable.value.detail and said in unreadable.value.detail, unreadable.value.detail


@given(st.lists(st.integers(0, 2**31), min_size=1, max_size=8), st.binary(max_size=8))
def test_message_indexes_read_what_confluent_writes(path: list[int], rest: bytes) -> None:
    written = confluent_indexes(path) + rest
    assert protobuf.indexes(written) == (tuple(path), len(written) - len(rest))
    assert protobuf.index_bytes(path) == confluent_indexes(path)
