"""What a long step shows while a person waits (a download, a load test, the benchmarks).

On a terminal :class:`Progress` keeps one status line that it redraws in place
(``\\r`` and erase-line), at most ten times a second. Piped (CI logs, ``| tee``)
it writes only whole lines: the step's start and its end, never a carriage
return or an escape sequence, so a log stays readable and grep-able::

    progress = Progress("wsrt loadtest")
    progress.start("running k6 against ws://…")
    progress.update("12s / 30s, 10 connections, 4,210 messages")   # terminal only
    progress.finish("k6 done in 30s")
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from wsrt.config import tool_setting

#: Fewest seconds between two redraws of the status line.
REDRAW_SECONDS = 0.1


def is_terminal(stream: TextIO) -> bool:
    """A person watches ``stream``: a TTY, and not a dumb terminal."""
    try:
        return stream.isatty() and tool_setting("TERM") != "dumb"
    except ValueError:  # closed
        return False


class Progress:
    """A status line on a terminal; plain start and finish lines when piped."""

    def __init__(self, prefix: str, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.live = is_terminal(self.stream) if live is None else live
        self._drawn = False
        self._last = 0.0

    def _line(self, text: str) -> str:
        return f"{self.prefix}: {text}" if self.prefix else text

    def start(self, text: str) -> None:
        """A step begins: a line in both modes."""
        self._erase()
        self.stream.write(self._line(text) + "\n")
        self.stream.flush()

    def update(self, text: str, *, force: bool = False) -> None:
        """Figures so far: redrawn in place on a terminal; nothing when piped."""
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last < REDRAW_SECONDS:
            return
        self._last = now
        width = shutil.get_terminal_size((100, 24)).columns
        line = self._line(text)
        if len(line) >= width:
            line = line[: width - 2] + "…"
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self._drawn = True

    def finish(self, text: str) -> None:
        """The step ended: its status line is replaced by ``text``, a line in both modes."""
        self.start(text)

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
