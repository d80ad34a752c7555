"""``/client.js`` in a real Chromium against a real server on a real broker (design section 12).

A page of the server's origin imports the module and drives it through a
small harness (``window.t``) that records states, notices and the
(partition, offset) of every message each subscription delivers; the tests
compare those with the offsets the broker gave the producer.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Page

from tests.browser.conftest import Watched
from tests.integration.harness import SECRET, token
from wsrt.auth import mint_token
from wsrt.brokers import free_port
from wsrt.tools.server import EVENT_TIMEOUT

pytestmark = pytest.mark.integration

#: Installs ``window.t``. Clients reconnect quickly here (100 ms to 1 s).
HARNESS = """async (module) => {
  const { connect, WsrtError } = await import(module);
  const t = { clients: {}, states: {}, notices: {}, got: {}, renewed: {} };
  t.open = (name, url, token, { renew, ...options } = {}) => {
    t.states[name] = [];
    t.notices[name] = [];
    t.renewed[name] = 0;
    t.clients[name] = connect(url, {
      token, minDelay: 100, maxDelay: 1000, ...options,
      onState: (state, d) => t.states[name].push({ state, code: d.code ?? null, reason: d.reason ?? null,
                                                   detail: d.detail ?? null, text: d.text,
                                                   reconnects: d.reconnects }),
      onNotice: (n) => t.notices[name].push(n.text),
      getToken: renew ? async () => { t.renewed[name] += 1; return renew; } : undefined,
    });
  };
  t.subscribe = async (name, channel, start) => {
    const got = (t.got[`${name} ${channel}`] ??= []);  // one record per client and channel
    try {
      await t.clients[name].subscribe(channel, (m) => got.push([m.partition, m.offset]), start);
      return { ok: true };
    } catch (e) {
      return { ok: false, code: e.code, message: e.message, typed: e instanceof WsrtError };
    }
  };
  t.last = (name) => t.states[name][t.states[name].length - 1] || {};
  window.t = t;
}"""

Offsets = dict[int, list[int]]

#: The browser example of docs/protocol.md, as printed.
DOCS_EXAMPLE = (
    (Path(__file__).resolve().parents[2] / "docs" / "protocol.md")
    .read_text()
    .split("## Browser client", 1)[1]
    .split("```html\n", 1)[1]
    .split("```", 1)[0]
)


async def harness(page: Page, origin: str, module: str = "/client.js") -> None:
    """Open a page of ``origin`` (its /healthz) and install the harness there."""
    # The browser asks any page's origin for /favicon.ico: not the client's doing.
    await page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    await page.goto(f"{origin}/healthz")
    await page.evaluate(HARNESS, module)


async def until(
    page: Page, expression: str, arg: Any = None, timeout: float = EVENT_TIMEOUT
) -> None:
    """Wait for a JavaScript condition in the page (an event, never a fixed time)."""
    try:
        await page.wait_for_function(expression, arg=arg, timeout=timeout * 1000)
    except Exception as exc:
        states = await page.evaluate("JSON.stringify(t.states)")
        raise AssertionError(f"{expression} never held; states: {states}") from exc


async def received(page: Page, name: str, channel: str) -> Offsets:
    pairs = await page.evaluate("(k) => t.got[k]", f"{name} {channel}")
    got: Offsets = {}
    for partition, offset in pairs:
        got.setdefault(partition, []).append(offset)
    return got


async def produce(
    producer: AIOKafkaProducer, topic: str, count: int, partitions: int, into: Offsets
) -> None:
    for n in range(count):
        md = await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % partitions)
        into.setdefault(md.partition, []).append(md.offset)


def total(offsets: Offsets) -> int:
    return sum(map(len, offsets.values()))


async def test_resumes_across_a_server_restart_with_every_offset_once(
    make_topics, servers, producer, watched: Watched
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}"}
    first = servers([topic], env)
    page = watched.page
    await harness(page, first.http)
    await page.evaluate("([url, token]) => t.open('a', url, token)", [first.url, token()])
    assert await page.evaluate("(c) => t.subscribe('a', c)", topic) == {"ok": True}
    assert watched.problems() == []  # loaded, connected and subscribed cleanly

    produced: Offsets = {}
    await produce(producer, topic, 100, 2, produced)
    await until(page, "(k) => t.got[k].length >= 100", f"a {topic}")
    first.stop()  # 1001 to the page; messages may be in flight
    await produce(producer, topic, 100, 2, produced)  # while no server runs
    servers([topic], env)
    await produce(producer, topic, 100, 2, produced)
    await until(page, "(n) => t.got[n[0]].length >= n[1]", [f"a {topic}", total(produced)])

    assert await received(page, "a", topic) == produced  # every offset, once, in order
    states = await page.evaluate("t.states.a")
    assert [s["state"] for s in states[:2]] == ["connecting", "open"]
    reconnecting = [s for s in states if s["state"] == "reconnecting"]
    assert reconnecting and reconnecting[0]["code"] == 1001
    assert reconnecting[0]["text"] == "closed by server: 1001 server shutting down"
    assert states[-1]["state"] == "open" and states[-1]["reconnects"] == 1
    assert watched.problems(network_ok=True) == []


async def test_a_filtered_subscription_keeps_its_filter_through_a_server_restart(
    make_topics, servers, producer, watched: Watched
) -> None:
    """The filter goes with every resubscribe: after the restart the client resumes with it,
    so it gets exactly partition 0's records, each once, in order, and none of partition 1."""
    (topic,) = await make_topics("filtered-lines", partitions=2)
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}"}
    first = servers([topic], env)
    page = watched.page
    await harness(page, first.http)
    await page.evaluate("([url, token]) => t.open('a', url, token)", [first.url, token()])
    only = {"filter": {"field": "partition", "eq": 0}}
    assert await page.evaluate("([c, s]) => t.subscribe('a', c, s)", [topic, only]) == {"ok": True}
    produced: Offsets = {}
    await produce(producer, topic, 100, 2, produced)
    await until(page, "(k) => t.got[k].length >= 50", f"a {topic}")
    first.stop()
    await produce(producer, topic, 100, 2, produced)  # while no server runs
    servers([topic], env)
    await produce(producer, topic, 100, 2, produced)
    await until(page, "(n) => t.got[n[0]].length >= n[1]", [f"a {topic}", len(produced[0])])
    await page.evaluate("t.clients.a.close()")
    assert await received(page, "a", topic) == {0: produced[0]}
    assert watched.problems(network_ok=True) == []


async def test_subscribe_and_unsubscribe_are_promises_errors_carry_the_code(
    make_topics, servers, producer, watched: Watched
) -> None:
    topic, other = await make_topics("lines", "order_book")
    server = servers([topic, other])
    page = watched.page
    await harness(page, server.http)
    await page.evaluate(
        "([url, a, b]) => { t.open('all', url, a); t.open('one', url, b); }",
        [server.url, token(), token(channels=[topic])],
    )

    async def subscribe(name: str, channel: str, start: dict[str, Any] | None = None) -> Any:
        return await page.evaluate("([n, c, s]) => t.subscribe(n, c, s)", [name, channel, start])

    assert (await subscribe("all", "no-such-topic"))["code"] == "unknown_channel"
    refused = await subscribe("one", other)
    assert refused["code"] == "forbidden" and refused["typed"] and other in refused["message"]
    assert (await subscribe("all", topic, {"since": {"7": 0}}))["code"] == "bad_request"
    assert await subscribe("one", topic) == {"ok": True}
    assert (await subscribe("one", topic))["code"] == "bad_request"  # once per client
    assert (await subscribe("one", f"{topic}:k1"))["code"] == "bad_request"  # overlaps the resume

    sent: Offsets = {}
    await produce(producer, topic, 3, 1, sent)
    await until(page, "(k) => t.got[k].length === 3", f"one {topic}")
    await page.evaluate("(c) => t.clients.one.subscriptions.get(c).unsubscribe()", topic)
    assert await page.evaluate("(c) => t.clients.one.subscriptions.has(c)", topic) is False
    # Subscribing again after the promise resolved works: the server forgot it,
    # and the new subscription starts live.
    assert await subscribe("one", topic) == {"ok": True}
    await produce(producer, topic, 2, 1, sent)
    await until(page, "(k) => t.got[k].length === 5", f"one {topic}")
    assert await received(page, "one", topic) == sent
    assert watched.problems() == []


async def test_refresh_and_an_expired_token(
    make_topics, servers, producer, watched: Watched
) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic])
    page = watched.page
    await harness(page, server.http)
    await page.evaluate("([url, tok]) => t.open('a', url, tok)", [server.url, token()])
    await until(page, "() => t.last('a').state === 'open'")

    async def refresh(name: str, new: str) -> Any:
        return await page.evaluate(
            "([n, tok]) => t.clients[n].refresh(tok).then((exp) => ({ exp }), (e) => ({ code: e.code }))",
            [name, new],
        )

    assert await refresh("a", token("somebody-else")) == {"code": "unauthorized"}
    later = int(time.time()) + 7200
    answer = await refresh("a", token(ttl=7200))
    assert abs(answer["exp"] - later) <= 5

    # Tokens that expire in 2 s: without getToken the client stops (no
    # reconnect) and says why; with it, it fetches a token and resumes.
    await page.evaluate(
        "([url, short, renew]) => { t.open('b', url, short); t.open('c', url, short, { renew }); }",
        [server.url, token(ttl=2), token(ttl=3600)],
    )
    for name in ("b", "c"):
        assert await page.evaluate("([n, c]) => t.subscribe(n, c)", [name, topic]) == {"ok": True}
    await until(page, "() => t.last('b').state === 'closed'")
    closed = await page.evaluate("t.last('b')")
    assert (closed["code"], closed["reason"]) == (1008, "token expired")
    assert "refresh it" in closed["text"]
    await until(page, "() => t.renewed.c === 1 && t.last('c').state === 'open'")
    assert "reconnecting" not in [s["state"] for s in await page.evaluate("t.states.b")]

    # refresh() revives the stopped client, which resumes its subscription.
    assert await refresh("b", token(ttl=3600)) == {"exp": None}
    await until(page, "() => t.last('b').state === 'open'")
    sent: Offsets = {}
    await produce(producer, topic, 5, 1, sent)
    for name in ("b", "c"):
        await until(page, "(k) => t.got[k].length >= 5", f"{name} {topic}")
        assert await received(page, name, topic) == sent
    assert watched.problems() == []


async def test_refusals_are_told_in_plain_words_and_not_retried(
    make_topics, servers, watched: Watched, browser
) -> None:
    """A refused handshake is a bare 1006 in a browser; the client asks /ws/check why."""
    (topic,) = await make_topics("lines")
    port = free_port()
    own = f"http://127.0.0.1:{port}"
    server = servers([topic], {"WS_BIND_ADDRESS": f"127.0.0.1:{port}", "WS_ALLOWED_ORIGINS": own})
    expired = mint_token(SECRET, "tester", ttl=60, now=time.time() - 3600)
    page = watched.page
    await harness(page, server.http)
    await page.evaluate(
        "([url, bad, good]) => { t.open('x', url, bad); t.open('y', url, bad, { renew: good }); }",
        [server.url, expired, token()],
    )
    await until(page, "() => t.last('x').state === 'closed'")
    refused = await page.evaluate("t.last('x')")
    assert refused["reason"] == "unauthorized: expired"
    assert refused["detail"].startswith("The token expired at ") and "s ago)" in refused["detail"]
    assert refused["text"] == (
        f"server refused the connection: 401 unauthorized: expired — {refused['detail']}"
    )
    assert [s["state"] for s in await page.evaluate("t.states.x")] == ["connecting", "closed"]
    await until(page, "() => t.last('y').state === 'open'")  # getToken gave a good one

    # A dashboard on another origin imports the module (CORS) and is refused by Origin.
    other = await browser.new_page()
    errors: list[str] = []
    other.on("pageerror", lambda exc: errors.append(str(exc)))
    await harness(other, f"http://localhost:{port}", f"{own}/client.js")
    await other.evaluate("([url, tok]) => t.open('z', url, tok)", [server.url, token()])
    await until(other, "() => t.last('z').state === 'closed'")
    assert (await other.evaluate("t.last('z')"))["reason"] == "origin not allowed"
    assert errors == []
    await other.close()


async def test_the_example_in_the_protocol_docs_runs(
    make_topics, servers, producer, watched: Watched
) -> None:
    """docs/protocol.md's browser example, as printed but for host, channel and token."""
    example = DOCS_EXAMPLE
    (topic,) = await make_topics("order_book", partitions=2)
    server = servers([topic])
    sent: Offsets = {}
    await produce(producer, topic, 4, 2, sent)  # the example rewinds 10 per partition
    page = watched.page
    logged: list[str] = []
    page.on("console", lambda m: logged.append(m.text) if m.type == "log" else None)
    await page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    await page.goto(f"{server.http}/healthz")  # the page's origin: the server's
    html = (
        example.replace("localhost:8080", f"127.0.0.1:{server.port}")
        .replace('"order_book"', json.dumps(topic))
        .replace('const token = "…"', f"const token = {json.dumps(token())}")
    )
    assert html != example and "…" not in html.split("const token", 1)[1].split(";")[0]
    await page.set_content(html)
    for _ in range(200):  # each turn waits for the next console line: an event
        if sum(1 for line in logged if line.startswith("null ")) >= 4:
            break
        await page.wait_for_event("console", timeout=EVENT_TIMEOUT * 1000)
    shown = sorted(
        tuple(map(int, line.split()[1:3])) for line in logged if line.startswith("null ")
    )
    assert shown == sorted((p, o) for p, offsets in sent.items() for o in offsets)
    assert "open connected to" in " ".join(logged)
    assert watched.problems() == []


async def test_a_hundred_channels_resume_through_five_server_restarts(
    make_topics, servers, producer, watched: Watched
) -> None:
    """Every channel comes back after each reconnect, paced under WS_CONTROL_RATE, with no gap.

    100 ``topic:key`` channels resubscribe at once on each reconnect: five
    times the server's control burst. The client paces itself and retries a
    ``rate_limited`` answer, so none ends and no message is missing.
    """
    (topic,) = await make_topics("lines", partitions=2)
    keys = [f"k{i}" for i in range(100)]
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}", "WS_LOG_LEVEL": "INFO"}
    server = servers([topic], env)
    page = watched.page
    await harness(page, server.http)
    await page.evaluate("([url, tok]) => t.open('a', url, tok)", [server.url, token()])
    for key in keys:  # one by one: the first subscribes go at the client's pace too
        assert await page.evaluate("(c) => t.subscribe('a', c)", f"{topic}:{key}") == {"ok": True}

    produced: dict[str, Offsets] = {key: {} for key in keys}

    async def produce_all() -> None:
        sent = [
            await producer.send(topic, b'{"k":"%s"}' % k.encode(), key=k.encode()) for k in keys
        ]
        for key, future in zip(keys, sent, strict=True):
            md = await future
            produced[key].setdefault(md.partition, []).append(md.offset)

    await produce_all()
    for restart in range(1, 6):
        server.stop()  # 1001 to the page
        await produce_all()  # while no server runs: resumed with `since`
        server = servers([topic], env)
        await until(
            page, "(n) => t.last('a').state === 'open' && t.last('a').reconnects === n", restart
        )
        await produce_all()
        await until(
            page,
            "([topic, keys, n]) => keys.every((k) => (t.got[`a ${topic}:${k}`] || []).length >= n)",
            [topic, keys, 2 * restart + 1],
            timeout=120,
        )
        # The server heard no more than its burst at a time: nothing refused for good.
        assert not [e for e in server.events if e.get("event") == "connection_abuse"]
    for key in keys:
        assert await received(page, "a", f"{topic}:{key}") == produced[key], key
    assert await page.evaluate("t.clients.a.subscriptions.size") == 100
    notices = await page.evaluate("t.notices.a")
    assert not [n for n in notices if "ended" in n or "refused" in n], notices[:5]
    assert watched.problems(network_ok=True) == []


async def test_server_positions_below_the_clients_win_and_subscribe_on_a_closed_client_rejects(
    make_topics, servers, producer, bootstrap, watched: Watched
) -> None:
    """A topic recreated under the client: its offsets start again below the client's.

    The client resumes from offset 10; the new log ends at 3, so the server
    answers ``positions`` 3, and from there every new record must be passed
    on (the client's own, higher position must not hide them).
    """
    from aiokafka.admin import AIOKafkaAdminClient

    from wsrt.brokers import create_topics

    (topic,) = await make_topics("lines")
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}"}
    server = servers([topic], env)
    page = watched.page
    await harness(page, server.http)
    await page.evaluate("([url, tok]) => t.open('a', url, tok)", [server.url, token()])
    assert await page.evaluate("(c) => t.subscribe('a', c)", topic) == {"ok": True}
    before: Offsets = {}
    await produce(producer, topic, 10, 1, before)
    await until(page, "(k) => t.got[k].length === 10", f"a {topic}")

    server.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    await create_topics(bootstrap, {topic: 1})
    await produce(producer, topic, 3, 1, {})  # offsets 0..2 of the new log
    server = servers([topic], env)
    await until(page, "() => t.last('a').state === 'open' && t.last('a').reconnects === 1")
    await until(page, "() => t.clients.a.subscriptions.values().next().value.next['0'] === 3")
    after: Offsets = {}
    await produce(producer, topic, 5, 1, after)
    assert after == {0: [3, 4, 5, 6, 7]}
    await until(page, "(k) => t.got[k].length === 15", f"a {topic}")
    assert await received(page, "a", topic) == {0: before[0] + after[0]}

    await page.evaluate("t.clients.a.close()")
    late = await page.evaluate("(c) => t.subscribe('a', c + ':x')", topic)
    assert late["code"] == "closed" and late["typed"]


async def test_client_state_is_the_kafka_state_after_a_forced_reconnect_mid_stream(
    make_topics, servers, producer, watched: Watched
) -> None:
    """``client.state()``: snapshot, updates, deletes and a server restart while producing."""
    (book,) = await make_topics("order_book", partitions=2)
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}", "WS_STATE_TOPICS": book}
    truth: dict[str, int | None] = {}

    async def write(start: int, count: int) -> None:
        for n in range(start, start + count):
            key = f"k{n % 12}"
            value = None if n % 7 == 6 else b'{"n":%d}' % n  # every 7th record deletes its key
            await producer.send_and_wait(book, value, key=key.encode())
            truth[key] = None if value is None else n

    await write(0, 60)  # before the server: loaded from history
    server = servers([book], env)
    page = watched.page
    await harness(page, server.http)
    await page.evaluate(
        """async ([url, tok, channel]) => {
             t.open('s', url, tok);
             t.map = await t.clients.s.state(channel, () => {});
           }""",
        [server.url, token(), book],
    )
    writer = asyncio.create_task(write(60, 120))
    server.stop()  # mid-stream: the client reconnects and resumes
    server = servers([book], env)
    await writer
    expected = {k: n for k, n in truth.items() if n is not None}
    await until(
        page,
        "(want) => JSON.stringify(Object.fromEntries([...t.map].map(([k, m]) => [k, m.data.n]).sort()))"
        " === JSON.stringify(Object.fromEntries(Object.entries(want).sort()))",
        expected,
        timeout=60,
    )
    assert await page.evaluate("t.last('s').reconnects") >= 1
    assert watched.problems(network_ok=True) == []


async def test_chromium_negotiating_deflate_gets_what_an_uncompressed_client_gets(
    make_topics, servers, producer, watched: Watched
) -> None:
    import websockets

    (topic,) = await make_topics("deflated", partitions=2)
    server = servers([topic], {"WS_COMPRESSION": "deflate"})
    page = watched.page
    await harness(page, server.http)
    await page.evaluate("([url, token]) => t.open('a', url, token)", [server.url, token()])
    await page.evaluate(
        """async (channel) => {
          t.data = [];
          await t.clients.a.subscribe(channel, (m) => t.data.push([m.partition, m.offset, m.data]));
        }""",
        topic,
    )
    assert await page.evaluate("t.clients.a._ws.extensions") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    url = f"{server.url}?channels={topic}&token={token()}"
    async with websockets.connect(url, compression=None) as plain:
        assert json.loads(await plain.recv())["type"] == "subscribed"
        for n in range(50):
            value = {"n": n, "words": "compressible " * (n % 7) * 10, "ü": "ünïcödé"}
            await producer.send_and_wait(topic, json.dumps(value).encode(), partition=n % 2)
        got = [json.loads(await plain.recv()) for _ in range(50)]
    await until(page, "() => t.data.length >= 50")
    in_browser = await page.evaluate("t.data")
    assert in_browser == [[m["partition"], m["offset"], m["data"]] for m in got]
    assert watched.problems() == []
