"""``wsrt tail``: watch channels as a client would.

On a terminal it shows a live view (connection state, per-channel counts and
rates, the last messages); piped, it prints one JSON message per line for
``jq``, with status lines on stderr. It reconnects with backoff and says why
the server closed the connection.

Every subscription carries a start field (docs/design.md, "Resume and replay"): the one asked
for (``--since``, ``--from-offsets``, ``--rewind``), else an empty ``since``,
which starts live and has the server say where (``positions``). :class:`Resume`
keeps, per topic and partition, the next offset to show, so that after a
reconnect each channel resumes exactly there: a server restart leaves no gap
and no duplicate in the output.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from wsrt import protocol
from wsrt.aio import Backoff
from wsrt.cli.common import (
    ENV_FILE_OPTION,
    EXIT_USAGE,
    SECRET_FILE_OPTION,
    SECRET_OPTION,
    TOKEN_OPTION,
    URL_OPTION,
    client_token,
    fail,
    quiet_libraries,
    read_secret,
    settings_or_exit,
)
from wsrt.protocol import channel_list
from wsrt.tools.client import connect, describe_close, describe_notice, explain_refusal
from wsrt.tools.events import SseConnection


class Resume:
    """Where each channel's partitions stand for this client: the next offset to show.

    Per channel, not per topic: ``-c lines:A -c lines:B`` are two streams of
    one topic, and a partition's last offset shown for ``A`` says nothing
    about ``B``'s records, which may lie before it.
    """

    def __init__(self, start: dict[str, Any], narrowing: dict[str, Any] | None = None) -> None:
        #: The start field asked for on the command line (``{}``: live).
        self.start = start
        #: ``filter``, ``keys``, ``max_rate``: part of every subscribe.
        self.narrowing = narrowing or {}
        self.next: dict[str, dict[int, int]] = {}

    def subscribe(self, channel: str, request_id: int) -> str:
        """The ``subscribe`` frame for ``channel``: where it stopped, else as asked."""
        known = self.next.get(channel)
        start: dict[str, Any] = (
            {"since": {str(p): o for p, o in sorted(known.items())}} if known else self.start
        ) or {"since": {}}
        if self.start.get("snapshot"):  # history from there when it is all in Kafka, else state
            start = {**start, "snapshot": True}
        frame = {"type": "subscribe", "channel": channel, "id": request_id, **start}
        return orjson.dumps({**frame, **self.narrowing}).decode()

    def positioned(self, channel: str, positions: dict[str, int]) -> None:
        """A ``subscribed`` answer: each partition continues from its position.

        The server's word wins, also below what was shown: a topic recreated
        (or a log truncated) starts its offsets again.
        """
        partitions = self.next.setdefault(channel, {})
        for p, offset in positions.items():
            partitions[int(p)] = offset

    def received(self, message: dict[str, Any]) -> None:
        """A message was shown: its partition resumes after it, in each channel it is of.

        Nothing is filtered here: tail prints what the server sends, so a
        duplicate would show (and fail the resume test) instead of being hidden.
        """
        if message.get("snapshot"):
            return  # a key's newest value: its offset says nothing of where the stream resumes
        topic, key = message["channel"], message.get("key")
        partition, after = message["partition"], message["offset"] + 1
        for channel in (topic, None if key is None else f"{topic}:{key}"):
            partitions = self.next.get(channel) if channel is not None else None
            if partitions is not None:
                partitions[partition] = after


#: After Ctrl-C, how long tail waits for its connection to close before it exits.
STOP_SECONDS = 3.0

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float) -> int:
    """``5m`` / ``2h`` / ``1d`` / ``30s`` ago, or an ISO 8601 time (UTC if no zone), as epoch ms."""
    match = _DURATION.match(value.strip())
    if match:
        return int((now - float(match[1]) * _UNITS[match[2]]) * 1000)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--since {value!r}: give a duration (30s, 5m, 2h, 1d) or an ISO time "
            "(2026-12-01T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_offsets(value: str) -> dict[str, int]:
    """``0=1234,1=88`` → the ``since`` object."""
    offsets: dict[str, int] = {}
    for pair in value.split(","):
        partition, sep, offset = pair.strip().partition("=")
        if not (sep and partition.isdigit() and offset.isdigit()):
            raise ValueError(
                f"--from-offsets {value!r}: give partition=offset pairs, as in 0=1234,1=88"
            )
        offsets[str(int(partition))] = int(offset)
    return offsets


class ReaderGone(Exception):
    """stdout's reader went away (``wsrt tail | head -3``): stop quietly, as ``cat`` does."""


class Plain:
    """Piped output: messages on stdout as JSON lines, status on stderr."""

    def __init__(self) -> None:
        self.out = sys.stdout.buffer

    def message(self, obj: dict[str, Any], raw: bytes) -> None:
        try:
            self.out.write(raw + b"\n")
            self.out.flush()
        except BrokenPipeError:
            raise ReaderGone from None

    def status(self, text: str) -> None:
        print(f"wsrt tail: {text}", file=sys.stderr, flush=True)

    def snapshot_end(self, obj: dict[str, Any]) -> None:
        self.status(_snapshot_said(obj))

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveView:
    """A rich live view for a terminal."""

    def __init__(
        self,
        url: str,
        channels: list[str],
        console: Console | None = None,
        *,
        state: bool = False,
    ) -> None:
        self.url = url
        #: ``--snapshot``: one row per key (the newest value), not the last messages.
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], float]] | None = (
            {} if state else None
        )
        #: Channels whose next snapshot replaces their rows (after each subscribe).
        self.fresh: set[str] = set()
        self.channels = channels
        self.state = "connecting"
        self.started = time.monotonic()
        self.counts: dict[str, int] = {}
        self.recent: dict[str, deque[float]] = {}
        self.last: deque[dict[str, Any]] = deque(maxlen=10)
        self.events: deque[str] = deque(maxlen=5)
        self.live = Live(self, console=console or Console(stderr=False), refresh_per_second=4)

    def message(self, obj: dict[str, Any], raw: bytes) -> None:
        channel = obj.get("channel", "?")
        if self.rows is not None:
            self._keep(channel, obj)
        self.counts[channel] = self.counts.get(channel, 0) + 1
        self.recent.setdefault(channel, deque(maxlen=10_000)).append(time.monotonic())
        self.last.append(obj)

    def _keep(self, channel: str, obj: dict[str, Any]) -> None:
        assert self.rows is not None
        if channel in self.fresh:
            self.fresh.discard(channel)
            if obj.get("snapshot"):  # a new snapshot replaces the rows; history continues them
                self.rows = {k: v for k, v in self.rows.items() if k[0] != channel}
        where = (channel, str(obj.get("key")))
        if obj.get("type") == "delete":
            self.rows.pop(where, None)
        else:
            self.rows[where] = (obj, time.monotonic())

    def snapshot_end(self, obj: dict[str, Any]) -> None:
        channel = str(obj.get("channel"))
        if self.rows is not None and channel in self.fresh:  # an empty snapshot
            self.fresh.discard(channel)
            self.rows = {k: v for k, v in self.rows.items() if k[0] != channel}
        self.status(_snapshot_said(obj))

    def status(self, text: str) -> None:
        if self.rows is not None and text.startswith("subscribed "):
            self.fresh.add(text.split()[1])
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        if text.startswith(("connected", "subscribed")):
            self.state = "[green]connected[/]"
        elif text.startswith(("closed", "cannot", "reconnecting", "server refused")):
            self.state = f"[red]{text.split(' — ')[0]}[/]"

    def __rich__(self) -> Group:
        now = time.monotonic()
        header = Text.from_markup(
            f"[bold]{self.url}[/]  {self.state}  up {now - self.started:.0f}s"
        )
        channels = Table("channel", "messages", "msg/s (5 s)", box=None)
        for channel, count in sorted(self.counts.items()):
            recent = self.recent[channel]
            while recent and recent[0] < now - 5:
                recent.popleft()
            channels.add_row(channel, str(count), f"{len(recent) / 5:.1f}")
        title = "state (one row per key)" if self.rows is not None else "last messages"
        return Group(
            header, channels, Text(title, style="bold"), self._table(now), *map(Text, self.events)
        )

    def _table(self, now: float) -> Table:
        """The last messages, or with ``--snapshot`` the newest value of each key and its age.

        The data takes what the terminal has left, on one line each.
        """
        table = Table(box=None, expand=True)
        for name in ("channel", "key", "partition:offset"):
            table.add_column(name, no_wrap=True)
        table.add_column("data", no_wrap=True, overflow="ellipsis", ratio=1)
        shown: list[tuple[dict[str, Any], str | None]]
        if self.rows is not None:
            table.add_column("age", no_wrap=True, justify="right")
            shown = [(m, f"{now - at:.0f}s") for _, (m, at) in sorted(self.rows.items())]
        else:
            shown = [(m, None) for m in self.last]
        width = self.live.console.width
        for m, age in shown:
            data = orjson.dumps(m.get("data")).decode()
            cells = [
                str(m.get("channel")), str(m.get("key")),
                f"{m.get('partition')}:{m.get('offset')}",
                data[:width] + ("…" if len(data) > width else ""),
            ]  # fmt: skip
            table.add_row(*cells, *([age] if age is not None else []))
        return table

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)


@dataclass
class _Progress:
    #: Exit after this many messages (0: never).
    count: int
    resume: Resume = field(default_factory=lambda: Resume({}))
    received: int = 0


async def _receive(
    ws: Any, view: Plain | LiveView, channels: list[str], progress: _Progress
) -> int | None:
    """Subscribe, then show what arrives until the connection closes; an exit status or None."""
    failed: set[str] = set()
    resume = progress.resume
    for n, channel in enumerate(channels, 1):
        await ws.send(resume.subscribe(channel, n))
    async for frame in ws:
        raw = frame.encode() if isinstance(frame, str) else frame
        obj = orjson.loads(raw)
        kind = obj.get("type")
        if kind in ("message", "delete"):
            resume.received(obj)
            view.message(obj, raw)
            progress.received += 1
            if progress.count and progress.received >= progress.count:
                return 0
        elif kind == "subscribed":
            channel = str(obj.get("channel"))
            positions = obj.get("positions") or {}
            resume.positioned(channel, positions)
            where = ",".join(f"{p}={o}" for p, o in positions.items())
            view.status(f"subscribed {channel}" + (f" from {where}" if where else ""))
            if obj.get("complete") is False:
                view.status(
                    f"warning: {channel}: some of the history asked for is no longer in Kafka "
                    f"(retention) or over the server's WS_REPLAY_MAX_MESSAGES; starting at {where}"
                )
        elif kind == "snapshot_end":
            view.snapshot_end(obj)
        elif kind in ("gap", "conflated"):
            view.status(describe_notice(obj) or "")
        elif kind == "error":
            failed.add(str(obj.get("channel")))
            view.status(f"{obj.get('channel')}: {obj.get('code')}: {obj.get('message')}")
            if failed >= set(channels):
                view.status("no channel could be subscribed")
                return 1
        else:
            view.status(orjson.dumps(obj).decode())
    return None


async def follow(
    url: str,
    channels: list[str],
    token: str,
    view: Plain | LiveView,
    *,
    count: int,
    reconnect: bool,
    retries: int,
    remint: Any = None,
    start: dict[str, Any] | None = None,
    narrowing: dict[str, Any] | None = None,
    sse: bool = False,
) -> int:
    """Receive until ``count`` messages (0: forever); the exit status.

    ``start`` is the start field of the first subscriptions (``None``: live);
    reconnects resume from the last offsets shown. ``narrowing`` (``filter``,
    ``keys``, ``max_rate``) goes with every subscribe. ``sse``: over ``GET /sse``, whose
    request carries those subscribes, instead of a WebSocket.
    """
    progress = _Progress(count, Resume(start or {}, narrowing))
    backoff = Backoff()
    connected_once = False
    while True:
        try:
            async with SseConnection(url, token) if sse else connect(url, token) as ws:
                connected_once = True
                backoff.reset()
                # A stream is asked for when it is read: only its `subscribed` confirms it.
                view.status(
                    f"asking {url} for a stream (Server-Sent Events)"
                    if sse
                    else f"connected to {url}"
                )
                done = await _receive(ws, view, channels, progress)
                if done is not None:
                    return done
                view.status(describe_close(ws.close_code, ws.close_reason))
                expired = ws.close_reason == protocol.REASON_TOKEN_EXPIRED
        except InvalidStatus as exc:
            view.status(await explain_refusal(exc, url, token))
            if exc.response.status_code in (401, 403) or not reconnect:
                return 1
            expired = False
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            view.status(f"cannot connect to {url}: {exc}")
            if not connected_once and backoff.attempt >= retries:
                return 1
            expired = False
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            view.status(describe_close(rcvd.code if rcvd else 1006, rcvd.reason if rcvd else None))
            expired = bool(rcvd and rcvd.reason == protocol.REASON_TOKEN_EXPIRED)
        if expired:
            if remint is None:
                return 1
            token = remint()
        if not reconnect:
            return 1
        delay = backoff.next()
        view.status(f"reconnecting in {delay:.1f}s")
        await asyncio.sleep(delay)


def tail(
    channel: list[str] = typer.Option(
        ...,
        "--channel",
        "-c",
        metavar="CHANNEL",
        help="Channel to watch (topic or topic:key); repeatable.",
    ),
    url: str = URL_OPTION,
    token: str = TOKEN_OPTION,
    secret: str = SECRET_OPTION,
    secret_file: str = SECRET_FILE_OPTION,
    subject: str = typer.Option(
        "wsrt-tail", "--subject", metavar="SUB", help="sub of a minted token."
    ),
    count: int = typer.Option(
        0, "--count", "-n", metavar="N", help="Exit 0 after this many messages."
    ),
    timeout: float = typer.Option(
        0,
        "--timeout",
        metavar="SECONDS",
        help="Seconds to run; with --count, exit 1 if they did not all arrive.",
    ),
    reconnect: bool = typer.Option(
        True, "--reconnect/--no-reconnect", help="Reconnect after drops."
    ),
    retries: int = typer.Option(
        5, "--retries", metavar="N", help="Failed first connection attempts before giving up."
    ),
    output: str = typer.Option(
        "auto",
        "--output",
        "-o",
        metavar="MODE",
        help="auto (live view on a terminal, else json), live or json.",
    ),
    since: str = typer.Option(
        None,
        "--since",
        metavar="WHEN",
        help="Start this long ago (30s, 5m, 2h, 1d) or at an ISO time (UTC unless it has a zone).",
    ),
    from_offsets: str = typer.Option(
        None,
        "--from-offsets",
        metavar="P=OFFSET,…",
        help="Start at these next offsets per partition: 0=1234,1=88.",
    ),
    rewind: int = typer.Option(
        None, "--rewind", metavar="N", help="Start with the last N messages of each partition."
    ),
    snapshot: bool = typer.Option(
        False,
        "--snapshot",
        help="Start with the newest value of every key (a state topic); on a terminal, "
        "a table with one row per key, updated in place.",
    ),
    filter_: str = typer.Option(
        None,
        "--filter",
        metavar="JSON",
        help="Only the records this filter passes (JSON; docs/protocol.md, 'Filters').",
    ),
    keys: str = typer.Option(
        None, "--keys", metavar="KEY,…", help="Only these keys of each topic channel."
    ),
    max_rate: float = typer.Option(
        None,
        "--max-rate",
        metavar="PER_SECOND",
        help="At most this many messages per second per key; the newest value wins.",
    ),
    sse: bool = typer.Option(
        False, "--sse", help="Read GET /sse (Server-Sent Events) instead of a WebSocket."
    ),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Connect as a client and show the messages of the given channels, live or from history.

    After a reconnect it resumes from the last offsets shown, so a server
    restart leaves no gap and no duplicate. Exit codes: 0 done (--count
    reached, or --timeout without --count), 1 a connection or authentication
    failure, 2 usage.
    """
    if count < 0 or timeout < 0 or output not in ("auto", "live", "json"):
        fail("--count and --timeout must be 0 or more; --output is auto, live or json", EXIT_USAGE)
    start = _start_field(since, from_offsets, rewind, snapshot)
    narrowing = _narrowing(filter_, keys, max_rate)
    settings = settings_or_exit(
        {"WS_URL": url, "WS_TOKEN": token, "WS_AUTH_SECRET": read_secret(secret, secret_file)},
        env_file,
        require_secret=False,
        warn=False,
    )
    quiet_libraries()
    channels = channel_list(channel)

    def mint() -> str:
        return client_token(settings, subject)

    live = output == "live" or (output == "auto" and sys.stdout.isatty())
    view: Plain | LiveView = LiveView(settings.url, channels, state=snapshot) if live else Plain()

    async def run() -> int:
        work = follow(
            settings.url, channels, mint(), view, count=count, reconnect=reconnect,
            retries=retries, remint=None if settings.token else mint, start=start,
            narrowing=narrowing, sse=sse,
        )  # fmt: skip
        return await until_stopped(_within(work, timeout, count, view))

    with view:
        try:
            code = asyncio.run(run())
        except KeyboardInterrupt:  # before the loop's handlers were installed
            code = 0
        except ReaderGone:
            # Nothing more may reach the closed pipe, not even at interpreter exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
    raise typer.Exit(code)


def _snapshot_said(obj: dict[str, Any]) -> str:
    said = f"snapshot of {obj.get('channel')}: {obj.get('keys')} keys"
    if obj.get("complete") is False:
        said += " (warning: incomplete: the server's state store is bounded or not loaded)"
    return said


async def _within(work: Any, seconds: float, count: int, view: Plain | LiveView) -> int:
    """``work``'s exit status, or the one for ``--timeout`` running out (0 means no limit)."""
    if not seconds:
        return int(await work)
    try:
        async with asyncio.timeout(seconds):
            return int(await work)
    except TimeoutError:
        if count:
            view.status(f"timed out after {seconds:g}s before {count} messages arrived")
            return 1
        return 0


async def until_stopped(work: Any) -> int:
    """``work``'s exit status, or 0 once Ctrl-C or SIGTERM arrives.

    Through the loop, as `wsrt dev` and `produce` do, not through
    asyncio.run's own SIGINT handler: that one is installed only when SIGINT
    has Python's default handler, and a process started as a non-interactive
    shell's background job (or by a CI runner) inherits SIGINT *ignored*, so
    Ctrl-C to its process group did nothing at all.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        stopped.cancel()
        return int(task.result())
    task.cancel()  # closes the connection (1000), bounded by its close timeout
    await asyncio.wait({task}, timeout=STOP_SECONDS)
    return 0


def _narrowing(given: str | None, keys: str | None, max_rate: float | None) -> dict[str, Any]:
    """``--filter``, ``--keys`` and ``--max-rate`` as subscribe fields (checked here)."""
    from wsrt.filters import FilterError, keys_filter, parse

    out: dict[str, Any] = {}
    if given is not None:
        try:
            out["filter"] = orjson.loads(given)
            parse(out["filter"], max_bytes=1 << 20)
        except orjson.JSONDecodeError:
            fail(f"--filter is not JSON: {given[:80]!r}", EXIT_USAGE)
        except FilterError as exc:
            fail(f"--filter: {exc}", EXIT_USAGE)
    if keys is not None:
        out["keys"] = [k.strip() for k in keys.split(",") if k.strip()]
        try:
            keys_filter(out["keys"])
        except FilterError as exc:
            fail(f"--keys: {exc}", EXIT_USAGE)
    if max_rate is not None:
        if not 0 < max_rate <= 1000:
            fail("--max-rate must be above 0 and at most 1000", EXIT_USAGE)
        out["max_rate"] = max_rate
    return out


def _start_field(
    since: str | None, offsets: str | None, rewind: int | None, snapshot: bool = False
) -> dict[str, Any]:
    """The start field of the command line's one start option (``{}``: live)."""
    if snapshot:
        if since is not None or rewind is not None:
            fail("--snapshot combines only with --from-offsets", EXIT_USAGE)
        return {"snapshot": True, **_start_field(None, offsets, None)}
    options = {"--since": since, "--from-offsets": offsets, "--rewind": rewind}
    given = [name for name, value in options.items() if value is not None]
    if len(given) > 1:
        fail(f"give one of {', '.join(options)}, not {' and '.join(given)}", EXIT_USAGE)
    try:
        if since is not None:
            return {"since_time": parse_since(since, time.time())}
        if offsets is not None:
            return {"since": parse_offsets(offsets)}
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if rewind is not None:
        if rewind < 0:
            fail("--rewind must be 0 or more", EXIT_USAGE)
        return {"rewind": rewind}
    return {}
