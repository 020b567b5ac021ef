"""The ``zchat`` command line: parse, build the objects, run them, turn errors into one line.

Settings: defaults in code, then the TOML file (``--config`` or the XDG default), then
flags. Client commands log in with the account token in ``ZCHAT_TOKEN``, else read the
password from ``ZCHAT_PASSWORD``, else prompt without echo.
Exit codes: 0 success, 1 an error from zchat (one line on stderr, never a traceback), 2 bad
usage (argparse), 129 (``join`` only) its terminal closed (SIGHUP), 130 interrupted
(SIGINT), 143 terminated (SIGTERM); on any of these a client command logs out before it
exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import getpass
import heapq
import io
import json
import logging
import os
import secrets
import signal
import sys
import threading
import typing
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from pathlib import Path
from typing import Any, TextIO

from zchat import __version__, timefmt
from zchat import wire as p
from zchat.client.client import SEND_RETRY_S, Client
from zchat.client.events import ConnectionRestored, LeftElsewhere, Reconnecting, SessionEnded
from zchat.config import (
    DB_FILENAME,
    BrokerConfig,
    Config,
    data_dir,
    default_config_path,
    load_config,
    redact_text,
    redact_url,
    sample_config_text,
    validate,
)
from zchat.errors import ConnectionFailed, ProtocolError, RequestFailed, ZchatError
from zchat.files import private_dir, private_file
from zchat.names import name_key, normalize_name
from zchat.progress import Progress
from zchat.tty import has_terminal as _has_terminal

PASSWORD_ENV = "ZCHAT_PASSWORD"
#: An account token (``zchat token create``) to log in with instead of a password; checked
#: before PASSWORD_ENV.
TOKEN_ENV = "ZCHAT_TOKEN"
#: How long a command that is ending waits for the LOGOUT reply before closing anyway (a
#: dead broker must not hold up Ctrl-C or SIGTERM for the whole request timeout).
LOGOUT_WAIT_S = 0.5
#: Lines of ``say -`` read ahead of the one being sent.
STDIN_READ_AHEAD = 64
#: ``zchat unread --messages``: unread messages printed per conversation by default.
UNREAD_MESSAGES_LIMIT = 100


class CliError(ZchatError):
    """A problem the command line reports as one line and exit code 1."""


# -- argument parsing ---------------------------------------------------------------------


def _default(table: str, key: str, empty: str = "") -> str:
    """The ``--help`` words for a flag's default (docs/cli.md, Settings): the config
    file's setting first, then the default in code (zchat/config.py), e.g. ``default:
    [client] server in the config file, else tcp://127.0.0.1:5555``. The help is printed
    before any file is read, so it cannot show the file's value. ``empty`` stands for a
    code default of "" (data_dir: the XDG directory)."""
    value = getattr(getattr(Config(), table), key)
    shown = f"{value:g}" if isinstance(value, float) else str(value) or empty
    return f"default: [{table}] {key} in the config file, else {shown}"


#: Positionals that hold an account name: a value starting with '-' reads as an option, so
#: its usage error explains the name rule instead (docs/PROTOCOL.md §12).
_NAME_METAVARS = ("NAME", "TO")
#: The name rule in a line, as docs/PROTOCOL.md §12 states it.
NAME_RULE = ("a name is 1-32 letters, digits, '_', '-' and '.', with a letter or digit, "
             "that starts and ends with a letter, digit or '_' (docs/PROTOCOL.md §12)")


class _Parser(argparse.ArgumentParser):
    """argparse with zchat's one-line errors: ``zchat: error: MESSAGE; see 'zchat CMD
    --help'`` on stderr and exit code 2 (usage), as every other error is one line
    (docs/cli.md, Exit codes and errors). Its sub-parsers are of this class too."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but unknown arguments are reported by the (sub)command that was
        given them, so that the error points at ``zchat who --help``, not ``zchat
        --help``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._innermost(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _innermost(self, parsed: argparse.Namespace) -> _Parser:
        """The parser of the deepest subcommand named in ``parsed`` (this one if none)."""
        parser = self
        while True:
            chosen = next((action.choices.get(str(getattr(parsed, action.dest, "")))
                           for action in parser._actions
                           if isinstance(action, argparse._SubParsersAction)), None)
            if not isinstance(chosen, _Parser):
                return parser
            parser = chosen

    def error(self, message: str) -> typing.NoReturn:
        # argparse quotes the arguments it could not take (`--stroe URL`, a URL where
        # an ACTION goes): their passwords must not reach the terminal (a sixth tester's)
        message = _hide_passwords(self._explain(message), getattr(self, "_given", []))
        self.exit(2, f"zchat: error: {message}; see '{self.prog} --help'\n")

    def _explain(self, message: str) -> str:
        """argparse's ``message``, or for a NAME given as ``-x`` (taken for an unknown
        option, so argparse says "NAME is required") the name rule."""
        given = getattr(self, "_given", [])
        words = given[:given.index("--")] if "--" in given else given
        unknown = [w for w in words if w.startswith("-") and len(w) > 1
                   and w.split("=")[0] not in self._option_string_actions
                   and not self._negative_number_matcher.match(w)]
        names = [a for a in self._actions if not a.option_strings
                 and a.metavar in _NAME_METAVARS]
        if unknown and names and ("required" in message or "unrecognized" in message):
            return f"{unknown[0]!r} is not a name (it would read as an option): {NAME_RULE}"
        return message


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type of a count such as ``--limit``: a whole number from ``low`` to
    ``high`` (no upper bound when None), so that ``--limit 0`` is a usage error (exit
    code 2) as ``--limit abc`` is, not a request the broker refuses."""
    words = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {words}, not {text!r}")
        return value

    return count


def _quota_arg(text: str) -> int | None:
    """argparse type of ``zchat admin quota``'s BYTES (zchat.admin.parse_quota): a bad
    one is a usage error (exit code 2)."""
    from zchat.admin import parse_quota

    try:
        return parse_quota(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _room_arg(text: str) -> str:
    """argparse type of a room name: ``#dev`` as the console writes it is ``dev`` (one
    leading '#' dropped; names cannot hold '#', docs/PROTOCOL.md §12)."""
    return text[1:] if text.startswith("#") else text


def _account_arg(text: str) -> str:
    """argparse type of an account name: ``@bob`` as the console writes it is ``bob``
    (one leading '@' dropped)."""
    return text[1:] if text.startswith("@") else text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zchat", description="zchat: terminal chat on a ZeroMQ broker.",
        epilog="Client commands log in with $ZCHAT_TOKEN (an account token) when set, "
               "else a password from $ZCHAT_PASSWORD, else a prompt without echo. Names "
               "may be written as in the console, @alice and #dev. Errors are one line, "
               "'zchat: error: ...' (exit code 1; 2 for bad usage); docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"zchat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML settings file (default: $XDG_CONFIG_HOME/zchat/zchat.toml)")

    def client_opts(sp: argparse.ArgumentParser, needs_as: bool = True) -> None:
        common(sp)
        sp.add_argument("--server", metavar="ENDPOINT",
                        help="the broker's ROUTER endpoint "
                             f"({_default('client', 'server')}); for a cluster, up to "
                             "16 separated by commas (tcp://a:5555,tcp://b:5555), tried in "
                             "order, each within --timeout; join, tail, bot and say - move to the next when "
                             "theirs is lost and resume there (docs/cluster.md)")
        sp.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up when the broker does not answer "
                             f"({_default('client', 'timeout_s')}; per endpoint of a "
                             "--server list)")
        sp.add_argument("--server-key", metavar="KEY",
                        help="the broker's public key (40 characters, as 'zchat broker' "
                             "prints it); default: [client] server_key in the config "
                             "file, else the pinned one, else trust on first use "
                             "(docs/security.md)")
        if needs_as:
            sp.add_argument("--as", dest="user", required=True, metavar="NAME",
                            type=_account_arg,
                            help="the account to log in as")

    b = sub.add_parser("broker", help="run the broker",
                       description="Run the broker: a ROUTER for requests and a PUB for "
                                   "events, with accounts, rooms and history in SQLite.")
    common(b)
    b.add_argument("--data-dir", metavar="DIR",
                   help="where the database, the key pair and the lock file live "
                        f"({_default('broker', 'data_dir', '$XDG_DATA_HOME/zchat')})")
    b.add_argument("--store", metavar="URL",
                   help="keep accounts, rooms and history in this PostgreSQL database, "
                        "postgresql://USER@HOST:PORT/DB (docs/cluster.md; "
                        f"{_default('broker', 'store', 'the SQLite file in the data directory')})")
    b.add_argument("--id", metavar="ID", dest="broker_id",
                   help="this broker's id in a cluster, unique and stable (docs/cluster.md; "
                        f"{_default('broker', 'id', 'the host name and a hash of the data directory')})")
    b.add_argument("--router", metavar="ENDPOINT", help="ROUTER endpoint to bind "
                   f"({_default('broker', 'router')})")
    b.add_argument("--pub", metavar="ENDPOINT", help="PUB endpoint to bind "
                   f"({_default('broker', 'pub')})")
    b.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help=f"logging level ({_default('broker', 'log_level')}; message "
                        "bodies only at debug)")
    b.add_argument("--print-key", action="store_true",
                   help="print the broker's public key (creating its key pair in the "
                        "data directory if needed) and exit")

    irc = sub.add_parser("irc", help="run the IRC gateway (IRC clients log in to zchat)",
                         description="Run the IRC gateway: IRC clients (WeeChat, irssi, "
                                     "HexChat, bots) connect to it and each gets a zchat "
                                     "session of its own account (docs/irc.md).")
    client_opts(irc, needs_as=False)
    irc.add_argument("--listen", metavar="HOST:PORT",
                     help=f"plain IRC listener ({_default('irc', 'listen')}; '' for none); "
                          "a non-loopback address needs [irc] allow_plaintext")
    irc.add_argument("--tls-listen", metavar="HOST:PORT",
                     help="TLS IRC listener, with [irc] tls_cert and tls_key")

    j = sub.add_parser("join", help="open the chat console",
                       description="Open the full-screen chat console as NAME: rooms, "
                                   "direct messages and people side by side. Offers to "
                                   "create the account when it does not exist. It needs a "
                                   "terminal (scripts use say, dm, tail, history). Keys "
                                   "and commands: /help inside, or docs/console.md.")
    client_opts(j, needs_as=False)
    j.add_argument("name", metavar="NAME", type=_account_arg)
    j.add_argument("--no-mouse", action="store_true",
                   help="leave the mouse to the terminal (text selection) instead of "
                        "scrolling with the wheel")

    r = sub.add_parser("register", help="create an account",
                       description="Create an account (it starts in the lobby room). "
                                   "NAME: 1-32 letters, digits, '_', '-' and '.', with a "
                                   "letter or digit, starting and ending with a letter, "
                                   "digit or '_'; not like an existing name (alice_ beside "
                                   "alice). The password needs at least the "
                                   "broker's min_password_chars characters (default 8).")
    client_opts(r, needs_as=False)
    r.add_argument("name", metavar="NAME", type=_account_arg)
    r.add_argument("--bot", action="store_true",
                   help="mark the account as a bot (shown as [bot] in who)")

    s = sub.add_parser("say", help="post to a room",
                       description="Post TEXT to ROOM (joining it first, creating it if "
                                   "need be); with TEXT '-', post each line of standard "
                                   "input as one message.")
    client_opts(s)
    s.add_argument("--room", required=True, type=_room_arg)
    notice_or_me = s.add_mutually_exclusive_group()
    notice_or_me.add_argument("--me", action="store_true", help="post as an action (/me)")
    notice_or_me.add_argument("--notice", action="store_true",
                              help="post as a notice (shown as -you- text; bots never "
                                   "answer one)")
    s.add_argument("--retry-for", type=_nonnegative_seconds, default=SEND_RETRY_S,
                   metavar="SECONDS",
                   help="with TEXT '-': how long a line waits for a restarting broker "
                        f"before the command gives up (default {SEND_RETRY_S:g})")
    s.add_argument("text", metavar="TEXT")

    d = sub.add_parser("dm", help="send a direct message",
                       description="Send a direct message; says whether it was delivered "
                                   "live or stored for the recipient's next login.")
    client_opts(d)
    d.add_argument("--notice", action="store_true",
                   help="send it as a notice (bots never answer one)")
    d.add_argument("to", metavar="TO", type=_account_arg)
    d.add_argument("text", metavar="TEXT")

    t = sub.add_parser("tail", help="print room messages and direct messages as they arrive",
                       description="Print your unread direct messages, then new messages in "
                                   "ROOM (joining it first, creating it if need be; without "
                                   "--room: none) and your direct messages as they arrive. "
                                   "The direct messages it prints are marked read "
                                   "(docs/cli.md).")
    client_opts(t)
    t.add_argument("--room", type=_room_arg,
                   help="the room to follow (default: direct messages only)")
    t.add_argument("--count", type=_count(1), metavar="N", help="exit after N messages")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--keep-unread", action="store_true",
                   help="leave the direct messages it prints unread (a log, not a reader)")

    h = sub.add_parser("history", help="print a room's recent messages",
                       description="Print the last messages of ROOM, oldest first, "
                                   "without joining it (a private room: members and "
                                   "admins only), or of your direct conversation with NAME.")
    client_opts(h)
    where = h.add_mutually_exclusive_group(required=True)
    where.add_argument("--room", type=_room_arg)
    where.add_argument("--dm", metavar="NAME", type=_account_arg,
                       help="your direct conversation with NAME (both ways) instead")
    h.add_argument("--limit", type=_count(1, p.MAX_HISTORY_LIMIT),
                   default=p.DEFAULT_HISTORY_LIMIT, metavar="N",
                   help=f"how many (1-{p.MAX_HISTORY_LIMIT}, default "
                        f"{p.DEFAULT_HISTORY_LIMIT})")
    h.add_argument("--before", type=_count(0), metavar="SEQ",
                   help="only messages before SEQ (with --dm: before that DM id)")
    h.add_argument("--json", action="store_true", help="one JSON object per line")

    u = sub.add_parser("unread", help="list conversations with unread messages",
                       description="List your rooms and direct conversations with unread "
                                   "messages and mentions, as the broker keeps them for "
                                   "all your devices; with --messages, print those "
                                   "messages instead.")
    client_opts(u)
    u.add_argument("--json", action="store_true", help="one JSON object per line")
    u.add_argument("--messages", action="store_true",
                   help="print the unread messages themselves, oldest first, rooms then "
                        "direct messages")
    u.add_argument("--limit", type=_count(1), metavar="N",
                   help="with --messages: at most the oldest N of each conversation "
                        f"(default {UNREAD_MESSAGES_LIMIT})")
    u.add_argument("--mark-read", action="store_true",
                   help="then mark read what was listed (with --messages: printed)")

    w = sub.add_parser("who", help="list accounts and their presence",
                       description="List accounts online or away, or the members of ROOM "
                                   "(read without joining it).")
    client_opts(w)
    w.add_argument("--room", type=_room_arg)
    w.add_argument("--json", action="store_true", help="one JSON object per line")

    sl = sub.add_parser("slow", help="set a room's slow mode",
                        description="Let each member of ROOM post at most one message per "
                                    "SECONDS (0 turns slow mode off; at most "
                                    f"{p.MAX_SLOW_MODE_S}). Only the room's moderators, "
                                    "its owner (creator) and broker admins may, and they "
                                    "are exempt (docs/PROTOCOL.md §6.28, §17.1).")
    client_opts(sl)
    sl.add_argument("room", metavar="ROOM", type=_room_arg)
    sl.add_argument("seconds", type=_slow_seconds, metavar="SECONDS")

    tp = sub.add_parser("topic", help="show or set a room's topic",
                        description="Print ROOM's topic, read without joining it; with "
                                    "TEXT, set it ('' clears it), joining ROOM first: "
                                    "members may set it unless the room is locked "
                                    "(docs/PROTOCOL.md §6.22, §6.51, §17.1).")
    client_opts(tp)
    tp.add_argument("room", metavar="ROOM", type=_room_arg)
    tp.add_argument("text", metavar="TEXT", nargs="?")

    pt = sub.add_parser("part", help="leave a room",
                        description="Leave ROOM; --reason is shown to its other members "
                                    "(docs/PROTOCOL.md §6.6).")
    client_opts(pt)
    pt.add_argument("--reason", default="", metavar="TEXT",
                    help="why, shown to the others (at most 200 characters, one line)")
    pt.add_argument("room", metavar="ROOM", type=_room_arg)

    md = sub.add_parser("mod", help="moderate: kick, ban, mute, invite, op, lock, delete…",
                        description="Moderation (docs/PROTOCOL.md §17). ROOM '*' means the "
                                    "whole server (ban, unban, mute, unmute, bans, audit; "
                                    "admins). ACTION and its ARG: kick NICK, ban NICK, "
                                    "unban NICK, mute NICK, unmute NICK, invite NICK, "
                                    "op NICK, deop NICK, lock, unlock, private on|off, "
                                    "delete SEQ, bans, audit, delete-room (the room, its "
                                    "history and members; its owner or a broker admin; "
                                    "not lobby). NICK may be written @nick, ROOM #room.")
    client_opts(md)
    md.add_argument("action", choices=MOD_ACTIONS, metavar="ACTION")
    md.add_argument("room", metavar="ROOM", type=_room_arg)
    md.add_argument("arg", nargs="?", default=None, metavar="ARG")
    md.add_argument("--reason", default="",
                    help="kick, ban, mute, delete-room: shown to them")
    md.add_argument("--duration", default="", metavar="D",
                    help="ban, mute: a number and a unit, 30s, 10m, 2h, 1d or 1w, at "
                         "most ten years (default: until lifted)")
    md.add_argument("--limit", type=_count(1, p.MAX_AUDIT_LIMIT),
                    default=p.DEFAULT_AUDIT_LIMIT, metavar="N",
                    help=f"audit: entries to show, newest first (1-{p.MAX_AUDIT_LIMIT}, "
                         f"default {p.DEFAULT_AUDIT_LIMIT})")

    bt = sub.add_parser("bot", help="run a bot from a Python file",
                        description="Run the bot defined in FILE.py (a module-level `bot = "
                                    "Bot(...)` or a make_bot() function; docs/bots.md) "
                                    "until SIGTERM or Ctrl-C, then log it out. It logs in "
                                    "with $ZCHAT_TOKEN, else $ZCHAT_PASSWORD, else the "
                                    "credentials in the file, else a password prompt.")
    client_opts(bt, needs_as=False)
    bt.add_argument("file", type=Path, metavar="FILE.py")
    bt.add_argument("--as", dest="user", metavar="NAME", type=_account_arg,
                    help="the bot's account (default: the name in the file)")

    tok = sub.add_parser("token", help="create, list and revoke account tokens",
                         description="Account tokens are long-lived credentials for bots "
                                     "and scripts: set $ZCHAT_TOKEN instead of "
                                     "$ZCHAT_PASSWORD. Creating one needs the password.")
    tok_sub = tok.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tc = tok_sub.add_parser("create", help="create a token and print it (shown once)")
    client_opts(tc)
    tc.add_argument("--label", default="", metavar="LABEL",
                    help="a note to recognise the token by in `zchat token list`")
    tl = tok_sub.add_parser("list", help="list your tokens (ids and labels, not secrets)")
    client_opts(tl)
    tl.add_argument("--json", action="store_true", help="one JSON object per line")
    tr = tok_sub.add_parser("revoke", help="revoke a token by id")
    client_opts(tr)
    tr.add_argument("id", type=int, metavar="ID")

    rp = sub.add_parser("replay", help="replay a chat log through the broker",
                        description="Replay a JSON-lines chat log (join, part, quit, "
                                    "rename, message, action) into ROOM, one session per "
                                    "user of the log, and report what was sent. Accounts "
                                    "get $ZCHAT_PASSWORD, else a generated password.")
    client_opts(rp, needs_as=False)
    rp.add_argument("file", type=Path, metavar="FILE.jsonl")
    rp.add_argument("--room", required=True, type=_room_arg)
    rp.add_argument("--speed", default="60", metavar="X",
                    help="divide the log's time by X (default 60: an hour a minute); "
                         "0 or 'max' for no waiting")
    rp.add_argument("--verify", action="store_true",
                    help="an observer in ROOM must see every sent message once, in order; "
                         "exit 1 if not")
    rp.add_argument("--observer", default="replay-observer", metavar="NAME",
                    type=_account_arg,
                    help="the observer's account with --verify (default replay-observer)")
    _admin_parsers(sub, client_opts)

    pw = sub.add_parser("passwd", help="change your password",
                        description="Change the password of NAME: the current one from "
                                    "$ZCHAT_PASSWORD or a prompt, the new one from "
                                    "$ZCHAT_NEW_PASSWORD, --stdin or a prompt (twice). "
                                    "Your other sessions end (docs/admin.md).")
    client_opts(pw)
    pw.add_argument("--stdin", action="store_true",
                    help="read the new password from the first line of standard input")

    cf = sub.add_parser("config", help="print the sample settings file or its path",
                        description="Print the sample settings file installed with zchat "
                                    "(every setting with its default and a comment; save "
                                    "it as ~/.config/zchat/zchat.toml and edit), or the "
                                    "path of the settings file zchat reads. No file is "
                                    "read.")
    common(cf)
    what = cf.add_mutually_exclusive_group(required=True)
    what.add_argument("--defaults", action="store_true",
                      help="print the sample settings file (the defaults in code)")
    what.add_argument("--path", action="store_true",
                      help="print the settings file's path: --config, else "
                           "$XDG_CONFIG_HOME/zchat/zchat.toml")

    cp = sub.add_parser("completion", help="print a shell completion script",
                        description="Print the completion script for SHELL, made from "
                                    "zchat's own options: subcommands, options and their "
                                    "values. bash (4+), in ~/.bashrc: eval \"$(zchat "
                                    "completion bash)\"; zsh, in ~/.zshrc after "
                                    "compinit: eval \"$(zchat completion zsh)\".")
    cp.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL",
                    help="bash or zsh")
    return parser


def _admin_parsers(sub: Any, client_opts: Callable[..., None]) -> None:
    """``zchat admin ACTION``: operator tools, over the wire with ``--as`` (an account in
    the broker's admins) or directly on the database (docs/admin.md)."""
    ad = sub.add_parser("admin", help="operator tools: accounts, sessions, bans, audit log",
                        description="Operator tools (docs/admin.md). With --as NAME (an "
                                    "account in the broker's [broker] admins) they go over "
                                    "the wire to the running broker; without it they work "
                                    "on the database (--db FILE or --db postgresql://…, "
                                    "else the broker's data directory, else its [broker] "
                                    "store): create, reset-password, disable, enable and "
                                    "quota then need the broker stopped (on PostgreSQL: "
                                    "every broker on the database). migrate copies a "
                                    "broker's SQLite file into PostgreSQL "
                                    "(docs/cluster.md).")
    ad_sub = ad.add_subparsers(dest="admin_command", required=True, metavar="ACTION")

    def admin_opts(sp: argparse.ArgumentParser, json_out: bool = False) -> None:
        client_opts(sp, needs_as=False)
        sp.add_argument("--as", dest="user", metavar="NAME", type=_account_arg,
                        help="go over the wire, logged in as this admin account")
        sp.add_argument("--db", metavar="FILE|URL",
                        help="work on this database: an SQLite file or a PostgreSQL URL "
                             "(default: the data directory's zchat.db, or [broker] store "
                             "when it is a PostgreSQL URL)")
        sp.add_argument("--data-dir", metavar="DIR", help="the broker's data directory")
        if json_out:
            sp.add_argument("--json", action="store_true", help="one JSON object per line")

    admin_opts(ad_sub.add_parser("users", help="list accounts: bot, disabled, created, "
                                               "online, stored bytes, quota"), json_out=True)
    admin_opts(ad_sub.add_parser("sessions", help="list sessions: address, login time, "
                                                  "last seen"), json_out=True)
    cr = ad_sub.add_parser("create", help="create accounts from a CSV file, all or none",
                           description="Create the accounts of a CSV file (columns name,"
                                       "password[,bot]; a header line is optional). An "
                                       "empty password is generated and shown once. "
                                       "Every row is checked first: one bad row and "
                                       "nothing is created.")
    admin_opts(cr)
    cr.add_argument("--csv", type=Path, required=True, metavar="FILE")
    cr.add_argument("--output", type=Path, metavar="FILE",
                    help="write the generated passwords to this new file (mode 0600) "
                         "instead of standard output")
    rs = ad_sub.add_parser("reset-password", help="give an account a new password; its "
                                                  "sessions end")
    admin_opts(rs)
    rs.add_argument("name", metavar="NAME", type=_account_arg)
    how = rs.add_mutually_exclusive_group()
    how.add_argument("--generate", action="store_true",
                     help="generate the password and print it once")
    how.add_argument("--stdin", action="store_true",
                     help="read it from the first line of standard input")
    for verb, text in (("disable", "disable an account (its sessions end at once)"),
                       ("enable", "enable a disabled account again")):
        sp = ad_sub.add_parser(verb, help=text)
        admin_opts(sp)
        sp.add_argument("name", metavar="NAME", type=_account_arg)
    qu = ad_sub.add_parser("quota", help="set an account's storage quota",
                           description="Set how many bytes of message text (room messages "
                                       "and DMs) an account may store: BYTES (5000000, "
                                       "5MB, 2GiB), none (no quota) or default (the "
                                       "broker's storage_quota_bytes). A SEND or DM past it "
                                       "is refused; nothing stored is removed.")
    admin_opts(qu)
    qu.add_argument("name", metavar="NAME", type=_account_arg)
    qu.add_argument("quota", metavar="BYTES|none|default", type=_quota_arg)
    bn = ad_sub.add_parser("bans", help="list the bans and mutes in force")
    admin_opts(bn, json_out=True)
    bn.add_argument("--room", metavar="ROOM", type=_room_arg,
                    help="only this room's ('*': only the server-wide ones)")
    ub = ad_sub.add_parser("unban", help="lift a ban (or with --mute a mute)")
    admin_opts(ub)
    ub.add_argument("name", metavar="NAME", type=_account_arg)
    ub.add_argument("--room", metavar="ROOM", type=_room_arg,
                    help="the room (default: server-wide)")
    ub.add_argument("--mute", action="store_true", help="lift a mute instead of a ban")
    mg = ad_sub.add_parser(
        "migrate", help="copy a broker's SQLite database into PostgreSQL",
        description="Copy a single broker's SQLite database (accounts, rooms, history with "
                    "its sequence numbers, DMs, read state, tokens, bans, mutes, the audit "
                    "log) into a new or empty PostgreSQL database, in one transaction, and "
                    "check it: the row count of every table, the rooms' sequence numbers "
                    "and the highest ids, then through the PostgreSQL store. The SQLite "
                    "file is only read; the broker must be stopped. docs/cluster.md, "
                    "'Moving from SQLite'.")
    mg.set_defaults(user=None)
    mg.add_argument("--config", type=Path, metavar="FILE",
                    help="TOML settings file (default: $XDG_CONFIG_HOME/zchat/zchat.toml)")
    mg.add_argument("--to", required=True, metavar="URL",
                    help="the PostgreSQL database (postgresql://USER@HOST:PORT/DB): new, "
                         "or with zchat's tables empty")
    mg.add_argument("--db", metavar="FILE",
                    help="the SQLite file to copy (default: zchat.db in the data directory)")
    mg.add_argument("--data-dir", metavar="DIR", help="the broker's data directory")
    au = ad_sub.add_parser("audit", help="show the audit log, newest first")
    admin_opts(au, json_out=True)
    au.add_argument("--room", metavar="ROOM", type=_room_arg,
                    help="only this room's entries ('*': only those of no room)")
    au.add_argument("--actor", metavar="NAME", type=_account_arg,
                    help="only this actor's entries")
    au.add_argument("--target", metavar="NAME", type=_account_arg,
                    help="only entries acting on this account")
    au.add_argument("--action", metavar="ACTION",
                    help="only this action (ban, unban, mute, kick, delete, create_account, "
                         "reset_password, disable, ...)")
    au.add_argument("--before", type=_count(0), metavar="ID",
                    help="only entries older than entry ID (page back: give the last ID "
                         "shown)")
    au.add_argument("--limit", type=_count(1, p.MAX_AUDIT_LIMIT),
                    default=p.DEFAULT_AUDIT_LIMIT, metavar="N",
                    help=f"how many (1-{p.MAX_AUDIT_LIMIT}, default "
                         f"{p.DEFAULT_AUDIT_LIMIT})")


# -- helpers ------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    client = config.client
    if getattr(args, "server", None) is not None:
        client = dataclasses.replace(client, server=args.server)
    if getattr(args, "timeout", None) is not None:
        client = dataclasses.replace(client, timeout_s=args.timeout)
    if getattr(args, "server_key", None) is not None:
        client = dataclasses.replace(client, server_key=args.server_key)
    broker = config.broker
    overrides = {k: getattr(args, a) for k, a in (("data_dir", "data_dir"),
                                                   ("store", "store"),
                                                   ("id", "broker_id"),
                                                   ("router", "router"), ("pub", "pub"),
                                                   ("log_level", "log_level"))
                 if getattr(args, a, None)}
    if getattr(args, "store", None) == "":
        overrides["store"] = ""  # --store "": the SQLite file, whatever the config says
    if overrides:
        broker = dataclasses.replace(broker, **overrides)
    irc = config.irc
    if getattr(args, "listen", None) is not None:
        irc = dataclasses.replace(irc, listen=args.listen)
    if getattr(args, "tls_listen", None) is not None:
        irc = dataclasses.replace(irc, tls_listen=args.tls_listen)
    config = Config(broker=broker, client=client, irc=irc)
    validate(config, path="command line")
    return config


def env(name: str) -> str:
    """The environment variable ``name`` ("" when unset). Raises CliError ``$NAME is
    not valid UTF-8`` when it is not (Python decodes the environment with
    surrogateescape; a password must be text)."""
    return _utf8(os.environ.get(name, ""), f"${name}")


def _password(confirm: bool = False) -> str:
    password = env(PASSWORD_ENV)
    if password:
        return password
    if not _has_terminal():
        raise CliError(f"no password: set {PASSWORD_ENV} or run in a terminal")
    try:
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password (again): ") != password:
            raise CliError("the passwords do not match")
    except EOFError:
        raise CliError(f"no password: set {PASSWORD_ENV} or run in a terminal") from None
    except UnicodeDecodeError:
        raise CliError("the password typed is not valid UTF-8") from None
    if not password:
        raise CliError("the password must not be empty")
    return password


def message_json(msg: p.MessagePosted | p.DirectMessage) -> dict[str, Any]:
    """The ``--json`` object of a room message or direct message (docs/cli.md); ``kind``
    is "text", "action" or "notice" (a notice: docs/PROTOCOL.md §6.8)."""
    if isinstance(msg, p.DirectMessage):
        return {"dm": True, "id": msg.id, "room": None, "seq": None, "time": timefmt.iso_utc(msg.time),
                "time_ms": msg.time, "from": msg.sender, "to": msg.to, "text": msg.text,
                "kind": "notice" if msg.notice else "text"}
    return {"dm": False, "room": msg.room, "seq": msg.seq, "time": timefmt.iso_utc(msg.time),
            "time_ms": msg.time, "from": msg.sender, "text": msg.text,
            "kind": "notice" if msg.notice else msg.kind,
            "deleted_by": msg.deleted_by or None}


def message_line(msg: p.MessagePosted | p.DirectMessage) -> str:
    """The plain-text line of a message: local time, where, who, text (continuation lines
    indented). A notice shows its sender as irssi does, ``-alice- text`` (a DM's
    ``-alice -> bob- text``)."""
    text = msg.text.replace("\n", "\n    ")
    if isinstance(msg, p.DirectMessage):
        who = f"-{msg.sender} -> {msg.to}-" if msg.notice else f"<{msg.sender} -> {msg.to}>"
        return f"{timefmt.local_text(msg.time)} [dm #{msg.id}] {who} {text}"
    if msg.deleted_by:  # its text is kept only for the audit log (docs/PROTOCOL.md §6.38)
        return f"{timefmt.local_text(msg.time)} #{msg.room} #{msg.seq} <{msg.sender}> " \
               f"(message deleted by {msg.deleted_by})"
    if msg.kind == "action":
        return f"{timefmt.local_text(msg.time)} #{msg.room} #{msg.seq} * {msg.sender} {text}"
    if msg.notice:
        return f"{timefmt.local_text(msg.time)} #{msg.room} #{msg.seq} -{msg.sender}- {text}"
    return f"{timefmt.local_text(msg.time)} #{msg.room} #{msg.seq} <{msg.sender}> {text}"


def _local_tz() -> dt.tzinfo:
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def mute_notice(event: p.MuteChanged, tz: dt.tzinfo) -> str:
    """``tail``'s stderr line for MUTED (docs/PROTOCOL.md §6.33.1), as the console words
    it (docs/cli.md): ``olga muted you in #dev until 14:01:30 (1 min 30 s): flood``, in
    local time ``tz`` to the second; ``olga unmuted you in #dev; you may post again``."""
    from zchat.console.view import expiry_text

    where = f"in #{event.room}" if event.room else "on this whole server (DMs too)"
    if not event.muted:
        return f"{event.by} unmuted you {where}; you may post again"
    return (f"{event.by} muted you {where} {expiry_text(event.until, event.time, tz)}"
            + (f": {event.reason}" if event.reason else ""))


def removal_reason(event: p.UserLeft, tz: dt.tzinfo) -> str:
    """Why ``tail`` ends when its account is kicked or banned from the room (LEFT with
    ``by``, docs/PROTOCOL.md §6.19): ``you were kicked from #dev by olga: be nice``, or
    ``you were banned from #dev by olga until 14:01:30 (1 min 30 s): spam`` (local time
    ``tz`` to the second; ``until lifted`` without an expiry)."""
    from zchat.console.view import expiry_text

    how = (f"banned from #{event.room} by {event.by} "
           f"{expiry_text(event.until, event.time, tz)}" if event.ban
           else f"kicked from #{event.room} by {event.by}")
    return f"you were {how}" + (f": {event.reason}" if event.reason else "")


def _emit(out: TextIO, msg: p.MessagePosted | p.DirectMessage, as_json: bool) -> None:
    out.write((json.dumps(message_json(msg), ensure_ascii=False) if as_json
               else message_line(msg)) + "\n")
    out.flush()


async def _login(client: Client, user: str, password_only: bool = False,
                 presence: bool = True) -> p.LoggedIn:
    """Log ``user`` in with the account token in $ZCHAT_TOKEN when set and not empty (and
    not ``password_only``), else with the password (``_password``)."""
    token = "" if password_only else env(TOKEN_ENV)
    if token:
        return await client.login(user, token=token, presence=presence)
    return await client.login(user, _password(), presence=presence)


async def _session(config: Config, user: str | None,
                   body: Callable[[Client], Awaitable[int]], reconnect: bool = False,
                   password_only: bool = False, presence: bool = False) -> int:
    """Connect, log in as ``user`` (when given; see ``_login``), run ``body``, log out,
    close. With ``reconnect``, the client logs in again by itself after losing the broker,
    waiting at most ``[client] reconnect_max_s`` between attempts. The session announces
    no presence (LOGIN ``presence`` false, docs/PROTOCOL.md §6.3) unless ``presence``:
    a one-shot command (`zchat say`, `history`, `who`…) never makes its account blink
    online and offline for the others; `zchat tail`, which stays, does announce."""
    if user is not None:  # a credential that is not text: said now, not after connecting
        env(PASSWORD_ENV)
        if not password_only:
            env(TOKEN_ENV)
    async with _client(config, reconnect) as client:
        if user is None:
            return await body(client)
        await _login(client, user, password_only, presence)
        try:
            return await body(client)
        finally:
            # Also on cancellation (SIGTERM, Ctrl-C, see _run): the broker then marks the
            # user offline at once instead of after the heartbeat timeout.
            if client.connected:
                with contextlib.suppress(ZchatError, TimeoutError):
                    await asyncio.wait_for(client.logout(), LOGOUT_WAIT_S)


def _client(config: Config, reconnect: bool) -> Client:
    """A Client built from ``[client]`` (transport security per docs/security.md)."""
    c = config.client
    return _NoticeClient(c.server, timeout_s=c.timeout_s, reconnect=reconnect,
                         reconnect_max_s=c.reconnect_max_s, encryption=c.encryption,
                         server_key=c.server_key, key_server=c.key_server)


class _NoticeClient(Client):
    """A Client that tells stderr when its first connect pinned the broker's key."""

    async def connect(self) -> p.InfoReply:
        info = await super().connect()
        if self.pinned is not None:
            print(self.pinned.notice(), file=sys.stderr, flush=True)
        return info


def _run(main: Coroutine[Any, Any, int],
         signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Run a command's coroutine; each of ``signals`` cancels it, so that its cleanup runs
    (``_session`` logs out, the client closes), and the exit code is then 128 + the signal
    number (143 for SIGTERM, 130 for SIGINT), with no traceback."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        cancel = task.cancel
        received: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            if not received:
                received.append(sig)
                cancel()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main
        except asyncio.CancelledError:
            if not received:
                raise
            return 128 + received[0]
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def _utf8(value: str, what: str) -> str:
    """``value`` (a command-line argument, decoded with surrogateescape) if it was valid
    UTF-8; else CliError."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"{what} is not valid UTF-8") from None
    return value


def _read_lines(fd: int) -> Iterator[bytes]:
    """The lines of file descriptor ``fd`` (with their ends), read with os.read: no Python
    buffer lock is held while a read blocks, so the interpreter can exit meanwhile."""
    pending = b""
    while chunk := os.read(fd, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line + b"\n" for line in lines)
    if pending:
        yield pending


async def _stdin_lines() -> AsyncIterator[tuple[int, bytes]]:
    """Yield (line number, raw line without its end) from standard input, read as bytes by
    a daemon thread: a blocked read never holds up the exit after a signal."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(STDIN_READ_AHEAD)

    # The command may end (an error, a signal) while this thread waits for the queue: the
    # loop then cancels or refuses the put, and the thread just stops (a tester saw a
    # CancelledError traceback on stderr).
    ended = (RuntimeError, OSError, concurrent.futures.CancelledError)

    def reader() -> None:
        with contextlib.suppress(*ended):
            for raw in _read_lines(sys.stdin.fileno()):
                asyncio.run_coroutine_threadsafe(queue.put(raw), loop).result()
        with contextlib.suppress(*ended):
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    threading.Thread(target=reader, name="zchat-stdin", daemon=True).start()
    number = 0
    while (raw := await queue.get()) is not None:
        number += 1
        yield number, raw.rstrip(b"\r\n")


# -- commands -----------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace, config: Config) -> int:
    cfg = config.broker
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from zchat.broker.repeats import RepeatFilter

    repeats = RepeatFilter()  # one error a second during an outage, not thousands
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
    directory = data_dir(cfg)
    # The database holds password and token hashes, DMs, private rooms and the audit log:
    # everything the broker creates is its user's alone (files 0600, directories 0700).
    os.umask(0o077)
    if args.print_key:
        from zchat.broker.keypair import load_or_create_broker_keys

        _make_data_dir(directory)
        pair, _created = load_or_create_broker_keys(directory)
        print(pair.public.decode("ascii"))
        return 0
    db_path = _store_location(cfg)
    new = _NewFiles(directory)  # a start that fails leaves nothing new behind
    try:
        _make_data_dir(directory)
        lock = _lock_data_dir(directory)
        try:
            broker = _bound_broker(config)
        except BaseException:
            lock.close()
            raise
    except BaseException:
        new.undo()
        raise
    _write_pid(lock)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: broker.stop())
    # The kernel may deliver a signal to any thread (libzmq's, the ZAP handler's); the
    # Python handler then runs only when the loop's thread next wakes, up to a heartbeat
    # interval later (a SIGTERM went unanswered for over 5 s). The wake-up fd makes the
    # signal itself wake the loop's poll.
    previous_fd = broker.wake_on_signals()
    _print_started(broker, db_path)
    try:
        broker.run()
    finally:
        signal.set_wakeup_fd(previous_fd)
        broker.close()
        lock.close()
    # Wait (at most the shutdown LINGER, 0.5 s) for GOING_AWAY to leave before exiting.
    broker.context.term()
    logging.getLogger("zchat.broker").info("stopped")
    return 0


def _make_data_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data directory {directory}: {exc}") from None


def _bound_broker(config: Config) -> Any:
    """A Broker on the data directory's database with its endpoints bound (creating the
    key pair on first start). Raises BindError naming the endpoint that could not be
    bound, StorageError (the database), TransportSecurityError, CliError; whatever was
    opened is closed then."""
    from zchat.broker.loop import Broker
    from zchat.store import open_store

    cfg = config.broker
    broker = Broker(cfg, open_store(_store_location(cfg)))
    try:
        broker.bind()
    except ValueError as exc:  # no key service port can be derived from the router
        broker.close()
        raise CliError(f"cannot start the key service: {exc}; set [broker] "
                       "key_endpoint") from None
    except BaseException:
        broker.close()
        raise
    return broker


def _store_location(cfg: BrokerConfig) -> str | Path:
    """Where the broker's store is: ``[broker] store`` (a PostgreSQL URL) or the SQLite
    file in the data directory."""
    return cfg.store or data_dir(cfg) / DB_FILENAME


def _print_started(broker: Any, db_path: str | Path) -> None:
    """The lines ``zchat broker`` prints once it serves (docs/cli.md)."""
    from zchat.broker.loop import is_loopback

    cfg = broker.config
    print(f"zchat broker {__version__}", flush=True)
    print(f"  router   {broker.router_endpoint}", flush=True)
    print(f"  pub      {broker.pub_endpoint}", flush=True)
    print(f"  database {redact_url(str(db_path))}", flush=True)
    if broker.keys is not None and broker.zap is not None:
        from zchat.keyformat import fingerprint

        print(f"  key      {broker.key_endpoint}", flush=True)
        print(f"  public key: {broker.keys.public.decode('ascii')}", flush=True)
        print(f"  fingerprint {fingerprint(broker.keys.public)}"
              f"{' (new key pair)' if broker.keys_created else ''}", flush=True)
    else:
        print(f"  encryption none{'' if cfg.encryption == 'none' else ' (not tcp)'}",
              flush=True)
        if cfg.encryption == "none" and not all(
                is_loopback(e) for e in (cfg.router, cfg.pub) if e.startswith("tcp://")):
            print("  WARNING: encryption is off on a network endpoint: passwords, tokens "
                  "and messages cross it in clear text", flush=True)


class _NewFiles:
    """What a start of ``zchat broker`` may create in its data directory — the
    directory itself (and missing parents), the database with its WAL files, the key
    pair and the lock file — noted before the start, so that a start that fails
    (``undo()``) removes exactly what it created and never anything that was there."""

    def __init__(self, directory: Path) -> None:
        from zchat.admin import LOCK_FILENAME
        from zchat.broker.keypair import BROKER_PUBLIC_FILE, BROKER_SECRET_FILE

        names = (DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm",
                 BROKER_SECRET_FILE, BROKER_PUBLIC_FILE, LOCK_FILENAME)
        self.files = [directory / n for n in names if not os.path.lexists(directory / n)]
        self.dirs: list[Path] = []  # the directories that do not exist yet, deepest first
        path = directory.absolute()
        while not os.path.lexists(path) and path != path.parent:
            self.dirs.append(path)
            path = path.parent

    def undo(self) -> None:
        for path in self.files:
            with contextlib.suppress(OSError):
                path.unlink()
        for path in self.dirs:
            try:
                path.rmdir()  # only when empty: something else put there stays
            except OSError:
                return


def _lock_data_dir(directory: Path) -> TextIO:
    """Hold an exclusive lock on DIR/broker.lock for the broker's lifetime: two brokers on
    one database would each cache state the other changes. Raises CliError if taken. The
    file's content (the pid) is written by ``_write_pid`` once the broker has started."""
    import fcntl

    from zchat.admin import LOCK_FILENAME

    try:
        lock = open(directory / LOCK_FILENAME, "a+")  # noqa: SIM115 (held until exit)
    except OSError as exc:
        raise CliError(f"cannot open {directory / LOCK_FILENAME}: "
                       f"{exc.strerror or exc}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise CliError(f"another zchat broker is already using {directory}") from None
    return lock


def _write_pid(lock: TextIO) -> None:
    """Put this process's pid in the held lock file (for people: ``cat broker.lock``)."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()


def cmd_register(args: argparse.Namespace, config: Config) -> int:
    from zchat.admin import broker_min_password_chars, check_new_password

    password = _password(confirm=True)

    async def body(client: Client) -> int:
        # the broker's rule, checked before the request, in its words (422)
        check_new_password(password, broker_min_password_chars(client))
        reply = await client.register(args.name, password, bot=args.bot)
        print(f"registered {reply.name}" + (" (bot)" if args.bot else ""))
        return 0

    return _run(_session(config, None, body))


def _tell_wait(req: p.Request, exc: RequestFailed, wait_s: float) -> None:
    """Say on stderr why a command stalls: the broker asked to wait (rate limit, a room's
    slow mode; docs/PROTOCOL.md §15). Waits under a second pass silently."""
    if wait_s >= 1.0:
        print(f"zchat: {exc.reason}; trying again in {wait_s:.0f} s", file=sys.stderr)


def _nonnegative_seconds(word: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {word!r}") \
            from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {word!r}")
    return value


def cmd_say(args: argparse.Namespace, config: Config) -> int:
    kind: p.MessageKind = "action" if args.me else "text"
    text = _utf8(args.text, "TEXT")

    async def body(client: Client) -> int:
        client.on_rate_limited = _tell_wait
        await client.join(args.room)
        if text != "-":
            await client.send(args.room, text, kind, notice=args.notice)
            return 0
        failures = sent = 0
        async for number, raw in _stdin_lines():
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                failures += 1
                print(f"zchat: not sent (line {number}): not valid UTF-8", file=sys.stderr)
                continue
            if not line.strip():
                continue
            try:
                await _send_through_reconnects(client, args.room, line, kind,
                                               args.retry_for, args.notice)
            except RequestFailed as exc:
                failures += 1
                print(f"zchat: not sent (line {number}): {exc}", file=sys.stderr)
            except ConnectionFailed as exc:
                lines = "1 line was" if sent == 1 else f"{sent} lines were"
                why = str(exc)
                if client.state == "reconnecting":  # gave up waiting: say so, not "reconnecting"
                    # the broker may be up with its database away (a fifth tester's
                    # 40 s PostgreSQL outage): name both, and the way to wait longer
                    why = (f"the broker at {client.server} did not come back within "
                           f"{args.retry_for:g} s (the broker or its database away; "
                           f"--retry-for waits longer)")
                raise CliError(f"{why} — {lines} sent before it") from None
            else:
                sent += 1
        return 1 if failures else 0

    # A pipe (`say -`) may outlive a broker restart: its client reconnects and resumes by
    # itself, and a line is retried with its cmid (stored once) for SEND_RETRY_S.
    return _run(_session(config, args.user, body, reconnect=args.text == "-"))


async def _send_through_reconnects(client: Client, room: str, line: str,
                                   kind: p.MessageKind, retry_for_s: float,
                                   notice: bool = False) -> None:
    """Send ``line``; while the client is reconnecting (a broker restart), wait for it
    and send again with the same cmid, for up to ``retry_for_s`` seconds in all
    (``Client.through_reconnects``). Raises RequestFailed, or ConnectionFailed when the
    broker stays away."""
    cmid = secrets.token_urlsafe(12)
    await client.through_reconnects(
        lambda left_s: client.send(room, line, kind, cmid=cmid, retry_for_s=left_s,
                                   retry_unavailable=True,  # a database restarting
                                   notice=notice),
        retry_for_s)


def cmd_dm(args: argparse.Namespace, config: Config) -> int:
    text = _utf8(args.text, "TEXT")

    async def body(client: Client) -> int:
        reply = await client.dm(args.to, text, notice=args.notice)
        to = reply.to or args.to  # the name as registered
        if client.name and name_key(to) == name_key(client.name):
            print("noted to yourself (a direct message to your own account)")
            return 0
        where = "delivered live" if reply.delivered == "live" else "stored until they log in"
        print(f"{where} (to {to})")
        return 0

    return _run(_session(config, args.user, body))


class _SessionEndShownOnce(logging.Filter):
    """Drops zchat.client's ``session ended…`` warning (``Client._end``) for ``tail``,
    which prints the SessionEnded reason itself, once, as ``zchat: error: …`` (docs/cli.md).
    Without it Python's last-resort handler (no logging is set up for client commands)
    printed the warning bare on stderr first: the reason twice, or for a changed broker
    key a one-line summary before the full warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("session ended")


def cmd_tail(args: argparse.Namespace, config: Config) -> int:
    tz = _local_tz()

    async def body(client: Client) -> int:
        if args.room is not None:
            await client.join(args.room)
            print(f"following #{args.room} as {client.name}", file=sys.stderr, flush=True)
        else:
            print(f"following direct messages as {client.name}", file=sys.stderr, flush=True)
        room = name_key(args.room) if args.room is not None else None
        me = name_key(client.name or args.user)
        # Unread DMs first, from the broker's read state: also those another session was
        # handed and nobody read (docs/cli.md). The pending ones come again as events.
        # All conversations' together, oldest first (DM ids grow with time).
        shown: set[int] = set()
        printed = 0

        async def print_unread(count: int | None) -> bool:
            """Print the unread DMs not printed yet (read unless --keep-unread); True once
            --count of them are printed."""
            nonlocal printed
            async for msg in _merged_unread_dms(client, client.unread.dms, count):
                if msg.id in shown:
                    continue
                _emit(sys.stdout, msg, args.json)
                shown.add(msg.id)
                printed += 1
                if not args.keep_unread:
                    await _read_dm(client, msg)
                if args.count is not None and printed >= args.count:
                    return True
            return False

        if await print_unread(args.count):
            return 0
        async for event in client.events():
            if isinstance(event, p.GoingAway):
                print(f"zchat: broker going away: {event.text}; reconnecting…",
                      file=sys.stderr, flush=True)
            elif isinstance(event, Reconnecting):
                print(f"zchat: connection lost; reconnecting in {event.delay_s:.1f} s",
                      file=sys.stderr, flush=True)
            elif isinstance(event, ConnectionRestored):
                print("zchat: reconnected", file=sys.stderr, flush=True)
                # DMs another session of the account was handed while this one was
                # away stay unread on the broker and never come here as events
                if await print_unread(None):
                    return 0
            elif isinstance(event, SessionEnded):
                # by set: SESSION_CLOSED, an admin (or the account) ended it (§6.47)
                raise CliError(f"session ended by {event.by}: {event.reason}" if event.by
                               else event.reason)
            elif isinstance(event, p.MuteChanged):
                print(f"zchat: {mute_notice(event, tz)}", file=sys.stderr, flush=True)
            elif isinstance(event, p.UserLeft) and event.by and \
                    name_key(event.name) == me and name_key(event.room) == room:
                raise CliError(removal_reason(event, tz))  # nothing left to follow
            elif isinstance(event, p.RoomDeleted) and name_key(event.room) == room:
                raise CliError(f"#{event.room} was deleted by {event.by}"  # nothing left
                               + (f": {event.reason}" if event.reason else ""))
            elif isinstance(event, LeftElsewhere) and name_key(event.room) == room:
                # left on another device, or removed/deleted while its event was missed
                # (PUB dropped it, or it happened while disconnected): nothing to follow
                raise CliError(f"you are no longer in #{event.room} (left on another "
                               "device, removed, or the room was deleted); nothing left "
                               "to follow")
            if isinstance(event, p.MessagePosted | p.DirectMessage):
                if isinstance(event, p.MessagePosted) and (
                        args.room is None or event.room.casefold() != args.room.casefold()):
                    continue
                if isinstance(event, p.DirectMessage) and event.id in shown:
                    continue  # printed with the unread ones
                _emit(sys.stdout, event, args.json)
                if isinstance(event, p.DirectMessage) and not args.keep_unread \
                        and name_key(event.sender) != me:
                    await _read_dm(client, event)
                printed += 1
                if args.count is not None and printed >= args.count:
                    return 0
        return 0

    client_log, once = logging.getLogger("zchat.client"), _SessionEndShownOnce()
    client_log.addFilter(once)
    try:
        return _run(_session(config, args.user, body, reconnect=True, presence=True))
    finally:
        client_log.removeFilter(once)


async def _unread_dms(client: Client, conversation: p.DmRead,
                      limit: int | None = None) -> list[p.DirectMessage]:
    """The unread DMs of a conversation (those from the peer after the account's read
    marker, docs/PROTOCOL.md §6.3.1), oldest first, at most ``limit`` (None: all), paged
    from DM_HISTORY."""
    found: list[p.DirectMessage] = []
    after, peer = conversation.read_id, name_key(conversation.peer)
    size = p.MAX_HISTORY_LIMIT if limit is None else max(1, min(limit, p.MAX_HISTORY_LIMIT))
    while conversation.unread and (limit is None or len(found) < limit):
        page = await client.dm_history(conversation.peer, after=after, limit=size)
        found += [m for m in page.messages if name_key(m.sender) == peer]
        if len(page.messages) < size:
            break
        after = page.messages[-1].id
    return found if limit is None else found[:limit]


#: DMs per DM_HISTORY page when ``tail`` pages the unread ones: a first line needs one
#: page of each conversation, so small pages print it at once even when a flood left
#: thousands unread (the pages are charged to the reading budget, 1 MiB a second after
#: 16 MiB: full pages of 500 x 4 KB from 30 senders held the first line for 96 s).
TAIL_DM_PAGE = 50


async def _merged_unread_dms(client: Client, conversations: Iterable[p.DmRead],
                             count: int | None) -> AsyncIterator[p.DirectMessage]:
    """The unread DMs of all ``conversations`` together, oldest first (DM ids grow with
    time), at most ``count`` (None: all), each conversation paged TAIL_DM_PAGE (or
    ``count``, if smaller) at a time from DM_HISTORY as the merge reaches its end: the
    first DM comes after one small page per conversation, not after all of them."""
    size = TAIL_DM_PAGE if count is None else max(1, min(count, TAIL_DM_PAGE))
    heads: list[tuple[int, int]] = []  # (next DM id, conversation index)
    buffers: list[collections.deque[p.DirectMessage]] = []
    cursors: list[int | None] = []  # the id to page after; None: nothing more to page
    listed = [c for c in conversations if c.unread]

    async def refill(i: int) -> None:
        conversation, peer = listed[i], name_key(listed[i].peer)
        while not buffers[i] and cursors[i] is not None:
            page = await client.dm_history(conversation.peer, after=cursors[i], limit=size)
            buffers[i].extend(m for m in page.messages if name_key(m.sender) == peer)
            cursors[i] = page.messages[-1].id if len(page.messages) == size else None
        if buffers[i]:
            heapq.heappush(heads, (buffers[i][0].id, i))

    for i, conversation in enumerate(listed):
        buffers.append(collections.deque())
        cursors.append(conversation.read_id)
        await refill(i)
    given = 0
    while heads and (count is None or given < count):
        _, i = heapq.heappop(heads)
        yield buffers[i].popleft()
        given += 1
        if buffers[i]:
            heapq.heappush(heads, (buffers[i][0].id, i))
        else:
            await refill(i)


async def _read_dm(client: Client, msg: p.DirectMessage) -> None:
    """Mark the conversation of ``msg`` (a DM to the account) read up to it: ``tail``
    printed it, so it was seen (docs/cli.md). A failure (the broker is away) leaves it
    unread, which loses nothing."""
    with contextlib.suppress(ZchatError):
        await client.mark_read(dm=msg.sender, upto=msg.id)


def cmd_unread(args: argparse.Namespace, config: Config) -> int:
    """``zchat unread`` (docs/cli.md): the account's conversations with unread messages
    from the LOGIN reply's read state, or with ``--messages`` the messages themselves;
    ``--mark-read`` then marks read what was listed or printed."""
    async def body(client: Client) -> int:
        state = client.unread
        rooms = [r for r in state.rooms if r.unread]
        dms = [d for d in state.dms if d.unread]
        marks: list[tuple[str | None, str | None, int]] = []  # (room, dm, upto)
        for r in rooms:
            last = r.read_seq + r.unread
            if not args.messages:
                _unread_line(sys.stdout, "#" + r.room, r.unread, r.mentions, r.read_seq,
                             last, args.json, room=r.room)
                marks.append((r.room, None, last))
                continue
            upto = r.read_seq
            while upto < last and upto - r.read_seq < args.limit:
                page = await client.history(r.room, after=upto, limit=min(
                    p.MAX_HISTORY_LIMIT, args.limit - (upto - r.read_seq)))
                if not page.messages:
                    break
                for msg in page.messages:
                    _emit(sys.stdout, msg, args.json)
                upto = page.messages[-1].seq
            marks.append((r.room, None, upto))
        for d in dms:
            if not args.messages:
                _unread_line(sys.stdout, "@" + d.peer, d.unread, 0, d.read_id, d.last_id,
                             args.json, dm=d.peer)
                marks.append((None, d.peer, d.last_id))
                continue
            found = await _unread_dms(client, d, args.limit)
            for dm_msg in found:
                _emit(sys.stdout, dm_msg, args.json)
            if found:
                marks.append((None, d.peer, found[-1].id))
        if not rooms and not dms:
            _nothing("nothing unread", args.json)
        if args.mark_read:
            for room, dm, upto in marks:
                await client.mark_read(room=room, dm=dm, upto=upto)
        return 0

    return _run(_session(config, args.user, body))


def _nothing(what: str, as_json: bool = False) -> None:
    """Say on stderr that a listing came out empty (``nothing unread``, ``#dev has no
    topic``), so that a person is not left with a blank screen, while stdout stays empty
    for scripts. Not with ``--json``, whose reader wants objects only (docs/cli.md)."""
    if not as_json:
        print(what, file=sys.stderr)


def _unread_line(out: TextIO, label: str, unread: int, mentions: int, read: int, last: int,
                 as_json: bool, *, room: str | None = None, dm: str | None = None) -> None:
    """One conversation of ``zchat unread``: ``#dev  3 unread, 1 mention`` or its JSON
    object (docs/cli.md)."""
    if as_json:
        out.write(json.dumps({"room": room, "dm": dm, "unread": unread, "mentions": mentions,
                              "read": read, "last": last}, ensure_ascii=False) + "\n")
        return
    extra = f", {mentions} mention{'s' if mentions != 1 else ''}" if mentions else ""
    out.write(f"{label:<20} {unread} unread{extra}\n")


def cmd_history(args: argparse.Namespace, config: Config) -> int:
    """``zchat history``: HISTORY without joining (reading changes nothing; a public
    room needs no membership, docs/PROTOCOL.md §6.9)."""

    async def body(client: Client) -> int:
        before = f" before {args.before}" if args.before is not None else ""
        if args.dm is not None:  # a direct conversation (docs/PROTOCOL.md §6.48)
            dm_page = await client.dm_history(args.dm, before=args.before, limit=args.limit)
            for dm in dm_page.messages:
                _emit(sys.stdout, dm, args.json)
            if not dm_page.messages:
                _nothing(f"no direct messages with {dm_page.peer or args.dm}{before}",
                         args.json)
            return 0
        page = await client.history(args.room, before=args.before, limit=args.limit)
        for msg in page.messages:
            _emit(sys.stdout, msg, args.json)
        if not page.messages:
            _nothing(f"no messages in #{page.room or args.room}{before}", args.json)
        return 0

    return _run(_session(config, args.user, body))


def _slow_seconds(text: str) -> int:
    """argparse type of ``zchat slow``'s SECONDS: 0..MAX_SLOW_MODE_S."""
    if not (text.isascii() and text.isdigit()) or int(text) > p.MAX_SLOW_MODE_S:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to {p.MAX_SLOW_MODE_S}, not {text!r}")
    return int(text)


def cmd_slow(args: argparse.Namespace, config: Config) -> int:
    async def body(client: Client) -> int:
        await client.set_slow_mode(args.room, args.seconds)
        print(f"slow mode of #{args.room}: " + (f"one message per {args.seconds} s"
                                                if args.seconds else "off"))
        return 0

    return _run(_session(config, args.user, body))


def cmd_topic(args: argparse.Namespace, config: Config) -> int:
    """``zchat topic ROOM [TEXT]``: read the topic with ROOM_INFO, without joining
    (docs/PROTOCOL.md §6.51); set it as a member, joining first as ``say`` does."""
    text = None if args.text is None else _utf8(args.text, "TEXT")

    async def body(client: Client) -> int:
        if text is None:
            info = await client.room_info(args.room)
            if info.topic:
                print(info.topic)
            else:
                _nothing(f"#{info.room} has no topic")
            return 0
        reply = await client.join(args.room)
        await client.set_topic(reply.room, text)
        print(f"topic of #{reply.room}: {text}" if text else f"topic of #{reply.room} cleared")
        return 0

    return _run(_session(config, args.user, body))


def cmd_part(args: argparse.Namespace, config: Config) -> int:
    """``zchat part ROOM [--reason TEXT]``: PART (docs/PROTOCOL.md §6.6)."""
    reason = _utf8(args.reason, "--reason")

    async def body(client: Client) -> int:
        await client.part(args.room, reason=reason)
        print(f"left #{args.room}")
        return 0

    return _run(_session(config, args.user, body))


MOD_ACTIONS = ("kick", "ban", "unban", "mute", "unmute", "invite", "op", "deop", "lock",
               "unlock", "private", "delete", "bans", "audit", "delete-room")
_NEEDS_NICK = ("kick", "ban", "unban", "mute", "unmute", "invite", "op", "deop")


def _fmt_ms(ms: int | None, round_up: bool = False) -> str:
    """A time (UTC ms) as ``zchat mod`` prints it: UTC to the second, ``2024-06-01
    12:01:30 UTC`` (``never`` for None). With ``round_up`` (a ban's or mute's end) the
    second is rounded up, so the time shown is never early, as in the broker's own
    refusals (docs/cli.md, docs/PROTOCOL.md §6.31)."""
    if ms is None:
        return "never"
    return f"{timefmt.utc_text(ms, round_up=round_up)} UTC"


def cmd_mod(args: argparse.Namespace, config: Config) -> int:
    """``zchat mod ACTION ROOM [ARG]`` (docs/cli.md): one moderation request; a refusal
    (403 …) is printed by main as ``zchat: error: …`` with exit status 1."""
    from zchat.console.commands import DURATION_FORMS, parse_duration

    action, arg = args.action, args.arg
    if action in _NEEDS_NICK and arg:
        arg = _account_arg(arg)  # @nick, as in the console
    room = "" if args.room == "*" else args.room
    if action in _NEEDS_NICK + ("private", "delete") and not arg:
        print(f"zchat: error: mod {action} needs its ARG (see zchat mod --help)",
              file=sys.stderr)
        return 2
    seconds = 0
    if args.duration:
        # The console's rule (one parser, the broker's ten-year bound); here a bare
        # number is refused too: there is no reason for it to start (docs/cli.md).
        try:
            parsed = parse_duration(args.duration, "--duration")
        except ValueError as exc:
            print(f"zchat: error: {exc}", file=sys.stderr)
            return 2
        if parsed is None:
            print(f"zchat: error: --duration must look like {DURATION_FORMS} (a number "
                  f"and a unit), not {args.duration!r}", file=sys.stderr)
            return 2
        seconds = parsed
    if action == "delete" and not (arg or "").isdigit():
        print("zchat: error: mod delete needs a message number (SEQ)", file=sys.stderr)
        return 2
    if action == "private" and arg not in ("on", "off"):
        print("zchat: error: mod private takes on or off", file=sys.stderr)
        return 2
    if action == "delete-room" and not room:
        print("zchat: error: mod delete-room needs a ROOM, not '*'", file=sys.stderr)
        return 2

    async def body(client: Client) -> int:
        assert arg is not None or action not in _NEEDS_NICK
        nick = arg or ""
        if action == "kick":
            await client.kick(room, nick, args.reason)
        elif action in ("ban", "mute"):
            await getattr(client, action)(nick, room, args.reason, seconds)
        elif action in ("unban", "unmute"):
            await getattr(client, action)(nick, room)
        elif action == "invite":
            await client.invite(room, nick)
        elif action in ("op", "deop"):
            await client.set_role(room, nick, "moderator" if action == "op" else "member")
        elif action in ("lock", "unlock"):
            await client.set_room(room, locked=action == "lock")
        elif action == "private":
            await client.set_room(room, private=arg == "on")
        elif action == "delete":
            await client.delete_message(room, int(nick))
        elif action == "delete-room":
            await client.delete_room(room, args.reason)
            print(f"deleted #{room}")
            return 0
        elif action == "bans":
            bans = (await client.bans(room if args.room != "*" else None)).bans
            for b in bans:
                print(f"{b.kind}\t{'#' + b.room if b.room else '*'}\t{b.name}\tby {b.by}"
                      f"\tuntil {_fmt_ms(b.until, round_up=True)}\t{b.reason}")
            if not bans:
                _nothing("no bans or mutes in force" + (f" in #{room}" if room else ""))
            return 0
        elif action == "audit":
            reply = await client.audit(room or None, limit=args.limit)
            for e in reply.entries:
                print(f"{_fmt_ms(e.time)}\t{e.actor}\t{e.action}\t"
                      f"{'#' + e.room if e.room else '*'}\t{e.target}\t{e.detail}")
            if not reply.entries:
                _nothing("no audit entries" + (f" for #{room}" if room else ""))
            return 0
        print(f"{action} done" + (f": {nick}" if nick and action in _NEEDS_NICK else "")
              + (f" in #{room}" if room else " server-wide"))
        return 0

    return _run(_session(config, args.user, body))


def cmd_who(args: argparse.Namespace, config: Config) -> int:
    """``zchat who [--room ROOM]``: WHO without joining (docs/PROTOCOL.md §6.11)."""

    async def body(client: Client) -> int:
        users = (await client.who(args.room)).users
        for u in users:
            if args.json:
                print(json.dumps({"name": u.name, "presence": u.presence, "bot": u.bot,
                                  "text": u.text}, ensure_ascii=False))
            else:
                extra = (" [bot]" if u.bot else "") + (f"  {u.text}" if u.text else "")
                print(f"{u.name:<20} {u.presence}{extra}")
        return 0

    return _run(_session(config, args.user, body))


def cmd_token(args: argparse.Namespace, config: Config) -> int:
    """``zchat token create|list|revoke`` (docs/cli.md). ``create`` logs in with the
    password even when $ZCHAT_TOKEN is set (the broker refuses token sessions that mint
    tokens) and prints the token alone on stdout: it is never shown again."""
    action = args.token_command

    async def body(client: Client) -> int:
        if action == "create":
            created = await client.create_token(_utf8(args.label, "LABEL"))
            print(created.token, flush=True)
            print(f"zchat: token {created.id} created for {client.name}; it is shown only "
                  "this once", file=sys.stderr)
        elif action == "list":
            tokens = (await client.list_tokens()).tokens
            if not tokens:
                _nothing(f"{client.name} has no tokens", args.json)
            for t in tokens:
                if args.json:
                    print(json.dumps({"id": t.id, "label": t.label, "created": timefmt.iso_utc(t.created),
                                      "created_ms": t.created}, ensure_ascii=False))
                else:
                    print(f"{t.id:>5}  {timefmt.local_text(t.created)}  {t.label}")
        else:
            await client.revoke_token(args.id)
            print(f"revoked token {args.id}")
        return 0

    return _run(_session(config, args.user, body, password_only=action == "create"))


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    import secrets

    from zchat import replay

    try:
        speed = replay.parse_speed(args.speed)
    except ValueError:
        raise CliError(f"--speed must be a number >= 0 or 'max', not {args.speed!r}") from None
    try:
        with open(args.file, encoding="utf-8") as f:
            events = replay.parse_log(f, source=str(args.file))
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{args.file} is not valid UTF-8: {exc.reason}") from None
    password = env(PASSWORD_ENV) or secrets.token_urlsafe(18)
    try:  # a bad --room is one line, before anything runs
        normalize_name(args.room, "room name")
    except ProtocolError as exc:
        raise CliError(exc.reason) from None

    async def run() -> int:
        # one updating line on stderr when it is a terminal (zchat.progress)
        with Progress("replay", sum(isinstance(e, replay.Said) for e in events),
                      "messages", "msg") as progress:
            report = await replay.replay(
                events, server=config.client.server, room=args.room, password=password,
                speed=speed, verify=args.verify, observer=args.observer,
                timeout_s=config.client.timeout_s,
                transport={"encryption": config.client.encryption,
                           "server_key": config.client.server_key,
                           "key_server": config.client.key_server},
                progress=progress.update)
        print(f"replayed {args.file} into #{args.room}")
        for line in report.summary_lines():
            print(line)
        if report.check is not None and not report.check.ok:
            return 1
        return 1 if report.messages and not report.sent else 0  # nothing got through

    return _run(run())


def cmd_admin(args: argparse.Namespace, config: Config) -> int:
    """``zchat admin ACTION`` (docs/admin.md): over the wire with ``--as``, else on the
    database file; the logic is zchat.admin's."""
    from zchat import admin

    if args.user is None:
        return admin.run_direct(args, config)

    async def body(client: Client) -> int:
        return await admin.run_wire(args, client)

    return _run(_session(config, args.user, body))


def cmd_passwd(args: argparse.Namespace, config: Config) -> int:
    """``zchat passwd --as NAME``: log in with the current password, SET_PASSWORD
    (docs/PROTOCOL.md §6.46), log out."""
    from zchat import admin

    old = env(PASSWORD_ENV)
    if not old:
        if not _has_terminal():
            raise CliError(f"no current password: set {PASSWORD_ENV} or run in a terminal")
        try:
            old = getpass.getpass("Current password: ")
        except EOFError:
            raise CliError("cancelled; nothing changed") from None
        except UnicodeDecodeError:
            raise CliError("the password typed is not valid UTF-8") from None
    new, _generated = admin.new_password(args)

    async def body(client: Client) -> int:
        # the broker's rule, checked before logging in, in its words (422)
        admin.check_new_password(new, admin.broker_min_password_chars(client))
        await client.login(args.user, old, presence=False)
        try:
            await client.set_password(old, new)
        finally:
            with contextlib.suppress(ZchatError, TimeoutError):
                await asyncio.wait_for(client.logout(), LOGOUT_WAIT_S)
        print(f"password of {args.user} changed; your other sessions "
              "were ended", file=sys.stderr)
        return 0

    return _run(_session(config, None, body))


def _log_to_file() -> None:
    """Send the console's log records to $XDG_STATE_HOME/zchat/console.log (default
    ~/.local/state/zchat/console.log), or nowhere if that cannot be written: never to the
    terminal, where they would be drawn over the screen."""
    state = os.environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if state.startswith("/") else Path.home() / ".local" / "state"
    handler: logging.Handler
    try:
        # 0700 and 0600 whatever the umask: the log names rooms, people and servers
        log_file = private_file(private_dir(base / "zchat") / "console.log")
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s"))
    except OSError:
        handler = logging.NullHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def cmd_join(args: argparse.Namespace, config: Config) -> int:
    from prompt_toolkit import PromptSession

    from zchat.console.app import ChatConsole, login_flow

    # prompt_toolkit would warn "Input is not a terminal (fd=0)" and draw anyway
    for stream, what in ((sys.stdin, "input"), (sys.stdout, "output")):
        if not stream.isatty():
            raise CliError(f"zchat join needs a terminal, and its standard {what} is not "
                           "one; scripts use zchat say, dm, tail or history")
    _log_to_file()  # a full-screen app must never get log lines printed over it

    async def run() -> int:
        client = _client(config, reconnect=True)
        try:
            await client.connect()
            session: PromptSession[str] = PromptSession()

            async def ask(prompt: str, secret: bool) -> str:
                try:
                    return await session.prompt_async(prompt, is_password=secret)
                except EOFError:
                    raise CliError("cancelled") from None

            logged_in = (await _login(client, args.name) if env(TOKEN_ENV)
                         else await login_flow(client, args.name, ask,
                                               env(PASSWORD_ENV) or None, print))
            console = ChatConsole(client, logged_in, mouse=not args.no_mouse,
                                  paste_confirm_lines=config.client.paste_confirm_lines)
            await console.run()  # SIGTERM/SIGHUP cancel it: it logs out as /quit does
            return 0
        finally:
            await client.close()

    # Ctrl-C is a key of the console; SIGTERM and SIGHUP end it (exit 143 and 129).
    return _run(run(), signals=(signal.SIGTERM, signal.SIGHUP))


def cmd_irc(args: argparse.Namespace, config: Config) -> int:
    """``zchat irc``: the IRC gateway until SIGTERM or SIGINT (docs/irc.md); then every
    IRC client gets ERROR, every session logs out, and it exits within 2 s."""
    from zchat.irc.server import run_gateway

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_gateway(config)


def cmd_bot(args: argparse.Namespace, config: Config) -> int:
    from zchat.bot import load_bot

    bot = load_bot(args.file)  # BotLoadError: one line, exit 1
    if args.user:
        bot.name = args.user
    if args.server or not bot.server_given:
        bot.server = config.client.server  # --server, else [client] server
    if env(TOKEN_ENV):
        bot.token, bot.password = env(TOKEN_ENV), None
    elif env(PASSWORD_ENV):
        bot.token, bot.password = None, env(PASSWORD_ENV)
    elif not (bot.token or bot.password):
        bot.password = _password()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def body() -> int:
        await bot.run()  # logs out when cancelled by SIGTERM or Ctrl-C (see _run)
        return 0

    return _run(body())


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    """``zchat config --defaults``: the installed sample settings file
    (zchat/data/zchat.toml); ``--path``: the file zchat reads (it need not exist)."""
    if args.defaults:
        sys.stdout.write(sample_config_text())
    else:
        print(args.config if args.config is not None else default_config_path())
    return 0


def cmd_completion(args: argparse.Namespace, config: Config) -> int:
    """``zchat completion bash|zsh``: the completion script (zchat.completion)."""
    from zchat.completion import script

    sys.stdout.write(script(args.shell, build_parser()))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "join": cmd_join, "broker": cmd_broker, "register": cmd_register, "say": cmd_say, "dm": cmd_dm,
    "tail": cmd_tail, "history": cmd_history, "unread": cmd_unread, "who": cmd_who,
    "slow": cmd_slow,
    "topic": cmd_topic, "part": cmd_part, "mod": cmd_mod,
    "token": cmd_token, "replay": cmd_replay,
    "bot": cmd_bot,
    "admin": cmd_admin, "passwd": cmd_passwd, "irc": cmd_irc,
    "config": cmd_config, "completion": cmd_completion,
}
#: Commands that read no settings file: they print what zchat ships (a broken
#: ~/.config/zchat/zchat.toml must not stop `zchat config --defaults`, its cure).
_NO_SETTINGS = frozenset({"config", "completion"})


#: Options whose value is a CurveZMQ key in Z85 (40 characters): its alphabet has "-", so
#: a key may start with one, which argparse takes for an option ("expected one argument").
_KEY_OPTIONS = ("--server-key",)


def _key_values_joined(argv: list[str]) -> list[str]:
    """``argv`` with ``--server-key KEY`` written ``--server-key=KEY`` where KEY starts
    with "-" and is 40 characters long (a Z85 key), so that such a key is taken as the
    value it is (the broker prints keys without quoting them)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _KEY_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and len(argv[i + 1]) == 40:
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        if arg == "--":
            out += argv[i:]
            break
        out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one command (docs/cli.md); returns its exit code. Every error is one line on
    stderr, ``zchat: error: REASON``: zchat's own (with the broker's status, ``(404)``),
    an argument that is not valid UTF-8, output that cannot be written; usage errors too,
    from argparse (exit code 2, ``_Parser``)."""
    parser = build_parser()
    args = parser.parse_args(_key_values_joined(sys.argv[1:] if argv is None else argv))
    if args.command == "unread":
        if args.limit is not None and not args.messages:  # it would be ignored
            parser.exit(2, "zchat: error: argument --limit: only with --messages; see "
                           "'zchat unread --help'\n")
        args.limit = args.limit or UNREAD_MESSAGES_LIMIT
    # A name no account can have is refused before any password is asked for it
    # (join asked three times, then the broker said 422).
    name = args.name if args.command == "join" else getattr(args, "user", None)
    # (bytes that are not UTF-8, escaped as U+DC80-U+DCFF, are reported further on)
    if isinstance(name, str) and not any("\udc80" <= c <= "\udcff" for c in name):
        try:
            normalize_name(name)
        except ProtocolError as exc:
            print(f"zchat: error: {_without_passwords(f'{name!r}: {exc.reason}', args)}",
                  file=sys.stderr)
            return 1
    stdout = sys.stdout
    if args.command != "join":  # the console draws on the terminal itself
        sys.stdout = _Output(stdout)
    try:
        _check_utf8(parser, args)
        config = Config() if args.command in _NO_SETTINGS else _config(args)
        code = COMMANDS[args.command](args, config)
        sys.stdout.flush()  # here, where a failure is reported, not at exit
        return code
    except _OutputFailed as exc:  # ``> /dev/full``: said once, and nothing more at exit
        _discard_output(stdout)
        print(f"zchat: error: done, but the output could not be written: {exc}",
              file=sys.stderr)
        return 1
    except ProtocolError as exc:  # a rule checked on this side: worded as the broker's
        print(f"zchat: error: {_without_passwords(exc.reason, args)} ({int(exc.status)})",
              file=sys.stderr)
        return 1
    except ZchatError as exc:
        print(f"zchat: error: {_without_passwords(str(exc), args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (``zchat tail | head``): not an error of ours.
        sys.stderr.close()
        return 0
    except OSError as exc:
        print(f"zchat: error: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1
    finally:
        sys.stdout = stdout


def _without_passwords(text: str, args: argparse.Namespace) -> str:
    """``text`` with every password hidden (:func:`_hide_passwords`), those of the
    database URLs given (``--store``, ``--db``, ``--to``) included: the store and admin
    code hide them already; this is the last line before the terminal."""
    return _hide_passwords(text, [getattr(args, "store", None), getattr(args, "db", None),
                                  getattr(args, "to", None)])


def _hide_passwords(text: str, words: list[Any]) -> str:
    """``text`` with every password hidden (zchat.config.redact_text): those of each of
    ``words`` and of the command line's words that holds a URL or a conninfo password,
    wherever ``text`` quotes them (one typed where a name goes was echoed by the name
    check: a seventh tester's `zchat join URL`), and any ``password=`` or
    ``USER:PASSWORD@``."""
    for word in [*words, *sys.argv[1:]]:
        if isinstance(word, str) and ("://" in word or "password" in word.lower()):
            text = redact_text(text, word)
    return redact_text(text)


class _OutputFailed(Exception):
    """Standard output could not be written (``> /dev/full``, an I/O error); the
    command's work was done. Not a BrokenPipeError: a reader that went away (``| head``)
    is no error."""


class _Output:
    """``sys.stdout`` for a command: writes through, and a failed write or flush raises
    _OutputFailed, so that main can tell a failure of the output from any other OSError
    and say what it means."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _OutputFailed(exc.strerror or str(exc)) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _OutputFailed(exc.strerror or str(exc)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _discard_output(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so that what it still buffers
    fails no more at exit (Python would print "Exception ignored" then)."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


#: String arguments that are file names, which need not be UTF-8 (a Linux path is bytes).
_PATH_DESTS = frozenset({"data_dir", "db"})


def _check_utf8(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise CliError ``--as is not valid UTF-8`` (naming the option, or the positional's
    metavar) for the first string argument that is not: Python decodes argv with
    surrogateescape, and such a string would otherwise fail later in the codec with a
    message naming a request instead of the argument."""
    labels: dict[str, str] = {}
    chain: list[argparse.ArgumentParser] = [parser]
    while True:  # the parser and the sub-parsers this command line went through
        sub = next((a for a in chain[-1]._actions
                    if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or chosen is None:
            break
        chain.append(sub.choices[chosen])
    for p_ in chain:
        for action in p_._actions:
            label = max(action.option_strings, key=len) if action.option_strings \
                else str(action.metavar or action.dest.upper())
            labels.setdefault(action.dest, label)
    for dest, value in vars(args).items():
        if isinstance(value, str) and dest not in _PATH_DESTS:
            _utf8(value, labels.get(dest, dest))
