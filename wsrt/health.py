"""Readiness and liveness as ``/healthz`` and ``/livez`` report them.

One :class:`Readiness` is shared by the gateway (which answers) and the Kafka
source (which knows). It logs each change of state once, itself, so callers
just say what is true now.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Protocol


class Status(enum.StrEnum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"
    DRAINING = "draining"


class _Log(Protocol):
    def log(self, level: int, event: str, message: str, **fields: object) -> None: ...


class Readiness:
    """``status`` is ``ok`` only when a message produced now reaches today's subscribers."""

    def __init__(self, log: _Log | None = None) -> None:
        self.status = Status.STARTING
        self.reason = "starting up"
        self._log = log

    @property
    def ready(self) -> bool:
        return self.status is Status.OK

    @property
    def draining(self) -> bool:
        return self.status is Status.DRAINING

    def set(self, status: Status, reason: str = "", *, problem: bool = False) -> bool:
        """Change state (draining is final); True when something changed, which is logged.

        ``problem`` logs a warning even while starting (Kafka cannot be reached).
        """
        if self.status is Status.DRAINING or (status, reason) == (self.status, self.reason):
            return False
        self.status, self.reason = status, reason
        if self._log is not None:
            quiet = status in (Status.OK, Status.STARTING) and not problem
            level = logging.INFO if quiet else logging.WARNING
            self._log.log(
                level, "readiness", f"readiness {status}", status=str(status), reason=reason or None
            )
        return True


class Liveness:
    """``/livez``: the consumer loop turned within ``limit`` s (docs/design.md, "Never silent").

    The loop calls :meth:`beat` every turn; a wedged loop stops beating and the
    orchestrator restarts the process. ``clock`` is the event loop's time.
    """

    def __init__(self, limit: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self.last_beat = clock()

    def beat(self) -> None:
        self.last_beat = self._clock()

    @property
    def silent_for(self) -> float:
        return self._clock() - self.last_beat

    @property
    def alive(self) -> bool:
        return self.silent_for <= self.limit
