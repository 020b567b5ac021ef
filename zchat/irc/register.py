"""IRCv3 ``draft/account-registration`` (https://ircv3.net/specs/extensions/
account-registration) in the IRC gateway (docs/irc.md, "Creating an account").

The core's part is pure, like commands.py: ``cmd_register`` checks what it can itself
and asks for one of two calls, ``RegisterAccount`` (REGISTER then LOGIN on the broker,
for a connection not logged in yet) or ``ClaimGuest`` (a guest connection, ``[irc]
guests``, keeps its account by giving it a password: SET_PASSWORD). The adapter's part
(``register_account``, ``claim_guest``) runs them on the connection's zchat client,
behind the gateway's per-address limit of failed logins (zchat/irc/server.py).

zchat's broker lets any connection REGISTER (docs/PROTOCOL.md §6.2: no session needed,
no switch to close it), so the capability is always offered, as ``before-connect``: no
``email-required`` (zchat keeps no email address) and no ``custom-account-name`` (the
nick is the account name, and a registered connection cannot change its nick).
"""

from __future__ import annotations

import math
import time
from typing import Any

from zchat.errors import ConnectionFailed, ProtocolError, RequestFailed, Status
from zchat.irc.calls import ClaimGuest, RegisterAccount
from zchat.irc.codec import Message
from zchat.irc.state import IrcConnection, _Failed
from zchat.names import name_key, normalize_new_name


def fail_code(status: int, reason: str = "") -> str:
    """The spec's FAIL REGISTER code for the broker's refusal ``status`` (§6.2): 409
    ACCOUNT_EXISTS, 403 (an admin's name) BAD_ACCOUNT_NAME, 422 and 413 WEAK_PASSWORD
    (the name was checked before: what the broker still refuses is the password), 429
    and 503 (and anything else: the broker unreachable) TEMPORARILY_UNAVAILABLE; so is a
    403 whose ``reason`` says the broker does not trust this gateway to tell addresses
    (``[irc] tell_addresses`` without ``[broker] trusted_proxies``: no fault of the
    name)."""
    if status == 403 and reason.startswith("only a trusted proxy"):
        return "TEMPORARILY_UNAVAILABLE"
    return {409: "ACCOUNT_EXISTS", 403: "BAD_ACCOUNT_NAME", 422: "WEAK_PASSWORD",
            413: "WEAK_PASSWORD"}.get(status, "TEMPORARILY_UNAVAILABLE")


def cmd_register(conn: IrcConnection, msg: Message) -> None:
    # REGISTER <account> {<email> | "*"} <password>
    if len(msg.params) < 3 or not msg.params[2]:
        conn.fail("REGISTER", "INVALID_PARAMS", msg.params[0] if msg.params else "*",
                  "Usage: REGISTER <account> {<email>|*} <password>")
        return
    given, email, password = msg.params[0], msg.params[1], msg.params[2]
    if conn.logged_in and not conn.guest:
        conn.fail("REGISTER", "ALREADY_AUTHENTICATED", conn.account,
                  f"You are logged in as {conn.account} already")
        return
    if conn.registering or conn.sasl_mechanism:
        conn.fail("REGISTER", "TEMPORARILY_UNAVAILABLE", given,
                  "A SASL exchange or REGISTER of this connection is in progress")
        return
    if conn.nick == "*":
        conn.fail("REGISTER", "NEED_NICK", given, "Send NICK first: the account name is "
                  "your nick")
        return
    account = conn.nick if given == "*" else given
    if name_key(account) != name_key(conn.nick):
        conn.fail("REGISTER", "ACCOUNT_NAME_MUST_BE_NICK", account,
                  "The account name must be your nick (the nick is the zchat account name)")
        return
    try:
        account = normalize_new_name(account)
    except ProtocolError as exc:
        conn.fail("REGISTER", "BAD_ACCOUNT_NAME", account, f"Bad account name: {exc.reason}")
        return
    note = "" if email == "*" else " (zchat keeps no email address: the one given was " \
        "not stored)"
    conn.registering = True
    if conn.guest and conn.logged_in:
        conn.call(ClaimGuest(password), _claimed, account, note)
    else:
        conn.call(RegisterAccount(account, password), _registered, account, note)


def _registered(conn: IrcConnection, account: str, note: str, reply: Any) -> None:
    conn.registering = False
    if isinstance(reply, _Failed):
        conn.fail("REGISTER", fail_code(reply.status, reply.reason), account, reply.reason)
        return
    conn._set_account(reply)
    _success(conn, reply.name, note)
    conn.maybe_register()


def _claimed(conn: IrcConnection, account: str, note: str, reply: Any) -> None:
    conn.registering = False
    if isinstance(reply, _Failed):
        conn.fail("REGISTER", fail_code(reply.status, reply.reason), account, reply.reason)
        return
    conn.guest = False
    peer = conn.peers.get(name_key(conn.account))
    if peer is not None:
        peer.guest = False
    _success(conn, conn.account, note)


def _success(conn: IrcConnection, account: str, note: str) -> None:
    """900 RPL_LOGGEDIN, as SASL's, then REGISTER SUCCESS."""
    src = conn.settings.server_name
    nick = conn.nick if conn.nick != "*" else account
    conn.send(Message("900", (nick, conn.mask(account), account,
                              f"You are now logged in as {account}"), source=src))
    conn.send(Message("REGISTER", ("SUCCESS", account,
                                   f"Account created: log in as {account} with this "
                                   f"password from any zchat client{note}"), source=src))


def cmd_verify(conn: IrcConnection, msg: Message) -> None:
    # VERIFY <account> <code>   (zchat verifies nothing: an account is usable at once)
    conn.fail("VERIFY", "INVALID_CODE", msg.params[0] if msg.params else "*",
              "zchat accounts need no verification: REGISTER SUCCESS means it is usable")


# -- the adapter's part (zchat/irc/server.py carries these calls out) ---------------------

def _check_address(session: Any) -> None:
    """RequestFailed 429 at once when the IRC client's address has no token left in the
    gateway's failed-login bucket (FAILED_LOGIN_BURST in server.py)."""
    wait_ms = session.gateway.failed_logins.wait_ms(session.address, time.monotonic())
    if wait_ms:
        raise RequestFailed(Status.TOO_MANY_REQUESTS, "too many failed logins or "
                            "registrations from your address: wait "
                            f"{math.ceil(wait_ms / 1000)} s", wait_ms)


async def register_account(session: Any, req: RegisterAccount) -> Any:
    """REGISTER then LOGIN on ``session``'s client; every REGISTER that reaches the
    broker, whatever its answer, takes a token of the address's failed-login bucket
    (account creation is what the limit is for). Raises RequestFailed (the broker's
    refusal, or 429 from the gateway's own limit), ConnectionFailed."""
    _check_address(session)
    client = await session._client()
    try:
        await client.register(req.name, req.password, address=session.told_address)
    except ConnectionFailed:
        raise  # never reached the broker: costs nothing
    except RequestFailed:
        session.gateway.failed_logins.take(session.address, time.monotonic())
        raise
    session.gateway.failed_logins.take(session.address, time.monotonic())
    return await session._login(req.name, req.password)


async def claim_guest(session: Any, req: ClaimGuest) -> None:
    """SET_PASSWORD of the guest account ``session`` holds, from the gateway's password to
    ``req.password``; then the gateway forgets the account was a guest's (its password,
    its place in ``guests_online``), so it outlives the connection like any account.
    Takes a token of the address's bucket, as ``register_account``."""
    _check_address(session)
    key = session.guest
    old = session.gateway.guest_passwords.get(key)
    if not key or old is None or session.client is None:
        raise RequestFailed(Status.CONFLICT, "this connection holds no guest account")
    try:
        await session.client.set_password(old, req.password)
    except ConnectionFailed:
        raise
    except RequestFailed:
        session.gateway.failed_logins.take(session.address, time.monotonic())
        raise
    session.gateway.failed_logins.take(session.address, time.monotonic())
    session.gateway.guest_passwords.pop(key, None)
    session.gateway.guests_online.discard(key)
    session.guest = ""
