"""Direct messages: DM, DM_ACK and DM_HISTORY (docs/PROTOCOL.md §6.7, §6.23, §6.48)."""

from __future__ import annotations

import logging

from zchat import wire as p
from zchat.core import wording
from zchat.core.actions import Action
from zchat.core.context import Call, Core
from zchat.core.delivery import dm_of
from zchat.core.ports import dm_pair
from zchat.core.state import Session
from zchat.errors import ProtocolError, Status
from zchat.names import validate_text

log = logging.getLogger("zchat.broker")


def dm(core: Core, call: Call, session: Session, req: p.SendDirect) -> list[Action]:
    """DM to text [cmid] [notice] (§6.7): stored, then pushed to every session of the recipient
    and to the sender's other sessions; pending until acknowledged. The sending limit is
    taken first (the request table's ``sends``)."""
    to_key = core.account_key(req.to)
    notice = p.given(req.notice, False)
    text = validate_text(req.text, core.config.max_text_bytes,
                         core.config.max_text_lines)
    muted = core.active_ban("mute", "", session.account_key, call.now_ms)
    if muted is not None:
        raise ProtocolError(Status.FORBIDDEN, "you are muted on this server "
                            f"{wording.until(muted.until_ms)}")
    recipient = core.accounts[to_key]
    live = bool(recipient.sessions - {call.rid})  # a DM to oneself is not live to oneself
    if len(req.cmid) > p.MAX_CMID_CHARS:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"cmid longer than {p.MAX_CMID_CHARS} characters")
    me = session.account_key
    used = core.storage_used
    size = (len(text) if text.isascii() else len(text.encode())) if used is not None else 0
    posted = None
    if used is not None and core.over_quota(me, used, size):
        # a retry of a DM stored before the quota filled is still answered
        posted = core.store.dm_by_cmid(session.name, to_key, req.cmid) \
            if req.cmid else None
        if posted is None:
            raise core.quota_full(me, used, size)
    if posted is None:
        posted = core.store.post_dm(session.name, to_key, recipient.name, text, req.cmid,
                                    call.now_ms, max_pending=core.config.max_stored_dms,
                                    sender_key=me, kind="notice" if notice else "text")
        if used is not None and not posted.duplicate:
            used[me] = used.get(me, 0) + size
    dm_id = posted.seq
    if posted.duplicate:  # a retry (§6.7): pushed already, or pending for next login
        return [core.ok(call.rid, call.request_id, p.DmSent(
            id=dm_id, time=posted.time_ms, delivered="live" if live else "stored",
            to=recipient.name))]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("dm %d %s -> %s: %r", dm_id, session.name, recipient.name, text)
    actions = core.deliver.to_accounts(
        (to_key, me), p.DirectMessage(id=dm_id, time=call.now_ms, sender=session.name,
                                      to=recipient.name, text=text, notice=notice),
        exclude=call.rid)
    actions.append(core.ok(call.rid, call.request_id, p.DmSent(
        id=dm_id, time=call.now_ms, delivered="live" if live else "stored",
        to=recipient.name)))
    return actions


def ack_dm(core: Core, call: Call, session: Session, req: p.AckDirect) -> list[Action]:
    if not 1 <= len(req.ids) <= p.MAX_ACK_IDS:
        raise ProtocolError(Status.BAD_REQUEST, f"ids must hold 1 to {p.MAX_ACK_IDS} ids")
    core.store.ack_dms(session.account_key, req.ids)
    return [core.ok(call.rid, call.request_id, p.Ok())]


def dm_history(core: Core, call: Call, session: Session, req: p.FetchDmHistory) -> list[Action]:
    """DM_HISTORY (docs/PROTOCOL.md §6.48): a page of the session's own account's
    conversation with ``peer``, ascending by DM id. The conversation is named by the
    asking account and the peer, so no one can read another pair's DMs. Raises
    ProtocolError 400 (bounds, limit), 404 (no such account)."""
    core.check_page(req, "id")
    peer_key = core.account_key(req.peer)
    rows = core.store.dm_history(dm_pair(session.account_key, peer_key), req.before,
                                 req.after, req.limit)
    messages = tuple(dm_of(d) for d in rows)
    return [core.ok(call.rid, call.request_id, p.DmHistoryPage(peer=core.accounts[peer_key].name,
                                                  messages=messages))]
