"""Operator tools (docs/PROTOCOL.md §6.14, §6.42-§6.45, §6.53; docs/admin.md): SESSIONS,
USERS, CREATE_ACCOUNTS, ADMIN_SET_PASSWORD, ADMIN_DISABLE and ADMIN_SET_QUOTA. Each write
is an operator action of zchat.core.operator_actions, which `zchat admin` runs on the
database too."""

from __future__ import annotations

import logging

from zchat import wire as p
from zchat.core import operator_actions, wording
from zchat.core.actions import Action
from zchat.core.context import Call, Core
from zchat.core.jobs import AdminPasswordJob, CreateAccountsJob
from zchat.core.state import DEFAULT_ROOM, Session
from zchat.core.validation import NewAccountRow, check_batch
from zchat.errors import ProtocolError, Status
from zchat.names import name_key
from zchat.passwords import hash_password

log = logging.getLogger("zchat.broker")


def finish_admin_password(core: Core, job: AdminPasswordJob, password_hash: str,
                          now_s: float, now_ms: int) -> list[Action]:
    """ADMIN_SET_PASSWORD's new password is hashed: store it, audited, and end every
    session of the account (live ones told why)."""
    if job.key not in core.accounts:
        raise ProtocolError(Status.NOT_FOUND, f"no account named {job.name!r}")
    operator_actions.reset_password(core.store, job.key, job.name, password_hash, job.actor,
                                    now_ms)
    log.info("%s reset the password of %s", job.actor, job.name)
    return [core.ok(job.routing_id, job.request_id, p.Ok()), *core.end_account_sessions(
        job.key, now_ms, by=job.actor,
        why="your password was reset; log in with the new one")]


def finish_create_accounts(core: Core, job: CreateAccountsJob, hashes: tuple[str, ...],
                           now_s: float, now_ms: int) -> list[Action]:
    """CREATE_ACCOUNTS' passwords are hashed: create them all in ``lobby``, audited, in
    one transaction (docs/PROTOCOL.md §6.43), or none when a name was taken meanwhile."""
    accounts = job.accounts
    taken = [a.name for a in accounts if core.name_taken(a.key, a.skeleton)]
    if taken:  # registered while hashing
        raise ProtocolError(Status.CONFLICT, "taken meanwhile, none created: "
                            + ", ".join(taken))
    lobby = name_key(DEFAULT_ROOM)
    operator_actions.create_accounts(core.store, accounts, hashes, job.actor, now_ms)
    actions: list[Action] = [core.ok(job.routing_id, job.request_id, p.AccountsCreated(
        names=tuple(a.name for a in accounts)))]
    for account in accounts:
        core.state.add_account(account.key, account.name, account.bot)
        core.state.add_member(lobby, account.key)
        actions += core.deliver.room_event(lobby, p.UserJoined(room=core.rooms[lobby],
                                                        name=account.name, time=now_ms))
    log.info("%s created %d accounts", job.actor, len(accounts))
    return actions


def list_sessions(core: Core, call: Call, session: Session, req: p.ListSessions) -> list[Action]:
    rows = tuple(p.SessionInfo(name=s.name, address=s.address, login_time=s.login_ms,
                               last_seen=s.last_seen_ms)
                 for s in sorted(core.sessions.values(), key=lambda s: (s.name, s.login_ms)))
    return [core.ok(call.rid, call.request_id, p.SessionList(sessions=rows))]


def list_users(core: Core, call: Call, session: Session, req: p.ListUsers) -> list[Action]:
    """USERS (§6.42): every account with bot, disabled, created and live sessions.
    Admins only (403)."""
    stored = core.stored()
    users = tuple(p.AccountInfo(name=a.name, bot=a.bot, disabled=a.disabled,
                                created=a.created_ms,
                                online=bool(core.live_sessions(a.key)),
                                sessions=len(core.live_sessions(a.key)),
                                stored_bytes=stored.get(a.key, 0),
                                quota_bytes=core.quota_of(a.key))
                  for a in core.store.list_accounts())
    return [core.ok(call.rid, call.request_id, p.UserList(users=users))]


def create_accounts(core: Core, call: Call, session: Session, req: p.CreateAccounts) -> list[Action]:
    """CREATE_ACCOUNTS (§6.43): an admin creates 1..MAX_CREATE_ACCOUNTS accounts, all
    or none, by REGISTER's rules (zchat.admin.check_batch): every bad account is
    named in one 422 (409 when they are all taken names) and nothing is created. The
    passwords are hashed off the loop in one Offload job; not rate-limited as logins
    (the admin's session is authenticated already)."""
    if not 1 <= len(req.accounts) <= p.MAX_CREATE_ACCOUNTS:
        raise ProtocolError(Status.BAD_REQUEST, f"accounts must hold 1 to "
                            f"{p.MAX_CREATE_ACCOUNTS} accounts")
    rows = [NewAccountRow(i, a.name, a.password, a.bot)
            for i, a in enumerate(req.accounts)]
    good, bad = check_batch(rows, core.name_taken, core.config.min_password_chars)
    if bad:
        status = Status.CONFLICT if all("taken" in b.problem for b in bad) \
            else Status.INVALID
        raise ProtocolError(status, f"{len(bad)} of {len(rows)} accounts refused, none "
                            "created: " + "; ".join(f"accounts[{b.line}] {b.problem}"
                                                   for b in bad))
    for account in good:  # as REGISTER: admins' accounts come from the operator only
        core.check_not_admin_name(account.key, account.skeleton, account.name)
    cfg = core.config
    passwords = [a.password for a in good]
    return core.start_job(
        CreateAccountsJob(routing_id=call.rid, request_id=call.request_id,
                          address=call.address, actor=session.name, accounts=tuple(good),
                          holds=core.job_holds(call.rid, call.address or session.address,
                                               session.account_key)),
        lambda: tuple(hash_password(pw, cfg.argon2_memory_kib, cfg.argon2_time_cost,
                                    cfg.argon2_parallelism)
                      for pw in passwords))


def admin_set_password(core: Core, call: Call, session: Session, req: p.AdminSetPassword) -> list[Action]:
    """ADMIN_SET_PASSWORD (§6.44): an admin gives an account a new password (hashed off
    the loop); every session of the account, live or kept for RESUME, then ends.
    403 not an admin, or the account is a broker admin's (one admin must not take
    over another; only the operator resets theirs, on the database; one's own goes
    through SET_PASSWORD, which asks for the old one); 404 no such account, 422/413
    password."""
    key = core.account_key(req.name)
    if key in core.admins:
        raise ProtocolError(Status.FORBIDDEN, f"{core.accounts[key].name} is a broker "
                            "admin: only the operator resets an admin's password, with "
                            "`zchat admin reset-password` on the database"
                            + ("; change your own with `zchat passwd`"
                               if key == session.account_key else ""))
    core.check_new_password(req.password)
    cfg = core.config
    password = req.password
    return core.start_job(
        AdminPasswordJob(routing_id=call.rid, request_id=call.request_id,
                         address=call.address, actor=session.name, key=key,
                         name=core.accounts[key].name,
                         holds=core.job_holds(call.rid, call.address or session.address,
                                              session.account_key)),
        lambda: hash_password(password, cfg.argon2_memory_kib, cfg.argon2_time_cost,
                              cfg.argon2_parallelism))


def set_disabled(core: Core, call: Call, session: Session, req: p.SetDisabled) -> list[Action]:
    """ADMIN_DISABLE (§6.45): an admin disables an account (LOGIN and RESUME then get
    403; every session of it ends at once) or enables it again. Audited when it
    changed; the same state again is an OK that changes nothing. 403 not an admin,
    or disabling oneself or another admin; 404 no such account."""
    key = core.account_key(req.name)
    name = core.accounts[key].name
    if req.disabled and key == session.account_key:
        raise ProtocolError(Status.FORBIDDEN, "you cannot disable yourself")
    if key in core.admins and key != session.account_key:
        # enabling too: an admin the operator disabled on the database stays so
        raise ProtocolError(Status.FORBIDDEN, f"{name} is a broker admin: only the "
                            "operator disables or enables an admin, on the database "
                            "(or takes them out of [broker] admins)")
    ok = core.ok(call.rid, call.request_id, p.Ok())
    if not operator_actions.set_disabled(core.store, key, name, req.disabled, session.name,
                                         call.now_ms):
        return [ok]
    log.info("%s %s the account %s", session.name,
             "disabled" if req.disabled else "enabled", name)
    if not req.disabled:
        return [ok]
    return [ok, *core.end_account_sessions(
        key, call.now_ms, by=session.name,
        why="your account was disabled; ask a broker admin to enable it")]


def set_quota(core: Core, call: Call, session: Session, req: p.SetQuota) -> list[Action]:
    """ADMIN_SET_QUOTA (§6.53): an admin gives an account a storage quota of its own
    (bytes of message text; 0 no quota) or, with None, the broker's default again.
    It bounds what the account stores from now on; nothing stored is removed.
    Audited when it changed. 403 not an admin, or the account is another broker
    admin's (the operator's, on the database); 404 no such account; 400 outside
    0..MAX_STORAGE_QUOTA_BYTES."""
    key = core.account_key(req.name)
    name = core.accounts[key].name
    if key in core.admins and key != session.account_key:
        raise ProtocolError(Status.FORBIDDEN, f"{name} is a broker admin: only the "
                            "operator sets another admin's quota, with `zchat admin "
                            "quota` on the database")
    quota = req.quota_bytes
    if quota is not None and not 0 <= quota <= p.MAX_STORAGE_QUOTA_BYTES:
        raise ProtocolError(Status.BAD_REQUEST, f"quota_bytes must be 0 (no quota) to "
                            f"{p.MAX_STORAGE_QUOTA_BYTES:,}, or null (the broker's "
                            f"default), got {quota}")
    if operator_actions.set_quota(core.store, key, name, quota, core.storage_quotas.get(key),
                                  core.config.storage_quota_bytes, session.name,
                                  call.now_ms):
        core.state.set_quota(key, quota)
        log.info("%s set the storage quota of %s to %s", session.name, name,
                 wording.quota_text(quota, core.config.storage_quota_bytes))
    return [core.ok(call.rid, call.request_id, p.QuotaSet(
        name=name, quota_bytes=core.quota_of(key), default=key not in core.storage_quotas,
        stored_bytes=core.stored().get(key, 0)))]
