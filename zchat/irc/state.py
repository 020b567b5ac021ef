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
from zchat.irc.codec import (
    MAX_LINE_BYTES,
    Message,
    body_bytes,
    fit_last_param,
    split_line,
    split_pieces,
    split_text,
)
from zchat.irc.relay import Extra, Relays
from zchat.names import MAX_NAME_CHARS, name_key, normalize_name

#: The limits of a draft/multiline batch a client sends (https://ircv3.net/specs/
#: extensions/multiline): the broker's defaults for a message text, ``max_text_bytes``
#: (UTF-8 bytes, the line breaks between lines counted) and ``max_text_lines``
#: (docs/PROTOCOL.md, "Limits"; zchat/config.py), since a batch becomes one zchat message.
#: A broker configured lower refuses with 413 (FAIL PRIVMSG MESSAGE_TOO_LONG).
MULTILINE_MAX_BYTES = 4000
MULTILINE_MAX_LINES = 50

#: Capabilities offered (CAP LS), with their 302 values.
CAPS: dict[str, str] = {
    "account-tag": "",
    "away-notify": "",
    "batch": "",
    "cap-notify": "",
    "draft/account-registration": "before-connect",  # zchat/irc/register.py
    "draft/chathistory": "",
    "draft/multiline": f"max-bytes={MULTILINE_MAX_BYTES},max-lines={MULTILINE_MAX_LINES}",
    "echo-message": "",
    "extended-join": "",
    "labeled-response": "",
    "message-tags": "",
    "multi-prefix": "",
    "sasl": "PLAIN",
    "server-time": "",
    "userhost-in-names": "",
}
#: Lines whose last parameter may be a text from zchat longer than fits (``send``), and
#: what that text is called in the NOTICEs that give it in full.
_FITTED = {"332": "The topic", "TOPIC": "The topic", "322": "The topic",
           "KICK": "The reason", "PART": "The reason", "QUIT": "The quit message",
           "AWAY": "The away message", "301": "The away message", "NOTICE": "The notice",
           "ERROR": "The error"}
#: ISUPPORT TOPICLEN, in UTF-8 bytes (Modern counts octets): a topic an IRC client sets
#: is refused above it, so that it fits whole in the 332 and TOPIC lines of any client
#: (ASCII nicks and channel names up to their 32 characters). zchat's own limit is 300
#: characters, so a topic set by a zchat client may have more bytes: ``send`` then cuts
#: the line and gives the topic in full in NOTICEs.
TOPICLEN = 300
#: The most messages one CHATHISTORY answers (ISUPPORT CHATHISTORY; zchat/irc/history.py).
MAX_CHATHISTORY = 100
#: The most nicks one connection's MONITOR list holds (ISUPPORT MONITOR).
MAX_MONITOR = 100
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
    #: IRC connections the gateway holds at once (``[irc] max_connections``).
    max_connections: int = 1000
    #: IRC connections from one client address (an IPv6 /64 as one) at once (``[irc]
    #: max_connections_per_address``); 0: no limit.
    max_connections_per_address: int = 16
    #: New connections from one client address a minute (``[irc]
    #: connections_per_minute_per_address``); 0: no limit.
    connections_per_minute_per_address: int = 30


@dataclass
class Peer:
    """What an IRC connection of this gateway told of its user (USER's username, cleaned
    by ``clean_user``, and realname), for the other connections' WHO, WHOIS and
    extended-join; ``guest`` for a guest account (``[irc] guests``), shown as not logged
    in."""

    user: str
    realname: str
    guest: bool = False
    #: The connections of the account that hold it (``id`` of each): the first one's
    #: USER is kept while any of them is up, so the hostmask stays one (docs/irc.md);
    #: with none left, it is kept for the QUIT heard after, until the next connection.
    holders: set[int] = field(default_factory=set)


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
    #: WHOIS of joiners whose presence the gateway did not know, on their way: the
    #: room's messages are held meanwhile too, so a joiner's first line follows its JOIN
    #: (zchat/irc/members.py, ``release_held``).
    asking: int = 0


Handler = Callable[["IrcConnection", Message], None]


@dataclass(frozen=True)
class Command:
    handler: Handler
    pre_registration: bool = False
    min_params: int = 0


def _one_batch(msgs: list[Message]) -> bool:
    """Whether ``msgs`` are exactly one batch: its start, messages in it, its end."""
    first, last = msgs[0], msgs[-1]
    if first.command != "BATCH" or last.command != "BATCH" or len(msgs) < 2 \
            or not first.params or not first.params[0].startswith("+"):
        return False
    ref = first.params[0][1:]
    return last.params == ("-" + ref,) and all(m.tags.get("batch") == ref
                                                for m in msgs[1:-1])


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


#: The host part of every hostmask (zchat shows no addresses): ``nick!~user@zchat``.
HOST = "zchat"
#: The longest username shown (after the ``~``), as most servers' USERLEN.
USERLEN = 9
_NOT_IN_USER = re.compile(r"[^A-Za-z0-9._-]")


def clean_user(user: str) -> str:
    """USER's username as the hostmask shows it: letters, digits, ``.``, ``_``, ``-``
    only (a ``@`` or ``!`` would break the mask), at most USERLEN, ``u`` if nothing is
    left."""
    return _NOT_IN_USER.sub("", user)[:USERLEN] or "u"


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
                 events: dict[type, Callable[[IrcConnection, Any], None]] | None = None,
                 relays: Relays | None = None) -> None:
        self.settings = settings or Settings()
        #: The tables of commands and events (zchat/irc/core.py passes commands.py's and
        #: events.py's: they import this module, so it does not import them).
        self.commands: dict[str, Command] = commands or {}
        self.events: dict[type, Callable[[IrcConnection, Any], None]] = events or {}
        #: Shared by the gateway's connections (one event loop): name_key -> Peer.
        self.peers: dict[str, Peer] = peers if peers is not None else {}
        #: Shared too: client-only tags and multiline structure of messages in flight.
        self.relays: Relays = relays if relays is not None else Relays()
        #: The draft/multiline batch the client is sending (zchat/irc/texts.py), if any.
        self.multiline: Any = None
        #: Presence heard of every account (PRESENCE events, WHO, WHOIS): name_key ->
        #: (presence, away text).
        self.known: dict[str, tuple[str, str]] = {}
        #: What events told while answers asked of the broker were on their way
        #: (zchat/irc/members.py, ``watch``), and the resync's WHO of each channel in
        #: flight: room name_key -> its watch (zchat/irc/resync.py).
        self.watches: list[set[str]] = []
        self.resyncs: dict[str, set[str]] = {}
        #: From a lost connection to the broker until the resync has re-read every
        #: channel: PRESENCE events may have been missed, so a member who posts while
        #: shown offline is shown JOINed first (zchat/irc/events.py).
        self.presence_unsure = False
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
        self.registering = False     # a REGISTER in progress (zchat/irc/register.py)
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
        #: Bans of this connection (MODE +b, TBAN) waiting for BAN's answer, and those
        #: whose MODE +b one side (the LEFT, BAN's answer) showed and the other must
        #: not show again: (room key, name key) (zchat/irc/bans.py).
        self._bans_pending: set[tuple[str, str]] = set()
        self._bans_shown: set[tuple[str, str]] = set()
        #: MONITOR's list (IRCv3 monitor): name_key -> the nick as given.
        self.monitored: dict[str, str] = {}
        #: DM conversations this connection knows of (CHATHISTORY TARGETS): the LOGIN
        #: reply's unread ones and every DM sent or received since; name_key -> name.
        self.dm_peers: dict[str, str] = {}
        # labeled-response: the label of the command being answered, what it produced so
        # far, and the calls it is waiting for (answered in one go when they are done).
        self._label: str | None = None
        self._labeled: list[Message] = []
        self._command_calls: set[int] = set()
        #: Labels of held messages (``held``) waiting for their outcome: call id ->
        #: (label, what the command said before it); and calls made by those outcomes,
        #: answered as part of no labeled response (``held_answer``).
        self._held_labels: dict[int, tuple[str, list[Message]]] = {}
        self._unlabeled_calls: set[int] = set()
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
                # the command as printable text only: a tester's BEL and ESC bytes came
                # back in the 421, escapes for the sender's own terminal
                shown = "".join(ch if ch.isprintable() and not ch.isspace() else "?"
                                for ch in msg.command) or "?"
                self.numeric("421", shown, "Unknown command")
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
        elif len(msgs) == 1 or _one_batch(msgs):
            # one message, or one batch (a draft/multiline echo): the label on it
            self.send(replace(msgs[0], tags={**msgs[0].tags, "label": label}))
            for m in msgs[1:]:
                self.send(m)
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
        self._answer(call_id, handler, args, reply)
        self._maybe_answer_label()
        return self.take()

    def _answer(self, call_id: int, handler: Callable[..., None], args: tuple[Any, ...],
                reply: Any) -> None:
        """``handler(*args, reply)``; as an event's (no labeled response) for a call
        made by a held message's answer (``held_answer``)."""
        if call_id not in self._unlabeled_calls:
            handler(*args, reply)
            return
        self._unlabeled_calls.discard(call_id)
        self._in_event = True
        try:
            handler(*args, reply)
        finally:
            self._in_event = False

    def failure(self, call_id: int, status: int, reason: str) -> list[c.Action]:
        handler, args = self._pending.pop(call_id)
        self._command_calls.discard(call_id)
        self._answer(call_id, handler, args, _Failed(status, reason))
        self._maybe_answer_label()
        return self.take()

    def held(self, call_id: int, first: bool, held_for_s: float) -> list[c.Action]:
        """The adapter keeps the message of call ``call_id`` (a Post or DirectMessage the
        broker could not take: lost, reconnecting, 503) to send again when it is back,
        and will answer it with ``held_answer`` then (docs/irc.md). Meanwhile the
        connection's next commands are answered; a labeled one's label is set aside to
        be answered with the message's outcome (the echo or ACK once stored, or the
        FAIL: labeled-response); the first message kept in a row is told in a NOTICE,
        at once and unlabeled."""
        if first:
            self.out.append(c.Send(Message(
                "NOTICE", (self.nick, "The zchat broker cannot be reached: your messages "
                           "are kept and sent when it is back (for up to "
                           f"{held_for_s:g} s)"), source=self.settings.server_name)))
        if call_id in self._command_calls and self._label is not None:
            self._held_labels[call_id] = (self._label, self._labeled)
            self._label, self._labeled = None, []
            self._command_calls.clear()
        self._command_calls.discard(call_id)
        self._maybe_answer_label()
        return self.take()

    def held_answer(self, call_id: int, reply: Any = None, status: int = 0,
                    reason: str = "") -> list[c.Action]:
        """The answer to a call kept by ``held``: ``reply``, or the failure ``status``
        and ``reason``. A labeled command's label set aside by ``held`` is answered with
        what this says (the echo, ACK, the FAIL: labeled-response), the labeled command
        under way meanwhile, if any, set aside for that moment; an unlabeled one's says
        it as an event does (part of no labeled response). Calls it makes are part of
        no labeled response either: their answers are written as they come."""
        handler, args = self._pending.pop(call_id)
        answer = _Failed(status, reason) if status else reply
        held_label = self._held_labels.pop(call_id, None)
        if held_label is None:
            self._in_event = True
            try:
                handler(*args, answer)
            finally:
                self._in_event = False
            return self.take()
        current = self._label, self._labeled, self._command_calls
        self._label, self._labeled = held_label
        self._command_calls = set()
        try:
            handler(*args, answer)
        finally:
            self._unlabeled_calls |= self._command_calls
            self._command_calls = set()
            self._maybe_answer_label()
            self._label, self._labeled, self._command_calls = current
        return self.take()

    def event(self, ev: Any) -> list[c.Action]:
        """One event of the zchat client (``Client.events()``)."""
        if self.closed or not self.logged_in:
            return []
        if isinstance(ev, p.DirectMessage):  # a conversation CHATHISTORY TARGETS knows
            self.note_dm_peer(ev.to if name_key(ev.sender) == name_key(self.account)
                              else ev.sender)
        prior = self.known.get(name_key(ev.name)) \
            if isinstance(ev, p.PresenceChanged) else None
        handler = self.events.get(type(ev))
        if handler is not None:
            self._in_event = True
            try:
                handler(self, ev)
            finally:
                self._in_event = False
        if isinstance(ev, p.PresenceChanged) and name_key(ev.name) in self.monitored:
            was_on = prior is not None and prior[0] != "offline"
            if prior is None or was_on != (ev.presence != "offline"):
                self.monitor_status(ev.name, ev.presence)
        return self.take()

    def monitor_status(self, name: str, presence: str) -> None:
        """730 RPL_MONONLINE ``nick!user@host`` for an account online or away, else 731
        RPL_MONOFFLINE (IRCv3 monitor)."""
        if presence != "offline":
            self.numeric("730", self.mask(name))
        else:
            self.numeric("731", name)

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
        """``msg`` to the client (into the labeled response being made, if any). A line
        that would pass 512 bytes with a text from zchat in its last parameter (a topic
        of 300 CJK characters, a reason, an away text) has that text cut between grapheme
        clusters and marked "…", and the whole text follows in NOTICEs from the server
        (``_in_full``): nothing is cut mid-character, silently or for good."""
        whole = ""
        if msg.command in _FITTED:
            msg, whole = fit_last_param(msg)
        if self._label is not None and not self._in_event:
            self._labeled.append(msg)
        else:
            self.out.append(c.Send(msg))
        if whole:
            self._in_full(msg, whole)

    def _in_full(self, msg: Message, whole: str) -> None:
        what = _FITTED[msg.command]
        where = next((p for p in msg.params[:-1] if p.startswith(CHANTYPES)), "")
        head = f"{what}{' of ' + where if where else ''} in full: "
        budget = MAX_LINE_BYTES - 2 - body_bytes(Message(
            "NOTICE", (self.nick, head), source=self.settings.server_name))
        for piece in split_text(whole, max(budget, 16)):
            self.send(Message("NOTICE", (self.nick, head + (piece or " ")),
                              source=self.settings.server_name))

    def numeric(self, code: str, *params: str) -> None:
        self.send(Message(code, (self.nick, *params), source=self.settings.server_name))

    def fail(self, command: str, code: str, *context_and_text: str) -> None:
        self.send(Message("FAIL", (command, code, *context_and_text),
                          source=self.settings.server_name))

    def try_again(self, command: str, reply: Any) -> bool:
        """Whether ``reply`` is a failure because the zchat broker cannot be reached now
        (503: lost, reconnecting, or its database unavailable): then the answer is 263
        RPL_TRYAGAIN ``<client> <command> :Please wait a while and try again`` (Modern
        IRC), never a false "no such nick" or an empty list (docs/irc.md, "Broker
        outages"). The caller ends a list with its end numeric after it."""
        if not isinstance(reply, _Failed) or reply.status != 503:
            return False
        self.tell_try_again(command)
        return True

    def tell_try_again(self, command: str) -> None:
        """263 RPL_TRYAGAIN for ``command`` (``try_again``)."""
        self.numeric("263", command, "Please wait a while and try again (the zchat "
                     "broker cannot be reached now)")

    def call(self, request: c.Request, then: Callable[..., None], *args: Any,
             background: bool = False) -> None:
        """Make ``request``; ``then(*args, reply)`` gets the answer. A ``background``
        call is no part of the labeled command being answered (labeled-response), nor of
        one under way when its answer comes: what its answer says is written as an
        event's is (a joiner's JOIN, shown once its WHOIS answered, went into another
        command's labeled-response batch)."""
        self._ids += 1
        if getattr(then, "__self__", None) is not self:  # a module-level handler
            args = (self, *args)
        self._pending[self._ids] = (then, args)
        if background:
            self._unlabeled_calls.add(self._ids)
        elif self._label is not None and not self._in_event:
            self._command_calls.add(self._ids)
        self.out.append(c.Call(self._ids, request))

    def _close(self, reason: str) -> None:
        self._command_calls.clear()  # what the command said so far goes out before closing
        self._maybe_answer_label()
        self.closed = True
        self.forget_peer()  # gone from the others' LUSERS at once
        self.out.append(c.Close(reason))

    def mask(self, nick: str) -> str:
        """``nick!~user@zchat``: the one hostmask of ``nick`` in every message source,
        352, 311, 302, 900 and userhost-in-names (docs/irc.md, "Hostmasks")."""
        return f"{nick}!{self.ident(nick)}@{HOST}"

    def ident(self, nick: str) -> str:
        """``~`` and the username of ``nick``: the USER of the gateway connection that
        holds its account (``peers``), this connection's own before registration, ``u``
        for an account with no IRC connection here."""
        peer = self.peers.get(name_key(nick))
        if peer is not None:
            return "~" + peer.user
        if self.user and name_key(nick) in (name_key(self.nick), name_key(self.account)):
            return "~" + clean_user(self.user)
        return "~u"

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
        if peer is not None:  # kept: its QUIT, heard later, shows the same mask
            peer.holders.discard(id(self))

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
        if self.logged_in and self.user and not self.registered:
            self.hold_peer()  # SASL logged in: others see this mask before CAP END
        if self.registered or self.nick == "*" or not self.user or self.cap_negotiating \
                or self.sasl_mechanism or self.registering:
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
        self.dm_peers = {name_key(d.peer): d.peer for d in reply.dm_reads}
        if self.user:
            self.hold_peer()

    def hold_peer(self) -> None:
        """This connection holds its account's ``Peer`` (USER's username and realname),
        as soon as it is logged in and USER was given: the broker publishes the account
        online at LOGIN, and the other connections' JOINs of it, shown then, must show
        the same mask as everything after (docs/irc.md, "Hostmasks"). A SASL login
        happens before CAP END, so ``welcome`` would be too late."""
        peer = self.peers.get(name_key(self.account))
        if peer is not None and id(self) in peer.holders:
            return
        if peer is None or not peer.holders:  # the account's only connection here now
            peer = Peer(clean_user(self.user), self.realname, self.guest)
            self.peers[name_key(self.account)] = peer
        peer.holders.add(id(self))

    def welcome(self) -> None:
        s = self.settings
        old = self.nick
        self.nick = self.account
        self.registered = True
        self.hold_peer()
        if old not in ("*", self.nick) and name_key(old) != name_key(self.nick):
            self.send(Message("NICK", (self.nick,), source=f"{old}!{self.ident(self.nick)}"
                                                           f"@{HOST}"))
        # the network's name, and what this is: its IRC gateway (zchat's name once only)
        network = "zchat" if name_key(s.network) == "zchat" else f"{s.network} zchat"
        self.numeric("001", f"Welcome to the {network} network's IRC gateway, {self.nick}")
        self.numeric("002", f"Your host is {s.server_name}, running {s.version}")
        self.numeric("003", "This server was created by zchat")
        self.numeric("004", s.server_name, s.version, "io", "imnotb", "bo")
        tokens = [
            "AWAYLEN=200", "CASEMAPPING=ascii", "CHANLIMIT=#:1000", "CHANMODES=b,,,imnt",
            f"CHANNELLEN={MAX_NAME_CHARS + 1}", f"CHANTYPES={CHANTYPES}", "ELIST=",
            f"KICKLEN={p.MAX_REASON_CHARS}", f"NETWORK={s.network}",
            f"NICKLEN={MAX_NAME_CHARS}", "PREFIX=(o)@", "STATUSMSG=",
            "TARGMAX=PRIVMSG:1,NOTICE:1,JOIN:,PART:,KICK:1,NAMES:1,WHOIS:1",
            f"TOPICLEN={TOPICLEN}", "UTF8ONLY", f"CHATHISTORY={MAX_CHATHISTORY}",
            "MSGREFTYPES=msgid,timestamp", f"MONITOR={MAX_MONITOR}",
        ]
        self.numeric("005", *tokens, "are supported by this server")
        self.lusers(self._welcomed)

    def _welcomed(self) -> None:
        self.motd()
        if self.settings.autojoin:
            for room in self.rooms_at_login:
                self.call(c.Join(room), self._joined, "#" + room)

    def lusers(self, then: Callable[[], None] | None = None) -> None:
        """LUSERS from what the broker tells any account (docs/irc.md, "LUSERS"): WHO
        without a room counts the accounts online or away, ROOMS the rooms this account
        sees; the gateway counts its own registered connections. ``then()`` follows."""
        answers: dict[str, Any] = {}
        for what, request in (("who", c.Who(None)), ("rooms", c.ListRooms())):
            self.call(request, self._lusers_part, answers, what, then)

    def _lusers_part(self, answers: dict[str, Any], what: str,
                     then: Callable[[], None] | None, reply: Any) -> None:
        answers[what] = reply
        if len(answers) < 2:
            return
        local = sum(len(peer.holders) for peer in self.peers.values())
        who, rooms = answers["who"], answers["rooms"]
        if then is None:  # the LUSERS command (the welcome burst falls back to local counts)
            failed = next((r for r in (who, rooms) if isinstance(r, _Failed)
                           and r.status == 503), None)
            if failed is not None:
                self.try_again("LUSERS", failed)
                return
        online = None if isinstance(who, _Failed) else len(who.users)
        self.numeric("251", f"There are {local if online is None else online} users and 0 "
                     "invisible on 1 servers")
        if not isinstance(rooms, _Failed):
            self.numeric("254", str(len(rooms.rooms)), "channels formed")
        self.numeric("255", f"I have {local} clients and 0 servers")
        self.numeric("265", f"Current local users: {local} (IRC connections of this "
                     "gateway)")
        if online is not None:
            self.numeric("266", f"Current global users: {online} (zchat accounts online "
                         "or away)")
        if then is not None:
            then()

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

    def note_dm_peer(self, name: str) -> None:
        """A DM conversation with ``name`` is known to this connection (``dm_peers``)."""
        if name:
            self.dm_peers.setdefault(name_key(name), name)

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
                     kind: str, tags: dict[str, str], extra: Extra | None = None) -> None:
        """``text`` to the client as ``command`` lines (docs/irc.md, "Texts"): a
        ``draft/multiline`` BATCH when negotiated and the text takes more than one line
        (pieces of a long line tagged ``draft/multiline-concat``; a blank line empty);
        otherwise one line per piece, a blank line as a single space (IRC has no empty
        PRIVMSG; the count of lines stays visible), the ``msgid`` on the first only.
        Pieces are cut between grapheme clusters (``split_line``). ``extra`` (relay.py):
        its client-only tags are added for a client with message-tags, and the lines of
        the multiline batch it was sent as are kept when they still make ``text``."""
        head = len(f":{self.mask(source_nick)} {command} {target} :".encode())
        action = kind == "action"
        budget = max(MAX_LINE_BYTES - 2 - head - (len("\x01ACTION \x01") if action else 0),
                     16)
        tags = dict(tags)
        if extra is not None and "message-tags" in self.caps:
            tags.update(extra.client_tags)
        lines: list[tuple[str, bool]] = []
        if extra is not None and extra.lines and extra.joined() == text:
            for line, concat in extra.lines:
                pieces = split_line(line, budget) or [""]
                lines += [(piece, concat or i > 0) for i, piece in enumerate(pieces)]
        else:
            lines = split_pieces(text, budget)
        if not lines and action:
            lines = [("", False)]
        if not action and len(lines) > 1 and "draft/multiline" in self.caps \
                and "batch" in self.caps:
            self._batches += 1
            ref = f"ml{self._batches}"
            src = self.settings.server_name
            self.send(Message("BATCH", ("+" + ref, "draft/multiline", target),
                              source=self.mask(source_nick), tags=tags))
            for piece, concat in lines:
                inner = {"batch": ref, **({"draft/multiline-concat": ""} if concat else {})}
                self.send(self.from_user(source_nick, command, (target, piece), inner))
            self.send(Message("BATCH", ("-" + ref,), source=src))
            return
        for i, (piece, _concat) in enumerate(lines):
            body = f"\x01ACTION {piece}\x01" if action else (piece or " ")
            line_tags = tags if i == 0 else {k: v for k, v in tags.items() if k != "msgid"}
            self.send(self.from_user(source_nick, command, (target, body), dict(line_tags)))

    def relayed_tagmsg(self, r: c.RelayTagmsg) -> list[c.Action]:
        """A TAGMSG another IRC connection of this gateway sent (zchat carries no tags):
        shown to a client with message-tags that is in the channel or is the nick."""
        self.show_tagmsg(r)
        return self.take()

    def show_tagmsg(self, r: c.RelayTagmsg) -> None:
        """``relayed_tagmsg`` without taking the actions."""
        if self.closed or not self.registered or "message-tags" not in self.caps:
            return
        if r.target.startswith(CHANTYPES):
            ch = self.channel(r.target)
            if ch is None:
                return
            target = ch.name
        elif name_key(r.target) == name_key(self.nick):
            target = self.nick
        else:
            return
        tags = {**self.tags_for(r.nick, None, r.msgid), **r.tags}
        self.out.append(c.Send(self.from_user(r.nick, "TAGMSG", (target,), tags)))

    def deliver_posted(self, msg: p.MessagePosted, ch: Channel, playback: bool = False
                       ) -> None:
        """A room message to the client, and the account's read marker moved past it
        (the IRC client has it: docs/irc.md, "Playback"). A ``playback`` one without
        server-time starts with its time, ``[2026-12-07 17:31Z]``."""
        self.mark_read(ch.room, msg.seq)
        if msg.deleted_by:
            return
        msgid = f"{name_key(msg.room)}/{msg.seq}"
        tags = self.tags_for(msg.sender, msg.time, msgid)
        text = msg.text
        extra = None
        if playback and "server-time" not in self.caps:
            text = f"[{_time_tag(msg.time)[:16].replace('T', ' ')}Z] {text}"
        elif not playback:
            extra = self.relays.find(msgid, ("room", name_key(msg.room),
                                             name_key(msg.sender), msg.text))
        self.deliver_text(msg.sender, "NOTICE" if msg.notice else "PRIVMSG", ch.name, text,
                          msg.kind, tags, extra)

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
                self.send(Message("NOTICE", (ch.name, (f"Playback of the last {len(shown)} messages of {ch.name}"
                                              if len(shown) > 1 else
                                              f"Playback of the last message of {ch.name}")),
                                  source=self.settings.server_name))
            for m in shown:
                self.deliver_posted(m, ch, playback=True)
        held, ch.held = ch.held, []
        on_posted = self.events.get(p.MessagePosted)
        for ev in held:
            if ev.seq > upto and on_posted is not None:
                on_posted(self, ev)

    def _join_failed(self, channel: str, f: _Failed) -> None:
        if self.try_again("JOIN", f):
            return
        if f.status == 403:
            if "invit" in f.reason or "private" in f.reason:
                self.numeric("473", channel, f"Cannot join channel (+i): {f.reason}")
            else:
                self.numeric("474", channel, f"Cannot join channel (+b): {f.reason}")
        elif f.status == 409:
            # a name too like an existing room's, and (in the same words, §17.2) a
            # private room unknown to us: one answer for both, and no "(+i)" in it,
            # which would tell a private room from a look-alike (docs/irc.md, "Private
            # rooms"); 473 because that is what an IRC client shows for a closed door
            self.numeric("473", channel, f"Cannot join channel: {f.reason}")
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

