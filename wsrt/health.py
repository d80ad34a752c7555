"""Readiness as ``/healthz`` reports it: one state shared by gateway and consumer."""

from __future__ import annotations

from dataclasses import dataclass

STARTING = "starting"
OK = "ok"
DEGRADED = "degraded"
DRAINING = "draining"


@dataclass
class Readiness:
    """``status`` is ``ok`` only when a message produced now reaches today's subscribers."""

    status: str = STARTING
    reason: str = "starting up"

    @property
    def ready(self) -> bool:
        return self.status == OK

    @property
    def draining(self) -> bool:
        return self.status == DRAINING

    def set(self, status: str, reason: str = "") -> bool:
        """Change state (draining is final); True when something changed."""
        if self.status == DRAINING or (status, reason) == (self.status, self.reason):
            return False
        self.status, self.reason = status, reason
        return True
