"""The wire's version and limits as named constants, each with the reason beside it
(docs/PROTOCOL.md §9 lists them; section numbers in comments refer to that document).

Pure data: nothing here touches a socket, a clock or a database.
"""

from __future__ import annotations

#: Protocol signature and version, the first frame of every request/reply/push and the
#: second of every event (§3). A peer speaking another version gets 426.
VERSION = b"ZC1"
VERSION_NUMBER = 1

#: The room every account is made a member of at REGISTER (§6.2), made by the broker;
#: the console opens it first. Defined once, for the broker core and the clients.
DEFAULT_ROOM = "lobby"

#: Request ids are opaque to the broker; 32 bytes fit a UUID in hex (§3.1).
MAX_REQUEST_ID_BYTES = 32
#: Largest body the codec accepts in a request (§9). A 4,000-byte message escaped as JSON
#: stays far below it; anything larger is refused with 413 without being parsed.
MAX_BODY_BYTES = 64 * 1024
#: Transport limit set as ZMQ_MAXMSGSIZE on the broker's ROUTER (§9): a peer sending a
#: larger frame is disconnected by libzmq before the broker sees it. Twice MAX_BODY_BYTES,
#: so that a body somewhat over its limit still gets a 413 rather than a silent drop.
#: libzmq buffers a whole multipart message before delivering it and bounds only the size
#: of each frame, not their number: see §9 for what that leaves open.
MAX_TRANSPORT_FRAME_BYTES = 2 * MAX_BODY_BYTES
#: Largest reply body a client accepts (a 500-message history page of long texts).
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Every JSON integer on the wire is a signed 64-bit value (§9): SQLite and most JSON
#: libraries hold no more, so a larger one is refused with 400 before it reaches them.
MIN_WIRE_INT = -(2**63)
MAX_WIRE_INT = 2**63 - 1
#: Default and largest page of history (§6.9).
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 500
#: Client message ids (idempotent send, §6.8) are short opaque strings.
MAX_CMID_CHARS = 64
#: Direct-message ids acknowledged in one DM_ACK (§6.7).
MAX_ACK_IDS = 1000
#: DM conversations with unread messages listed in a LOGIN or RESUME reply (``dm_reads``,
#: §6.3), newest first: it bounds that reply (a thousand accounts each writing once), and
#: more unread conversations than that are not read through one by one anyway; the rest
#: stay unread and appear as the listed ones are read.
MAX_DM_READS = 1000
#: Passwords are bytes to Argon2id; 1,024 characters is more than any pass-phrase.
MAX_PASSWORD_CHARS = 1024
#: Away message (SET_PRESENCE) and quit message (LOGOUT), in characters (§6.12, §6.4).
MAX_AWAY_TEXT_CHARS = 200
#: A room's topic (its one-line subject, SET_TOPIC §6.22), in characters: long enough for
#: a sentence and a link, short enough for one status line.
MAX_TOPIC_CHARS = 300
#: An account token's label (TOKEN_CREATE §6.24), in characters: a short note such as
#: "deploy bot on ci-3", one line.
MAX_TOKEN_LABEL_CHARS = 100
#: Live account tokens one account may hold (§6.24): plenty for a fleet of bots, and it
#: bounds the constant-time comparison a token LOGIN makes against each of them.
MAX_TOKENS_PER_ACCOUNT = 100
#: Rooms one account may be in (JOIN §6.5, §15): far more than a person follows, and it
#: bounds what every PONG and LOGIN reply lists (a tester's 120,000 joins made each of
#: that account's PINGs cost the broker 2 s).
MAX_ROOMS_PER_ACCOUNT = 1000
#: Longest slow mode of a room (SET_SLOW_MODE §6.28), in seconds: one day, as Discord's
#: longest "slowmode" is six hours and Twitch's two minutes; anything longer is a
#: read-only room, which is another feature.
MAX_SLOW_MODE_S = 86_400
#: A moderation reason (KICK, BAN, MUTE §17), in characters: one line, like a quit message.
MAX_REASON_CHARS = 200
#: Longest timed ban or mute (BAN, MUTE §17), in seconds: ten years; 0 means no expiry.
MAX_BAN_S = 10 * 366 * 86_400
#: Default and largest page of the audit log (AUDIT §6.41).
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 500
#: Accounts one CREATE_ACCOUNTS may create (§6.42): a class or a team; with passwords of a
#: few dozen characters the request stays far below MAX_BODY_BYTES, and hashing them all
#: (Argon2id, one after the other off the loop) takes seconds, not minutes.
MAX_CREATE_ACCOUNTS = 200
#: Largest storage quota (ADMIN_SET_QUOTA §6.53, ``storage_quota_bytes`` §9), in bytes of
#: message text: 1 PiB, more than any disk a broker stores on; a larger one is a typo.
MAX_STORAGE_QUOTA_BYTES = 2**50

