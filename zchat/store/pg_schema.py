"""The PostgreSQL schema of zchat.store.postgres: its ordered migrations.

Versioned like the SQLite schema (zchat.store.migrations), with a version of its own: the
table ``zchat_schema`` holds one row, ``version`` i, upgraded to i+1 by ``MIGRATIONS[i]``;
a database from a newer zchat (a higher version) is refused at open, and a database that
holds tables but no ``zchat_schema`` is someone else's and is refused too. Version 1 is
the SQLite schema at its version 7, table by table and column by column, with PostgreSQL's
types: ``BIGINT`` for every integer (SQLite's are 64-bit), ``BOOLEAN`` for the flags, and
identity columns for the ids SQLite gives with ``AUTOINCREMENT``.

Every text column is ``COLLATE "C"``: compared, ordered and case-folded (``lower()``)
byte by byte and ASCII only, as SQLite's BINARY collation and ``lower()`` do, so that
``ORDER BY key`` and the audit log's case-insensitive filters answer the same on both
engines, whatever locale the operator's database was created with.

A room's ``last_seq`` is the counter its messages take their numbers from: storing a
message moves it with ``UPDATE rooms SET last_seq = last_seq + 1 … RETURNING`` in the
message's own transaction, so the room's row stays locked until that transaction ends and
a second writer (another broker on the same database) waits and then takes the next
number. A PostgreSQL SEQUENCE would not do: it is not rolled back, so a refused or lost
write would leave a gap.

``zchat_changes.bans_version`` moves (trigger ``bans_changed``) with every write to
``bans``, by any connection: the store's cache of bans is emptied when it moved, as the
SQLite store does on ``PRAGMA data_version``.

Version 2 adds the cluster's wake-ups: triggers that NOTIFY the channel ``zchat`` when a
room message, a direct message or state the brokers keep in memory is committed, by any
connection (a broker, ``zchat admin``). The brokers LISTEN (zchat.store.pg_listen) and
read the database again: a notification is a wake-up, the tables are the truth.

Version 3 adds the brokers' leases (``LEASES``, docs/cluster.md "Leases and fencing"): a
row per broker id in ``brokers`` with its epoch and lease expiry, and the holder of each
session row (``sessions.broker_id``/``broker_epoch``; '' for a session no live broker
holds, resumable until ``released_ms`` + resume_grace_s).

Version 4 makes a client message id unique per sender (per room for room messages): the
cmid indexes become UNIQUE, so two brokers handling one retried cmid at once store it
once (zchat.store.postgres, ``post_message`` and ``post_dm``).

A DM's id comes from an identity column, whose values are handed out in call order,
not commit order. Within one conversation the store makes them the same: a DM's
transaction takes the conversation's advisory lock (``DM_PAIR_LOCK``, below) before
its INSERT and holds it to its commit, so a DM with a lower id of a conversation is
always committed before one with a higher id is (DM_HISTORY's ``after`` and the read
markers rely on it). That holds only while the identity keeps PostgreSQL's default
``CACHE 1``: with a cache, each connection would take ids from a block of its own.
"""

from __future__ import annotations

#: Ordered schema migrations; index i upgrades version i -> i+1. Never edit a shipped
#: entry: append a new one. Each runs as one script (PostgreSQL's DDL is transactional:
#: the script, the version row and the data move together or not at all).
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the SQLite schema at its version 7 (zchat.store.migrations, all seven).
    """
    CREATE TABLE accounts (
        key                 TEXT COLLATE "C" PRIMARY KEY,
        name                TEXT COLLATE "C" NOT NULL,
        skeleton            TEXT COLLATE "C" NOT NULL UNIQUE,
        password_hash       TEXT COLLATE "C" NOT NULL,
        bot                 BOOLEAN NOT NULL DEFAULT FALSE,
        created_ms          BIGINT NOT NULL,
        disabled            BOOLEAN NOT NULL DEFAULT FALSE,
        storage_quota_bytes BIGINT
    );
    CREATE TABLE rooms (
        key         TEXT COLLATE "C" PRIMARY KEY,
        name        TEXT COLLATE "C" NOT NULL,
        skeleton    TEXT COLLATE "C" NOT NULL UNIQUE,
        topic       TEXT COLLATE "C" NOT NULL DEFAULT '',
        last_seq    BIGINT NOT NULL DEFAULT 0,
        creator     TEXT COLLATE "C",
        created_ms  BIGINT NOT NULL,
        slow_mode_s BIGINT NOT NULL DEFAULT 0,
        private     BOOLEAN NOT NULL DEFAULT FALSE,
        locked      BOOLEAN NOT NULL DEFAULT FALSE,
        audit_floor BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE members (
        room_key    TEXT COLLATE "C" NOT NULL REFERENCES rooms(key),
        account_key TEXT COLLATE "C" NOT NULL REFERENCES accounts(key),
        joined_ms   BIGINT NOT NULL,
        read_seq    BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (room_key, account_key)
    );
    CREATE INDEX members_by_account ON members(account_key);
    CREATE TABLE messages (
        room_key   TEXT COLLATE "C" NOT NULL,
        seq        BIGINT NOT NULL,
        time_ms    BIGINT NOT NULL,
        sender     TEXT COLLATE "C" NOT NULL,
        kind       TEXT COLLATE "C" NOT NULL,
        text       TEXT COLLATE "C" NOT NULL,
        cmid       TEXT COLLATE "C" NOT NULL DEFAULT '',
        deleted_by TEXT COLLATE "C" NOT NULL DEFAULT '',
        sender_key TEXT COLLATE "C" NOT NULL DEFAULT '',
        PRIMARY KEY (room_key, seq)
    );
    CREATE INDEX messages_by_cmid ON messages(room_key, sender, cmid) WHERE cmid <> '';
    CREATE TABLE direct_messages (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        time_ms       BIGINT NOT NULL,
        sender        TEXT COLLATE "C" NOT NULL,
        recipient_key TEXT COLLATE "C" NOT NULL,
        recipient     TEXT COLLATE "C" NOT NULL,
        text          TEXT COLLATE "C" NOT NULL,
        delivered     BOOLEAN NOT NULL,
        cmid          TEXT COLLATE "C" NOT NULL DEFAULT '',
        sender_key    TEXT COLLATE "C" NOT NULL DEFAULT '',
        pair          TEXT COLLATE "C" NOT NULL DEFAULT ''
    );
    CREATE INDEX dms_pending ON direct_messages(recipient_key, delivered, id);
    CREATE INDEX dms_by_cmid ON direct_messages(sender, cmid) WHERE cmid <> '';
    CREATE INDEX dms_by_pair ON direct_messages(pair, id);
    CREATE TABLE account_tokens (
        id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_key  TEXT COLLATE "C" NOT NULL REFERENCES accounts(key),
        label        TEXT COLLATE "C" NOT NULL,
        token_sha256 TEXT COLLATE "C" NOT NULL UNIQUE,
        created_ms   BIGINT NOT NULL
    );
    CREATE INDEX account_tokens_by_account ON account_tokens(account_key, id);
    CREATE TABLE sessions (
        token_sha256   TEXT COLLATE "C" PRIMARY KEY,
        account_key    TEXT COLLATE "C" NOT NULL REFERENCES accounts(key),
        login_token_id BIGINT,
        address        TEXT COLLATE "C" NOT NULL DEFAULT '',
        login_ms       BIGINT NOT NULL
    );
    CREATE TABLE room_roles (
        room_key    TEXT COLLATE "C" NOT NULL REFERENCES rooms(key),
        account_key TEXT COLLATE "C" NOT NULL REFERENCES accounts(key),
        role        TEXT COLLATE "C" NOT NULL CHECK (role IN ('owner', 'moderator')),
        PRIMARY KEY (room_key, account_key)
    );
    CREATE TABLE invites (
        room_key    TEXT COLLATE "C" NOT NULL REFERENCES rooms(key),
        account_key TEXT COLLATE "C" NOT NULL REFERENCES accounts(key),
        by_key      TEXT COLLATE "C" NOT NULL,
        time_ms     BIGINT NOT NULL,
        PRIMARY KEY (room_key, account_key)
    );
    CREATE TABLE bans (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind        TEXT COLLATE "C" NOT NULL CHECK (kind IN ('ban', 'mute')),
        room_key    TEXT COLLATE "C" NOT NULL DEFAULT '',
        account_key TEXT COLLATE "C" NOT NULL REFERENCES accounts(key),
        by_key      TEXT COLLATE "C" NOT NULL,
        reason      TEXT COLLATE "C" NOT NULL DEFAULT '',
        created_ms  BIGINT NOT NULL,
        until_ms    BIGINT
    );
    CREATE UNIQUE INDEX bans_by_target ON bans(kind, room_key, account_key);
    CREATE TABLE audit_log (
        id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        actor   TEXT COLLATE "C" NOT NULL,
        action  TEXT COLLATE "C" NOT NULL,
        room    TEXT COLLATE "C" NOT NULL DEFAULT '',
        target  TEXT COLLATE "C" NOT NULL DEFAULT '',
        detail  TEXT COLLATE "C" NOT NULL DEFAULT ''
    );
    CREATE TABLE mentions (
        account_key TEXT COLLATE "C" NOT NULL,
        room_key    TEXT COLLATE "C" NOT NULL,
        seq         BIGINT NOT NULL,
        PRIMARY KEY (account_key, room_key, seq)
    );
    CREATE INDEX mentions_by_message ON mentions(room_key, seq);
    CREATE TABLE room_tombstones (
        key      TEXT COLLATE "C" PRIMARY KEY,
        last_seq BIGINT NOT NULL
    );
    CREATE TABLE dm_reads (
        account_key TEXT COLLATE "C" NOT NULL,
        peer_key    TEXT COLLATE "C" NOT NULL,
        peer        TEXT COLLATE "C" NOT NULL,
        last_id     BIGINT NOT NULL,
        read_id     BIGINT NOT NULL,
        unread      BIGINT NOT NULL,
        PRIMARY KEY (account_key, peer_key)
    );
    CREATE INDEX dm_reads_unread ON dm_reads(account_key, last_id) WHERE unread > 0;
    CREATE TABLE zchat_changes (
        bans_version BIGINT NOT NULL
    );
    INSERT INTO zchat_changes(bans_version) VALUES (0);
    CREATE FUNCTION zchat_bans_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE zchat_changes SET bans_version = bans_version + 1;
        RETURN NULL;
    END;
    $$;
    CREATE TRIGGER bans_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bans
        FOR EACH STATEMENT EXECUTE FUNCTION zchat_bans_changed();
    """,
    # 1 -> 2: wake-ups for the other brokers of a cluster (docs/cluster.md). Each is a
    # NOTIFY on the channel ``zchat`` (CLUSTER_CHANNEL), sent by PostgreSQL when the
    # writing transaction commits and never if it rolls back; identical payloads of one
    # transaction are sent once. A payload says what to read again, never the data:
    # ``m<room key>`` a room message was stored, ``d<recipient>\t<sender>\t<id>`` a DM,
    # ``a<account key>`` an account was made, ``j<room key>\t<account key>`` a member
    # joined, ``l…`` one left (the frequent changes, applied one by one), ``s`` the rest
    # of the state brokers keep in memory changed (accounts' names, flags and quotas,
    # rooms, topics and modes, roles, bans and mutes, tokens: reloaded whole).
    """
    CREATE FUNCTION zchat_notify_message() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('zchat', 'm' || NEW.room_key);
        RETURN NULL;
    END;
    $$;
    CREATE TRIGGER messages_notify AFTER INSERT ON messages
        FOR EACH ROW EXECUTE FUNCTION zchat_notify_message();
    CREATE FUNCTION zchat_notify_dm() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('zchat', 'd' || NEW.recipient_key || chr(9) || NEW.sender_key
                                   || chr(9) || NEW.id);
        RETURN NULL;
    END;
    $$;
    CREATE TRIGGER direct_messages_notify AFTER INSERT ON direct_messages
        FOR EACH ROW EXECUTE FUNCTION zchat_notify_dm();
    CREATE FUNCTION zchat_notify_state() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('zchat', 's');
        RETURN NULL;
    END;
    $$;
    CREATE FUNCTION zchat_notify_account() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('zchat', 'a' || NEW.key);
        RETURN NULL;
    END;
    $$;
    CREATE TRIGGER accounts_added_notify AFTER INSERT ON accounts
        FOR EACH ROW EXECUTE FUNCTION zchat_notify_account();
    CREATE TRIGGER accounts_notify
        AFTER DELETE OR UPDATE OF name, bot, disabled, storage_quota_bytes
        ON accounts FOR EACH STATEMENT EXECUTE FUNCTION zchat_notify_state();
    CREATE TRIGGER rooms_notify
        AFTER INSERT OR DELETE OR UPDATE OF name, topic, creator, slow_mode_s, private,
        locked ON rooms FOR EACH STATEMENT EXECUTE FUNCTION zchat_notify_state();
    CREATE FUNCTION zchat_notify_member() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM pg_notify('zchat', 'j' || NEW.room_key || chr(9) || NEW.account_key);
        ELSE
            PERFORM pg_notify('zchat', 'l' || OLD.room_key || chr(9) || OLD.account_key);
        END IF;
        RETURN NULL;
    END;
    $$;
    CREATE TRIGGER members_notify AFTER INSERT OR DELETE ON members
        FOR EACH ROW EXECUTE FUNCTION zchat_notify_member();
    CREATE TRIGGER room_roles_notify AFTER INSERT OR UPDATE OR DELETE ON room_roles
        FOR EACH STATEMENT EXECUTE FUNCTION zchat_notify_state();
    CREATE TRIGGER bans_notify AFTER INSERT OR UPDATE OR DELETE ON bans
        FOR EACH STATEMENT EXECUTE FUNCTION zchat_notify_state();
    CREATE TRIGGER account_tokens_notify AFTER DELETE ON account_tokens
        FOR EACH STATEMENT EXECUTE FUNCTION zchat_notify_state();
    """,
    # 2 -> 3: LEASES (below). Kept as a named script so that a parallel schema change can
    # be numbered before or after it by moving one line.
)

#: Leases of the brokers of a cluster, and the holder of each session (docs/cluster.md,
#: "Leases and fencing"). ``brokers``: one row per broker id; ``epoch`` grows at each
#: start (and each fresh lease after a fencing), ``lease_until`` is the database clock's
#: time (``clock_timestamp()``) until which the broker may act, moved forward at each
#: renewal; ``reaped`` is set, once, by the broker that took over the sessions of an
#: expired lease (a conditional UPDATE: two reapers cannot both do it); ``owner`` names
#: the process that holds the id (config.broker_owner: the machine's boot, its host name
#: and the data directory), so that a second broker started with the same id is refused
#: while the first one's lease runs (Store.register_broker). A session row is
#: held by (``broker_id``, ``broker_epoch``) while a broker has it in memory; '' when
#: none does (the broker stopped, or its lease was reaped): then ``released_ms`` (UTC
#: ms) is when it was let go, and it is resumable for resume_grace_s after that.
#: Rows kept before this version are let go now.
LEASES = """
    CREATE TABLE brokers (
        id          TEXT COLLATE "C" PRIMARY KEY,
        epoch       BIGINT NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL,
        reaped      BOOLEAN NOT NULL DEFAULT FALSE,
        started     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        owner       TEXT COLLATE "C" NOT NULL DEFAULT ''
    );
    ALTER TABLE sessions ADD COLUMN broker_id TEXT COLLATE "C" NOT NULL DEFAULT '';
    ALTER TABLE sessions ADD COLUMN broker_epoch BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN released_ms BIGINT NOT NULL DEFAULT 0;
    UPDATE sessions SET released_ms =
        (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    CREATE INDEX sessions_by_broker ON sessions(broker_id, broker_epoch);
    CREATE INDEX sessions_by_account ON sessions(account_key);
"""
MIGRATIONS = (*MIGRATIONS, LEASES)

# 3 -> 4: a client message id is stored once per sender, whichever broker takes it
# (several brokers handling one retried cmid at once): the two cmid indexes become
# UNIQUE, which the DM INSERT's ``ON CONFLICT … DO NOTHING`` relies on (a room
# message's is found under its room's row lock). A duplicate a race may have stored
# before is kept as a message; only its cmid is cleared, so that the first one stays
# the one a retry finds (the look-ups take the lowest seq or id, as before). Needs
# nothing of version 3's.
UNIQUE_CMIDS = """
    UPDATE messages m SET cmid = '' WHERE m.cmid <> '' AND EXISTS (
        SELECT 1 FROM messages o WHERE o.room_key = m.room_key AND o.sender = m.sender
        AND o.cmid = m.cmid AND o.seq < m.seq);
    DROP INDEX messages_by_cmid;
    CREATE UNIQUE INDEX messages_by_cmid ON messages(room_key, sender, cmid)
        WHERE cmid <> '';
    UPDATE direct_messages d SET cmid = '' WHERE d.cmid <> '' AND EXISTS (
        SELECT 1 FROM direct_messages o WHERE o.sender = d.sender AND o.cmid = d.cmid
        AND o.id < d.id);
    DROP INDEX dms_by_cmid;
    CREATE UNIQUE INDEX dms_by_cmid ON direct_messages(sender, cmid) WHERE cmid <> '';
    """
MIGRATIONS = (*MIGRATIONS, UNIQUE_CMIDS)

# 4 -> 5: notices (docs/PROTOCOL.md §6.7, §6.8), as SQLite's 7 -> 8: a DM's kind, "text"
# or "notice" (a room message's ``kind`` column holds "text", "action" or "notice"); and
# sessions that announce no presence (LOGIN ``presence`` false, §6.3): their rows are
# never counted for the account's presence in the cluster (``_HELD``).
DM_KINDS = """
    ALTER TABLE direct_messages ADD COLUMN IF NOT EXISTS kind TEXT COLLATE "C" NOT NULL
        DEFAULT 'text';
    ALTER TABLE sessions ADD COLUMN IF NOT EXISTS presence BOOLEAN NOT NULL DEFAULT TRUE;
    """
MIGRATIONS = (*MIGRATIONS, DM_KINDS)

SCHEMA_VERSION = len(MIGRATIONS)

#: The channel of the cluster's wake-ups (migration 1 -> 2 above).
CLUSTER_CHANNEL = "zchat"

#: The table that holds the schema's version (one row).
VERSION_TABLE = "zchat_schema"

#: The key of the advisory lock held while the schema is checked and upgraded, so that
#: brokers started at once on a new database do not both create its tables
#: (``pg_advisory_xact_lock``; any 64-bit number no other application uses: "zchat" in
#: ASCII).
MIGRATION_LOCK = 0x7A63686174

#: The key of the advisory lock that marks a running broker: each broker holds it shared
#: on its connection for as long as it runs (``Store.hold_broker_lock``), and `zchat admin`
#: writes that a running broker holds in memory (creating accounts, resetting passwords,
#: disabling, quotas) take it exclusively, so they are refused while any broker runs on
#: the database and no broker starts while they write: the data directory's
#: ``broker.lock`` of an SQLite file, for a database several brokers share
#: (docs/admin.md).
BROKER_LOCK = MIGRATION_LOCK + 1

#: The first key of the two-key advisory lock taken per account (the second: the hash of
#: its key) while a broker counts the account's sessions in the cluster to decide its
#: presence (``Store.sessions_held``): held until the transaction ends, so that two
#: brokers starting or ending the account's sessions at once decide one after the
#: other, and exactly one online or offline event goes out.
PRESENCE_LOCK = 0x7A63

#: The first key of the transaction-scoped advisory lock of a DM conversation
#: (``pg_advisory_xact_lock(DM_PAIR_LOCK, hash of the pair)``: the two-int4 form, a key
#: space apart from the one-bigint locks above). Taken before a DM's INSERT and held to
#: its commit, it puts a conversation's DM ids in commit order (module docstring).
DM_PAIR_LOCK = 0x7A636864  # "zchd"
