"""The ``/console`` page in a real Chromium: what an operator opens and sees (design section 12)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Page

from tests.browser.conftest import Watched
from tests.integration.harness import token
from tests.integration.test_cli_commands import background  # noqa: F401 (a fixture)
from wsrt.brokers import free_port
from wsrt.gateway.static import CONSOLE_CSP

pytestmark = pytest.mark.integration


def get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a GET; an error status is an answer."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


async def rows(page: Page) -> list[dict[str, str]]:
    """The messages table, newest first: partition, offset, channel and the cells' text."""
    script = """() => [...document.querySelectorAll('#messages tbody tr')].map((r) => ({
        partition: r.dataset.partition, offset: r.dataset.offset, channel: r.dataset.channel,
        cells: [...r.cells].map((c) => c.textContent) }))"""
    found: list[dict[str, str]] = await page.evaluate(script)
    return found


async def wait_rows(page: Page, count: int) -> None:
    await page.wait_for_function(
        "(n) => document.querySelectorAll('#messages tbody tr').length >= n", arg=count
    )


async def produce(producer: AIOKafkaProducer, topic: str, start: int, count: int) -> set[str]:
    """Records keyed BTC-USD over two partitions; their ``partition:offset``."""
    sent = set()
    for n in range(start, start + count):
        value = b'{"symbol": "BTC-USD", "n": %d}' % n
        md = await producer.send_and_wait(topic, value, key=b"BTC-USD", partition=n % 2)
        sent.add(f"{md.partition}:{md.offset}")
    return sent


async def test_console_shows_messages_and_those_produced_while_the_server_restarted(
    make_topics, servers, producer, watched: Watched
) -> None:
    (topic,) = await make_topics("order_book", partitions=2)
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{free_port()}", "WS_CONSOLE": "true"}
    first = servers([topic], env)
    page, jwt = watched.page, token()
    await page.goto(f"{first.http}/console#token={jwt}")
    await page.wait_for_selector("#state[data-state=open]")
    assert page.url == f"{first.http}/console"  # the token left the address bar and history
    assert await page.input_value("#token") == jwt
    picker = await page.eval_on_selector_all("#channels option", "(os) => os.map((o) => o.value)")
    assert picker == [topic]  # from the server's topics

    await page.fill("#channel", topic)
    await page.click("#subscribe-button")
    await page.wait_for_selector(f'#subscriptions tr[data-channel="{topic}"]')
    sent = await produce(producer, topic, 0, 10)
    await wait_rows(page, 10)
    shown = await rows(page)
    assert {f"{r['partition']}:{r['offset']}" for r in shown} == sent
    # Partitions interleave in any order; within the row: channel, key, age, compact JSON.
    (last,) = [r["cells"] for r in shown if r["cells"][5] == '{"symbol":"BTC-USD","n":9}']
    assert last[0] == topic and last[1] == "BTC-USD"
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", last[4]), last[4]  # age
    count = f'#subscriptions tr[data-channel="{topic}"] td:nth-child(2)'
    await page.wait_for_function("(s) => document.querySelector(s).textContent === '10'", arg=count)
    rate = await page.text_content(f'#subscriptions tr[data-channel="{topic}"] td:nth-child(3)')
    assert rate is not None and rate.endswith("/s") and float(rate[:-2]) > 0
    assert watched.problems() == []  # the page loaded and ran without a console error

    first.stop()
    await page.wait_for_selector("#state[data-state=reconnecting]")
    assert "1001 server shutting down" in (await page.text_content("#events") or "")
    sent |= await produce(producer, topic, 10, 5)  # while no server runs
    servers([topic], env)
    sent |= await produce(producer, topic, 15, 5)
    await wait_rows(page, 20)
    await page.wait_for_selector("#state[data-state=open]")
    assert await page.text_content("#reconnects") == "1"
    assert await page.text_content("#transport") == "WebSocket"
    shown = await rows(page)
    assert sorted(f"{r['partition']}:{r['offset']}" for r in shown) == sorted(sent)
    assert watched.problems(network_ok=True) == []


async def test_console_is_off_by_default_and_strict_when_on(
    make_topics, servers, watched: Watched
) -> None:
    topic, other = await make_topics("lines", "order_book")
    off = servers([topic])
    assert get(f"{off.http}/console")[0] == 404
    assert get(f"{off.http}/console/channels", Authorization=f"Bearer {token()}")[0] == 404
    status, headers, body = get(f"{off.http}/client.js")  # always served
    assert status == 200 and body.startswith("// wsrt browser client")
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Access-Control-Allow-Origin"] == "*"  # importable by a dashboard elsewhere
    assert headers["Cache-Control"] == "no-cache" and headers["X-Content-Type-Options"] == "nosniff"
    assert get(f"{off.http}/client.js", **{"If-None-Match": headers["ETag"]})[0] == 304

    on = servers([topic, other], {"WS_CONSOLE": "true"})
    status, headers, body = get(f"{on.http}/console")
    assert status == 200 and headers["Content-Security-Policy"] == CONSOLE_CSP
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert all(not s.strip() for s in re.findall(r"<script[^>]*>(.*?)</script>", body, re.S))
    assert " style=" not in body and not re.search(r"eyJ[\w-]+\.", body)  # no token in the page

    channels = f"{on.http}/console/channels"
    status, headers, _ = get(channels)
    assert status == 401 and "Access-Control-Allow-Origin" not in headers  # same origin only
    narrow = token(channels=[other, f"{topic}:k1", "nothing-*"])
    status, _, body = get(channels, Authorization=f"Bearer {narrow}")
    assert status == 200 and json.loads(body) == {"channels": [other, f"{topic}:k1"], "state": []}
    status, headers, body = get(f"{on.http}/ws/check?token=nonsense")
    assert (status, body.strip()) == (
        401,
        "unauthorized: malformed\nThe token is not a JWT (three base64url parts joined by dots).",
    )
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert get(f"{on.http}/ws/check?token={token()}")[0] == 200

    # The policy holds in the browser: an inline script does not run.
    page = watched.page
    await page.goto(f"{on.http}/console")
    await page.wait_for_selector("#connect-button:enabled")
    assert watched.problems() == []
    await page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.injected = 1'; document.head.append(s); }"
    )
    assert await page.evaluate("() => window.injected") is None
    assert any("Content Security Policy" in e for e in watched.problems())


async def test_wsrt_dev_prints_a_console_url_that_streams_with_no_other_step(
    background,  # noqa: F811 (the imported fixture)
    watched: Watched,
    tmp_path: Path,
) -> None:
    dev = background("dev", "--port", str(free_port()), "--broker-port", str(free_port()))
    url = dev.wait_line(r"(http://127\.0\.0\.1:\d+/console#\S+)").group(1)
    page = watched.page
    await page.goto(url)
    await page.wait_for_function(
        "() => new Set([...document.querySelectorAll('#messages tbody tr')]"
        ".map((r) => r.dataset.channel)).size === 3",
        timeout=60_000,
    )
    assert {r["channel"] for r in await rows(page)} == {"lines", "order_book", "analytics"}
    assert await page.text_content("#state") == "open"
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#subscriptions td:nth-child(3)')]"
        ".every((td) => td.textContent !== '0.0/s')"
    )
    assert watched.problems() == []
    screenshot = tmp_path / "console.png"
    await page.screenshot(path=screenshot)
    # `WSRT_SCREENSHOT=docs/console.png scripts/test.sh tests/browser` renews the README's.
    if target := os.environ.get("WSRT_SCREENSHOT"):
        shutil.copyfile(screenshot, target)
    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(60) == 0


async def test_console_keeps_a_state_table_per_state_topic(
    make_topics, servers, producer, watched: Watched, tmp_path: Path
) -> None:
    (book,) = await make_topics("order_book", partitions=2)
    for n, symbol in enumerate(["BTC-USD", "ETH-USD", "SOL-USD", "BTC-USD", "ADA-USD"]):
        value = b'{"symbol": "%s", "bid": %d}' % (symbol.encode(), 100 + n)
        await producer.send_and_wait(book, value, key=symbol.encode())
    await producer.send_and_wait(book, None, key=b"ADA-USD")  # deleted
    server = servers([book], {"WS_CONSOLE": "true", "WS_STATE_TOPICS": book})
    page = watched.page
    await page.goto(f"{server.http}/console#token={token()}&channels={book}")

    async def state_rows() -> dict[str, str]:
        found: dict[str, str] = await page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('#state-table tbody tr')]
                 .map((r) => [r.dataset.key, r.cells[4].textContent]))"""
        )
        return found

    await page.wait_for_function(
        "() => document.querySelectorAll('#state-table tbody tr').length === 3"
    )
    assert await state_rows() == {
        "BTC-USD": '{"symbol":"BTC-USD","bid":103}', "ETH-USD": '{"symbol":"ETH-USD","bid":101}',
        "SOL-USD": '{"symbol":"SOL-USD","bid":102}',
    }  # fmt: skip
    await producer.send_and_wait(book, b'{"symbol": "ETH-USD", "bid": 200}', key=b"ETH-USD")
    await producer.send_and_wait(book, None, key=b"SOL-USD")
    await page.wait_for_function(
        "() => document.querySelectorAll('#state-table tbody tr').length === 2"
        " && document.querySelector('#state-table tr[data-key=\"ETH-USD\"]').cells[4]"
        ".textContent.includes('200')"
    )
    await page.screenshot(path=str(tmp_path / "console-state.png"), full_page=True)
    shutil.copy(tmp_path / "console-state.png", "/tmp/console-state.png")
    assert watched.problems() == []


async def test_console_subscribes_through_a_filter_box(
    make_topics, servers, producer, watched: Watched, tmp_path
) -> None:
    (topic,) = await make_topics("order_book", partitions=2)
    server = servers([topic], {"WS_CONSOLE": "true"})
    page = watched.page
    await page.goto(f"{server.http}/console#token={token()}")
    await page.wait_for_selector("#state[data-state=open]")
    await page.fill("#channel", topic)
    for bad, said in (
        ("{", f"subscribe {topic}: the filter is not JSON"),
        ('{"field":"x","eq":1}', f"refused: {topic}: bad_request: filter.field 'x' is not key"),
    ):
        await page.fill("#filter", bad)
        await page.click("#subscribe-button")
        try:
            await page.wait_for_function(
                "(s) => document.querySelector('#events').textContent.includes(s)", arg=said
            )
        except Exception:
            raise AssertionError(await page.text_content("#events")) from None
    await page.fill("#filter", '{"field":"data.n","gte":5}')
    await page.click("#subscribe-button")
    row = f'#subscriptions tr[data-channel="{topic}"]'
    await page.wait_for_selector(row)
    assert await page.get_attribute(row, "data-filter") == '{"field":"data.n","gte":5}'
    sent = await produce(producer, topic, 0, 10)
    await wait_rows(page, 5)
    await page.wait_for_function(
        "(s) => document.querySelector(s).textContent === '5'", arg=f"{row} td:nth-child(2)"
    )
    shown = await rows(page)
    assert sorted(json.loads(r["cells"][5])["n"] for r in shown) == [5, 6, 7, 8, 9]
    assert {f"{r['partition']}:{r['offset']}" for r in shown} < sent
    await page.screenshot(path=str(tmp_path / "console-filter.png"), full_page=True)
    assert watched.problems() == []
