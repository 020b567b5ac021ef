"""Stores behind the core's Store port (zchat.core.ports): ``sqlite`` (the one there is)
and its schema's ``migrations``. ``from zchat.store import Store`` is the SQLite store."""

from zchat.core.ports import (
    AccountInfoRow,
    AccountRow,
    AuditRow,
    BanRow,
    DirectMessageRow,
    DmReadRow,
    MessageRow,
    PostedRow,
    RoomReadRow,
    RoomRow,
    SessionRow,
    TokenRow,
    dm_pair,
)
from zchat.store.migrations import MIGRATIONS, SCHEMA_VERSION, sql_statements
from zchat.store.sqlite import Store

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "AccountInfoRow", "AccountRow",
    "AuditRow", "BanRow", "DirectMessageRow", "DmReadRow", "MessageRow", "PostedRow",
    "RoomReadRow", "RoomRow", "SessionRow", "Store", "TokenRow", "dm_pair",
    "sql_statements",
]
