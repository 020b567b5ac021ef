"""How the core words numbers for people: times of bans, rates, sizes, quotas, waits.
Every refusal a person reads is worded by the core (zchat.core), never by a store."""

from __future__ import annotations

import math

from zchat import timefmt


def until(until_ms: int | None) -> str:
    """When a ban or mute ends, for people: ``until lifted`` or ``until 2024-06-01
    12:01:30 UTC``, to the second (rounded up, so that the time shown is never early; a
    90 s ban must not read as a minute, docs/PROTOCOL.md §6.31)."""
    if until_ms is None:
        return "until lifted"
    return f"until {timefmt.utc_text(until_ms, round_up=True)} UTC"


def rate(per_s: float) -> str:
    """A rate for people: ``0.5 a second`` down to a tenth, else ``one every 20 s``."""
    return f"{per_s:g} a second" if per_s >= 0.1 else f"one every {1 / per_s:g} s"


def size_text(n: int) -> str:
    """A number of bytes for people, in decimal units: ``512 bytes``, ``1.0 MB``."""
    if n < 1000:
        return f"{n} byte{'' if n == 1 else 's'}"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} PB"


def quota_text(quota: int | None, default: int) -> str:
    """A storage quota as the audit log and the operator see it (docs/PROTOCOL.md §6.53):
    ``1,000,000 bytes``, ``none``, or ``default (…)`` for None, the broker's own."""
    if quota is None:
        return f"default ({quota_text(default, 0)})"
    return f"{quota:,} bytes" if quota else "none"


def seconds(ms: int) -> str:
    """A wait for a person, rounded up: ``0.3 s`` under ten seconds, else ``12 s``."""
    return f"{math.ceil(ms / 100) / 10:.1f} s" if ms < 10_000 else f"{math.ceil(ms / 1000)} s"
