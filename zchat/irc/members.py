"""What the IRC client is shown of the other members of its channels (docs/irc.md,
"Members shown"). Every JOIN of a member joining or coming back, every QUIT and every
away-notify AWAY of another member goes through ``show_presence``, which compares with
what the client was shown at that moment (``Member.presence`` and ``away_text`` of each
channel), so that an event and a resync that both say a change show it once.

Answers the gateway asks for (a resync's WHO, the WHOIS of a joiner whose presence it
does not know) may be older than the events heard while they were on their way: an
open ``watch`` collects what events told meanwhile (``heard``), and those answers leave
it as the events left it. Pure, like the state machine (zchat/irc/state.py)."""

from __future__ import annotations

from zchat import wire as p
from zchat.irc.state import Channel, IrcConnection
from zchat.names import name_key


def membership(room: str, name: str) -> str:
    """The key ``heard`` takes for a membership event (JOINED, LEFT) of ``name`` in
    ``room``; a presence event's is the account's ``name_key``."""
    return f"{name_key(room)} {name_key(name)}"


def watch(conn: IrcConnection) -> set[str]:
    """A new set, filled by ``heard`` until ``unwatch``: the keys of what events told."""
    watching: set[str] = set()
    conn.watches.append(watching)
    return watching


def unwatch(conn: IrcConnection, watching: set[str]) -> None:
    conn.watches = [w for w in conn.watches if w is not watching]


def heard(conn: IrcConnection, key: str) -> None:
    """An event told ``key`` (an account's ``name_key``, or ``membership(room, name)``)."""
    for watching in conn.watches:
        watching.add(key)


def show_presence(conn: IrcConnection, name: str, presence: str, text: str = "",
                  only: Channel | None = None, quit_text: str = "") -> None:
    """``name`` is now ``presence`` ("online", "away", "offline") with away ``text``:
    shown as IRC says it, against what the client was shown of it in each shared
    channel. Offline: one ``QUIT`` (``quit_text``, else "Quit: offline") if it was shown
    in any channel, and offline in all. Online or away: an ``AWAY`` (away-notify) if its
    away state shown changed, then a ``JOIN`` (and ``AWAY`` when away) in each channel
    where it was shown offline; ``only``: in that channel only, the others are left to
    their own resync or event. Nothing when nothing changed."""
    key = name_key(name)
    shared = conn.shares_channel(name)
    shown = [ch for ch in shared if ch.members[key].presence != "offline"]
    if presence == "offline":
        for ch in shared:
            ch.members[key].presence, ch.members[key].away_text = "offline", ""
        if shown:
            conn.send(conn.from_user(shown[0].members[key].nick, "QUIT",
                                     (quit_text or "Quit: offline",)))
        return
    if shown:
        was = shown[0].members[key]
        changed = (was.presence, was.away_text) != (presence, text)
        nick = was.nick
        for ch in shown:
            ch.members[key].presence, ch.members[key].away_text = presence, text
        if changed and "away-notify" in conn.caps:
            conn.send(conn.from_user(nick, "AWAY", (text or "away",) if presence == "away"
                                     else ()))
    for ch in shared:
        if ch in shown or (only is not None and ch is not only):
            continue
        m = ch.members[key]
        m.presence, m.away_text = presence, text
        show_join(conn, ch, m.nick, presence, text)


def show_join(conn: IrcConnection, ch: Channel, nick: str, presence: str = "online",
              text: str = "") -> None:
    """``nick`` JOINs ``ch`` as the client negotiated it (extended-join), then AWAY when
    ``presence`` is away (away-notify). Only ``show_presence`` calls it."""
    if "extended-join" in conn.caps:
        conn.send(conn.from_user(nick, "JOIN", (ch.name, conn.account_of(nick),
                                                conn.real_name(nick))))
    else:
        conn.send(conn.from_user(nick, "JOIN", (ch.name,)))
    if presence == "away" and "away-notify" in conn.caps:
        conn.send(conn.from_user(nick, "AWAY", (text or "away",)))


def show_part(conn: IrcConnection, ch: Channel, key: str) -> None:
    """The member ``key`` is no longer one of ``ch`` (a resync found it gone): ``PART``
    if it was shown there."""
    m = ch.members.pop(key)
    if m.presence != "offline":
        conn.send(conn.from_user(m.nick, "PART", (ch.name,)))


def release_held(conn: IrcConnection, ch: Channel) -> None:
    """The room messages held while a joiner's WHOIS was on its way (``Channel.asking``)
    go out in order once none is, and no playback is pending either."""
    if ch.asking or ch.playback_upto or not ch.held:
        return
    held, ch.held = ch.held, []
    on_posted = conn.events.get(p.MessagePosted)
    for ev in held:
        if on_posted is not None:
            on_posted(conn, ev)

