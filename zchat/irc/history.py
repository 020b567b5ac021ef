"""CHATHISTORY (IRCv3 draft/chathistory, https://ircv3.net/specs/extensions/chathistory)
onto zchat's HISTORY and DM_HISTORY: the newest HISTORY_WINDOW messages of the room or
the conversation are fetched in one call, and the selection (LATEST, BEFORE, AFTER,
AROUND, BETWEEN, by msgid or timestamp) is made here, purely, over that window.

msgid is ``room/seq`` for a room message and ``dm/id`` for a DM (state.py gives the same
on live messages); timestamps are the broker's times (server-time).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zchat import wire as p
from zchat.irc import calls as c
from zchat.irc.codec import Message
from zchat.irc.state import _time_tag, room_of, valid_nick
from zchat.names import name_key

#: Messages of one target CHATHISTORY looks at: the newest ones, one HISTORY page.
HISTORY_WINDOW = p.MAX_HISTORY_LIMIT
#: The largest limit a client may ask (ISUPPORT CHATHISTORY).
MAX_LIMIT = 100
SUBCOMMANDS = ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN")


@dataclass(frozen=True)
class Item:
    """One message of the window: its time (ms), msgid, and what to show."""

    time_ms: int
    msgid: str
    sender: str
    target: str
    text: str
    kind: str = "text"
    notice: bool = False  # shown as NOTICE (docs/PROTOCOL.md §6.8)


class BadRef(ValueError):
    """A reference that is neither ``*``, ``msgid=…`` nor ``timestamp=…``."""


def parse_timestamp(text: str) -> int:
    """``2026-01-01T00:00:00.000Z`` as ms since the epoch. Raises BadRef."""
    try:
        when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        try:
            when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise BadRef(text) from None
    return int(when.replace(tzinfo=datetime.UTC).timestamp() * 1000)


def _bounds(items: Sequence[Item], ref: str) -> tuple[int, int] | None:
    """(end of the items strictly before ``ref``, start of those strictly after), or None
    for a msgid not in the window."""
    kind, _, value = ref.partition("=")
    if kind == "msgid":
        for i, item in enumerate(items):
            if item.msgid == value:
                return i, i + 1
        return None
    if kind == "timestamp":
        ts = parse_timestamp(value)
        return (sum(1 for it in items if it.time_ms < ts),
                sum(1 for it in items if it.time_ms <= ts))
    raise BadRef(ref)


def select(items: Sequence[Item], sub: str, refs: Sequence[str], limit: int) -> list[Item]:
    """The items CHATHISTORY ``sub`` with ``refs`` answers, oldest first (``items`` are
    oldest first). Raises BadRef."""
    if sub == "LATEST":
        if refs[0] == "*":
            return list(items[-limit:]) if limit else []
        b = _bounds(items, refs[0])
        return [] if b is None else list(items[b[1]:][-limit:])
    b = _bounds(items, refs[0])
    if b is None:
        return []
    if sub == "BEFORE":
        return list(items[:b[0]][-limit:])
    if sub == "AFTER":
        return list(items[b[1]:][:limit])
    if sub == "AROUND":
        start = max(0, b[0] - limit // 2)
        return list(items[start:start + limit])
    # BETWEEN: exclusive bounds, nearest the first one
    b2 = _bounds(items, refs[1])
    if b2 is None:
        return []
    if b[1] <= b2[1]:
        return list(items[b[1]:b2[0]][:limit])
    return list(items[b2[1]:b[0]][-limit:])


def cmd_chathistory(conn: Any, msg: Message) -> None:
    # CHATHISTORY <subcommand> <target> <ref> [<ref>] <limit>
    sub = msg.params[0].upper()
    if sub == "TARGETS":
        cmd_targets(conn, msg)
        return
    if sub not in SUBCOMMANDS:
        conn.fail("CHATHISTORY", "INVALID_PARAMS", sub, "Unknown subcommand")
        return
    need = 5 if sub == "BETWEEN" else 4
    if len(msg.params) < need or not msg.params[need - 1].isdigit():
        conn.fail("CHATHISTORY", "INVALID_PARAMS", sub, "Wrong parameters")
        return
    target, refs, limit = msg.params[1], msg.params[2:need - 1], int(msg.params[need - 1])
    limit = min(limit, MAX_LIMIT)
    if target.startswith("#"):
        room = room_of(target)
        if room is None or name_key(room) not in conn.channels:
            conn.fail("CHATHISTORY", "INVALID_TARGET", sub, target, "No such channel "
                      "joined")
            return
        conn.call(c.History(room, HISTORY_WINDOW), _answer, sub, target, refs, limit)
    elif valid_nick(target):
        conn.call(c.DmHistory(target, HISTORY_WINDOW), _answer, sub, target, refs, limit)
    else:
        conn.fail("CHATHISTORY", "INVALID_TARGET", sub, target, "No such target")


def items_of(reply: Any) -> list[Item]:
    if isinstance(reply, p.HistoryPage):
        return [Item(m.time, f"{name_key(m.room)}/{m.seq}", m.sender, "#" + m.room, m.text,
                     m.kind, m.notice) for m in reply.messages if not m.deleted_by]
    return [Item(m.time, f"dm/{m.id}", m.sender, m.to, m.text, notice=m.notice)
            for m in reply.messages]


def _answer(conn: Any, sub: str, target: str, refs: list[str], limit: int,
            reply: Any) -> None:
    if conn.try_again("CHATHISTORY", reply):
        return
    if getattr(reply, "status", None) is not None:  # _Failed
        conn.fail("CHATHISTORY", "INVALID_TARGET", sub, target, reply.reason)
        return
    try:
        chosen = select(items_of(reply), sub, refs, limit)
    except BadRef:
        conn.fail("CHATHISTORY", "INVALID_PARAMS", sub, "Bad message reference")
        return
    src = conn.settings.server_name
    conn._batches += 1
    ref = f"ch{conn._batches}"
    conn.send(Message("BATCH", ("+" + ref, "chathistory", target), source=src))
    for item in chosen:
        tags = {**conn.tags_for(item.sender, item.time_ms, item.msgid), "batch": ref}
        conn.deliver_text(item.sender, "NOTICE" if item.notice else "PRIVMSG", item.target,
                          item.text, item.kind, tags)
    conn.send(Message("BATCH", ("-" + ref,), source=src))


def cmd_targets(conn: Any, msg: Message) -> None:
    # CHATHISTORY TARGETS <timestamp> <timestamp> <limit>
    # The targets this connection knows of whose newest message is strictly between the
    # two times, oldest newest-message first, at most <limit>, as `CHATHISTORY TARGETS
    # <target> <time>` lines in a draft/chathistory-targets batch. The targets are the
    # joined channels and the DM conversations known to the connection (the unread ones
    # at login, every DM since: zchat has no list of an account's conversations), each
    # asked for its newest message (HISTORY or DM_HISTORY of one): one call per target.
    params = msg.params
    if len(params) < 4 or not params[3].isdigit():
        conn.fail("CHATHISTORY", "INVALID_PARAMS", "TARGETS", "Wrong parameters: "
                  "TARGETS <timestamp> <timestamp> <limit>")
        return
    try:
        times = [parse_timestamp(ref.partition("=")[2]) if ref.startswith("timestamp=")
                 else _bad(ref) for ref in params[1:3]]
    except BadRef:
        conn.fail("CHATHISTORY", "INVALID_PARAMS", "TARGETS", "Bad timestamp (TARGETS "
                  "takes timestamp=YYYY-MM-DDThh:mm:ss.sssZ)")
        return
    low, high = min(times), max(times)
    limit = min(int(params[3]), MAX_LIMIT)
    found: dict[str, tuple[int, str]] = {}
    waiting: set[str] = set()
    asks: list[tuple[str, c.Request]] = []
    for key, ch in conn.channels.items():
        asks.append(("#" + key, c.History(ch.room, 1)))
    for key, peer in conn.dm_peers.items():
        asks.append(("@" + key, c.DmHistory(peer, 1)))
    if not asks:
        _targets_answer(conn, found, low, high, limit)
        return
    waiting.update(tag for tag, _ in asks)
    for tag, request in asks:
        conn.call(request, _target_newest, tag, found, waiting, (low, high, limit))


def _bad(ref: str) -> int:
    raise BadRef(ref)


def _target_newest(conn: Any, tag: str, found: dict[str, tuple[int, str]],
                   waiting: set[str], bounds: tuple[int, int, int], reply: Any) -> None:
    waiting.discard(tag)
    if getattr(reply, "status", None) == 503:  # _Failed: not known now, no false list
        found["!"] = (0, "")
    elif isinstance(reply, p.HistoryPage) and reply.messages:
        found[tag] = (reply.messages[-1].time, "#" + reply.room)
    elif isinstance(reply, p.DmHistoryPage) and reply.messages:
        found[tag] = (reply.messages[-1].time, reply.peer)
    if not waiting:
        if "!" in found:
            conn.tell_try_again("CHATHISTORY")
            return
        _targets_answer(conn, found, *bounds)


def _targets_answer(conn: Any, found: dict[str, tuple[int, str]], low: int, high: int,
                    limit: int) -> None:
    chosen = sorted(v for v in found.values() if low < v[0] < high)[:limit]
    src = conn.settings.server_name
    conn._batches += 1
    ref = f"ch{conn._batches}"
    conn.send(Message("BATCH", ("+" + ref, "draft/chathistory-targets"), source=src))
    for time_ms, target in chosen:
        conn.send(Message("CHATHISTORY", ("TARGETS", target, _time_tag(time_ms)),
                          source=src, tags={"batch": ref}))
    conn.send(Message("BATCH", ("-" + ref,), source=src))
