"""POSIX TZ rules against the C library: a seeded fuzzer over TZ strings, valid and not.

The reference is glibc's own tzset(3), through ``time.localtime()`` in a child process with
``TZ`` set. The invariant: every TZ string qtasks accepts gives the C library's UTC offset at
every instant tried; whatever it cannot match, it refuses with a one-line ZoneError (never a
traceback, never UTC in silence)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from conftest import clean_env, run_qtasks

from qtasks_cli.zones import ZoneError, get_zone, machine_zone

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc is the reference")

UTC = timezone.utc
LIBC = """
import json, os, sys, time
out = []
instants = json.loads(sys.argv[1])
for rule in json.loads(sys.stdin.read()):
    os.environ["TZ"] = rule
    time.tzset()
    out.append([time.localtime(t).tm_gmtoff for t in instants])
print(json.dumps(out))
"""


def libc_offsets(rules: list[str], instants: list[int]) -> list[list[int]]:
    done = subprocess.run(
        [sys.executable, "-c", LIBC, json.dumps(instants)],
        input=json.dumps(rules),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=True,
    )
    result: list[list[int]] = json.loads(done.stdout)
    return result


def random_rule(rng: random.Random) -> tuple[str, bool]:
    """A TZ string and whether it is valid in glibc's grammar and within what qtasks holds."""
    valid = True

    def name() -> str:
        nonlocal valid
        roll = rng.random()
        if roll < 0.6:
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            return "".join(rng.choice(letters) for _ in range(rng.randint(3, 5)))
        if roll < 0.8:
            inner = "".join(rng.choice("+-0123456789ABZ") for _ in range(rng.randint(3, 5)))
            return f"<{inner}>"
        valid = False
        return rng.choice(["A", "AB", "<AB>", "J ST", "Ab1", ":X", ""])

    def offset(limit: int = 23) -> str:
        nonlocal valid
        hours = rng.randint(0, limit)
        text = f"{rng.choice(['', '+', '-'])}{hours}"
        if rng.random() < 0.4:
            minutes = rng.choice([0, 30, 45, 15, 59])
            text += f":{minutes:02}"
            if rng.random() < 0.2:
                text += f":{rng.randint(0, 59):02}"
        if rng.random() < 0.08:
            valid = False
            text = rng.choice(["24", "-24", "25", "9:75", "--9", "+", "9:", "-9:5:"])
        return text

    def date() -> str:
        nonlocal valid
        roll = rng.random()
        if roll < 0.7:
            return f"M{rng.randint(1, 12)}.{rng.randint(1, 5)}.{rng.randint(0, 6)}"
        if roll < 0.9:
            return f"J{rng.randint(1, 365)}"
        valid = False
        return rng.choice(["M13.1.0", "M3.6.0", "M3.2.7", "J0", "J366", "59", "M3.2x0"])

    def at() -> str:
        if rng.random() < 0.5:
            return ""
        times = ["2", "3", "1:30", "0", "-1", "26", "-2:30", "24", "167", "02:00:00"]
        return "/" + rng.choice(times)

    text = name() + offset()
    if rng.random() < 0.7:
        text += name()
        if rng.random() < 0.4:
            text += offset()
        if rng.random() < 0.95:
            text += f",{date()}{at()},{date()}{at()}"
        else:
            valid = False
    if rng.random() < 0.05:
        valid = False
        text += rng.choice([",", "x", ",M1.1.0", " "])
    if rng.random() < 0.1:
        text = ":" + text
    return text, valid


def test_accepted_rules_give_the_c_librarys_offsets_seeded_fuzz() -> None:
    rng = random.Random(6)
    rules: list[str] = []
    valid: dict[str, bool] = {}
    while len(rules) < 1200:
        text, ok = random_rule(rng)
        if text not in valid:
            rules.append(text)
            valid[text] = ok
    # Instants from 1971 to 2100, and the days around the usual changes in 2026.
    instants = [rng.randint(31_536_000, 4_102_444_800) for _ in range(60)]
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    instants += [start + day * 86_400 + rng.randint(0, 86_399) for day in range(0, 365, 4)]
    reference = libc_offsets(rules, instants)
    accepted = 0
    for rule, offsets in zip(rules, reference, strict=True):
        try:
            zone = get_zone(machine_zone({"TZ": rule}, root="/nonexistent").name)
        except ZoneError as exc:
            assert "\n" not in str(exc)
            # Valid, but C and Python read it apart: a daylight time of no length some years.
            assert not valid[rule] or re.search("same instant|another year", str(exc)), rule
            continue
        accepted += 1
        ours = [
            int(datetime.fromtimestamp(t, zone).utcoffset().total_seconds())  # type: ignore[union-attr]
            for t in instants
        ]
        assert ours == offsets, rule
    assert accepted > 500  # the rest: strings glibc does not read as written


@pytest.mark.parametrize(
    ("tz", "says"),
    [
        ("A-9", "zone name of at least 3 letters"),
        ("::Asia/Tokyo", "write 'Asia/Tokyo'"),
        ("JST-24", "24 hours or more"),
        ("JST-9:75", "above 59"),
        ("right/Europe/Berlin", "counts leap seconds"),
        (":right/Europe/Berlin", "use 'Europe/Berlin'"),
        ("/usr/share/zoneinfo/right/Europe/Berlin", "counts leap seconds"),
        ("CET-1CEST", "not its dates"),
    ],
)
def test_what_glibc_reads_otherwise_is_refused_in_one_line(tz: str, says: str) -> None:
    if "right/" in tz and not get_zone_file_exists("right/Europe/Berlin"):
        pytest.skip("tzdata's right/ zones are not installed here")
    with pytest.raises(ZoneError) as info:
        machine_zone({"TZ": tz}, root="/nonexistent")
    assert says in str(info.value) and "\n" not in str(info.value)


def get_zone_file_exists(key: str) -> bool:
    from pathlib import Path

    return Path("/usr/share/zoneinfo", key).exists()


def test_southern_daylight_time_spans_new_year() -> None:
    rule = "NZST-12NZDT,M9.5.0,M4.1.0/3"
    zone = get_zone(rule)
    instants = [int(datetime(2026, month, 15, tzinfo=UTC).timestamp()) for month in range(1, 13)]
    ours = [int(datetime.fromtimestamp(t, zone).utcoffset().total_seconds()) for t in instants]  # type: ignore[union-attr]
    assert ours == libc_offsets([rule], instants)[0]
    assert ours[0] == 13 * 3600 and ours[6] == 12 * 3600  # January in daylight time


def test_a_job_file_zone_out_of_range_is_a_located_error(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "jobs.yaml").write_text(
        "jobs:\n  j:\n    entrypoint: m:f\n    timezone: JST-24\n    schedule: '0 9 * * *'\n"
    )
    started = time.monotonic()
    result = run_qtasks("list", str(folder / "jobs.yaml"), cwd=folder, env=clean_env(TZ="UTC"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "jobs.yaml:4:15: jobs.j.timezone: offset '-24' in 'JST-24' is 24 hours" in result.stderr
    assert time.monotonic() - started < 60
