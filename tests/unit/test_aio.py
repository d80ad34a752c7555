"""wsrt.aio.TickBudget: what many tasks may write per event-loop iteration."""

from __future__ import annotations

import asyncio

from wsrt.aio import TickBudget


async def test_many_writers_together_take_at_most_a_budget_per_iteration_first_come_first_served() -> (
    None
):
    budget = TickBudget(per_tick=100)
    iteration = 0
    taken: list[tuple[int, int]] = []  # (iteration, writer) per take
    stop = asyncio.Event()

    async def count_iterations() -> None:
        nonlocal iteration
        while not stop.is_set():
            iteration += 1
            await asyncio.sleep(0)  # one event-loop iteration per turn, counted

    async def writer(n: int) -> None:
        for _ in range(3):
            await budget.take(40)
            taken.append((iteration, n))

    counter = asyncio.create_task(count_iterations())
    await asyncio.gather(*(writer(n) for n in range(10)))
    stop.set()
    await counter
    assert len(taken) == 30
    per_iteration: dict[int, int] = {}
    for at, _ in taken:
        per_iteration[at] = per_iteration.get(at, 0) + 40
    # 40-byte takes against 100 a tick: at most 3 begin in one iteration (the last one
    # may overdraw), and never more than the first writer's share of the queue.
    assert max(per_iteration.values()) <= 3 * 40
    assert len(per_iteration) >= 10
    order = [n for _, n in taken]
    assert sorted(set(order), key=order.index) == list(range(10))  # nobody jumps the queue


async def test_a_cancelled_waiter_takes_nothing_and_holds_up_no_one() -> None:
    budget = TickBudget(per_tick=10)
    # All ask in the same iteration: the first takes it all, the others queue.
    first, second, third, fourth = (asyncio.ensure_future(budget.take(n)) for n in (10, 5, 5, 5))
    await asyncio.sleep(0)  # one iteration: they all asked
    assert first.done() and not any(t.done() for t in (second, third, fourth))
    second.cancel()
    await asyncio.sleep(0)  # the next iteration's budget goes to the waiters
    await asyncio.sleep(0)  # who run in the one after
    assert second.cancelled() and third.done() and fourth.done()  # 5 + 5: nothing to second
