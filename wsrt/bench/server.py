"""A real ``wsrt serve`` process, observed through its JSON log lines.

The server runs as ``python -m wsrt serve`` with ``WS_LOG_FORMAT=json`` (port
0 of 127.0.0.1 unless told otherwise); a reader thread parses each log line
and wakes whoever waits for an event (``listening``, ``readiness`` …). The
tests and the benchmarks wait on those events, never on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsrt.process import terminate

EVENT_TIMEOUT = 60.0

Event = dict[str, Any]


class ServerProcess:
    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        secret: str = "wsrt-harness-secret-0123456789abcdef",
    ) -> None:
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "WS_AUTH_SECRET": secret,
            "WS_BIND_ADDRESS": "127.0.0.1:0",
            "WS_KAFKA_BROKERS": bootstrap,
            "WS_KAFKA_TOPICS": ",".join(topics),
            "WS_LOG_FORMAT": "json",
            "WS_LOG_LEVEL": "DEBUG",
            "WS_SHUTDOWN_TIMEOUT_SECONDS": "10",
            "WS_KAFKA_FETCH_MAX_WAIT_SECONDS": "0.05",
            "WS_KAFKA_METADATA_REFRESH_SECONDS": "2",
            **(env or {}),
        }
        self.args = args or []
        self.cwd = cwd
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsrt", "serve", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        listening = self.wait_for("listening")
        self.port = listening["port"]
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.raw.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "raw", "message": line.rstrip()}
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "process_exited"})
            self._cond.notify_all()

    def wait_for(
        self,
        event: str,
        predicate: Callable[[Event], bool] = lambda e: True,
        timeout: float = EVENT_TIMEOUT,
        start: int = 0,
    ) -> Event:
        """The first ``event`` log line (from index ``start``) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for e in self.events[seen:]:
                    if e.get("event") == event and predicate(e):
                        return e
                    if e.get("event") == "process_exited" and event != "process_exited":
                        raise AssertionError(f"server exited before {event}:\n{self.log_text()}")
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {event} event within {timeout}s:\n{self.log_text()}")
                self._cond.wait(remaining)

    def mark(self) -> int:
        """Index to wait for events that happen after now."""
        with self._cond:
            return len(self.events)

    def wait_ready(self) -> ServerProcess:
        self.wait_for("readiness", lambda e: e.get("status") == "ok")
        return self

    def log_text(self) -> str:
        with self._cond:
            return "".join(self.raw[-80:])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=20)
