"""Server-Sent Events: the ``/ws`` streams as ``text/event-stream``, Sans-I/O.

An SSE stream is a WebSocket connection in all but its bytes: the same
session, outlet, replays and policies
(docs/design.md, "Server-Sent Events"). What the hub hands an outlet is a run of
pre-built text frames;
:class:`Events` turns a run into its events once, kept by the identity of the
run (the hub hands every subscriber of a batch the same ``bytes``), and each
stream's :class:`Stream` adds what is its own: the ``id:`` of each event that
moves its position, and HTTP/1.1 chunked framing.

The ``id:`` is a position token (:func:`encode_positions`): per channel and
partition, the next offset the stream has not delivered. ``Last-Event-ID``
(or ``?last_event_id=``) resumes every channel it names with ``since`` from
there: no gap, no duplicate. A channel whose snapshot has not ended is left
out of the token, so a stream cut during a snapshot starts it again.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson

from wsrt.deflate import frames
from wsrt.protocol import ProtocolError, Subscribe, parse_control

#: The close reason of a stream whose socket took nothing for a whole heartbeat.
STALLED = "stream stalled"
#: Runs of frames kept turned into events for the next stream handed the same run.
KEEP = 64
#: The reconnection delay advised to each stream, in ms, drawn once per stream: clients
#: of a replica that restarts come back spread over this range, not all at once.
RETRY_MS = (1000, 5000)
#: A position token longer than this is not one of ours (and would not fit a header).
MAX_TOKEN_CHARS = 8192

_VERSION = "1"
_POSITION = re.compile(rb'"partition":(\d+),"offset":(\d+)')
_KEY = re.compile(rb',"key":("(?:[^"\\]|\\.)*"|null)')
_TYPE = re.compile(rb'^\{"type":"([a-z_]+)"(?:,"channel":("(?:[^"\\]|\\.)*"))?')
_TEXT = 0x81


class TokenError(ValueError):
    """A ``Last-Event-ID`` that is not a position token of this server."""


def encode_positions(positions: Mapping[str, Mapping[int, int]]) -> str:
    """``1;lines=0:15,1:40;order_book%3ABTC=0:7``: per channel, partition:next offset."""
    return ";".join([_VERSION, *(_segment(c, p) for c, p in positions.items())])


def _segment(channel: str, offsets: Mapping[int, int]) -> str:
    return quote(channel, safe="") + "=" + ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))


def decode_positions(token: str) -> dict[str, dict[int, int]]:
    """Channel → partition → next offset, or :class:`TokenError` saying what is wrong."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"is longer than {MAX_TOKEN_CHARS} characters")
    version, _, rest = token.partition(";")
    if version != _VERSION:
        raise TokenError("is not a position token of this server (an event id it sent)")
    positions: dict[str, dict[int, int]] = {}
    for segment in rest.split(";") if rest else ():
        name, equals, pairs = segment.partition("=")
        channel = unquote(name)
        if not equals or not channel or channel in positions:
            raise TokenError(f"has a bad channel part {segment[:60]!r}")
        offsets: dict[int, int] = {}
        for pair in pairs.split(",") if pairs else ():
            partition, colon, offset = pair.partition(":")
            if not (colon and _count(partition) and _count(offset)) or int(partition) in offsets:
                raise TokenError(f"has a bad position {pair[:40]!r} for {channel[:60]!r}")
            offsets[int(partition)] = int(offset)
        positions[channel] = offsets
    return positions


def _count(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 19 and str(int(text)) == text


@dataclass(frozen=True, slots=True)
class Event:
    """One envelope as an event: ``head`` (``event:`` line) and ``body`` (``data:`` lines and
    the blank line); the id goes between them. ``channel``, ``partition`` and ``offset``
    for a record's event (``message``, ``delete``), ``info`` for a reply that sets or ends
    a position (``subscribed``, ``unsubscribed``, ``snapshot_end``)."""

    kind: str
    head: bytes
    body: bytes
    channel: str | None = None
    partition: int = -1
    offset: int = -1
    info: dict[str, Any] | None = None
    #: A record's key as text (a ``topic:key`` channel names it), else ``None``.
    key: str | None = None


def event_of(payload: bytes) -> Event:
    """The event of one envelope (the JSON of a text frame)."""
    found = _TYPE.match(payload)
    kind = found.group(1).decode() if found else "message"
    # A JSON value may hold line breaks: each line is a data: line, joined by the client.
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    head, body = b"event: %b\n" % kind.encode(), b"data: %b\n\n" % lines
    if kind in ("message", "delete") and found is not None and found.group(2):
        at = _POSITION.search(payload)
        if at is not None:
            channel = orjson.loads(found.group(2))
            keyed = _KEY.match(payload, found.end())
            key = orjson.loads(keyed.group(1)) if keyed else None
            return Event(
                kind, head, body, channel, int(at.group(1)), int(at.group(2)),
                key=key if isinstance(key, str) else None,
            )  # fmt: skip
    if kind in ("subscribed", "unsubscribed", "snapshot_end"):
        return Event(kind, head, body, info=orjson.loads(payload))
    return Event(kind, head, body)


class Events:
    """Runs of text frames as events, each run made once (``made`` counts the runs)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._made: OrderedDict[int, tuple[bytes, list[Event]]] = OrderedDict()
        self.made = 0

    def of(self, data: bytes) -> list[Event]:
        made = self._made.get(id(data))
        if made is not None and made[0] is data:
            return made[1]
        events = [event_of(payload) for first, payload in frames(data) if first == _TEXT]
        self.made += 1
        # The run itself is kept beside its events: its id cannot be reused meanwhile.
        self._made[id(data)] = (data, events)
        if len(self._made) > self.keep:
            self._made.popitem(last=False)
        return events


def chunk(body: bytes) -> bytes:
    """``body`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(body), body)


#: The chunk that ends a chunked body.
LAST_CHUNK = b"0\r\n\r\n"
HEARTBEAT = chunk(b": heartbeat\n\n")


def head(origin: str | None) -> bytes:
    """The response head of a stream (``origin``: a page of another origin may read it)."""
    lines = [
        b"HTTP/1.1 200 OK", b"Content-Type: text/event-stream; charset=utf-8",
        b"Cache-Control: no-store", b"Connection: keep-alive", b"Transfer-Encoding: chunked",
        b"X-Accel-Buffering: no",  # nginx: pass each event on, do not buffer the stream
    ]  # fmt: skip
    if origin is not None:
        lines += [b"Access-Control-Allow-Origin: " + origin.encode(), b"Vary: Origin"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Stream:
    """One SSE client's side of the events: its positions, and the bytes it is sent."""

    def __init__(self, events: Events, plan: Plan | None = None, origin: str | None = None) -> None:
        self.events = events
        #: What the stream subscribes once it is open.
        self.plan = plan
        #: The response head, then the reconnection delay it advises (jittered per stream).
        self.opening = head(origin) + chunk(b"retry: %d\n\n" % random.randint(*RETRY_MS))
        #: Channel → partition → next offset, for the channels whose token is settled.
        self.positions: dict[str, dict[int, int]] = {}
        #: Channels asked with a snapshot that has not ended: out of the token till then.
        self.unsettled = set(plan.snapshots) if plan is not None else set()
        self._segments: dict[str, str] = {}
        self.token = encode_positions({})

    def encode(self, data: bytes) -> bytes:
        """A run of text frames as this stream's events, chunked."""
        parts: list[bytes] = []
        for event in self.events.of(data):
            parts.append(event.head)
            if self._moved(event):
                parts.append(b"id: %b\n" % self.token.encode())
            parts.append(event.body)
        return chunk(b"".join(parts)) if parts else b""

    def close_event(self, code: int, reason: str) -> bytes:
        """The last event of a stream the server ends, then the end of the body."""
        data = orjson.dumps({"type": "close", "code": code, "reason": reason})
        return chunk(b"event: close\ndata: %b\n\n" % data) + LAST_CHUNK

    def _moved(self, event: Event) -> bool:
        """Take in what ``event`` says of the positions; did the token change?"""
        if event.channel is not None:
            channel = event.channel
            if event.key is not None and f"{channel}:{event.key}" in self.positions:
                channel = f"{channel}:{event.key}"
            offsets = self.positions.get(channel)
            if offsets is None or channel in self.unsettled:
                return False  # a channel not (yet) subscribed, or its snapshot under way
            after = event.offset + 1
            if offsets.get(event.partition, -1) >= after:
                return False
            offsets[event.partition] = after
            self._settle(channel)
            return True
        info = event.info
        if info is None:
            return False
        named = info.get("channel")
        if not isinstance(named, str):
            return False
        if event.kind == "unsubscribed":
            self.positions.pop(named, None)
            self._segments.pop(named, None)
            self._retoken()
            return True
        if event.kind == "subscribed":
            given = info.get("positions")
            if not isinstance(given, dict):
                return False  # a live subscription that says nothing of where it starts
            self._start(named, {int(p): o for p, o in given.items()})
            return named not in self.unsettled
        if event.kind == "snapshot_end" and named in self.unsettled:
            self.unsettled.discard(named)
            if named in self.positions:
                self._settle(named)
                return True
        return False

    def _start(self, channel: str, offsets: dict[int, int]) -> None:
        self.positions[channel] = offsets
        if channel not in self.unsettled:
            self._settle(channel)

    def _settle(self, channel: str) -> None:
        if channel in self.unsettled:
            return
        self._segments[channel] = _segment(channel, self.positions[channel])
        self._retoken()

    def _retoken(self) -> None:
        self.token = ";".join([_VERSION, *self._segments.values()])


class PlanError(ValueError):
    """A ``/sse`` request that cannot become a stream (answered ``400`` with this text)."""


@dataclass(frozen=True)
class Plan:
    """What a ``/sse`` request subscribes: a ``subscribe`` per channel, as ``/ws`` takes it."""

    subscribes: list[Subscribe]
    #: Channels asked with a snapshot that was not resumed past it.
    snapshots: frozenset[str]
    #: The positions ``Last-Event-ID`` resumed, by channel (checked against the topics).
    resumed: dict[str, dict[int, int]]


#: Query parameters of ``/sse`` beside ``channels`` and ``token``.
OPTIONS = ("snapshot", "rewind", "since_time", "filter", "keys", "max_rate", "last_event_id")


def plan(channels: list[str], query: Mapping[str, list[str]], last_event_id: str | None) -> Plan:
    """The subscriptions of ``/sse?channels=…&…`` (the query's options for every channel) or
    of ``/sse?subscriptions=[…]`` (a subscribe object per channel, as ``/ws`` takes them);
    ``last_event_id``: the header's, which wins over ``?last_event_id=`` (a browser's
    ``EventSource`` sends the newest one)."""
    objects = _objects(channels, query)
    named = [o["channel"] for o in objects]
    token = last_event_id or _one(query, "last_event_id")
    try:
        resumed = decode_positions(token) if token else {}
    except TokenError as exc:
        raise PlanError(f"Last-Event-ID {exc}") from None
    subscribes: list[Subscribe] = []
    snapshots: set[str] = set()
    for obj in objects:
        channel = obj["channel"]
        since = resumed.get(channel)
        if since is not None:
            # Resumed where the stream stood; a snapshot only when that is gone from Kafka.
            obj = {k: v for k, v in obj.items() if k not in ("rewind", "since_time")}
            obj["since"] = {str(p): o for p, o in since.items()}
        elif not any(k in obj for k in ("snapshot", "since", "rewind", "since_time")):
            obj["since"] = {}  # live, with the positions it starts at in the answer
        if obj.get("snapshot") and "since" not in obj:
            snapshots.add(channel)
        try:
            control = parse_control(orjson.dumps({**obj, "type": "subscribe"}))
        except ProtocolError as exc:
            raise PlanError(f"{channel}: {exc.message}") from None
        assert isinstance(control, Subscribe)
        subscribes.append(control)
    return Plan(subscribes, frozenset(snapshots), {c: resumed[c] for c in named if c in resumed})


#: The most subscribe objects one ``?subscriptions=`` may hold (the session's own limit,
#: ``WS_MAX_SUBSCRIPTIONS``, applies after it).
MAX_SUBSCRIPTIONS = 1000


def _objects(channels: list[str], query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """One subscribe object per channel, from ``subscriptions`` or ``channels`` and options."""
    text = _one(query, "subscriptions")
    if text is None:
        if not channels:
            raise PlanError("name the channels: /sse?channels=lines,order_book")
        fields = _fields(query)
        return [{"channel": c, **fields} for c in channels]
    if channels or any(name in query for name in OPTIONS[:-1]):
        raise PlanError("give subscriptions alone, or channels with options, not both")
    try:
        objects = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise PlanError("subscriptions must be a JSON list of subscribe objects") from None
    # Empty is a stream with nothing yet (heartbeats): client.js opens one before the
    # first subscribe, and opens it again with each change.
    if not isinstance(objects, list) or len(objects) > MAX_SUBSCRIPTIONS:
        raise PlanError(
            f"subscriptions must be a JSON list of at most {MAX_SUBSCRIPTIONS} subscribe objects"
        )
    for n, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("channel"), str):
            raise PlanError(f"subscriptions[{n}] is not an object with a string channel")
    return objects


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _fields(query: Mapping[str, list[str]]) -> dict[str, Any]:
    """The ``subscribe`` fields the query gives every channel."""
    fields: dict[str, Any] = {}
    snapshot = _one(query, "snapshot")
    if snapshot is not None:
        if snapshot not in ("true", "false", "1", "0"):
            raise PlanError("snapshot must be true or false")
        if snapshot in ("true", "1"):
            fields["snapshot"] = True
    for name in ("rewind", "since_time"):
        value = _one(query, name)
        if value is not None:
            if not _count(value):
                raise PlanError(f"{name} must be an integer from 0 to 2^63-1")
            fields[name] = int(value)
    text = _one(query, "filter")
    if text is not None:
        try:
            fields["filter"] = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise PlanError("filter must be JSON (URL-encoded)") from None
    keys = _one(query, "keys")
    if keys is not None:
        fields["keys"] = keys.split(",")
    rate = _one(query, "max_rate")
    if rate is not None:
        try:
            fields["max_rate"] = float(rate)
        except ValueError:
            raise PlanError("max_rate must be a number") from None
    return fields
