"""Sessions: INFO, REGISTER, LOGIN, RESUME, LOGOUT, PING, SET_PRESENCE, WHO, WHOIS and
SET_PASSWORD (docs/PROTOCOL.md §6.1-§6.4, §6.10-§6.12, §6.27, §6.46, §6.50), with the
finishers of their password jobs."""

from __future__ import annotations

import logging
import secrets

from zchat import wire as p
from zchat.core import wording
from zchat.core.actions import Action
from zchat.core.context import Call, Core
from zchat.core.delivery import dm_of
from zchat.core.jobs import LoginJob, RegisterJob, SetPasswordJob
from zchat.core.ports import SessionRow
from zchat.core.state import DEFAULT_ROOM, Session
from zchat.core.validation import check_away_text
from zchat.errors import ProtocolError, Status, StorageError
from zchat.names import name_key, normalize_name, normalize_new_name, skeleton
from zchat.passwords import (
    LoginCheck,
    check_login,
    hash_password,
    match_token,
    token_sha256,
    verify_password,
)

log = logging.getLogger("zchat.broker")


def finish_register(core: Core, job: RegisterJob, password_hash: str, now_s: float,
                    now_ms: int) -> list[Action]:
    """REGISTER's password is hashed: create the account in ``lobby`` (one commit: a 503
    must leave no account behind, docs/PROTOCOL.md §11) and announce it there."""
    if job.key in core.accounts:
        raise ProtocolError(Status.CONFLICT, f"the name {job.name!r} is taken")
    lobby = name_key(DEFAULT_ROOM)
    core.store.create_account(job.key, job.name, skeleton(job.name), password_hash, now_ms,
                              bot=job.bot, rooms=(lobby,))
    core.state.add_account(job.key, job.name, job.bot)
    core.state.add_member(lobby, job.key)
    log.info("registered %s%s from %s", job.name, " (bot)" if job.bot else "", job.where)
    joined = p.UserJoined(room=core.rooms[lobby], name=job.name, time=now_ms)
    return [core.ok(job.routing_id, job.request_id, p.Registered(name=job.name)),
            *core.deliver.room_event(lobby, joined)]


def known_account(core: Core, raw: str) -> str:
    """The key of the account named ``raw``, or "" when there is none (never
    raises: for the checks made before a request's name is validated)."""
    try:
        key = name_key(normalize_name(raw))
    except ProtocolError:
        return ""
    return key if key in core.accounts else ""


def login_by_token(core: Core, call: Call, req: p.Login, address: str,
                   via: str) -> list[Action]:
    """LOGIN with an account token (docs/PROTOCOL.md §6.3): one SHA-256 and at most
    MAX_TOKENS_PER_ACCOUNT constant-time comparisons, cheap enough for the loop, so no
    Offload. 401 for a wrong or revoked token. ``address`` and ``via`` as
    ``Core.acting_for`` gave them."""
    if len(req.token) > p.MAX_PASSWORD_CHARS:
        raise ProtocolError(Status.TOO_LARGE,
                            f"token longer than {p.MAX_PASSWORD_CHARS} characters")
    key = core.account_key(req.name)
    token_id = match_token(req.token, core.store.token_hashes(key))
    job = LoginJob(routing_id=call.rid, request_id=call.request_id, address=address,
                   via=via, key=key, name=core.accounts[key].name,
                   transport_key=call.transport_key, presence=p.given(req.presence, True))
    if token_id is None:
        log.info("failed token login for %s from %s", job.name, job.where)
        raise ProtocolError(Status.UNAUTHORIZED, "wrong name or token (or it was revoked)")
    return log_in(core, job, call.now_s, call.now_ms, token_id=token_id)


def finish_login(core: Core, job: LoginJob, check: LoginCheck, now_s: float,
                 now_ms: int) -> list[Action]:
    """LOGIN's password was checked off the loop (zchat.passwords.check_login): answer
    401 when it did not match, else make the session (:func:`log_in`) and, when the
    check brought a new Argon2id hash (the stored one was scrypt or weaker than
    configured), store it in place of the one checked (:func:`upgrade_hash`)."""
    if not check.matched:
        log.info("failed login for %s from %s", job.name, job.where)
        raise ProtocolError(Status.UNAUTHORIZED, "wrong name or password")
    actions = log_in(core, job, now_s, now_ms)
    if check.rehashed is not None:
        upgrade_hash(core, job, check.rehashed)
    return actions


def upgrade_hash(core: Core, job: LoginJob, new_hash: str) -> None:
    """Store ``new_hash`` for the account that just logged in, in place of the hash its
    password was checked against (``job.checked_hash``), only if that one is still stored
    (Store.replace_password_hash): a password set meanwhile (SET_PASSWORD, an admin, or
    another broker of a cluster) is never overwritten with the old password's hash. Two
    brokers upgrading the same account at once is harmless: the first write wins, the
    second finds the hash changed and writes nothing, and either hash is of the same
    password. A store failure here is logged and leaves the old hash, which still works;
    the login it follows has succeeded and stands."""
    try:
        replaced = core.store.replace_password_hash(job.key, job.checked_hash, new_hash)
    except StorageError as exc:  # the store could not commit (503): next login tries again
        log.warning("could not upgrade the password hash of %s: %s", job.name, exc)
        return
    if replaced:
        log.info("upgraded the password hash of %s to Argon2id", job.name)


def log_in(core: Core, job: LoginJob, now_s: float, now_ms: int,
           token_id: int | None = None) -> list[Action]:
    """A password matched (``finish_login``) or a token did (``token_id``): make the
    session (409 when this connection has one, 403 for a disabled account, 503 when
    full)."""
    existing = core.sessions.get(job.routing_id)
    if existing is not None:
        raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                            f"{existing.name}; LOGOUT first")
    core.check_may_log_in(job.key, now_ms)  # after the password: no account probing
    core.check_capacity()  # again: sessions may have filled up while hashing
    # Store first: if it fails (503) the connection must not be left half logged in.
    account = core.accounts[job.key]
    token = secrets.token_urlsafe(24)
    # the presence lock before the row (one order across the cluster, docs/cluster.md)
    core.deliver.lock_presence(job.key)
    reply = logged_in(core, job.key, account.name, token)
    core.deliver.pending_handed(job.routing_id, reply.pending)
    core.store.add_session(token_sha256(token), job.key, token_id, job.address, now_ms,
                           presence=job.presence)
    session = Session(job.routing_id, token, job.key, account.name,
                      job.address, now_ms, now_s, now_ms, login_token_id=token_id,
                      transport_key=job.transport_key, presence=job.presence)
    actions = core.bind_session(session, now_ms)
    log.info("login %s from %s (%d sessions, %d stored DMs)%s", account.name,
             job.where, len(account.sessions), len(reply.pending),
             "" if token_id is None else f" with token {token_id}")
    actions.insert(0, core.charge_reply(job.key, core.ok(job.routing_id, job.request_id,
                                                           reply), now_s))
    return actions


def logged_in(core: Core, key: str, name: str, token: str) -> p.LoggedIn:
    """The LOGIN/RESUME reply (docs/PROTOCOL.md §6.3): the account's rooms (with
    last_seq and topic), its pending DMs, and its read state (§6.3.1): per room the
    read marker, what is unread after it and the unread mentions; the DM
    conversations with unread DMs, newest first, at most MAX_DM_READS."""
    room_rows = core.store.rooms_of(key)
    rooms = tuple(p.RoomState(room=r.name, last_seq=r.last_seq, topic=r.topic,
                              slow_mode_s=core.slow_mode.get(r.key, 0),
                              private=r.key in core.private, locked=r.key in core.locked)
                  for r in room_rows)
    pending = tuple(dm_of(d)
                    for d in core.store.pending_dms(key, core.config.max_stored_dms))
    reads = core.store.room_reads(key)
    room_reads = []
    for r in room_rows:
        read = reads.get(r.key)
        read_seq = r.last_seq if read is None else min(read.read_seq, r.last_seq)
        room_reads.append(p.RoomRead(room=r.name, read_seq=read_seq,
                                     unread=r.last_seq - read_seq,
                                     mentions=0 if read is None else read.mentions))
    dm_reads = tuple(p.DmRead(peer=d.peer, last_id=d.last_id, read_id=d.read_id,
                              unread=d.unread)
                     for d in core.store.unread_dm_reads(key, p.MAX_DM_READS))
    return p.LoggedIn(name=name, session=token, rooms=rooms, pending=pending,
                      room_reads=tuple(room_reads), dm_reads=dm_reads)


def info(core: Core, call: Call, session: Session | None, req: p.Info) -> list[Action]:
    cfg = core.config
    return [core.ok(call.rid, call.request_id, p.InfoReply(
        version=p.VERSION_NUMBER, pub=core.pub_endpoint, time=call.now_ms,
        heartbeat_interval_ms=int(cfg.heartbeat_interval_s * 1000),
        heartbeat_timeout_ms=int(cfg.heartbeat_timeout_s * 1000),
        max_text_bytes=cfg.max_text_bytes, max_text_lines=cfg.max_text_lines,
        min_password_chars=cfg.min_password_chars))]


def register(core: Core, call: Call, session: Session | None, req: p.Register) -> list[Action]:
    """REGISTER (docs/PROTOCOL.md §6.2), counted in the login buckets of the peer's
    address, or of the address a trusted proxy tells (``address``, §15.1)."""
    address, via = core.acting_for(call.address, p.given(req.address, None))
    holds = core.job_holds(call.rid, address)
    core.check_jobs(holds)
    core.limit_login(call.rid, address, call.now_s, "registrations")
    name = normalize_new_name(req.name)
    core.check_new_password(req.password)
    key = name_key(name)
    core.check_not_admin_name(key, skeleton(name), name)
    if key in core.accounts or core.store.account_skeleton_taken(skeleton(name)):
        raise ProtocolError(Status.CONFLICT, f"the name {name!r} is taken "
                            "(or too like an existing name)")
    cfg = core.config
    password = req.password
    return core.start_job(
        RegisterJob(routing_id=call.rid, request_id=call.request_id, address=address,
                    via=via, holds=holds, key=key, name=name, bot=req.bot),
        lambda: hash_password(password, cfg.argon2_memory_kib, cfg.argon2_time_cost,
                              cfg.argon2_parallelism))


def login(core: Core, call: Call, session: Session | None, req: p.Login) -> list[Action]:
    """LOGIN (docs/PROTOCOL.md §6.3), counted in the login buckets of the peer's
    address, or of the address a trusted proxy tells (``address``, §15.1), which is
    then the session's address too."""
    address, via = core.acting_for(call.address, p.given(req.address, None))
    holds = core.job_holds(call.rid, address, known_account(core, req.name))
    core.check_jobs(holds)
    core.limit_login(call.rid, address, call.now_s, "login attempts")
    if session is not None:
        raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                            f"{session.name}; LOGOUT first")
    core.check_capacity()
    if bool(req.password) == bool(req.token):
        raise ProtocolError(Status.BAD_REQUEST, "give exactly one of password and token")
    if req.token:
        return login_by_token(core, call, req, address, via)
    core.check_password(req.password)
    key = core.account_key(req.name)
    row = core.store.get_account(key)
    if row is None:  # the in-memory index and the store disagree: not the peer's fault
        raise ProtocolError(Status.NOT_FOUND, f"no account named {req.name!r}")
    cfg = core.config
    password, stored = req.password, row.password_hash
    return core.start_job(
        LoginJob(routing_id=call.rid, request_id=call.request_id, address=address, via=via,
                 holds=core.job_holds(call.rid, address, key), key=key, name=row.name,
                 transport_key=call.transport_key, presence=p.given(req.presence, True),
                 checked_hash=stored),
        lambda: check_login(password, stored, cfg.argon2_memory_kib, cfg.argon2_time_cost,
                            cfg.argon2_parallelism))


def resume(core: Core, call: Call, session: Session | None, req: p.Resume) -> list[Action]:
    """RESUME (docs/PROTOCOL.md §6.27): take over a session by its token on this new
    connection. A live session (not evicted: silent less than heartbeat_timeout_s) is
    rebound to this routing id, the old one forgotten, and no PRESENCE is published.
    A session kept from before a broker restart is resumable for resume_grace_s after
    the start; it comes back like a LOGIN (online PRESENCE if the account was
    offline). Raises ProtocolError 409 on a connection already logged in, 400 for an
    empty token, 401 for an unknown, ended or expired one. Not rate-limited as a
    login: the 256-bit token cannot be guessed."""
    if session is not None:
        raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                            f"{session.name}; LOGOUT first")
    if not req.session:
        raise ProtocolError(Status.BAD_REQUEST, "session must not be empty")
    if len(req.session) > p.MAX_PASSWORD_CHARS:
        raise ProtocolError(Status.UNAUTHORIZED, "unknown or expired session")
    token_hash = token_sha256(req.session)
    old_rid = core.by_token.get(token_hash)
    if old_rid is not None:
        live = core.sessions[old_rid]
        core.limit_resume(live.account_key, call.now_s)
        core.check_may_log_in(live.account_key, call.now_ms)
        reply = logged_in(core, live.account_key, live.name, live.token)
        core.deliver.pending_handed(call.rid, reply.pending)
        del core.sessions[old_rid]
        account = core.accounts[live.account_key]
        account.sessions.discard(old_rid)
        live.routing_id = call.rid
        live.last_seen_s, live.last_seen_ms = call.now_s, call.now_ms
        if call.address:
            live.address = call.address
        core.unbind_key(live)  # the old connection's key may no longer subscribe
        live.transport_key = call.transport_key
        core.bind_key(live)
        core.sessions[call.rid] = live
        core.by_token[token_hash] = call.rid
        account.sessions.add(call.rid)
        log.info("resumed %s on a new connection from %s", live.name, call.address or "?")
        # §6.27: the last RESUME wins; the connection it displaces is told, so that
        # two connections never both believe they hold the session
        closed = core.deliver.to_session(old_rid, p.SessionClosed(
            reason="your session was resumed on another connection", by=live.name,
            time=call.now_ms))
        return [core.charge_reply(live.account_key, core.ok(call.rid, call.request_id, reply),
                                  call.now_s), closed]
    core.expire_restored(call.now_s)
    row = core.restored.get(token_hash)
    if row is None and core.deliver.shares_sessions:
        row = stored_session(core, token_hash)  # made or held by another broker
    if row is None:
        raise ProtocolError(Status.UNAUTHORIZED, "unknown or expired session; LOGIN "
                            "again")
    core.limit_resume(row.account_key, call.now_s)
    core.check_may_log_in(row.account_key, call.now_ms)
    account = core.accounts[row.account_key]
    reply = logged_in(core, row.account_key, account.name, req.session)
    core.deliver.pending_handed(call.rid, reply.pending)
    # a row another broker held until now, or let go so recently that its account's
    # offline is still held back (released_ms > 0, Store.due_offline): the account was
    # online in the cluster all along, and stays so with no event (one online, one
    # offline per account: docs/cluster.md)
    announce = not row.holder and row.released_ms <= 0
    if announce:  # the presence lock before the row (docs/cluster.md)
        core.deliver.lock_presence(row.account_key)
    core.restored.pop(token_hash, None)
    # the row is this broker's now (in a cluster: held under its lease, docs/cluster.md),
    # and a broker still holding it lets it go, with no offline event (Fanout.session_moved)
    core.store.add_session(token_hash, row.account_key, row.login_token_id,
                           call.address or row.address, row.login_ms, presence=row.presence)
    core.deliver.session_moved(token_hash)
    resumed = Session(call.rid, req.session, row.account_key, account.name,
                      call.address or row.address, row.login_ms, call.now_s, call.now_ms,
                      login_token_id=row.login_token_id, transport_key=call.transport_key,
                      presence=row.presence)
    actions = core.bind_session(resumed, call.now_ms, announce=announce)
    log.info("resumed %s from the store (a broker restart, or another broker's "
             "session), from %s", account.name, call.address or row.address or "?")
    return [core.charge_reply(row.account_key, core.ok(call.rid, call.request_id, reply), call.now_s),
            *actions]


def stored_session(core: Core, token_hash: str) -> SessionRow | None:
    """A session of the cluster's store that this broker does not hold (another broker
    made it, holds it or held it before it died; docs/cluster.md), or None when there
    is none, its account is gone, or it logged in with an account token revoked since.
    Its account is learnt from the store when this broker has not heard of it yet."""
    row = core.store.session(token_hash)
    if row is None:
        return None
    if row.account_key not in core.accounts:
        account = core.store.get_account(row.account_key)
        if account is None:
            return None
        core.state.add_account(row.account_key, account.name, account.bot)
    if row.login_token_id is not None and row.login_token_id not in {
            token_id for token_id, _ in core.store.token_hashes(row.account_key)}:
        return None
    return row


def logout(core: Core, call: Call, session: Session, req: p.Logout) -> list[Action]:
    text = check_away_text(req.text, "quit message")
    if text and core.active_ban("mute", "", session.account_key, call.now_ms):
        text = ""  # §6.4: a quit message is speech; the LOGOUT itself goes through
    core.deliver.lock_presence(session.account_key)  # 503 here when busy elsewhere
    log.info("logout %s", session.name)
    return [core.ok(call.rid, call.request_id, p.Ok()), *core.end_session(session, call.now_ms, text)]


def ping(core: Core, call: Call, session: Session | None, req: p.Ping) -> list[Action]:
    if session is None:
        return [core.ok(call.rid, call.request_id, p.Pong(time=call.now_ms, session=""))]
    budget = None
    if core.config.read_rate_bytes_per_s > 0:
        # §15.1: a PONG lists every room of the account with its topic (up to ~1.3 MB
        # for 1,000 rooms); it is charged as reading, and while the budget is spent
        # PING is still answered, without the list (``listed`` false)
        budget = core.read_budget(session.account_key, call.now_s)
        if budget.wait_ms(call.now_s):
            return [core.ok(call.rid, call.request_id,
                            p.Pong(time=call.now_ms, session=session.token, listed=False))]
    rooms = tuple(core.room_state(k)
                  for k in sorted(core.rooms_of.get(session.account_key, ())))
    reply = core.ok(call.rid, call.request_id,
                    p.Pong(time=call.now_ms, rooms=rooms, session=session.token))
    if rooms:
        cost = sum(len(f) for f in reply.frames)
        if budget is not None:
            budget.charge(cost, call.now_s)
        core.read_bytes += cost
    return [reply]


def set_presence(core: Core, call: Call, session: Session, req: p.SetPresence) -> list[Action]:
    """SET_PRESENCE (§6.12). A session that announces no presence (LOGIN ``presence``
    false, §6.3) may not set one: 409, nothing changed."""
    if not session.presence:
        raise ProtocolError(Status.CONFLICT, "this session announces no presence (it "
                            "logged in with presence false): set it from another one")
    text = check_away_text(req.text if req.presence == "away" else "", "away text")
    account = core.accounts[session.account_key]
    actions: list[Action] = [core.ok(call.rid, call.request_id, p.Ok())]
    if (account.presence, account.away_text) != (req.presence, text):
        # §15.1: every change reaches every client, so changes are limited per
        # account; an away text is speech, so a server-wide mute forbids it (§6.12)
        core.limit_account(session, "presence", call.now_s)
        if text:
            mute = core.active_ban("mute", "", session.account_key, call.now_ms)
            if mute is not None:
                raise ProtocolError(Status.FORBIDDEN, "you are muted on this server "
                                    f"{wording.until(mute.until_ms)}: no away text")
        account.presence = req.presence
        account.away_text = text
        actions.append(core.deliver.presence(account, session.account_key, call.now_ms))
    return actions


def who(core: Core, call: Call, session: Session, req: p.Who) -> list[Action]:
    roles: dict[str, str] | None = None  # a room's roles (§17.1): each row's ``role``
    if req.room is not None:
        room_key = core.room_key(req.room, session)
        core.check_may_read(room_key, session)
        keys = sorted(core.members[room_key])
        roles = core.roles.get(room_key, {})
    else:
        keys = sorted(k for k, a in core.accounts.items() if a.presence != "offline")
    users = tuple(p.UserPresence(name=core.accounts[k].name,
                                 presence=core.accounts[k].presence,
                                 text=core.accounts[k].away_text,
                                 bot=core.accounts[k].bot,
                                 role="" if roles is None else roles.get(k, "member"))
                  for k in keys)
    return [core.ok(call.rid, call.request_id, p.WhoList(users=users))]


def whois(core: Core, call: Call, session: Session, req: p.Whois) -> list[Action]:
    """WHOIS name (§6.50): one account, offline too; 404 when there is none."""
    account = core.accounts[core.account_key(req.name)]
    return [core.ok(call.rid, call.request_id, p.UserFound(name=account.name, presence=account.presence,
                                              text=account.away_text, bot=account.bot))]


def set_password(core: Core, call: Call, session: Session, req: p.SetPassword) -> list[Action]:
    """SET_PASSWORD (§6.46): the session's account changes its own password. Every
    attempt takes a token from the address's login bucket (429), like LOGIN, so that
    a stolen session cannot guess the password quickly; the old password is checked
    and the new one hashed off the loop. On success the account's other sessions and
    its sessions kept for RESUME end; this one goes on. 401 wrong old password,
    422/413 new password; 403 from a session that logged in with a token (as
    CREATE_TOKEN: a leaked token must not become the password)."""
    if session.login_token_id is not None:
        raise ProtocolError(Status.FORBIDDEN, "log in with the password to change it")
    address = call.address or session.address
    holds = core.job_holds(call.rid, address, session.account_key)
    core.check_jobs(holds)
    core.limit_password_change(call.rid, address, session, call.now_s)
    if not req.old or len(req.old) > p.MAX_PASSWORD_CHARS:
        raise ProtocolError(Status.UNAUTHORIZED, "wrong password; nothing changed")
    core.check_new_password(req.new)
    row = core.store.get_account(session.account_key)
    if row is None:  # the in-memory index and the store disagree: not the peer's fault
        raise ProtocolError(Status.NOT_FOUND, f"no account named {session.name!r}")
    cfg = core.config
    old, new, stored = req.old, req.new, row.password_hash

    def work() -> str | None:
        if not verify_password(old, stored):
            return None
        return hash_password(new, cfg.argon2_memory_kib, cfg.argon2_time_cost,
                             cfg.argon2_parallelism)

    return core.start_job(
        SetPasswordJob(routing_id=call.rid, request_id=call.request_id, address=address,
                       holds=holds, key=session.account_key, name=session.name), work)


def finish_set_password(core: Core, job: SetPasswordJob, password_hash: str | None,
                        now_s: float, now_ms: int) -> list[Action]:
    """SET_PASSWORD's old password was checked and the new one hashed (None: the old
    one was wrong): store it, audited, and end the account's other sessions."""
    if password_hash is None:
        log.info("failed password change for %s from %s", job.name, job.address or "?")
        raise ProtocolError(Status.UNAUTHORIZED, "wrong password; nothing changed")
    session = core.sessions.get(job.routing_id)
    if session is None or session.account_key != job.key:
        raise ProtocolError(Status.UNAUTHORIZED, "your session ended meanwhile; "
                            "nothing changed")
    with core.store.transaction():
        core.store.set_password_hash(job.key, password_hash)
        core.store.append_audit(now_ms, job.name, "passwd", "", job.name)
    log.info("%s changed their password", job.name)
    return [core.ok(job.routing_id, job.request_id, p.Ok()), *core.end_account_sessions(
        job.key, now_ms, by=job.name, keep=job.routing_id,
        why="your password was changed from another session; log in with the new one")]
