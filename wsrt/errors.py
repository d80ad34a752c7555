"""The one error root of wsrt, and the errors that cross module boundaries."""

from __future__ import annotations


class WsrtError(Exception):
    """Base class of every error wsrt raises on purpose."""


class ConfigError(WsrtError):
    """An invalid setting. ``str()`` is the one line an operator sees."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def unreachable_words(exc: BaseException) -> str:
    """Why an HTTP request got no answer, in words (``connection refused``, ``timed out``)."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__
