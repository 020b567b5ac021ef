"""Moderation (docs/PROTOCOL.md §17, §6.28, §6.30-§6.41, §6.52): KICK, BAN, UNBAN,
MUTE, UNMUTE, INVITE, SET_ROLE, SET_ROOM, SET_SLOW_MODE, DELETE_MESSAGE, DELETE_ROOM, BANS
and AUDIT. Ranks and the checks on them are Core's (zchat.core.context)."""

from __future__ import annotations

import logging

from zchat import wire as p
from zchat.core import operator_actions, wording
from zchat.core.actions import Action
from zchat.core.context import Call, Core
from zchat.core.ports import BanRow
from zchat.core.state import DEFAULT_ROOM, RANKS, Session
from zchat.core.validation import check_away_text
from zchat.errors import ProtocolError, Status
from zchat.names import name_key, normalize_name

log = logging.getLogger("zchat.broker")


def sanction(core: Core, req: p.Ban | p.Mute, session: Session, now_ms: int, what: str,
              server_wide: str) -> tuple[str, str, str, str, int | None]:
    """The checks BAN and MUTE share (§6.31, §6.33): in a room the actor moderates it
    from inside, server-wide (``room`` "") is for admins (``server_wide`` names the
    refused action); the reason and duration are valid and the actor outranks the
    target. Returns (room key or "", target key, target's name, reason, until_ms)."""
    key = core.place(req.room, session)
    if key:
        core.require_mod(key, session, what)
        core.require_inside(key, session, what)
    else:
        core.require_admin(session, server_wide)
    target = core.account_key(req.name)
    reason = check_away_text(req.reason, "reason")
    until = core.duration(req.duration_s, now_ms)
    core.check_outranks(key, session, target, what)
    return key, target, core.accounts[target].name, reason, until


def lift(core: Core, kind: str, raw_room: str, raw_name: str, session: Session,
          now_ms: int) -> list[Action]:
    """Lift a ban or mute (UNBAN, UNMUTE). Returns the MUTED push (``muted`` false,
    §6.33.1) for the account's live sessions when a mute was lifted, else nothing."""
    key = core.place(raw_room, session)
    verb = "unban" if kind == "ban" else "unmute"
    if key:
        core.require_mod(key, session, verb)
        core.require_inside(key, session, verb)
    else:
        core.require_admin(session, f"{verb} server-wide")
    target = core.account_key(raw_name)
    name = core.accounts[target].name
    # As for BAN and MUTE (§17.1): only someone who outranks the target, and who
    # ranks at least as high as whoever placed it, may lift a ban or mute — never
    # oneself (a tester's moderators lifted their own bans and the owner's).
    core.check_outranks(key, session, target, verb)
    placed = core.active_ban(kind, key, target, now_ms)
    if placed is not None and placed.by_key in core.accounts and \
            core.rank(key, placed.by_key) > core.rank(key, session.account_key):
        raise ProtocolError(Status.FORBIDDEN, f"you cannot {verb} {name}: "
                            f"{core.accounts[placed.by_key].name}, "
                            f"{core.role_name(key, placed.by_key)}, placed it")
    if not operator_actions.lift(core.store, kind, key, core.rooms[key] if key else "",
                                 target, name, session.name, now_ms):
        where = f"in #{core.rooms[key]}" if key else "server-wide"
        raise ProtocolError(Status.NOT_FOUND, f"{name} is not "
                            f"{'banned' if kind == 'ban' else 'muted'} {where}")
    core.state.lift_ban(kind, key, target)
    if kind != "mute":
        return []
    return tell_muted(core, target, p.MuteChanged(
        room=core.rooms[key] if key else "", muted=False, by=session.name, time=now_ms))


def tell_muted(core: Core, account_key: str, notice: p.MuteChanged) -> list[Action]:
    """MUTED (§6.33.1) to every live session of the account: a muted person is told
    who muted them, where, why and until when, and when it is lifted (as IRC's +q
    and Matrix's power-level change are visible to the one concerned)."""
    return core.deliver.to_account(account_key, notice)


def ban_info(core: Core, ban: BanRow) -> p.BanInfo:
    by = core.accounts.get(ban.by_key)
    return p.BanInfo(kind="mute" if ban.kind == "mute" else "ban",
                     room=core.rooms.get(ban.room_key, ban.room_key),
                     name=core.accounts[ban.account_key].name
                     if ban.account_key in core.accounts else ban.account_key,
                     by=by.name if by else ban.by_key, reason=ban.reason,
                     created=ban.created_ms, until=ban.until_ms)


def kick(core: Core, call: Call, session: Session, req: p.Kick) -> list[Action]:
    """KICK (§6.30): a moderator removes a member of lower rank; LEFT with ``by`` and
    ``reason``. 404 room/account/not a member, 403 not allowed, 413/422 reason."""
    key = core.room_key(req.room, session)
    core.require_mod(key, session, "kick")
    core.require_inside(key, session, "kick")
    target = core.account_key(req.name)
    reason = check_away_text(req.reason, "reason")
    if target not in core.members[key]:
        raise ProtocolError(Status.NOT_FOUND,
                            f"{core.accounts[target].name} is not in #{core.rooms[key]}")
    core.check_outranks(key, session, target, "kick")
    # §6.30: a kicked moderator loses the role, as a banned one does (an owner keeps
    # the ownership but must be back inside to act), and no invitation survives.
    demoted = core.roles.get(key, {}).get(target) == "moderator"
    with core.store.transaction():
        core.store.leave_room(key, target)
        if demoted:
            core.store.set_role(key, target, "")
        core.store.take_invite(key, target)
        core.audit(call.now_ms, session, "kick", key, core.accounts[target].name, reason)
    if demoted:
        core.state.set_role(key, target, "")
    log.info("%s kicked %s from %s", session.name, core.accounts[target].name,
             core.rooms[key])
    return [core.ok(call.rid, call.request_id, p.Ok()),
            *core.remove_member(key, target, session, reason, False, call.now_ms)]


def ban(core: Core, call: Call, session: Session, req: p.Ban) -> list[Action]:
    """BAN (§6.31): in a room (moderators; the member is removed, LEFT with ``ban``)
    or server-wide (``room`` "", admins; every session of theirs ends)."""
    key, target, name, reason, until = sanction(core,
        req, session, call.now_ms, "ban", "ban from the whole server")
    member = bool(key) and target in core.members[key]
    demoted = bool(key) and core.roles.get(key, {}).get(target) == "moderator"
    with core.store.transaction():
        placed = core.store.add_ban("ban", key, target, session.account_key, reason,
                                    call.now_ms, until)
        if demoted:  # a banned moderator keeps no powers in the room (§17.1)
            core.store.set_role(key, target, "")
        if member:
            core.store.leave_room(key, target)
        if key:
            core.store.take_invite(key, target)
        core.audit(call.now_ms, session, "ban", key, name,
                    wording.until(until) + (f"; {reason}" if reason else ""))
    core.state.add_ban(placed)
    if demoted:
        core.state.set_role(key, target, "")
    log.info("%s banned %s from %s %s", session.name, name,
             core.rooms[key] if key else "the server", wording.until(until))
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.Ok())]
    if member:
        actions += core.remove_member(key, target, session, reason, True, call.now_ms,
                                       until)
    if not key:
        actions += core.end_account_sessions(
            target, call.now_ms, by=session.name, why=f"you are banned from this server "
            f"{wording.until(until)}" + (f": {reason}" if reason else ""))
    return actions


def unban(core: Core, call: Call, session: Session, req: p.Unban) -> list[Action]:
    """UNBAN (§6.32): lift a ban (moderators of the room; admins server-wide)."""
    lift(core, "ban", req.room, req.name, session, call.now_ms)
    return [core.ok(call.rid, call.request_id, p.Ok())]


def mute(core: Core, call: Call, session: Session, req: p.Mute) -> list[Action]:
    """MUTE (§6.33): forbid posting in a room (moderators) or anywhere, DMs included
    (``room`` "", admins)."""
    key, target, name, reason, until = sanction(core,
        req, session, call.now_ms, "mute", "mute server-wide")
    with core.store.transaction():
        placed = core.store.add_ban("mute", key, target, session.account_key, reason,
                                    call.now_ms, until)
        core.audit(call.now_ms, session, "mute", key, name,
                    wording.until(until) + (f"; {reason}" if reason else ""))
    core.state.add_ban(placed)
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.Ok()), *tell_muted(core,
        target, p.MuteChanged(room=core.rooms[key] if key else "", muted=True,
                              by=session.name, time=call.now_ms, reason=reason, until=until))]
    account = core.accounts[target]
    if not key and account.away_text:  # §6.33: a server-wide mute silences it too
        account.away_text = ""
        actions.append(core.deliver.presence(account, target, call.now_ms))
    return actions


def unmute(core: Core, call: Call, session: Session, req: p.Unmute) -> list[Action]:
    """UNMUTE (§6.34); MUTED with ``muted`` false goes to the account's sessions."""
    return [core.ok(call.rid, call.request_id, p.Ok()),
            *lift(core, "mute", req.room, req.name, session, call.now_ms)]


def invite(core: Core, call: Call, session: Session, req: p.Invite) -> list[Action]:
    """INVITE (§6.35): a moderator lets an account JOIN a private room once; INVITED
    is pushed to the invitee's sessions. 409 already a member, 403 banned there."""
    key = core.room_key(req.room, session)
    core.require_mod(key, session, "invite")
    core.require_inside(key, session, "invite")
    target = core.account_key(req.name)
    name = core.accounts[target].name
    if target in core.members[key]:
        raise ProtocolError(Status.CONFLICT, f"{name} is in #{core.rooms[key]} already")
    if target == session.account_key:  # §17.1: no one acts on themselves
        raise ProtocolError(Status.FORBIDDEN, "you cannot invite yourself")
    if core.active_ban("ban", key, target, call.now_ms) is not None:
        raise ProtocolError(Status.FORBIDDEN, f"{name} is banned from "
                            f"#{core.rooms[key]}; UNBAN first")
    with core.store.transaction():
        core.store.add_invite(key, target, session.account_key, call.now_ms)
        core.audit(call.now_ms, session, "invite", key, name)

    return [core.ok(call.rid, call.request_id, p.Ok()),
            *core.deliver.to_account(target, p.Invited(room=core.rooms[key], by=session.name,
                                                       time=call.now_ms))]


def set_role(core: Core, call: Call, session: Session, req: p.SetRole) -> list[Action]:
    """SET_ROLE (§6.36): the owner or an admin makes a member a moderator or a plain
    member again; ROLE event when it changed. 403 not allowed or the owner's role."""
    key = core.room_key(req.room, session)
    if core.rank(key, session.account_key) < RANKS["owner"]:
        raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{core.rooms[key]} "
                            "or a broker admin may appoint moderators")
    core.require_inside(key, session, "change roles")
    target = core.account_key(req.name)
    name = core.accounts[target].name
    current = core.roles.get(key, {}).get(target, "member")
    # a moderator who left keeps the role until demoted, which works from outside
    if target not in core.members[key] and not (req.role == "member"
                                                and current == "moderator"):
        raise ProtocolError(Status.NOT_FOUND, f"{name} is not in #{core.rooms[key]}")
    if current == "owner":
        raise ProtocolError(Status.FORBIDDEN, f"{name} owns #{core.rooms[key]}; the "
                            "owner's role cannot be changed")
    ok = core.ok(call.rid, call.request_id, p.Ok())
    if current == req.role:
        return [ok]
    with core.store.transaction():
        core.store.set_role(key, target, "moderator" if req.role == "moderator" else "")
        core.audit(call.now_ms, session, "role", key, name, req.role)
    core.state.set_role(key, target, "moderator" if req.role == "moderator" else "")
    event = p.RoleChanged(room=core.rooms[key], name=name, role=req.role, by=session.name,
                          time=call.now_ms)
    return [ok, *core.deliver.room_event(key, event)]


def set_room(core: Core, call: Call, session: Session, req: p.SetRoom) -> list[Action]:
    """SET_ROOM (§6.37): ``locked`` by moderators, ``private`` by the owner or an
    admin; ROOM_MODE event when a mode changed (carried by the new mode: a room made
    private is announced to its members only). 400 neither given."""
    key = core.room_key(req.room, session)
    if req.private is None and req.locked is None:
        raise ProtocolError(Status.BAD_REQUEST, "give private or locked (or both)")
    if req.locked is not None:
        core.require_mod(key, session, "lock or unlock it")
    if req.private is not None and core.rank(key, session.account_key) < RANKS["owner"]:
        raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{core.rooms[key]} or "
                            "a broker admin may make it private or public")
    core.require_inside(key, session, "change its modes")
    private = key in core.private if req.private is None else req.private
    locked = key in core.locked if req.locked is None else req.locked
    ok = core.ok(call.rid, call.request_id, p.Ok())
    if (private, locked) == (key in core.private, key in core.locked):
        return [ok]
    changes = []
    if private != (key in core.private):
        changes.append(f"private {'on' if private else 'off'}")
    if locked != (key in core.locked):
        changes.append(f"locked {'on' if locked else 'off'}")
    with core.store.transaction():
        core.store.set_room_flags(key, private=private, locked=locked)
        core.audit(call.now_ms, session, "room_mode", key, detail=", ".join(changes))
    core.state.set_flags(key, private, locked)
    log.info("%s set %s of %s", session.name, ", ".join(changes), core.rooms[key])
    event = p.RoomModeChanged(room=core.rooms[key], private=private, locked=locked,
                              by=session.name, time=call.now_ms)
    return [ok, *core.deliver.room_event(key, event)]


def delete_message(core: Core, call: Call, session: Session, req: p.DeleteMessage) -> list[Action]:
    """DELETE_MESSAGE (§6.38): a moderator, or the sender (being a member), deletes a
    message; its row keeps the text for the audit, HISTORY shows it with text "" and
    ``deleted_by``, MESSAGE_DELETED is carried to the room. 404 no such message, 409
    deleted already, 403 not allowed."""
    key = core.room_key(req.room, session)
    # the right to act first, then the lookup: an outsider must not learn from 404
    # against 403 how many messages a private room holds
    core.require_inside(key, session, "delete messages")
    row = core.store.message(key, req.seq)
    if row is None:
        raise ProtocolError(Status.NOT_FOUND, f"no message #{req.seq} in "
                            f"#{core.rooms[key]}")
    own = name_key(row.sender) == session.account_key and \
        session.account_key in core.members[key]
    if not own:
        core.require_mod(key, session, "delete other people's messages")
        # §17.1: an action on a person, so a rank above the sender's, as for KICK
        sender_key = name_key(row.sender)
        if core.rank(key, sender_key) >= core.rank(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"you cannot delete the messages of "
                                f"{row.sender}: they are "
                                f"{core.role_name(key, sender_key)}")
    with core.store.transaction():
        core.store.delete_message(key, req.seq, session.name)
        core.audit(call.now_ms, session, "delete", key, row.sender,
                    f"#{req.seq}: {row.text}")
    event = p.MessageDeleted(room=core.rooms[key], seq=req.seq, by=session.name,
                             time=call.now_ms)
    return [core.ok(call.rid, call.request_id, p.Ok()), *core.deliver.room_event(key, event)]


def delete_room(core: Core, call: Call, session: Session, req: p.DeleteRoom) -> list[Action]:
    """DELETE_ROOM (§6.52): the room's owner (from inside it) or a broker admin
    deletes a room with its history, memberships, roles, invitations and room bans,
    in one transaction with a ``delete_room`` audit entry. ROOM_DELETED goes to the
    room as its events do (pushed to the members of a private one), and the members'
    clients stop following it. The name is free again: a later JOIN makes a new,
    empty room. 404 no such room, 403 not the owner or an admin (or an owner who is
    not in it), or ``lobby``; 413/422 a bad ``reason``."""
    key = core.room_key(req.room, session)
    if key == name_key(DEFAULT_ROOM):
        raise ProtocolError(Status.FORBIDDEN, f"#{core.rooms[key]} cannot be deleted: "
                            "every account is in it")
    if core.rank(key, session.account_key) < RANKS["owner"]:
        raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{core.rooms[key]} "
                            "or a broker admin may delete it")
    core.require_inside(key, session, "delete it")
    reason = check_away_text(req.reason, "reason")
    name = core.rooms[key]
    used = core.storage_used
    with core.store.transaction():
        # the room's text, by sender (§6.53)
        freed = core.store.storage_used(key) if used is not None else {}
        messages, members = core.store.delete_room(key)
        core.audit(call.now_ms, session, "delete_room", key,
                    detail=f"{messages} messages, {members} members"
                    + (f"; {reason}" if reason else ""))
    for account_key, size in freed.items():
        assert used is not None
        left = used.get(account_key, 0) - size
        if left > 0:
            used[account_key] = left
        else:
            used.pop(account_key, None)
    # carried as the room's events are, to the members it had (pushed if private)
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.Ok()), *core.deliver.room_event(
        key, p.RoomDeleted(room=name, by=session.name, time=call.now_ms, reason=reason,
                           first_seq=core.first_seq.get(key, 1)))]
    core.state.drop_room(key)
    log.info("%s deleted the room %s (%d messages, %d members)", session.name, name,
             messages, members)
    return actions


def list_bans(core: Core, call: Call, session: Session, req: p.ListBans) -> list[Action]:
    """BANS (§6.40): a room's bans and mutes in force (its moderators), or the
    server-wide ones (``room`` "") or all (None) (admins)."""
    if req.room:
        key: str | None = core.room_key(req.room, session)
        assert key is not None
        core.require_mod(key, session, "list its bans")
    else:
        core.require_admin(session, "list server-wide bans" if req.room == ""
                            else "list every room's bans")
        key = None if req.room is None else ""
    bans = tuple(ban_info(core, b) for b in core.bans_in_force(call.now_ms, key))
    return [core.ok(call.rid, call.request_id, p.BanList(bans=bans))]


def read_audit(core: Core, call: Call, session: Session, req: p.ReadAudit) -> list[Action]:
    """AUDIT (§6.41): the audit log, newest first; admins read all of it, a room's
    owner that room's entries. 400 limit outside 1..MAX_AUDIT_LIMIT."""
    if not 1 <= req.limit <= p.MAX_AUDIT_LIMIT:
        raise ProtocolError(Status.BAD_REQUEST, f"limit must be 1 to {p.MAX_AUDIT_LIMIT}")
    room = None
    floor = 0
    admin = session.account_key in core.admins
    if req.room is not None and admin and \
            name_key(normalize_name(req.room, "room name")) not in core.rooms:
        # a deleted room's entries stay in the log (§6.52): admins read them by name
        room = normalize_name(req.room, "room name")
    elif req.room is not None:
        key = core.room_key(req.room, session)
        if core.rank(key, session.account_key) < RANKS["owner"]:
            raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{core.rooms[key]}"
                                " or a broker admin may read its audit log")
        room = core.rooms[key]
        if not admin:  # an owner reads this room's entries, not a deleted namesake's
            floor = core.store.audit_floor(key)
    else:
        core.require_admin(session, "read the whole audit log")
    rows = core.store.audit_log(room=room, actor=req.actor or None,
                                target=req.target or None, action=req.action or None,
                                before_id=req.before, above_id=floor, limit=req.limit)
    entries = tuple(p.AuditEntry(id=r.id, time=r.time_ms, actor=r.actor, action=r.action,
                                 room=r.room, target=r.target, detail=r.detail)
                    for r in rows)
    return [core.ok(call.rid, call.request_id, p.AuditList(entries=entries))]


def set_slow_mode(core: Core, call: Call, session: Session, req: p.SetSlowMode) -> list[Action]:
    """SET_SLOW_MODE (docs/PROTOCOL.md §6.28): the room's creator or a broker admin,
    being a member, sets how many seconds each member must wait between two messages
    in the room (0 turns it off). Committed, then SLOW_MODE published on the room
    topic (only when it changed), then OK. Raises ProtocolError 404/422 (room), 403
    (not a member, or neither creator nor admin), 400 (seconds outside
    0..MAX_SLOW_MODE_S)."""
    key = core.room_key(req.room, session)
    if session.account_key not in core.members[key]:
        raise ProtocolError(Status.FORBIDDEN,
                            f"you are not in {core.rooms[key]!r}; JOIN it first")
    if not 0 <= req.seconds <= p.MAX_SLOW_MODE_S:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"seconds must be 0 to {p.MAX_SLOW_MODE_S}")
    if not core.is_mod(key, session.account_key):
        raise ProtocolError(Status.FORBIDDEN, "only the room's moderators, its creator "
                            f"or a broker admin may set the slow mode of "
                            f"{core.rooms[key]!r}")
    ok = core.ok(call.rid, call.request_id, p.Ok())
    if core.slow_mode.get(key, 0) == req.seconds:
        return [ok]
    with core.store.transaction():
        core.store.set_slow_mode(key, req.seconds)
        core.audit(call.now_ms, session, "slow_mode", key, detail=f"{req.seconds} s")
    core.state.set_slow_mode(key, req.seconds)
    log.info("slow mode of %s set to %d s by %s", core.rooms[key], req.seconds,
             session.name)
    event = p.SlowModeChanged(room=core.rooms[key], seconds=req.seconds, by=session.name,
                              time=call.now_ms)
    return [*core.deliver.room_event(key, event), ok]
