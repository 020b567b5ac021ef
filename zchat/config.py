"""zchat settings: defaults in code, then a TOML file, then command-line flags.

The file has two tables, ``[broker]`` and ``[client]``, whose keys are exactly the fields
of :class:`BrokerConfig` and :class:`ClientConfig`; zchat/data/zchat.toml lists every one with
its default. :func:`load_config` reads the file and validates it; the CLI then applies its
flags with :func:`dataclasses.replace` and calls :func:`validate` again, so a bad flag is
reported the same way as a bad file. Every problem raises :class:`ConfigError` naming the
file, the table and the key.

Paths follow the XDG Base Directory Specification: the file is
``$XDG_CONFIG_HOME/zchat/zchat.toml`` (default ``~/.config/zchat/zchat.toml``) and the
broker's data lives in ``$XDG_DATA_HOME/zchat`` (default ``~/.local/share/zchat``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from zchat.errors import ZchatError
from zchat.keyformat import ENCRYPTION_MODES, BadKey, check_key
from zchat.passwords import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST
from zchat.ratelimit import proxy_networks
from zchat.wire import MAX_PASSWORD_CHARS, MAX_STORAGE_QUOTA_BYTES

#: The file's name inside the zchat config directory.
CONFIG_FILE_NAME = "zchat.toml"
#: The sample settings file installed with the package (package data, beside this
#: module): every setting with its default and a comment; ``zchat config --defaults``
#: prints it.
SAMPLE_CONFIG = ("data", "zchat.toml")


def sample_config_text() -> str:
    """The text of the installed sample settings file (SAMPLE_CONFIG), which
    tests/test_config.py holds equal to the defaults in code."""
    from importlib import resources

    folder, name = SAMPLE_CONFIG
    return (resources.files("zchat") / folder / name).read_text(encoding="utf-8")

#: Accepted values of ``[broker] log_level`` (names of :mod:`logging` levels, lower case).
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Upper bound of ``max_text_bytes``: a chat line must fit comfortably in one frame body
#: together with its JSON envelope, well under any transport's practical message size.
MAX_TEXT_BYTES_LIMIT = 30_000  # JSON escaping may double text; stays under MAX_BODY_BYTES

#: Upper bound of ``max_text_lines``: no more lines than ``MAX_TEXT_BYTES_LIMIT`` allows
#: line breaks (each takes a byte), so the setting never promises more than the bytes do.
MAX_TEXT_LINES_LIMIT = MAX_TEXT_BYTES_LIMIT

#: Smallest accepted Argon2id memory, KiB (``argon2_memory_kib``): 1 MiB, far below
#: OWASP's 19 MiB (zchat.passwords), so that tests and benchmarks can set up thousands of
#: accounts quickly; less would make stored hashes cheap to brute-force on any GPU.
MIN_ARGON2_MEMORY_KIB = 1024
#: Largest accepted Argon2id memory, KiB: 4 GiB, twice RFC 9106's first recommendation;
#: each of ``hash_workers`` threads holds this much while it hashes.
MAX_ARGON2_MEMORY_KIB = 4 * 1024 * 1024
#: Largest accepted ``argon2_time_cost`` (passes over the memory): at OWASP's 19 MiB, 100
#: passes take seconds per login, beyond what an interactive login should wait.
MAX_ARGON2_TIME_COST = 100
#: Largest accepted ``argon2_parallelism`` (lanes; one thread each while hashing).
MAX_ARGON2_PARALLELISM = 64

#: Keys that older config files may hold, still accepted with a warning and ignored, with
#: the reason shown. The scrypt keys set the cost of new password hashes before Argon2id;
#: old scrypt hashes carry their own parameters, so nothing needs them any more.
DEPRECATED_KEYS: dict[tuple[str, str], str] = {
    ("broker", key): ("is deprecated and ignored: new password hashes are Argon2id "
                      "(argon2_memory_kib, argon2_time_cost, argon2_parallelism); "
                      "existing scrypt hashes carry their own parameters and are "
                      "replaced at their account's next login; remove the line")
    for key in ("scrypt_n", "scrypt_r", "scrypt_p")}

log = logging.getLogger("zchat.config")


class ConfigError(ZchatError):
    """A setting is unknown, of the wrong type or out of range, or the file is unreadable.

    ``path``, ``table`` and ``key`` say where the problem is when known (``None`` otherwise);
    ``str(error)`` names them all, e.g. ``/etc/zchat.toml: [broker] max_text_bytes: must be
    between 1 and 30000, got 0``.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: Path | str | None = None,
        table: str | None = None,
        key: str | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(f"{path}:")
        if table is not None:
            where.append(f"[{table}] {key}:" if key is not None else f"[{table}]:")
        elif key is not None:
            where.append(f"{key}:")
        super().__init__(" ".join([*where, problem]))
        self.problem = problem
        self.path = path
        self.table = table
        self.key = key


#: Bounds of a rate setting other than 0 (off), in tokens a second: below one an hour
#: a wait would run to hours (and ``retry_after_ms`` past any sane integer); above a
#: million the limit means nothing.
MIN_RATE_PER_S = 1 / 3600
MAX_RATE_PER_S = 1_000_000.0
#: Upper bound of burst and session-count settings.
MAX_COUNT_SETTING = 10_000_000
#: Bounds of the reading budget (``read_rate_bytes_per_s``, ``read_burst_bytes``): a
#: budget under 64 KiB would refuse a single HISTORY page of the default size of long
#: texts more than once; over 16 GiB it bounds nothing.
MIN_READ_RATE = 1_024
MAX_READ_RATE = 1 << 34
MIN_READ_BURST = 65_536
MAX_READ_BURST = 1 << 34
#: Bounds of the per-connection byte limits (``max_incomplete_bytes``,
#: ``max_unread_bytes``, ``max_held_bytes``) other than 0 (off): under 1 MiB a legal
#: request (5 frames of 128 KiB) or a single HISTORY page could pass one; 1 TiB bounds
#: nothing a host holds.
MIN_HELD_BYTES = 1 << 20
MAX_HELD_BYTES = 1 << 40
#: Bounds of the broker's durations (heartbeats, resume grace), in seconds: a
#: heartbeat below 10 ms is noise, and nothing waits more than 30 days.
MIN_HEARTBEAT_S = 0.01
MAX_DURATION_S = 30 * 86_400
#: The longest broker id (PostgreSQL's application_name keeps 63 bytes).
MAX_BROKER_ID_CHARS = 63
#: The longest interval of a cluster's periodic checks, in seconds.
MAX_CLUSTER_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class BrokerConfig:
    """Settings of ``zchat broker`` (the ``[broker]`` table).

    - ``router``: ZeroMQ endpoint the ROUTER socket binds for requests and replies.
    - ``pub``: ZeroMQ endpoint the PUB socket binds for room and presence events.
    - ``pub_advertised``: PUB endpoint told to clients in INFO. Empty means ``pub``; if
      that has a wildcard host (``*`` or ``0.0.0.0``) the client replaces it with the host
      it reached the ROUTER on. Set it when clients reach the broker by another address
      (NAT, containers).
    - ``data_dir``: directory of the broker's database. Empty means
      ``$XDG_DATA_HOME/zchat`` (see :func:`data_dir`).
    - ``store``: where accounts, rooms and history live: empty for the SQLite file
      ``zchat.db`` in ``data_dir``, or a PostgreSQL URL
      (``postgresql://USER@HOST:PORT/DB``, docs/cluster.md); the data directory still
      holds the key pair and the lock file.
    - ``id``: this broker's id in a cluster (several brokers on one PostgreSQL database,
      docs/cluster.md): at most 63 printable ASCII characters, unique in the cluster and
      stable across restarts. Empty means the host name and a hash of the data directory
      (:func:`broker_id`).
    - ``cluster_check_s``: in a cluster, seconds between the broker's checks of every
      room's last sequence number in the database against what it published (the catch-up
      for a lost notification; MIN_HEARTBEAT_S..3,600).
    - ``cluster_refresh_s``: in a cluster, seconds between full reloads of the state the
      broker keeps in memory (rooms, members, roles, modes, bans, accounts) and of its
      sessions' pending DMs, whether or not a notification came (MIN_HEARTBEAT_S..3,600).
    - ``lease_s``: in a cluster, seconds of the database's clock a broker's lease lasts
      after each renewal (docs/cluster.md, "Leases and fencing"): a broker silent that
      long (killed, stopped, cut from the database) has its sessions taken over by the
      others, and a broker that finds its lease lost drops its sessions. At least twice
      ``lease_renew_s``, at most 3,600; under two heartbeat intervals plus a client's
      first back-off, a warning at start (``lease_warning``).
    - ``lease_renew_s``: in a cluster, seconds between a broker's scheduled renewals of
      its lease (each commit renews it too), each with a look for expired leases of the
      others (MIN_HEARTBEAT_S..3,600).
    - ``log_level``: one of ``debug``, ``info``, ``warning``, ``error``.
    - ``admins``: account names with admin rights.
    - ``max_text_bytes``: largest chat text accepted, in UTF-8 bytes (1..30000).
    - ``max_text_lines``: most lines a chat text may have (1..MAX_TEXT_LINES_LIMIT):
      one more than its line breaks (``zchat.names.text_lines``).
    - ``heartbeat_interval_s``: seconds between heartbeats a client should send (> 0).
    - ``heartbeat_timeout_s``: seconds of silence after which a session is evicted; must be
      greater than ``heartbeat_interval_s``.
    - ``login_timeout_s``: seconds a tcp connection to the ROUTER may hold no session
      before the broker cuts it (0: never; else 1..86,400; docs/PROTOCOL.md §15.3).
    - ``max_stored_dms``: pending (unacknowledged) direct messages offered per recipient at
      login (>= 1); beyond it the oldest stops being offered but stays in the DM history,
      unread (docs/PROTOCOL.md §6.7.1): no DM is dropped.
    - ``sndhwm`` / ``rcvhwm``: ZeroMQ send/receive high-water marks of the ROUTER, in
      messages (>= 1).
    - ``pub_sndhwm``: events queued per subscriber on the PUB, in messages (>= 1); beyond
      it that subscriber's events are dropped and its client repairs room messages from
      HISTORY (docs/PROTOCOL.md §15.2).
    - ``argon2_memory_kib`` / ``argon2_time_cost`` / ``argon2_parallelism``: Argon2id
      cost of new password hashes (RFC 9106; zchat.passwords): memory in KiB
      (MIN_ARGON2_MEMORY_KIB..MAX_ARGON2_MEMORY_KIB), passes
      (1..MAX_ARGON2_TIME_COST) and lanes (1..MAX_ARGON2_PARALLELISM); OWASP's minimum,
      19,456 KiB, 2 and 1, by default. A hash made with less memory or fewer passes, or
      an scrypt hash of older versions, is replaced at its account's next successful
      login. ``scrypt_n`` / ``scrypt_r`` / ``scrypt_p`` of older files load with a
      warning and are ignored (DEPRECATED_KEYS).
    - ``hash_workers``: threads hashing passwords off the event loop (1..64).
    - ``min_password_chars``: the shortest new password accepted, in characters (1..1024;
      REGISTER, SET_PASSWORD, ADMIN_SET_PASSWORD, CREATE_ACCOUNTS and ``zchat admin`` on
      the database; 422 below it). Existing passwords are not checked: an account with a
      shorter one still logs in.
    - ``send_rate_per_s`` / ``send_burst``: token bucket per session for SEND and DM:
      tokens per second (>= 0; 0 turns the limit off) and bucket size (>= 1). Over it a
      request gets 429 with ``retry_after_ms`` (docs/PROTOCOL.md §15).
    - ``login_rate_per_s`` / ``login_burst``: token bucket per peer address (per
      connection on inproc/ipc) for LOGIN and REGISTER attempts, password or token
      (>= 0, 0 off; >= 1). RESUME is not counted.
    - ``trusted_proxies``: IP addresses and CIDR networks (``"127.0.0.1"``,
      ``"10.0.0.0/8"``) of trusted proxies such as the IRC gateway (``[irc]
      tell_addresses``): a connection from one of them may tell, in LOGIN and REGISTER
      (``address``), the address of the user it acts for, and the broker then counts
      that login in the user's address's buckets instead of the proxy's. From any other
      peer ``address`` is refused with 403. Empty (the default): nobody may tell one
      (docs/security.md, "Trusted proxies").
    - ``max_sessions``: live sessions in the whole broker (>= 1); a LOGIN beyond it gets
      503.
    - ``max_connections``: tcp and ipc connections the broker holds at once, over its
      ROUTER, PUB and key service (1..MAX_COUNT_SETTING); beyond it a new connection is
      closed at once. A client holds two (DEALER and SUB). The process's ``ulimit -n``
      must be at least this plus zchat.broker.connections.FD_HEADROOM; the broker raises its
      soft limit toward the hard one at start, and admits fewer (with a WARNING) when
      the hard limit is lower (docs/PROTOCOL.md §15.3).
    - ``max_connections_per_address``: connections from one peer address (IPv4 address,
      IPv6 /64) at once (1..``max_connections``); beyond it a new one is closed at once.
    - ``account_send_rate_per_s`` / ``account_send_burst``: token bucket per account,
      shared by all its sessions, for what the session bucket counts (SEND, DM, a topic
      change, a JOIN of a new room): more sessions bring no more sending (0 off; >= 1).
    - ``presence_rate_per_s`` / ``presence_burst``: token bucket per account for
      SET_PRESENCE that changes the presence or the away text (0 off; >= 1).
    - ``room_create_rate_per_s`` / ``room_create_burst``: token bucket per account for
      JOINs that create a room (0 off; >= 1).
    - ``max_rooms_created``: rooms one account may have created and not deleted (0 no
      limit; broker admins are exempt).
    - ``storage_quota_bytes``: bytes of message text (room messages and DMs, UTF-8) one
      account may store, unless an operator gave it a quota of its own (ADMIN_SET_QUOTA,
      docs/PROTOCOL.md §6.53); a SEND or DM beyond it gets 403 (0 no quota, the default;
      0..MAX_STORAGE_QUOTA_BYTES).
    - ``resume_grace_s``: after a broker start, seconds during which the sessions kept from
      before the restart may be resumed (RESUME, docs/PROTOCOL.md §6.27); then they are
      forgotten (>= 0; 0 disables resuming across a restart).
    - ``encryption``: ``"curve"`` (CurveZMQ on every tcp endpoint, the default) or
      ``"none"`` (plain text; only by this explicit setting). inproc/ipc endpoints are
      always plain (docs/PROTOCOL.md §16).
    - ``key_endpoint``: where the plain-text key service tells clients the broker's
      public key for trust on first use (§16.3). Empty means the ROUTER's host with its
      port + 2 (``tcp://127.0.0.1:5557`` by default). Unused with ``"none"``.
    - ``key_rate_per_s`` / ``key_burst``: token bucket per peer address for the key
      service's requests (>= 0, 0 off; >= 1); a request over it gets no answer
      (docs/PROTOCOL.md §16.3).
    - ``read_rate_bytes_per_s`` / ``read_burst_bytes``: byte budget per account for the
      replies of HISTORY, DM_HISTORY, ROOMS, WHO and the other reading requests
      (docs/PROTOCOL.md §15.1): bytes a second (0 off, else MIN_READ_RATE..MAX_READ_RATE)
      and bytes at once (MIN_READ_BURST..MAX_READ_BURST). A reading request is refused
      with 429 while the account's budget is spent.
    - ``max_incomplete_bytes`` / ``max_unread_bytes`` / ``max_held_bytes``: bytes one
      ROUTER connection may have sent that the broker did not yet take as complete
      messages (its address is then cut and barred), bytes of replies one may leave
      unread (its session is ended and the connection cut), and both over all
      connections (the largest cut first); 0 off, else MIN_HELD_BYTES..MAX_HELD_BYTES,
      ``max_held_bytes`` at least each of the other two. Estimated from the kernel's TCP
      counters, Linux only (docs/PROTOCOL.md §15.2, zchat.broker.conntrack).
    """

    router: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5556"
    pub_advertised: str = ""
    data_dir: str = ""
    store: str = ""
    id: str = ""
    #: 1 s: a lost notification delays a room's messages on this broker by at most this.
    cluster_check_s: float = 1.0
    #: 10 s: the state's reload reads every room, member and ban (milliseconds for
    #: thousands); notifications make changes take effect at once in between.
    cluster_refresh_s: float = 10.0
    #: 30 s: longer than clients take to move off a dead broker (one to two heartbeat
    #: intervals and the first back-off: 11–13 s by default), so that a moving client's
    #: account never goes offline and online again (``lease_warning``); the same wait as
    #: a single broker's eviction of a silent client (``heartbeat_timeout_s``). Fifteen
    #: renewals may be missed before a broker loses its sessions.
    lease_s: float = 30.0
    #: 2 s: one small UPDATE of the broker's row each 2 s when idle (a busy broker
    #: renews with each commit anyway).
    lease_renew_s: float = 2.0
    log_level: str = "info"
    admins: tuple[str, ...] = ()
    max_text_bytes: int = 4000
    #: 50: what the 4,000 bytes hold as full 80-column lines, so a text with that many
    #: lines is a log or a listing pasted whole; a limit only stops a text made of line
    #: breaks (1,999 empty lines fit in 4,000 bytes) filling every member's screen.
    max_text_lines: int = 50
    heartbeat_interval_s: float = 10.0
    heartbeat_timeout_s: float = 30.0
    max_stored_dms: int = 1000
    sndhwm: int = 10_000
    rcvhwm: int = 10_000
    #: 1,000 events: ten seconds of a room at 100 messages a second. Each event queued
    #: for a subscriber that does not read costs the broker ~250 bytes however big (the
    #: body is shared); 1,200 subscribers that never read held 3 GB at 10,000.
    pub_sndhwm: int = 1_000
    argon2_memory_kib: int = ARGON2_MEMORY_KIB
    argon2_time_cost: int = ARGON2_TIME_COST
    argon2_parallelism: int = ARGON2_PARALLELISM
    hash_workers: int = 2
    min_password_chars: int = 8
    send_rate_per_s: float = 5.0
    send_burst: int = 20
    login_rate_per_s: float = 0.5
    login_burst: int = 30
    #: Empty: no peer may tell a user's address; trusting one is the operator's choice.
    trusted_proxies: tuple[str, ...] = ()
    max_sessions: int = 10_000
    #: 10,000: 5,000 clients of two connections each, far above a team's needs, and
    #: what a ``ulimit -n`` of 10,240 (a common hard limit) still carries.
    max_connections: int = 10_000
    #: 256: an office of 100 behind one NAT, each with a console and a bot or a tail.
    max_connections_per_address: int = 256
    #: 60 s: a client logs in (or RESUMEs) within a second of connecting; IRC servers give
    #: an unregistered connection about as long. 0: never.
    login_timeout_s: float = 60.0
    #: Per account (docs/PROTOCOL.md §15.1): twice a session's, so that a second device
    #: or a bot's two connections are not squeezed, but a hundred LOGINs are no hundred
    #: bursts (a tester's account stored 519 messages of 4 KB in 0.2 s that way).
    account_send_rate_per_s: float = 10.0
    account_send_burst: int = 40
    #: /away and /back by hand, a client's auto-away: far under one change every 2 s
    #: after ten; a tester's 20,000 changes in 1.5 s reached every client.
    presence_rate_per_s: float = 0.5
    presence_burst: int = 10
    #: Ten rooms at once, then one every 20 s (a tester created 217 rooms a second).
    room_create_rate_per_s: float = 0.05
    room_create_burst: int = 10
    max_rooms_created: int = 100
    #: 0: no quota, so that a broker upgraded to this setting refuses nobody's messages.
    storage_quota_bytes: int = 0
    resume_grace_s: float = 300.0
    encryption: str = "curve"
    key_endpoint: str = ""
    key_rate_per_s: float = 1.0
    key_burst: int = 30
    #: 1 MiB a second after 16 MiB at once: the console pages history 50 messages at a
    #: time (200 KiB at the very most) and a reconnect's repair asks a few pages; a
    #: client that pipelines full pages and never reads is held to 1 MiB a second.
    read_rate_bytes_per_s: float = 1_048_576.0
    read_burst_bytes: int = 16_777_216
    #: 8 MiB: twelve times the largest legal request (5 frames of 128 KiB); an honest
    #: client's requests are complete within a few KiB. A tester's unfinished message of
    #: 370 MiB was held whole.
    max_incomplete_bytes: int = 8 * 1024 * 1024
    #: 32 MiB: twice the reading budget's burst, so a console paging history or a
    #: reconnect's repair on a slow link never meets it; a peer asking and never reading
    #: made the broker grow by 32 MB a second.
    max_unread_bytes: int = 32 * 1024 * 1024
    #: 512 MiB held for all connections together (both directions).
    max_held_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class ClientConfig:
    """Settings of ``zchat join`` (the ``[client]`` table).

    - ``server``: the broker's ROUTER endpoint to connect to; for a cluster
      (docs/cluster.md) several, comma-separated (``"tcp://a:5555,tcp://b:5555"``) or a
      TOML list of at most MAX_SERVER_ENDPOINTS, tried in order (each within
      ``timeout_s``) and moved along when the broker in use is lost
      (:func:`server_endpoints`).
    - ``timeout_s``: seconds to wait for a reply before the broker counts as gone (> 0).
    - ``reconnect_max_s``: ceiling, in seconds, of the reconnect back-off (> 0).
    - ``paste_confirm_lines``: the console asks before sending a paste of more lines (>= 1;
      1, as WeeChat's ``paste_max_lines``: every paste of several lines asks). A paste
      of several lines with one starting with ``/`` asks whatever this is: lines typed
      ahead during a stall arrive as a paste (docs/console.md, "Pasting").
    - ``encryption``: ``"curve"`` (default) or ``"none"``; must match the broker's
      (docs/PROTOCOL.md §16). inproc/ipc servers are always plain.
    - ``server_key``: the broker's public key (40 characters of Z85, as ``zchat broker``
      prints it). Empty means: the key pinned in known_brokers.toml, else trust on first
      use. A key given here is used as is and never written to the pinned-keys file.
    - ``key_server``: the broker's key service endpoint; empty means the server's host
      with its port + 2.
    """

    server: str = "tcp://127.0.0.1:5555"
    timeout_s: float = 5.0
    reconnect_max_s: float = 30.0
    paste_confirm_lines: int = 1
    encryption: str = "curve"
    server_key: str = ""
    key_server: str = ""


@dataclass(frozen=True)
class IrcConfig:
    """Settings of ``zchat irc``, the IRC gateway (the ``[irc]`` table, docs/irc.md). It
    reaches the broker with the ``[client]`` settings.

    - ``listen``: ``HOST:PORT`` of the plain-text IRC listener; empty for none. A host
      other than a loopback address needs ``allow_plaintext`` (IRC passwords travel in
      the connection) or TLS (``tls_listen``) instead.
    - ``tls_listen``: ``HOST:PORT`` of the TLS listener; empty for none. Needs
      ``tls_cert`` and ``tls_key`` (PEM files).
    - ``allow_plaintext``: allow ``listen`` on a non-loopback address.
    - ``server_name``, ``network``: how the gateway names itself to IRC clients.
    - ``guests``: a client that gives no password gets the account named by its nick,
      created by the gateway with a password it keeps in memory (for tests and closed
      networks; the broker must allow REGISTER). Off: no credentials, no connection.
    - ``autojoin``: join the IRC client to every room of its account at registration.
    - ``playback``: messages replayed on JOIN to a client without ``draft/chathistory``:
      the newest ``playback``, or every message unread since the account's read marker
      when more (at most MAX_HISTORY_LIMIT); 0 for none (docs/irc.md, "Playback").
    - ``motd``: the message of the day, lines separated by newlines; empty for none.
    - ``tell_addresses``: each IRC connection's LOGIN and REGISTER tells the broker the
      IRC client's address (``address``, docs/PROTOCOL.md §6.3), so that the broker's
      per-address login limits count each IRC user's address instead of the gateway's
      one. The broker must list the gateway's address in ``[broker] trusted_proxies``
      first: any other broker answers every login 403 (docs/irc.md, "Logging in").
    - ``max_connections``: IRC connections held at once (each is a zchat session with two
      ZeroMQ sockets); one more is told ``ERROR :Closing link: … full`` and closed.
      ``zchat irc`` raises its open-files limit (up to the hard limit) and libzmq's socket
      limit to fit it, and lowers it, saying so, when the hard limit is too low.
    - ``max_connections_per_address``: IRC connections from one client address (an IPv6
      /64 as one) at once, 0 for no limit; one more is told ``ERROR :Closing link: too
      many connections from your address (N)`` and closed (docs/irc.md, "Connections").
    - ``connections_per_minute_per_address``: new IRC connections from one client
      address a minute (a burst of that many, then one every 60/N s; Ergo's connection
      throttling), 0 for no limit; one more is told ``ERROR :Closing link: too many new
      connections from your address …`` and closed.
    """

    listen: str = "127.0.0.1:6667"
    tls_listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    allow_plaintext: bool = False
    server_name: str = "irc.zchat"
    network: str = "zchat"
    guests: bool = False
    autojoin: bool = True
    playback: int = 20
    motd: str = ""
    max_connections: int = 1000
    tell_addresses: bool = False
    max_connections_per_address: int = 16
    connections_per_minute_per_address: int = 30


@dataclass(frozen=True)
class Config:
    """All settings: the ``[broker]``, ``[client]`` and ``[irc]`` tables."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    irc: IrcConfig = field(default_factory=IrcConfig)

#: The broker's database file inside its data directory (``data_dir``).
DB_FILENAME = "zchat.db"

#: TOML table name -> the dataclass holding its keys.
_TABLES: dict[str, type[BrokerConfig] | type[ClientConfig] | type[IrcConfig]] = {
    "broker": BrokerConfig,
    "client": ClientConfig,
    "irc": IrcConfig,
}


def default_config_path() -> Path:
    """Return ``$XDG_CONFIG_HOME/zchat/zchat.toml``, default ``~/.config/zchat/zchat.toml``.

    A relative or empty ``$XDG_CONFIG_HOME`` is ignored, as the XDG Base Directory
    Specification requires. The file need not exist.
    """
    return _xdg_home("XDG_CONFIG_HOME", ".config") / "zchat" / CONFIG_FILE_NAME


def broker_id(cfg: BrokerConfig) -> str:
    """The broker's id in a cluster: ``cfg.id``, else ``<host>-<8 hex digits of the
    SHA-256 of the data directory's absolute path>``, at most MAX_BROKER_ID_CHARS: stable
    across restarts, and two brokers on one host differ when their data directories do
    (and one data directory holds one broker: its lock file)."""
    if cfg.id:
        return cfg.id
    import hashlib
    import socket

    where = str(data_dir(cfg).resolve()).encode("utf-8", "surrogateescape")
    host = "".join(ch for ch in socket.gethostname() if " " < ch < "\x7f") or "broker"
    return f"{host[:MAX_BROKER_ID_CHARS - 9]}-{hashlib.sha256(where).hexdigest()[:8]}"


def broker_owner(cfg: BrokerConfig) -> str:
    """Who holds the broker id in a cluster: 16 hex digits of the SHA-256 of this boot of
    the machine (``/proc/sys/kernel/random/boot_id``, else the host name alone), the host
    name and the data directory's absolute path. The same broker restarted (after a
    crash, within its lease) is the same owner and takes its id back at once; another
    process with the same id (a typo, a cloned machine) is another owner and is refused
    while the id's lease runs (Store.register_broker)."""
    import hashlib
    import socket

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    where = str(data_dir(cfg).resolve())
    seed = "\0".join((boot, socket.gethostname(), where)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(seed).hexdigest()[:16]


def data_dir(cfg: BrokerConfig) -> Path:
    """Return the broker's data directory: ``cfg.data_dir`` or the XDG default.

    An empty ``data_dir`` means ``$XDG_DATA_HOME/zchat`` (default ``~/.local/share/zchat``);
    a set one has ``~`` expanded. The directory is not created here.
    """
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    return _xdg_home("XDG_DATA_HOME", ".local/share") / "zchat"


def _xdg_home(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def load_config(path: Path | None = None) -> Config:
    """Read and validate the TOML config file at ``path``.

    With ``path=None`` the file is :func:`default_config_path`, and a missing file means
    all defaults. An explicit ``path`` must exist. Keys absent from the file keep their
    defaults.

    Raises ConfigError (naming the file, table and key) when the file cannot be read, is not
    valid TOML (tomllib's message, with line and column), or has an unknown table or key, a
    value of the wrong type or a value out of range (see :func:`validate`).
    """
    if path is None:
        path = default_config_path()
        if not path.exists():
            return Config()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path=path) from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8: {exc}", path=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=path) from exc
    return config_from_dict(document, path=path)


def config_from_dict(document: dict[str, Any], *, path: Path | str | None = None) -> Config:
    """Build and validate a Config from a parsed TOML document (tables of keys).

    ``path`` only labels error messages. Raises ConfigError like :func:`load_config`.
    """
    for name, value in document.items():
        if name not in _TABLES:
            hint = _suggest(name, _TABLES)
            kind = "table" if isinstance(value, dict) else "top-level key"
            raise ConfigError(
                f"unknown {kind} {name!r}{hint}; settings go in the tables "
                + " and ".join(f"[{t}]" for t in _TABLES),
                path=path,
            )
        if not isinstance(value, dict):
            raise ConfigError(f"must be a table, got {_type_name(value)}", path=path, table=name)
    broker = _build_table("broker", BrokerConfig, document.get("broker", {}), path)
    client = _build_table("client", ClientConfig, document.get("client", {}), path)
    irc = _build_table("irc", IrcConfig, document.get("irc", {}), path)
    config = Config(broker=broker, client=client, irc=irc)
    validate(config, path=path)
    return config


_Table = typing.TypeVar("_Table", BrokerConfig, ClientConfig, IrcConfig)


def _build_table(
    table: str, cls: type[_Table], values: dict[str, Any], path: Path | str | None
) -> _Table:
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if (table, key) in DEPRECATED_KEYS:
            where = f"{path}: " if path is not None else ""
            log.warning("%s[%s] %s %s", where, table, key, DEPRECATED_KEYS[table, key])
            continue
        if key not in hints:
            raise ConfigError(f"unknown key{_suggest(key, hints)}", path=path, table=table, key=key)
        if (table, key) == ("client", "server") and isinstance(value, list):
            # a cluster's endpoints as a TOML list: kept as the comma-separated string
            # --server takes (server_endpoints splits it)
            if not value or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"expected a string or a non-empty list of strings, got "
                                  f"{value!r}", path=path, table=table, key=key)
            value = ",".join(value)
        kwargs[key] = _coerce(value, hints[key], path=path, table=table, key=key)
    return cls(**kwargs)


#: The most endpoints one client is given (``[client] server``, ``--server``): a
#: connect tries them in turn, each within ``timeout_s`` (docs/cli.md), so a list of
#: dead endpoints costs up to its length times ``timeout_s``; 16 brokers is more than a
#: cluster on one PostgreSQL database serves (docs/cluster.md), and a longer list is a
#: mistake (a pasted file, a loop) that would otherwise keep a command waiting for hours.
MAX_SERVER_ENDPOINTS = 16


def server_endpoints(server: str | typing.Sequence[str]) -> tuple[str, ...]:
    """The ROUTER endpoints of ``[client] server`` or ``--server``: one endpoint, several
    separated by commas (white space around each ignored), or a sequence of them, in
    the order given; at most MAX_SERVER_ENDPOINTS. Each must pass
    :func:`endpoint_problem` (as an endpoint to connect to). Raises ValueError naming
    the problem: none given, more than MAX_SERVER_ENDPOINTS (checked first, before any
    entry), an empty entry (``a,,b``, a trailing comma), a bad endpoint, or one listed
    twice."""
    parts = server.split(",") if isinstance(server, str) else list(server)
    if len(parts) > MAX_SERVER_ENDPOINTS:
        raise ValueError(f"{len(parts)} endpoints given, at most {MAX_SERVER_ENDPOINTS} "
                         f"are taken (each one not answering costs the whole timeout)")
    endpoints: list[str] = []
    for i, part in enumerate(parts):
        if not isinstance(part, str):
            raise ValueError(f"endpoint {i + 1} is not a string: {part!r}")
        endpoint = part.strip()
        if not endpoint and len(parts) > 1:
            raise ValueError(f"endpoint {i + 1} of {len(parts)} is empty in {server!r}: "
                             f"separate endpoints with single commas")
        problem = endpoint_problem(endpoint, bind=False)
        if problem is not None:
            raise ValueError(problem if len(parts) == 1 else f"endpoint {i + 1}: {problem}")
        if endpoint in endpoints:
            raise ValueError(f"{endpoint} is listed twice")
        endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no endpoint given")
    return tuple(endpoints)


def endpoint_problem(endpoint: str, *, bind: bool) -> str | None:
    """What is wrong with a ZeroMQ ``endpoint``, or None when it looks usable.

    Every endpoint is ``transport://address`` with a non-empty address. A ``tcp://`` one
    is ``host:port`` (IPv6 hosts in brackets) with a port of 1..65535; an endpoint to
    ``bind`` may also use port ``*`` or 0 (any free port) and host ``*``. Checked up front
    because libzmq connects lazily: a bad port would otherwise only show as a timeout.
    """
    like = f"not a ZeroMQ endpoint (like tcp://host:port): {endpoint!r}"
    transport, sep, address = endpoint.partition("://")
    if not sep or not transport or not address:
        return like
    if transport not in ("tcp", "ipc", "inproc"):
        return f"{like}: the transport must be tcp, ipc or inproc"
    if any(ch.isspace() for ch in endpoint):
        return f"{like}: it contains white space"
    if transport != "tcp":
        return None
    address = address.rpartition(";")[2]  # tcp://source;host:port names a source first
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        return f"{like}: the host or the port is missing"
    if host.startswith("[") != host.endswith("]"):
        return f"{like}: unbalanced brackets around the IPv6 host"
    if bind and port == "*":
        return None
    if not (port.isascii() and port.isdigit()):
        return f"{like}: the port must be a number"
    if not (0 if bind else 1) <= int(port) <= 65535:
        return f"port {port} is out of range (1-65535) in {endpoint!r}"
    return None


#: URL schemes of ``[broker] store`` (libpq's two spellings of PostgreSQL).
STORE_SCHEMES = ("postgresql", "postgres")


def libpq_url(url: str) -> str:
    """``url`` with its scheme in lower case, as libpq needs it: a URL's scheme is
    case-insensitive (RFC 3986 §3.1), and libpq read ``POSTGRESQL://…`` as a key=value
    string ("missing '='", a sixth tester's)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.lower()}{sep}{rest}" if sep else url


def store_problem(url: str) -> str | None:
    """What is wrong with ``url`` as ``[broker] store``, or None: a PostgreSQL URL
    (``postgresql://USER@HOST:PORT/DB``; the host may be left out or given as
    ``?host=/socket/dir``) with a port in range. Whether the database answers is found at
    start. The problem names the URL without its password (:func:`redact_url`)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    shown = redact_url(url)
    if scheme not in STORE_SCHEMES:
        return (f"must be empty (the SQLite file in the data directory) or a PostgreSQL "
                f"URL postgresql://USER@HOST:PORT/DB, got {shown!r}")
    if url.split("://", 1)[1].split("/", 1)[0].count("@") > 1:
        # libpq would take what follows the first '@' for the host and quote it back in
        # its error: a piece of the password on the terminal (a third tester's)
        return (f"an '@' in the password must be written %40 (an '@' ends the user part "
                f"of a URL), in {shown!r}")
    password = _userinfo_password(url) or ""
    for ch in _URL_DELIMITERS:
        if ch in password:
            # libpq ends the userinfo at the first '/' and urllib at the first '?' or
            # '#': the rest, password and all, was quoted back as a host, a port or a
            # database name (a fourth tester's "the port must be a number … in
            # 'postgresql://zchat:ab/cdSECRET@…'")
            article = "an" if ch == "@" else "a"
            return (f"{article} {ch!r} in the password must be written %{ord(ch):02X} "
                    f"({article} {ch!r} ends the user part of a URL; an '@' after the host "
                    f"must be written %40), in {shown!r}")
    try:
        hosts = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:  # an unclosed IPv6 bracket
        return f"cannot read the host and port in {shown!r}"
    # libpq takes a list of hosts (a primary and its standbys: host1:5432,host2:5432),
    # each with its port or none; a fifth tester's two-host URL was refused as a bad port
    for entry in hosts.split(","):
        after_host = entry.rpartition("]")[2] if entry.startswith("[") else entry
        port = after_host.rpartition(":")[2] if ":" in after_host else ""
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return f"the port must be a number from 1 to 65535 in {shown!r}"
    return None


def _spelled(word: str) -> str:
    """A regex matching ``word`` with any of its letters percent-encoded (libpq decodes a
    URL's query keys), case-insensitive with re.IGNORECASE."""
    return "".join(f"(?:{re.escape(ch)}|%{ord(ch):02x})" for ch in word)


#: ``password=VALUE`` as libpq takes it in a URL's query (``?password=…``, the key or
#: the ``=`` percent-encoded or not) or in a key=value conninfo (``password = 'a b'``):
#: group 1 the key and ``=``, group 2 the value (quoted, or up to white space, ``&`` or
#: a quote; an over-long match only hides more).
_PASSWORD_SETTING = re.compile(
    rf"({_spelled('password')}(?:\s|%20)*(?:=|%3d)(?:\s|%20)*)"
    r"('(?:[^'\\]|\\.)*'?|[^\s&\"']*)", re.IGNORECASE)
#: The password of a URL's userinfo, ``USER:PASSWORD@``: group 2 (up to the last ``@``
#: before the path, as libpq reads it). Not tied to ``SCHEME://``: a URL with a mistyped
#: ``://`` (``postgresql:/u:pw@h``, ``postgresql//u:pw@h``) carries it too, and a tester
#: saw those printed in clear.
_USERINFO_PASSWORD = re.compile(
    r"((?:^|(?<=[\s/'\"=]))[^\s/?#@:\"'=]+:)([^\s/?#\"']*)(@)", re.IGNORECASE)


#: Characters that end a URL's userinfo or start its path, query or fragment: a password
#: holding one unencoded is misread by libpq (and by urllib), so ``store_problem`` refuses
#: it before the driver quotes a piece of it back.
_URL_DELIMITERS = "@/?#"
#: The shortest password (or piece of one) hidden wherever a text quotes it: a shorter
#: one is hidden only where it stands as a password (``USER:…@``, ``password=…``), since
#: replacing every "a" of a message garbled it and told the password (a fourth tester's).
MIN_QUOTED_SECRET_CHARS = 4


def _userinfo_password(url: str) -> str | None:
    """The password of ``url``'s userinfo as written, or None: what follows the user's
    ``:`` up to the last ``@`` (an unencoded ``@``, ``/``, ``?`` or ``#`` in it stays
    inside: hiding more rather than less). The user is what precedes the first ``:``
    after ``SCHEME://`` and holds none of ``@/?#``; otherwise there is no userinfo
    password (``postgresql://zchat@db:5432/x``)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    user, colon, after = rest.partition(":")
    if not colon or any(ch in user for ch in _URL_DELIMITERS) or "@" not in after:
        return None
    return after[:after.rindex("@")]


def _url_secrets(url: str) -> set[str]:
    """Every password ``url`` holds — the userinfo's and each ``password=`` value — as
    written and percent-decoded, with the pieces of each between URL delimiters (libpq
    quotes the piece of a malformed URL it stumbled on)."""
    values: set[str] = set()
    if (userinfo := _userinfo_password(url)) is not None:
        values.add(userinfo)
    for source in {url, unquote(url)} - {""}:
        values.update(m.group(2) for m in _PASSWORD_SETTING.finditer(source))
    secrets: set[str] = set()
    for value in values:
        for form in (value, unquote(value)):
            form = form.strip("'")
            secrets.add(form)
            secrets.update(re.split(r"[@/?#:]", form))
    return secrets - {"", "***"}


def redact_text(text: str, url: str = "") -> str:
    """``text`` (an error message, a log line, a URL) with every password it may carry
    replaced by ``***``: each ``password=VALUE`` (a URL query's or a key=value conninfo's,
    percent-encoded or not), each ``USER:PASSWORD@`` (after ``SCHEME://`` or a mistyped
    one), and, when ``url`` is the store URL the text is about, the passwords ``url``
    holds (:func:`_url_secrets`: as written and percent-decoded, unencoded delimiters and
    all) wherever the text quotes them, when at least MIN_QUOTED_SECRET_CHARS long and not
    also the URL's user, host, port or database name, and as ``:PASSWORD@`` in any case: a driver's message may quote a piece of a malformed
    URL without its key (``unexpected spaces found in "…"``). Hides more rather than
    less: a password that also spells a host or a user hides that too."""
    secrets = _url_secrets(url) if url else set()
    # What the URL shows besides its passwords (user, host, port, database): a password
    # that is also one of those is hidden only where it stands as a password, or every
    # "zchat" of a line would become *** and tell that the password is the user's name
    # (a fifth tester's `postgresql://zchat:zchat@…/zchat`)
    public = ""
    if secrets:
        userinfo = _userinfo_password(url)
        public = _hide_structurally(url if userinfo is None else
                                    url.replace(f":{userinfo}@", ":***@", 1))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_QUOTED_SECRET_CHARS and secret not in public:
            text = text.replace(secret, "***")
        else:
            text = text.replace(f":{secret}@", ":***@")
    return _hide_structurally(text)


def _hide_structurally(text: str) -> str:
    """``text`` with each ``password=VALUE`` and ``USER:PASSWORD@`` hidden."""
    # a value hidden already is left as it is: the pattern would take what follows it too
    text = _PASSWORD_SETTING.sub(
        lambda m: m.group(0) if m.group(2).startswith("***") else f"{m.group(1)}***", text)
    return _USERINFO_PASSWORD.sub(r"\1***\3", text)


def redact_url(url: str) -> str:
    """``url`` with its passwords replaced by ``***`` (for messages and logs): the one
    before the host, any ``password=`` in the query or in a key=value conninfo written
    where the host goes (libpq takes all of them), percent-encoded or not
    (:func:`redact_text`)."""
    return redact_text(url, url)


def validate(config: Config, *, path: Path | str | None = None) -> None:
    """Check every setting's type and range; return None or raise ConfigError.

    Call it again after applying command-line flags with :func:`dataclasses.replace`.
    ``path`` only labels error messages. The rules: strings are strings and endpoints
    pass :func:`endpoint_problem` (tcp ports 1..65535); ints are ints (a bool is not an
    int); floats are finite numbers (an int is accepted); ``max_text_bytes`` and
    ``max_text_lines`` in 1..30000; ``heartbeat_interval_s`` MIN_HEARTBEAT_S..MAX_DURATION_S and
    ``heartbeat_timeout_s`` > it, at most MAX_DURATION_S; ``resume_grace_s``
    0..MAX_DURATION_S; ``timeout_s`` and
    ``reconnect_max_s`` > 0; ``max_stored_dms`` >= 1; ``sndhwm``/``rcvhwm`` >= 1;
    ``argon2_memory_kib`` MIN_ARGON2_MEMORY_KIB..MAX_ARGON2_MEMORY_KIB,
    ``argon2_time_cost`` 1..MAX_ARGON2_TIME_COST,
    ``argon2_parallelism`` 1..MAX_ARGON2_PARALLELISM; ``hash_workers``
    in 1..64; ``min_password_chars`` in 1..MAX_PASSWORD_CHARS; ``log_level`` one of debug/info/warning/error; ``send_rate_per_s`` and
    ``login_rate_per_s``, ``key_rate_per_s``, ``account_send_rate_per_s``,
    ``presence_rate_per_s`` and ``room_create_rate_per_s`` 0 or
    MIN_RATE_PER_S..MAX_RATE_PER_S; ``send_burst``, ``login_burst``, ``key_burst``,
    ``account_send_burst``, ``presence_burst``, ``room_create_burst``, ``max_sessions``
    and ``max_connections`` 1..MAX_COUNT_SETTING; ``max_connections_per_address``
    1..``max_connections``; ``max_rooms_created`` 0..MAX_COUNT_SETTING;
    ``storage_quota_bytes`` 0..MAX_STORAGE_QUOTA_BYTES;
    ``encryption`` one of curve/none; ``server_key`` empty or a Z85 key (zchat.keyformat);
    ``store`` empty or a PostgreSQL URL (:func:`store_problem`); every
    ``trusted_proxies`` entry an IP address or a CIDR network without host bits
    (zchat.ratelimit.proxy_networks).
    """
    for table, section in (("broker", config.broker), ("client", config.client),
                           ("irc", config.irc)):
        hints = _field_types(type(section))
        for f in dataclasses.fields(section):
            _coerce(getattr(section, f.name), hints[f.name], path=path, table=table, key=f.name)

    def fail(table: str, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(problem, path=path, table=table, key=key)

    b, c = config.broker, config.client
    for table, key, value, bind in (("broker", "router", b.router, True),
                                    ("broker", "pub", b.pub, True),
                                    ("broker", "pub_advertised", b.pub_advertised, False),
                                    ("broker", "key_endpoint", b.key_endpoint, True),
                                    ("client", "key_server", c.key_server, False)):
        if key in ("pub_advertised", "key_endpoint", "key_server") and not value:
            continue
        problem = endpoint_problem(value, bind=bind)
        if problem is not None:
            fail(table, key, problem)
    try:
        server_endpoints(c.server)
    except ValueError as exc:
        fail("client", "server", str(exc))
    if b.store and (problem := store_problem(b.store)) is not None:
        fail("broker", "store", problem)
    if len(b.id) > MAX_BROKER_ID_CHARS or not all(" " < ch < "\x7f" for ch in b.id):
        fail("broker", "id", f"must be at most {MAX_BROKER_ID_CHARS} printable ASCII "
             f"characters without spaces, got {b.id!r}")
    for key in ("cluster_check_s", "cluster_refresh_s"):
        if not MIN_HEARTBEAT_S <= getattr(b, key) <= MAX_CLUSTER_INTERVAL_S:
            fail("broker", key, f"must be {MIN_HEARTBEAT_S:g} to "
                 f"{MAX_CLUSTER_INTERVAL_S:,} s, got {getattr(b, key)}")
    if not MIN_HEARTBEAT_S <= b.lease_renew_s <= MAX_CLUSTER_INTERVAL_S:
        fail("broker", "lease_renew_s", f"must be {MIN_HEARTBEAT_S:g} to "
             f"{MAX_CLUSTER_INTERVAL_S:,} s, got {b.lease_renew_s}")
    if not 2 * b.lease_renew_s <= b.lease_s <= MAX_CLUSTER_INTERVAL_S:
        fail("broker", "lease_s", f"must be at least twice lease_renew_s "
             f"({2 * b.lease_renew_s:g} s) and at most {MAX_CLUSTER_INTERVAL_S:,} s, got "
             f"{b.lease_s}")
    if b.log_level not in LOG_LEVELS:
        fail("broker", "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {b.log_level!r}")
    for i, name in enumerate(b.admins):
        if not name:
            fail("broker", "admins", f"entry {i} is an empty name")
    try:
        proxy_networks(b.trusted_proxies)
    except ValueError as exc:
        fail("broker", "trusted_proxies", str(exc))
    if not 1 <= b.max_text_bytes <= MAX_TEXT_BYTES_LIMIT:
        fail(
            "broker",
            "max_text_bytes",
            f"must be between 1 and {MAX_TEXT_BYTES_LIMIT}, got {b.max_text_bytes}",
        )
    if not 1 <= b.max_text_lines <= MAX_TEXT_LINES_LIMIT:
        fail("broker", "max_text_lines",
             f"must be between 1 and {MAX_TEXT_LINES_LIMIT}, got {b.max_text_lines}")
    # Bounded so that every duration fits the wire's integers in ms and makes sense
    # (a tester's 1e300 s timeout made INFO unreadable; 1e-300 s advertised 0 ms).
    if not MIN_HEARTBEAT_S <= b.heartbeat_interval_s <= MAX_DURATION_S:
        fail("broker", "heartbeat_interval_s", f"must be {MIN_HEARTBEAT_S:g} to "
             f"{MAX_DURATION_S:,} s, got {b.heartbeat_interval_s}")
    if b.heartbeat_timeout_s > MAX_DURATION_S:
        fail("broker", "heartbeat_timeout_s", f"must be at most {MAX_DURATION_S:,} s, got "
             f"{b.heartbeat_timeout_s}")
    if b.heartbeat_timeout_s <= b.heartbeat_interval_s:
        fail(
            "broker",
            "heartbeat_timeout_s",
            f"must be greater than heartbeat_interval_s ({b.heartbeat_interval_s}), "
            f"got {b.heartbeat_timeout_s}",
        )
    if b.login_timeout_s != 0 and not 1 <= b.login_timeout_s <= 86_400:
        fail("broker", "login_timeout_s", f"must be 0 (never) or 1 to 86400 seconds, got "
             f"{b.login_timeout_s}")
    for key in ("max_stored_dms", "sndhwm", "rcvhwm", "pub_sndhwm"):
        if getattr(b, key) < 1:
            fail("broker", key, f"must be >= 1, got {getattr(b, key)}")
    for key, low, high, unit in (
            ("argon2_memory_kib", MIN_ARGON2_MEMORY_KIB, MAX_ARGON2_MEMORY_KIB, " KiB"),
            ("argon2_time_cost", 1, MAX_ARGON2_TIME_COST, ""),
            ("argon2_parallelism", 1, MAX_ARGON2_PARALLELISM, "")):
        if not low <= getattr(b, key) <= high:
            fail("broker", key, f"must be between {low:,} and {high:,}{unit}, got "
                 f"{getattr(b, key)}")
    # argon2's own floor, 8 KiB per lane (RFC 9106 §3.1), holds: 1,024 >= 8 × 64
    if not 1 <= b.hash_workers <= 64:
        fail("broker", "hash_workers", f"must be between 1 and 64, got {b.hash_workers}")
    if not 1 <= b.min_password_chars <= MAX_PASSWORD_CHARS:
        fail("broker", "min_password_chars", f"must be between 1 and {MAX_PASSWORD_CHARS}, "
             f"got {b.min_password_chars}")
    for key in ("send_rate_per_s", "login_rate_per_s", "key_rate_per_s",
                "account_send_rate_per_s", "presence_rate_per_s", "room_create_rate_per_s"):
        rate = getattr(b, key)
        if rate != 0 and not MIN_RATE_PER_S <= rate <= MAX_RATE_PER_S:
            fail("broker", key, f"must be 0 (the limit off) or {MIN_RATE_PER_S:g} to "
                 f"{MAX_RATE_PER_S:g}, got {rate}")
    for key in ("send_burst", "login_burst", "key_burst", "max_sessions",
                "max_connections", "account_send_burst", "presence_burst",
                "room_create_burst"):
        if not 1 <= getattr(b, key) <= MAX_COUNT_SETTING:
            fail("broker", key, f"must be 1 to {MAX_COUNT_SETTING:,}, got {getattr(b, key)}")
    if not 1 <= b.max_connections_per_address <= b.max_connections:
        fail("broker", "max_connections_per_address", f"must be 1 to max_connections "
             f"({b.max_connections:,}), got {b.max_connections_per_address}")
    rate = b.read_rate_bytes_per_s
    if rate != 0 and not MIN_READ_RATE <= rate <= MAX_READ_RATE:
        fail("broker", "read_rate_bytes_per_s", f"must be 0 (the limit off) or "
             f"{MIN_READ_RATE:,} to {MAX_READ_RATE:,}, got {rate}")
    if not MIN_READ_BURST <= b.read_burst_bytes <= MAX_READ_BURST:
        fail("broker", "read_burst_bytes", f"must be {MIN_READ_BURST:,} to "
             f"{MAX_READ_BURST:,}, got {b.read_burst_bytes}")
    for key in ("max_incomplete_bytes", "max_unread_bytes", "max_held_bytes"):
        value = getattr(b, key)
        if value != 0 and not MIN_HELD_BYTES <= value <= MAX_HELD_BYTES:
            fail("broker", key, f"must be 0 (no limit) or {MIN_HELD_BYTES:,} to "
                 f"{MAX_HELD_BYTES:,}, got {value}")
    if b.max_held_bytes and b.max_held_bytes < max(b.max_incomplete_bytes,
                                                   b.max_unread_bytes):
        fail("broker", "max_held_bytes", f"must be 0 or at least max_incomplete_bytes and "
             f"max_unread_bytes, got {b.max_held_bytes}")
    if not 0 <= b.max_rooms_created <= MAX_COUNT_SETTING:
        fail("broker", "max_rooms_created", f"must be 0 (no limit) to "
             f"{MAX_COUNT_SETTING:,}, got {b.max_rooms_created}")
    if not 0 <= b.storage_quota_bytes <= MAX_STORAGE_QUOTA_BYTES:
        fail("broker", "storage_quota_bytes", f"must be 0 (no quota) to "
             f"{MAX_STORAGE_QUOTA_BYTES:,} bytes, got {b.storage_quota_bytes}")
    if not 0 <= b.resume_grace_s <= MAX_DURATION_S:
        fail("broker", "resume_grace_s", f"must be 0 to {MAX_DURATION_S:,} s, got "
             f"{b.resume_grace_s}")
    for key in ("timeout_s", "reconnect_max_s"):
        if getattr(c, key) <= 0:
            fail("client", key, f"must be > 0, got {getattr(c, key)}")
    if c.paste_confirm_lines < 1:
        fail("client", "paste_confirm_lines", f"must be >= 1, got {c.paste_confirm_lines}")
    for table, mode in (("broker", b.encryption), ("client", c.encryption)):
        if mode not in ENCRYPTION_MODES:
            fail(table, "encryption", f"must be one of {', '.join(ENCRYPTION_MODES)}, "
                                      f"got {mode!r}")
    if c.server_key:
        try:
            check_key(c.server_key, "the key")
        except BadKey as exc:
            fail("client", "server_key", str(exc))
    irc_wrong = irc_problem(config.irc)
    if irc_wrong is not None:
        fail("irc", irc_wrong[0], irc_wrong[1])


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:6667`` for IPv6) as (host, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def irc_problem(irc: IrcConfig) -> tuple[str, str] | None:
    """(key, problem) of the first wrong ``[irc]`` setting, or None: listeners are
    HOST:PORT; a plain listener off loopback needs ``allow_plaintext`` (passwords travel
    in the connection); TLS needs a certificate and a key; at least one listener."""
    for key in ("listen", "tls_listen"):
        value = getattr(irc, key)
        if value:
            try:
                listen_address(value)
            except ValueError as exc:
                return key, str(exc)
    if not irc.listen and not irc.tls_listen:
        return "listen", "set listen or tls_listen: the gateway needs a listener"
    if irc.listen and not irc.allow_plaintext and not is_loopback(listen_address(irc.listen)[0]):
        return "listen", (f"{irc.listen} is not a loopback address, and IRC passwords would "
                          "cross the network in plain text: use tls_listen (with tls_cert "
                          "and tls_key), or set allow_plaintext = true if you mean it")
    if irc.tls_listen and not (irc.tls_cert and irc.tls_key):
        return "tls_listen", "needs tls_cert and tls_key (PEM files)"
    if not irc.server_name or " " in irc.server_name:
        return "server_name", "must be one word"
    if irc.connections_per_minute_per_address < 0:
        return ("connections_per_minute_per_address",
                f"must be >= 0, got {irc.connections_per_minute_per_address}")
    if irc.max_connections < 1:
        return "max_connections", f"must be >= 1, got {irc.max_connections}"
    if irc.max_connections_per_address < 0:
        return "max_connections_per_address", ("must be >= 0 (0: no limit), got "
                                               f"{irc.max_connections_per_address}")
    return None


def _coerce(value: Any, hint: Any, *, path: Path | str | None, table: str, key: str) -> Any:
    """Return ``value`` as the field type ``hint`` (str, bool, int, float, tuple[str, ...]).

    Accepts an int for a float and a list for a tuple; refuses a bool for an int or float,
    and a non-finite float. Raises ConfigError naming ``table`` and ``key``.
    """

    def wrong(expected: str) -> ConfigError:
        return ConfigError(
            f"expected {expected}, got {_type_name(value)} {value!r}",
            path=path,
            table=table,
            key=key,
        )

    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        if not math.isfinite(value):
            raise wrong("a finite number")
        return float(value)
    if hint == tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise wrong("an array of strings")
        return tuple(value)
    raise TypeError(f"config field [{table}] {key} has unsupported type {hint!r}")


def _field_types(cls: type) -> dict[str, Any]:
    # The annotations are strings (``from __future__ import annotations``); resolve them.
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    # TOML's names for the types tomllib returns.
    names = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    for pytype, name in names.items():
        if isinstance(value, pytype):
            return name
    return type(value).__name__


#: A client's first reconnect back-off, seconds (zchat.client.session.RECONNECT_FIRST_S;
#: tests/test_config.py checks they agree).
CLIENT_FIRST_BACKOFF_S = 0.5


def lease_warning(b: BrokerConfig) -> str | None:
    """A warning when ``b.lease_s`` is shorter than clients take to move off a dead
    broker — two heartbeat intervals (a PING unanswered for one interval, sent up to one
    interval after the death) plus the first back-off — else None. With such a lease the
    other brokers reap a dead broker before its clients have moved: each moving client's
    account goes offline, then online again at its RESUME (docs/cluster.md, "Leases and
    fencing")."""
    move_s = 2 * b.heartbeat_interval_s + CLIENT_FIRST_BACKOFF_S
    if b.lease_s >= move_s:
        return None
    return (f"lease_s ({b.lease_s:g} s) is shorter than clients take to move off a dead "
            f"broker (2 × heartbeat_interval_s + {CLIENT_FIRST_BACKOFF_S:g} s = {move_s:g} "
            f"s): their accounts will go offline and online again when a broker dies")
