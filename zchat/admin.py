"""Operator tools: the logic of ``zchat admin …`` (docs/admin.md).

Two modes, chosen by the command line (docs/admin.md "Two ways in"):

- **over the wire** (``--as NAME``, an account listed in the broker's ``[broker] admins``):
  every operation is a request to the running broker (USERS, SESSIONS,
  CREATE_ACCOUNTS, ADMIN_SET_PASSWORD, ADMIN_DISABLE, ADMIN_SET_QUOTA, BANS, UNBAN, AUDIT;
  docs/PROTOCOL.md §6.14, §6.32, §6.40-§6.45, §6.53), which ends live sessions itself and writes
  the audit log with the admin's name;
- **direct** (``--db FILE``, ``--db postgresql://…``, the broker's data directory or its
  ``[broker] store``): the operations run on the database through the store
  (``zchat.store.open_store``) and the same operator code (zchat.core.operator_actions). Reading (users, sessions, bans, audit)
  and lifting bans are safe while a broker runs (it reloads its bans and mutes when
  another connection wrote the database). The writes whose effect a running broker holds in memory (creating accounts,
  resetting passwords, disabling and enabling) are refused while a broker holds the data
  directory's ``broker.lock`` (so do storage quotas), and hold that lock themselves while they run, so that no
  broker starts meanwhile; on PostgreSQL, while any broker holds the database's advisory
  broker lock (``brokers_stopped_pg``). Their audit-log actor is ``local:<OS user>``.

``migrate`` copies a broker's SQLite file into PostgreSQL (zchat.store.transfer,
``run_migrate``).

The validation of new accounts is the broker core's (zchat.core.validation:
``check_batch`` for CREATE_ACCOUNTS and the CSV, ``check_new_password`` for REGISTER and
the password changes, ``check_password`` for LOGIN): names follow docs/PROTOCOL.md §12
(zchat.names), look-alikes are refused by skeleton.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import getpass
import io
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from zchat import timefmt
from zchat import wire as p
from zchat.client.client import Client
from zchat.config import DB_FILENAME, Config, data_dir, store_problem
from zchat.core import operator_actions
from zchat.core.ports import NameTaken
from zchat.core.validation import (
    BadRow,
    CheckedAccount,
    NewAccountRow,
    check_batch,
    check_new_account,
    check_new_password,
    check_password,
    password_too_short,
    rule_only,
)
from zchat.core.wording import size_text
from zchat.errors import ProtocolError, RequestFailed, Status, ZchatError
from zchat.names import name_key, normalize_name, skeleton
from zchat.passwords import hash_password
from zchat.progress import Progress
from zchat.store import GroupStore, is_store_url, open_store
from zchat.tty import has_terminal

__all__ = [  # the validation shared with the broker, kept importable from here
    "BadRow", "CheckedAccount", "NewAccountRow", "check_batch", "check_new_account",
    "check_new_password", "check_password", "password_too_short", "rule_only",
]

#: File in the broker's data directory that a running broker holds locked (cli.py's
#: ``_lock_data_dir``); direct-mode writes take it too.
LOCK_FILENAME = "broker.lock"
#: Characters of a generated password: ``secrets.token_urlsafe(12)`` gives 16 characters
#: of 96 random bits, beyond any online or offline guessing against Argon2id.
GENERATED_PASSWORD_BYTES = 12
#: Values of the CSV ``bot`` column (case-insensitive); empty means no.
_TRUE = ("1", "true", "yes", "y", "bot")
_FALSE = ("", "0", "false", "no", "n")
_COLUMNS = ("name", "password", "bot")


class AdminError(ZchatError):
    """An operator command could not run: one line for the user, exit code 1."""


class BadRows(AdminError):
    """A bulk-creation file with bad rows: ``rows`` lists every one; nothing was created."""

    def __init__(self, source: str, rows: list[BadRow]) -> None:
        self.rows = rows
        lines = "\n".join(f"  {source}:{r.line}: {r.problem}" for r in rows)
        super().__init__(f"{len(rows)} bad row{'s' if len(rows) != 1 else ''} in {source}, "
                         f"nothing created:\n{lines}")


# -- validation shared with the broker ---------------------------------------------------


# -- the bulk-creation CSV ----------------------------------------------------------------


def parse_accounts_csv(text: str, source: str = "the file"
                       ) -> tuple[list[NewAccountRow], list[BadRow]]:
    """Rows of a bulk-creation CSV (docs/admin.md): columns ``name,password[,bot]``, with
    an optional header line naming them (in any order); without one, positional. Blank
    lines and lines starting with ``#`` are skipped. An empty or missing password means
    "generate one". ``bot`` is 1/true/yes or 0/false/no/empty.

    Names and ``bot`` values are taken without the spaces around them; a password is
    taken exactly as written (as ``passwd --stdin`` takes its line), and one that starts
    or ends with white space is a bad row (most likely ``name, password`` with a space
    after the comma), never trimmed silently. Problems name the line and the column,
    never a password or a whole row.

    Returns (rows, bad rows with their line numbers); nothing is checked against the
    account rules here (``check_batch`` does that).
    """
    rows: list[NewAccountRow] = []
    bad: list[BadRow] = []
    columns: tuple[str, ...] | None = None
    reader = csv.reader(io.StringIO(text, newline=""))
    for raw in reader:
        line = reader.line_num
        cells = [c.strip() for c in raw]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if columns is None:
            lowered = tuple(c.lower() for c in cells)
            # A header names the columns in any order (a tester's "password,name" was read
            # as an account named "password" with the password "name"): the first line is
            # one when it starts with "name" or consists only of column names.
            if lowered[0] == "name" or ("name" in lowered and set(lowered) <= set(_COLUMNS)):
                header = lowered
                unknown = [c for c in header if c not in _COLUMNS]
                if unknown or len(set(header)) != len(header):
                    raise AdminError(f"{source}:{line}: the header must name the columns "
                                     "name, password and bot (each at most once)")
                columns = header
                continue
            columns = _COLUMNS
        if len(cells) > len(columns):
            bad.append(BadRow(line, f"{len(cells)} columns; expected at most "
                                    f"{len(columns)} ({','.join(columns)})"))
            continue
        values = dict(zip(columns, cells, strict=False))
        password = dict(zip(columns, raw, strict=False)).get("password", "")
        flag = values.get("bot", "").lower()
        if flag not in _TRUE + _FALSE:  # not echoed: a shifted column may be a password
            bad.append(BadRow(line, "the bot column must be yes or no (1/0, true/false)"))
            continue
        if password != password.strip():
            bad.append(BadRow(line, "the password starts or ends with white space (a space "
                                    "after the comma?); passwords are taken as written: "
                                    "remove it, or set such a password with "
                                    "`reset-password --stdin`"))
            continue
        rows.append(NewAccountRow(line, values.get("name", ""), password, flag in _TRUE))
    return rows, bad


def generate_password() -> str:
    """A new random password (GENERATED_PASSWORD_BYTES of ``secrets``, URL-safe)."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def fill_passwords(rows: list[NewAccountRow]) -> tuple[list[NewAccountRow], set[int]]:
    """Give each row without a password a generated one; returns the rows and the lines
    whose password was generated."""
    out: list[NewAccountRow] = []
    generated: set[int] = set()
    for row in rows:
        if not row.password:
            row = NewAccountRow(row.line, row.name, generate_password(), row.bot)
            generated.add(row.line)
        out.append(row)
    return out, generated


def write_passwords_csv(path: Path, accounts: list[CheckedAccount]) -> None:
    """Write ``name,password`` of ``accounts`` to ``path``, created with mode 0600 (only
    the operator may read it); refuses to overwrite an existing file (AdminError)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AdminError(f"{path} exists; give a new file for the passwords") from None
    except OSError as exc:
        raise AdminError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "password"])
        for account in accounts:
            writer.writerow([account.name, account.password])


# -- storage quotas (docs/PROTOCOL.md §6.53) ----------------------------------------------

#: Units ``zchat admin quota`` takes after a number: decimal as disks are sold (kB, MB, GB,
#: TB) and binary (KiB, MiB, GiB, TiB); case does not matter.
_QUOTA_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "k": 1000, "kb": 1000,
                "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
                "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
                "gib": 1024**3, "tib": 1024**4}
_QUOTA_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_quota(text: str) -> int | None:
    """``zchat admin quota``'s BYTES: ``none`` is 0 (no quota), ``default`` None (the
    broker's ``storage_quota_bytes``), else a number of bytes with an optional unit
    (``5000000``, ``5MB``, ``2.5 GiB``). Raises ValueError naming what is accepted when
    it is none of these or above MAX_STORAGE_QUOTA_BYTES."""
    raw = text.strip().lower()
    if raw == "none":
        return 0
    if raw == "default":
        return None
    match = _QUOTA_RE.fullmatch(raw)
    if match is None or match.group(2) not in _QUOTA_UNITS:
        raise ValueError(f"must be a number of bytes (5000000, 5MB, 2GiB), none or "
                         f"default, not {text!r}")
    value = int(float(match.group(1)) * _QUOTA_UNITS[match.group(2)]) \
        if "." in match.group(1) else int(match.group(1)) * _QUOTA_UNITS[match.group(2)]
    if value > p.MAX_STORAGE_QUOTA_BYTES:
        raise ValueError(f"must be at most {p.MAX_STORAGE_QUOTA_BYTES:,} bytes (1 PiB), "
                         f"not {text!r}")
    return value


def _said_quota(reply: p.QuotaSet, err: TextIO) -> None:
    quota = "no quota" if not reply.quota_bytes else \
        f"a quota of {size_text(reply.quota_bytes)} ({reply.quota_bytes:,} bytes)"
    err.write(f"{reply.name} has {quota}{' (the broker default)' if reply.default else ''}; "
              f"{size_text(reply.stored_bytes)} stored\n")


def set_quota_direct(store: GroupStore, name: str, quota: int | None, default: int, actor: str,
                     now_ms: int) -> p.QuotaSet:
    """Set the account's storage quota (None: the broker's ``default`` again), audited,
    in one transaction; nothing is written when it had that setting already. Returns
    the setting now in force with the bytes the account has stored. Raises AdminError
    for an unknown account."""
    key, display = _account(store, name)
    operator_actions.set_quota(store, key, display, quota, store.storage_quotas().get(key),
                               default, actor, now_ms)
    return p.QuotaSet(name=display, quota_bytes=default if quota is None else quota,
                      default=quota is None, stored_bytes=store.storage_used().get(key, 0))


# -- direct mode: the database file -------------------------------------------------------


def local_actor() -> str:
    """The audit-log actor of a direct-mode action: ``local:<OS user name>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = str(os.getuid())
    return f"local:{user}"


#: Why a direct-mode write is refused while a broker runs (its one line).
_BROKER_HOLDS = ("it holds accounts and sessions in memory, so do this over the wire as an "
                 "admin (--as NAME, with NAME in its [broker] admins), or stop it first")


@contextlib.contextmanager
def broker_stopped(directory: Path, refusal: str = "") -> Iterator[None]:
    """Hold the data directory's broker lock for the block. Raises AdminError when a
    broker holds it (it caches accounts and sessions in memory: go over the wire), worded
    ``a zchat broker is running on DIR: <refusal>``."""
    try:
        lock = open(directory / LOCK_FILENAME, "a+")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise AdminError(f"cannot open {directory / LOCK_FILENAME}: "
                         f"{exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise AdminError(f"a zchat broker is running on {directory}: "
                             f"{refusal or _BROKER_HOLDS}") from None
        yield
    finally:
        lock.close()


@contextlib.contextmanager
def brokers_stopped_pg(url: str, exclusive: bool, need_schema: bool) -> Iterator[None]:
    """PostgreSQL's ``broker_stopped``: with ``exclusive``, hold the database's broker
    lock (pg_schema.BROKER_LOCK, which every running broker holds shared) for the block,
    on a connection of its own. Raises AdminError when a broker holds it (any broker, on
    any machine, with this database), when the database cannot be reached, or, with
    ``need_schema``, when it holds no zchat schema (only ``create`` makes one)."""
    import psycopg

    from zchat.config import redact_text, redact_url
    from zchat.store import pg_schema

    shown = redact_url(url)
    try:
        db = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except (psycopg.Error, ValueError) as exc:
        raise AdminError(f"cannot connect to the database {shown}: "
                         f"{redact_text(str(exc).strip().splitlines()[0], url)}") from None
    with db:
        row = db.execute("SELECT to_regclass(%s) IS NOT NULL",
                         (pg_schema.VERSION_TABLE,)).fetchone()
        if need_schema and not (row and row[0]):
            raise AdminError(f"no zchat database at {shown} (no zchat schema in it; "
                             "`zchat admin create` or a broker's first start makes one)")
        if exclusive:
            held = db.execute("SELECT pg_try_advisory_lock(%s)",
                              (pg_schema.BROKER_LOCK,)).fetchone()
            if not (held and held[0]):
                raise AdminError(f"a zchat broker is running on {shown}: "
                                 f"{_BROKER_HOLDS.replace('stop it', 'stop every broker on it')}")
        yield


def broker_running(directory: Path) -> bool:
    """Whether a broker holds the data directory's lock now."""
    try:
        with broker_stopped(directory):
            return False
    except AdminError:
        return True


def _account(store: GroupStore, name: str) -> tuple[str, str]:
    """(key, display name) of an existing account in ``store``; AdminError if none."""
    try:
        key = name_key(normalize_name(name))
    except ProtocolError:
        raise AdminError(f"no account named {name!r}") from None
    row = store.get_account(key)
    if row is None:
        raise AdminError(f"no account named {name!r}")
    return key, row.name


def create_accounts_direct(store: GroupStore, accounts: list[CheckedAccount], hasher:
                           Callable[[str], str], actor: str, now_ms: int,
                           progress: Callable[[int], None] | None = None) -> None:
    """Create ``accounts`` (already checked) as CREATE_ACCOUNTS does
    (zchat.core.operator_actions): each in ``lobby``, audited, all or none. The password
    hashing is the long part (one Argon2id hash each): ``progress``, when given, is called with
    the number hashed after each. Raises AdminError when a name was taken meanwhile
    (nothing created)."""
    hashes = []
    for account in accounts:  # before the write lock is taken
        hashes.append(hasher(account.password))
        if progress is not None:
            progress(len(hashes))
    try:
        operator_actions.create_accounts(store, accounts, hashes, actor, now_ms)
    except NameTaken as exc:
        raise AdminError(f"the name {exc.name!r} is taken (or too like an existing name); "
                         "nothing created") from None


def reset_password_direct(store: GroupStore, name: str, password_hash: str, actor: str,
                          now_ms: int) -> str:
    """Replace the account's password hash, forget its stored sessions (no RESUME with
    them after the broker starts) and audit it, as ADMIN_SET_PASSWORD does
    (zchat.core.operator_actions). Returns the display name. Raises AdminError for an
    unknown account."""
    key, display = _account(store, name)
    operator_actions.reset_password(store, key, display, password_hash, actor, now_ms)
    return display


def set_disabled_direct(store: GroupStore, name: str, disabled: bool, actor: str,
                        now_ms: int) -> tuple[str, bool]:
    """Disable (forgetting its stored sessions) or enable the account, audited, as
    ADMIN_DISABLE does (zchat.core.operator_actions). Returns (display name, whether it
    changed: nothing is written when it was in that state already). Raises AdminError
    for an unknown account."""
    key, display = _account(store, name)
    return display, operator_actions.set_disabled(store, key, display, disabled, actor,
                                                  now_ms)


def unban_direct(store: GroupStore, name: str, room: str, kind: str, actor: str,
                 now_ms: int) -> str:
    """Lift the account's ban (or mute, ``kind``) in ``room`` ("" = server-wide),
    audited; safe while a broker runs (it reloads bans when another connection wrote
    the database, zchat.core.context.Core.catch_up_bans). Returns the display
    name. Raises AdminError for an unknown account or room, or when there is none."""
    key, display = _account(store, name)
    room_key, room_name = "", ""
    if room:
        try:
            room_key = name_key(normalize_name(room, "room name"))
        except ProtocolError:
            raise AdminError(f"no room named {room!r}") from None
        found = store.get_room(room_key)
        if found is None:
            raise AdminError(f"no room named {room!r}")
        room_name = found.name
    if not operator_actions.lift(store, kind, room_key, room_name, key, display, actor,
                                 now_ms):
        where = f"in #{room_name}" if room_key else "server-wide"
        raise AdminError(f"{display} is not {'banned' if kind == 'ban' else 'muted'} "
                         f"{where}")
    return display


def users_direct(store: GroupStore, default_quota: int = 0) -> list[p.AccountInfo]:
    """Every account; ``online`` means it holds a stored session (a live one, or one kept
    for RESUME), ``sessions`` how many: the database's view, not the broker's memory.
    The quota is the account's own, else ``default_quota`` (the configured broker's)."""
    counts: dict[str, int] = {}
    for s in store.sessions(held_elsewhere=True):
        counts[s.account_key] = counts.get(s.account_key, 0) + 1
    used, quotas = store.storage_used(), store.storage_quotas()
    return [p.AccountInfo(name=a.name, bot=a.bot, disabled=a.disabled, created=a.created_ms,
                          online=a.key in counts, sessions=counts.get(a.key, 0),
                          stored_bytes=used.get(a.key, 0),
                          quota_bytes=quotas.get(a.key, default_quota))
            for a in store.list_accounts()]


def sessions_direct(store: GroupStore) -> list[p.SessionInfo]:
    """The sessions stored in the database (live ones and those kept for RESUME), by name
    and login time; ``last_seen`` is 0: only the broker's memory knows it."""
    names = {k: n for k, (n, _b) in store.account_names().items()}
    rows = [p.SessionInfo(name=names.get(s.account_key, s.account_key), address=s.address,
                          login_time=s.login_ms, last_seen=0)
            for s in store.sessions(held_elsewhere=True)]
    return sorted(rows, key=lambda s: (s.name, s.login_time))


def bans_direct(store: GroupStore, now_ms: int, room: str | None) -> list[p.BanInfo]:
    """Bans and mutes in force: of ``room`` ("" = server-wide ones) or all (None)."""
    rooms = {r.key: r.name for r in store.list_rooms()}
    names = {k: n for k, (n, _b) in store.account_names().items()}
    room_key: str | None = None
    if room is not None:
        room_key = name_key(room) if room else ""
        if room_key and room_key not in rooms:
            raise AdminError(f"no room named {room!r}")
    return [p.BanInfo(kind="mute" if b.kind == "mute" else "ban",
                      room=rooms.get(b.room_key, b.room_key),
                      name=names.get(b.account_key, b.account_key),
                      by=names.get(b.by_key, b.by_key), reason=b.reason,
                      created=b.created_ms, until=b.until_ms)
            for b in store.list_bans(now_ms, room_key)]


# -- output -------------------------------------------------------------------------------


def print_rows(out: TextIO, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """A plain table: columns padded to their widest cell, two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for row in (header, *rows):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  + "\n")


# -- the commands (``zchat admin …``, ``zchat passwd``; cli.py parses) ----------------------

#: Environment variable holding the new password for ``admin reset-password`` and
#: ``passwd`` in scripts ($ZCHAT_PASSWORD holds the password to log in with).
NEW_PASSWORD_ENV = "ZCHAT_NEW_PASSWORD"
#: Extra seconds CREATE_ACCOUNTS may take per account: the broker hashes each password
#: with Argon2id (about 0.02 s at the default cost) before it answers.
CREATE_S_PER_ACCOUNT = 0.5
#: Commands that change what a running broker holds in memory: direct mode refuses
#: them while a broker holds the data directory.
_NEEDS_STOPPED = ("create", "reset-password", "disable", "enable", "quota")


def _fmt(ms: int) -> str:
    return timefmt.utc_text(ms) if ms else "-"


def _iso(ms: int) -> str | None:
    return timefmt.iso_utc(ms) if ms else None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_password(args: argparse.Namespace, *, prompt: str = "New password") -> tuple[str, bool]:
    """The new password of ``reset-password`` or ``passwd``: generated (``--generate``),
    the first line of standard input (``--stdin``), $ZCHAT_NEW_PASSWORD, or asked twice
    on the terminal without echo. Returns (password, generated). AdminError when none."""

    if getattr(args, "generate", False):
        return generate_password(), True
    if getattr(args, "stdin", False):
        try:
            line = sys.stdin.readline().rstrip("\r\n")
            line.encode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise AdminError("the password on standard input is not valid UTF-8") from None
        if not line:
            raise AdminError("no password on standard input")
        return line, False
    try:
        env = os.environ.get(NEW_PASSWORD_ENV)
        if env is not None:
            env.encode("utf-8")
    except UnicodeEncodeError:  # decoded with surrogateescape: not text
        raise AdminError(f"${NEW_PASSWORD_ENV} is not valid UTF-8") from None
    if env:
        return env, False
    if not has_terminal():
        if env is not None:  # set but empty (``$PW`` unset in a script): as if unset
            other = "--stdin or --generate" if hasattr(args, "generate") else "--stdin"
            raise AdminError(f"no new password: {NEW_PASSWORD_ENV} is set but empty; put "
                             f"the new password in it, or use {other}")
        raise AdminError(f"no new password: use --stdin, set {NEW_PASSWORD_ENV} or run in "
                         "a terminal")
    try:
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass(f"{prompt} (again): ") != first:
            raise AdminError("the passwords do not match; nothing changed")
    except EOFError:
        raise AdminError("cancelled; nothing changed") from None
    except UnicodeDecodeError:
        raise AdminError("the password typed is not valid UTF-8; nothing changed") from None
    return first, False


def _db_location(args: argparse.Namespace, config: Config, create: bool = False
                 ) -> Path | str:
    """The database of a direct command: ``--db`` (a PostgreSQL URL or an SQLite file),
    else with ``--data-dir`` the SQLite file in it, else the configured broker's
    ``[broker] store`` when it is a PostgreSQL URL, else the SQLite file in its data
    directory (``_db_path``)."""
    db = getattr(args, "db", None)
    if db and is_store_url(db):
        problem = store_problem(str(db))
        if problem is not None:
            raise AdminError(f"--db: {problem}")
        return str(db)
    if not db and not getattr(args, "data_dir", None) and config.broker.store:
        return config.broker.store
    return _db_path(args, config, create)


def run_migrate(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """``zchat admin migrate --to URL``: copy the broker's SQLite file (``--db FILE``,
    else the data directory's) into the PostgreSQL database at URL
    (zchat.store.transfer), with the data directory's broker lock held (refused while a
    broker runs on the file), check it through the PostgreSQL store, and print the
    summary. Raises AdminError, MigrationError."""
    from zchat.store import transfer

    url = str(args.to)
    if not is_store_url(url):
        raise AdminError(f"--to must be a PostgreSQL URL (postgresql://USER@HOST:PORT/DB), "
                         f"not {url!r}")
    problem = store_problem(url)
    if problem is not None:
        raise AdminError(f"--to: {problem}")
    if getattr(args, "db", None) and is_store_url(args.db):
        raise AdminError("--db names the SQLite file to copy (or give --data-dir DIR); the "
                         "PostgreSQL database is --to")
    path = _db_path(args, config)
    with broker_stopped(path.parent, refusal="stop it first, so that the copy has "
                        "everything it wrote (the file is only read)"):
        # one updating line on stderr when it is a terminal (zchat.progress)
        with Progress("admin migrate", None, "rows", "row") as progress:
            summary = transfer.migrate(path, url, progress=progress.update,
                                       total=progress.set_total)
        transfer.check_with_store(url, summary)
    write_out(out, "\n".join(summary.lines()) + "\n")
    return 0


def _db_path(args: argparse.Namespace, config: object, create: bool = False) -> Path:
    """The database file of a direct command, resolved. With ``create`` (``zchat admin
    create`` before the broker's first start: the first admin's account) a missing file
    is allowed and its directory made (0700); the Store then creates the database."""

    assert isinstance(config, Config)
    db = getattr(args, "db", None)
    given = Path(db) if db else data_dir(config.broker) / DB_FILENAME
    # The real path: a running broker's lock (broker.lock) is beside the real file, not
    # beside a symlink to it, nor in a symlinked directory's name for it.
    path = given.resolve()
    if create and not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AdminError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
        return path
    if not path.is_file():
        raise AdminError(f"no zchat database at {given} (give --db FILE, --data-dir DIR, "
                         "or --as NAME to go over the wire)")
    try:
        links = path.stat().st_nlink
    except OSError as exc:
        raise AdminError(f"cannot read {given}: {exc.strerror or exc}") from None
    if links > 1:
        # Another name may be in another directory, whose broker.lock this command cannot
        # find; and SQLite keeps a WAL file per name, so two names corrupt the database
        # (sqlite.org/howtocorrupt.html §2.5, "Multiple links to the same file").
        raise AdminError(f"{given} has {links} hard links: open the database by its one "
                         "name in the broker's data directory (remove the other links)")
    return path


#: Largest bulk-creation CSV read, in bytes: a class or a company fits many times over,
#: and a huge file cannot tie up the operator's memory (a tester's 576 MB took 3.6 GB).
MAX_CSV_BYTES = 10 * 1024 * 1024


def _read_csv(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise AdminError(f"{path} is {size:,} bytes; at most {MAX_CSV_BYTES:,} are read: "
                             "split it")
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AdminError(f"{path} is not valid UTF-8: {exc.reason}") from None


def _checked_csv(path: Path, taken: Callable[[str, str], bool],
                 limit: int | None, output: str | None = None, min_password_chars: int = 1
                 ) -> tuple[list[CheckedAccount], set[int]]:
    """Parse, fill in generated passwords and check a bulk-creation CSV (passwords of at
    least ``min_password_chars`` characters); BadRows when any row is bad (all of them
    listed, nothing created). AdminError when the ``output``
    file for the generated passwords exists already: checked before anything is created,
    so that no account is made whose password could not be handed out."""
    if output is not None and Path(output).exists():
        raise AdminError(f"{output} exists; give a new file for the passwords (nothing "
                         "was created)")
    rows, bad = parse_accounts_csv(_read_csv(path), str(path))
    rows, generated = fill_passwords(rows)
    good, bad_accounts = check_batch(rows, taken, min_password_chars)
    bad = sorted(bad + bad_accounts, key=lambda b: b.line)
    if bad:
        raise BadRows(str(path), bad)
    if not good:
        raise AdminError(f"{path} holds no accounts")
    if limit is not None and len(good) > limit:
        raise AdminError(f"{path} holds {len(good)} accounts; over the wire at most {limit} "
                         "at once: split the file (or use --db with the broker stopped)")
    return [CheckedAccount(a.line, a.name, a.key, a.skeleton, a.password, a.bot,
                           a.line in generated) for a in good], generated


def open_passwords_file(args: argparse.Namespace, accounts: list[CheckedAccount]
                        ) -> TextIO | None:
    """The ``--output`` file for the generated passwords of ``accounts``, created now
    (mode 0600, never over an existing file) so that no account is created whose password
    could not be handed out; None when there is no ``--output`` or nothing generated.
    Raises AdminError (nothing was created)."""
    output = getattr(args, "output", None)
    if output is None or not any(a.generated for a in accounts):
        return None
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AdminError(f"{output} exists; give a new file for the passwords (nothing "
                         "was created)") from None
    except OSError as exc:
        raise AdminError(f"cannot create {output}: {exc.strerror or exc} (nothing was "
                         "created)") from None
    return os.fdopen(fd, "w", newline="", encoding="utf-8")


def discard_passwords_file(args: argparse.Namespace, sink: TextIO | None) -> None:
    """Close and remove the still empty ``--output`` file: the accounts were not
    created."""
    if sink is not None:
        sink.close()
        with contextlib.suppress(OSError):
            os.unlink(args.output)


def write_out(out: TextIO, text: str) -> None:
    """Write ``text`` to ``out`` now, unbuffered (straight to its file descriptor when it
    has one), so that a failure (``> /dev/full``, a closed pipe) is an OSError here and
    nothing is left in a buffer to fail again at exit."""
    out.flush()
    try:
        fd = out.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        out.write(text)
        out.flush()
        return
    data = text.encode(getattr(out, "encoding", None) or "utf-8")
    while data:
        data = data[os.write(fd, data):]


def _passwords_csv(accounts: list[CheckedAccount]) -> str:
    """``name,password`` lines (with the header) of ``accounts``, CSV-quoted."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["name", "password"])
    for a in accounts:
        writer.writerow([a.name, a.password])
    return text.getvalue()


def _report_created(args: argparse.Namespace, accounts: list[CheckedAccount],
                    sink: TextIO | None, out: TextIO, err: TextIO) -> None:
    """Say what was created; hand out the generated passwords once (``sink``, the
    ``--output`` file opened by ``open_passwords_file``, else CSV lines on stdout).
    Raises AdminError naming the created accounts when the passwords cannot be written:
    they are then shown nowhere (reset them with ``reset-password --generate``)."""
    generated = [a for a in accounts if a.generated]
    names = ", ".join(a.name for a in accounts)
    err.write(f"created {len(accounts)} account{'s' if len(accounts) != 1 else ''}: "
              f"{names}\n")
    if not generated:
        return
    where = getattr(args, "output", None) if sink is not None else "standard output"
    try:
        if sink is not None:
            with sink:
                sink.write(_passwords_csv(generated))
        else:
            write_out(out, _passwords_csv(generated))
    except OSError as exc:
        lost = ", ".join(a.name for a in generated)
        raise AdminError(f"the accounts were created ({names}), but their generated "
                         f"passwords could not be written to {where}: "
                         f"{exc.strerror or exc}; the passwords of {lost} are shown nowhere:"
                         " give them new ones with `zchat admin reset-password NAME "
                         "--generate`") from None
    if len(generated) == 1:
        err.write(f"the generated password is in {where} (mode 0600); it is shown nowhere "
                  "else\n" if sink is not None else
                  "the generated password above is shown only this once\n")
    elif sink is not None:
        err.write(f"the {len(generated)} generated passwords are in {where} (mode 0600); "
                  "they are shown nowhere else\n")
    else:
        err.write(f"the {len(generated)} generated passwords above are shown only this "
                  "once\n")


def _print_users(users: Iterable[p.AccountInfo], as_json: bool, out: TextIO) -> None:
    rows = []
    for u in users:
        if as_json:
            out.write(json.dumps({"name": u.name, "bot": u.bot, "disabled": u.disabled,
                                  "created": _iso(u.created), "created_ms": u.created,
                                  "online": u.online, "sessions": u.sessions,
                                  "stored_bytes": u.stored_bytes,
                                  "quota_bytes": u.quota_bytes or None},
                                 ensure_ascii=False) + "\n")
        else:
            rows.append((u.name, "yes" if u.bot else "no", "yes" if u.disabled else "no",
                         _fmt(u.created), "yes" if u.online else "no", str(u.sessions),
                         size_text(u.stored_bytes),
                         size_text(u.quota_bytes) if u.quota_bytes else "-"))
    if not as_json:
        print_rows(out, ("NAME", "BOT", "DISABLED", "CREATED (UTC)", "ONLINE", "SESSIONS",
                         "STORED", "QUOTA"), rows)


def _print_sessions(sessions: Iterable[p.SessionInfo], as_json: bool, out: TextIO) -> None:
    rows = []
    for s in sessions:
        if as_json:
            out.write(json.dumps({"name": s.name, "address": s.address,
                                  "login": _iso(s.login_time), "login_ms": s.login_time,
                                  "last_seen": _iso(s.last_seen),
                                  "last_seen_ms": s.last_seen or None},
                                 ensure_ascii=False) + "\n")
        else:
            rows.append((s.name, s.address or "-", _fmt(s.login_time), _fmt(s.last_seen)))
    if not as_json:
        print_rows(out, ("NAME", "ADDRESS", "LOGIN (UTC)", "LAST SEEN (UTC)"), rows)


def _print_bans(bans: Iterable[p.BanInfo], as_json: bool, out: TextIO) -> None:
    rows = []
    for b in bans:
        if as_json:
            out.write(json.dumps({"kind": b.kind, "room": b.room or None, "name": b.name,
                                  "by": b.by, "reason": b.reason, "created": _iso(b.created),
                                  "until": _iso(b.until) if b.until else None},
                                 ensure_ascii=False) + "\n")
        else:
            rows.append((b.kind, "#" + b.room if b.room else "*", b.name, b.by,
                         # to the second, rounded up: a ban's end is never shown early
                         _fmt(b.created), timefmt.utc_text(b.until, round_up=True) if b.until
                         else "lifted by hand",
                         b.reason))
    if not as_json:
        print_rows(out, ("KIND", "WHERE", "NAME", "BY", "SINCE (UTC)", "UNTIL (UTC)",
                         "REASON"), rows)


def _print_audit(entries: Iterable[p.AuditEntry], as_json: bool, out: TextIO) -> None:
    rows = []
    for e in entries:
        if as_json:
            out.write(json.dumps({"id": e.id, "time": _iso(e.time), "time_ms": e.time,
                                  "actor": e.actor, "action": e.action,
                                  "room": e.room or None, "target": e.target or None,
                                  "detail": e.detail}, ensure_ascii=False) + "\n")
        else:
            rows.append((str(e.id), _fmt(e.time), e.actor, e.action,
                         "#" + e.room if e.room else "*", e.target or "-", e.detail))
    if not as_json:
        print_rows(out, ("ID", "TIME (UTC)", "ACTOR", "ACTION", "ROOM", "TARGET", "DETAIL"),
                   rows)


def _room_arg(raw: str | None) -> str | None:
    """``--room``: None = every place, ``*`` = server-wide (""), else a room name."""
    if raw is None:
        return None
    return "" if raw == "*" else raw


def run_direct(args: argparse.Namespace, config: object) -> int:
    """``zchat admin ACTION`` on the database: the SQLite file or a PostgreSQL URL (see
    the module docstring); ``migrate`` copies the file into PostgreSQL."""
    assert isinstance(config, Config)
    action: str = args.admin_command
    # The store's warnings are the broker's (a server with fsync off cannot keep its
    # promise of durable OKs); a command's own output is one line or a table.
    logging.getLogger("zchat.store").setLevel(logging.ERROR)
    if action == "migrate":
        return run_migrate(args, config, sys.stdout)
    location = _db_location(args, config, create=action == "create")
    cfg = config.broker

    def hasher(password: str) -> str:
        return hash_password(password, cfg.argon2_memory_kib, cfg.argon2_time_cost,
                             cfg.argon2_parallelism)

    lock: contextlib.AbstractContextManager[None]
    if isinstance(location, str):
        lock = brokers_stopped_pg(location, action in _NEEDS_STOPPED,
                                  need_schema=action != "create")
    elif action in _NEEDS_STOPPED:
        lock = broker_stopped(location.parent)
    else:
        lock = contextlib.nullcontext()
    with lock:
        old_umask = os.umask(0o077)  # a database made here is the broker's: 0600
        try:
            store = open_store(location)
        finally:
            os.umask(old_umask)
        try:
            return _direct(action, args, store, hasher, sys.stdout, sys.stderr,
                           cfg.min_password_chars, cfg.storage_quota_bytes)
        finally:
            store.close()


def _direct(action: str, args: argparse.Namespace, store: GroupStore, hasher: Callable[[str], str],
            out: TextIO, err: TextIO, min_password_chars: int, default_quota: int = 0) -> int:
    """One direct-mode action; new passwords need ``min_password_chars`` characters (the
    configured broker's ``[broker] min_password_chars``, as the broker would ask), and
    ``default_quota`` is its ``storage_quota_bytes``."""
    actor, now = local_actor(), _now_ms()
    as_json = bool(getattr(args, "json", False))
    name: str = getattr(args, "name", "") or ""
    if action == "users":
        _print_users(users_direct(store, default_quota), as_json, out)
    elif action == "sessions":
        _print_sessions(sessions_direct(store), as_json, out)
    elif action == "create":
        accounts, _gen = _checked_csv(Path(args.csv),
                                      lambda k, s: store.get_account(k) is not None
                                      or store.account_skeleton_taken(s), None,
                                      getattr(args, "output", None), min_password_chars)
        sink = open_passwords_file(args, accounts)
        try:
            # one updating line on stderr when it is a terminal (zchat.progress)
            with Progress("admin create", len(accounts), "accounts", "account",
                          stream=err) as progress:
                create_accounts_direct(store, accounts, hasher, actor, now, progress.update)
        except BaseException:
            discard_passwords_file(args, sink)
            raise
        _report_created(args, accounts, sink, out, err)
    elif action == "reset-password":
        _key, _display = _account(store, name)  # before asking for the password
        password, generated = new_password(args)
        check_new_password(password, min_password_chars)
        display = reset_password_direct(store, name, hasher(password), actor, now)
        _said_reset(display, password if generated else None, out, err)
    elif action in ("disable", "enable"):
        display, changed = set_disabled_direct(store, name, action == "disable", actor, now)
        err.write(f"{display} {action}d\n" if changed else f"{display} was {action}d "
                  "already; nothing changed\n")
    elif action == "quota":
        _said_quota(set_quota_direct(store, name, args.quota, default_quota, actor, now), err)
    elif action == "bans":
        _print_bans(bans_direct(store, now, _room_arg(getattr(args, "room", None))),
                    as_json, out)
    elif action == "unban":
        kind = "mute" if getattr(args, "mute", False) else "ban"
        display = unban_direct(store, name, _room_arg(getattr(args, "room", None)) or "",
                               kind, actor, now)
        err.write(f"{'unmuted' if kind == 'mute' else 'unbanned'} {display}\n")
    elif action == "audit":
        room = getattr(args, "room", None)
        if room == "*":
            room = ""
        _print_audit([p.AuditEntry(id=r.id, time=r.time_ms, actor=r.actor, action=r.action,
                                   room=r.room, target=r.target, detail=r.detail)
                      for r in store.audit_log(room=room, actor=getattr(args, "actor", None),
                                               target=getattr(args, "target", None),
                                               action=getattr(args, "action", None),
                                               before_id=getattr(args, "before", None),
                                               limit=args.limit)],
                     as_json, out)
    else:  # argparse only lets known actions through
        raise AdminError(f"unknown admin command {action!r}")
    return 0


def _said_reset(display: str, generated: str | None, out: TextIO, err: TextIO) -> None:
    err.write(f"password of {display} reset; its sessions were ended\n")
    if generated is not None:
        try:
            write_out(out, generated + "\n")
        except OSError as exc:
            raise AdminError(f"the password of {display} was reset, but the generated one "
                             f"could not be written to standard output: "
                             f"{exc.strerror or exc}; reset it again") from None
        err.write("the generated password above is shown only this once\n")


async def _users_as_admin(client: object, what: str) -> tuple[p.AccountInfo, ...]:
    """USERS, asked before ``create`` (to pre-check names) and ``reset-password`` (before
    the new password is asked for). A non-admin's 403 then names what was refused
    (``only broker admins may create accounts``), not the listing it used."""
    assert isinstance(client, Client)
    try:
        return (await client.users()).users
    except RequestFailed as exc:
        if exc.status != Status.FORBIDDEN:
            raise
        raise RequestFailed(exc.status, f"only broker admins may {what}") from None


def broker_min_password_chars(client: object) -> int:
    """The connected broker's ``min_password_chars`` from its INFO reply (1 when it does
    not say: an older broker, which checks only that a password is not empty), for
    checking a new password before it is sent."""
    assert isinstance(client, Client)
    return max(1, client.info.min_password_chars) if client.info is not None else 1


async def run_wire(args: argparse.Namespace, client: object) -> int:
    """``zchat admin ACTION --as ADMIN``: the same commands as requests to the broker,
    on ``client`` (logged in as an admin)."""
    assert isinstance(client, Client)
    out, err = sys.stdout, sys.stderr
    action: str = args.admin_command
    as_json = bool(getattr(args, "json", False))
    name: str = getattr(args, "name", "") or ""
    if action == "users":
        _print_users((await client.users()).users, as_json, out)
    elif action == "sessions":
        _print_sessions((await client.sessions()).sessions, as_json, out)
    elif action == "create":
        existing = await _users_as_admin(client, "create accounts")
        keys = {name_key(u.name) for u in existing}
        skeletons = {skeleton(u.name) for u in existing}
        accounts, _gen = _checked_csv(Path(args.csv),
                                      lambda k, s: k in keys or s in skeletons,
                                      p.MAX_CREATE_ACCOUNTS, getattr(args, "output", None),
                                      broker_min_password_chars(client))
        sink = open_passwords_file(args, accounts)
        try:
            await client.create_accounts(
                tuple(p.NewAccount(name=a.name, password=a.password, bot=a.bot)
                      for a in accounts),
                timeout_s=client.timeout_s + CREATE_S_PER_ACCOUNT * len(accounts))
        except (RequestFailed, ProtocolError, AdminError):  # refused: nothing created
            discard_passwords_file(args, sink)
            raise
        except BaseException:  # no answer: they may exist; keep what they would have
            if sink is not None:
                with sink, contextlib.suppress(OSError):
                    sink.write(_passwords_csv([a for a in accounts if a.generated]))
                print(f"zchat: no answer to the creation: the accounts may have been "
                      f"created (see `zchat admin users`); the passwords they would have "
                      f"are in {args.output}", file=err)
            raise
        _report_created(args, accounts, sink, out, err)
    elif action == "reset-password":
        await _users_as_admin(client, "reset passwords")  # refused before any prompt
        password, generated = new_password(args)
        check_new_password(password, broker_min_password_chars(client))  # before asking
        await client.admin_set_password(name, password)
        _said_reset(name, password if generated else None, out, err)
    elif action in ("disable", "enable"):
        await client.set_disabled(name, action == "disable")
        err.write(f"{name} {action}d\n")
    elif action == "quota":
        _said_quota(await client.set_quota(name, args.quota), err)
    elif action == "bans":
        _print_bans((await client.bans(_room_arg(getattr(args, "room", None)))).bans,
                    as_json, out)
    elif action == "unban":
        room = _room_arg(getattr(args, "room", None)) or ""
        if getattr(args, "mute", False):
            await client.unmute(name, room)
        else:
            await client.unban(name, room)
        err.write(f"{'unmuted' if getattr(args, 'mute', False) else 'unbanned'} {name}\n")
    elif action == "audit":
        audit_room: str | None = getattr(args, "room", None)
        reply = await client.audit(None if audit_room in (None, "*") else audit_room,
                                   actor=getattr(args, "actor", None) or "",
                                   target=getattr(args, "target", None) or "",
                                   action=getattr(args, "action", None) or "",
                                   before=getattr(args, "before", None),
                                   limit=args.limit)
        entries = reply.entries
        if audit_room == "*":
            entries = tuple(e for e in entries if not e.room)
        _print_audit(entries, as_json, out)
    else:
        raise AdminError(f"unknown admin command {action!r}")
    return 0
