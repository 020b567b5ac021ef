"""SQL that the SQLite and PostgreSQL stores build alike, told apart only by their
parameter marker (``?`` for sqlite3, ``%s`` for psycopg)."""

from __future__ import annotations

#: Above every seq and id: the newest page when no ``before`` is given.
NO_BOUND = 2**62


def page(base: str, column: str, mark: str, key: object, before: int | None,
         after: int | None, limit: int) -> tuple[str, tuple[object, ...], bool]:
    """The query of one page of rows ordered by ``column`` (a seq or an id): ``base`` ends
    in a WHERE clause whose one parameter is ``key``; the page is the oldest ``limit``
    above ``after``, else the newest below ``before`` (or the newest of all,
    docs/PROTOCOL.md §6.9). Returns (sql, args, newest_first): reverse the rows when
    ``newest_first`` to have them ascending."""
    if after is not None:
        return (f"{base} AND {column} > {mark} ORDER BY {column} LIMIT {mark}",
                (key, after, limit), False)
    bound = before if before is not None else NO_BOUND
    return (f"{base} AND {column} < {mark} ORDER BY {column} DESC LIMIT {mark}",
            (key, bound, limit), True)
