"""The client protocol, Sans-I/O: control frames in, replies and envelopes out.

Nothing here touches a socket or an event loop. The gateway feeds client text
into :func:`parse_control` and writes what the ``*_reply`` helpers return
(framed by :mod:`wsrt.wire`, which also builds the ``message`` envelopes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from wsrt.errors import WsrtError

# Error codes (docs/design.md, "The wire protocol").
BAD_REQUEST = "bad_request"
UNKNOWN_CHANNEL = "unknown_channel"
FORBIDDEN = "forbidden"
UNAUTHORIZED = "unauthorized"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
RATE_LIMITED = "rate_limited"

# Close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# Close reasons the server sends, which clients and metrics recognise.
REASON_SLOW_CONSUMER = "slow consumer"
REASON_TOKEN_EXPIRED = "token expired"
REASON_TOKEN_REVOKED = "token revoked"
REASON_SHUTDOWN = "server shutting down"
REASON_WRITE_FAILED = "internal error"

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
class Since:
    """``since``: per partition, the next offset the client wants.

    See docs/design.md, "Resume and replay".
    """

    offsets: dict[int, int]


@dataclass(frozen=True, slots=True)
class SinceTime:
    """``since_time``: each partition from its first record at or after ``ms`` (epoch ms)."""

    ms: int


@dataclass(frozen=True, slots=True)
class Rewind:
    """``rewind``: the last ``count`` messages of the channel in each partition."""

    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``snapshot: true``: the newest value of every key now, then live (a state topic).

    With ``since`` (``after``), the history from there instead, when all of it
    is still in Kafka and within the replay budget: state only for a client
    too far behind. See docs/design.md, "State on subscribe".
    """

    after: Since | None = None


Start = Since | SinceTime | Rewind | Snapshot

#: The start fields of a ``subscribe``, at most one per request (``snapshot`` may add ``since``).
START_FIELDS = ("since", "since_time", "rewind")


#: A field the message did not carry (``filter`` and ``keys`` may be given as anything).
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    id: RequestId = None
    #: Where the subscription starts; ``None`` for live only.
    start: Start | None = None
    #: ``filter`` and ``keys`` as sent (the session checks them against its limits).
    filter: Any = ABSENT
    keys: Any = ABSENT
    max_rate: Any = ABSENT


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
    if request_id is not None and not _echoable(request_id):
        raise ProtocolError(
            BAD_REQUEST,
            f"'id' must be a string of at most {MAX_ID_CHARS} characters or a number "
            f"from -{MAX_SAFE_INTEGER} to {MAX_SAFE_INTEGER}",
        )
    kind = obj.get("type")
    if kind == "subscribe" or kind == "unsubscribe":
        channel = obj.get("channel")
        if not isinstance(channel, str) or not channel:
            raise ProtocolError(BAD_REQUEST, f"{kind} needs a string 'channel'", request_id)
        if kind == "unsubscribe":
            return Unsubscribe(channel, request_id)
        start = _start(obj, request_id, channel)
        return Subscribe(
            channel, request_id, start, obj.get("filter", ABSENT), obj.get("keys", ABSENT),
            obj.get("max_rate", ABSENT),
        )  # fmt: skip
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


#: Largest integer every JSON parser holds exactly (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1
#: Kafka's offsets and timestamps are signed 64-bit: the bound of every start field.
MAX_INT64 = 2**63 - 1
#: Longest string ``id``: it is echoed in every answer.
MAX_ID_CHARS = 256


def _echoable(value: object) -> bool:
    """Can ``id`` be echoed as the same JSON value it was sent as?

    A number beyond 2^53 - 1 is parsed into a float that would come back as
    another number (``1.18e21``), so it is refused rather than echoed wrongly.
    """
    if isinstance(value, str):
        return len(value) <= MAX_ID_CHARS
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) <= MAX_SAFE_INTEGER


def _count(value: object) -> bool:
    """A JSON integer from 0 to 2^63 - 1 (not a boolean, not a float such as ``1.0``)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64


def _start(obj: dict[str, Any], request_id: RequestId, channel: str) -> Start | None:
    """The one start field of a ``subscribe``, checked (docs/design.md, "Resume and replay")."""
    given = [name for name in START_FIELDS if name in obj]
    snapshot = obj.get("snapshot", False)

    def bad(message: str) -> ProtocolError:
        return ProtocolError(BAD_REQUEST, message, request_id, channel)

    if not isinstance(snapshot, bool):
        raise bad("'snapshot' must be true or false")
    if snapshot:
        if set(given) - {"since"}:
            raise bad("'snapshot' combines only with 'since', not 'since_time' or 'rewind'")
        after = _start({"since": obj["since"]}, request_id, channel) if given else None
        assert after is None or isinstance(after, Since)
        return Snapshot(after)
    if not given:
        return None

    if len(given) > 1:
        raise bad(f"give at most one of {', '.join(START_FIELDS)}")
    name = given[0]
    value = obj[name]
    if name == "since":
        if not isinstance(value, dict):
            raise bad("'since' must be an object of partition → next offset")
        offsets: dict[int, int] = {}
        for partition, offset in value.items():
            canonical = partition.isascii() and partition.isdigit()
            if not canonical or str(int(partition)) != partition:
                raise bad(f"'since' partition {partition[:20]!r} is not a partition number")
            if not _count(offset):
                raise bad(
                    f"'since' offset of partition {partition} must be an integer from 0 to 2^63-1"
                )
            offsets[int(partition)] = offset
        return Since(offsets)
    if not _count(value):
        raise bad(f"'{name}' must be an integer from 0 to 2^63-1")
    return SinceTime(value) if name == "since_time" else Rewind(value)


class Channel(NamedTuple):
    """A channel as the client named it, and the hub route it stands for."""

    name: str
    topic: str
    #: The Kafka key of a ``topic:key`` channel; ``None`` for a whole topic.
    key: str | None


def overlaps(a: Channel, b: Channel) -> bool:
    """Could one message match both channels (same topic, and a whole topic or the same key)?"""
    return a.topic == b.topic and (a.key is None or b.key is None or a.key == b.key)


def split_channel(channel: str) -> tuple[str, str | None]:
    """``"order_book:BTC-USD"`` → ``("order_book", "BTC-USD")``; bare topics have no key."""
    topic, sep, key = channel.partition(":")
    return topic, (key if sep else None)


def parse_channel(name: str) -> Channel:
    return Channel(name, *split_channel(name))


def channel_list(values: Iterable[str], *, unique: bool = False) -> list[str]:
    """Names from repeatable, comma-separated values (flags, ``?channels=``), in order."""
    names = [c.strip() for value in values for c in value.split(",") if c.strip()]
    return list(dict.fromkeys(names)) if unique else names


# -- server → client replies (JSON text payloads) ------------------------------


def _reply(obj: dict[str, Any], request_id: RequestId) -> bytes:
    if request_id is not None:
        obj["id"] = request_id
    return orjson.dumps(obj)


def snapshot_end_reply(channel: str, keys: int, complete: bool) -> bytes:
    """The end of a snapshot: how many keys it had, and whether it is every key."""
    return orjson.dumps(
        {"type": "snapshot_end", "channel": channel, "keys": keys, "complete": complete}
    )


def subscribed_reply(
    channel: str,
    request_id: RequestId,
    positions: dict[int, int] | None = None,
    complete: bool = True,
) -> bytes:
    """``subscribed``; a subscription with a start field adds ``positions`` and ``complete``."""
    obj: dict[str, Any] = {"type": "subscribed", "channel": channel}
    if positions is not None:
        obj["positions"] = {str(p): o for p, o in sorted(positions.items())}
        obj["complete"] = complete
    return _reply(obj, request_id)


def unsubscribed_reply(channel: str, request_id: RequestId, reason: str | None = None) -> bytes:
    obj: dict[str, Any] = {"type": "unsubscribed", "channel": channel}
    if reason is not None:
        obj["reason"] = reason
    return _reply(obj, request_id)


def revoked_notice(channel: str, partition: int, next_offset: int) -> bytes:
    """Shared mode: ``partition`` is served by another replica now; resume it there
    from ``next`` (every earlier record was sent here)."""
    return orjson.dumps(
        {"type": "revoked", "channel": channel, "partition": partition, "next": next_offset}
    )


def assigned_notice(channel: str, partition: int, start: int) -> bytes:
    """Shared mode: ``partition`` is served here now, from offset ``from``; a client
    whose own position differs resumes it with ``since``."""
    return orjson.dumps(
        {"type": "assigned", "channel": channel, "partition": partition, "from": start}
    )


def gap_notice(channel: str, partition: int, first: int, last: int, reason: str) -> bytes:
    """Offsets ``first`` to ``last`` (inclusive) of ``partition`` will not come, and why."""
    return orjson.dumps({
        "type": "gap", "channel": channel, "partition": partition, "from": first, "to": last,
        "dropped": last - first + 1, "reason": reason,
    })  # fmt: skip


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
