"""After the gateway's zchat client comes back (ConnectionRestored: a broker restart, a
cluster failover), what its IRC client was shown of each channel's members is brought up
to date, as a bouncer does after it reconnects upstream: PRESENCE events published while
the client was away never reached it (PUB keeps nothing for a subscriber that is not
there), so someone who came online meanwhile was never shown JOINed, someone whose
session did not come back stayed shown for ever, and away texts went stale.

Each joined channel's WHO (docs/PROTOCOL.md §6.11) is compared with what the IRC client
was shown; the differences go out as IRC says them: ``JOIN`` (and ``AWAY`` with
away-notify) for a member now online or away, ``QUIT`` once per nick for one now
offline, ``PART`` for one no longer a member, ``AWAY`` for a changed away state. Pure,
like the state machine (zchat/irc/state.py)."""

from __future__ import annotations

from typing import Any

from zchat.irc import calls as c
from zchat.irc.state import Channel, IrcConnection, Member, _Failed, is_op
from zchat.names import name_key


def resync(conn: IrcConnection) -> None:
    """Ask WHO of every joined channel (background calls: no part of a labeled
    command); ``_resynced`` shows the differences."""
    for key, ch in list(conn.channels.items()):
        conn.call(c.Who(ch.room), _resynced, key, background=True)


def _resynced(conn: IrcConnection, key: str, reply: Any) -> None:
    ch = conn.channels.get(key)
    if ch is None or isinstance(reply, _Failed):
        return  # parted meanwhile; or the broker went again: the next restore asks
    me = name_key(conn.account)
    listed = set()
    for u in reply.users:
        k = name_key(u.name)
        listed.add(k)
        if k == me:
            continue
        conn.known[k] = (u.presence, u.text)
        m = ch.members.get(k)
        if m is None:
            ch.members[k] = m = Member(u.name, "offline", "", is_op(u.role, False))
        before, before_text = m.presence, m.away_text
        if u.presence == "offline":
            if before != "offline":
                _quit(conn, k, m.nick)
            continue
        m.presence, m.away_text = u.presence, u.text
        if before == "offline":
            show_join(conn, ch, m.nick)  # with AWAY when away (conn.known)
        elif "away-notify" in conn.caps and (before, before_text) != (u.presence, u.text):
            away = (u.text or "away",) if u.presence == "away" else ()
            conn.send(conn.from_user(m.nick, "AWAY", away))
    for k in [k for k in ch.members if k not in listed and k != me]:
        m = ch.members.pop(k)
        if m.presence != "offline":
            conn.send(conn.from_user(m.nick, "PART", (ch.name,)))


def _quit(conn: IrcConnection, key: str, nick: str) -> None:
    """One QUIT for ``nick``, and offline in every channel, so that the resync of the
    next channel sends no second one."""
    for other in conn.shares_channel(nick):
        other.members[key].presence, other.members[key].away_text = "offline", ""
    conn.send(conn.from_user(nick, "QUIT", ("Quit: offline",)))


def show_join(conn: IrcConnection, ch: Channel, nick: str) -> None:
    """``nick`` JOINs ``ch`` as the client negotiated it (extended-join), then AWAY when
    away (away-notify). Shared with zchat/irc/events.py."""
    if "extended-join" in conn.caps:
        conn.send(conn.from_user(nick, "JOIN", (ch.name, conn.account_of(nick),
                                                conn.real_name(nick))))
    else:
        conn.send(conn.from_user(nick, "JOIN", (ch.name,)))
    presence, text = conn.known.get(name_key(nick), ("online", ""))
    if presence == "away" and "away-notify" in conn.caps:
        conn.send(conn.from_user(nick, "AWAY", (text or "away",)))
