"""Time zones by name, and the zone the machine's clock uses, however it was set.

A zone is named by an IANA name (``Europe/Riga``), a POSIX TZ rule (``JST-9``,
``CET-1CEST,M3.5.0,M10.5.0/3``; POSIX.1 "TZ", as the C library reads it) or the path of a
TZif file. Every form becomes a ``zoneinfo.ZoneInfo``: a rule is wrapped in a TZif file with
no transitions whose footer is the rule, so the standard library applies it for all times.

The machine's zone is looked for as the C library does (tzset(3)): ``$TZ`` in any of its
forms (set but empty means UTC), else ``/etc/localtime`` (a link into a zoneinfo folder, or a
copy of a zone file, matched back to its IANA name where one has the same content), else
``/etc/timezone``, else UTC, which is what the C library uses when nothing is set. A ``$TZ``
nothing can read is refused (``ZoneError``), never replaced by UTC.
"""

from __future__ import annotations

import functools
import io
import os
import re
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
_ZERO_BASED_DAY = re.compile(r",\d")


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
    """The zone ``name`` means: an IANA name, a POSIX TZ rule, or a TZif file's absolute
    path (a leading ``:`` is ignored, as by tzset(3)). Raises ZoneError."""
    text = name[1:] if name.startswith(":") else name
    if not text or "\0" in text:
        raise ZoneError(f"{name!r} is not a time zone")
    if os.path.isabs(text):
        return _from_file(Path(text), name)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    if text.isascii() and text.isprintable() and any(ch.isdigit() for ch in text):
        if _ZERO_BASED_DAY.search(text):
            raise ZoneError(
                f"{name!r} gives a date as a zero-based day of the year ('n'), which Python's "
                "zoneinfo and the C library read a day apart in some years; write the date as "
                "'Jn' (1-365, February 29 never counted) or 'Mm.w.d'"
            )
        try:
            zone = _FileZone.from_file(io.BytesIO(_tzif(text)), key=name)
            zone.utcoffset(None)  # the rule is parsed here and there; make sure it was
            return zone
        except (ValueError, OSError):
            raise ZoneError(
                f"{name!r} is not a valid POSIX TZ rule (such as 'JST-9' or "
                "'CET-1CEST,M3.5.0,M10.5.0/3'; a rule with daylight saving needs its dates)"
            ) from None
    raise ZoneError(f"unknown time zone {name!r}")


def _from_file(path: Path, name: str) -> ZoneInfo:
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        raise ZoneError(f"{name!r}: no such zone file") from None
    if not regular:  # a FIFO or a device would block or never end
        raise ZoneError(f"{name!r}: not a zone file (not a regular file)")
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
    ``etc/`` is looked for (tests). Raises ZoneError for a ``$TZ`` that cannot be used."""
    environ = os.environ if env is None else env
    tz = environ.get("TZ")
    if tz == "":
        return MachineZone("UTC", "TZ set but empty (UTC, as the C library reads it)")
    if tz is not None and tz.strip(": "):
        return _from_tz(tz)
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


def _from_tz(tz: str) -> MachineZone:
    text = tz[1:] if tz.startswith(":") else tz
    shown = f"TZ={tz}"
    if os.path.isabs(text):
        zone = get_zone(text)
        key = str(zone)
        what = "a zone file" if key == text else f"a zone file: {key}"
        return MachineZone(key, f"{shown} ({what})")
    try:
        ZoneInfo(text)
        return MachineZone(text, shown)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    try:
        get_zone(text)
    except ZoneError as exc:
        raise ZoneError(
            f"the TZ environment variable {tz!r} names no zone qtasks can use: {exc}; "
            "fix TZ or set settings.timezone in the job file"
        ) from None
    return MachineZone(text, f"{shown} (a POSIX TZ rule)")


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
