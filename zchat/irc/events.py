"""What a connection shows of each zchat event (zchat/irc/state.py): one function per
event type, ``EVENTS`` maps each type to it. Pure, like the state machine."""

from __future__ import annotations

from collections.abc import Callable
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
from zchat.irc import calls as c
from zchat.irc.codec import Message
from zchat.irc.members import (
    heard,
    membership,
    release_held,
    show_presence,
    unwatch,
    watch,
)
from zchat.irc.resync import resync
from zchat.irc.state import Channel, IrcConnection, Member, _Failed
from zchat.names import name_key


def _on_posted(conn: IrcConnection, ev: p.MessagePosted) -> None:
    ch = conn.channels.get(name_key(ev.room))
    if ch is None:
        return
    if ch.playback_upto or ch.asking:  # after the playback on JOIN (state.py,
        ch.held.append(ev)              # _played_back), or a joiner's WHOIS (_found)
        return
    if name_key(ev.sender) != name_key(conn.account) and conn.presence_unsure:
        _posted_while_unsure(conn, ch, ev.sender)
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


def _posted_while_unsure(conn: IrcConnection, ch: Channel, sender: str) -> None:
    """A message (live, or backfilled after a reconnect) from a member shown offline
    or absent while PRESENCE events may have been missed (``presence_unsure``): the
    sender is evidently there, so shown JOINed first; the resync's WHO then confirms it
    (no second JOIN) or QUITs it."""
    key = name_key(sender)
    m = ch.members.get(key)
    if m is not None and m.presence != "offline":
        return
    if m is None:
        ch.members[key] = Member(sender, "offline")
    presence, text = conn.known.get(key, ("online", ""))
    if presence == "offline":
        presence, text = "online", ""
    show_presence(conn, sender, presence, text, only=ch)


def _on_dm(conn: IrcConnection, ev: p.DirectMessage) -> None:
    tags = conn.tags_for(ev.sender, ev.time, f"dm/{ev.id}")
    extra = conn.relays.find(f"dm/{ev.id}", ("dm", name_key(ev.sender), name_key(ev.to),
                                             ev.text))
    command = "NOTICE" if ev.notice else "PRIVMSG"
    if name_key(ev.sender) == name_key(conn.account):  # sent from another device
        conn.deliver_text(conn.nick, command, ev.to, ev.text, "text", tags, extra)
    else:
        conn.deliver_text(ev.sender, command, conn.nick, ev.text, "text", tags, extra)


def _on_joined(conn: IrcConnection, ev: p.UserJoined) -> None:
    ch = conn.channels.get(name_key(ev.room))
    key = name_key(ev.name)
    if ch is None or key == name_key(conn.account):
        return
    heard(conn, membership(ev.room, ev.name))
    m = ch.members.get(key)
    if m is not None and m.presence != "offline":
        return
    if m is None:  # offline until known otherwise: not shown, as NAMES does not
        ch.members[key] = Member(ev.name, "offline")
    state = conn.known.get(key)
    if state is not None:
        show_presence(conn, ev.name, *state, only=ch)  # offline: nothing shown
        return
    # a one-shot CLI session joins and posts without announcing presence (docs/
    # PROTOCOL.md §6.3): the broker says whether it is online
    ch.asking += 1
    conn.call(c.Whois(ev.name), _found, ch, ev.name, watch(conn), background=True)


def _found(conn: IrcConnection, ch: Channel, name: str, watching: set[str],
           reply: Any) -> None:
    """WHOIS of a joiner (``_on_joined``): JOIN shown if online or away, unless an
    event told meanwhile (newer); then the room's messages held meanwhile."""
    unwatch(conn, watching)
    ch.asking -= 1
    key = name_key(name)
    if conn.channels.get(name_key(ch.room)) is not ch:
        return  # parted meanwhile
    if not isinstance(reply, _Failed) and key in ch.members and key not in watching \
            and membership(ch.room, name) not in watching:
        conn.known[key] = (reply.presence, reply.text)
        show_presence(conn, name, reply.presence, reply.text, only=ch)
    release_held(conn, ch)


def _on_left(conn: IrcConnection, ev: p.UserLeft) -> None:
    ch = conn.channels.get(name_key(ev.room))
    key = name_key(ev.name)
    if ch is None:
        return
    if ev.ban and ev.by:
        _show_ban(conn, ch, ev)
    if key == name_key(conn.account):
        if ev.by and name_key(ev.by) != key:  # we were kicked or banned
            del conn.channels[name_key(ev.room)]
            conn.send(conn.from_user(ev.by, "KICK", (ch.name, conn.nick, ev.reason or ev.by)))
        return
    heard(conn, membership(ev.room, ev.name))
    if (name_key(ev.room), key) in conn._own_kicks:
        conn._own_kicks.discard((name_key(ev.room), key))
        return
    m = ch.members.pop(key, None)
    if m is None:
        return
    if ev.by and name_key(ev.by) != key:
        conn.send(conn.from_user(ev.by, "KICK", (ch.name, m.nick, ev.reason or ev.by)))
    else:
        conn.send(conn.from_user(m.nick, "PART", (ch.name, ev.reason) if ev.reason
                                 else (ch.name,)))


def _show_ban(conn: IrcConnection, ch: Channel, ev: p.UserLeft) -> None:
    """A ban is ``MODE #room +b nick!*@*`` from the banner, then the KICK the LEFT is
    (docs/irc.md, "Bans"); a ban of this connection's own shows its MODE once, whether
    this LEFT or BAN's answer comes first (zchat/irc/bans.py)."""
    key = (name_key(ev.room), name_key(ev.name))
    if key in conn._bans_shown:  # BAN's answer came first and showed it
        conn._bans_shown.discard(key)
        return
    if key in conn._bans_pending:
        conn._bans_shown.add(key)
    m = ch.members.get(name_key(ev.name))
    conn.send(conn.from_user(ev.by, "MODE", (ch.name, "+b",
                                             f"{m.nick if m else ev.name}!*@*")))


def _on_presence(conn: IrcConnection, ev: p.PresenceChanged) -> None:
    key = name_key(ev.name)
    own = key == name_key(conn.account)
    shared = [] if own else conn.shares_channel(ev.name)
    # Kept only for the accounts this connection cares about (its own, members of its
    # channels, its MONITOR list, and any already known, so that none goes stale):
    # every connection hears every account's presence, and keeping all of them made a
    # gateway's memory grow with the square of its connections (benchmarks/irc.py).
    if own or shared or key in conn.known or key in conn.monitored:
        conn.known[key] = (ev.presence, ev.text)
    heard(conn, key)
    if shared:
        show_presence(conn, ev.name, ev.presence, ev.text,
                      quit_text=f"Quit: {ev.text}" if ev.text else "")


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
    # a PART of our own, not a KICK: IRC clients (irssi, WeeChat) rejoin after a KICK,
    # and that JOIN would create a new, empty room of the name (docs/irc.md)
    ch = conn.channels.pop(name_key(ev.room), None)
    if ch is not None:
        why = f"room deleted by {ev.by}" + (f": {ev.reason}" if ev.reason else "")
        conn.send(conn.from_user(conn.nick, "PART", (ch.name, why)))
        conn.send(Message("NOTICE", (conn.nick, f"{ch.name} was deleted by {ev.by}"
                                     + (f": {ev.reason}" if ev.reason else "")
                                     + "; JOIN it again to create a new, empty room"),
                          source=conn.settings.server_name))


def _on_session_ended(conn: IrcConnection, ev: SessionEnded) -> None:
    conn.send(Message("ERROR", (f"Closing link: zchat session ended ({ev.reason})",)))
    conn._close("session ended")


def _on_connection(conn: IrcConnection, ev: Any) -> None:
    text = {ConnectionLost: "lost the zchat broker; reconnecting",
            ConnectionRestored: "back with the zchat broker",
            Reconnecting: ""}.get(type(ev), "")
    if text:
        conn.send(Message("NOTICE", (conn.nick, text), source=conn.settings.server_name))
    if isinstance(ev, ConnectionLost):
        conn.presence_unsure = True  # until the resync after the restore is answered
    if isinstance(ev, ConnectionRestored):
        resync(conn)  # the PRESENCE events of meanwhile were lost (zchat/irc/resync.py)


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
