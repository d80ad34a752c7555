"""A hostile but authenticated client: what it can make the server hold and log."""

from __future__ import annotations

import json
import re

import websockets

from tests.integration.harness import SECRET, ServerProcess, auth, next_json

#: A terminal acts on these (C0, DEL, C1, bidi and line controls).
TERMINAL_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


async def test_channel_names_are_bounded(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic])  # the default WS_MAX_CHANNEL_BYTES: 256
    longest = f"{topic}:" + "k" * (256 - len(topic) - 1)
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": longest, "id": 1}))
        assert await next_json(ws) == {"type": "subscribed", "channel": longest, "id": 1}
        for kind in ("subscribe", "unsubscribe"):
            await ws.send(json.dumps({"type": kind, "channel": longest + "k", "id": 2}))
            assert await next_json(ws) == {
                "type": "error", "code": "bad_request", "id": 2,
                "message": "channel names are at most 256 bytes",
            }  # fmt: skip
        multibyte = f"{topic}:" + "é" * 128  # 256 characters, over 256 bytes
        await ws.send(json.dumps({"type": "subscribe", "channel": multibyte, "id": 3}))
        assert (await next_json(ws))["code"] == "bad_request"


async def test_a_control_flood_cannot_flood_the_log(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    quiet = servers([topic], {"WS_LOG_LEVEL": "INFO", "WS_CONTROL_RATE": "1000"})
    chatty = servers([topic], {"WS_LOG_LEVEL": "DEBUG", "WS_CONTROL_RATE": "1000"})
    for server in (quiet, chatty):
        async with websockets.connect(server.url, additional_headers=auth("flooder")) as ws:
            for n in range(300):  # never subscribed: each is acknowledged
                await ws.send(json.dumps({"type": "unsubscribe", "channel": f"{topic}:{n}"}))
            for _ in range(300):
                assert (await next_json(ws))["type"] == "unsubscribed"
        server.wait_for("connection_closed", lambda e: e.get("subject") == "flooder")
    # At INFO (the default) a client's own requests are not logged at all.
    assert not [e for e in quiet.events if e.get("event") == "unsubscribed"]
    # At DEBUG a burst of 20, then at most 5 lines a second per connection, the rest counted.
    lines = [e for e in chatty.events if e.get("event") == "unsubscribed"]
    assert 1 <= len(lines) < 60, len(lines)


async def test_suppressed_control_lines_are_counted(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic], {"WS_CONTROL_RATE": "100000"})
    mark = server.mark()
    async with websockets.connect(server.url, additional_headers=auth("flooder")) as ws:
        # Until the server reports what it left out: waiting on the log, not a clock.
        while not [
            e for e in server.events[mark:]
            if e.get("event") == "unsubscribed" and e.get("suppressed")
        ]:  # fmt: skip
            for _ in range(20):
                await ws.send(json.dumps({"type": "unsubscribe", "channel": topic}))
            for _ in range(20):
                assert (await next_json(ws))["type"] == "unsubscribed"


class TextLogServer(ServerProcess):
    """A server logging in the text format; only the lines the test waits for are parsed."""

    def _parse(self, line: str) -> dict[str, object]:
        self.raw.append(line)
        listening = re.search(r" listening .*\bport=(\d+)", line)
        if listening:
            return {"event": "listening", "port": int(listening[1])}
        return {"event": "connection_closed" if " connection closed " in line else "raw"}


async def test_escapes_never_reach_the_text_log_raw(make_topics, bootstrap, tmp_path) -> None:
    (topic,) = await make_topics("lines")
    server = TextLogServer(
        bootstrap, [topic], tmp_path, {"WS_LOG_FORMAT": "text", "WS_LOG_LEVEL": "DEBUG"},
        secret=SECRET,
    )  # fmt: skip
    hostile = f"{topic}:\x1b]0;pwned\x07\x1b[2J\u202eEVIL\u2066\x9b31m\nforged"
    subject = "mal\x1b[31mlory\u202e"
    try:
        server.start()
        async with websockets.connect(server.url, additional_headers=auth(subject)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "channel": hostile, "id": 1}))
            assert (await next_json(ws))["type"] == "subscribed"
        server.wait_for("connection_closed")
    finally:
        server.stop()
    log = "".join(line.rstrip("\n") for line in server.raw)
    assert not TERMINAL_CONTROLS.search(log), "a raw control character reached the log"
    assert f'channel="{topic}:\\u001b]0;pwned\\u0007\\u001b[2J\\u202eEVIL' in log
    assert 'subject="mal\\u001b[31mlory\\u202e"' in log
    assert not [line for line in server.raw if line.startswith("forged")]
