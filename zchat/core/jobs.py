"""Work the core hands off the loop (password hashing), as typed values.

A handler that needs a password hashed or checked returns ``Offload(job_id, work)``; the
loop runs ``work()`` on its pool and hands the result to ``BrokerCore.complete``, which
finds the job by its id and runs its finisher (``zchat.core.requests.FINISHERS``, by
the job's class). Each job holds what its finisher needs and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from zchat.core.validation import CheckedAccount

#: Password jobs in flight at once (docs/PROTOCOL.md §9); beyond it LOGIN/REGISTER get 503
#: so that a flood of logins cannot queue unbounded work.
MAX_PENDING_JOBS = 1024
#: Password jobs one peer address, or one account, may have in flight at once (docs/
#: PROTOCOL.md §15.1). The pool runs jobs in arrival order, so without it one address could
#: keep it hundreds of jobs deep (a tester's SET_PASSWORD flood left six honest LOGINs from
#: other addresses unanswered for over 8 s); with it an honest LOGIN waits behind at most
#: this many jobs of each other address. 4 lets a family or a small office behind one NAT
#: log in together; a classroom of 30 waits a few half-seconds (the client retries a 429).
MAX_JOBS_PER_PEER = 4
#: ``retry_after_ms`` of a request refused for MAX_JOBS_PER_PEER: a few hashes' time.
JOB_BUSY_RETRY_MS = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """What every job has: the request it answers, and the in-flight counters it holds
    (``Core.job_holds``: its peer's address key and, for an account's password,
    ``acct:<key>``) until it completes or is abandoned."""

    routing_id: bytes
    request_id: bytes
    #: The peer's address, or the one a trusted proxy told (``Core.acting_for``).
    address: str
    holds: tuple[str, ...] = ()
    #: The trusted proxy that told ``address`` ("" when none did): for the log.
    via: str = ""

    @property
    def where(self) -> str:
        """The address for a log line: ``203.0.113.5 via 127.0.0.1`` when a trusted
        proxy told it, ``?`` when unknown (inproc)."""
        return f"{self.address or '?'} via {self.via}" if self.via else self.address or "?"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterJob(Job):
    """REGISTER: the new password is hashed; the result is the hash (str)."""

    key: str
    name: str
    bot: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginJob(Job):
    """LOGIN with a password: the result is a zchat.passwords.LoginCheck (whether it
    matched, and a new hash to store when the old one was scrypt or weaker)."""

    key: str
    name: str
    #: The stored hash the password was checked against ("" for a token login): a new
    #: hash replaces it only if it is still the stored one (Store.replace_password_hash).
    checked_hash: str = ""
    #: The connection's CURVE key (hex), bound to the session it makes.
    transport_key: str = ""
    #: LOGIN's ``presence``: False for a session that announces none (§6.3).
    presence: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccountsJob(Job):
    """CREATE_ACCOUNTS: the checked accounts, in order; the result is their hashes."""

    actor: str
    accounts: tuple[CheckedAccount, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminPasswordJob(Job):
    """ADMIN_SET_PASSWORD: the result is the new hash (str)."""

    actor: str
    key: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetPasswordJob(Job):
    """SET_PASSWORD: the result is the new hash, or None when the old password was
    wrong."""

    key: str
    name: str
