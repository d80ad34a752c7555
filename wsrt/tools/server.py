"""A real ``wsrt serve`` process, observed through its JSON log lines.

The server runs as ``python -m wsrt serve`` with ``WS_LOG_FORMAT=json`` (port
0 of 127.0.0.1 unless told otherwise); :class:`wsrt.process.Child` parses each
log line and wakes whoever waits for an event (``listening``, ``readiness`` …).
The tests and the benchmarks wait on those events, never on time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsrt.process import Child

EVENT_TIMEOUT = 60.0

Event = dict[str, Any]


def _event(line: str) -> Event:
    try:
        event: Event = json.loads(line)
    except ValueError:
        return {"event": "raw", "message": line.rstrip()}
    return event if isinstance(event, dict) else {"event": "raw", "message": line.rstrip()}


class ServerProcess:
    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        secret: str = "wsrt-harness-secret-0123456789abcdef",
        command: list[str] | None = None,
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
        self.command = command or [sys.executable, "-m", "wsrt", "serve"]
        self.args = args or []
        self.cwd = cwd
        self.child: Child[Event] | None = None
        self.port: int | None = None
        #: Every log line as printed (tests check that no secret appears).
        self.raw: list[str] = []

    def _parse(self, line: str) -> Event:
        self.raw.append(line)
        return _event(line)

    def start(self) -> ServerProcess:
        self.child = Child(
            [*self.command, *self.args], parse=self._parse, env=self.env, cwd=self.cwd
        )
        self.child.start()
        listening = self.wait_for("listening")
        self.port = listening["port"]
        return self

    @property
    def events(self) -> list[Event]:
        return self.child.items if self.child is not None else []

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def wait_for(
        self,
        event: str,
        predicate: Callable[[Event], bool] = lambda e: True,
        timeout: float = EVENT_TIMEOUT,
        start: int = 0,
    ) -> Event:
        """The first ``event`` log line (from index ``start``) that satisfies ``predicate``."""
        assert self.child is not None
        found = self.child.wait_for(
            lambda e: e.get("event") == event and predicate(e), timeout, start
        )
        if found is None:
            what = "server exited before" if self.child.ended else f"within {timeout}s no"
            raise AssertionError(f"{what} {event} event:\n{self.log_text()}")
        return found

    def mark(self) -> int:
        """Index to wait for events that happen after now."""
        assert self.child is not None
        return self.child.mark()

    def wait_ready(self) -> ServerProcess:
        self.wait_for("readiness", lambda e: e.get("status") == "ok")
        return self

    def log_text(self) -> str:
        return "".join(self.raw[-80:])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.child is not None
        self.child.signal(sig)

    def poll(self) -> int | None:
        return self.child.poll() if self.child is not None else None

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.child is not None
        return self.child.wait_exit(timeout)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=20)
