"""Stores behind the core's Store port (zchat.core.ports): ``sqlite`` and its schema's
``migrations`` (the default: one file in the broker's data directory), and ``postgres``
with its schema ``pg_schema`` (several brokers on one database, docs/cluster.md).
``from zchat.store import Store`` is the SQLite store; ``open_store(location)`` chooses by
the location's form. Importing this package does not load psycopg."""

from pathlib import Path

from zchat.config import STORE_SCHEMES, store_problem
from zchat.core.ports import (
    AccountInfoRow,
    AccountRow,
    AuditRow,
    BanRow,
    DirectMessageRow,
    DmReadRow,
    GroupStore,
    MessageRow,
    PostedRow,
    RoomReadRow,
    RoomRow,
    SessionRow,
    TokenRow,
    dm_pair,
)
from zchat.errors import StorageError
from zchat.store.migrations import MIGRATIONS, SCHEMA_VERSION, sql_statements
from zchat.store.sqlite import Store

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "AccountInfoRow", "AccountRow",
    "AuditRow", "BanRow", "DirectMessageRow", "DmReadRow", "GroupStore", "MessageRow",
    "PostedRow",
    "RoomReadRow", "RoomRow", "SessionRow", "Store", "TokenRow", "dm_pair",
    "is_store_url", "open_store", "sql_statements",
]


def is_store_url(location: str | Path) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://…`` or
    ``postgres://…``) rather than an SQLite file."""
    text = str(location)
    return "://" in text and text.split("://", 1)[0].lower() in STORE_SCHEMES


def open_store(location: str | Path) -> GroupStore:
    """The store at ``location``: a PostgreSQL URL (zchat.store.postgres, psycopg loaded
    only then), else an SQLite file path or ``":memory:"`` (zchat.store.sqlite). Raises
    StorageError naming the location (a PostgreSQL URL without its password) when it
    cannot be opened or reached."""
    if is_store_url(location):
        from zchat.store.postgres import Store as PostgresStore

        problem = store_problem(str(location))
        if problem is not None:
            raise StorageError(f"cannot use the database: {problem}")
        return PostgresStore(str(location))
    return Store(location)
