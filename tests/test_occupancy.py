"""``Occupancy``, the one record of who holds what: a seeded fuzzer of runs that begin, wait
for a slot, hold it and end, and of threads that outlive their run and return, checked at
every step against a plain model of the same operations."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from qtasks_cli.occupancy import Occupancy

JOBS = ("a", "b", "c")


async def _fuzz(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.randint(1, 3)
    freed: list[str] = []
    occupancy = Occupancy(limit, on_freed=freed.append)
    runs: list[tuple[str, asyncio.Task[None], asyncio.Event]] = []
    holding: Counter[str] = Counter()  # the model: runs holding a slot, per job
    stuck: Counter[tuple[str, bool]] = Counter()  # threads (False) and tasks (True), per job

    async def run(job: str, release: asyncio.Event) -> None:
        occupancy.begin(job)
        try:
            await occupancy.take_slot(job)
            holding[job] += 1
            try:
                await release.wait()
            finally:
                holding[job] -= 1
                occupancy.give_slot()
        finally:
            occupancy.end(job)

    for _ in range(200):
        action = rng.choice(("start", "start", "end", "cancel", "outlive", "return"))
        job = rng.choice(JOBS)
        if action == "start":
            release = asyncio.Event()
            runs.append((job, asyncio.create_task(run(job, release)), release))
        elif action == "end" and runs:  # its body ends once it has a slot
            runs[rng.randrange(len(runs))][2].set()
        elif action == "cancel" and runs:
            job, task, release = runs.pop(rng.randrange(len(runs)))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif action == "outlive":
            task_kind = rng.random() < 0.5
            occupancy.outlived(job, task=task_kind)
            stuck[(job, task_kind)] += 1
        elif action == "return" and +stuck:
            key = rng.choice(sorted(+stuck))
            occupancy.returned(key[0], task=key[1])
            stuck[key] -= 1
            assert freed[-1] == key[0]
        for _ in range(10):
            await asyncio.sleep(0)  # let the runs take their slots, and end
        runs = [run for run in runs if not run[1].done()]
        _check(occupancy, limit, runs, holding, stuck, seed)

    for (job, task_kind), count in list(stuck.items()):
        for _ in range(count):
            occupancy.returned(job, task=task_kind)
    for _, _, release in runs:
        release.set()
    await asyncio.wait_for(asyncio.gather(*(task for _, task, _ in runs)), 30)
    assert occupancy.holders() == [] and occupancy.running == occupancy.waiting == 0
    assert occupancy.capacity.in_use == 0 and occupancy.zombies == 0, seed


def _check(
    occupancy: Occupancy,
    limit: int,
    runs: list[tuple[str, asyncio.Task[None], asyncio.Event]],
    holding: Counter[str],
    stuck: Counter[tuple[str, bool]],
    seed: int,
) -> None:
    live = Counter(job for job, _, _ in runs)
    zombies = sum(stuck.values())
    assert occupancy.running == sum(holding.values()), seed
    assert occupancy.waiting == sum(live.values()) - sum(holding.values()), seed
    assert occupancy.zombies == zombies, seed
    assert occupancy.capacity.in_use == sum(holding.values()) + zombies, seed
    # Nobody waits while a slot is free (FIFO hand-over, Capacity).
    assert occupancy.waiting == 0 or occupancy.capacity.in_use >= limit, seed
    for job in JOBS:
        held = occupancy.of(job)
        threads, tasks = stuck[(job, False)], stuck[(job, True)]
        assert (held.running, held.stuck, held.stuck_tasks) == (
            live[job],
            threads + tasks,
            tasks,
        ), seed
        why = occupancy.busy(job)
        if holding[job]:
            assert why == "previous run still running", seed
        elif live[job]:
            assert why is not None and "free slot" in why, seed
        elif threads:
            assert why is not None and "thread" in why, seed
        elif tasks:
            assert why is not None and "ignored its cancellation" in why, seed
        else:
            assert why is None, seed
    expected = sorted(job for job in JOBS if live[job] or stuck[(job, False)] + stuck[(job, True)])
    assert occupancy.holders() == expected, seed


@pytest.mark.parametrize("seed", range(40))
def test_the_counts_follow_every_run_and_every_stuck_thread(seed: int) -> None:
    asyncio.run(_fuzz(seed))


def test_a_shared_zero_record_for_a_job_holding_nothing() -> None:
    occupancy = Occupancy(1)
    assert occupancy.of("nobody") == occupancy.of("else")
    assert occupancy.busy("nobody") is None and occupancy.holders() == []


def test_capacity_resize_hands_new_units_to_waiters_and_shrinks_without_taking_back() -> None:
    from qtasks_cli.occupancy import Capacity

    async def scenario() -> None:
        cap = Capacity(1)
        await cap.acquire()
        waiters = [asyncio.ensure_future(cap.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        cap.resize(3)
        await asyncio.sleep(0)
        assert [w.done() for w in waiters] == [True, True, False]
        assert cap.in_use == 3
        cap.resize(1)  # units held stay held; the last waiter waits for the new limit
        cap.release()
        cap.release()
        await asyncio.sleep(0)
        assert not waiters[2].done() and cap.in_use == 1
        cap.release()
        await asyncio.sleep(0)
        assert waiters[2].done() and cap.in_use == 1

    asyncio.run(scenario())
