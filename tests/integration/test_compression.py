"""WS_COMPRESSION=deflate: permessage-deflate on real sockets, read by independent inflaters.

A raw client reads the frames off the socket itself and inflates each with
zlib as RFC 7692 says a receiver does; a websockets client that negotiated
the extension and one that did not must receive the same messages; and the
server's delivered bytes show the compression.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import zlib
from typing import Any

import pytest
import websockets

from tests.integration.harness import messages, next_json, token
from wsrt.tools.client import scrape

pytestmark = pytest.mark.integration


class RawClient:
    """A WebSocket client written out by hand: what bytes does the server really send?"""

    def __init__(self, url: str, offer: str | None) -> None:
        self.url, self.offer = url, offer
        self.response = b""
        #: Bytes of the frames read so far (headers and payloads).
        self.read = 0

    async def __aenter__(self) -> RawClient:
        hostport, _, path = self.url.removeprefix("ws://").partition("/")
        host, _, port = hostport.partition(":")
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET /{path} HTTP/1.1", f"Host: {hostport}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]  # fmt: skip
        if self.offer:
            lines.append(f"Sec-WebSocket-Extensions: {self.offer}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.response = await self.reader.readuntil(b"\r\n\r\n")
        assert self.response.startswith(b"HTTP/1.1 101"), self.response
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def frame(self) -> tuple[int, bytes]:
        """(first byte, payload) of the next frame."""
        first, second = await self.reader.readexactly(2)
        length, self.read = second & 0x7F, self.read + 2
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            self.read += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            self.read += 8
        self.read += length
        return first, await self.reader.readexactly(length)

    async def message(self) -> tuple[bool, dict[str, Any]]:
        """(compressed?, the JSON) of the next text message, inflated as RFC 7692 says."""
        first, payload = await self.frame()
        assert first & 0x0F == 1 and first & 0x80, hex(first)  # text, final
        compressed = bool(first & 0x40)
        if compressed:
            payload = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + b"\x00\x00\xff\xff")
        return compressed, json.loads(payload)


async def test_deflate_clients_get_each_frame_compressed_others_plain(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("compressed")
    server = servers([topic], {"WS_COMPRESSION": "deflate"})
    url = f"{server.url}?channels={topic}&token={token()}"
    offer = "permessage-deflate; client_max_window_bits"
    async with (
        RawClient(url, offer) as raw_deflate, RawClient(url, None) as raw_plain,
        websockets.connect(url, compression="deflate") as ws_deflate,
        websockets.connect(url, compression=None) as ws_plain,
    ):  # fmt: skip
        accepted = raw_deflate.response.decode().lower()
        assert "sec-websocket-extensions: permessage-deflate; server_no_context_takeover" in (
            accepted
        ), accepted
        assert b"sec-websocket-extensions" not in raw_plain.response.lower()
        for raw in (raw_deflate, raw_plain):
            assert (await raw.message())[1]["type"] == "subscribed"
        for ws in (ws_deflate, ws_plain):
            assert (await next_json(ws))["type"] == "subscribed"
        sent = []
        for n in range(20):
            value = json.dumps({"n": n, "text": "the same words again and again " * 8})
            sent.append((await producer.send_and_wait(topic, value.encode())).offset)
        by_deflate = [await raw_deflate.message() for _ in sent]
        by_plain = [await raw_plain.message() for _ in sent]
        by_ws = [await messages(ws, len(sent)) for ws in (ws_deflate, ws_plain)]
    assert all(compressed for compressed, _ in by_deflate)
    assert not any(compressed for compressed, _ in by_plain)
    assert [m for _, m in by_deflate] == [m for _, m in by_plain] == by_ws[0] == by_ws[1]
    assert [m["offset"] for _, m in by_plain] == sent
    # The websockets clients were written the very bytes the raw ones read: shared frames.
    written = scrape(server.http)[("wsrt_bytes_sent_total", ())]
    assert written == 2 * raw_deflate.read + 2 * raw_plain.read
    assert raw_deflate.read < raw_plain.read / 2, (raw_deflate.read, raw_plain.read)
