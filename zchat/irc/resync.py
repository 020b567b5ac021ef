"""After the gateway's zchat client comes back (ConnectionRestored: a broker restart, a
cluster failover), what its IRC client was shown of each channel's members is brought up
to date, as a bouncer does after it reconnects upstream: PRESENCE events published while
the client was away never reached it (PUB keeps nothing for a subscriber that is not
there), so someone who came online meanwhile was never shown JOINed, someone whose
session did not come back stayed shown for ever, and away texts went stale.

Each joined channel's WHO (docs/PROTOCOL.md §6.11) is compared with what the IRC client
was shown; the differences go out as IRC says them: ``JOIN`` (and ``AWAY`` with
away-notify) for a member now online or away, ``QUIT`` once per nick for one now
offline, ``PART`` for one no longer a member, ``AWAY`` for a changed away state, each
through zchat/irc/members.py, which shows a change only if the client was not shown it
already. A WHO answer may be older than the events heard while it was on its way: it
leaves the members those told of as they left them. Pure, like the state machine
(zchat/irc/state.py). Each channel's topic and modes are read again too (ROOM_INFO,
§6.51): a change made while the client was away is shown as TOPIC / MODE from the
server."""

from __future__ import annotations

from typing import Any

from zchat.irc import calls as c
from zchat.irc.codec import Message
from zchat.irc.members import membership, show_part, show_presence, unwatch, watch
from zchat.irc.state import IrcConnection, Member, _Failed, is_op
from zchat.names import name_key


def resync(conn: IrcConnection) -> None:
    """Ask WHO of every joined channel (background calls: no part of a labeled
    command), each with a watch of the events heard meanwhile; ``_resynced`` shows the
    differences. A resync asked again supersedes the one in flight."""
    for watching in conn.resyncs.values():
        unwatch(conn, watching)
    conn.resyncs = {}
    for key, ch in list(conn.channels.items()):
        conn.resyncs[key] = watching = watch(conn)
        conn.call(c.Who(ch.room), _resynced, key, watching, background=True)
        conn.call(c.RoomInfo(ch.room), _room_resynced, key, ch.topic, ch.private,
                  ch.locked, background=True)
    if not conn.resyncs:
        conn.presence_unsure = False


def _resynced(conn: IrcConnection, key: str, watching: set[str], reply: Any) -> None:
    if conn.resyncs.get(key) is not watching:
        return  # superseded by a newer resync
    del conn.resyncs[key]
    unwatch(conn, watching)
    if not conn.resyncs:
        conn.presence_unsure = False
    ch = conn.channels.get(key)
    if ch is None or isinstance(reply, _Failed):
        return  # parted meanwhile; or the broker went again: the next restore asks
    me = name_key(conn.account)
    listed = set()
    for u in reply.users:
        k = name_key(u.name)
        listed.add(k)
        if k == me or membership(ch.room, k) in watching:
            continue  # a JOINED or LEFT heard meanwhile is newer
        if k not in ch.members:
            ch.members[k] = Member(u.name, "offline", "", is_op(u.role, False))
        if k in watching:  # a PRESENCE heard meanwhile is newer: as it said
            presence, text = conn.known.get(k, (u.presence, u.text))
        else:
            presence, text = conn.known[k] = (u.presence, u.text)
        show_presence(conn, u.name, presence, text, only=ch)
    for k in [k for k in ch.members if k not in listed and k != me
              and membership(ch.room, k) not in watching]:
        show_part(conn, ch, k)


def _room_resynced(conn: IrcConnection, key: str, topic: str, private: bool,
                   locked: bool, reply: Any) -> None:
    """The room's topic and modes as ROOM_INFO tells them after the reconnect: a TOPIC
    or ROOM_MODE event published while the client was away never reached it (a third
    tester's topic change went unseen, and TOPIC kept answering the old one). Shown
    from the server, since who changed it is not known; a value changed by an event
    heard since the call was made is newer and kept."""
    ch = conn.channels.get(key)
    if ch is None or isinstance(reply, _Failed):
        return
    server = conn.settings.server_name
    if ch.topic == topic and reply.topic != ch.topic:
        ch.topic = reply.topic
        conn.send(Message("TOPIC", (ch.name, reply.topic), source=server))
    for mode, then, now in (("i", private, reply.private), ("m", locked, reply.locked)):
        shown = ch.private if mode == "i" else ch.locked
        if shown == then and now != shown:
            if mode == "i":
                ch.private = now
            else:
                ch.locked = now
            conn.send(Message("MODE", (ch.name, ("+" if now else "-") + mode),
                              source=server))
