"""At most once, for real: the daemon SIGKILLed at seeded random instants (see crashfuzz)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crashfuzz import fuzz

from reliability.registry import case

KILLS = int(os.environ.get("QTASKS_FUZZ_KILLS", "30"))
SEED = int(os.environ.get("QTASKS_FUZZ_SEED", "20261130"))


GROUP = "exactly once"


@case(
    "sigkill_fuzz_sqlite",
    group=GROUP,
    title="the daemon SIGKILLed at 30 seeded random instants and restarted (SQLite), with "
    "per-second jobs (`catch_up: all` and `latest`), an `overlap: allow` job and a stream of "
    "handed-over requests, some with `retry_interrupted`",
    checks="no body runs twice (per run id, per (job, time) and per request), except a "
    "`retry_interrupted` re-run of a run recorded `interrupted`; every body has a history row "
    "whose status is true; no `succeeded` row without a body; no request lost",
)
@pytest.mark.timeout(900)
def test_sigkill_at_random_instants_sqlite(tmp_path: Path) -> None:
    outcome = fuzz(tmp_path, kills=KILLS, seed=SEED)
    print(outcome.summary())
    assert outcome.bodies > KILLS  # the jobs really ran between the kills
    assert outcome.problems == []
