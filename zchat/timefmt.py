"""Times for people and for JSON, formatted in one place: broker times are milliseconds
since the epoch (docs/PROTOCOL.md §10). Pure: no clock is read here, the time is an
argument (``tz=None`` is the machine's local zone, as ``datetime.fromtimestamp`` has it).
"""

from __future__ import annotations

import datetime as dt

#: A date and time to the second, as zchat shows it: ``2024-06-01 12:01:30``.
DATE_TIME = "%Y-%m-%d %H:%M:%S"


def seconds(ms: int, *, round_up: bool = False) -> int:
    """Whole seconds of ``ms``: rounded down, or up with ``round_up`` (a time shown
    rounded up is never early: a 90 s ban must not read as a minute)."""
    return -(-ms // 1000) if round_up else ms // 1000


def iso_utc(ms: int) -> str:
    """ISO 8601 in UTC to the millisecond, as ``--json`` gives it:
    ``2024-06-01T12:01:30.250Z``."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def utc_text(ms: int, *, round_up: bool = False) -> str:
    """A UTC date and time to the second, without the zone: ``2024-06-01 12:01:30``."""
    return dt.datetime.fromtimestamp(seconds(ms, round_up=round_up), dt.UTC) \
        .strftime(DATE_TIME)


def local_datetime(ms: int, tz: dt.tzinfo | None = None, *,
                   round_up: bool = False) -> dt.datetime:
    """The time ``ms`` in zone ``tz`` (None: local); to the whole second rounded up with
    ``round_up``, else exact to the millisecond."""
    if round_up:
        return dt.datetime.fromtimestamp(seconds(ms, round_up=True), tz)
    return dt.datetime.fromtimestamp(ms / 1000, tz)


def local_text(ms: int, tz: dt.tzinfo | None = None) -> str:
    """A date and time to the second in zone ``tz`` (None: local): ``2024-06-01 14:01:30``."""
    return local_datetime(ms, tz).strftime(DATE_TIME)


def clock_text(ms: int, tz: dt.tzinfo | None = None) -> str:
    """Hours and minutes in zone ``tz``, as the console's timestamps: ``14:01``."""
    return local_datetime(ms, tz).strftime("%H:%M")


def day_text(ms: int, tz: dt.tzinfo | None = None) -> str:
    """The day in zone ``tz``, as the console announces it: ``Tuesday 2 January 2024``."""
    day = local_datetime(ms, tz)
    return f"{day:%A} {day.day} {day:%B %Y}"
