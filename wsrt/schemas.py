"""Values a Schema Registry describes, decoded to JSON once per record, Sans-I/O.

Confluent framing: byte 0, then the schema id (4 bytes, big-endian), then the
payload. :class:`Schemas` keeps a decoder per schema id; the registry client
(:mod:`wsrt.kafka.registry`) fills it before a batch is framed, so framing
itself never waits. JSON mapping (docs/design.md, "Record formats"): Avro as
plain JSON (records as objects, unions without wrappers, bytes and fixed as
base64, decimals as strings, dates and times as the numbers the logical type
says); Protobuf as the canonical proto3 JSON mapping (:mod:`wsrt.protobuf`);
JSON Schema values are JSON already and embedded as they are.
"""

from __future__ import annotations

import base64
import decimal
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import fastavro
import orjson

from wsrt import protobuf
from wsrt.wire import SCHEMA_MISMATCH, UNKNOWN_SCHEMA, Skipped, is_json

AVRO, PROTOBUF, JSON_SCHEMA = "avro", "protobuf", "json-schema"
#: Logical types whose plain value is what a client gets (epoch days, millis, micros).
_NUMBERS = frozenset(
    {
        "date", "time-millis", "time-micros", "timestamp-millis", "timestamp-micros",
        "local-timestamp-millis", "local-timestamp-micros",
    }
)  # fmt: skip

Decoder = Callable[[bytes], bytes]
#: The schemas a schema refers to: (name, text), those they refer to first.
References = Sequence[tuple[str, str]]


def schema_id(value: bytes | None) -> int | None:
    """The schema id of a value in Confluent framing (``None``: not framed)."""
    if value is None or len(value) < 5 or value[0] != 0:
        return None
    return int.from_bytes(value[1:5], "big")


class SchemaNotLoaded(RuntimeError):
    """A framed value met before its schema was loaded (a caller skipped the registry)."""


class Schemas:
    """Decoders by schema id, and the ids the registry does not know."""

    def __init__(self) -> None:
        self._decoders: dict[int, Decoder] = {}
        self.unknown: set[int] = set()

    def missing(self, values: Iterable[bytes | None]) -> set[int]:
        """Schema ids of ``values`` neither loaded nor known to be unknown."""
        ids = {schema_id(v) for v in values}
        ids.discard(None)
        return {i for i in ids if i is not None} - self._decoders.keys() - self.unknown

    def missing_ids(self, ids: Iterable[int]) -> set[int]:
        """Of ``ids``, those neither loaded nor known to be unknown."""
        return set(ids) - self._decoders.keys() - self.unknown

    def add(self, ident: int, kind: str, schema: str, references: References = ()) -> None:
        """Load schema ``ident`` (:func:`build`, then :meth:`put`)."""
        self.put(ident, build(kind, schema, references))

    def put(self, ident: int, decoder: Decoder) -> None:
        self._decoders[ident] = decoder

    def mark_unknown(self, ident: int) -> None:
        self.unknown.add(ident)

    def decode(self, value: bytes | None) -> bytes:
        """The JSON text of a framed value; :class:`~wsrt.wire.Skipped` when it has none."""
        ident = schema_id(value)
        if ident is None or value is None:
            raise Skipped(SCHEMA_MISMATCH)
        if ident in self.unknown:
            raise Skipped(UNKNOWN_SCHEMA)
        decoder = self._decoders.get(ident)
        if decoder is None:
            raise SchemaNotLoaded(f"schema {ident} was not loaded before framing")
        try:
            return decoder(value[5:])
        except Unreadable as exc:
            raise Skipped(SCHEMA_MISMATCH, f"schema {ident} could not be read: {exc}") from None
        except Exception:
            raise Skipped(SCHEMA_MISMATCH) from None


class Unreadable(ValueError):
    """The schema of a value could not be read (so no value of it decodes)."""


def build(kind: str, schema: str, references: References = ()) -> Decoder:
    """The decoder of a schema (``kind``: the registry's AVRO, PROTOBUF or JSON;
    ``references``: (name, text) of the schemas it refers to, those they refer to
    first). A schema that cannot be read makes its values ``schema_mismatch``."""
    try:
        if kind.upper() in ("", "AVRO"):
            return _avro(schema, [text for _, text in references])
        if kind.upper() == "PROTOBUF":
            return protobuf.decoder(schema, references)
        if kind.upper() == "JSON":
            return _json
        raise ValueError(f"schema type {kind} is not known")
    except Exception as exc:
        said = str(exc).strip() or type(exc).__name__

        def refuse(payload: bytes) -> bytes:
            raise Unreadable(said[:500])

        return refuse


def _json(payload: bytes) -> bytes:
    if not is_json(payload):
        raise ValueError("not JSON")
    return payload


def _avro(schema: str, references: Sequence[str]) -> Decoder:
    named: dict[str, Any] = {}
    for text in references:  # named types that the schema refers to
        fastavro.parse_schema(_plain(orjson.loads(text)), named_schemas=named)
    parsed = fastavro.parse_schema(_plain(orjson.loads(schema)), named_schemas=named)

    def decode(payload: bytes) -> bytes:
        stream = io.BytesIO(payload)
        value = fastavro.schemaless_reader(stream, parsed, None)
        if stream.tell() != len(payload):
            raise ValueError("bytes left after the value: another schema's")
        return orjson.dumps(value, default=_json_default)

    return decode


def _plain(schema: Any) -> Any:
    """``schema`` without the logical types whose plain numbers clients get."""
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _plain(v) for k, v in schema.items()}
    if out.get("logicalType") in _NUMBERS:
        del out["logicalType"]
    return out


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def framed(ident: int, payload: bytes) -> bytes:
    """``payload`` in Confluent framing for schema ``ident``."""
    return b"\0" + ident.to_bytes(4, "big") + payload


def avro_encoder(schema: str) -> Callable[[object], bytes]:
    """Encode a JSON value (as parsed) with an Avro schema (``wsrt produce``); raises
    ``ValueError`` naming what does not fit."""
    parsed = fastavro.parse_schema(orjson.loads(schema))

    def encode(value: object) -> bytes:
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(out, parsed, value)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"does not fit the schema ({type(exc).__name__}: {exc})") from None
        return out.getvalue()

    return encode
