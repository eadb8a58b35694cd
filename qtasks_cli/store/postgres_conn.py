"""Reaching a PostgreSQL server: the connection options qtasks adds to a URL, and messages
with the URL's password taken out (a server or driver message may quote it)."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from qtasks_cli.errors import StoreError
from qtasks_cli.store.names import redact_url

CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise


def connect_options(url: str) -> dict[str, Any]:
    """Keyword arguments for psycopg's connect: autocommit, UTC, a timeout and a name."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(
            f"{redact_url(url)}: not a valid PostgreSQL URL: {scrub(str(exc), url)}"
        ) from None
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        options["application_name"] = "qtasks"
    if "options" not in given:
        options["options"] = "-c TimeZone=UTC"
    return options


def _password(url: str) -> str | None:
    with contextlib.suppress(psycopg.Error):
        value = conninfo_to_dict(url).get("password")
        return str(value) if value else None
    return None


def _raw_passwords(url: str) -> set[str]:
    """The password of ``url`` as written in its user info, and its pieces: a URL that does
    not parse (a raw ``%`` or ``@`` in the password) is quoted by the driver in parts."""
    from urllib.parse import unquote

    authority = url.split("://", 1)[-1].split("/", 1)[0]
    userinfo = authority.rpartition("@")[0]
    raw = userinfo.partition(":")[2]
    found = {raw, unquote(raw), *raw.split("@")} if raw else set()
    return {piece for piece in found if len(piece) >= 3}


def scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a server or driver message could quote it,
    whole or in pieces when the URL does not parse)."""
    text = text.strip()
    secrets_ = {p for p in (_password(url),) if p} | _raw_passwords(url)
    for secret in sorted(secrets_, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
