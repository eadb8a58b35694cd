"""``Capacity`` (max_concurrent) under cancellation: a seeded fuzzer of acquires, cancels of
waiting and holding tasks, and releases, in every order a stop can make.

Invariants: no call raises; a unit is never lost or doubled (every unit comes back: none in
use at the end, and never fewer counted than held); the limit is never exceeded; no task
holds twice. A stop that cancelled a waiter just before a holder released used to hand the
unit to the cancelled waiter: the release raised, the holder's run was never recorded, and
the waiter's task failed with ``ValueError: ... is not in deque`` (its run left ``claimed``).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from qtasks_cli.occupancy import Capacity


async def _scenario(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.randint(1, 4)
    cap = Capacity(limit)
    holding: set[int] = set()
    order: list[int] = []
    release_now: dict[int, asyncio.Event] = {}

    async def worker(n: int) -> None:
        await cap.acquire()
        holding.add(n)
        order.append(n)
        try:
            await release_now[n].wait()
        finally:
            holding.discard(n)
            cap.release()

    tasks: dict[int, asyncio.Task[None]] = {}
    for n in range(rng.randint(2, 30)):
        release_now[n] = asyncio.Event()
        tasks[n] = asyncio.create_task(worker(n))
    for _ in range(rng.randint(1, 60)):
        await asyncio.sleep(0) if rng.random() < 0.5 else None
        # A unit is counted when it is handed over, before its waiter resumes to hold it.
        assert len(holding) <= cap.in_use <= limit, (seed, cap.in_use, holding)
        n = rng.choice(list(tasks))
        action = rng.random()
        if action < 0.4:
            tasks[n].cancel()  # waiting or holding: as a stop cancels runs
        elif action < 0.8:
            release_now[n].set()  # a holder ends (or will, once it holds)
        if rng.random() < 0.3:
            # A cancel and a release in the same turn of the loop: what a stop makes.
            m = rng.choice(list(tasks))
            tasks[m].cancel()
            release_now[rng.choice(list(tasks))].set()
    for event in release_now.values():
        event.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 30)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, asyncio.CancelledError) for e in errors), (seed, errors)
    assert cap.in_use == 0 and cap.waiting == 0, (seed, cap.in_use, cap.waiting)
    assert len(order) == len(set(order))


@pytest.mark.parametrize("seed", range(300))
def test_capacity_never_loses_or_doubles_a_unit(seed: int) -> None:
    asyncio.run(_scenario(seed))
