"""Rooms and their messages: JOIN, PART, ROOMS, ROOM_INFO, SEND, HISTORY, MARK_READ and
SET_TOPIC (docs/PROTOCOL.md §6.5-§6.9, §6.22, §6.49, §6.51)."""

from __future__ import annotations

import logging
import re

from zchat import wire as p
from zchat.core.actions import Action
from zchat.core.context import Call, Core
from zchat.core.delivery import message_of
from zchat.core.state import Session
from zchat.core.validation import check_away_text, check_topic
from zchat.errors import ProtocolError, Status
from zchat.names import (
    mention_words,
    name_key,
    normalize_name,
    normalize_new_name,
    skeleton,
    validate_text,
)

log = logging.getLogger("zchat.broker")

#: Up to this many members, SEND first searches the folded text for any member's name with
#: one regular expression per room (rebuilt when the members change; ~0.1 µs for 50
#: members, where testing each name as a substring took ~5 µs) before it cuts the text into
#: words for mentions (docs/PROTOCOL.md §6.49.2); beyond it, the words are cut at once
#: (~2.5 µs, whatever the room's size).
MENTION_SCAN_MEMBERS = 64


def mentioned(core: Core, key: str, text: str, sender_key: str) -> tuple[str, ...]:
    """The members of room ``key`` other than the sender that ``text`` mentions
    (docs/PROTOCOL.md §6.49.2), sorted; () in a room with nobody else in it."""
    members = core.members.get(key, ())
    if len(members) < 2:
        return ()
    if len(members) <= MENTION_SCAN_MEMBERS:
        # Most messages name nobody: one search for any member's name in the folded
        # text rules that out at a twentieth of the cost of cutting it into words.
        scan = core.state.mention_scans.get(key)
        if scan is None:
            scan = core.state.mention_scans[key] = re.compile("|".join(
                re.escape(k) for k in sorted(members, key=len, reverse=True)))
        if scan.search(name_key(text)) is None:
            return ()
    mentioned = mention_words(text).intersection(members)
    mentioned.discard(sender_key)
    return tuple(sorted(mentioned))


def join(core: Core, call: Call, session: Session, req: p.Join) -> list[Action]:
    name = normalize_name(req.room, "room name")
    key = name_key(name)
    me = session.account_key
    # §17.2: to an outsider a private room does not exist; its name is taken, though,
    # so JOIN answers as for a name too like an existing room's (the store's 409)
    hidden = key in core.private and not core.knows_room(key, me)
    if key not in core.rooms or hidden:  # creating it: a new name's rules too (§12)
        normalize_new_name(name, "room name")
    invited = False
    if me not in core.members.get(key, ()):
        # docs/PROTOCOL.md §15: joining costs a token of the sending bucket, and an
        # account is in at most MAX_ROOMS_PER_ACCOUNT rooms, so that a JOIN flood
        # cannot grow the rooms (and every PONG, which lists them) without bound.
        if core.sending_limited:
            core.limit_send(session, call.now_s)
        if len(core.rooms_of.get(me, ())) >= p.MAX_ROOMS_PER_ACCOUNT:
            raise ProtocolError(Status.FORBIDDEN, f"you are in {p.MAX_ROOMS_PER_ACCOUNT}"
                                " rooms, the most an account may be in; PART one first")
    if hidden:
        raise ProtocolError(Status.CONFLICT, f"a room named like {name!r} exists already")
    if key not in core.rooms and me not in core.admins:
        # §15: creating rooms is limited per account, in rate and in number
        made = core.rooms_created.get(me, 0)
        if 0 < core.config.max_rooms_created <= made:
            raise ProtocolError(Status.FORBIDDEN, f"you have created {made} rooms, the "
                                "most an account may; DELETE_ROOM one of them first")
        core.limit_account(session, "room", call.now_s)
    if key in core.rooms and me not in core.members.get(key, ()):
        # docs/PROTOCOL.md §17: a ban keeps out; a private room needs an invitation
        # (but for admins and its owner, §17.2); any JOIN uses the invitation up,
        # public room or not, so that it cannot serve again once the room is private
        core.check_not_banned(key, me, call.now_ms)
        invited = core.store.has_invite(key, me)
        if key in core.private and not invited and me not in core.admins \
                and core.roles.get(key, {}).get(me) != "owner":
            raise ProtocolError(Status.FORBIDDEN, f"#{core.rooms[key]} is "
                                "invite-only: ask one of its moderators to invite you")
    with core.store.transaction():
        room, created, joined = core.store.join_room(key, name, skeleton(name), me,
                                                     call.now_ms, private=req.private)
        if invited:
            core.store.take_invite(key, me)
    core.state.room_joined(key, room.name, room.last_seq, room.topic, me, created,
                           req.private)
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.RoomJoined(
        room=room.name, last_seq=room.last_seq, created=created, topic=room.topic,
        slow_mode_s=core.slow_mode.get(key, 0), private=key in core.private,
        locked=key in core.locked, first_seq=core.first_seq.get(key, 1)))]
    if joined:
        actions += core.deliver.room_event(key, p.UserJoined(room=room.name, name=session.name,
                                                      time=call.now_ms))
    return actions


def part(core: Core, call: Call, session: Session, req: p.Part) -> list[Action]:
    """PART room [reason] (§6.6): leave, then LEFT on the room with the reason. The
    reason is checked like a quit message (413 over 200 characters, 422 a control
    character or a line break) before anything changes, and dropped (the PART goes
    through) while the account is muted in the room or server-wide: it is speech."""
    key = core.room_key(req.room, session)
    reason = check_away_text(p.given(req.reason, ""), "part reason")
    if reason and any(core.active_ban("mute", k, session.account_key, call.now_ms)
                      for k in (key, "")):
        reason = ""
    if not core.store.leave_room(key, session.account_key):
        raise ProtocolError(Status.FORBIDDEN, f"you are not in {core.rooms[key]!r}")
    if core.store.has_invite(key, session.account_key):  # §6.6: none outlives a stay
        core.store.take_invite(key, session.account_key)
    left = p.UserLeft(room=core.rooms[key], name=session.name, time=call.now_ms,
                      reason=reason)
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.Ok()),
                             *core.deliver.room_event(key, left, (session.account_key,))]
    core.state.forget_member(key, session.account_key)
    return actions


def list_rooms(core: Core, call: Call, session: Session, req: p.ListRooms) -> list[Action]:
    me = session.account_key
    rooms = tuple(p.RoomInfo(room=r.name, members=r.members, last_seq=r.last_seq,
                             joined=me in core.members.get(r.key, ()),
                             topic=r.topic, slow_mode_s=core.slow_mode.get(r.key, 0),
                             private=r.key in core.private, locked=r.key in core.locked)
                  for r in core.store.list_rooms()
                  if r.key not in core.private or me in core.admins
                  or me in core.members.get(r.key, ()))
    return [core.ok(call.rid, call.request_id, p.RoomList(rooms=rooms))]


def room_info(core: Core, call: Call, session: Session, req: p.FetchRoom) -> list[Action]:
    """ROOM_INFO (docs/PROTOCOL.md §6.51): one room's state, read without joining
    it, so that reading a room (its topic, as HISTORY its messages and WHO its
    members) changes nothing and announces nobody. 404 no such room (none is
    created), 422 a bad name, 403 a private room the account is not in (admins may
    read it, §17.2)."""
    key = core.room_key(req.room, session)
    core.check_may_read(key, session)
    return [core.ok(call.rid, call.request_id, p.RoomDetails(
        room=core.rooms[key], members=len(core.members.get(key, ())),
        last_seq=core.last_seq[key], joined=session.account_key in core.members.get(key, ()),
        topic=core.topics[key], slow_mode_s=core.slow_mode.get(key, 0),
        private=key in core.private, locked=key in core.locked))]


def send(core: Core, call: Call, session: Session, req: p.Send) -> list[Action]:
    """SEND room text [kind] [cmid] [notice] (§6.8): store, publish on the room, then OK.
    The sending limit is taken first (the request table's ``sends``). A notice is
    stored with the ``kind`` "notice"; one that is an action is 400."""
    notice = p.given(req.notice, False)
    if notice and req.kind != "text":
        raise ProtocolError(Status.BAD_REQUEST, "a notice is text: kind must be \"text\"")
    key = core.room_key(req.room, session)
    if session.account_key not in core.members[key]:
        raise ProtocolError(Status.FORBIDDEN,
                            f"you are not in {core.rooms[key]!r}; JOIN it first")
    if len(req.cmid) > p.MAX_CMID_CHARS:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"cmid longer than {p.MAX_CMID_CHARS} characters")
    text = validate_text(req.text, core.config.max_text_bytes,
                         core.config.max_text_lines)
    core.check_may_post(key, session, call.now_ms)
    if core.slow_mode.get(key):
        core.check_slow_mode(key, session, call.now_s)
    me = session.account_key
    used = core.storage_used
    size = (len(text) if text.isascii() else len(text.encode())) if used is not None else 0
    posted = None
    if used is not None and core.over_quota(me, used, size):
        # a retry of a message stored before the quota filled is still answered
        posted = core.store.message_by_cmid(key, session.name, req.cmid) \
            if req.cmid else None
        if posted is None:
            raise core.quota_full(me, used, size)
    if posted is None:
        posted = core.store.post_message(key, session.name,
                                         "notice" if notice else req.kind, text, req.cmid,
                                         call.now_ms, me, mentioned(core, key, text, me))
        if used is not None and not posted.duplicate:
            used[me] = used.get(me, 0) + size
    seq = posted.seq
    if posted.duplicate:  # a retry (§6.8): the original was published already
        log.debug("SEND retry %r in %s: message #%d", req.cmid, core.rooms[key], seq)
        return [core.ok(call.rid, call.request_id, p.Sent(room=core.rooms[key], seq=seq,
                                             time=posted.time_ms))]
    core.state.posted(key, seq)
    if core.slow_mode.get(key):
        core.state.note_post(key, session.account_key, call.now_s)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("message %s#%d from %s: %r", core.rooms[key], seq, session.name, text)
    event = p.MessagePosted(room=core.rooms[key], seq=seq, time=call.now_ms,
                            sender=session.name, text=text, kind=req.kind,
                            notice=notice)
    return [*core.deliver.room_event(key, event),
            core.ok(call.rid, call.request_id, p.Sent(room=core.rooms[key], seq=seq, time=call.now_ms))]


def history(core: Core, call: Call, session: Session, req: p.FetchHistory) -> list[Action]:
    core.check_page(req, "sequence")
    key = core.room_key(req.room, session)
    core.check_may_read(key, session)
    rows = core.store.history(key, req.before, req.after, req.limit)
    messages = tuple(message_of(r) for r in rows)
    return [core.ok(call.rid, call.request_id, p.HistoryPage(room=core.rooms[key], messages=messages))]


def mark_read(core: Core, call: Call, session: Session, req: p.MarkRead) -> list[Action]:
    """MARK_READ (docs/PROTOCOL.md §6.49): move the account's read marker of a room
    (to a seq) or of a direct conversation (to a DM id) forward to ``upto``. A marker
    at or beyond ``upto`` stays (idempotent, nothing written); the reply says the
    marker and what is unread after it. When it moved, the account's other sessions
    get READ (§6.49.1). Raises ProtocolError 400 (not exactly one of room and peer,
    ``upto`` below 0 or beyond the newest message of the conversation), 404 (no such
    room, account or conversation), 403 (not a member of the room)."""
    if bool(req.room) == bool(req.peer):
        raise ProtocolError(Status.BAD_REQUEST, "give exactly one of room and peer")
    if req.upto < 0:
        raise ProtocolError(Status.BAD_REQUEST, "upto must be >= 0")
    me = session.account_key
    if req.room:
        key = core.room_key(req.room, session)
        if me not in core.members.get(key, ()):
            raise ProtocolError(Status.FORBIDDEN, f"you are not in #{core.rooms[key]}")
        last = core.last_seq[key]
        if req.upto > last:
            raise ProtocolError(Status.BAD_REQUEST, f"upto {req.upto} is beyond the "
                                f"last message of #{core.rooms[key]} (#{last})")
        moved = core.store.mark_room_read(key, me, req.upto)
        read = core.store.room_read(key, me)
        read_seq = last if read is None else min(read.read_seq, last)
        state = p.ReadState(room=core.rooms[key], peer="", upto=read_seq,
                            unread=last - read_seq,
                            mentions=0 if read is None else read.mentions, last=last)
    else:
        peer_key = core.account_key(req.peer)
        peer = core.accounts[peer_key].name
        before = core.store.dm_read(me, peer_key)
        if before is None:
            raise ProtocolError(Status.NOT_FOUND, f"no conversation with {peer}")
        if req.upto > before.last_id:
            raise ProtocolError(Status.BAD_REQUEST, f"upto {req.upto} is beyond the "
                                f"last direct message with {peer} ({before.last_id})")
        after = core.store.mark_dm_read(me, peer_key, req.upto) or before
        moved = after.read_id > before.read_id
        state = p.ReadState(room="", peer=peer, upto=after.read_id, unread=after.unread,
                            last=after.last_id)
    actions: list[Action] = [core.ok(call.rid, call.request_id, state)]
    if moved:
        actions += core.deliver.to_account(me, p.ReadMarked(
            room=state.room, peer=state.peer, upto=state.upto, unread=state.unread,
            mentions=state.mentions, last=state.last), exclude=call.rid)
    return actions


def set_topic(core: Core, call: Call, session: Session, req: p.SetTopic) -> list[Action]:
    """SET_TOPIC (docs/PROTOCOL.md §6.22, §17.1): any member may set it, except in a
    locked room, where only its moderators (and admins) may. A change is drawn in every
    member's pane like a message, so it takes a token from the session's SEND bucket
    and counts as a post in slow mode (429 otherwise, nothing changed; §15).
    Committed with an audit entry, then published on the room topic (only when it
    changed), then OK."""
    key = core.room_key(req.room, session)
    if session.account_key not in core.members[key]:
        raise ProtocolError(Status.FORBIDDEN,
                            f"you are not in {core.rooms[key]!r}; JOIN it first")
    if key in core.locked:
        core.require_mod(key, session, "set the topic while it is locked")
    core.check_not_muted(key, session, call.now_ms)
    topic = check_topic(req.topic)
    ok = core.ok(call.rid, call.request_id, p.Ok())
    if core.topics.get(key) == topic:
        return [ok]
    if core.slow_mode.get(key):
        core.check_slow_mode(key, session, call.now_s)
    if core.sending_limited:
        core.limit_send(session, call.now_s)
    with core.store.transaction():
        core.store.set_topic(key, topic)
        core.audit(call.now_ms, session, "topic", key, detail=topic)
    core.state.set_topic(key, topic)
    if core.slow_mode.get(key):
        core.state.note_post(key, session.account_key, call.now_s)
    log.info("topic of %s set by %s", core.rooms[key], session.name)
    event = p.TopicChanged(room=core.rooms[key], topic=topic, by=session.name, time=call.now_ms)
    return [*core.deliver.room_event(key, event), ok]
