"""The browser files the server ships: ``/client.js`` and the ``/console`` page.

See docs/design.md, "Browser client and console".

Sans-I/O: :class:`Assets` reads the files of ``wsrt/web/`` once, at start,
and answers a path (and the request's ``If-None-Match``) with the bytes and
headers to send, or ``None`` for a path that is not one of them.

``/client.js`` is always served: a dashboard on another origin imports it
(an ES module import is a CORS request, hence ``Access-Control-Allow-Origin:
*``, safe because nothing here depends on cookies or other ambient
credentials). The console's files are served only with ``WS_CONSOLE`` on,
under a Content-Security-Policy that allows scripts, styles and connections
to this server only, and no inline script at all.

Every file is revalidated on each use (``no-cache`` with an ETag, answered
``304`` when unchanged): after a rolling upgrade a page never keeps an old
client for an hour, and an unchanged file costs one small request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

#: The console page may load scripts and styles from this server and connect
#: to it (``'self'`` covers ``ws:``/``wss:`` of the same host); nothing else.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_COMMON = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
)
_CONSOLE = (
    ("Content-Security-Policy", CONSOLE_CSP),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
_JS = "text/javascript; charset=utf-8"

#: path → (file in wsrt/web, content type, extra headers, console only)
_FILES: dict[str, tuple[str, str, tuple[tuple[str, str], ...], bool]] = {
    "/client.js": ("client.js", _JS, (("Access-Control-Allow-Origin", "*"),), False),
    "/console": ("console.html", "text/html; charset=utf-8", _CONSOLE, True),
    "/console/console.js": ("console.js", _JS, _CONSOLE, True),
    "/console/console.css": ("console.css", "text/css; charset=utf-8", _CONSOLE, True),
    "/console/favicon.svg": ("favicon.svg", "image/svg+xml", _CONSOLE, True),
}


@dataclass(frozen=True)
class Asset:
    """One response: ``status`` 200 with ``body``, or 304 with an empty body."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _File:
    body: bytes
    etag: str
    headers: tuple[tuple[str, str], ...]


class Assets:
    """The files served for ``console`` on or off, read once."""

    def __init__(self, *, console: bool) -> None:
        web = resources.files("wsrt") / "web"
        self._files: dict[str, _File] = {}
        for path, (name, content_type, extra, console_only) in _FILES.items():
            if console_only and not console:
                continue
            body = (web / name).read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            headers = (("Content-Type", content_type), ("ETag", etag), *_COMMON, *extra)
            self._files[path] = _File(body, etag, headers)

    def get(self, path: str, if_none_match: str | None = None) -> Asset | None:
        """The answer for ``path`` (without its query string), or ``None``."""
        file = self._files.get(path)
        if file is None:
            return None
        if if_none_match is not None and _etags(if_none_match) & {file.etag, "*"}:
            return Asset(304, b"", file.headers)
        return Asset(200, file.body, file.headers)


def _etags(header: str) -> set[str]:
    """The entity tags of an ``If-None-Match`` header (weak ones compare as strong)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
