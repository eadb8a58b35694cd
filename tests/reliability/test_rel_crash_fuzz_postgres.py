"""The crash-point fuzzer of test_rel_crash_fuzz.py against a PostgreSQL node (a file of its
own, so that the two long fuzzers run side by side)."""

from __future__ import annotations

from pathlib import Path

import pytest
from crashfuzz import fuzz
from pg import fresh_schema, postgres_url

from reliability.registry import case
from reliability.test_rel_crash_fuzz import GROUP, KILLS, SEED


@case(
    "sigkill_fuzz_postgres",
    group=GROUP,
    title="the same crash-point fuzzer against a PostgreSQL node",
    checks="as `sigkill_fuzz_sqlite`",
)
@pytest.mark.timeout(900)
def test_sigkill_at_random_instants_postgres(tmp_path: Path) -> None:
    url = postgres_url()
    with fresh_schema(url) as schema:
        outcome = fuzz(
            tmp_path,
            kills=KILLS,
            seed=SEED + 1,
            env_extra={"QTASKS_STATE": url},
            settings=f"  schema: {schema}\n",
        )
    print(outcome.summary())
    assert outcome.bodies > KILLS
    assert outcome.problems == []
