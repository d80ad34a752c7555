"""The benchmark's load client: many WebSocket connections in one process.

Run as ``python -m wsrt.bench.client '<json parameters>'``; it prints
``{"event": "ready", …}`` once every connection is upgraded, then one JSON
result line.

Three kinds of connection keep the client cheap enough not to be the
bottleneck:

* **counters** speak the handshake themselves and then only count message
  frames, with ``bytes.count`` over what arrives (the envelope's
  ``"type":"message"`` marker; a marker split across two reads is counted
  once). No frame is parsed.
* **samplers** are real ``websockets`` clients that parse every frame: they
  check that offsets of each partition arrive in order with no gap, and
  measure the delay from the Kafka record timestamp to receipt. They are the
  correctness check on a sample, and the latency figures.
* one optional **stalled** client stops reading after the handshake (a
  4 KiB receive buffer), to show that the server drops it alone.
* **slow** readers (a 4 KiB receive buffer) read at ``slow_rate`` messages
  per second, and count the ``gap`` and ``conflated`` notices of the
  slow-consumer policies with what they say was ``dropped``. Once the others
  have everything they read at full speed, until every message is accounted
  for (received or dropped), the server closes them, or the time is up.

The ``replay`` mode opens **replayers**: each subscribes with ``rewind`` and
reads its history as fast as it can, taking each frame's offset with a
regular expression over the raw bytes (no JSON parsing, so the load client
is not what paces the replay), checking that offsets follow each other with
no gap, and timing how long the history took.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from wsrt.process import raise_open_files

MARK = b'"type":"message"'
#: Linux's IP_BIND_ADDRESS_NO_PORT (not named by Python's socket module before 3.12).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass
class Totals:
    frames: int = 0
    closed: int = 0
    upgraded: int = 0
    failed: list[str] = field(default_factory=list)
    #: When each connection got its first message frame (epoch s).
    first_frames: list[float] = field(default_factory=list)
    #: Set once every one of ``expected`` connections has a message.
    expected: int = 0
    everyone: asyncio.Event = field(default_factory=asyncio.Event)


def masked(text: str) -> bytes:
    """A client's text frame (clients mask what they send, RFC 6455 section 5.3)."""
    payload, mask = text.encode(), os.urandom(4)
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Counter(asyncio.Protocol):
    """Handshake by hand, then count message frames without parsing them.

    ``subscribe``: a frame to send once upgraded (a subscribe with a filter).
    ``deflate``: the server compresses, so no marker shows: text frames are
    counted by walking the frame headers instead, less the ``subscribed`` reply.
    """

    def __init__(
        self,
        request: bytes,
        totals: Totals,
        upgraded: asyncio.Event,
        stall: bool,
        subscribe: bytes | None = None,
        deflate: bool = False,
    ) -> None:
        self.request = request
        self.subscribe = subscribe
        self.deflate = deflate
        #: deflate: payload bytes of the current frame still to come, an unfinished header.
        self.skip = 0
        self.partial = b""
        self.replies = 1
        self.totals = totals
        self.upgraded = upgraded
        self.stall = stall
        self.head = b""
        self.open = False
        self.frames = 0
        self.carry = b""
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b"\r\n", 1)[0]
            data = self.head[end + 4 :]
            self.head = b""
            if b" 101 " not in status and b" 200 " not in status:  # 200: an event stream
                self.totals.failed.append(status.decode(errors="replace"))
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            self.totals.upgraded += 1
            self.upgraded.set()
            if self.subscribe is not None:
                assert self.transport is not None
                self.transport.write(self.subscribe)
            if self.stall:
                assert self.transport is not None
                self.transport.pause_reading()
                return
        if self.deflate:
            found = self._text_frames(data)
        else:
            # A marker split across two reads lies in carry + data[:15]; carry is
            # shorter than the marker, so nothing is counted twice.
            edge = (self.carry + data[: len(MARK) - 1]).count(MARK) if self.carry else 0
            found = data.count(MARK) + edge
        if found and not self.frames:
            first = self.totals.first_frames
            first.append(time.time())
            if len(first) == self.totals.expected:
                self.totals.everyone.set()
        self.frames += found
        self.totals.frames += found
        self.carry = data[-(len(MARK) - 1) :]

    def _text_frames(self, data: bytes) -> int:
        """Text frames that end in ``data`` (their payloads skipped, never read)."""
        buf, at, n = self.partial + data, 0, 0
        if self.skip:
            at = min(self.skip, len(buf))
            self.skip -= at
        while not self.skip and len(buf) - at >= 2:
            length, head = buf[at + 1] & 0x7F, 2
            if length >= 126:
                head = 4 if length == 126 else 10
                if len(buf) - at < head:
                    break
                fmt = "!H" if length == 126 else "!Q"
                (length,) = struct.unpack_from(fmt, buf, at + 2)
            n += buf[at] & 0x0F == 1
            at += head
            if len(buf) - at >= length:
                at += length
            else:
                self.skip, at = length - (len(buf) - at), len(buf)
        self.partial = buf[at:]
        if n and self.replies:  # the first is the answer to the subscription
            used = min(n, self.replies)
            self.replies -= used
            n -= used
        return n

    def connection_lost(self, exc: Exception | None) -> None:
        self.totals.closed += 1
        if not self.lost.done():
            self.lost.set_result(None)


def _request(url: str, token: str, deflate: bool = False, sse: bool = False) -> bytes:
    parts = urlsplit(url)
    if sse:  # GET /sse beside /ws, the same query: an event stream, not an upgrade
        path = parts.path.removesuffix("/ws") + "/sse"
        return (
            f"GET {path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    key = base64.b64encode(os.urandom(16)).decode()
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{offer}Authorization: Bearer {token}\r\n\r\n"
    ).encode()


async def open_counter(
    url: str,
    token: str,
    totals: Totals,
    *,
    stall: bool = False,
    make: Callable[[bytes, asyncio.Event], Counter] | None = None,
    source: str | None = None,
    small: bool | None = None,
    subscribe: bytes | None = None,
    deflate: bool = False,
    sse: bool = False,
) -> Counter:
    """A connection once upgraded (or lost); ``make(request, upgraded)`` builds another kind.
    ``sse``: a ``GET /sse`` stream of the same channels instead.

    ``stall`` (and every other kind, unless ``small`` is False) gets a 4 KiB
    receive buffer, so that the server sees it fall behind within a few messages.
    """
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if stall or (make is not None and small is not False):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if source is not None:  # beyond one address's ~28,000 ephemeral ports
        # The port is chosen at connect, per destination: TIME_WAIT sockets of
        # an earlier run to another server port do not use it up.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    upgraded = asyncio.Event()
    build = make or (lambda request, up: Counter(request, totals, up, stall, subscribe, deflate))
    _, protocol = await loop.create_connection(
        lambda: build(_request(url, token, deflate, sse), upgraded), sock=sock
    )
    waiting = asyncio.ensure_future(upgraded.wait())
    await asyncio.wait({waiting, protocol.lost}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    return protocol


OFFSET = re.compile(rb'"offset":(\d+),"timestamp"')
#: A message's timestamp, or a notice's ``dropped``. Each ends on the character
#: after its number, so that a number cut by a read never matches.
SCAN = re.compile(rb'"timestamp":(\d+),|"type":"(?:gap|conflated)"[^}]*"dropped":(\d+)\}')


class SlowReader(Counter):
    """Reads ``rate`` messages per second at most; counts the notices and what they dropped."""

    def __init__(self, request: bytes, totals: Totals, upgraded: asyncio.Event, rate: float):
        super().__init__(request, totals, upgraded, stall=False)
        self.rate = rate
        self.started = 0.0
        self.notices = 0
        self.dropped = 0
        self.buffer = b""
        #: Seconds since the record's timestamp of each message read while slow.
        self.ages: list[float] = []
        self.expected: int | None = None
        self.accounted = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        was_open = self.open
        super().data_received(data)
        if not self.open:
            return
        if not was_open:
            self.started = time.monotonic()
        self._notices(data)
        self._check()
        if self.rate:
            allowed = self.rate * (time.monotonic() - self.started)
            if self.frames > allowed and self.transport is not None:
                self.transport.pause_reading()
                delay = (self.frames - allowed) / self.rate
                asyncio.get_running_loop().call_later(delay, self._resume)

    def _notices(self, data: bytes) -> None:
        buffer = self.buffer + data
        end = 0
        now_ms = time.time() * 1000
        for match in SCAN.finditer(buffer):
            if match[1] is not None:
                if self.rate:
                    self.ages.append((now_ms - int(match[1])) / 1000)
            else:
                self.notices += 1
                self.dropped += int(match[2])
            end = match.end()
        # A notice cut by the read is matched with the next one; nothing twice.
        self.buffer = buffer[max(end, len(buffer) - 200) :]

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def read_all(self, expected: int) -> None:
        """From now on read at full speed until ``expected`` messages are accounted for."""
        self.rate = 0
        self.expected = expected
        self._resume()
        self._check()

    def _check(self) -> None:
        done = self.expected is not None and self.frames + self.dropped >= self.expected
        if done and not self.accounted.done():
            self.accounted.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.accounted.done():
            self.accounted.set_result(None)


def masked_text_frame(payload: bytes) -> bytes:
    """A client → server text frame (clients must mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    length = len(payload)
    head = (
        struct.pack("!BB", 0x81, 0x80 | length)
        if length < 126
        else struct.pack("!BBH", 0x81, 0x80 | 126, length)
    )
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class Replaying(Counter):
    """Subscribes with ``rewind`` once upgraded; follows offsets in the raw stream."""

    def __init__(
        self, request: bytes, subscribe: bytes, target: int, totals: Totals, stall: bool
    ) -> None:
        super().__init__(request, totals, asyncio.Event(), stall=False)
        self.stall_after_subscribe = stall
        self.subscribe = subscribe
        self.target = target
        self.first: int | None = None
        self.last: int | None = None
        self.received = 0
        self.gaps = 0
        self.started = 0.0
        self.finished: float | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        if not self.open:
            super().data_received(data)
            if self.open:
                assert self.transport is not None
                self.started = time.time()
                self.transport.write(self.subscribe)
                if self.stall_after_subscribe:
                    self.transport.pause_reading()  # asks for history, reads none of it
            return
        buffer = self.buffer + data
        end = 0
        for match in OFFSET.finditer(buffer):
            offset = int(match[1])
            if self.last is not None and offset != self.last + 1:
                self.gaps += 1
            if self.first is None:
                self.first = offset
            self.last = offset
            self.received += 1
            end = match.end()
        # An offset cut by the read is matched with the next one; nothing twice.
        self.buffer = buffer[max(end, len(buffer) - 64) :]
        if self.received >= self.target and self.finished is None:
            self.finished = time.time()
            if not self.done.done():
                self.done.set_result(None)


async def replay(p: dict[str, Any]) -> dict[str, Any]:
    """``clients`` connections, each replaying the last ``rewind`` messages of ``channel``."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(p["url"])
    totals = Totals()
    subscribe = json.dumps(
        {"type": "subscribe", "channel": p["channel"], "id": 1, "rewind": p["rewind"]}
    ).encode()
    replayers: list[Replaying] = []
    for _ in range(p["clients"]):
        sock = socket.socket()
        if p.get("stall"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        _, protocol = await loop.create_connection(
            lambda: Replaying(
                _request(p["url"], p["token"]), masked_text_frame(subscribe), p["rewind"],
                totals, bool(p.get("stall")),
            ),
            sock=sock,
        )  # fmt: skip
        replayers.append(protocol)
    emit({"event": "ready", "upgraded": len(replayers)})
    if p.get("stall"):  # hold the stalled connections until stdin closes
        await loop.run_in_executor(None, sys.stdin.read)
    else:
        await asyncio.wait([r.done for r in replayers], timeout=p["timeout"])
    durations = [r.finished - r.started for r in replayers if r.finished is not None]
    result = {
        "event": "result",
        "clients": len(replayers),
        "finished": len(durations),
        "gaps": sum(r.gaps for r in replayers),
        "received_min": min(r.received for r in replayers),
        "seconds_max": max(durations, default=0.0),
        "rate_median": sorted(p["rewind"] / d for d in durations)[len(durations) // 2]
        if durations else 0.0,
        "started": min(r.started for r in replayers),
        "ended": max((r.finished for r in replayers if r.finished), default=time.time()),
    }  # fmt: skip
    for r in replayers:
        if r.transport is not None:
            r.transport.abort()
    return result


@dataclass
class Sample:
    """What one parsing client saw."""

    received: int = 0
    gaps: int = 0
    out_of_order: int = 0
    delays_ms: list[float] = field(default_factory=list)
    #: Receipt time (epoch s) of each delay, for figures over part of a run.
    received_at: list[float] = field(default_factory=list)
    close: tuple[int | None, str | None] | None = None
    #: Offsets that are multiples of this are probes of the latency budget (0: none).
    probe_every: int = 0
    #: (partition, offset, record timestamp ms, received ms) of each probe.
    probes: list[tuple[int, int, int, float]] = field(default_factory=list)


async def sampler(
    url: str,
    token: str,
    sample: Sample,
    stop: asyncio.Event,
    ready: asyncio.Event,
    subscribe: str | None = None,
    deflate: bool = False,
) -> None:
    import websockets

    last: dict[int, int] = {}
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None,
        ping_interval=None, compression="deflate" if deflate else None,
    ) as ws:  # fmt: skip
        if subscribe is not None:
            await ws.send(subscribe)
        ready.set()
        reading = asyncio.ensure_future(_read(ws, sample, last))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()
        stopping.cancel()
        sample.close = (ws.close_code, ws.close_reason)


async def sse_sampler(
    url: str, token: str, channel: str, sample: Sample, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    """A sampler reading ``GET /sse`` for ``channel`` (ready once it is subscribed)."""
    from wsrt.tools.events import SseConnection

    last: dict[int, int] = {}
    async with SseConnection(url, token) as stream:
        await stream.send(json.dumps({"type": "subscribe", "channel": channel}))

        async def frames() -> AsyncIterator[str]:
            async for frame in stream:
                ready.set()
                yield frame

        reading = asyncio.ensure_future(_read(frames(), sample, last))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()
        stopping.cancel()
        sample.close = (stream.close_code, stream.close_reason)


async def _read(ws: Any, sample: Sample, last: dict[int, int]) -> None:
    async for frame in ws:
        now_ms = time.time() * 1000
        msg = json.loads(frame)
        if msg.get("type") != "message":
            continue
        sample.received += 1
        sample.delays_ms.append(now_ms - msg["timestamp"])
        sample.received_at.append(now_ms / 1000)
        partition, offset = msg["partition"], msg["offset"]
        if sample.probe_every and offset % sample.probe_every == 0:
            sample.probes.append((partition, offset, msg["timestamp"], now_ms))
        previous = last.get(partition)
        if previous is not None:
            if offset <= previous:
                sample.out_of_order += 1
            elif offset != previous + 1:
                sample.gaps += 1
        last[partition] = offset


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1], "n": len(ordered)}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def stream(p: dict[str, Any]) -> dict[str, Any]:
    """Counters and samplers on one channel until the target, the window or the timeout.

    ``subscribes``: subscribe messages (JSON) the clients send in turn instead of
    ``?channels=`` (filters); ``deflate``: every client offers permessage-deflate.
    """
    subscribes: list[str] = p.get("subscribes") or []
    url = p["url"] if subscribes else f"{p['url']}?channels={p['channel']}"
    totals = Totals()
    counters, stalled, slow = await _open_readers(p, url, totals)
    stop = asyncio.Event()
    samples = [Sample(probe_every=p.get("probe_every", 0)) for _ in range(p["samplers"])]
    readies = [asyncio.Event() for _ in samples]
    tasks = _samplers(p, url, samples, readies, stop)
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    emit({"event": "ready", "upgraded": totals.upgraded, "failed": totals.failed[:5]})

    target = p.get("messages")  # expected message frames per connection, if known
    started = time.monotonic()
    series, ended = await _progress(p, totals, counters, samples, target)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    per_client = [c.frames for c in counters] + [s.received for s in samples]
    slow_during = [r.frames for r in slow]
    slow_seconds = time.monotonic() - started
    for r in slow:
        r.read_all(target or 0)
    if slow:
        await asyncio.wait([r.accounted for r in slow], timeout=p.get("drain_timeout", 60))
    delays = [d for s in samples for d in s.delays_ms]
    result = {
        "event": "result",
        "ended": ended,
        "connections": len(per_client),
        "frames": sum(per_client),
        "per_client_min": min(per_client, default=0),
        "per_client_max": max(per_client, default=0),
        "series": series,
        "closed_early": sum(1 for c in counters if c.lost.done()),
        "sample_gaps": sum(s.gaps for s in samples),
        "sample_out_of_order": sum(s.out_of_order for s in samples),
        "sample_received": [s.received for s in samples],
        "delay_ms": percentiles(delays),
        "delays": [
            [round(t, 3), round(d, 2)]
            for s in samples
            for t, d in zip(s.received_at, s.delays_ms, strict=True)
        ]
        if p.get("raw")
        else [],
        "probes": [probe for s in samples for probe in s.probes],
        "stalled_closed": bool(stalled and stalled.lost.done()),
        "slow": _slow_summary(slow, slow_during, slow_seconds, target),
        "failed": totals.failed[:5],
    }
    for c in [*counters, *([stalled] if stalled is not None else []), *slow]:
        if c.transport is not None:
            c.transport.abort()
    return result


def _samplers(
    p: dict[str, Any],
    url: str,
    samples: list[Sample],
    readies: list[asyncio.Event],
    stop: asyncio.Event,
) -> list[asyncio.Future[None]]:
    """The sampling clients' tasks (each sends its turn of ``subscribes``, if any)."""
    subscribes: list[str] = p.get("subscribes") or []
    deflate = bool(p.get("deflate"))

    def asks(n: int) -> str | None:
        return subscribes[n % len(subscribes)] if subscribes else None

    if p.get("sse"):
        return [
            asyncio.ensure_future(sse_sampler(p["url"], p["token"], p["channel"], s, stop, r))
            for s, r in zip(samples, readies, strict=True)
        ]
    return [
        asyncio.ensure_future(sampler(url, p["token"], s, stop, r, asks(n), deflate))
        for n, (s, r) in enumerate(zip(samples, readies, strict=True))
    ]


async def _open_readers(
    p: dict[str, Any], url: str, totals: Totals
) -> tuple[list[Counter], Counter | None, list[SlowReader]]:
    """The counting clients, the stalled one (if asked) and the slow readers, connected."""
    counters = []
    subscribes: list[str] = p.get("subscribes") or []
    first = [masked(text) for text in subscribes]
    deflate, sse = bool(p.get("deflate")), bool(p.get("sse"))
    for i in range(0, p["counters"], 100):
        batch = range(i, min(i + 100, p["counters"]))
        opened = [
            open_counter(url, p["token"], totals, subscribe=asked, deflate=deflate, sse=sse)
            for asked in (first[n % len(first)] if first else None for n in batch)
        ]
        counters += await asyncio.gather(*opened)
    stalled = await open_counter(url, p["token"], totals, stall=True) if p.get("stalled") else None
    slow_totals = Totals()
    slow = [
        cast(
            SlowReader,
            await open_counter(
                url,
                p["token"],
                slow_totals,
                make=lambda request, up: SlowReader(request, slow_totals, up, p["slow_rate"]),
            ),
        )
        for _ in range(p.get("slow", 0))
    ]
    return counters, stalled, slow


async def _progress(
    p: dict[str, Any],
    totals: Totals,
    counters: list[Counter],
    samples: list[Sample],
    target: int | None,
) -> tuple[list[tuple[float, int]], str]:
    """The frames received over time, until the target, the window or the timeout (which)."""
    deadline = time.monotonic() + p["timeout"]
    series: list[tuple[float, int]] = []
    first: float | None = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # sampling the counters' progress for the time series
        now, frames = time.time(), totals.frames + sum(s.received for s in samples)
        series.append((now, frames))
        if first is None and frames:
            first = now
        if first is not None and now - first >= p["window"]:
            return series, "window"
        if (
            target
            and all(c.frames >= target for c in counters)
            and all(s.received >= target for s in samples)
        ):
            return series, "target"
    return series, "timeout"


def _slow_summary(
    slow: list[SlowReader], during: list[int], seconds: float, target: int | None
) -> dict[str, Any]:
    return {
        "clients": len(slow),
        "read_per_s": sorted(n / seconds for n in during)[len(slow) // 2] if slow else 0.0,
        "messages": sorted(r.frames for r in slow),
        "dropped": sorted(r.dropped for r in slow),
        "notices": sorted(r.notices for r in slow),
        "closed": sum(1 for r in slow if r.lost.done()),
        "age_s": percentiles([a for r in slow for a in r.ages]),
        "accounted": sum(1 for r in slow if r.frames + r.dropped == target),
    }


class Snapshotter(Counter):
    """Once told (:meth:`go`), subscribes with ``snapshot: true``; counts the snapshot's
    message frames and notes when its ``snapshot_end`` arrived."""

    END = b'"type":"snapshot_end"'

    def __init__(
        self, request: bytes, frame: bytes, totals: Totals, upgraded: asyncio.Event
    ) -> None:
        super().__init__(request, totals, upgraded, stall=False)
        self.frame = frame
        self.sent = 0.0
        self.ended = asyncio.get_running_loop().create_future()
        self.tail = b""

    def go(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        edge = self.tail + data[: len(self.END) - 1]  # a marker split by the read
        if not self.ended.done() and (self.END in data or self.END in edge):
            self.ended.set_result(time.perf_counter() - self.sent)
        self.tail = data[-(len(self.END) - 1) :]


async def snapshots(p: dict[str, Any]) -> dict[str, Any]:
    """``clients`` connections subscribe with ``snapshot: true`` at once; how long each took."""
    totals = Totals()
    frame = masked_text_frame(
        json.dumps({"type": "subscribe", "channel": p["channel"], "snapshot": True}).encode()
    )
    takers = [
        cast(
            Snapshotter,
            await open_counter(
                p["url"], p["token"], totals,
                make=lambda request, up: Snapshotter(request, frame, totals, up),
                small=False,  # a browser's buffers: the kernel's defaults
            ),
        )
        for _ in range(p["clients"])
    ]  # fmt: skip
    emit({"event": "ready", "upgraded": totals.upgraded, "failed": len(totals.failed)})
    wall, started = time.time(), time.perf_counter()
    for taker in takers:
        taker.go()
    done, _ = await asyncio.wait([t.ended for t in takers], timeout=p["timeout"])
    everyone = time.perf_counter() - started
    seconds = sorted(t.ended.result() for t in takers if t.ended.done())
    keys = [t.frames for t in takers]
    for t in takers:
        if t.transport is not None:
            t.transport.abort()
    return {
        "event": "result", "finished": len(done), "all_s": everyone,
        "started": wall, "ended": wall + everyone,
        "ms": percentiles([s * 1000 for s in seconds]), "keys_min": min(keys, default=0),
        "keys_max": max(keys, default=0),
    }  # fmt: skip


class Hoarder(Counter):
    """Once upgraded, sends its control frames (subscribes) and stops reading for good."""

    def __init__(
        self, request: bytes, frames: bytes, totals: Totals, upgraded: asyncio.Event
    ) -> None:
        super().__init__(request, totals, upgraded, stall=True)
        self.frames_to_send = frames

    def data_received(self, data: bytes) -> None:
        was_open = self.open
        super().data_received(data)  # upgrades, then pauses reading
        if self.open and not was_open and self.transport is not None:
            self.transport.write(self.frames_to_send)


async def hoard(p: dict[str, Any]) -> dict[str, Any]:
    """``connections`` stalled clients, each sending ``subscribes`` (channel names) once open."""
    totals = Totals()
    frames = b"".join(
        masked_text_frame(json.dumps({"type": "subscribe", "channel": c}).encode())
        for c in p["subscribes"]
    )
    hoarders = [
        await open_counter(
            p["url"], p["token"], totals,
            make=lambda request, up: Hoarder(request, frames, totals, up),
        )
        for _ in range(p["connections"])
    ]  # fmt: skip
    emit({"event": "ready", "upgraded": totals.upgraded, "failed": len(totals.failed)})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    still_open = sum(1 for h in hoarders if not h.lost.done())
    for h in hoarders:
        if h.transport is not None:
            h.transport.abort()
    return {"event": "result", "still_open": still_open}


#: Connections per loopback source address (127.0.0.2, .3, …): ephemeral ports
#: run out at about 28,000 per source address and destination.
PER_SOURCE = 20_000


async def idle(p: dict[str, Any]) -> dict[str, Any]:
    """Open ``connections`` idle connections, ``concurrency`` at a time, from as many
    loopback source addresses as they need; hold them. A line ``live`` on stdin:
    report when every connection has had a message; stdin closed: end."""
    raise_open_files()
    url = f"{p['url']}?channels={p['channel']}"
    totals = Totals(expected=p["connections"])
    counters: list[Counter] = []
    semaphore = asyncio.Semaphore(p["concurrency"])

    async def one(n: int) -> None:
        source = f"127.0.0.{2 + n // PER_SOURCE}"
        async with semaphore:
            counters.append(await open_counter(url, p["token"], totals, source=source))

    started = time.perf_counter()
    opened = await asyncio.gather(
        *(one(n) for n in range(p["connections"])), return_exceptions=True
    )
    elapsed = time.perf_counter() - started
    errors = sorted({repr(e)[:120] for e in opened if isinstance(e, BaseException)})
    emit({
        "event": "ready", "upgraded": totals.upgraded, "seconds": elapsed,
        "handshakes_per_s": totals.upgraded / elapsed if elapsed else 0.0,
        "failed": p["connections"] - totals.upgraded, "errors": errors[:5] + totals.failed[:5],
    })  # fmt: skip
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "live":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(totals.everyone.wait(), 120)
        emit({
            "event": "live", "received": len(totals.first_frames),
            "first": min(totals.first_frames, default=0.0),
            "last": max(totals.first_frames, default=0.0),
        })  # fmt: skip
    still_open = sum(1 for c in counters if not c.lost.done())
    for c in counters:
        if c.transport is not None:
            c.transport.abort()
    return {"event": "result", "still_open": still_open}


async def handshakes(p: dict[str, Any]) -> dict[str, Any]:
    """Open one connection per token of the file ``tokens``, ``concurrency`` at a time,
    from the loopback address ``source``; then close them all."""
    raise_open_files()
    url = f"{p['url']}?channels={p['channel']}"
    tokens = Path(p["tokens"]).read_text().split()  # noqa: ASYNC240 (before any socket)
    totals = Totals(expected=len(tokens))
    counters: list[Counter] = []
    semaphore = asyncio.Semaphore(p["concurrency"])

    async def one(token: str) -> None:
        async with semaphore:
            counters.append(await open_counter(url, token, totals, source=p["source"]))

    started = time.perf_counter()
    opened = await asyncio.gather(*(one(t) for t in tokens), return_exceptions=True)
    elapsed = time.perf_counter() - started
    for c in counters:
        if c.transport is not None:
            c.transport.abort()
    errors = sorted({repr(e)[:120] for e in opened if isinstance(e, BaseException)})
    return {
        "event": "result", "upgraded": totals.upgraded, "seconds": elapsed,
        "failed": len(tokens) - totals.upgraded, "errors": errors[:5] + totals.failed[:5],
    }  # fmt: skip


def main() -> None:
    params = json.loads(sys.argv[1])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        scenarios = {
            "stream": stream, "idle": idle, "replay": replay, "hoard": hoard,
            "snapshot": snapshots, "handshakes": handshakes,
        }  # fmt: skip
        scenario = scenarios[params["mode"]]
        emit(runner.run(scenario(params)))


if __name__ == "__main__":
    main()
