"""One IRC connection of the gateway as a pure state machine (docs/irc.md).

``IrcConnection`` takes what the IRC client sent (``receive``), what the zchat client
heard (``event``) and the answers to its own requests (``result``, ``failure``), and
returns actions: IRC messages to send, zchat calls to make, the connection to close
(zchat/irc/calls.py). It never touches a socket or a clock: server-time comes from the
broker's own times on events and replies (h11's shape, docs/STYLE §1).

Commands are a table (``COMMANDS``: handler, usable before registration, least
parameters), checked once in ``receive`` (Ergo's irc/commands.go, STYLE §8).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from zchat import wire as p
from zchat.client.events import (
    ConnectionLost,
    ConnectionRestored,
    JoinedElsewhere,
    LeftElsewhere,
    Reconnecting,
    SessionEnded,
)
from zchat.errors import ProtocolError
from zchat.irc import calls as c
from zchat.irc.codec import MAX_LINE_BYTES, Message, split_text
from zchat.irc.history import MAX_LIMIT, cmd_chathistory
from zchat.names import MAX_NAME_CHARS, name_key, normalize_name

#: Capabilities offered (CAP LS), with their 302 values.
CAPS: dict[str, str] = {
    "account-tag": "",
    "away-notify": "",
    "batch": "",
    "cap-notify": "",
    "draft/chathistory": "",
    "echo-message": "",
    "extended-join": "",
    "labeled-response": "",
    "message-tags": "",
    "multi-prefix": "",
    "sasl": "PLAIN",
    "server-time": "",
    "userhost-in-names": "",
}
#: The channel prefix and the one rule of channel names: ``#`` then a zchat room name.
CHANTYPES = "#"
#: IRC formatting codes (bold, colour, italics, underline, reverse, reset, monospace,
#: strike-through): zchat texts refuse control characters, so they are taken out.
_FORMATTING = re.compile("\x03(?:\\d{1,2}(?:,\\d{1,2})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_CTCP_ACTION = re.compile("^\x01ACTION(?: (.*?))?\x01?$", re.DOTALL)


@dataclass(frozen=True)
class Settings:
    """What a connection needs to know of its gateway (``[irc]``, zchat/config.py)."""

    server_name: str = "irc.zchat"
    network: str = "zchat"
    guests: bool = False
    autojoin: bool = True
    motd: tuple[str, ...] = ()
    max_text_bytes: int = 4000
    version: str = "zchat-irc"


@dataclass
class Peer:
    """What an IRC connection of this gateway told of its user (USER's username and
    realname), for the other connections' WHO, WHOIS and extended-join; ``guest`` for a
    guest account (``[irc] guests``), shown as not logged in."""

    user: str
    realname: str
    guest: bool = False
    owner: int = 0


@dataclass
class Member:
    nick: str
    presence: str = "online"
    away_text: str = ""
    op: bool = False


@dataclass
class Channel:
    name: str          # as the room's name, with '#'
    room: str
    topic: str = ""
    topic_by: str = ""
    topic_time_s: int = 0
    members: dict[str, Member] = field(default_factory=dict)  # name_key -> Member
    private: bool = False
    locked: bool = False


Handler = Callable[["IrcConnection", Message], None]


@dataclass(frozen=True)
class Command:
    handler: Handler
    pre_registration: bool = False
    min_params: int = 0


def _time_tag(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC) \
        .strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def room_of(channel: str) -> str | None:
    """The zchat room of an IRC channel name (``#dev`` -> ``dev``), or None when it is
    not one (no ``#``, or the rest is no valid room name)."""
    if not channel.startswith(CHANTYPES) or len(channel) < 2:
        return None
    try:
        return normalize_name(channel[1:], "room")
    except ProtocolError:
        return None


def valid_nick(nick: str) -> bool:
    try:
        normalize_name(nick, "name")
    except ProtocolError:
        return False
    return not nick[0].isdigit()


class IrcConnection:
    """The state of one IRC client's connection: registration, capabilities, SASL, the
    channels it sees, and the bookkeeping that keeps each message shown once."""

    def __init__(self, settings: Settings | None = None,
                 peers: dict[str, Peer] | None = None) -> None:
        self.settings = settings or Settings()
        #: Shared by the gateway's connections (one event loop): name_key -> Peer.
        self.peers: dict[str, Peer] = peers if peers is not None else {}
        #: Presence heard of every account (PRESENCE events, WHO, WHOIS): name_key ->
        #: (presence, away text).
        self.known: dict[str, tuple[str, str]] = {}
        self.guest = False
        self.out: list[c.Action] = []
        self.registered = False
        self.closed = False
        self.nick = "*"
        self.user = ""
        self.realname = ""
        self.password = ""
        self.account = ""            # once logged in
        self.logged_in = False
        self.caps: set[str] = set()
        self.cap_negotiating = False
        self.cap_version = 301
        self.sasl_mechanism = ""     # AUTHENTICATE in progress
        self.sasl_buffer = ""
        self.channels: dict[str, Channel] = {}   # room name_key -> channel
        self.away = ""
        self.rooms_at_login: tuple[str, ...] = ()
        self._ids = 0
        self._pending: dict[int, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        # Own room messages already shown (echo-message) or known as ours, by (room, seq):
        # each is shown once, whether the event or the SEND reply comes first.
        self._own_seen: set[tuple[str, int]] = set()
        self._own_sent: set[tuple[str, int]] = set()
        self._sends_in_flight = 0
        self._held_own: list[p.MessagePosted] = []
        self._own_topic: dict[str, str] = {}
        self._own_kicks: set[tuple[str, str]] = set()
        # labeled-response: the label of the command being answered, what it produced so
        # far, and the calls it is waiting for (answered in one go when they are done).
        self._label: str | None = None
        self._labeled: list[Message] = []
        self._command_calls: set[int] = set()
        self._in_event = False
        self._batches = 0

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, msg: Message) -> list[c.Action]:
        """One message from the IRC client."""
        if self.closed:
            return []
        label = msg.tags.get("label")
        if label is not None and "labeled-response" in self.caps and label \
                and self._label is None:
            self._label, self._labeled = label, []
        command = COMMANDS.get(msg.command)
        if command is None:
            if not self.registered:
                self.numeric("451", "You have not registered")
            else:
                self.numeric("421", msg.command, "Unknown command")
        elif not self.registered and not command.pre_registration:
            self.numeric("451", "You have not registered")
        elif len(msg.params) < command.min_params:
            self.numeric("461", msg.command, "Not enough parameters")
        else:
            command.handler(self, msg)
        self._maybe_answer_label()
        return self.take()

    def _maybe_answer_label(self) -> None:
        """The labeled command is done (no call of it pending): its answer, labeled
        (https://ircv3.net/specs/extensions/labeled-response): ACK for none, the one
        message tagged, or a labeled-response BATCH of them all."""
        if self._label is None or self._command_calls:
            return
        label, msgs = self._label, self._labeled
        self._label, self._labeled = None, []
        src = self.settings.server_name
        if not msgs:
            self.send(Message("ACK", (), source=src, tags={"label": label}))
        elif len(msgs) == 1:
            self.send(replace(msgs[0], tags={**msgs[0].tags, "label": label}))
        else:
            self._batches += 1
            ref = f"lr{self._batches}"
            self.send(Message("BATCH", ("+" + ref, "labeled-response"), source=src,
                              tags={"label": label}))
            for m in msgs:
                # (messages of a batch nested in it keep theirs)
                self.send(replace(m, tags={"batch": ref, **m.tags}))
            self.send(Message("BATCH", ("-" + ref,), source=src))

    def overlong(self) -> list[c.Action]:
        """The IRC client sent a line longer than the codec takes."""
        self.numeric("417", "Input line was too long")
        return self.take()

    def bad_line(self, why: str) -> list[c.Action]:
        """A line that is not UTF-8 or not a message (UTF8ONLY)."""
        if why == "utf8":
            self.fail("*", "INVALID_UTF8", "Message rejected: not UTF-8 (UTF8ONLY)")
        return self.take()

    def result(self, call_id: int, reply: Any) -> list[c.Action]:
        handler, args = self._pending.pop(call_id)
        self._command_calls.discard(call_id)
        handler(*args, reply)
        self._maybe_answer_label()
        return self.take()

    def failure(self, call_id: int, status: int, reason: str) -> list[c.Action]:
        handler, args = self._pending.pop(call_id)
        self._command_calls.discard(call_id)
        handler(*args, _Failed(status, reason))
        self._maybe_answer_label()
        return self.take()

    def event(self, ev: Any) -> list[c.Action]:
        """One event of the zchat client (``Client.events()``)."""
        if self.closed or not self.logged_in:
            return []
        handler = EVENTS.get(type(ev))
        if handler is not None:
            self._in_event = True
            try:
                handler(self, ev)
            finally:
                self._in_event = False
        return self.take()

    def shutdown(self, text: str) -> list[c.Action]:
        """The gateway stops: ERROR to the client, then close."""
        if not self.closed:
            self.send(Message("ERROR", (f"Closing link: {text}",)))
            self._close(text)
        return self.take()

    # -- outputs ---------------------------------------------------------------------------

    def take(self) -> list[c.Action]:
        out, self.out = self.out, []
        return out

    def send(self, msg: Message) -> None:
        if self._label is not None and not self._in_event:
            self._labeled.append(msg)
        else:
            self.out.append(c.Send(msg))

    def numeric(self, code: str, *params: str) -> None:
        self.send(Message(code, (self.nick, *params), source=self.settings.server_name))

    def fail(self, command: str, code: str, *context_and_text: str) -> None:
        self.send(Message("FAIL", (command, code, *context_and_text),
                          source=self.settings.server_name))

    def call(self, request: c.Request, then: Callable[..., None], *args: Any) -> None:
        self._ids += 1
        if getattr(then, "__self__", None) is not self:  # a module-level handler
            args = (self, *args)
        self._pending[self._ids] = (then, args)
        if self._label is not None and not self._in_event:
            self._command_calls.add(self._ids)
        self.out.append(c.Call(self._ids, request))

    def _close(self, reason: str) -> None:
        self._command_calls.clear()  # what the command said so far goes out before closing
        self._maybe_answer_label()
        self.closed = True
        self.out.append(c.Close(reason))

    def mask(self, nick: str) -> str:
        return f"{nick}!{self.ident(nick)}@zchat"

    def ident(self, nick: str) -> str:
        peer = self.peers.get(name_key(nick))
        return "~" + (peer.user if peer else "u")[:9]

    def real_name(self, nick: str) -> str:
        peer = self.peers.get(name_key(nick))
        return peer.realname if peer and peer.realname else nick

    def account_of(self, nick: str) -> str:
        """The account name shown for ``nick`` (extended-join, WHOIS): "*" for a guest."""
        peer = self.peers.get(name_key(nick))
        return "*" if peer is not None and peer.guest else nick

    def forget_peer(self) -> None:
        key = name_key(self.account) if self.account else ""
        peer = self.peers.get(key)
        if peer is not None and peer.owner == id(self):
            del self.peers[key]

    def from_user(self, nick: str, command: str, params: tuple[str, ...],
                  tags: dict[str, str] | None = None) -> Message:
        return Message(command, params, source=self.mask(nick), tags=tags or {})

    def tags_for(self, sender: str, time_ms: int | None, msgid: str = "") -> dict[str, str]:
        tags: dict[str, str] = {}
        if "server-time" in self.caps and time_ms is not None:
            tags["time"] = _time_tag(time_ms)
        if "message-tags" in self.caps and msgid:
            tags["msgid"] = msgid
        if "account-tag" in self.caps and sender:
            tags["account"] = sender
        return tags

    # -- registration ----------------------------------------------------------------------

    def maybe_register(self) -> None:
        """NICK and USER given and CAP negotiation over: log in with what was given."""
        if self.registered or self.nick == "*" or not self.user or self.cap_negotiating \
                or self.sasl_mechanism:
            return
        if self.logged_in:  # SASL did it
            self.welcome()
            return
        if self.password:
            name, sep, password = self.password.partition(":")
            if not sep:
                name, password = self.nick, self.password
            self.call(c.Login(name, password), self._logged_in)
        elif self.settings.guests:
            self.guest = True
            self.call(c.LoginGuest(self.nick), self._logged_in)
        else:
            self.send(Message("NOTICE", (self.nick, "This gateway needs your zchat account: "
                              "log in with SASL PLAIN, or PASS account:password (or PASS "
                              "password with NICK account)"),
                              source=self.settings.server_name))
            self.send(Message("ERROR", ("Closing link: no credentials (zchat account "
                                        "and password)",)))
            self._close("no credentials")

    def _logged_in(self, reply: Any) -> None:
        if isinstance(reply, _Failed):
            if reply.status == 409:
                self.numeric("433", self.nick, "Nickname is already in use (a zchat "
                             "account of that name exists: log in with its password)")
                self.nick_pending_retry = True
                return
            self.numeric("464", f"Password incorrect ({reply.reason})")
            self.send(Message("ERROR", ("Closing link: zchat login failed",)))
            self._close("login failed")
            return
        self._set_account(reply)
        self.welcome()

    def _set_account(self, reply: p.LoggedIn) -> None:
        self.logged_in = True
        self.account = reply.name
        self.rooms_at_login = tuple(r.room for r in reply.rooms)

    def welcome(self) -> None:
        s = self.settings
        old = self.nick
        self.nick = self.account
        self.registered = True
        self.peers[name_key(self.account)] = Peer(self.user, self.realname, self.guest,
                                                  id(self))
        if old not in ("*", self.nick) and name_key(old) != name_key(self.nick):
            self.send(Message("NICK", (self.nick,), source=f"{old}!~u@zchat"))
        self.numeric("001", f"Welcome to the {s.network} zchat gateway, {self.nick}")
        self.numeric("002", f"Your host is {s.server_name}, running {s.version}")
        self.numeric("003", "This server was created by zchat")
        self.numeric("004", s.server_name, s.version, "io", "imnotb", "bo")
        tokens = [
            "AWAYLEN=200", "CASEMAPPING=ascii", "CHANLIMIT=#:1000", "CHANMODES=b,,,imnt",
            f"CHANNELLEN={MAX_NAME_CHARS + 1}", f"CHANTYPES={CHANTYPES}", "ELIST=",
            f"KICKLEN={p.MAX_REASON_CHARS}", f"NETWORK={s.network}",
            f"NICKLEN={MAX_NAME_CHARS}", "PREFIX=(o)@", "STATUSMSG=",
            "TARGMAX=PRIVMSG:1,NOTICE:1,JOIN:,PART:,KICK:1,NAMES:1,WHOIS:1",
            f"TOPICLEN={p.MAX_TOPIC_CHARS}", "UTF8ONLY", f"CHATHISTORY={MAX_LIMIT}",
            "MSGREFTYPES=msgid,timestamp",
        ]
        self.numeric("005", *tokens, "are supported by this server")
        self.lusers()
        self.motd()
        if s.autojoin:
            for room in self.rooms_at_login:
                self.call(c.Join(room), self._joined, "#" + room)

    def lusers(self) -> None:
        self.numeric("251", "There are 1 users and 0 invisible on 1 servers")
        self.numeric("255", "I have 1 clients and 0 servers")

    def motd(self) -> None:
        lines = self.settings.motd
        if not lines:
            self.numeric("422", "MOTD File is missing")
            return
        self.numeric("375", f"- {self.settings.server_name} Message of the day - ")
        for line in lines:
            self.numeric("372", f"- {line}")
        self.numeric("376", "End of /MOTD command.")

    # -- helpers ---------------------------------------------------------------------------

    def channel(self, name: str) -> Channel | None:
        room = room_of(name)
        return self.channels.get(name_key(room)) if room else None

    def shares_channel(self, name: str) -> list[Channel]:
        key = name_key(name)
        return [ch for ch in self.channels.values() if key in ch.members]

    def names(self, ch: Channel) -> None:
        entries = []
        for key, m in sorted(ch.members.items()):
            if m.presence == "offline" and key != name_key(self.nick):
                continue
            prefix = "@" if m.op else ""
            who = self.mask(m.nick) if "userhost-in-names" in self.caps else m.nick
            entries.append(prefix + who)
        symbol = "@" if ch.private else "="
        line: list[str] = []
        budget = MAX_LINE_BYTES - 80 - len(ch.name.encode()) - len(self.nick.encode())
        for entry in entries:
            if line and len(" ".join([*line, entry]).encode()) > budget:
                self.numeric("353", symbol, ch.name, " ".join(line))
                line = []
            line.append(entry)
        if line:
            self.numeric("353", symbol, ch.name, " ".join(line))
        self.numeric("366", ch.name, "End of /NAMES list.")

    def deliver_text(self, source_nick: str, command: str, target: str, text: str,
                     kind: str, tags: dict[str, str]) -> None:
        """``text`` to the client as one ``command`` per IRC line it takes."""
        head = len(f":{self.mask(source_nick)} {command} {target} :".encode())
        extra = len("\x01ACTION \x01") if kind == "action" else 0
        budget = max(MAX_LINE_BYTES - 2 - head - extra, 16)
        for piece in split_text(text, budget) or ([""] if kind == "action" else []):
            body = f"\x01ACTION {piece}\x01" if kind == "action" else piece
            self.send(self.from_user(source_nick, command, (target, body), dict(tags)))

    def deliver_posted(self, msg: p.MessagePosted, ch: Channel) -> None:
        if msg.deleted_by:
            return
        tags = self.tags_for(msg.sender, msg.time, f"{name_key(msg.room)}/{msg.seq}")
        self.deliver_text(msg.sender, "PRIVMSG", ch.name, msg.text, msg.kind, tags)

    # -- the handlers of each call's answer --------------------------------------------------

    def _joined(self, channel: str, reply: Any) -> None:
        if isinstance(reply, _Failed):
            self._join_failed(channel, reply)
            return
        room = reply.room
        key = name_key(room)
        name = "#" + room
        ch = self.channels.get(key)
        if ch is not None:  # joined already (twice in one JOIN, autojoin): nothing new
            return
        ch = Channel(name=name, room=room, topic=reply.topic, private=reply.private,
                     locked=reply.locked)
        self.channels[key] = ch
        ch.members[name_key(self.nick)] = Member(self.nick, op=reply.created)
        if "extended-join" in self.caps:
            self.send(self.from_user(self.nick, "JOIN", (name, self.account_of(self.nick),
                                                         self.real_name(self.nick))))
        else:
            self.send(self.from_user(self.nick, "JOIN", (name,)))
        if reply.topic:
            self.numeric("332", name, reply.topic)
        self.call(c.Who(room), self._names_after_join, key)

    def _names_after_join(self, key: str, reply: Any) -> None:
        ch = self.channels.get(key)
        if ch is None:
            return
        if not isinstance(reply, _Failed):
            for u in reply.users:
                k = name_key(u.name)
                m = ch.members.get(k)
                if m is None:
                    ch.members[k] = Member(u.name, u.presence, u.text)
                else:
                    m.presence, m.away_text = u.presence, u.text
        ch.members[name_key(self.nick)].presence = "away" if self.away else "online"
        self.names(ch)

    def _join_failed(self, channel: str, f: _Failed) -> None:
        if f.status == 403:
            if "invit" in f.reason or "private" in f.reason:
                self.numeric("473", channel, f"Cannot join channel (+i): {f.reason}")
            else:
                self.numeric("474", channel, f"Cannot join channel (+b): {f.reason}")
        elif f.status == 409:  # a private room hidden from us, or a look-alike name
            self.numeric("473", channel, f"Cannot join channel (+i): {f.reason}")
        elif f.status == 422:
            self.numeric("479", channel, f"Illegal channel name: {f.reason}")
        elif f.status == 429:
            self.fail("JOIN", "RATE_LIMITED", channel, f.reason)
        else:
            self.numeric("403", channel, f.reason)


@dataclass(frozen=True)
class _Failed:
    status: int
    reason: str


# -- commands ----------------------------------------------------------------------------------


def cmd_cap(conn: IrcConnection, msg: Message) -> None:
    # CAP LS [version] / LIST / REQ :caps / END  (https://ircv3.net/specs/extensions/capability-negotiation)
    sub = msg.params[0].upper()
    srv = conn.settings.server_name
    if sub == "LS":
        if not conn.registered:
            conn.cap_negotiating = True
        if len(msg.params) > 1 and msg.params[1].isdigit():
            conn.cap_version = max(conn.cap_version, int(msg.params[1]))
        offered = " ".join(k + ("=" + v if v and conn.cap_version >= 302 else "")
                           for k, v in CAPS.items())
        conn.send(Message("CAP", (conn.nick, "LS", offered), source=srv))
    elif sub == "LIST":
        conn.send(Message("CAP", (conn.nick, "LIST", " ".join(sorted(conn.caps))), source=srv))
    elif sub == "REQ":
        if not conn.registered:
            conn.cap_negotiating = True
        wanted = msg.params[1].split() if len(msg.params) > 1 else []
        ok = all(w.lstrip("-") in CAPS for w in wanted) and bool(wanted)
        if ok:
            for w in wanted:
                if w.startswith("-"):
                    conn.caps.discard(w[1:])
                else:
                    conn.caps.add(w)
        conn.send(Message("CAP", (conn.nick, "ACK" if ok else "NAK",
                                  msg.params[1] if len(msg.params) > 1 else ""), source=srv))
    elif sub == "END":
        if not conn.registered:
            conn.cap_negotiating = False
            if conn.sasl_mechanism == "PLAIN":  # SASL left unfinished: aborted
                conn.sasl_mechanism, conn.sasl_buffer = "", ""
                conn.numeric("906", "SASL authentication aborted")
            conn.maybe_register()
    else:
        conn.numeric("410", sub, "Invalid CAP command")


def cmd_authenticate(conn: IrcConnection, msg: Message) -> None:
    # AUTHENTICATE <mechanism> / <base64 chunk> / * / +   (IRCv3 sasl-3.1, PLAIN only)
    arg = msg.params[0]
    if "sasl" not in conn.caps:
        conn.numeric("904", "SASL authentication failed: the sasl capability is not enabled")
        return
    if conn.registered:
        conn.numeric("462", "You may not reregister (one zchat session per connection)")
        return
    if conn.logged_in:
        conn.numeric("907", "You have already authenticated using SASL")
        return
    if conn.sasl_mechanism == "PLAIN-WAIT":
        return
    if arg == "*":
        conn.sasl_mechanism, conn.sasl_buffer = "", ""
        conn.numeric("906", "SASL authentication aborted")
        return
    if not conn.sasl_mechanism:
        if arg.upper() != "PLAIN":
            conn.numeric("908", "PLAIN", "are available SASL mechanisms")
            conn.numeric("904", "SASL authentication failed")
            return
        conn.sasl_mechanism = "PLAIN"
        conn.send(Message("AUTHENTICATE", ("+",)))
        return
    if len(arg) > 400:
        conn.sasl_mechanism, conn.sasl_buffer = "", ""
        conn.numeric("905", "SASL message too long")
        return
    if arg != "+":
        conn.sasl_buffer += arg
        if len(conn.sasl_buffer) > 4096:
            conn.sasl_mechanism, conn.sasl_buffer = "", ""
            conn.numeric("904", "SASL authentication failed: message too long")
            return
        if len(arg) == 400:
            return  # more chunks follow
    blob, conn.sasl_buffer = conn.sasl_buffer, ""
    conn.sasl_mechanism = ""
    try:
        authzid, authcid, password = base64.b64decode(blob, validate=True) \
            .decode("utf-8").split("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        conn.numeric("904", "SASL authentication failed: not a PLAIN message")
        return
    account = authcid or authzid
    if authzid and authcid and name_key(authzid) != name_key(authcid):
        conn.numeric("904", "SASL authentication failed: authzid must match authcid")
        return
    conn.sasl_mechanism = "PLAIN-WAIT"
    conn.call(c.Login(account, password), _sasl_done)


def _sasl_done(conn: IrcConnection, reply: Any) -> None:
    conn.sasl_mechanism = ""
    if isinstance(reply, _Failed):
        conn.numeric("904", f"SASL authentication failed: {reply.reason}")
        return
    conn._set_account(reply)
    nick = conn.nick if conn.nick != "*" else reply.name
    conn.send(Message("900", (nick, f"{reply.name}!~u@zchat", reply.name,
                              f"You are now logged in as {reply.name}"),
                      source=conn.settings.server_name))
    conn.send(Message("903", (nick, "SASL authentication successful"),
                      source=conn.settings.server_name))
    conn.maybe_register()


def cmd_pass(conn: IrcConnection, msg: Message) -> None:
    # PASS <password>   (here: account:password, or a password for the NICK's account)
    if conn.registered:
        conn.numeric("462", "You may not reregister")
        return
    conn.password = msg.params[0]


def cmd_nick(conn: IrcConnection, msg: Message) -> None:
    # NICK <nickname>
    nick = msg.params[0]
    if not nick:
        conn.numeric("431", "No nickname given")
        return
    if not valid_nick(nick):
        conn.numeric("432", nick, "Erroneous nickname (zchat names: letters, digits, "
                     "'_', '-', '.', at most 32)")
        return
    if conn.registered:
        if name_key(nick) != name_key(conn.nick):
            conn.fail("NICK", "CANNOT_CHANGE_NICK", nick, "Your nick is your zchat account "
                      "name; it cannot change")
            conn.numeric("432", nick, "Your nick is your zchat account name")
        return
    conn.nick = nick
    if getattr(conn, "nick_pending_retry", False):
        conn.nick_pending_retry = False
    conn.maybe_register()


def cmd_user(conn: IrcConnection, msg: Message) -> None:
    # USER <username> 0 * <realname>
    if conn.registered:
        conn.numeric("462", "You may not reregister")
        return
    if len(msg.params) < 4 or not msg.params[0] or not msg.params[3]:
        conn.numeric("461", "USER", "Not enough parameters")
        return
    conn.user, conn.realname = msg.params[0], msg.params[3]
    conn.maybe_register()


def cmd_ping(conn: IrcConnection, msg: Message) -> None:
    # PING <token>   (once logged in, answered after a broker round trip: what was heard
    # before it is passed on first, so PING orders the client's view as it expects)
    if conn.logged_in:
        conn.call(c.Ping(), _pong, msg.params[0])
    else:
        _pong(conn, msg.params[0], None)


def _pong(conn: IrcConnection, token: str, reply: Any) -> None:
    conn.send(Message("PONG", (conn.settings.server_name, token),
                      source=conn.settings.server_name))


def cmd_oper(conn: IrcConnection, msg: Message) -> None:
    # OPER <name> <password>: zchat's admins are the broker's [broker] admins
    conn.numeric("491", "No O-lines for your host (zchat admins are set on the broker)")


def cmd_time(conn: IrcConnection, msg: Message) -> None:
    # TIME [<server>]  (the broker's clock is not asked: the gateway's is the same here)
    conn.call(c.Ping(), _time_reply)


def _time_reply(conn: IrcConnection, reply: Any) -> None:
    conn.numeric("391", conn.settings.server_name, "the broker's time is on every message "
                 "(server-time)")


def cmd_pong(conn: IrcConnection, msg: Message) -> None:
    pass


def cmd_quit(conn: IrcConnection, msg: Message) -> None:
    # QUIT [<reason>]
    text = msg.params[0] if msg.params else ""
    conn.send(Message("ERROR", (f"Closing link: (Quit: {text})" if text
                                else "Closing link: (Quit)",)))
    if conn.logged_in:
        conn.call(c.Logout(text[:p.MAX_AWAY_TEXT_CHARS]), _ignore)
    conn._close("quit")


def _ignore(conn: IrcConnection, reply: Any) -> None:
    pass


def _privmsg(conn: IrcConnection, msg: Message, notice: bool) -> None:
    # PRIVMSG <target> <text>  /  NOTICE <target> <text>
    if len(msg.params) < 2 or not msg.params[1]:
        if not notice:
            conn.numeric("412" if len(msg.params) >= 1 else "411",
                         "No text to send" if msg.params else "No recipient given (PRIVMSG)")
        return
    target, text = msg.params[0], msg.params[1]
    kind = "text"
    m = _CTCP_ACTION.match(text)
    if m:
        kind, text = "action", m.group(1) or ""
    elif text.startswith("\x01"):
        if not notice:
            conn.send(Message("NOTICE", (conn.nick, "zchat carries no CTCP but ACTION"),
                              source=conn.settings.server_name))
        return
    text = _FORMATTING.sub("", text)
    if not text.strip():
        return
    command = "NOTICE" if notice else "PRIVMSG"
    for one in target.split(",")[:1]:
        if one.startswith(CHANTYPES):
            room = room_of(one)
            if room is None:
                if not notice:
                    conn.numeric("403", one, "No such channel")
                continue
            conn._sends_in_flight += 1
            conn.call(c.Post(room, text, kind), _posted, one, text, kind, command, notice)
        else:
            if not valid_nick(one):
                if not notice:
                    conn.numeric("401", one, "No such nick/channel")
                continue
            body = text if kind == "text" else f"* {conn.nick} {text}"
            conn.call(c.DirectMessage(one, body), _dm_sent, one, text, kind, command, notice)


def cmd_privmsg(conn: IrcConnection, msg: Message) -> None:
    _privmsg(conn, msg, notice=False)


def cmd_notice(conn: IrcConnection, msg: Message) -> None:
    _privmsg(conn, msg, notice=True)


def _refused(conn: IrcConnection, command: str, target: str, f: _Failed,
             channel: bool) -> None:
    """A message the broker refused, told as IRC says it (never silence; but a NOTICE to
    no one gets no automatic reply, as RFC 2812 §3.3.2 wants)."""
    if command == "NOTICE" and f.status == 404:
        return
    if f.status == 404:
        conn.numeric("403" if channel else "401", target,
                     "No such channel" if channel else "No such nick/channel")
    elif f.status == 403:
        conn.numeric("404", target, f"Cannot send to channel: {f.reason}")
    elif f.status == 413:
        conn.fail(command, "MESSAGE_TOO_LONG", target, f.reason)
        conn.numeric("404" if channel else "401", target, f"Message refused: {f.reason}")
    elif f.status == 429:
        conn.fail(command, "RATE_LIMITED", target, f.reason)
    else:
        conn.fail(command, "MESSAGE_REFUSED", target, f"{f.reason} ({f.status})")


def _posted(conn: IrcConnection, channel: str, text: str, kind: str, command: str,
            notice: bool, reply: Any) -> None:
    conn._sends_in_flight -= 1
    if isinstance(reply, _Failed):
        _refused(conn, command, channel, reply, channel=True)
    else:
        key = (name_key(reply.room), reply.seq)
        conn._own_sent.add(key)
        if "echo-message" in conn.caps and key not in conn._own_seen:
            conn._own_seen.add(key)
            tags = conn.tags_for(conn.account, reply.time, f"{key[0]}/{key[1]}")
            conn.deliver_text(conn.nick, command, channel, text, kind, tags)
    if conn._sends_in_flight == 0 and conn._held_own:
        held, conn._held_own = conn._held_own, []
        for ev in held:
            _on_posted(conn, ev)


def _dm_sent(conn: IrcConnection, target: str, text: str, kind: str, command: str,
             notice: bool, reply: Any) -> None:
    if isinstance(reply, _Failed):
        _refused(conn, command, target, reply, channel=False)
        return
    tags = conn.tags_for(conn.account, reply.time, f"dm/{reply.id}")
    if "echo-message" in conn.caps:
        conn.deliver_text(conn.nick, command, reply.to or target, text, kind, tags)
    if name_key(target) == name_key(conn.account):
        # to oneself: the broker stores it for the account's other sessions only; an
        # IRC client expects to receive it too, as a message of its own (not labeled)
        conn._in_event = True
        try:
            conn.deliver_text(conn.nick, command, conn.nick, text, kind, tags)
        finally:
            conn._in_event = False
        return
    if not notice:
        conn.call(c.Whois(reply.to or target), _away_reply)


def _away_reply(conn: IrcConnection, reply: Any) -> None:
    if not isinstance(reply, _Failed):
        conn.known[name_key(reply.name)] = (reply.presence, reply.text)
        if reply.presence == "away":
            conn.numeric("301", reply.name, reply.text or "away")


def cmd_join(conn: IrcConnection, msg: Message) -> None:
    # JOIN <channel>{,<channel>} [<key>{,<key>}]  /  JOIN 0
    if msg.params[0] == "0":
        for ch in list(conn.channels.values()):
            conn.call(c.Part(ch.room), _parted, ch.name, "")
        return
    for name in msg.params[0].split(","):
        if not name:
            continue
        room = room_of(name)
        if room is None:
            conn.numeric("403" if not name.startswith(CHANTYPES) else "479", name,
                         "No such channel" if not name.startswith(CHANTYPES)
                         else "Illegal channel name")
            continue
        if name_key(room) in conn.channels:
            continue
        conn.call(c.Join(room), conn._joined, name)


def cmd_part(conn: IrcConnection, msg: Message) -> None:
    # PART <channel>{,<channel>} [<reason>]
    reason = msg.params[1] if len(msg.params) > 1 else ""
    for name in msg.params[0].split(","):
        ch = conn.channel(name)
        if ch is None:
            room = room_of(name)
            if room is None:
                conn.numeric("403", name, "No such channel")
            else:
                conn.call(c.RoomInfo(room), _part_not_on, name)
            continue
        conn.call(c.Part(ch.room), _parted, ch.name, reason)


def _part_not_on(conn: IrcConnection, name: str, reply: Any) -> None:
    if isinstance(reply, _Failed) and reply.status == 404:
        conn.numeric("403", name, "No such channel")
    else:
        conn.numeric("442", name, "You're not on that channel")


def _parted(conn: IrcConnection, name: str, reason: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        if reply.status == 404:
            conn.numeric("403", name, "No such channel")
        elif reply.status == 403:
            conn.numeric("442", name, f"You're not on that channel ({reply.reason})")
        else:
            conn.fail("PART", "CANNOT_PART", name, reply.reason)
        return
    room = room_of(name)
    ch = conn.channels.pop(name_key(room), None) if room else None
    params = (ch.name if ch else name, reason) if reason else (ch.name if ch else name,)
    conn.send(conn.from_user(conn.nick, "PART", params))


def cmd_topic(conn: IrcConnection, msg: Message) -> None:
    # TOPIC <channel> [<topic>]
    name = msg.params[0]
    room = room_of(name)
    if room is None:
        conn.numeric("403", name, "No such channel")
        return
    ch = conn.channels.get(name_key(room))
    if len(msg.params) == 1:
        if ch is not None:
            _show_topic(conn, ch.name, ch.topic)
        else:
            conn.call(c.RoomInfo(room), _topic_info, name)
        return
    if ch is None:
        conn.call(c.RoomInfo(room), _part_not_on, name)
        return
    conn.call(c.SetTopic(room, msg.params[1]), _topic_set, ch.name, msg.params[1])


def _show_topic(conn: IrcConnection, name: str, topic: str) -> None:
    if topic:
        conn.numeric("332", name, topic)
    else:
        conn.numeric("331", name, "No topic is set")


def _topic_info(conn: IrcConnection, name: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        conn.numeric("403" if reply.status == 404 else "442", name, reply.reason)
        return
    _show_topic(conn, "#" + reply.room, reply.topic)


def _topic_set(conn: IrcConnection, name: str, topic: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        if reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        elif reply.status in (413, 422):
            conn.fail("TOPIC", "INVALID_TOPIC", name, reply.reason)
        else:
            conn.fail("TOPIC", "CANNOT_SET_TOPIC", name, f"{reply.reason} ({reply.status})")
        return
    ch = conn.channel(name)
    if ch is not None:
        if ch.topic == topic:
            return
        ch.topic = topic
        conn._own_topic[name_key(ch.room)] = topic
    conn.send(conn.from_user(conn.nick, "TOPIC", (name, topic)))


def cmd_names(conn: IrcConnection, msg: Message) -> None:
    # NAMES [<channel>{,<channel>}]
    if not msg.params:
        conn.numeric("366", "*", "End of /NAMES list.")
        return
    for name in msg.params[0].split(","):
        room = room_of(name)
        if room is None:
            conn.numeric("366", name, "End of /NAMES list.")
            continue
        ch = conn.channels.get(name_key(room))
        if ch is not None:
            conn.call(c.Who(room), _names_after_who, name)
        else:
            conn.call(c.Who(room), _names_outside, name)


def _names_after_who(conn: IrcConnection, name: str, reply: Any) -> None:
    ch = conn.channel(name)
    if ch is None:
        conn.numeric("366", name, "End of /NAMES list.")
        return
    conn._names_after_join(name_key(ch.room), reply)


def _names_outside(conn: IrcConnection, name: str, reply: Any) -> None:
    if not isinstance(reply, _Failed):
        online = [u.name for u in reply.users if u.presence != "offline"]
        if online:
            conn.numeric("353", "=", name, " ".join(online))
    conn.numeric("366", name, "End of /NAMES list.")


def cmd_who(conn: IrcConnection, msg: Message) -> None:
    # WHO <mask>   (a channel, a nick, or a nick mask with * and ?)
    mask = msg.params[0] if msg.params else "*"
    if mask.startswith(CHANTYPES):
        room = room_of(mask)
        if room is None:
            conn.numeric("315", mask, "End of WHO list")
            return
        conn.call(c.Who(room), _who_channel, mask)
    elif valid_nick(mask):
        conn.call(c.Whois(mask), _who_nick, mask)
    elif "*" in mask or "?" in mask:
        conn.call(c.Who(None), _who_mask, mask)
    else:
        conn.numeric("315", mask, "End of WHO list")


def _who_mask(conn: IrcConnection, mask: str, reply: Any) -> None:
    if not isinstance(reply, _Failed):
        pattern = re.compile(fnmatch.translate(name_key(mask.split("!")[0])))
        for u in reply.users:
            if u.presence != "offline" and pattern.match(name_key(u.name)):
                _who_line(conn, "*", u.name, u.presence)
    conn.numeric("315", mask, "End of WHO list")


def _who_line(conn: IrcConnection, channel: str, name: str, presence: str,
              op: bool = False) -> None:
    flags = ("G" if presence == "away" else "H") + ("@" if op else "")
    conn.numeric("352", channel, conn.ident(name), "zchat", conn.settings.server_name, name,
                 flags, f"0 {conn.real_name(name)}")


def _who_channel(conn: IrcConnection, mask: str, reply: Any) -> None:
    if not isinstance(reply, _Failed):
        ch = conn.channel(mask)
        name = ch.name if ch else mask
        for u in reply.users:
            if u.presence == "offline":
                continue
            m = ch.members.get(name_key(u.name)) if ch else None
            _who_line(conn, name, u.name, u.presence, bool(m and m.op))
    conn.numeric("315", mask, "End of WHO list")


def _who_nick(conn: IrcConnection, mask: str, reply: Any) -> None:
    if not isinstance(reply, _Failed) and reply.presence != "offline":
        _who_line(conn, "*", reply.name, reply.presence)
    conn.numeric("315", mask, "End of WHO list")


def cmd_whois(conn: IrcConnection, msg: Message) -> None:
    # WHOIS [<server>] <nick>
    nick = msg.params[-1].split(",")[0]
    if not valid_nick(nick):
        conn.numeric("401", nick, "No such nick/channel")
        conn.numeric("318", nick, "End of /WHOIS list")
        return
    conn.call(c.Whois(nick), _whois, nick)


def _whois(conn: IrcConnection, nick: str, reply: Any) -> None:
    if isinstance(reply, _Failed) or reply.presence == "offline":
        conn.numeric("401", nick, "No such nick/channel")
        conn.numeric("318", nick, "End of /WHOIS list")
        return
    name = reply.name
    conn.numeric("311", name, conn.ident(name), "zchat", "*", conn.real_name(name))
    chans = [("@" if ch.members[name_key(name)].op else "") + ch.name
             for ch in conn.shares_channel(name)]
    if chans:
        conn.numeric("319", name, " ".join(chans))
    conn.numeric("312", name, conn.settings.server_name, "zchat gateway")
    if reply.presence == "away":
        conn.numeric("301", name, reply.text or "away")
    if reply.bot:
        conn.numeric("335", name, "is a bot")
    if conn.account_of(name) != "*":
        conn.numeric("330", name, name, "is logged in as")
    conn.numeric("318", name, "End of /WHOIS list")


def cmd_list(conn: IrcConnection, msg: Message) -> None:
    # LIST [<channel>{,<channel>}]
    wanted = {name_key(r) for r in (room_of(n) for n in msg.params[0].split(",")) if r} \
        if msg.params and msg.params[0] else None
    conn.call(c.ListRooms(), _listed, wanted)


def _listed(conn: IrcConnection, wanted: set[str] | None, reply: Any) -> None:
    conn.numeric("321", "Channel", "Users  Name")
    if not isinstance(reply, _Failed):
        for r in reply.rooms:
            if wanted is not None and name_key(r.room) not in wanted:
                continue
            if r.private and not r.joined:
                continue
            conn.numeric("322", "#" + r.room, str(r.members), r.topic)
    conn.numeric("323", "End of /LIST")


def cmd_away(conn: IrcConnection, msg: Message) -> None:
    # AWAY [<text>]
    text = msg.params[0] if msg.params else ""
    presence = "away" if text else "online"
    conn.call(c.SetPresence(presence, text[:p.MAX_AWAY_TEXT_CHARS]), _away_set, text)


def _away_set(conn: IrcConnection, text: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        conn.fail("AWAY", "CANNOT_SET_AWAY", reply.reason)
        return
    conn.away = text
    conn.numeric("306" if text else "305", "You have been marked as being away" if text
                 else "You are no longer marked as being away")


def cmd_motd(conn: IrcConnection, msg: Message) -> None:
    conn.motd()


def cmd_lusers(conn: IrcConnection, msg: Message) -> None:
    conn.lusers()


def cmd_kick(conn: IrcConnection, msg: Message) -> None:
    # KICK <channel> <user> [<comment>]
    name, nick = msg.params[0], msg.params[1].split(",")[0]
    reason = msg.params[2] if len(msg.params) > 2 else ""
    ch = conn.channel(name)
    if ch is None:
        room = room_of(name)
        if room is None:
            conn.numeric("403", name, "No such channel")
        else:
            conn.call(c.RoomInfo(room), _part_not_on, name)
        return
    if name_key(nick) not in ch.members:
        conn.numeric("441", nick, name, "They aren't on that channel")
        return
    conn.call(c.Kick(ch.room, nick, reason[:p.MAX_REASON_CHARS]), _kicked, ch.name, nick,
              reason)


def _kicked(conn: IrcConnection, name: str, nick: str, reason: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        if reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        elif reply.status == 404:
            conn.numeric("441", nick, name, "They aren't on that channel")
        else:
            conn.fail("KICK", "CANNOT_KICK", name, reply.reason)
        return
    ch = conn.channel(name)
    if ch is not None and name_key(nick) in ch.members:
        who = ch.members.pop(name_key(nick)).nick
        conn._own_kicks.add((name_key(ch.room), name_key(nick)))
        conn.send(conn.from_user(conn.nick, "KICK", (ch.name, who, reason or conn.nick)))


def cmd_invite(conn: IrcConnection, msg: Message) -> None:
    # INVITE <nickname> <channel>
    nick, name = msg.params[0], msg.params[1]
    room = room_of(name)
    if room is None:
        conn.numeric("403", name, "No such channel")
        return
    if name_key(room) not in conn.channels:
        conn.call(c.RoomInfo(room), _part_not_on, name)
        return
    ch = conn.channels[name_key(room)]
    if name_key(nick) in ch.members and ch.members[name_key(nick)].presence != "offline":
        conn.numeric("443", nick, ch.name, "is already on channel")
        return
    conn.call(c.Invite(room, nick), _invited, nick, ch.name)


def _invited(conn: IrcConnection, nick: str, name: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        if reply.status == 404:
            conn.numeric("401", nick, "No such nick/channel")
        elif reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        else:
            conn.fail("INVITE", "CANNOT_INVITE", name, reply.reason)
        return
    conn.numeric("341", nick, name)


def cmd_mode(conn: IrcConnection, msg: Message) -> None:
    # MODE <target> [<modestring> [<mode arguments>...]]
    target = msg.params[0]
    if not target.startswith(CHANTYPES):
        if name_key(target) != name_key(conn.nick):
            conn.numeric("502", "Can't change mode for other users")
        elif len(msg.params) == 1:
            conn.numeric("221", "+i")
        return
    ch = conn.channel(target)
    if ch is None:
        room = room_of(target)
        if room is None:
            conn.numeric("403", target, "No such channel")
        else:
            conn.call(c.RoomInfo(room), _mode_outside, target)
        return
    if len(msg.params) == 1:
        conn.numeric("324", ch.name, "+nt" + ("i" if ch.private else "")
                     + ("m" if ch.locked else ""))
        return
    modes, args = msg.params[1], list(msg.params[2:])
    adding = True
    for ch_mode in modes:
        if ch_mode in "+-":
            adding = ch_mode == "+"
        elif ch_mode == "b" and not args:
            conn.numeric("368", ch.name, "End of channel ban list")
        elif ch_mode == "o" and args:
            nick = args.pop(0)
            conn.call(c.SetRole(ch.room, nick, "moderator" if adding else "member"),
                      _mode_done, ch.name, ("+" if adding else "-") + "o", nick)
        elif ch_mode in "im":
            kw = {"private": adding} if ch_mode == "i" else {"locked": adding}
            conn.call(c.SetRoom(ch.room, **kw), _mode_done, ch.name,
                      ("+" if adding else "-") + ch_mode, "")
        elif ch_mode in "nt":
            continue  # always on
        else:
            conn.numeric("472", ch_mode, "is an unknown mode char to me")


def _mode_outside(conn: IrcConnection, name: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        conn.numeric("403", name, "No such channel")
        return
    conn.numeric("324", "#" + reply.room, "+nt" + ("i" if reply.private else "")
                 + ("m" if reply.locked else ""))


def _mode_done(conn: IrcConnection, name: str, mode: str, arg: str, reply: Any) -> None:
    if isinstance(reply, _Failed):
        if reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        elif reply.status == 404:
            conn.numeric("401", arg or name, "No such nick/channel")
        else:
            conn.fail("MODE", "CANNOT_SET_MODE", name, reply.reason)
        return
    ch = conn.channel(name)
    if ch is None:
        return
    on = mode[0] == "+"
    if mode[1] == "o":
        m = ch.members.get(name_key(arg))
        if m is None or m.op == on:
            return
        m.op = on
    elif mode[1] == "i":
        if ch.private == on:
            return
        ch.private = on
    elif mode[1] == "m":
        if ch.locked == on:
            return
        ch.locked = on
    conn.send(conn.from_user(conn.nick, "MODE", (ch.name, mode, arg) if arg
                             else (ch.name, mode)))


def cmd_userhost(conn: IrcConnection, msg: Message) -> None:
    # USERHOST <nickname>{ <nickname>}  (at most 5)
    nicks = [n for n in " ".join(msg.params).split()[:5] if valid_nick(n)]
    if not nicks:
        conn.numeric("302", "")
        return
    found: list[str] = []
    for i, nick in enumerate(nicks):
        conn.call(c.Whois(nick), _userhost_one, found, i == len(nicks) - 1)


def _userhost_one(conn: IrcConnection, found: list[str], last: bool, reply: Any) -> None:
    if not isinstance(reply, _Failed) and reply.presence != "offline":
        away = "-" if reply.presence == "away" else "+"
        found.append(f"{reply.name}={away}{conn.mask(reply.name).split('!', 1)[1]}")
    if last:
        conn.numeric("302", " ".join(found))


def cmd_version(conn: IrcConnection, msg: Message) -> None:
    conn.numeric("351", conn.settings.version, conn.settings.server_name, "zchat IRC gateway")


COMMANDS: dict[str, Command] = {
    "AUTHENTICATE": Command(cmd_authenticate, pre_registration=True, min_params=1),
    "AWAY": Command(cmd_away),
    "CAP": Command(cmd_cap, pre_registration=True, min_params=1),
    "CHATHISTORY": Command(cmd_chathistory, min_params=3),
    "INVITE": Command(cmd_invite, min_params=2),
    "JOIN": Command(cmd_join, min_params=1),
    "KICK": Command(cmd_kick, min_params=2),
    "LIST": Command(cmd_list),
    "LUSERS": Command(cmd_lusers),
    "MODE": Command(cmd_mode, min_params=1),
    "MOTD": Command(cmd_motd),
    "OPER": Command(cmd_oper, min_params=2),
    "TIME": Command(cmd_time),
    "NAMES": Command(cmd_names),
    "NICK": Command(cmd_nick, pre_registration=True, min_params=1),
    "NOTICE": Command(cmd_notice),
    "PART": Command(cmd_part, min_params=1),
    "PASS": Command(cmd_pass, pre_registration=True, min_params=1),
    "PING": Command(cmd_ping, pre_registration=True, min_params=1),
    "PONG": Command(cmd_pong, pre_registration=True),
    "PRIVMSG": Command(cmd_privmsg),
    "QUIT": Command(cmd_quit, pre_registration=True),
    "TOPIC": Command(cmd_topic, min_params=1),
    "USER": Command(cmd_user, pre_registration=True, min_params=1),
    "USERHOST": Command(cmd_userhost, min_params=1),
    "VERSION": Command(cmd_version),
    "WHO": Command(cmd_who),
    "WHOIS": Command(cmd_whois, min_params=1),
}


# -- zchat events --------------------------------------------------------------------------------


def _on_posted(conn: IrcConnection, ev: p.MessagePosted) -> None:
    ch = conn.channels.get(name_key(ev.room))
    if ch is None:
        return
    if name_key(ev.sender) == name_key(conn.account):
        key = (name_key(ev.room), ev.seq)
        if key in conn._own_seen:
            return
        if conn._sends_in_flight and key not in conn._own_sent:
            conn._held_own.append(ev)  # maybe ours: the SEND reply decides
            return
        if key in conn._own_sent and "echo-message" not in conn.caps:
            return
        conn._own_seen.add(key)
    conn.deliver_posted(ev, ch)


def _on_dm(conn: IrcConnection, ev: p.DirectMessage) -> None:
    tags = conn.tags_for(ev.sender, ev.time, f"dm/{ev.id}")
    if name_key(ev.sender) == name_key(conn.account):  # sent from another device
        conn.deliver_text(conn.nick, "PRIVMSG", ev.to, ev.text, "text", tags)
    else:
        conn.deliver_text(ev.sender, "PRIVMSG", conn.nick, ev.text, "text", tags)


def _on_joined(conn: IrcConnection, ev: p.UserJoined) -> None:
    ch = conn.channels.get(name_key(ev.room))
    key = name_key(ev.name)
    if ch is None or key == name_key(conn.account):
        return
    m = ch.members.get(key)
    if m is not None and m.presence != "offline":
        return
    ch.members[key] = Member(ev.name)
    _show_join(conn, ch, ev.name)


def _show_join(conn: IrcConnection, ch: Channel, nick: str) -> None:
    if "extended-join" in conn.caps:
        conn.send(conn.from_user(nick, "JOIN", (ch.name, conn.account_of(nick),
                                                conn.real_name(nick))))
    else:
        conn.send(conn.from_user(nick, "JOIN", (ch.name,)))
    presence, text = conn.known.get(name_key(nick), ("online", ""))
    if presence == "away" and "away-notify" in conn.caps:
        conn.send(conn.from_user(nick, "AWAY", (text or "away",)))


def _on_left(conn: IrcConnection, ev: p.UserLeft) -> None:
    ch = conn.channels.get(name_key(ev.room))
    key = name_key(ev.name)
    if ch is None:
        return
    if key == name_key(conn.account):
        if ev.by and name_key(ev.by) != key:  # we were kicked or banned
            del conn.channels[name_key(ev.room)]
            conn.send(conn.from_user(ev.by, "KICK", (ch.name, conn.nick, ev.reason or ev.by)))
        return
    if (name_key(ev.room), key) in conn._own_kicks:
        conn._own_kicks.discard((name_key(ev.room), key))
        return
    m = ch.members.pop(key, None)
    if m is None:
        return
    if ev.by and name_key(ev.by) != key:
        conn.send(conn.from_user(ev.by, "KICK", (ch.name, m.nick, ev.reason or ev.by)))
    else:
        conn.send(conn.from_user(m.nick, "PART", (ch.name,)))


def _on_presence(conn: IrcConnection, ev: p.PresenceChanged) -> None:
    key = name_key(ev.name)
    conn.known[key] = (ev.presence, ev.text)
    if key == name_key(conn.account):
        return
    shared = conn.shares_channel(ev.name)
    if not shared:
        return
    before = shared[0].members[key].presence
    for ch in shared:
        ch.members[key].presence = ev.presence
        ch.members[key].away_text = ev.text
    nick = shared[0].members[key].nick
    if ev.presence == "offline":
        if before != "offline":
            conn.send(conn.from_user(nick, "QUIT", (f"Quit: {ev.text}" if ev.text
                                                    else "Quit: offline",)))
        return
    if before == "offline":
        for ch in shared:
            _show_join(conn, ch, nick)
    if "away-notify" in conn.caps:
        if ev.presence == "away":
            conn.send(conn.from_user(nick, "AWAY", (ev.text or "away",)))
        elif before == "away":
            conn.send(conn.from_user(nick, "AWAY", ()))


def _on_topic(conn: IrcConnection, ev: p.TopicChanged) -> None:
    ch = conn.channels.get(name_key(ev.room))
    if ch is None:
        return
    if name_key(ev.by) == name_key(conn.account) \
            and conn._own_topic.get(name_key(ev.room)) == ev.topic:
        del conn._own_topic[name_key(ev.room)]
        return
    ch.topic = ev.topic
    tags = conn.tags_for(ev.by, ev.time)
    conn.send(conn.from_user(ev.by, "TOPIC", (ch.name, ev.topic), tags))


def _on_invited(conn: IrcConnection, ev: p.Invited) -> None:
    conn.send(conn.from_user(ev.by, "INVITE", (conn.nick, "#" + ev.room),
                             conn.tags_for(ev.by, ev.time)))


def _on_role(conn: IrcConnection, ev: p.RoleChanged) -> None:
    ch = conn.channels.get(name_key(ev.room))
    if ch is None:
        return
    op = ev.role in ("owner", "moderator")
    m = ch.members.get(name_key(ev.name))
    if m is not None:
        if m.op == op:
            return  # told already (our own MODE)
        m.op = op
    conn.send(conn.from_user(ev.by, "MODE", (ch.name, "+o" if op else "-o", ev.name)))


def _on_room_mode(conn: IrcConnection, ev: p.RoomModeChanged) -> None:
    ch = conn.channels.get(name_key(ev.room))
    if ch is None:
        return
    changes = ""
    if ev.private != ch.private:
        changes += ("+" if ev.private else "-") + "i"
    if ev.locked != ch.locked:
        changes += ("+" if ev.locked else "-") + "m"
    ch.private, ch.locked = ev.private, ev.locked
    if changes:
        conn.send(conn.from_user(ev.by, "MODE", (ch.name, changes)))


def _on_mute(conn: IrcConnection, ev: p.MuteChanged) -> None:
    where = "#" + ev.room if ev.room else "everywhere"
    what = "muted" if ev.muted else "no longer muted"
    conn.send(Message("NOTICE", (conn.nick, f"You are {what} in {where} by {ev.by}"
                                 + (f": {ev.reason}" if ev.reason else "")),
                      source=conn.settings.server_name))


def _on_room_deleted(conn: IrcConnection, ev: p.RoomDeleted) -> None:
    ch = conn.channels.pop(name_key(ev.room), None)
    if ch is not None:
        conn.send(conn.from_user(ev.by, "KICK", (ch.name, conn.nick,
                                                 f"room deleted: {ev.reason or ev.by}")))


def _on_session_ended(conn: IrcConnection, ev: SessionEnded) -> None:
    conn.send(Message("ERROR", (f"Closing link: zchat session ended ({ev.reason})",)))
    conn._close("session ended")


def _on_connection(conn: IrcConnection, ev: Any) -> None:
    text = {ConnectionLost: "lost the zchat broker; reconnecting",
            ConnectionRestored: "back with the zchat broker",
            Reconnecting: ""}.get(type(ev), "")
    if text:
        conn.send(Message("NOTICE", (conn.nick, text), source=conn.settings.server_name))


def _on_joined_elsewhere(conn: IrcConnection, ev: JoinedElsewhere) -> None:
    if conn.settings.autojoin and name_key(ev.room) not in conn.channels:
        conn.call(c.Join(ev.room), conn._joined, "#" + ev.room)


def _on_left_elsewhere(conn: IrcConnection, ev: LeftElsewhere) -> None:
    ch = conn.channels.pop(name_key(ev.room), None)
    if ch is not None:
        conn.send(conn.from_user(conn.nick, "PART", (ch.name, "left on another device")))


EVENTS: dict[type, Callable[[IrcConnection, Any], None]] = {
    p.MessagePosted: _on_posted,
    p.DirectMessage: _on_dm,
    p.UserJoined: _on_joined,
    p.UserLeft: _on_left,
    p.PresenceChanged: _on_presence,
    p.TopicChanged: _on_topic,
    p.Invited: _on_invited,
    p.RoleChanged: _on_role,
    p.RoomModeChanged: _on_room_mode,
    p.MuteChanged: _on_mute,
    p.RoomDeleted: _on_room_deleted,
    SessionEnded: _on_session_ended,
    ConnectionLost: _on_connection,
    ConnectionRestored: _on_connection,
    JoinedElsewhere: _on_joined_elsewhere,
    LeftElsewhere: _on_left_elsewhere,
}
