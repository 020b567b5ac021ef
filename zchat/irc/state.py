"""One IRC connection of the gateway as a pure state machine (docs/irc.md).

``IrcConnection`` takes what the IRC client sent (``receive``), what the zchat client
heard (``event``) and the answers to its own requests (``result``, ``failure``), and
returns actions: IRC messages to send, zchat calls to make, the connection to close
(zchat/irc/calls.py). It never touches a socket or a clock: server-time comes from the
broker's own times on events and replies (h11's shape, docs/STYLE §1).

Commands are a table (``COMMANDS`` in commands.py: handler, usable before registration,
least parameters), checked once in ``receive`` (Ergo's irc/commands.go, STYLE §8); zchat
events are another (``EVENTS`` in events.py). This module holds the connection's state
and what every handler shares.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from zchat import wire as p
from zchat.errors import ProtocolError
from zchat.irc import calls as c
from zchat.irc.codec import MAX_LINE_BYTES, Message, split_text
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
#: The most messages one CHATHISTORY answers (ISUPPORT CHATHISTORY; zchat/irc/history.py).
MAX_CHATHISTORY = 100
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
    #: Messages replayed on JOIN to a client without draft/chathistory (``[irc]
    #: playback``): the newest ``playback``, or all those unread when more; 0: none.
    playback: int = 20
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


#: The zchat roles (WHO's ``role``, docs/PROTOCOL.md §17.1) shown as IRC's ``@``: the
#: room's owner and its moderators, who may KICK, INVITE and set modes (docs/irc.md).
OPERATOR_ROLES = frozenset({"owner", "moderator"})


def is_op(role: str, known: bool) -> bool:
    """Whether a member with WHO's ``role`` is shown as ``@``; ``known`` (from MODE
    events seen) when the broker said no role (an older one, §6.11)."""
    return role in OPERATOR_ROLES if role else known


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
    #: Playback on JOIN (``[irc] playback``): the newest seq it covers while it is being
    #: fetched (0: none pending), and the room's live messages held meanwhile.
    playback_upto: int = 0
    playback_limit: int = 0
    held: list[p.MessagePosted] = field(default_factory=list)


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
                 peers: dict[str, Peer] | None = None,
                 commands: dict[str, Command] | None = None,
                 events: dict[type, Callable[[IrcConnection, Any], None]] | None = None
                 ) -> None:
        self.settings = settings or Settings()
        #: The tables of commands and events (zchat/irc/core.py passes commands.py's and
        #: events.py's: they import this module, so it does not import them).
        self.commands: dict[str, Command] = commands or {}
        self.events: dict[type, Callable[[IrcConnection, Any], None]] = events or {}
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
        #: The account's read markers at login (LOGIN's room_reads): name_key -> read_seq;
        #: a room's is used by its first playback, then forgotten.
        self.read_at_login: dict[str, int] = {}
        #: MARK_READ of each room: name_key -> [upto asked, upto wanted, one in flight].
        self._marks: dict[str, list[Any]] = {}
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
        self._playback_asked: set[str] = set()

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, msg: Message) -> list[c.Action]:
        """One message from the IRC client."""
        if self.closed:
            return []
        label = msg.tags.get("label")
        if label is not None and "labeled-response" in self.caps and label \
                and self._label is None:
            self._label, self._labeled = label, []
        command = self.commands.get(msg.command)
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

    def held(self, call_id: int, first: bool, held_for_s: float) -> list[c.Action]:
        """The adapter keeps the message of call ``call_id`` (a Post or DirectMessage the
        broker could not take: lost, reconnecting, 503) to send again when it is back,
        and will answer it with ``result`` or ``failure`` then (docs/irc.md). Meanwhile
        the command counts as answered (a labeled one gets what it said so far), and the
        first message kept in a row is told in a NOTICE."""
        self._command_calls.discard(call_id)
        if first:
            self.send(Message("NOTICE", (self.nick, "The zchat broker cannot be reached: "
                                         "your messages are kept and sent when it is back "
                                         f"(for up to {held_for_s:g} s)"),
                              source=self.settings.server_name))
        self._maybe_answer_label()
        return self.take()

    def held_answer(self, call_id: int, reply: Any = None, status: int = 0,
                    reason: str = "") -> list[c.Action]:
        """The answer to a call kept by ``held``: ``reply``, or the failure ``status``
        and ``reason``. Its command was answered already, so what this says (the echo, a
        FAIL) is part of no labeled response, as an event's is not."""
        handler, args = self._pending.pop(call_id)
        self._in_event = True
        try:
            handler(*args, _Failed(status, reason) if status else reply)
        finally:
            self._in_event = False
        return self.take()

    def event(self, ev: Any) -> list[c.Action]:
        """One event of the zchat client (``Client.events()``)."""
        if self.closed or not self.logged_in:
            return []
        handler = self.events.get(type(ev))
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

    def call(self, request: c.Request, then: Callable[..., None], *args: Any,
             background: bool = False) -> None:
        """Make ``request``; ``then(*args, reply)`` gets the answer. A ``background``
        call is no part of the labeled command being answered (labeled-response)."""
        self._ids += 1
        if getattr(then, "__self__", None) is not self:  # a module-level handler
            args = (self, *args)
        self._pending[self._ids] = (then, args)
        if self._label is not None and not self._in_event and not background:
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
            if reply.status == 429:
                self.numeric("464", f"Login refused: {reply.reason}")
            else:
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
        self.read_at_login = {name_key(r.room): r.read_seq for r in reply.room_reads}

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
            f"TOPICLEN={p.MAX_TOPIC_CHARS}", "UTF8ONLY", f"CHATHISTORY={MAX_CHATHISTORY}",
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

    def deliver_posted(self, msg: p.MessagePosted, ch: Channel, playback: bool = False
                       ) -> None:
        """A room message to the client, and the account's read marker moved past it
        (the IRC client has it: docs/irc.md, "Playback"). A ``playback`` one without
        server-time starts with its time, ``[2026-12-07 17:31Z]``."""
        self.mark_read(ch.room, msg.seq)
        if msg.deleted_by:
            return
        tags = self.tags_for(msg.sender, msg.time, f"{name_key(msg.room)}/{msg.seq}")
        text = msg.text
        if playback and "server-time" not in self.caps:
            text = f"[{_time_tag(msg.time)[:16].replace('T', ' ')}Z] {text}"
        self.deliver_text(msg.sender, "NOTICE" if msg.notice else "PRIVMSG", ch.name, text,
                          msg.kind, tags)

    def mark_read(self, room: str, seq: int) -> None:
        """MARK_READ ``room`` up to ``seq``, one call in flight per room: what is given
        meanwhile is marked by the next one (a message per broker round trip at most)."""
        key = name_key(room)
        mark = self._marks.setdefault(key, [0, 0, False])
        if seq <= mark[1]:
            return
        mark[1] = seq
        if not mark[2]:
            mark[0], mark[2] = seq, True
            self.call(c.MarkRead(room, seq), self._marked, room, background=True)

    def _marked(self, room: str, reply: Any) -> None:
        mark = self._marks.get(name_key(room))
        if mark is None:
            return
        mark[2] = False
        if not isinstance(reply, _Failed) and mark[1] > mark[0]:
            mark[0], mark[2] = mark[1], True
            self.call(c.MarkRead(room, mark[1]), self._marked, room, background=True)

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
        read = self.read_at_login.pop(key, None)
        if self.settings.playback > 0 and "draft/chathistory" not in self.caps \
                and reply.last_seq >= reply.first_seq:
            unread = reply.last_seq - read if read is not None else 0
            ch.playback_upto = reply.last_seq
            ch.playback_limit = min(max(self.settings.playback, unread),
                                       p.MAX_HISTORY_LIMIT)
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
                    ch.members[k] = Member(u.name, u.presence, u.text, is_op(u.role, False))
                else:
                    m.presence, m.away_text = u.presence, u.text
                    m.op = is_op(u.role, m.op)
        ch.members[name_key(self.nick)].presence = "away" if self.away else "online"
        self.names(ch)
        if ch.playback_upto and key not in self._playback_asked:
            self._playback_asked.add(key)
            self.call(c.History(ch.room, ch.playback_limit), self._played_back, key)

    def _played_back(self, key: str, reply: Any) -> None:
        """Playback on JOIN (docs/irc.md, "Playback"): the messages up to the room's last
        seq at JOIN, each once (newer ones came live, held until now), then those held."""
        self._playback_asked.discard(key)
        ch = self.channels.get(key)
        if ch is None:
            return
        upto, ch.playback_upto = ch.playback_upto, 0
        if not isinstance(reply, _Failed):
            shown = [m for m in reply.messages if m.seq <= upto and not m.deleted_by]
            if shown:
                self.send(Message("NOTICE", (ch.name, f"Playback of the last {len(shown)} "
                                             f"messages of {ch.name}"),
                                  source=self.settings.server_name))
            for m in shown:
                self.deliver_posted(m, ch, playback=True)
        held, ch.held = ch.held, []
        on_posted = self.events.get(p.MessagePosted)
        for ev in held:
            if ev.seq > upto and on_posted is not None:
                on_posted(self, ev)

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

