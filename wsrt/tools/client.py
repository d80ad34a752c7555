"""What wsrt's client commands share: connecting, close descriptions, HTTP probes, metrics.

Used by ``tail``, ``check``, ``loadtest`` and the benchmarks, so that each
says a close code, a refused handshake or a scrape the same way.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import websockets
from websockets.exceptions import InvalidStatus

from wsrt import protocol
from wsrt.metrics import parse

#: What a close code means to the person watching.
CLOSE_MEANINGS = {
    protocol.CLOSE_NORMAL: "normal close",
    protocol.CLOSE_GOING_AWAY: "server going away (shutdown or redeploy)",
    protocol.CLOSE_UNSUPPORTED_DATA: "server refused a binary frame",
    protocol.CLOSE_ABNORMAL: "connection lost without a close frame",
    protocol.CLOSE_POLICY_VIOLATION: "policy violation",
    protocol.CLOSE_TOO_BIG: "frame too big",
    protocol.CLOSE_INTERNAL_ERROR: "server error",
}
HINTS = {
    protocol.REASON_SLOW_CONSUMER: (
        "this client did not read fast enough (the server's WS_CLIENT_BUFFER)"
    ),
    protocol.REASON_TOKEN_EXPIRED: "the token's exp passed; mint a new one",
}


def describe_close(code: int | None, reason: str | None) -> str:
    text = f"closed by server: {code} {reason or CLOSE_MEANINGS.get(code or 0, '')}".rstrip()
    hint = HINTS.get(reason or "")
    return f"{text} — {hint}" if hint else text


def describe_notice(notice: dict[str, object]) -> str | None:
    """A ``gap`` or ``conflated`` notice in plain words (``None`` for other frames)."""
    channel, dropped = notice.get("channel"), notice.get("dropped")
    if notice.get("type") == "gap":
        p, first, last = notice.get("partition"), notice.get("from"), notice.get("to")
        return (
            f"gap: {channel} partition {p}: {dropped} messages (offsets {first} to {last}) "
            f"were dropped because this client read too slowly; fetch them with "
            f"--from-offsets {p}={first}"
        )
    if notice.get("type") == "conflated":
        return (
            f"conflated: {channel}: {dropped} older values were replaced by newer ones "
            "of the same key because this client read too slowly"
        )
    return None


def describe_refusal(exc: InvalidStatus) -> str:
    """``server refused the connection: 401 unauthorized: expired``."""
    body = (exc.response.body or b"").decode(errors="replace").strip()
    return f"server refused the connection: {exc.response.status_code} {body}".rstrip()


async def explain_refusal(exc: InvalidStatus, url: str, token: str, seconds: float = 5) -> str:
    """:func:`describe_refusal`, and for a refused token what ``/ws/check`` says of it in
    plain words: ``… 401 unauthorized: bad_issuer — The token was issued by …``."""
    line = describe_refusal(exc)
    if exc.response.status_code != 401:
        return line
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/check"
    check = urlunsplit((scheme, parts.netloc, path, urlencode({"token": token}), ""))
    try:
        status, body, _ = await asyncio.to_thread(http_get, check, seconds)
    except (OSError, ValueError):
        return line  # the upgrade's own answer is all there is
    words = body.strip().partition("\n")[2].strip()
    return f"{line} — {words}" if status == 401 and words else line


def connect(
    url: str, token: str, channels: Iterable[str] = (), *, open_timeout: float = 10
) -> websockets.connect:
    """A websockets client connection (``async with``), Bearer token, ``?channels=`` subscribed.

    No frame size limit: the server's frames are as large as its records.
    """
    names = ",".join(channels)
    target = f"{url}?channels={quote(names, safe=',:')}" if names else url
    return websockets.connect(
        target,
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=open_timeout,
        max_size=None,
    )


def http_get(url: str, timeout: float) -> tuple[int, str, float]:
    """Status, body and milliseconds of a GET; an HTTP error status is an answer, not a raise."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode(errors="replace")
    return status, body, (time.perf_counter() - started) * 1000


def wait_healthy(http_url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``/healthz`` until it answers 200 (True), ``timeout`` passes or ``alive()`` is False.

    Polling: a server that is starting offers no event to wait on.
    """
    deadline = time.monotonic() + timeout
    while alive():
        try:
            if http_get(http_url + "/healthz", timeout=2)[0] == 200:
                return True
        except OSError:
            pass  # not listening yet
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return False


def scrape(
    http_url: str, timeout: float = 10
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a server's ``/metrics``."""
    return parse(http_get(http_url + "/metrics", timeout)[1])
