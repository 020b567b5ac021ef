"""The SQLite schema of zchat.store.sqlite: the ordered migrations and how a script is cut
into statements. ``user_version`` i is upgraded to i+1 by ``MIGRATIONS[i]``; a database
from a newer zchat (a higher ``user_version``) is refused at open."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

#: Ordered schema migrations; index i upgrades user_version i -> i+1. Never edit a shipped
#: entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE accounts (
        key           TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        skeleton      TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        bot           INTEGER NOT NULL DEFAULT 0,
        created_ms    INTEGER NOT NULL
    );
    CREATE TABLE rooms (
        key        TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        skeleton   TEXT NOT NULL UNIQUE,
        topic      TEXT NOT NULL DEFAULT '',
        last_seq   INTEGER NOT NULL DEFAULT 0,
        creator    TEXT,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE members (
        room_key    TEXT NOT NULL REFERENCES rooms(key),
        account_key TEXT NOT NULL REFERENCES accounts(key),
        joined_ms   INTEGER NOT NULL,
        PRIMARY KEY (room_key, account_key)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_account ON members(account_key);
    CREATE TABLE messages (
        room_key TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        time_ms  INTEGER NOT NULL,
        sender   TEXT NOT NULL,
        kind     TEXT NOT NULL,
        text     TEXT NOT NULL,
        cmid     TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (room_key, seq)
    ) WITHOUT ROWID;
    CREATE TABLE direct_messages (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms    INTEGER NOT NULL,
        sender     TEXT NOT NULL,
        recipient_key TEXT NOT NULL,
        recipient  TEXT NOT NULL,
        text       TEXT NOT NULL,
        delivered  INTEGER NOT NULL
    );
    CREATE INDEX dms_pending ON direct_messages(recipient_key, delivered, id);
    """,
    # 1 -> 2: account tokens (docs/PROTOCOL.md §6.24). Only the token's SHA-256 is kept:
    # a token is 256 random bits, so a fast hash is enough (no dictionary to guess from).
    """
    CREATE TABLE account_tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        account_key  TEXT NOT NULL REFERENCES accounts(key),
        label        TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_ms   INTEGER NOT NULL
    );
    CREATE INDEX account_tokens_by_account ON account_tokens(account_key, id);
    """,
    # 2 -> 3: delivery guarantees and protection (issue 5): idempotent SEND and DM by
    # client message id (a lookup index, not UNIQUE: older rows may repeat a cmid),
    # per-room slow mode, and sessions kept across a broker restart for RESUME (only
    # the session token's SHA-256 is stored).
    """
    CREATE INDEX messages_by_cmid ON messages(room_key, sender, cmid) WHERE cmid <> '';
    ALTER TABLE direct_messages ADD COLUMN cmid TEXT NOT NULL DEFAULT '';
    CREATE INDEX dms_by_cmid ON direct_messages(sender, cmid) WHERE cmid <> '';
    ALTER TABLE rooms ADD COLUMN slow_mode_s INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE sessions (
        token_sha256   TEXT PRIMARY KEY,
        account_key    TEXT NOT NULL REFERENCES accounts(key),
        login_token_id INTEGER,
        address        TEXT NOT NULL DEFAULT '',
        login_ms       INTEGER NOT NULL
    );
    """,
    # 3 -> 4: security and moderation (issue 6). Roles per room (the creator is 'owner');
    # private (invite-only) and locked (only moderators post) rooms; invitations; bans
    # and mutes, per room or server-wide (room_key ''), with an optional expiry; deleted
    # messages keep their row (text kept for the audit) and say who deleted them;
    # disabled accounts; and the append-only audit log of moderation actions (the Store
    # has no method that updates or deletes its rows).
    """
    ALTER TABLE accounts ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rooms ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN deleted_by TEXT NOT NULL DEFAULT '';
    CREATE TABLE room_roles (
        room_key    TEXT NOT NULL REFERENCES rooms(key),
        account_key TEXT NOT NULL REFERENCES accounts(key),
        role        TEXT NOT NULL CHECK (role IN ('owner', 'moderator')),
        PRIMARY KEY (room_key, account_key)
    ) WITHOUT ROWID;
    INSERT INTO room_roles(room_key, account_key, role)
        SELECT key, creator, 'owner' FROM rooms
        WHERE creator IS NOT NULL AND creator <> ''
          AND creator IN (SELECT key FROM accounts);
    CREATE TABLE invites (
        room_key    TEXT NOT NULL REFERENCES rooms(key),
        account_key TEXT NOT NULL REFERENCES accounts(key),
        by_key      TEXT NOT NULL,
        time_ms     INTEGER NOT NULL,
        PRIMARY KEY (room_key, account_key)
    ) WITHOUT ROWID;
    CREATE TABLE bans (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL CHECK (kind IN ('ban', 'mute')),
        room_key    TEXT NOT NULL DEFAULT '',
        account_key TEXT NOT NULL REFERENCES accounts(key),
        by_key      TEXT NOT NULL,
        reason      TEXT NOT NULL DEFAULT '',
        created_ms  INTEGER NOT NULL,
        until_ms    INTEGER
    );
    CREATE UNIQUE INDEX bans_by_target ON bans(kind, room_key, account_key);
    CREATE TABLE audit_log (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        room    TEXT NOT NULL DEFAULT '',
        target  TEXT NOT NULL DEFAULT '',
        detail  TEXT NOT NULL DEFAULT ''
    );
    """,
    # 4 -> 5: performance (issue 7). A room's last_seq follows its messages in the same
    # statement as the INSERT, so storing a message is one statement (atomic on its own,
    # no SAVEPOINT needed inside a group commit) instead of an UPDATE and an INSERT.
    # ``last_seq < NEW.seq``: rows inserted below the counter never move it back.
    """
    CREATE TRIGGER messages_last_seq AFTER INSERT ON messages BEGIN
        UPDATE rooms SET last_seq = NEW.seq
        WHERE key = NEW.room_key AND last_seq < NEW.seq;
    END;
    """,
    # 5 -> 6: DM history and read state (issue 13, docs/PROTOCOL.md §6.3.1, §6.48, §6.49).
    # A room's read marker lives with the membership (``members.read_seq``): everyone has
    # read what was there when this migration ran (no read state existed), a new member
    # what was there when they joined. A message stores its sender's key; posting in a
    # room reads it, and the sender's marker moves once per group commit rather than per
    # message (``Store._own_reads``). ``mentions`` holds the unread messages that
    # name a member (removed as the marker passes them). DMs get their sender's key and
    # their conversation (``pair``: the two keys, sorted, joined by "/", which no name
    # holds) for DM_HISTORY; ``dm_reads`` is each account's read state per conversation.
    # A DM that was still pending (not acknowledged by any session) becomes unread for its
    # recipient: the marker of a conversation with pending DMs stops just before its
    # oldest pending one; every other DM is read (notes to oneself too). ``delivered``
    # keeps meaning "handed to a session of the recipient" (DM_ACK). Deleting a room
    # (DELETE_ROOM, same release) leaves a tombstone with its last_seq: a room made again
    # under that name goes on numbering from there, so that one seq of one room name never
    # names two messages (a client that missed ROOM_DELETED would drop the new room's
    # first messages as repeats). ``rooms.audit_floor``: the audit entries up to this id
    # are older than the room (a deleted room of that name), and not its owner's to read.
    """
    ALTER TABLE members ADD COLUMN read_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE members SET read_seq = COALESCE(
        (SELECT last_seq FROM rooms WHERE rooms.key = members.room_key), 0);
    ALTER TABLE messages ADD COLUMN sender_key TEXT NOT NULL DEFAULT '';
    CREATE TABLE mentions (
        account_key TEXT NOT NULL,
        room_key    TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        PRIMARY KEY (account_key, room_key, seq)
    ) WITHOUT ROWID;
    CREATE INDEX mentions_by_message ON mentions(room_key, seq);
    ALTER TABLE direct_messages ADD COLUMN sender_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE direct_messages ADD COLUMN pair TEXT NOT NULL DEFAULT '';
    UPDATE direct_messages SET sender_key = COALESCE(
        (SELECT key FROM accounts WHERE accounts.name = direct_messages.sender),
        lower(sender));
    UPDATE direct_messages SET pair =
        min(sender_key, recipient_key) || '/' || max(sender_key, recipient_key);
    CREATE INDEX dms_by_pair ON direct_messages(pair, id);
    CREATE TABLE room_tombstones (
        key      TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE rooms ADD COLUMN audit_floor INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE dm_reads (
        account_key TEXT NOT NULL,
        peer_key    TEXT NOT NULL,
        peer        TEXT NOT NULL,
        last_id     INTEGER NOT NULL,
        read_id     INTEGER NOT NULL,
        unread      INTEGER NOT NULL,
        PRIMARY KEY (account_key, peer_key)
    ) WITHOUT ROWID;
    CREATE INDEX dm_reads_unread ON dm_reads(account_key, last_id) WHERE unread > 0;
    INSERT INTO dm_reads(account_key, peer_key, peer, last_id, read_id, unread)
    SELECT c.account_key, c.peer_key, c.peer, c.last_id, c.read_id,
           (SELECT COUNT(*) FROM direct_messages d WHERE d.pair = c.pair
                AND d.recipient_key = c.account_key AND d.id > c.read_id)
    FROM (SELECT account_key, peer_key, pair, MAX(peer) AS peer, MAX(id) AS last_id,
                 COALESCE(MIN(CASE WHEN pending THEN id END) - 1, MAX(id)) AS read_id
          FROM (SELECT recipient_key AS account_key, sender_key AS peer_key, sender AS peer,
                       pair, id, delivered = 0 AND sender_key <> recipient_key AS pending
                FROM direct_messages
                UNION ALL
                SELECT sender_key, recipient_key, recipient, pair, id, 0
                FROM direct_messages)
          GROUP BY account_key, peer_key) AS c;
    """,
    # 6 -> 7: storage quotas (issue 14, docs/PROTOCOL.md §6.53). An account's own quota on
    # the bytes of message text it has stored, set by an operator: NULL follows the
    # broker's ``storage_quota_bytes``, 0 is no quota, else the bytes it may store.
    """
    ALTER TABLE accounts ADD COLUMN storage_quota_bytes INTEGER;
    """,
    # 7 -> 8: notices (docs/PROTOCOL.md §6.7, §6.8): a DM's kind, "text" or "notice", as
    # a room message's ``kind`` column holds "text", "action" or "notice". A session
    # that announces no presence (LOGIN ``presence`` false, §6.3): ``presence`` 0, kept
    # for its RESUME.
    """
    ALTER TABLE direct_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
    ALTER TABLE sessions ADD COLUMN presence INTEGER NOT NULL DEFAULT 1;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def sql_statements(script: str) -> Iterator[str]:
    """The statements of a migration script, in order. A statement ends at a ``;`` where
    ``sqlite3.complete_statement`` says it is complete, so a trigger's body (``BEGIN …;
    END;``) stays one statement. Empty statements are skipped."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \t\n;"):
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:60]!r}")


