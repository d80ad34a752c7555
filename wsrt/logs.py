"""Structured log lines: ``[ws-realtime]`` text or one JSON object per line.

Code logs events with stable names and fields::

    log.info("connection_closed", "connection closed", subject="alice", code=1008)

In text mode this prints ``[ws-realtime] 2026-… INFO connection closed
subject=alice code=1008``; with ``WS_LOG_FORMAT=json`` it prints
``{"ts": …, "level": "info", "event": "connection_closed", …}``. Noisy events
go through :class:`RateLimited`, which lets one line through per interval and
reports how many it suppressed. No caller passes a token or a secret here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

PREFIX = "[ws-realtime]"
_FIELDS = "wsrt_fields"
_EVENT = "wsrt_event"
#: Marks a held library record written when its interval ended.
_FLUSHED = "wsrt_flushed"


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


#: What a terminal could act on: C0 and C1 controls, DEL, bidi and line
#: controls. Client-supplied values (channels, subjects, ids) never reach the
#: log with these raw, in either format: a channel like ``"\x1b]0;pwned\x07"``
#: or ``"\u202eEVIL"`` must not retitle or reorder the terminal of whoever tails it.
_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_ESCAPE = re.compile(f"[{_CONTROLS}]")
#: Values with these are quoted in the text format.
_QUOTE = re.compile(f'[{_CONTROLS}\\s"=\\\\]')


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


def _text(value: Any) -> str:
    """A field value for the text format: bare when harmless, else quoted and escaped."""
    text = str(value)
    if text and not _QUOTE.search(text):
        return text
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{_ESCAPE.sub(_escape, quoted)}"'


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        parts = [PREFIX, _timestamp(record), record.levelname, record.getMessage()]
        parts += [f"{k}={_text(v)}" for k, v in fields.items() if v is not None]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, _EVENT, record.name),
            "message": record.getMessage(),
        }
        obj.update((k, v) for k, v in getattr(record, _FIELDS, {}).items() if v is not None)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        # orjson escapes C0 controls only; C1 and bidi controls become \uXXXX too.
        return _ESCAPE.sub(_escape, orjson.dumps(obj, default=str).decode())


def _later(delay: float, callback: Callable[[], None]) -> None:
    """Call ``callback`` in ``delay`` seconds: on the running event loop, else on a timer thread."""
    try:
        asyncio.get_running_loop().call_later(delay, callback)
    except RuntimeError:
        timer = threading.Timer(delay, callback)
        timer.daemon = True
        timer.start()


#: Library lines that wsrt says itself, in plain words (readiness names the
#: broker and why it cannot be reached): dropped, not rate-limited.
_SAID_BY_WSRT = (("aiokafka", "Unable connect to"),)


class LibraryFlood(logging.Filter):
    """At most one record per message template per ``interval`` from the libraries.

    aiokafka logs every failed reconnect attempt (ten a second while a broker
    is down); one line per template every few seconds, with the count of what
    was suppressed, tells the same story. When nothing follows, the last
    suppressed record is still written when its interval ends, with the count
    of the others.
    """

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__()
        self.interval = interval
        self._next: dict[tuple[str, object], float] = {}
        self._suppressed: dict[tuple[str, object], list[logging.LogRecord]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "wsrt" or record.name.startswith("wsrt.") or _FLUSHED in vars(record):
            return True
        if any(
            record.name.startswith(n) and str(record.msg).startswith(m) for n, m in _SAID_BY_WSRT
        ):
            return False
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(key, 0.0):
                held = self._suppressed.setdefault(key, [])
                if not held:
                    _later(self._next[key] - now, lambda: self._flush(key))
                held.append(record)
                return False
            self._next[key] = now + self.interval
            suppressed = len(self._suppressed.pop(key, ()))
        if suppressed:
            setattr(record, _FIELDS, {**getattr(record, _FIELDS, {}), "suppressed": suppressed})
        return True

    def _flush(self, key: tuple[str, object]) -> None:
        with self._lock:
            held = self._suppressed.pop(key, [])
            if not held:
                return  # a record passed meanwhile and carried the count
            self._next[key] = time.monotonic() + self.interval
        last = held[-1]
        if len(held) > 1:
            setattr(last, _FIELDS, {**getattr(last, _FIELDS, {}), "suppressed": len(held) - 1})
        setattr(last, _FLUSHED, True)
        logging.getLogger(last.name).handle(last)


class _Worker(logging.Filter):
    """Every line of a worker (WS_WORKERS) says which one: they share one stderr."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, _FIELDS, {**getattr(record, _FIELDS, {}), "worker": self.index})
        return True


def setup_logging(fmt: str = "text", level: str = "INFO", worker: int | None = None) -> None:
    """Send wsrt's (and the libraries') log records to stderr in ``fmt``.

    ``worker``: this process is that worker of several; each line carries ``worker=``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(LibraryFlood())
    if worker is not None:
        handler.addFilter(_Worker(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter stays out unless it is a real problem; their lines would
    # also lack our fields.
    for name in ("aiokafka", "kafka", "websockets"):
        logging.getLogger(name).setLevel(max(logging.ERROR, logging.getLevelName(level)))


class EventLogger:
    """A thin layer over :mod:`logging` that carries an event name and fields."""

    def __init__(self, name: str = "wsrt") -> None:
        self._logger = logging.getLogger(name)

    def log(self, level: int, event: str, message: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, message, extra={_EVENT: event, _FIELDS: fields})

    def debug(self, event: str, message: str, **fields: Any) -> None:
        self.log(logging.DEBUG, event, message, **fields)

    def info(self, event: str, message: str, **fields: Any) -> None:
        self.log(logging.INFO, event, message, **fields)

    def warning(self, event: str, message: str, **fields: Any) -> None:
        self.log(logging.WARNING, event, message, **fields)

    def error(self, event: str, message: str, **fields: Any) -> None:
        self.log(logging.ERROR, event, message, **fields)

    def exception(
        self, event: str, message: str, exc_info: BaseException | bool = True, **fields: Any
    ) -> None:
        """An error line with the traceback of ``exc_info`` (default: the one being handled)."""
        self._logger.error(message, exc_info=exc_info, extra={_EVENT: event, _FIELDS: fields})


class RateLimited:
    """At most ``burst`` lines at once, then one per ``interval`` seconds, for one noisy event.

    What is left out is counted and reported on the next line that passes; when
    nothing follows, the last line left out is written once a line may pass
    again, carrying the count of the others.
    """

    def __init__(self, log: EventLogger, interval: float = 5.0, burst: int = 1) -> None:
        self._log = log
        self._interval = interval
        self._burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._suppressed = 0
        self._held: tuple[int, str, str, dict[str, Any]] | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now

    def log(self, level: int, event: str, message: str, **fields: Any) -> None:
        self._refill()
        if self._tokens < 1.0:
            if not self._suppressed:
                _later((1.0 - self._tokens) * self._interval, self._flush)
            self._suppressed += 1
            self._held = (level, event, message, fields)
            return
        self._tokens -= 1.0
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            self._suppressed, self._held = 0, None
        self._log.log(level, event, message, **fields)

    def _flush(self) -> None:
        if self._held is None:
            return  # a line passed meanwhile and carried the count
        level, event, message, fields = self._held
        others = self._suppressed - 1
        self._suppressed, self._held = 0, None
        self._refill()
        self._tokens = max(0.0, self._tokens - 1.0)
        self._log.log(level, event, message, **fields, **({"suppressed": others} if others else {}))

    def warning(self, event: str, message: str, **fields: Any) -> None:
        self.log(logging.WARNING, event, message, **fields)
