"""cron(8)'s day and DST rules and the machine's zone, as a user sees them through ``qtasks``.

Each example of issue 14 is a test with the value cron(8) (Vixie/ISC cron, cronie) and the C
library's tzset(3) give."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import clean_env, run_qtasks
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.schedule import fires_between, parse_schedule
from qtasks_cli.zones import ZoneError, get_zone, machine_zone

UTC = timezone.utc


def listed(tmp_path: Path, schedule: str, after: str, count: int, **env: str) -> dict[str, object]:
    (tmp_path / "jobs.yaml").write_text(
        f"jobs:\n  j:\n    entrypoint: m:f\n    schedule: '{schedule}'\n"
    )
    result = run_qtasks(
        "list", "--json", "--next", str(count), "--after", after, cwd=tmp_path,
        env=clean_env(QTASKS_CONFIG=str(tmp_path / "jobs.yaml"), **env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    row: dict[str, object] = json.loads(result.stdout)[0]
    return row


# --- the day fields -------------------------------------------------------------------------


def test_a_starred_weekday_step_ands_the_day_fields(tmp_path: Path) -> None:
    row = listed(tmp_path, "1 1 1-7 * */7", "2020-01-01T00:00:00+00:00", 4, TZ="UTC")
    assert row["next"] == [
        "2020-01-05T01:01:00+00:00",
        "2020-02-02T01:01:00+00:00",
        "2020-03-01T01:01:00+00:00",
        "2020-04-05T01:01:00+00:00",
    ]


def test_two_restricted_day_fields_without_a_star_are_ored() -> None:
    s = parse_schedule("0 0 1 * mon", ZoneInfo("UTC"))
    start = datetime(2026, 6, 1, tzinfo=UTC) - timedelta(seconds=1)
    days = [f.day for f in fires_between(s, start, start + timedelta(days=15))]
    assert days == [1, 8, 15]  # Monday June 1 2026, then Mondays


def test_validate_warns_with_the_line_about_the_surprising_combination(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    pass\n")
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  a:\n    entrypoint: m:f\n    schedule: '1 1 1-7 * */7'\n"
        "  b:\n    entrypoint: m:f\n    schedule: '0 0 */2 * mon'\n"
        "  c:\n    entrypoint: m:f\n    schedule: '0 0 1 * mon'\n"
    )
    result = run_qtasks("validate", str(tmp_path / "jobs.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"{tmp_path / 'jobs.yaml'}:4:15: jobs.a.schedule: warning:")
    assert "'1-7'" in lines[0] and "'*/7'" in lines[0] and "BOTH" in lines[0]
    assert ":7:15: jobs.b.schedule: warning:" in lines[1]


# --- DST ------------------------------------------------------------------------------------


def test_an_every_minute_job_runs_through_both_passes_of_the_repeated_hour(
    tmp_path: Path,
) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "settings: {timezone: Europe/Riga}\n"
        "jobs:\n  j:\n    entrypoint: m:f\n    schedule: '* 1-6 * * *'\n"
    )
    result = run_qtasks(
        "list", "--json", "--next", "3", "--after", "2021-10-31T03:58:00+03:00",
        str(tmp_path / "jobs.yaml"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["next"] == [
        "2021-10-31T03:59:00+03:00",
        "2021-10-31T03:00:00+02:00",
        "2021-10-31T03:01:00+02:00",
    ]


def test_fixed_time_jobs_fire_once_in_a_repeated_hour_and_right_after_a_skipped_one() -> None:
    riga = ZoneInfo("Europe/Riga")
    fall = parse_schedule("30 3 * * *", riga)
    start = datetime(2021, 10, 31, 0, 0, tzinfo=riga)
    fires = fires_between(fall, start, start + timedelta(hours=6))
    assert [f.astimezone(riga).isoformat() for f in fires] == ["2021-10-31T03:30:00+03:00"]
    spring = parse_schedule("30 3 * * *", riga)  # 03:00 -> 04:00 on 2021-03-28
    start = datetime(2021, 3, 28, 0, 0, tzinfo=riga)
    fires = fires_between(spring, start, start + timedelta(hours=6))
    assert [f.astimezone(riga).isoformat() for f in fires] == ["2021-03-28T04:00:00+03:00"]
    # A job with "*" in the hour field skips the missing wall times: no catch-up.
    hourly = parse_schedule("30 * * * *", riga)
    fires = fires_between(hourly, start, start + timedelta(hours=5))
    walls = [f.astimezone(riga).strftime("%H:%M%z") for f in fires]
    assert walls == ["00:30+0200", "01:30+0200", "02:30+0200", "04:30+0300"]


# --- the machine's zone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "name", "offset", "source"),
    [
        ("JST-9", "JST-9", "+09:00", "TZ=JST-9 (a POSIX TZ rule)"),
        (":Asia/Tokyo", "Asia/Tokyo", "+09:00", "TZ=:Asia/Tokyo"),
        ("Asia/Tokyo", "Asia/Tokyo", "+09:00", "TZ=Asia/Tokyo"),
        ("/usr/share/zoneinfo/Asia/Tokyo", "Asia/Tokyo", "+09:00", "a zone file: Asia/Tokyo"),
        ("CET-1CEST,M3.5.0,M10.5.0/3", "CET-1CEST,M3.5.0,M10.5.0/3", "+01:00", "POSIX TZ rule"),
    ],
)
def test_tz_in_any_form_is_the_default_zone(
    tmp_path: Path, tz: str, name: str, offset: str, source: str
) -> None:
    if tz.startswith("/") and not Path(tz).exists():
        pytest.skip(f"{tz} is not installed here")
    row = listed(tmp_path, "0 9 * * *", "2026-01-10T00:00:00+00:00", 1, TZ=tz)
    assert row["timezone"] == name
    assert source in str(row["timezone_source"])
    assert str(row["next"][0]).startswith("2026-01-1") and str(row["next"][0]).endswith(  # type: ignore[index]
        f"T09:00:00{offset}"
    )
    text = run_qtasks(
        "list", cwd=tmp_path, env=clean_env(QTASKS_CONFIG=str(tmp_path / "jobs.yaml"), TZ=tz)
    )
    assert f"default time zone: {name} (from " in text.stdout


def test_an_unusable_tz_is_refused_not_replaced_by_utc(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  j:\n    entrypoint: m:f\n    schedule: '0 9 * * *'\n"
    )
    for tz in ("Not/AZone", "CET-1CEST"):
        result = run_qtasks("list", str(tmp_path / "jobs.yaml"), cwd=tmp_path, env=clean_env(TZ=tz))
        assert result.returncode == 2
        assert repr(tz) in result.stderr and "TZ" in result.stderr
        assert "Traceback" not in result.stderr
    # An explicit zone in the file does not need TZ at all.
    (tmp_path / "jobs.yaml").write_text(
        "settings: {timezone: UTC}\njobs:\n  j:\n    entrypoint: m:f\n    schedule: '0 9 * * *'\n"
    )
    ok = run_qtasks(
        "list", str(tmp_path / "jobs.yaml"), cwd=tmp_path, env=clean_env(TZ="Not/AZone")
    )
    assert ok.returncode == 0, ok.stderr


def _fake_root(tmp_path: Path, zone: str, *, link: bool, timezone_file: str | None) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    source = get_zone(zone)
    del source
    from qtasks_cli.zones import _zone_bytes

    data = _zone_bytes(zone)
    assert data is not None
    zoneinfo = tmp_path / "zoneinfo" / zone
    zoneinfo.parent.mkdir(parents=True)
    zoneinfo.write_bytes(data)
    if link:
        (root / "etc" / "localtime").symlink_to(zoneinfo)
    else:
        (root / "etc" / "localtime").write_bytes(data)
    if timezone_file is not None:
        (root / "etc" / "timezone").write_text(timezone_file + "\n")
    return root


def test_etc_localtime_as_a_link_a_copy_or_etc_timezone(tmp_path: Path) -> None:
    linked = machine_zone(
        {}, root=str(_fake_root(tmp_path / "a", "Asia/Tokyo", link=True, timezone_file=None))
    )
    assert linked.name == "Asia/Tokyo" and "->" in linked.source
    copied = machine_zone(
        {}, root=str(_fake_root(tmp_path / "b", "Europe/Riga", link=False, timezone_file=None))
    )
    assert get_zone(copied.name).utcoffset(datetime(2026, 1, 1)) == timedelta(hours=2)
    assert "a copy of" in copied.source
    hinted = machine_zone(
        {},
        root=str(
            _fake_root(tmp_path / "c", "Europe/Riga", link=False, timezone_file="Europe/Riga")
        ),
    )
    assert hinted.name == "Europe/Riga"
    only = tmp_path / "d" / "etc"
    only.mkdir(parents=True)
    (only / "timezone").write_text("America/New_York\n")
    assert machine_zone({}, root=str(only.parent)).name == "America/New_York"
    assert machine_zone({"TZ": ""}, root=str(only.parent)).name == "UTC"  # glibc: empty is UTC
    broken = tmp_path / "g" / "etc"
    broken.mkdir(parents=True)
    (broken / "localtime").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ZoneError, match="not a zone file qtasks can read"):
        machine_zone({}, root=str(broken.parent))  # never UTC without a word
    (broken / "timezone").write_text("Europe/Riga\n")
    assert machine_zone({}, root=str(broken.parent)).name == "Europe/Riga"
    nothing = tmp_path / "e"
    nothing.mkdir()
    assert machine_zone({}, root=str(nothing)).source.startswith("UTC: no TZ")
    # A zone file with no IANA twin is used through its own rules.
    odd = tmp_path / "f" / "etc"
    odd.mkdir(parents=True)
    from qtasks_cli.zones import _tzif

    (odd / "localtime").write_bytes(_tzif("XYZ-5:45"))
    found = machine_zone({}, root=str(odd.parent))
    assert found.source.endswith("(a zone file with no IANA name)")
    assert get_zone(found.name).utcoffset(datetime(2026, 1, 1)) == timedelta(hours=5, minutes=45)


RULES = [
    "JST-9",
    "CET-1CEST,M3.5.0,M10.5.0/3",
    "EST5EDT,M3.2.0,M11.1.0",
    "<+0330>-3:30",
    "NZST-12NZDT,M9.5.0,M4.1.0/3",
    "AEST-10AEDT,M10.1.0,M4.1.0/3",
    "IST-1GMT0,M10.5.0,M3.5.0/1",  # negative DST (Europe/Dublin's rule)
    "<-03>3<-02>,M3.5.0/-2,M10.5.0/-1",  # transitions at negative hours
    "XST-2XDT,J60/1,J300/2",
]


def _libc_offsets(rule: str, instants: list[int]) -> list[int]:
    code = (
        "import sys, time, json; time.tzset(); "
        "print(json.dumps([time.localtime(t).tm_gmtoff for t in json.loads(sys.argv[1])]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(instants)],
        capture_output=True, text=True, timeout=60, env={**clean_env(), "TZ": rule}, check=True,
    )  # fmt: skip
    offsets: list[int] = json.loads(out.stdout)
    return offsets


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(946_684_800, 2_524_608_000), min_size=50, max_size=50))
def test_posix_rules_give_the_c_librarys_offsets(instants: list[int]) -> None:
    """The C library is the reference: its localtime() under the same TZ."""
    for rule in RULES:
        zone = get_zone(rule)
        ours = [int(datetime.fromtimestamp(t, zone).utcoffset().total_seconds()) for t in instants]  # type: ignore[union-attr]
        assert ours == _libc_offsets(rule, instants), rule


def test_a_tz_naming_a_device_or_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for tz in (str(fifo), ":/dev/zero", "/dev/stdin", str(tmp_path)):
        with pytest.raises(ZoneError, match="not a"):
            machine_zone({"TZ": tz})


def test_rule_zones_pickle_and_name_themselves() -> None:
    zone = get_zone("JST-9")
    assert str(zone) == "JST-9"
    assert pickle.loads(pickle.dumps(zone)) is zone
    with pytest.raises(ZoneError):
        get_zone("JST")  # no offset: not a rule
    with pytest.raises(ZoneError, match="zero-based"):
        get_zone("YST-1YDT,59/1,299/2")  # zoneinfo and glibc disagree on this form


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=40)
    | st.from_regex(
        r"<?[A-Z+-]{0,5}\d{0,3}>?[+-]?\d{0,3}(:\d\d)?([A-Z]{3,4}(,[JM]?[\d.]{1,8}(/-?\d{1,3})?){0,3})?",
        fullmatch=True,
    )
)
def test_any_tz_value_gives_a_zone_or_a_clear_refusal(text: str) -> None:
    """Hostile TZ values: a usable zone whose offsets are sane, or ZoneError; never a crash."""
    if "\0" in text:
        return  # an environment variable cannot hold NUL
    try:
        found = machine_zone({"TZ": text}, root="/nonexistent")
    except ZoneError as exc:
        assert str(exc)
        return
    zone = get_zone(found.name)
    for year in (1970, 2000, 2038, 2100):
        offset = datetime(year, 6, 1, tzinfo=UTC).astimezone(zone).utcoffset()
        assert offset is not None and abs(offset) < timedelta(hours=26)


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("1 1 1-7 * */7", "at 01:01 on days 1-7 of the month when that is a Sun"),
        ("0 0 L * */7", "at 00:00 on the last day of the month when that is a Sun"),
        ("0 0 1 * mon", "at 00:00 on day 1 of the month or on Mon"),
        ("0 0 */2 * mon", "cron: 0 0 */2 * mon"),  # no words for it: the fields as written
    ],
)
def test_descriptions_say_whether_the_day_fields_and_or_or(cron: str, words: str) -> None:
    assert parse_schedule(cron, ZoneInfo("UTC")).describe() == words
