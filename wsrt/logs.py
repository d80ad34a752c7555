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

import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

PREFIX = "[ws-realtime]"
_FIELDS = "wsrt_fields"
_EVENT = "wsrt_event"


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


class LibraryFlood(logging.Filter):
    """At most one record per message template per ``interval`` from the libraries.

    aiokafka logs every failed reconnect attempt (ten a second while a broker
    is down); one line per template every few seconds, with the count of what
    was suppressed, tells the same story.
    """

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__()
        self.interval = interval
        self._next: dict[tuple[str, object], float] = {}
        self._suppressed: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "wsrt" or record.name.startswith("wsrt."):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._next[key] = now + self.interval
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            setattr(record, _FIELDS, {"suppressed": suppressed})
        return True


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send wsrt's (and the libraries') log records to stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(LibraryFlood())
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

    What is left out is counted and reported on the next line that passes.
    """

    def __init__(self, log: EventLogger, interval: float = 5.0, burst: int = 1) -> None:
        self._log = log
        self._interval = interval
        self._burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._suppressed = 0

    def log(self, level: int, event: str, message: str, **fields: Any) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return
        self._tokens -= 1.0
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            self._suppressed = 0
        self._log.log(level, event, message, **fields)

    def warning(self, event: str, message: str, **fields: Any) -> None:
        self.log(logging.WARNING, event, message, **fields)
