"""Server-Sent Events in a real Chromium (docs/protocol.md, "Server-Sent Events").

``client.js`` behind a proxy that breaks WebSocket upgrades falls back to SSE by itself
and resumes after a server restart with every offset once; a page's own
``EventSource`` resumes with ``Last-Event-ID`` across a restart.
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import Watched
from tests.browser.test_client import harness, produce, received, total, until
from tests.integration.harness import token
from tests.support.proxy import UpgradeBreakingProxy
from wsrt.brokers import free_port

pytestmark = pytest.mark.integration

FALLBACK = "a WebSocket cannot reach the server here; using Server-Sent Events"


async def test_client_js_falls_back_to_sse_when_a_proxy_breaks_websocket(
    make_topics, servers, producer, watched: Watched
) -> None:
    topic, other = await make_topics("lines", "book", partitions=2)
    port = free_port()
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{port}"}
    first = servers([topic, other], env)
    book: dict[int, list[int]] = {}
    await produce(producer, other, 10, 2, book)
    async with UpgradeBreakingProxy(port) as proxy:
        page = watched.page
        await harness(page, proxy.http)
        await page.evaluate(
            """([url, token]) => {
              t.transports = [];
              t.open('a', url, token);
              const client = t.clients.a, report = client.options.onState;
              client.options.onState = (s, d) => { t.transports.push([s, d.transport, d.text]); report(s, d); };
            }""",
            [proxy.url, token()],
        )
        await until(page, "() => t.last('a').state === 'open'")  # bounded: never hangs
        assert await page.evaluate("(c) => t.subscribe('a', c)", topic) == {"ok": True}
        transports = await page.evaluate("t.transports")
        # Twice refused in a row (once could be a restart's race): then SSE.
        assert proxy.upgrades_refused == 2 and ["connecting", "sse", FALLBACK] in transports
        assert transports[-1][:2] == ["open", "sse"]

        produced: dict[int, list[int]] = {}
        await produce(producer, topic, 60, 2, produced)
        await until(page, "(k) => t.got[k].length >= 60", f"a {topic}")
        # Another subscription while streaming: the stream opens again with both, each
        # from where it stood (the first from its next offsets, the new one rewound).
        assert await page.evaluate("(c) => t.subscribe('a', c, { rewind: 2 })", other) == {
            "ok": True
        }
        await produce(producer, topic, 40, 2, produced)
        await until(page, "(n) => t.got[n[0]].length >= n[1]", [f"a {topic}", total(produced)])

        first.stop()  # the stream ends with a close event: 1001
        await produce(producer, topic, 50, 2, produced)  # while no server runs
        servers([topic, other], env)
        await produce(producer, topic, 50, 2, produced)
        await until(page, "(n) => t.got[n[0]].length >= n[1]", [f"a {topic}", total(produced)])

        assert await received(page, "a", topic) == produced  # every offset, once, in order
        assert await received(page, "a", other) == {p: o[-2:] for p, o in book.items()}
        states = await page.evaluate("t.states.a")
        reconnecting = [s for s in states if s["state"] == "reconnecting"]
        assert reconnecting and reconnecting[0]["code"] == 1001
        assert states[-1]["state"] == "open" and states[-1]["reconnects"] == 1
        assert (await page.evaluate("t.clients.a.transport")) == "sse"
    assert watched.problems(network_ok=True) == []


EVENT_SOURCE = """([url]) => {
  window.got = []; window.ids = []; window.opens = 0;
  const es = new EventSource(url);
  window.es = es;
  es.onopen = () => { window.opens += 1; };
  es.addEventListener('message', (e) => {
    const m = JSON.parse(e.data);
    window.got.push([m.partition, m.offset]);
    window.ids.push(e.lastEventId);
  });
}"""


async def test_a_browsers_event_source_resumes_with_last_event_id(
    make_topics, servers, producer, watched: Watched
) -> None:
    """No client.js: the browser's own reconnect sends Last-Event-ID, and the stream
    resumes there across a server restart with no gap and no duplicate."""
    (topic,) = await make_topics("lines", partitions=3)
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}"}
    first = servers([topic], env)
    page = watched.page
    await harness(page, first.http)
    await page.evaluate(EVENT_SOURCE, [f"/sse?channels={topic}&token={token()}"])
    await until(page, "() => window.opens === 1")
    produced: dict[int, list[int]] = {}
    await produce(producer, topic, 60, 3, produced)
    await until(page, "() => window.got.length >= 60")
    first.stop()
    await produce(producer, topic, 30, 3, produced)
    servers([topic], env)
    await produce(producer, topic, 30, 3, produced)
    await until(page, "(n) => window.got.length >= n", total(produced))
    got: dict[int, list[int]] = {}
    for partition, offset in await page.evaluate("window.got"):
        got.setdefault(partition, []).append(offset)
    assert got == produced  # every offset, once, in order
    assert await page.evaluate("window.opens") == 2  # it reconnected by itself, once
    ids = await page.evaluate("window.ids")
    assert all(ids) and ids[-1].startswith("1;")
    assert watched.problems(network_ok=True) == []
