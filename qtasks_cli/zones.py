"""Time zones by name, and the zone the machine's clock uses, however it was set.

A zone is named by an IANA name (``Europe/Riga``), a POSIX TZ rule (``JST-9``,
``CET-1CEST,M3.5.0,M10.5.0/3``; POSIX.1 "TZ", as the C library reads it) or the path of a
TZif file. Every form becomes a ``zoneinfo.ZoneInfo``: a rule is wrapped in a TZif file with
no transitions whose footer is the rule, so the standard library applies it for all times.

The machine's zone is looked for as the C library does (tzset(3)): ``$TZ`` in any of its
forms (set but empty, or ``:``, means UTC; a relative name is read from ``$TZDIR`` when set,
as glibc does), else ``/etc/localtime`` (a link into a zoneinfo folder, or a
copy of a zone file, matched back to its IANA name where one has the same content), else
``/etc/timezone``, else UTC, which is what the C library uses when nothing is set. A ``$TZ``
nothing can read is refused (``ZoneError``), never replaced by UTC.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["MachineZone", "ZoneError", "get_zone", "machine_zone"]

ZONEINFO_DIRS = ("/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo")
_TZIF_LIMIT = 1 << 20  # a zone file is a few kB


class ZoneError(ValueError):
    """A zone name, rule or file that cannot be used; the message says which and why."""


class _FileZone(ZoneInfo):
    """A zone built from a rule or a file: pickles by its name, which rebuilds it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (get_zone, (str(self),))


def _tzif(rule: str) -> bytes:
    """A TZif version 2 file with no transitions and ``rule`` as its footer (RFC 8536)."""
    header = b"TZif2" + bytes(15) + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
    data = struct.pack(">lBB", 0, 0, 0) + b"UTC\0"
    return header + data + header + data + b"\n" + rule.encode("ascii") + b"\n"


@functools.lru_cache(maxsize=256)
def get_zone(name: str) -> ZoneInfo:
    """The zone ``name`` means: an IANA name, a POSIX TZ rule (as glibc reads it, see
    ``qtasks_cli.posixtz``), or a TZif file's absolute path; one leading ``:`` is ignored, as
    by tzset(3). A zone that counts leap seconds (``right/``) is refused. Raises ZoneError."""
    text = name[1:] if name.startswith(":") else name
    if not text or "\0" in text:
        raise ZoneError(f"{name!r} is not a time zone")
    if os.path.isabs(text):
        return _from_file(Path(text), name)
    try:
        zone = ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    else:
        _refuse_leap_seconds(_zone_file_header(text), name)
        return zone
    if text.startswith(":"):
        meant = text.lstrip(":")
        raise ZoneError(
            f"{name!r} names no zone: tzset(3) drops one ':' and looks for a zone file named "
            f"{text!r}, finds none and uses UTC; "
            + (f"write {meant!r}" if meant else "write ':' or '' for UTC")
        )
    if not (text.isascii() and text.isprintable()):
        raise ZoneError(f"unknown time zone {name!r}")
    from qtasks_cli.posixtz import canonical_rule

    try:
        rule = canonical_rule(text)
    except ValueError as exc:
        if not any(ch.isdigit() for ch in text):
            raise ZoneError(f"unknown time zone {name!r}") from None
        raise ZoneError(str(exc)) from None
    try:
        zone = _FileZone.from_file(io.BytesIO(_tzif(rule)), key=name)
        zone.utcoffset(None)  # the rule is parsed here and there; make sure it was
        return zone
    except (ValueError, OSError):
        raise ZoneError(f"{name!r} is not a POSIX TZ rule Python's zoneinfo can apply") from None


def _zone_file_header(key: str) -> bytes:
    """The first bytes of the file ``ZoneInfo(key)`` reads, where it is one on the disk."""
    import zoneinfo

    for folder in zoneinfo.TZPATH:
        try:
            with open(os.path.join(folder, key), "rb") as fh:
                return fh.read(_HEADER)
        except OSError:
            continue
    return b""  # from the tzdata package, which has no leap-second zones


_HEADER = 44  # RFC 8536: magic, version, 15 unused bytes and six 32-bit counts


def _refuse_leap_seconds(header: bytes, name: str) -> None:
    """A TZif file with leap-second records (tzdata's ``right/`` zones) describes a clock that
    counts leap seconds: the C library shows its times 27 s behind the same zone's ordinary
    ones, and Python's zoneinfo ignores the records. Neither can be matched: refuse."""
    if len(header) < _HEADER or not header.startswith(b"TZif"):
        return
    leaps = struct.unpack(">6l", header[20:44])[2]
    if leaps > 0:
        plain = name.lstrip(":").split("right/", 1)[-1] if "right/" in name else None
        hint = f"use {plain!r}" if plain else "use the same zone without leap seconds"
        raise ZoneError(
            f"{name!r} is a zone that counts leap seconds ({leaps} of them, as tzdata's "
            f"'right/' zones do): the C library shows its times up to {leaps} s behind "
            f"ordinary clock time, and qtasks cannot follow that; {hint}"
        )


def _from_file(path: Path, name: str) -> ZoneInfo:
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        raise ZoneError(f"{name!r}: no such zone file") from None
    if not regular:  # a FIFO or a device would block or never end
        raise ZoneError(f"{name!r}: not a zone file (not a regular file)")
    try:
        with path.open("rb") as fh:
            _refuse_leap_seconds(fh.read(_HEADER), name)
    except OSError as exc:
        raise ZoneError(f"{name!r}: not a readable zone file ({exc})") from None
    iana = _iana_name_of(path)
    if iana is not None:
        return ZoneInfo(iana)
    try:
        with path.open("rb") as fh:
            return _FileZone.from_file(fh, key=name)
    except (OSError, ValueError) as exc:
        raise ZoneError(f"{name!r}: not a readable zone file ({exc})") from None


def _iana_name_of(path: Path) -> str | None:
    """The IANA name of a zone file: from where it links to, else from a file with the
    same content among the zones the standard library knows."""
    resolved = os.path.realpath(path)
    if "/zoneinfo/" in resolved:
        candidate = resolved.split("/zoneinfo/", 1)[1]
        if _valid_name(candidate):
            return candidate.removeprefix("posix/")
    try:
        with open(resolved, "rb") as fh:
            content = fh.read(_TZIF_LIMIT)
    except OSError:
        return None
    return _same_content(content)


def _valid_name(name: str) -> bool:
    try:
        ZoneInfo(name.removeprefix("posix/"))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _same_content(content: bytes, hint: str | None = None) -> str | None:
    from zoneinfo import available_timezones

    names = sorted(available_timezones())
    if hint is not None and hint in names and _zone_bytes(hint) == content:
        return hint  # /etc/timezone's name, when it is the same zone
    # Area/City names first, then UTC, then the rest (Etc/..., legacy names).
    preferred = [n for n in names if "/" in n and not n.startswith(("Etc/", "SystemV/"))]
    rest = sorted((n for n in names if n not in preferred), key=lambda n: n != "UTC")
    for name in [*preferred, *rest]:
        if _zone_bytes(name) == content:
            return name
    return None


def _zone_bytes(name: str) -> bytes | None:
    for folder in ZONEINFO_DIRS:
        try:
            return Path(folder, name).read_bytes()
        except OSError:
            continue
    try:
        from importlib import resources

        parts = name.split("/")
        package = ".".join(["tzdata", "zoneinfo", *parts[:-1]])
        return resources.files(package).joinpath(parts[-1]).read_bytes()
    except (ImportError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class MachineZone:
    """The machine's zone: ``name`` for ``get_zone`` and, for ``qtasks list``, ``source``."""

    name: str
    source: str


def machine_zone(env: Mapping[str, str] | None = None, root: str = "/") -> MachineZone:
    """The zone the machine's clock uses (see the module docstring); ``root`` is where
    ``etc/`` is looked for (tests). Raises ZoneError for a ``$TZ`` (or a system zone) that
    cannot be used, such as one counting leap seconds."""
    found = _machine_zone(env, root)
    get_zone(found.name)  # a 'right/' zone behind a link or in /etc/timezone: refused here
    return found


def _machine_zone(env: Mapping[str, str] | None, root: str) -> MachineZone:
    environ = os.environ if env is None else env
    tz = environ.get("TZ")
    if tz in ("", ":"):  # glibc's tzset: "" and, its colon dropped, ":" mean UTC
        return MachineZone("UTC", f"TZ={tz} (UTC, as the C library reads it)")
    if tz is not None:
        return _from_tz(tz, environ.get("TZDIR"))
    localtime = Path(root, "etc/localtime")
    declared = _read_timezone_file(Path(root, "etc/timezone"))
    broken = False
    if os.path.lexists(localtime):
        name = _localtime_name(localtime, declared)
        if name is not None:
            return name
        broken = True
    timezone_file = Path(root, "etc/timezone")
    if declared is not None and _valid_name(declared):
        why = f" ({localtime} cannot be read as a zone)" if broken else ""
        return MachineZone(declared, f"{timezone_file}{why}")
    if broken:  # the C library would use UTC here without a word
        raise ZoneError(
            f"{localtime} is not a zone file qtasks can read (a broken link?), and neither TZ "
            f"nor {timezone_file} names a zone; set TZ or settings.timezone in the job file"
        )
    return MachineZone("UTC", "UTC: no TZ, /etc/localtime or /etc/timezone (as the C library)")


def _from_tz(tz: str, tzdir: str | None = None) -> MachineZone:
    """$TZ's zone; a relative name is read from ``$TZDIR`` when that is set, as glibc does
    (tzfile.c: TZDIR replaces the compiled-in zoneinfo folder). A value that names nothing
    (white space, ``::``, a name without a file) is refused: glibc would run on UTC."""
    text = tz[1:] if tz.startswith(":") else tz
    shown = f"TZ={tz}"
    if tzdir and text and not os.path.isabs(text) and os.path.isabs(tzdir):
        path = os.path.join(tzdir, text)
        if os.path.isfile(path):
            try:
                zone = get_zone(path)
            except ZoneError as exc:
                raise ZoneError(
                    f"the TZ environment variable {tz!r} names {path} (in TZDIR), which "
                    f"qtasks cannot use: {exc}; fix TZ or TZDIR or set settings.timezone"
                ) from None
            return MachineZone(str(zone), f"{shown} (from TZDIR={tzdir})")
        if _zone_bytes(text) is not None:
            raise ZoneError(
                f"the TZ environment variable {tz!r} names a zone file that is not in "
                f"TZDIR={tzdir}, where the C library looks (it would run on UTC); fix TZ or "
                "TZDIR or set settings.timezone in the job file"
            )
    try:
        zone = get_zone(tz)
    except ZoneError as exc:
        raise ZoneError(
            f"the TZ environment variable {tz!r} names no zone qtasks can use: {exc}; "
            "fix TZ or set settings.timezone in the job file"
        ) from None
    if os.path.isabs(text):
        key = str(zone)
        what = "a zone file" if key == text else f"a zone file: {key}"
        return MachineZone(key, f"{shown} ({what})")
    if isinstance(zone, _FileZone):
        return MachineZone(text, f"{shown} (a POSIX TZ rule)")
    return MachineZone(text, shown)


def _localtime_name(localtime: Path, declared: str | None) -> MachineZone | None:
    where = str(localtime)
    if os.path.islink(localtime):
        resolved = os.path.realpath(localtime)
        if "/zoneinfo/" in resolved:
            candidate = resolved.split("/zoneinfo/", 1)[1]
            if _valid_name(candidate):
                return MachineZone(candidate.removeprefix("posix/"), f"{where} -> {resolved}")
    try:
        if not stat.S_ISREG(os.stat(localtime).st_mode):
            return None
        with open(localtime, "rb") as fh:
            content = fh.read(_TZIF_LIMIT)
    except OSError:
        return None
    name = _same_content(content, declared)
    if name is not None:
        return MachineZone(name, f"{where} (a copy of {name})")
    try:
        get_zone(where)
    except ZoneError:
        return None
    return MachineZone(where, f"{where} (a zone file with no IANA name)")


def _read_timezone_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text.split()[0] if text else None
