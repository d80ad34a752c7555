"""Schema-framed values to JSON (wsrt/schemas.py); payloads written by fastavro itself."""

from __future__ import annotations

import io
import json

import fastavro
import orjson
import pytest

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
    schemas.add(7, "AVRO", json.dumps(TRADE), [json.dumps(VENUE)])
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
    with pytest.raises(Skipped):
        schemas.decode(framed(5, b"\x02"))
