"""Account tokens: CREATE_TOKEN, TOKENS and REVOKE_TOKEN (docs/PROTOCOL.md §6.24-§6.26).
How many tokens an account may hold is decided here (MAX_TOKENS_PER_ACCOUNT), not by the
store."""

from __future__ import annotations

import logging
import secrets

from zchat import wire as p
from zchat.core.actions import Action, ToPeer
from zchat.core.context import Call, Core
from zchat.core.state import Session
from zchat.core.validation import check_away_text
from zchat.errors import ProtocolError, Status
from zchat.passwords import token_sha256

log = logging.getLogger("zchat.broker")


def create_token(core: Core, call: Call, session: Session, req: p.CreateToken) -> list[Action]:
    """A new token for the session's account: 256 random bits, sent once; only its
    SHA-256 is stored. A session that logged in with a token may not mint more (403),
    so that revoking a leaked token really ends what it can do."""
    if session.login_token_id is not None:
        raise ProtocolError(Status.FORBIDDEN, "log in with the password to create tokens")
    if len(req.label) > p.MAX_TOKEN_LABEL_CHARS:
        raise ProtocolError(Status.TOO_LARGE,
                            f"token label longer than {p.MAX_TOKEN_LABEL_CHARS} characters")
    label = check_away_text(req.label, "token label")  # one line, no controls
    if len(core.store.list_tokens(session.account_key)) >= p.MAX_TOKENS_PER_ACCOUNT:
        raise ProtocolError(Status.INVALID, f"an account holds at most "
                            f"{p.MAX_TOKENS_PER_ACCOUNT} tokens; revoke one first")
    token = secrets.token_urlsafe(32)
    token_id = core.store.create_token(session.account_key, label, token_sha256(token),
                                       call.now_ms)
    log.info("token %d (%r) created for %s", token_id, label, session.name)
    return [core.ok(call.rid, call.request_id, p.TokenCreated(token=token, id=token_id, label=label))]


def list_tokens(core: Core, call: Call, session: Session, req: p.ListTokens) -> list[Action]:
    tokens = tuple(p.TokenInfo(id=t.id, label=t.label, created=t.created_ms)
                   for t in core.store.list_tokens(session.account_key))
    return [core.ok(call.rid, call.request_id, p.TokenList(tokens=tokens))]


def revoke_token(core: Core, call: Call, session: Session, req: p.RevokeToken) -> list[Action]:
    """Delete one of the account's tokens (404 if it has none of that id) and end every
    session that logged in with it: SESSION_CLOSED first, then their next request gets
    401 (docs/PROTOCOL.md §6.26, §6.47)."""
    if not core.store.revoke_token(session.account_key, req.id):
        raise ProtocolError(Status.NOT_FOUND, f"you have no token with id {req.id}")
    log.info("token %d of %s revoked", req.id, session.name)
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.Ok())]
    notice = p.encode_push(p.SessionClosed(
        reason="the account token this session logged in with was revoked",
        by=session.name, time=call.now_ms))
    for other in list(core.sessions.values()):  # snapshot: _end_session mutates
        if other.account_key == session.account_key and other.login_token_id == req.id:
            actions.append(ToPeer(other.routing_id, notice))
            actions += core.end_session(other, call.now_ms)
    kept = [h for h, row in core.restored.items()  # not resumable with it either
            if row.account_key == session.account_key and row.login_token_id == req.id]
    for token_hash in kept:
        del core.restored[token_hash]
    core.store.delete_sessions(kept)
    return actions
