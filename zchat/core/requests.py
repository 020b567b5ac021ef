"""The request table: every request type, its handler, and its preconditions, declared
once (the shape of Ergo's ``irc/commands.go``) and checked in one place
(``BrokerCore.handle``, zchat.core.facade):

- ``session``: the request needs a logged-in session (else 401, before its body is
  parsed); the handler then gets a ``Session``, not ``Session | None``;
- ``admin``: only broker admins may make it (403 "only broker admins may <admin>");
- ``sends``: it takes a token of the session's and the account's sending buckets first
  (429; docs/PROTOCOL.md §15.1), unless sending limits are off;
- ``reading``: its reply grows with what the broker holds, so it is charged to the
  account's reading budget (checked before, charged after; §15.1) and the loop counts
  its bytes to bound a wake-up (zchat.broker.loop.BATCH_READ_BYTES);
- ``offloaded``: it may hand password work to the loop's pool; its job's class (one of
  zchat.core.jobs) is finished by ``FINISHERS``.

To add a request type: its value and codec entry in the wire, a handler in the module of
its domain, one line here, its section in docs/PROTOCOL.md, and a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from zchat import wire as p
from zchat.core import dms, moderation, operators, rooms, sessions, tokens
from zchat.core.actions import Action
from zchat.core.context import Call, Core
from zchat.core.jobs import (
    AdminPasswordJob,
    CreateAccountsJob,
    Job,
    LoginJob,
    RegisterJob,
    SetPasswordJob,
)
from zchat.core.state import Session

R = TypeVar("R", bound=p.Request)
J = TypeVar("J", bound=Job)
#: A handler: the core, the call (who, when), the session (None only where the table
#: lets a request in without one) and the decoded request; returns the actions.
Handler = Callable[[Core, Call, Session | None, R], list[Action]]


@dataclass(frozen=True, slots=True)
class Spec(Generic[R]):
    """One row of the table (see the module docstring)."""

    handler: Handler[R]
    session: bool = True
    admin: str = ""
    sends: bool = False
    reading: bool = False
    offloaded: bool = False


def needs_session(handler: Callable[[Core, Call, Session, R], list[Action]], *,
                  admin: str = "", sends: bool = False, reading: bool = False,
                  offloaded: bool = False) -> Spec[R]:
    """A request only a logged-in session may make (most of them)."""
    # The table guarantees the handler a Session: handle() answers 401 before it.
    return Spec(handler, True, admin, sends, reading, offloaded)  # type: ignore[arg-type]


def open_to_all(handler: Handler[R], *, offloaded: bool = False) -> Spec[R]:
    """A request a connection may make before it logs in."""
    return Spec(handler, False, offloaded=offloaded)


REQUESTS: dict[type[p.Request], Spec[Any]] = {
    # sessions (zchat.core.sessions)
    p.Info: open_to_all(sessions.info),
    p.Register: open_to_all(sessions.register, offloaded=True),
    p.Login: open_to_all(sessions.login, offloaded=True),
    p.Resume: open_to_all(sessions.resume),
    p.Ping: open_to_all(sessions.ping),
    p.Logout: needs_session(sessions.logout),
    p.SetPresence: needs_session(sessions.set_presence),
    p.Who: needs_session(sessions.who, reading=True),
    p.Whois: needs_session(sessions.whois, reading=True),
    p.SetPassword: needs_session(sessions.set_password, offloaded=True),
    # rooms and their messages (zchat.core.rooms)
    p.Join: needs_session(rooms.join),
    p.Part: needs_session(rooms.part),
    p.ListRooms: needs_session(rooms.list_rooms, reading=True),
    p.FetchRoom: needs_session(rooms.room_info, reading=True),
    p.Send: needs_session(rooms.send, sends=True),
    p.FetchHistory: needs_session(rooms.history, reading=True),
    p.MarkRead: needs_session(rooms.mark_read),
    p.SetTopic: needs_session(rooms.set_topic),
    # direct messages (zchat.core.dms)
    p.SendDirect: needs_session(dms.dm, sends=True),
    p.AckDirect: needs_session(dms.ack_dm),
    p.FetchDmHistory: needs_session(dms.dm_history, reading=True),
    # moderation (zchat.core.moderation)
    p.Kick: needs_session(moderation.kick),
    p.Ban: needs_session(moderation.ban),
    p.Unban: needs_session(moderation.unban),
    p.Mute: needs_session(moderation.mute),
    p.Unmute: needs_session(moderation.unmute),
    p.Invite: needs_session(moderation.invite),
    p.SetRole: needs_session(moderation.set_role),
    p.SetRoom: needs_session(moderation.set_room),
    p.SetSlowMode: needs_session(moderation.set_slow_mode),
    p.DeleteMessage: needs_session(moderation.delete_message),
    p.DeleteRoom: needs_session(moderation.delete_room),
    p.ListBans: needs_session(moderation.list_bans, reading=True),
    p.ReadAudit: needs_session(moderation.read_audit, reading=True),
    # account tokens (zchat.core.tokens)
    p.CreateToken: needs_session(tokens.create_token),
    p.ListTokens: needs_session(tokens.list_tokens, reading=True),
    p.RevokeToken: needs_session(tokens.revoke_token),
    # operator tools (zchat.core.operators)
    p.ListSessions: needs_session(operators.list_sessions, admin="list sessions",
                                  reading=True),
    p.ListUsers: needs_session(operators.list_users, admin="list accounts", reading=True),
    p.CreateAccounts: needs_session(operators.create_accounts, admin="create accounts",
                                    offloaded=True),
    p.AdminSetPassword: needs_session(operators.admin_set_password,
                                      admin="reset passwords", offloaded=True),
    p.SetDisabled: needs_session(operators.set_disabled, admin="disable or enable accounts"),
    p.SetQuota: needs_session(operators.set_quota, admin="set storage quotas"),
}

#: Requests whose replies are charged to the account's reading budget (docs/PROTOCOL.md
#: §15.1): the ones whose reply grows with what the broker holds (a page of history,
#: every room, every member). PING is not among them: it is the heartbeat, and its
#: PONG lists at most MAX_ROOMS_PER_ACCOUNT rooms.
READING_REQUESTS: frozenset[type[p.Request]] = frozenset(
    t for t, spec in REQUESTS.items() if spec.reading)

#: A finisher completes a job with what its work returned (zchat.core.jobs).
Finisher = Callable[[Core, J, Any, float, int], list[Action]]

FINISHERS: dict[type[Job], Finisher[Any]] = {
    RegisterJob: sessions.finish_register,
    LoginJob: sessions.finish_login,
    SetPasswordJob: sessions.finish_set_password,
    CreateAccountsJob: operators.finish_create_accounts,
    AdminPasswordJob: operators.finish_admin_password,
}
