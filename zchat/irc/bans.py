"""Channel bans of a connection (zchat/irc/state.py) onto zchat's BAN, UNBAN and BANS
(docs/PROTOCOL.md §6.31, §6.32, §6.40): the ``b`` list mode of MODE (ISUPPORT
``CHANMODES=b,,,imnt``) and InspIRCd's timed bans, ``TBAN <channel> <duration> <mask>``
(docs/irc.md, "Bans"). Pure, like the state machine.

A zchat ban is of an account, so a mask must name one: ``nick``, ``nick!*@*`` or
``nick!user@host`` (any user and host: every user of the gateway is ``@zchat``). A mask
with a wildcard in its nick part, or none (``*!*@host``), names no single account and is
refused with 696 ERR_INVALIDMODEPARAM; nothing changes.
"""

from __future__ import annotations

import re
from typing import Any

from zchat.irc import calls as c
from zchat.irc.codec import Message
from zchat.irc.state import IrcConnection, _Failed, room_of, valid_nick
from zchat.names import name_key

#: The longest ban BAN takes (``duration_s`` 0–316,224,000: ten years, §6.31).
MAX_BAN_S = 316_224_000
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31_536_000}
_DURATION = re.compile(r"(?:\d+[smhdwy])+|\d+")


def ban_target(mask: str) -> str | None:
    """The account a ban mask names (its nick part), or None when it names no single
    account: a wildcard (``*``, ``?``) in the nick part, no nick part (``*@host``), or
    a nick that is no zchat name."""
    nick, bang, rest = mask.partition("!")
    if not bang and "@" in mask:
        return None
    if bang and "@" not in rest:
        return None
    if not nick or "*" in nick or "?" in nick or not valid_nick(nick):
        return None
    return nick


def ban_mask(name: str) -> str:
    """The mask shown for a ban of the account ``name`` (367, MODE +b)."""
    return f"{name}!*@*"


def parse_duration(text: str) -> int:
    """InspIRCd's duration form as seconds: ``30s``, ``10m``, ``2h``, ``1d``, ``1w``,
    ``1y``, sums of them (``1h30m``), or plain seconds (``90``). Raises ValueError for
    anything else, for 0, and past MAX_BAN_S."""
    text = text.strip().lower()
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 10m, 2h, 1d, 1h30m)")
    if text.isdigit():
        seconds = int(text)
    else:
        seconds = sum(int(n) * _UNITS_S[u] for n, u in re.findall(r"(\d+)([smhdwy])", text))
    if seconds <= 0:
        raise ValueError("a timed ban lasts at least 1 s")
    if seconds > MAX_BAN_S:
        raise ValueError(f"a ban lasts at most {MAX_BAN_S} s (ten years)")
    return seconds


def list_bans(conn: IrcConnection, name: str, room: str) -> None:
    # MODE <channel> b   (or +b with no mask): 367 per ban, then 368
    conn.call(c.ListBans(room), _ban_list, name)


def _ban_list(conn: IrcConnection, name: str, reply: Any) -> None:
    if conn.try_again("MODE", reply):
        conn.numeric("368", name, "End of channel ban list")
        return
    if isinstance(reply, _Failed):
        if reply.status == 404:
            conn.numeric("403", name, "No such channel")
        elif reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        else:
            conn.fail("MODE", "CANNOT_LIST_BANS", name, f"{reply.reason} ({reply.status})")
        return
    for b in reply.bans:
        if b.kind == "ban":
            conn.numeric("367", name, ban_mask(b.name), b.by, str(b.created // 1000))
    conn.numeric("368", name, "End of channel ban list")


def set_ban(conn: IrcConnection, name: str, room: str, mask: str, adding: bool,
            duration_s: int = 0, command: str = "MODE") -> None:
    """``+b mask`` (BAN for ``duration_s``, 0 until lifted) or ``-b mask`` (UNBAN) in
    ``room`` (IRC channel ``name``)."""
    nick = ban_target(mask)
    if nick is None:
        conn.numeric("696", name, "b", mask, "A zchat ban is of one account: give a nick "
                     "or nick!*@* (no wildcards in the nick)")
        return
    key = (name_key(room), name_key(nick))
    if adding:
        conn._bans_pending.add(key)
        conn.call(c.Ban(room, nick, duration_s), _ban_done, name, nick, True, duration_s,
                  command)
    else:
        conn.call(c.Unban(room, nick), _ban_done, name, nick, False, 0, command)


def _ban_done(conn: IrcConnection, name: str, nick: str, adding: bool, duration_s: int,
              command: str, reply: Any) -> None:
    room_key = name_key(name[1:])
    key = (room_key, name_key(nick))
    if adding:
        conn._bans_pending.discard(key)
    if conn.try_again(command, reply):
        return
    if isinstance(reply, _Failed):
        if reply.status == 403:
            conn.numeric("482", name, f"You're not channel operator ({reply.reason})")
        elif reply.status == 404 and "room" in reply.reason:
            conn.numeric("403", name, "No such channel")
        elif reply.status == 404:
            conn.numeric("401", nick, f"No such nick/channel ({reply.reason})")
        elif reply.status == 400:
            conn.numeric("696", name, "b", ban_mask(nick), reply.reason)
        else:
            conn.fail(command, "CANNOT_SET_MODE", name, f"{reply.reason} ({reply.status})")
        return
    ch = conn.channels.get(room_key)
    shown = ch.members[name_key(nick)].nick if ch and name_key(nick) in ch.members \
        else nick
    if adding and key in conn._bans_shown:  # the LEFT of this ban came first, showed it
        conn._bans_shown.discard(key)
    else:
        conn.send(conn.from_user(conn.nick, "MODE", (ch.name if ch else name,
                                                     "+b" if adding else "-b",
                                                     ban_mask(shown))))
        if adding and ch is not None and name_key(nick) in ch.members:
            conn._bans_shown.add(key)  # its LEFT is still to come: no second MODE
    if command == "TBAN":  # as InspIRCd, which tells the channel's operators
        conn.send(Message("NOTICE", (conn.nick, f"Timed ban of {ban_mask(shown)} in "
                                     f"{name} for {duration_s} s: it lapses by itself"),
                          source=conn.settings.server_name))


def cmd_tban(conn: IrcConnection, msg: Message) -> None:
    # TBAN <channel> <duration> <mask>   (InspIRCd's m_timedbans form)
    name, duration, mask = msg.params[0], msg.params[1], msg.params[2]
    room = room_of(name)
    if room is None:
        conn.numeric("403", name, "No such channel")
        return
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        conn.fail("TBAN", "INVALID_PARAMS", duration, str(exc))
        return
    set_ban(conn, name, room, mask, True, seconds, command="TBAN")
