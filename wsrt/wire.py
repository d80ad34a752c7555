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

import orjson

from wsrt.errors import WsrtError

# Why a record was skipped (the ``reason`` label of the skip counter).
NOT_JSON = "not_json"
EMPTY = "empty"
TOMBSTONE = "tombstone"
UNDECODABLE = "undecodable"
SKIP_REASONS = (NOT_JSON, EMPTY, TOMBSTONE, UNDECODABLE)


class Skipped(WsrtError):
    """A record that is not delivered; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_json(value: bytes) -> bool:
    """Is ``value`` one JSON document (any JSON value)?"""
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def check_value(value: bytes | None) -> None:
    """Raise :class:`Skipped` unless ``value`` can be embedded as ``data``."""
    if value is None:
        raise Skipped(TOMBSTONE)
    if not value:
        raise Skipped(EMPTY)
    if not is_json(value):
        raise Skipped(NOT_JSON)


def _key_part(key: bytes | None) -> bytes:
    if key is None:
        return b"null"
    try:
        return orjson.dumps(key.decode())
    except UnicodeDecodeError:
        return b'"' + base64.b64encode(key) + b'","key_encoding":"base64"'


_HEAD = b'{"type":"message","channel":%b,"key":%b,"partition":%d,"offset":%d,"timestamp":%d,"data":'


def record_frame(
    topic: str,
    key: bytes | None,
    partition: int,
    offset: int,
    timestamp: int,
    value: bytes | None,
) -> bytes:
    """The text frame of one record's ``message`` envelope.

    ``data`` is the record value embedded byte for byte; it is parsed once here
    only to reject what is not JSON.
    """
    check_value(value)
    assert value is not None
    head = _HEAD % (orjson.dumps(topic), _key_part(key), partition, offset, timestamp)
    return b"".join((_header(len(head) + len(value) + 1), head, value, b"}"))


_DELETE = b'{"type":"delete","channel":%b,"key":%b,"partition":%d,"offset":%d,"timestamp":%d}'


def delete_frame(topic: str, key: bytes, partition: int, offset: int, timestamp: int) -> bytes:
    """The text frame of a ``delete`` event: a tombstone on a state topic removes its key."""
    payload = _DELETE % (orjson.dumps(topic), _key_part(key), partition, offset, timestamp)
    return _header(len(payload)) + payload


def envelope(
    topic: str,
    key: bytes | None,
    partition: int,
    offset: int,
    timestamp: int,
    value: bytes | None,
    state: bool,
) -> tuple[bytes, bool]:
    """A record's frame and whether it is a ``delete``: on a state topic (``state``) a
    tombstone with a key deletes that key; anywhere else it is skipped, as any record
    that cannot be a ``message`` is (raises :class:`Skipped`)."""
    if value is None and state and key is not None:
        return delete_frame(topic, key, partition, offset, timestamp), True
    return record_frame(topic, key, partition, offset, timestamp, value), False


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
