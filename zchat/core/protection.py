"""Protection (docs/PROTOCOL.md §15): the rate limits, the reading budgets, the storage
quotas and the password jobs' bounds, as the part of ``Core`` (zchat.core.context) that
every domain calls. Each check raises RateLimited (429) or ProtocolError before the work
it guards; a refused request changes nothing."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from zchat.config import BrokerConfig
from zchat.core import wording
from zchat.core.actions import Action, Offload, ToPeer
from zchat.core.jobs import JOB_BUSY_RETRY_MS, MAX_JOBS_PER_PEER, MAX_PENDING_JOBS, Job
from zchat.core.ports import Store
from zchat.core.state import Account, Session
from zchat.errors import ProtocolError, RateLimited, Status
from zchat.ratelimit import (
    BucketTable,
    ByteBudget,
    ProxyNetwork,
    TokenBucket,
    address_key,
    is_trusted,
    told_address,
)

#: RESUMEs of one account (docs/PROTOCOL.md §15.1): a burst of RESUME_BURST, then
#: RESUME_RATE_PER_S a second. Every device of an account resumes once after a broker
#: restart; a tester's two connections taking one session from each other 9,000 times
#: (each reply carrying up to 1,000 pending DMs) held a core and grew memory by GBs.
RESUME_RATE_PER_S = 1.0
RESUME_BURST = 30


class Protection:
    """The limits part of Core; the attributes below are Core's (zchat.core.context)."""

    store: Store
    config: BrokerConfig
    sessions: dict[bytes, Session]
    accounts: dict[str, Account]
    rooms: dict[str, str]
    slow_mode: dict[str, int]
    last_post: dict[str, dict[str, float]]
    storage_quotas: dict[str, int]
    storage_used: dict[str, int] | None
    read_bytes: int
    _jobs: dict[int, Job]
    _next_job: int
    _jobs_held: dict[str, int]
    _login_buckets: BucketTable | None
    #: ``config.trusted_proxies`` parsed (zchat.ratelimit.proxy_networks).
    trusted_proxies: tuple[ProxyNetwork, ...]

    def is_mod(self, key: str, account_key: str) -> bool:
        raise NotImplementedError  # Core's

    def start_job(self, job: Job, work: Callable[[], Any]) -> list[Action]:
        """Offload ``work`` for ``job``, which holds a place of each of its ``holds``
        (checked before by ``_check_jobs``) until ``complete`` or ``abandon_jobs``."""
        if len(self._jobs) >= MAX_PENDING_JOBS:
            raise ProtocolError(Status.UNAVAILABLE, "too many logins in progress; retry soon")
        self.check_jobs(job.holds)  # again: cheap, and a handler may have skipped it
        job_id = self._next_job
        self._next_job += 1
        self._jobs[job_id] = job
        for key in job.holds:
            self._jobs_held[key] = self._jobs_held.get(key, 0) + 1
        return [Offload(job_id, work)]

    @staticmethod
    def job_holds(rid: bytes, address: str, account_key: str = "") -> tuple[str, ...]:
        """The in-flight counters of a password job: the peer's address key (ratelimit.
        address_key) and, when the job checks or sets an account's password, the
        account's."""
        peer = address_key(address, rid)
        return (peer, "acct:" + account_key) if account_key else (peer,)

    def acting_for(self, call_address: str, told: str | None) -> tuple[str, str]:
        """LOGIN's or REGISTER's ``address`` (docs/PROTOCOL.md §6.3, §15.1): the
        address whose login buckets the request counts in, and the trusted proxy it
        came through ("" when it came straight). Not told: (``call_address``, "").
        Told by a peer in ``trusted_proxies``: (the told address, canonical, and the
        peer's). Raises ProtocolError 403 when the peer is not a trusted proxy (an
        ordinary client may not pick its bucket), 400 when the told address is not one
        IP address; either before anything is counted or changed. ``told`` None: the
        request gave no ``address``."""
        if told is None:
            return call_address, ""
        if not is_trusted(call_address, self.trusted_proxies):
            peer = f"from {call_address}" if call_address else "without an IP address"
            raise ProtocolError(Status.FORBIDDEN, f"only a trusted proxy may give address "
                                f"(the broker's trusted_proxies); this connection comes "
                                f"{peer}")
        try:
            return told_address(told), call_address
        except ValueError as exc:
            raise ProtocolError(Status.BAD_REQUEST, f"address: {exc}") from None

    def check_jobs(self, holds: tuple[str, ...]) -> None:
        """Raise RateLimited (429) when the address or the account of a new password
        job has MAX_JOBS_PER_PEER in flight already (docs/PROTOCOL.md §15.1). Off with
        the login limit (``login_rate_per_s`` 0: benchmarks, the chaos harness)."""
        if self._login_buckets is None:
            return
        for key in holds:
            if self._jobs_held.get(key, 0) >= MAX_JOBS_PER_PEER:
                whose = "for this account" if key.startswith("acct:") else \
                    "from your address"
                raise RateLimited(f"too many password checks in progress {whose}: wait "
                                  f"{wording.seconds(JOB_BUSY_RETRY_MS)} (at most "
                                  f"{MAX_JOBS_PER_PEER} at once)", JOB_BUSY_RETRY_MS)

    def release(self, job: Job) -> None:
        for key in job.holds:
            left = self._jobs_held.get(key, 0) - 1
            if left > 0:
                self._jobs_held[key] = left
            else:
                self._jobs_held.pop(key, None)

    def limit_login(self, rid: bytes, address: str, now_s: float, what: str) -> None:
        """Take a token from the peer's login bucket (by address, by routing id without
        one: ratelimit.address_key), before any other work. Raises RateLimited (429)."""
        table = self._login_buckets
        if table is None:
            return
        wait_ms = table.take(address_key(address, rid), now_s)
        if wait_ms:
            cfg = self.config
            raise RateLimited(f"too many {what} from your address: wait "
                              f"{wording.seconds(wait_ms)} (at most {cfg.login_burst} at once, then "
                              f"{cfg.login_rate_per_s:g} a second)", wait_ms)

    def limit_password_change(self, rid: bytes, address: str, session: Session,
                               now_s: float) -> None:
        """SET_PASSWORD (§6.46): a token from the address's login bucket and one from
        the account's own bucket of the same size, both or neither (429 naming the one
        that refused). The account's bucket is shared by its sessions, so a stolen
        session token resumed on fresh connections or addresses guesses no faster."""
        table = self._login_buckets
        if table is None:
            return
        cfg = self.config
        account = self.accounts[session.account_key]
        bucket = account.password_bucket
        if bucket is None:
            bucket = account.password_bucket = TokenBucket(cfg.login_rate_per_s,
                                                           cfg.login_burst, now_s)
        key = address_key(address, rid)
        limits = f"(at most {cfg.login_burst} at once, then {cfg.login_rate_per_s:g} a second)"
        wait_ms = table.wait_ms(key, now_s)
        if wait_ms:
            raise RateLimited(f"too many password changes from your address: wait "
                              f"{wording.seconds(wait_ms)} {limits}", wait_ms)
        wait_ms = bucket.wait_ms(now_s)
        if wait_ms:
            raise RateLimited(f"too many password changes for this account: wait "
                              f"{wording.seconds(wait_ms)} {limits}", wait_ms)
        table.take(key, now_s)
        bucket.take(now_s)

    def check_capacity(self) -> None:
        """Raise ProtocolError 503 when the broker holds ``max_sessions`` sessions."""
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError(Status.UNAVAILABLE, f"the broker is full ("
                                f"{self.config.max_sessions} sessions, its max_sessions); "
                                "retry later")

    def limit_send(self, session: Session, now_s: float) -> None:
        """Take a token from the session's SEND/DM bucket and from its account's (when
        account_send_rate_per_s is not 0), both or neither. Raises RateLimited (429)."""
        bucket = session.send_bucket
        if bucket is None and self.config.send_rate_per_s > 0:
            bucket = session.send_bucket = TokenBucket(
                self.config.send_rate_per_s, self.config.send_burst, now_s)
        shared = None
        if self.config.account_send_rate_per_s > 0:
            account = self.accounts[session.account_key]
            shared = account.send_bucket
            if shared is None:
                shared = account.send_bucket = TokenBucket(
                    self.config.account_send_rate_per_s, self.config.account_send_burst,
                    now_s)
        wait_ms = 0 if bucket is None else bucket.wait_ms(now_s)
        if wait_ms:
            assert bucket is not None
            raise RateLimited(f"sending too fast: wait {wording.seconds(wait_ms)} (at most "
                              f"{bucket.burst} at once, then {bucket.rate_per_s:g} a "
                              "second)", wait_ms)
        if shared is not None:
            wait_ms = shared.take(now_s)
            if wait_ms:
                raise RateLimited(f"sending too fast: wait {wording.seconds(wait_ms)} (at most "
                                  f"{shared.burst} at once, then {shared.rate_per_s:g} a "
                                  "second, for all your sessions together)", wait_ms)
        if bucket is not None:
            bucket.take(now_s)

    def limit_account(self, session: Session, kind: str, now_s: float) -> None:
        """Take a token from the account's ``kind`` bucket ("presence" or "room"),
        unless that limit is off. Raises RateLimited (429)."""
        cfg = self.config
        account = self.accounts[session.account_key]
        if kind == "presence":
            rate, burst, what = cfg.presence_rate_per_s, cfg.presence_burst, \
                "changing presence"
            bucket = account.presence_bucket
        else:
            rate, burst, what = cfg.room_create_rate_per_s, cfg.room_create_burst, \
                "creating rooms"
            bucket = account.room_bucket
        if rate <= 0:
            return
        if bucket is None:
            bucket = TokenBucket(rate, burst, now_s)
            if kind == "presence":
                account.presence_bucket = bucket
            else:
                account.room_bucket = bucket
        wait_ms = bucket.take(now_s)
        if wait_ms:
            raise RateLimited(f"{what} too fast: wait {wording.seconds(wait_ms)} (at most "
                              f"{burst} at once, then {wording.rate(rate)})", wait_ms)

    def check_read_budget(self, session: Session, now_s: float) -> ByteBudget:
        """The account's reading budget (made full at first use), or RateLimited (429)
        while it is spent (docs/PROTOCOL.md §15.1). Checked before the work; the caller
        charges the reply's real size after it."""
        return self.check_reading(session.account_key, now_s)

    def read_budget(self, account_key: str, now_s: float) -> ByteBudget:
        """The account's reading budget, made full at first use."""
        account = self.accounts[account_key]
        budget = account.read_budget
        if budget is None:
            cfg = self.config
            budget = account.read_budget = ByteBudget(cfg.read_rate_bytes_per_s,
                                                      cfg.read_burst_bytes, now_s)
        return budget

    def check_reading(self, account_key: str, now_s: float) -> ByteBudget:
        """``_check_read_budget`` by account key."""
        budget = self.read_budget(account_key, now_s)
        wait_ms = budget.wait_ms(now_s)
        if wait_ms:
            raise RateLimited(f"reading too fast: wait {wording.seconds(wait_ms)} (at most "
                              f"{budget.burst / 1048576:g} MiB of replies at once, then "
                              f"{budget.rate_per_s / 1048576:g} MiB a second)", wait_ms)
        return budget

    def charge_reply(self, account_key: str, reply: ToPeer, now_s: float) -> ToPeer:
        """Charge a LOGIN or RESUME reply (its rooms, read state and up to
        ``max_stored_dms`` pending DMs: megabytes at worst) to the account's reading
        budget, as the replies of reading requests are (docs/PROTOCOL.md §15.1)."""
        if self.config.read_rate_bytes_per_s > 0:
            cost = sum(len(f) for f in reply.frames)
            self.read_budget(account_key, now_s).charge(cost, now_s)
            self.read_bytes += cost
        return reply

    def limit_resume(self, account_key: str, now_s: float) -> None:
        """Take a token of the account's RESUME bucket and check its reading budget
        (a RESUME reply is charged to it), before anything else is done. Raises
        RateLimited (429)."""
        account = self.accounts[account_key]
        bucket = account.resume_bucket
        if bucket is None:
            bucket = account.resume_bucket = TokenBucket(RESUME_RATE_PER_S, RESUME_BURST,
                                                         now_s)
        wait_ms = bucket.take(now_s)
        if wait_ms:
            raise RateLimited(f"too many RESUMEs of this account: wait {wording.seconds(wait_ms)} "
                              f"(at most {RESUME_BURST} at once, then "
                              f"{RESUME_RATE_PER_S:g} a second)", wait_ms)
        if self.config.read_rate_bytes_per_s > 0:
            self.check_reading(account_key, now_s)

    def check_slow_mode(self, key: str, session: Session, now_s: float) -> None:
        """Room ``key`` is in slow mode: raise RateLimited (429) when the account posted
        there less than ``slow_mode[key]`` seconds ago. Broker admins and the room's
        creator are exempt (docs/PROTOCOL.md §6.28)."""
        account = session.account_key
        if self.is_mod(key, account):
            return
        last = self.last_post.get(key, {}).get(account)
        if last is None:
            return
        wait_s = last + self.slow_mode[key] - now_s
        if wait_s > 0:
            wait_ms = math.ceil(wait_s * 1000)
            raise RateLimited(f"slow mode in #{self.rooms[key]}: wait "
                              f"{wording.seconds(wait_ms)} (one message per {self.slow_mode[key]} "
                              "s)", wait_ms)

    def quota_of(self, account_key: str) -> int:
        """The account's storage quota in force, bytes (0: none): its own, else the
        broker's ``storage_quota_bytes`` (docs/PROTOCOL.md §6.53)."""
        return self.storage_quotas.get(account_key, self.config.storage_quota_bytes)

    def over_quota(self, account_key: str, used: dict[str, int], size: int) -> bool:
        """Whether ``size`` more bytes take the account past its quota (reaching it is
        allowed)."""
        quota = self.quota_of(account_key)
        return bool(quota) and used.get(account_key, 0) + size > quota

    def quota_full(self, account_key: str, used: dict[str, int], size: int) -> ProtocolError:
        """The 403 of a SEND or DM of ``size`` bytes that would take the account past its
        storage quota (docs/PROTOCOL.md §6.53). Deleting messages frees nothing (their
        text is kept for the audit), so the way out is an admin."""
        return ProtocolError(Status.FORBIDDEN, f"your account's storage quota is full "
                             f"({wording.size_text(used.get(account_key, 0))} of "
                             f"{wording.size_text(self.quota_of(account_key))}; this message is "
                             f"{wording.size_text(size)}): ask a broker admin to raise it")

    def stored(self) -> dict[str, int]:
        """Account key -> bytes of message text stored (§6.53), counted now if they were
        not yet (``storage_used``)."""
        if self.storage_used is None:
            self.storage_used = self.store.storage_used()
        return self.storage_used
