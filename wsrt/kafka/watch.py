"""The consumer watchdog's judgement, Sans-I/O (docs/design.md, "Never silent").

The source reports what it sees — the fetch loop turned, a fetch delivered
records, a probe found records waiting (log end beyond the position) — and
:meth:`Watch.verdict` says whether the consumer must be replaced, and why:

* ``loop_stalled``: the fetch loop has not turned for ``stall`` seconds;
* ``stalled``: records have been waiting for ``stall`` seconds and no fetch
  delivered any in that time.

Time is whatever clock the caller passes (the event loop's), so the rules
are unit-tested as plain calls. :class:`SourceHealth` turns what the source
knows into one readiness state.
"""

from __future__ import annotations

from wsrt.health import Readiness, Status

LOOP_STALLED = "loop_stalled"
STALLED = "stalled"


class Watch:
    def __init__(self, stall: float, now: float) -> None:
        self.stall = stall
        self.last_turn = now
        #: Since when records have waited with nothing delivered; ``None``: nothing waits.
        self.waiting_since: float | None = None

    def turned(self, now: float) -> None:
        self.last_turn = now

    def delivered(self, now: float) -> None:
        """A fetch handed records to the hub: the consumer makes progress."""
        self.last_turn = now
        if self.waiting_since is not None:
            self.waiting_since = now

    def observed(self, now: float, waiting: bool | None) -> None:
        """A probe result: records wait (True), none do (False), or unknown (None: broker away)."""
        if not waiting:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now

    def verdict(self, now: float) -> str | None:
        if now - self.last_turn >= self.stall:
            return LOOP_STALLED
        if self.waiting_since is not None and now - self.waiting_since >= self.stall:
            return STALLED
        return None


class SourceHealth:
    """Readiness from two inputs: where the assignment stands, and whether brokers answer.

    Brokers that cannot be reached override the assignment's state; the
    assignment reaching ``ok`` (or any fetch answering) shows they can.
    """

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self.ready_once = False
        self._placement: tuple[Status, str] = (Status.STARTING, "starting up")
        self._unreachable: str | None = None
        self._problem = False
        #: Something else holds readiness back once placed (loading state topics).
        self._held: str | None = None
        #: Kafka refuses this client something (an ACL): not ready until a fetch succeeds,
        #: however often the assignment that precedes the failing fetch succeeds.
        self._denied: str | None = None
        #: Partitions nobody leads (an outage), or what a cluster that serves them all lacks.
        self._leaderless: str | None = None
        self._note: str | None = None
        #: The Schema Registry does not answer: the schema formats' records wait.
        self._registry: str | None = None

    def placed(self, status: Status, reason: str, *, problem: bool = False) -> None:
        """Where the assignment stands; ``problem``: a failure to report as a warning."""
        self._placement = (status, reason)
        self._problem = problem
        if status is Status.OK:
            self.ready_once = True
            self._unreachable = None
        self._apply()

    def degrade(self, reason: str) -> None:
        self._placement = (Status.DEGRADED, reason)
        self._problem = True
        self._apply()

    def unreachable(self, reason: str) -> None:
        self._unreachable = reason
        self._apply()

    def hold(self, reason: str | None) -> None:
        """Not ready for ``reason`` even once placed (``None``: no longer held)."""
        self._held = reason
        self._apply()

    def denied(self, reason: str) -> None:
        self._denied = reason
        self._apply()

    def allowed(self) -> None:
        """A fetch succeeded: whatever Kafka refused before, it allows now."""
        if self._denied is not None:
            self._denied = None
            self._apply()

    def replication(self, outage: str | None, note: str | None) -> None:
        """What the last metadata answer said of leaders and replicas."""
        if (outage, note) != (self._leaderless, self._note):
            self._leaderless, self._note = outage, note
            self._apply()

    def registry(self, reason: str | None) -> None:
        """The Schema Registry failed (``reason``) or answers again (``None``)."""
        if reason != self._registry:
            self._registry = reason
            self._apply()

    def reachable(self) -> None:
        if self._unreachable is not None:
            self._unreachable = None
            self._apply()

    def _apply(self) -> None:
        if self._unreachable is not None:
            self.readiness.set(Status.DEGRADED, self._unreachable, problem=True)
        elif self._denied is not None:
            status = Status.DEGRADED if self.ready_once else Status.STARTING
            self.readiness.set(status, self._denied, problem=True)
        elif self._registry is not None:
            self.readiness.set(Status.DEGRADED, self._registry, problem=True)
        elif self._held is not None and self._placement[0] is Status.OK:
            self.readiness.set(Status.STARTING, self._held)
        elif self._leaderless is not None and self._placement[0] is Status.OK:
            self.readiness.set(Status.DEGRADED, self._leaderless, problem=True)
        elif self._note is not None and self._placement == (Status.OK, ""):
            self.readiness.set(Status.OK, self._note)
        else:
            self.readiness.set(*self._placement, problem=self._problem)
