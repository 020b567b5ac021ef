"""The IRC commands of a connection (zchat/irc/state.py): one function per command,
labelled with its grammar, and one per zchat answer it waits for; ``COMMANDS`` maps each
command to its handler with its preconditions. Pure, like the state machine."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from typing import Any

from zchat import wire as p
from zchat.irc import calls as c
from zchat.irc.bans import cmd_tban, list_bans, set_ban
from zchat.irc.codec import Message
from zchat.irc.events import _on_posted
from zchat.irc.history import cmd_chathistory
from zchat.irc.relay import Extra, Key
from zchat.irc.state import (
    _CTCP_ACTION,
    _FORMATTING,
    CAPS,
    CHANTYPES,
    HOST,
    MAX_MONITOR,
    TOPICLEN,
    Command,
    IrcConnection,
    _Failed,
    is_op,
    room_of,
    valid_nick,
)
from zchat.names import name_key


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
    conn.send(Message("900", (nick, conn.mask(reply.name), reply.name,
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


def _privmsg(conn: IrcConnection, msg: Message, notice: bool,
             lines: tuple[tuple[str, bool], ...] = ()) -> None:
    # PRIVMSG <target> <text>  /  NOTICE <target> <text>  (``lines``: the draft/multiline
    # batch it was joined from, zchat/irc/texts.py; client-only tags go to the gateway's
    # other IRC connections through conn.relays, zchat/irc/relay.py)
    if len(msg.params) < 2 or not msg.params[1]:
        if not notice:
            conn.numeric("412" if len(msg.params) >= 1 else "411",
                         "No text to send" if msg.params else "No recipient given (PRIVMSG)")
        return
    target, text = msg.params[0], msg.params[1]
    kind = "text"
    m = _CTCP_ACTION.match(text)
    if m and notice:
        # zchat's notices are text only, and bots never answer a notice: a NOTICE
        # carrying ACTION is the notice "* nick text", not an action (bots answer those)
        text = f"* {conn.nick} {m.group(1) or ''}"
    elif m:
        kind, text = "action", m.group(1) or ""
    elif text.startswith("\x01"):
        if not notice:
            conn.send(Message("NOTICE", (conn.nick, "zchat carries no CTCP but ACTION"),
                              source=conn.settings.server_name))
        return
    command = "NOTICE" if notice else "PRIVMSG"
    if "," in target:  # TARGMAX=PRIVMSG:1,NOTICE:1 (ISUPPORT): refused whole, none sent
        conn.numeric("407", target, f"Too many recipients ({command} takes one target: "
                     "TARGMAX); nothing was sent")
        return
    text = _FORMATTING.sub("", text)
    if not text.strip():
        if not notice:
            conn.numeric("412", "No text to send (nothing left once IRC formatting and "
                         "spaces are taken out)")
        return
    client_tags = {k: v for k, v in msg.tags.items() if k.startswith("+")} \
        if "message-tags" in conn.caps else {}
    extra = Extra(client_tags, lines) if client_tags or lines else None
    for one in (target,):
        if one.startswith(CHANTYPES):
            room = room_of(one)
            if room is None:
                if not notice:
                    conn.numeric("403", one, "No such channel")
                continue
            conn._sends_in_flight += 1
            key: Key = ("room", name_key(room), name_key(conn.account), text)
            if extra is not None:
                conn.relays.expect(key, extra)
            conn.call(c.Post(room, text, kind, notice and kind == "text"), _posted, one,
                      text, kind, command, notice,
                      key, extra)
        else:
            if not valid_nick(one):
                if not notice:
                    conn.numeric("401", one, "No such nick/channel")
                continue
            body = text if kind == "text" else f"* {conn.nick} {text}"
            key = ("dm", name_key(conn.account), name_key(one), body)
            if extra is not None:
                conn.relays.expect(key, extra)
            conn.call(c.DirectMessage(one, body, notice and kind == "text"), _dm_sent, one,
                      text, kind, command, notice,
                      key, extra)


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
    elif f.status == 429:  # a room's slow mode, or a flood past the short waits
        conn.fail(command, "RATE_LIMITED", target, f.reason)
        if command == "PRIVMSG":
            conn.send(Message("NOTICE", (conn.nick, f"Not sent to {target}: {f.reason}"),
                              source=conn.settings.server_name))
    else:
        conn.fail(command, "MESSAGE_REFUSED", target, f"{f.reason} ({f.status})")


def _posted(conn: IrcConnection, channel: str, text: str, kind: str, command: str,
            notice: bool, relay_key: Key, extra: Extra | None, reply: Any) -> None:
    conn._sends_in_flight -= 1
    if isinstance(reply, _Failed):
        conn.relays.dropped(relay_key)
        _refused(conn, command, channel, reply, channel=True)
    else:
        key = (name_key(reply.room), reply.seq)
        conn.relays.posted(relay_key, f"{key[0]}/{key[1]}")
        conn._own_sent.add(key)
        if "echo-message" in conn.caps and key not in conn._own_seen:
            conn._own_seen.add(key)
            tags = conn.tags_for(conn.account, reply.time, f"{key[0]}/{key[1]}")
            conn.deliver_text(conn.nick, command, channel, text, kind, tags, extra)
    if conn._sends_in_flight == 0 and conn._held_own:
        held, conn._held_own = conn._held_own, []
        for ev in held:
            _on_posted(conn, ev)


def _dm_sent(conn: IrcConnection, target: str, text: str, kind: str, command: str,
             notice: bool, relay_key: Key, extra: Extra | None, reply: Any) -> None:
    if isinstance(reply, _Failed):
        conn.relays.dropped(relay_key)
        _refused(conn, command, target, reply, channel=False)
        return
    conn.relays.posted(relay_key, f"dm/{reply.id}")
    conn.note_dm_peer(reply.to or target)
    tags = conn.tags_for(conn.account, reply.time, f"dm/{reply.id}")
    if "echo-message" in conn.caps:
        conn.deliver_text(conn.nick, command, reply.to or target, text, kind, tags, extra)
    if name_key(target) == name_key(conn.account):
        # to oneself: the broker stores it for the account's other sessions only; an
        # IRC client expects to receive it too, as a message of its own (not labeled)
        conn._in_event = True
        try:
            conn.deliver_text(conn.nick, command, conn.nick, text, kind, tags, extra)
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


def _part_reason(text: str) -> str:
    """An IRC PART reason as zchat's PART takes it (docs/PROTOCOL.md §6.6): IRC
    formatting and other control characters out, cut to MAX_AWAY_TEXT_CHARS, trimmed;
    so that a coloured reason never makes the PART itself refused."""
    text = "".join(ch for ch in _FORMATTING.sub("", text)
                   if ch.isprintable() or ch == " ")
    return text[:p.MAX_AWAY_TEXT_CHARS].strip()


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
                conn.call(c.RoomInfo(room), _part_not_on, name, "PART")
            continue
        conn.call(c.Part(ch.room, _part_reason(reason)), _parted, ch.name, reason)


def _part_not_on(conn: IrcConnection, name: str, command: str, reply: Any) -> None:
    """The answer to ``command`` (PART, KICK, TOPIC, INVITE) on channel ``name`` not
    joined, from ROOM_INFO: 403 when there is no such room, else 442."""
    if conn.try_again(command, reply):
        return
    if isinstance(reply, _Failed) and reply.status == 404:
        conn.numeric("403", name, "No such channel")
    else:
        conn.numeric("442", name, "You're not on that channel")


def _parted(conn: IrcConnection, name: str, reason: str, reply: Any) -> None:
    if conn.try_again("PART", reply):
        return
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
        conn.call(c.RoomInfo(room), _part_not_on, name, "TOPIC")
        return
    size = len(msg.params[1].encode("utf-8"))
    if size > TOPICLEN:  # ISUPPORT TOPICLEN, in bytes: what fits in 332 and TOPIC lines
        conn.fail("TOPIC", "INVALID_TOPIC", ch.name, f"The topic is {size} bytes: "
                  f"TOPICLEN is {TOPICLEN} (UTF-8 bytes); nothing was changed")
        return
    conn.call(c.SetTopic(room, msg.params[1]), _topic_set, ch.name, msg.params[1])


def _show_topic(conn: IrcConnection, name: str, topic: str) -> None:
    if topic:
        conn.numeric("332", name, topic)
    else:
        conn.numeric("331", name, "No topic is set")


def _topic_info(conn: IrcConnection, name: str, reply: Any) -> None:
    if conn.try_again("TOPIC", reply):
        return
    if isinstance(reply, _Failed):
        conn.numeric("403" if reply.status == 404 else "442", name, reply.reason)
        return
    _show_topic(conn, "#" + reply.room, reply.topic)


def _topic_set(conn: IrcConnection, name: str, topic: str, reply: Any) -> None:
    if conn.try_again("TOPIC", reply):
        return
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
    if ch is None or conn.try_again("NAMES", reply):
        conn.numeric("366", ch.name if ch else name, "End of /NAMES list.")
        return
    conn._names_after_join(name_key(ch.room), reply)


def _names_outside(conn: IrcConnection, name: str, reply: Any) -> None:
    if not conn.try_again("NAMES", reply) and not isinstance(reply, _Failed):
        online = [("@" if is_op(u.role, False) else "") + u.name
                  for u in reply.users if u.presence != "offline"]
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
    if not conn.try_again("WHO", reply) and not isinstance(reply, _Failed):
        pattern = re.compile(fnmatch.translate(name_key(mask.split("!")[0])))
        for u in reply.users:
            if u.presence != "offline" and pattern.match(name_key(u.name)):
                _who_line(conn, "*", u.name, u.presence)
    conn.numeric("315", mask, "End of WHO list")


def _who_line(conn: IrcConnection, channel: str, name: str, presence: str,
              op: bool = False) -> None:
    flags = ("G" if presence == "away" else "H") + ("@" if op else "")
    conn.numeric("352", channel, conn.ident(name), HOST, conn.settings.server_name, name,
                 flags, f"0 {conn.real_name(name)}")


def _who_channel(conn: IrcConnection, mask: str, reply: Any) -> None:
    if not conn.try_again("WHO", reply) and not isinstance(reply, _Failed):
        ch = conn.channel(mask)
        name = ch.name if ch else mask
        for u in reply.users:
            if u.presence == "offline":
                continue
            m = ch.members.get(name_key(u.name)) if ch else None
            op = is_op(u.role, bool(m and m.op))
            if m is not None:
                m.op = op
            _who_line(conn, name, u.name, u.presence, op)
    conn.numeric("315", mask, "End of WHO list")


def _who_nick(conn: IrcConnection, mask: str, reply: Any) -> None:
    if conn.try_again("WHO", reply):
        pass
    elif not isinstance(reply, _Failed) and reply.presence != "offline":
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
    if conn.try_again("WHOIS", reply):
        conn.numeric("318", nick, "End of /WHOIS list")
        return
    if isinstance(reply, _Failed) or reply.presence == "offline":
        conn.numeric("401", nick, "No such nick/channel")
        conn.numeric("318", nick, "End of /WHOIS list")
        return
    name = reply.name
    conn.numeric("311", name, conn.ident(name), HOST, "*", conn.real_name(name))
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
    if conn.try_again("LIST", reply):
        conn.numeric("323", "End of /LIST")
        return
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
            conn.call(c.RoomInfo(room), _part_not_on, name, "KICK")
        return
    if name_key(nick) not in ch.members:
        conn.numeric("441", nick, name, "They aren't on that channel")
        return
    conn.call(c.Kick(ch.room, nick, reason[:p.MAX_REASON_CHARS]), _kicked, ch.name, nick,
              reason)


def _kicked(conn: IrcConnection, name: str, nick: str, reason: str, reply: Any) -> None:
    if conn.try_again("KICK", reply):
        return
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
        conn.call(c.RoomInfo(room), _part_not_on, name, "INVITE")
        return
    ch = conn.channels[name_key(room)]
    if name_key(nick) in ch.members and ch.members[name_key(nick)].presence != "offline":
        conn.numeric("443", nick, ch.name, "is already on channel")
        return
    conn.call(c.Invite(room, nick), _invited, nick, ch.name)


def _invited(conn: IrcConnection, nick: str, name: str, reply: Any) -> None:
    if conn.try_again("INVITE", reply):
        return
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
    room = ch.room if ch else room_of(target)
    if room is None:
        conn.numeric("403", target, "No such channel")
        return
    name = ch.name if ch else target
    if len(msg.params) == 1:
        if ch is None:
            conn.call(c.RoomInfo(room), _mode_outside, target)
        else:
            conn.numeric("324", ch.name, "+nt" + ("i" if ch.private else "")
                         + ("m" if ch.locked else ""))
        return
    # a channel not joined: the broker decides (BANS needs the rank only; the rest
    # needs membership, §17.1), and a private room unknown to us answers as a missing one
    modes, args = msg.params[1], list(msg.params[2:])
    adding = True
    for ch_mode in modes:
        if ch_mode in "+-":
            adding = ch_mode == "+"
        elif ch_mode == "b":
            if args:
                set_ban(conn, name, room, args.pop(0), adding)
            else:
                list_bans(conn, name, room)
        elif ch_mode == "o" and args:
            nick = args.pop(0)
            conn.call(c.SetRole(room, nick, "moderator" if adding else "member"),
                      _mode_done, name, ("+" if adding else "-") + "o", nick)
        elif ch_mode in "im":
            kw = {"private": adding} if ch_mode == "i" else {"locked": adding}
            conn.call(c.SetRoom(room, **kw), _mode_done, name,
                      ("+" if adding else "-") + ch_mode, "")
        elif ch_mode in "nt":
            continue  # always on
        else:
            conn.numeric("472", ch_mode, "is an unknown mode char to me")


def _mode_outside(conn: IrcConnection, name: str, reply: Any) -> None:
    if conn.try_again("MODE", reply):
        return
    if isinstance(reply, _Failed):
        conn.numeric("403", name, "No such channel")
        return
    conn.numeric("324", "#" + reply.room, "+nt" + ("i" if reply.private else "")
                 + ("m" if reply.locked else ""))


def _mode_done(conn: IrcConnection, name: str, mode: str, arg: str, reply: Any) -> None:
    if conn.try_again("MODE", reply):
        return
    if isinstance(reply, _Failed):
        if reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        elif reply.status == 404 and (not arg or "room" in reply.reason):
            conn.numeric("403", name, "No such channel")
        elif reply.status == 404:
            conn.numeric("401", arg, "No such nick/channel")
        else:
            conn.fail("MODE", "CANNOT_SET_MODE", name, reply.reason)
        return
    ch = conn.channel(name)
    if ch is None:  # a channel not joined (a broker admin): told as done
        conn.send(conn.from_user(conn.nick, "MODE", (name, mode, arg) if arg
                                 else (name, mode)))
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


def cmd_ison(conn: IrcConnection, msg: Message) -> None:
    # ISON <nickname>{ <nickname>}   (irssi's and WeeChat's /notify): 303 with those
    # online or away. Presence heard already (PRESENCE events of every account, WHO,
    # WHOIS) answers at once; a nick not heard of is asked with WHOIS, and 303 comes when
    # every answer is in.
    nicks = " ".join(msg.params).split()
    found: dict[int, str] = {}
    asked: list[int] = []
    for i, nick in enumerate(nicks):
        key = name_key(nick) if valid_nick(nick) else ""
        if not key:
            continue
        if key == name_key(conn.account):
            found[i] = conn.nick
        elif key in conn.known:
            if conn.known[key][0] != "offline":
                found[i] = nick
        else:
            asked.append(i)
    if not asked:
        _ison_reply(conn, nicks, found)
        return
    waiting = set(asked)
    for i in asked:
        conn.call(c.Whois(nicks[i]), _ison_one, nicks, found, waiting, i)


def _ison_one(conn: IrcConnection, nicks: list[str], found: dict[int, str],
              waiting: set[int], i: int, reply: Any) -> None:
    waiting.discard(i)
    if isinstance(reply, _Failed) and reply.status == 503:
        found[-1] = ""  # not known now: the answer is 263, not a false "offline"
    elif not isinstance(reply, _Failed):
        conn.known[name_key(reply.name)] = (reply.presence, reply.text)
        if reply.presence != "offline":
            found[i] = reply.name
    if not waiting:
        if -1 in found:
            conn.tell_try_again("ISON")
            return
        _ison_reply(conn, nicks, found)


def _ison_reply(conn: IrcConnection, nicks: list[str], found: dict[int, str]) -> None:
    conn.numeric("303", " ".join(found[i] for i in sorted(found)))


def cmd_monitor(conn: IrcConnection, msg: Message) -> None:
    # MONITOR + <targets> / - <targets> / C / L / S   (https://ircv3.net/specs/extensions/monitor)
    sub = msg.params[0]
    if sub in "+-" and (len(msg.params) < 2 or not msg.params[1]):
        conn.numeric("461", "MONITOR", "Not enough parameters")
        return
    if sub == "+":
        added: list[str] = []
        nicks = [n for n in msg.params[1].split(",") if n]
        for i, nick in enumerate(nicks):
            if not valid_nick(nick):
                conn.numeric("432", nick, "Erroneous nickname (MONITOR takes nicks, not "
                             "masks)")
                continue
            if name_key(nick) in conn.monitored:
                continue
            if len(conn.monitored) >= MAX_MONITOR:
                conn.numeric("734", str(MAX_MONITOR), ",".join(nicks[i:]),
                             "Monitor list is full")
                break
            conn.monitored[name_key(nick)] = nick
            added.append(nick)
        _monitor_tell(conn, added)
    elif sub == "-":
        for nick in msg.params[1].split(","):
            conn.monitored.pop(name_key(nick), None)
    elif sub.upper() == "C":
        conn.monitored.clear()
    elif sub.upper() == "L":
        names = list(conn.monitored.values())
        for i in range(0, len(names), 20):
            conn.numeric("732", ",".join(names[i:i + 20]))
        conn.numeric("733", "End of MONITOR list")
    elif sub.upper() == "S":
        _monitor_tell(conn, list(conn.monitored.values()))
    else:
        conn.fail("MONITOR", "INVALID_PARAMS", sub, "MONITOR takes +, -, C, L or S")


def _monitor_tell(conn: IrcConnection, nicks: list[str]) -> None:
    """730/731 for each of ``nicks``, in order: presence heard answers at once, the
    others are asked with WHOIS (an unknown account is offline)."""
    if not nicks:
        return
    answers: dict[int, tuple[str, str]] = {}
    waiting = set()
    for i, nick in enumerate(nicks):
        known = conn.known.get(name_key(nick))
        if name_key(nick) == name_key(conn.account):
            answers[i] = (conn.nick, "online")
        elif known is not None:
            answers[i] = (nick, known[0])
        else:
            waiting.add(i)
    if not waiting:
        _monitor_answer(conn, answers)
    for i in sorted(waiting):
        conn.call(c.Whois(nicks[i]), _monitor_one, nicks[i], i, answers, waiting)


def _monitor_one(conn: IrcConnection, nick: str, i: int,
                 answers: dict[int, tuple[str, str]], waiting: set[int], reply: Any) -> None:
    waiting.discard(i)
    if isinstance(reply, _Failed) and reply.status == 503:
        answers[-1] = (nick, "")  # not known now: 263 for the nicks asked, no 731
    elif isinstance(reply, _Failed):
        answers[i] = (nick, "offline")
    else:
        conn.known[name_key(reply.name)] = (reply.presence, reply.text)
        answers[i] = (reply.name, reply.presence)
    if not waiting:
        _monitor_answer(conn, answers)


def _monitor_answer(conn: IrcConnection, answers: dict[int, tuple[str, str]]) -> None:
    """730/731 for each nick whose presence is known; 263 after them when WHOIS could
    not reach the broker for some (their status comes with their next presence event,
    or MONITOR S)."""
    for i in sorted(answers):
        if i >= 0:
            conn.monitor_status(*answers[i])
    if -1 in answers:
        conn.tell_try_again("MONITOR")


def cmd_version(conn: IrcConnection, msg: Message) -> None:
    conn.numeric("351", conn.settings.version, conn.settings.server_name, "zchat IRC gateway")


COMMANDS: dict[str, Command] = {
    "AUTHENTICATE": Command(cmd_authenticate, pre_registration=True, min_params=1),
    "AWAY": Command(cmd_away),
    "CAP": Command(cmd_cap, pre_registration=True, min_params=1),
    "CHATHISTORY": Command(cmd_chathistory, min_params=3),
    "INVITE": Command(cmd_invite, min_params=2),
    "ISON": Command(cmd_ison, min_params=1),
    "JOIN": Command(cmd_join, min_params=1),
    "KICK": Command(cmd_kick, min_params=2),
    "LIST": Command(cmd_list),
    "LUSERS": Command(cmd_lusers),
    "MODE": Command(cmd_mode, min_params=1),
    "MONITOR": Command(cmd_monitor, min_params=1),
    "MOTD": Command(cmd_motd),
    "OPER": Command(cmd_oper, min_params=2),
    "TBAN": Command(cmd_tban, min_params=3),
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
