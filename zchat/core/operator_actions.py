"""Operator actions, once: what an admin's request over the wire (zchat.core.operators,
zchat.core.moderation) and `zchat admin` on the database file (zchat.admin's direct
mode) both write, each in one transaction with its audit entry.

Each function takes the store port and names already checked; it decides nothing a
person reads (the callers word refusals: a wire status, or the command line's one
line). What only a running broker can do — change its in-memory state
(zchat.core.state: ``lift_ban``, ``set_quota`` ...), end live sessions and tell them why
(SESSION_CLOSED), push MUTED, publish events — the core adds after the write
(``Core.end_account_sessions``); a direct-mode write runs while no broker holds the
data directory, so the sessions it ends are the ones stored for RESUME, deleted here.
"""

from __future__ import annotations

from collections.abc import Sequence

from zchat.core.ports import Store
from zchat.core.state import DEFAULT_ROOM
from zchat.core.validation import CheckedAccount
from zchat.core.wording import quota_text
from zchat.names import name_key, skeleton


def _forget_sessions(store: Store, account_key: str) -> None:
    """Delete the account's stored sessions (no RESUME with them any more)."""
    store.delete_sessions([s.token_sha256 for s in store.sessions()
                           if s.account_key == account_key])


def create_accounts(store: Store, accounts: Sequence[CheckedAccount],
                    hashes: Sequence[str], actor: str, now_ms: int) -> None:
    """Create ``accounts`` (checked, with their password hashes), each in ``lobby``, with
    one ``create_account`` audit entry each: all or none. Raises NameTaken when a name
    was taken meanwhile (nothing created)."""
    lobby = name_key(DEFAULT_ROOM)
    store.ensure_room(lobby, DEFAULT_ROOM, skeleton(DEFAULT_ROOM), now_ms)
    with store.transaction():
        for account, password_hash in zip(accounts, hashes, strict=True):
            store.create_account(account.key, account.name, account.skeleton, password_hash,
                                 now_ms, bot=account.bot, rooms=(lobby,))
            store.append_audit(now_ms, actor, "create_account", target=account.name,
                               detail="bot" if account.bot else "")


def reset_password(store: Store, key: str, name: str, password_hash: str, actor: str,
                   now_ms: int) -> None:
    """Give the account (``key``, display ``name``) a new password hash, forget its
    stored sessions, and audit it (``reset_password``), in one transaction."""
    with store.transaction():
        store.set_password_hash(key, password_hash)
        _forget_sessions(store, key)
        store.append_audit(now_ms, actor, "reset_password", target=name)


def set_disabled(store: Store, key: str, name: str, disabled: bool, actor: str,
                 now_ms: int) -> bool:
    """Disable (forgetting its stored sessions) or enable the account, audited, in one
    transaction. Returns whether it changed: nothing is written when it was so already."""
    if store.is_disabled(key) == disabled:
        return False
    with store.transaction():
        store.set_disabled(key, disabled)
        if disabled:
            _forget_sessions(store, key)
        store.append_audit(now_ms, actor, "disable" if disabled else "enable", target=name)
    return True


def set_quota(store: Store, key: str, name: str, quota: int | None, current: int | None,
              default: int, actor: str, now_ms: int) -> bool:
    """Set the account's storage quota (None: the broker's ``default`` again; ``current``
    its own now), audited, in one transaction. Returns whether it changed."""
    if current == quota:
        return False
    with store.transaction():
        store.set_storage_quota(key, quota)
        store.append_audit(now_ms, actor, "quota", target=name,
                           detail=quota_text(quota, default))
    return True


def lift(store: Store, kind: str, room_key: str, room_name: str, key: str, name: str,
         actor: str, now_ms: int) -> bool:
    """Lift the account's ban or mute (``kind``) in a room (``room_key`` "" server-wide),
    audited (``unban``/``unmute``), in one transaction. Returns False, writing nothing,
    when none was in force."""
    with store.transaction():
        if not store.lift_ban(kind, room_key, key):
            return False
        store.append_audit(now_ms, actor, "unban" if kind == "ban" else "unmute",
                           room=room_name, target=name)
    return True
