"""Bytes on the wire, Sans-I/O: a Kafka record becomes one WebSocket frame, once.

:func:`record_frame` builds the ``message`` envelope of docs/design.md, "The wire protocol", and
its frame header in one join; the hub hands those same bytes to every
subscriber. :func:`text_frame` frames any other payload (control replies).
A record that cannot become a frame raises :class:`Skipped` with one of the
reasons that are counted and logged (docs/design.md, "Never silent").
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import orjson

from wsrt.errors import WsrtError

# Why a record was skipped (the ``reason`` label of the skip counter).
NOT_JSON = "not_json"
NOT_TEXT = "not_text"
EMPTY = "empty"
TOMBSTONE = "tombstone"
UNDECODABLE = "undecodable"
#: A Schema Registry has no schema of that id; a value that its schema does not decode.
UNKNOWN_SCHEMA = "unknown_schema"
SCHEMA_MISMATCH = "schema_mismatch"
SKIP_REASONS = (NOT_JSON, NOT_TEXT, EMPTY, TOMBSTONE, UNDECODABLE, UNKNOWN_SCHEMA, SCHEMA_MISMATCH)

# How a topic's values become ``data`` (``WS_TOPIC_FORMATS``): JSON embedded byte
# for byte, UTF-8 text as a JSON string, anything as base64.
JSON, STRING, BYTES = "json", "string", "bytes"
#: Formats whose values are framed for a Schema Registry (wsrt.schemas decodes them).
SCHEMA_FORMATS = ("avro", "protobuf", "json-schema")
FORMATS = (JSON, STRING, BYTES, *SCHEMA_FORMATS)


class Decodes(Protocol):
    """What turns a framed value (or key) into JSON text: :class:`wsrt.schemas.Schemas`."""

    def decode(self, value: bytes | None) -> bytes: ...


class Skipped(WsrtError):
    """A record that is not delivered; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: What an operator needs to mend it (logged with the skip), when there is more to say.
        self.detail = detail


def is_json(value: bytes) -> bool:
    """Is ``value`` one JSON document (any JSON value)?"""
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def check_value(value: bytes | None) -> bytes:
    """``value``, if it can be embedded as ``data`` (JSON); else raise :class:`Skipped`."""
    if value is None:
        raise Skipped(TOMBSTONE)
    if not value:
        raise Skipped(EMPTY)
    if not is_json(value):
        raise Skipped(NOT_JSON)
    return value


def _key_part(key: bytes | None) -> bytes:
    if key is None:
        return b"null"
    try:
        return orjson.dumps(key.decode())
    except UnicodeDecodeError:
        return b'"' + base64.b64encode(key) + b'","key_encoding":"base64"'


_HEAD = (
    b'{"type":"message","channel":%b,"key":%b,"partition":%d,"offset":%d,"timestamp":%d,%b"data":'
)


def record_frame(
    topic: str,
    key: bytes | None,
    partition: int,
    offset: int,
    timestamp: int,
    value: bytes | None,
    form: str = JSON,
    headers: bytes = b"",
    data: bytes | None = None,
) -> bytes:
    """The text frame of one record's ``message`` envelope.

    ``data`` is the record value: for ``json`` embedded byte for byte (parsed
    once here only to reject what is not JSON), for ``string`` a JSON string,
    for ``bytes`` base64 with ``"data_encoding":"base64"``. ``headers`` is the
    envelope's headers part (:meth:`Envelopes.headers_part`), or empty. ``data``:
    the value already decoded to JSON (a schema format).
    """
    if data is None:
        data = check_value(value) if form == JSON else _data_part(value, form)
    head = _HEAD % (orjson.dumps(topic), _key_part(key), partition, offset, timestamp, headers)
    return b"".join((_header(len(head) + len(data) + 1), head, data, b"}"))


def _data_part(value: bytes | None, form: str) -> bytes:
    if value is None:
        raise Skipped(TOMBSTONE)
    if form == STRING:
        try:
            return orjson.dumps(value.decode())
        except UnicodeDecodeError:
            raise Skipped(NOT_TEXT) from None
    return b'"' + base64.b64encode(value) + b'","data_encoding":"base64"'


_DELETE = b'{"type":"delete","channel":%b,"key":%b,"partition":%d,"offset":%d,"timestamp":%d}'


def delete_frame(topic: str, key: bytes, partition: int, offset: int, timestamp: int) -> bytes:
    """The text frame of a ``delete`` event: a tombstone on a state topic removes its key."""
    payload = _DELETE % (orjson.dumps(topic), _key_part(key), partition, offset, timestamp)
    return _header(len(payload)) + payload


class Envelopes:
    """How each topic's records become frames: its format (``WS_TOPIC_FORMATS``), the
    Kafka headers forwarded (``WS_HEADERS``: names, or ``*``), and whether it is a state
    topic (where a tombstone with a key is a ``delete``)."""

    def __init__(
        self,
        formats: Mapping[str, str],
        headers: Iterable[str],
        state_topics: Iterable[str],
        schemas: Decodes | None = None,
    ) -> None:
        self.formats = dict(formats)
        #: Topics whose values (and framed keys) a Schema Registry describes.
        self.schema_topics = frozenset(t for t, f in self.formats.items() if f in SCHEMA_FORMATS)
        self.schemas = schemas
        names = frozenset(headers)
        self.every_header = "*" in names
        self.header_names = names - {"*"}
        self.state_topics = frozenset(state_topics)

    def frame(
        self,
        topic: str,
        key: bytes | None,
        partition: int,
        offset: int,
        timestamp: int,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> tuple[bytes, bool]:
        """A record's frame and whether it is a ``delete``. A record that cannot be a
        ``message`` raises :class:`Skipped`."""
        if value is None and key is not None and topic in self.state_topics:
            return delete_frame(
                topic, self.route_key(topic, key) or key, partition, offset, timestamp
            ), True
        part = self.headers_part(headers) if headers else b""
        form = self.formats.get(topic, JSON)
        data = None
        if topic in self.schema_topics:
            assert self.schemas is not None
            if value is None:
                raise Skipped(TOMBSTONE)
            data = self.schemas.decode(value)
            key = self.route_key(topic, key)  # a framed key: its compact JSON text
        frame = record_frame(topic, key, partition, offset, timestamp, value, form, part, data)
        return frame, False

    def route_key(self, topic: str, key: bytes | None) -> bytes | None:
        """The key ``topic:key`` channels match: a framed key's JSON text, else the key."""
        if key is None or key[:1] != b"\0" or topic not in self.schema_topics:
            return key
        assert self.schemas is not None
        try:
            return self.schemas.decode(key)
        except Skipped:
            return key

    def headers_part(self, headers: Sequence[tuple[str, bytes]]) -> bytes:
        """``"headers":{…},`` for the forwarded headers (UTF-8 values; others base64
        under ``"headers_base64"``); the last of a repeated name wins; empty if none."""
        if not (self.every_header or self.header_names):
            return b""
        text: dict[str, str | None] = {}
        other: dict[str, str] = {}
        for name, value in headers:
            if not (self.every_header or name in self.header_names):
                continue
            try:
                text[name] = None if value is None else value.decode()
                other.pop(name, None)
            except UnicodeDecodeError:
                other[name] = base64.b64encode(value).decode()
                text.pop(name, None)
        part = b'"headers":' + orjson.dumps(text) + b"," if text else b""
        if other:
            part += b'"headers_base64":' + orjson.dumps(other) + b","
        return part


_HEADER_SMALL = struct.Struct("!BB")
_HEADER_MEDIUM = struct.Struct("!BBH")
_HEADER_LARGE = struct.Struct("!BBQ")


def _header(length: int) -> bytes:
    # FIN + text opcode; servers never mask (RFC 6455 §5.2), so the bytes are
    # the same for every client.
    if length < 126:
        return _HEADER_SMALL.pack(0x81, length)
    if length < 1 << 16:
        return _HEADER_MEDIUM.pack(0x81, 126, length)
    return _HEADER_LARGE.pack(0x81, 127, length)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed WebSocket text frame."""
    return _header(len(payload)) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame built here (the inverse of :func:`text_frame`)."""
    length = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(length, 0) :]
