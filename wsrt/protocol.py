"""The client protocol, Sans-I/O: control frames in, replies and envelopes out.

Nothing here touches a socket or an event loop. The gateway feeds client text
into :func:`parse_control` and writes what the ``*_reply`` helpers return;
the Kafka source turns each record into frame bytes once with
:func:`encode_message`, and the hub hands those same bytes to every
subscriber.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from wsrt.errors import WsrtError

# Error codes of section 5 of the design.
BAD_REQUEST = "bad_request"
UNKNOWN_CHANNEL = "unknown_channel"
FORBIDDEN = "forbidden"
UNAUTHORIZED = "unauthorized"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
RATE_LIMITED = "rate_limited"

# Close codes.
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009

RequestId = str | int | float | None


class ProtocolError(WsrtError):
    """A control message the server answers with an error frame."""

    def __init__(
        self,
        code: str,
        message: str,
        request_id: RequestId = None,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.channel = channel

    def reply(self) -> bytes:
        return error_reply(self.code, self.message, self.request_id, self.channel)


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str
    id: RequestId = None


Control = Subscribe | Unsubscribe | Ping | Refresh


def parse_control(text: str | bytes) -> Control:
    """Parse one client text frame; raise :class:`ProtocolError` (bad_request)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(BAD_REQUEST, "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "message must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and (
        not isinstance(request_id, str | int | float) or isinstance(request_id, bool)
    ):
        raise ProtocolError(BAD_REQUEST, "'id' must be a string or a number")
    kind = obj.get("type")
    if kind == "subscribe" or kind == "unsubscribe":
        channel = obj.get("channel")
        if not isinstance(channel, str) or not channel:
            raise ProtocolError(BAD_REQUEST, f"{kind} needs a string 'channel'", request_id)
        return (Subscribe if kind == "subscribe" else Unsubscribe)(channel, request_id)
    if kind == "ping":
        return Ping(request_id)
    if kind == "refresh":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(BAD_REQUEST, "refresh needs a string 'token'", request_id)
        return Refresh(token, request_id)
    if not isinstance(kind, str):
        raise ProtocolError(BAD_REQUEST, "message needs a string 'type'", request_id)
    raise ProtocolError(BAD_REQUEST, f"unknown message type {kind[:64]!r}", request_id)


def split_channel(channel: str) -> tuple[str, str | None]:
    """``"order_book:BTC-USD"`` → ``("order_book", "BTC-USD")``; bare topics have no key."""
    topic, sep, key = channel.partition(":")
    return topic, (key if sep else None)


# -- server → client replies (JSON text payloads) ------------------------------


def _reply(obj: dict[str, Any], request_id: RequestId) -> bytes:
    if request_id is not None:
        obj["id"] = request_id
    return orjson.dumps(obj)


def subscribed_reply(channel: str, request_id: RequestId) -> bytes:
    return _reply({"type": "subscribed", "channel": channel}, request_id)


def unsubscribed_reply(channel: str, request_id: RequestId, reason: str | None = None) -> bytes:
    obj: dict[str, Any] = {"type": "unsubscribed", "channel": channel}
    if reason is not None:
        obj["reason"] = reason
    return _reply(obj, request_id)


def pong_reply(request_id: RequestId) -> bytes:
    return _reply({"type": "pong"}, request_id)


def refreshed_reply(exp: int | None, request_id: RequestId) -> bytes:
    return _reply({"type": "refreshed", "exp": exp}, request_id)


def error_reply(
    code: str, message: str, request_id: RequestId = None, channel: str | None = None
) -> bytes:
    obj: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if channel is not None:
        obj["channel"] = channel
    return _reply(obj, request_id)


# -- Kafka record → envelope → frame -------------------------------------------


def encode_envelope(
    topic: str,
    key: bytes | None,
    partition: int,
    offset: int,
    timestamp: int,
    value: bytes | None,
) -> bytes | None:
    """The ``message`` envelope for one record, or ``None`` when the value is not JSON.

    ``data`` is the record value embedded byte for byte; it is parsed once here
    only to reject what is not JSON (empty values and tombstones included).
    """
    if not value:
        return None
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if key is None:
        key_part = b"null"
    else:
        try:
            key_part = orjson.dumps(key.decode())
        except UnicodeDecodeError:
            key_part = b'"' + base64.b64encode(key) + b'","key_encoding":"base64"'
    return b"".join(
        (
            b'{"type":"message","channel":',
            orjson.dumps(topic),
            b',"key":',
            key_part,
            b',"partition":%d,"offset":%d,"timestamp":%d,"data":' % (partition, offset, timestamp),
            value,
            b"}",
        )
    )


_HEADER_SMALL = struct.Struct("!BB")
_HEADER_MEDIUM = struct.Struct("!BBH")
_HEADER_LARGE = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed WebSocket text frame (RFC 6455 §5.2).

    Servers never mask, so these bytes are the same for every client: the hub
    writes one object to every subscriber's transport.
    """
    length = len(payload)
    if length < 126:
        header = _HEADER_SMALL.pack(0x81, length)
    elif length < 1 << 16:
        header = _HEADER_MEDIUM.pack(0x81, 126, length)
    else:
        header = _HEADER_LARGE.pack(0x81, 127, length)
    return header + payload
