"""Two asyncio helpers shared by the Kafka source and the client commands.

* :func:`abandon_after`: await a coroutine for a bounded time, and leave it
  running on its own when it takes longer. aiokafka shields parts of its
  coroutines (start, stop, commit) from cancellation, so a plain timeout would
  wait for them anyway. :func:`detach` is that "on its own" for work nobody
  waits for from the start (closing a replaced consumer or a client).
* :class:`Backoff`: exponential reconnect delays with full jitter, so that a
  fleet of clients (or replicas) does not retry in lockstep.
* :class:`TickBudget`: bytes that many tasks may write per event-loop
  iteration together, so that bulk writes never make one iteration long.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Work running on its own (:func:`detach`); kept referenced until it ends.
_detached: set[asyncio.Future[Any]] = set()


class Abandoned(TimeoutError):
    """The awaited work did not finish in time; it goes on, unobserved."""


async def abandon_after(work: Awaitable[_T], seconds: float, what: str = "call") -> _T:
    """The result of ``work``, or :class:`Abandoned` after ``seconds``.

    The work runs as its own task: on time-out it is neither awaited nor
    cancelled (it may ignore cancellation), its eventual exception is
    retrieved so that nothing logs "exception was never retrieved".
    """
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        detach(task)
        raise Abandoned(f"{what}: no answer within {seconds:g}s")
    return task.result()


def detach(work: Awaitable[Any]) -> asyncio.Future[Any]:
    """Run ``work`` on its own, nobody waiting: referenced until it ends, its
    exception retrieved (a close or stop that fails has nobody to tell)."""
    task = asyncio.ensure_future(work)
    _detached.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Future[Any]) -> None:
    _detached.discard(task)
    if not task.cancelled():
        task.exception()


class Backoff:
    """Delays ``initial · 2ⁿ`` capped at ``maximum``, each drawn uniformly from [½·d, d]."""

    def __init__(
        self, initial: float = 0.5, maximum: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """A success: the next failure waits the initial delay again."""
        self.attempt = 0


class TickBudget:
    """Bytes that every task together may write per event-loop iteration; the rest wait.

    A thousand snapshots at once would otherwise write gigabytes in one
    iteration while the live stream waits behind them. Waiters are let in
    first come, first served, a budget's worth per iteration, so the cost of
    waiting stays a few wake-ups per iteration however many wait.
    """

    def __init__(self, per_tick: int) -> None:
        self.per_tick = per_tick
        self.left = per_tick
        self._waiting: deque[tuple[asyncio.Future[None], int]] = deque()
        self._tick_pending = False

    async def take(self, size: int) -> None:
        """Return once ``size`` more bytes may be written in this iteration."""
        if self.left > 0 and not self._waiting:
            self.left -= size
            self._next_tick()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((waiter, size))
        self._next_tick()
        await waiter

    def _next_tick(self) -> None:
        if not self._tick_pending:
            self._tick_pending = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_pending = False
        self.left = self.per_tick
        waiting = self._waiting
        while waiting and self.left > 0:
            waiter, size = waiting.popleft()
            if not waiter.done():  # a waiter cancelled meanwhile takes nothing
                self.left -= size
                waiter.set_result(None)
        if waiting or self.left < self.per_tick:
            self._next_tick()
