"""The browser files the server ships (wsrt/gateway/static.py)."""

from __future__ import annotations

import re

from wsrt.gateway.static import CONSOLE_CSP, Assets

CONSOLE_PATHS = ("/console", "/console/console.js", "/console/console.css", "/console/favicon.svg")


def test_client_js_always_and_the_console_only_when_on() -> None:
    off, on = Assets(console=False), Assets(console=True)
    assert off.get("/client.js") is not None and on.get("/client.js") is not None
    for path in CONSOLE_PATHS:
        assert off.get(path) is None and on.get(path) is not None
    assert on.get("/console/") is None and on.get("/client.js.map") is None


def test_headers_say_what_each_file_is_and_how_it_may_be_used() -> None:
    assets = Assets(console=True)
    client = assets.get("/client.js")
    assert client is not None
    headers = dict(client.headers)
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Security-Policy" not in headers  # a module for other origins' pages
    page = assets.get("/console")
    assert page is not None
    headers = dict(page.headers)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONSOLE_CSP
    assert "'unsafe-inline'" not in CONSOLE_CSP and "'unsafe-eval'" not in CONSOLE_CSP
    assert "Access-Control-Allow-Origin" not in headers


def test_an_unchanged_file_is_answered_304() -> None:
    assets = Assets(console=False)
    full = assets.get("/client.js")
    assert full is not None and full.status == 200 and full.body
    etag = dict(full.headers)["ETag"]
    for header in (etag, f'"x", {etag}', f"W/{etag}", "*"):
        again = assets.get("/client.js", header)
        assert again is not None and (again.status, again.body) == (304, b"")
    stale = assets.get("/client.js", '"something-else"')
    assert stale is not None and stale.status == 200


def test_the_console_page_has_no_inline_script_or_style() -> None:
    page = Assets(console=True).get("/console")
    assert page is not None
    html = page.body.decode()
    assert all(not body.strip() for body in re.findall(r"<script[^>]*>(.*?)</script>", html, re.S))
    assert "<style" not in html and " style=" not in html and " on" not in html.replace("\n", " ")
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith("/console/"), src  # everything from this server, no CDN
