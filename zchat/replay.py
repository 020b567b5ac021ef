"""Replay a chat log through a broker: one session per user, events in order (issue 4).

The log format is docs/../shared/data/README.md's: one JSON object a line with ``ts``
(ISO-8601, seconds), ``event`` (``join``, ``part``, ``quit``, ``rename``, ``message``,
``action``), ``user``, and ``text`` / ``reason`` / ``new`` as the event needs.

Two parts, in the shape of the rest of zchat:

- pure: :func:`parse_log` turns lines into typed events (``Joined``, ``Parted``, ``Quit``,
  ``Renamed``, ``Said``) and raises :class:`ReplayLogError` naming the line of the first
  malformed one; :func:`quit_text` makes an IRC quit reason acceptable as a LOGOUT quit
  message; :func:`schedule_s` maps a log time onto replay seconds; :func:`check_delivery`
  compares what was sent with what an observer saw.
- I/O: :func:`replay` drives a broker with one :class:`~zchat.client.Client` per user and
  returns a :class:`ReplayReport`. It takes the endpoint and zmq context, so tests run it
  against the in-process harness (``zchat.testing.running_broker``).

Semantics (an IRC channel mapped onto one zchat room): ``join`` logs the user in when it
has no session and joins the room; ``part`` leaves the room (the session stays);
``quit`` logs out with the reason as quit text; ``rename`` ends the old nick's session
(LOGOUT) and starts the new nick's, in the room if the old nick was; ``message`` and
``action`` post (kind "text" / "action"), joining first a user who was not in the room.
A ``part`` or ``quit`` of a user without a session (the log starts mid-day) does nothing.
A message the broker refuses (a control character, too long, empty) is counted as refused
with the broker's reason; the replay goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import zmq

from zchat import wire as p
from zchat.client.client import Client
from zchat.errors import ProtocolError, RequestFailed, Status, ZchatError
from zchat.names import BIDI_CONTROLS, name_key, validate_text

#: Default time compression: one hour of the log in one minute.
DEFAULT_SPEED = 60.0
#: How long ``replay`` waits after the last send for the observer to see every message.
SETTLE_S = 10.0
#: Registrations run at most this many at once (each is one Argon2id hash on the broker).
REGISTER_CONCURRENCY = 4
#: A request refused with 429 (rate limited) is retried this many times, after the
#: broker's retry_after_ms, before it counts as refused.
MAX_RETRIES = 5
#: Longest wait for the LOGOUT reply while cleaning up after an error or a signal.
CLEANUP_LOGOUT_S = 0.5

EVENT_KINDS = ("join", "part", "quit", "rename", "message", "action")


class ReplayLogError(ZchatError):
    """A line of the log is malformed; the message names the line (1-based)."""

    def __init__(self, line: int, problem: str, source: str = "") -> None:
        where = f"{source} line {line}" if source else f"line {line}"
        super().__init__(f"{where}: {problem}")
        self.line = line
        self.problem = problem


class ReplayError(ZchatError):
    """The replay cannot go on (e.g. an existing account refuses the password)."""


# -- events (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    line: int
    ts: dt.datetime
    user: str


@dataclass(frozen=True, slots=True)
class Parted:
    line: int
    ts: dt.datetime
    user: str


@dataclass(frozen=True, slots=True)
class Quit:
    line: int
    ts: dt.datetime
    user: str
    reason: str


@dataclass(frozen=True, slots=True)
class Renamed:
    line: int
    ts: dt.datetime
    user: str
    new: str


@dataclass(frozen=True, slots=True)
class Said:
    """A ``message`` (kind "text") or ``action`` (kind "action", a /me line)."""

    line: int
    ts: dt.datetime
    user: str
    text: str
    kind: Literal["text", "action"]


LogEvent = Joined | Parted | Quit | Renamed | Said


def _field(obj: dict[str, Any], key: str, line: int, source: str,
           required: bool = True, non_empty: bool = False) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise ReplayLogError(line, f"missing field {key!r}", source)
    if not isinstance(value, str):
        raise ReplayLogError(line, f"field {key!r} must be a string, not "
                             f"{type(value).__name__}", source)
    if non_empty and not value.strip():
        raise ReplayLogError(line, f"field {key!r} is empty", source)
    return value


def parse_line(raw: str, line: int, source: str = "") -> LogEvent:
    """One log line (without its end) as an event. Raises ReplayLogError naming ``line``
    for invalid JSON, a non-object, a missing or mistyped field, an unknown ``event`` or
    a ``ts`` that is not ISO-8601."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ReplayLogError(line, f"not valid JSON ({exc.msg} at column {exc.colno})",
                             source) from None
    if not isinstance(obj, dict):
        raise ReplayLogError(line, f"expected a JSON object, got {type(obj).__name__}",
                             source)
    kind = _field(obj, "event", line, source)
    if kind not in EVENT_KINDS:
        raise ReplayLogError(line, f"unknown event {kind!r} (expected one of "
                             f"{', '.join(EVENT_KINDS)})", source)
    ts_raw = _field(obj, "ts", line, source)
    try:
        ts = dt.datetime.fromisoformat(ts_raw)
    except ValueError:
        raise ReplayLogError(line, f"ts {ts_raw!r} is not an ISO-8601 time", source) from None
    if ts.tzinfo is not None:  # compare all times alike: naive local time of the log
        ts = ts.replace(tzinfo=None) - (ts.utcoffset() or dt.timedelta())
    user = _field(obj, "user", line, source, non_empty=True)
    if kind == "join":
        return Joined(line, ts, user)
    if kind == "part":
        return Parted(line, ts, user)
    if kind == "quit":
        return Quit(line, ts, user, _field(obj, "reason", line, source, required=False))
    if kind == "rename":
        return Renamed(line, ts, user, _field(obj, "new", line, source, non_empty=True))
    text = _field(obj, "text", line, source)
    return Said(line, ts, user, text, "action" if kind == "action" else "text")


def parse_log(lines: Iterable[str], source: str = "") -> list[LogEvent]:
    """Every event of a log, in file order; blank lines are skipped. ``source`` (the file
    name) labels errors. Raises ReplayLogError at the first malformed line."""
    events: list[LogEvent] = []
    for number, raw in enumerate(lines, 1):
        raw = raw.rstrip("\r\n")
        if raw.strip():
            events.append(parse_line(raw, number, source))
    return events


def log_users(events: Iterable[LogEvent]) -> list[str]:
    """Every nick of the log (users and rename targets), in order of first appearance."""
    seen: dict[str, None] = {}
    for event in events:
        seen.setdefault(event.user)
        if isinstance(event, Renamed):
            seen.setdefault(event.new)
    return list(seen)


def quit_text(reason: str) -> str:
    """An IRC quit reason as a LOGOUT quit message the broker accepts: characters it
    refuses in away/quit text (control characters including line breaks and tabs, bidi
    controls, line/paragraph separators, unpaired surrogates) removed, cut to
    MAX_AWAY_TEXT_CHARS, and "" when nothing visible is left (docs/PROTOCOL.md §12)."""
    kept = "".join(ch for ch in reason
                   if unicodedata.category(ch) not in ("Cc", "Cs")
                   and ch not in BIDI_CONTROLS and ch not in "\u2028\u2029")
    kept = kept[:p.MAX_AWAY_TEXT_CHARS].strip()
    try:
        validate_text(kept, p.MAX_AWAY_TEXT_CHARS * 4)
    except ProtocolError:
        return ""
    return kept


def parse_speed(raw: str) -> float:
    """``--speed``: a factor > 0 (60 = an hour of the log per minute), or 0 / "max" for no
    waiting at all (returned as 0.0). Raises ValueError otherwise."""
    if raw.strip().lower() == "max":
        return 0.0
    speed = float(raw)
    if not speed >= 0 or speed == float("inf"):
        raise ValueError(f"speed must be a number >= 0 or 'max', not {raw!r}")
    return speed


def schedule_s(ts: dt.datetime, start: dt.datetime, speed: float) -> float:
    """Seconds after the replay's start at which an event of log time ``ts`` is due, the
    log's first event being at ``start``; 0 for ``speed`` 0 (as fast as possible)."""
    if speed <= 0:
        return 0.0
    return max(0.0, (ts - start).total_seconds() / speed)


# -- verification (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted:
    """One room message: sequence number, sender, text."""

    seq: int
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class DeliveryCheck:
    """What the observer saw against what was sent (OK'd sends, by seq)."""

    expected: int
    seen: int
    missing: tuple[int, ...]       # seqs sent but never seen
    duplicated: tuple[int, ...]    # seqs seen more than once
    out_of_order: tuple[int, ...]  # seqs seen after a higher seq
    mismatched: tuple[int, ...]    # seqs seen with another sender or text
    foreign: int                   # messages seen that this replay did not send

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.out_of_order or self.mismatched)

    def summary(self) -> str:
        if self.ok:
            extra = f" ({self.foreign} from others ignored)" if self.foreign else ""
            return (f"verify: the observer saw all {self.expected} messages once each, in "
                    f"order{extra}")
        parts = []
        for what, seqs in (("missing", self.missing), ("duplicated", self.duplicated),
                           ("out of order", self.out_of_order),
                           ("different sender or text", self.mismatched)):
            if seqs:
                shown = ", ".join(f"#{s}" for s in seqs[:10])
                more = f" and {len(seqs) - 10} more" if len(seqs) > 10 else ""
                parts.append(f"{len(seqs)} {what} ({shown}{more})")
        return (f"verify FAILED: {self.expected} sent, {self.seen} seen by the observer; "
                + "; ".join(parts))


def check_delivery(sent: Iterable[Posted], seen: Iterable[Posted]) -> DeliveryCheck:
    """Compare the OK'd sends with the observer's messages, by sequence number: each sent
    message must be seen exactly once, in increasing seq order, with its sender and text.
    Messages with seqs this replay did not send (other people in the room) are counted in
    ``foreign`` and otherwise ignored."""
    expected = {m.seq: m for m in sent}
    seen_list = list(seen)
    counts: dict[int, int] = {}
    out_of_order: list[int] = []
    mismatched: list[int] = []
    highest = 0
    foreign = 0
    for msg in seen_list:
        if msg.seq not in expected:
            foreign += 1
            continue
        counts[msg.seq] = counts.get(msg.seq, 0) + 1
        if msg.seq < highest:
            out_of_order.append(msg.seq)
        highest = max(highest, msg.seq)
        want = expected[msg.seq]
        if (name_key(msg.sender), msg.text) != (name_key(want.sender), want.text):
            mismatched.append(msg.seq)
    return DeliveryCheck(
        expected=len(expected), seen=len(seen_list) - foreign,
        missing=tuple(s for s in sorted(expected) if s not in counts),
        duplicated=tuple(s for s, n in sorted(counts.items()) if n > 1),
        out_of_order=tuple(out_of_order), mismatched=tuple(sorted(set(mismatched))),
        foreign=foreign)


# -- the runner (I/O) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refused:
    """An event the broker refused: log line, user, what was tried, the reason."""

    line: int
    user: str
    what: str
    reason: str


@dataclass
class ReplayReport:
    messages: int = 0          # message + action events in the log
    sent: int = 0              # accepted by the broker (OK)
    refused: list[Refused] = field(default_factory=list)  # messages the broker refused
    other_refused: list[Refused] = field(default_factory=list)  # joins, quits, logins…
    users: int = 0             # distinct users that had a session
    log_users: int = 0         # distinct nicks in the log (users and rename targets)
    sessions: int = 0          # sessions opened (a user who quits and returns: several)
    elapsed_s: float = 0.0
    posted: list[Posted] = field(default_factory=list)  # OK'd sends, in send order
    check: DeliveryCheck | None = None  # with verify

    def summary_lines(self) -> list[str]:
        lines = [f"{self.sent} of {self.messages} messages sent, {len(self.refused)} "
                 f"refused; {self.users} users ({self.log_users} nicks in the log), "
                 f"{self.sessions} sessions; "
                 f"{self.elapsed_s:.1f} s"]
        lines += [f"  refused line {r.line} ({r.user}): {r.reason}" for r in self.refused]
        lines += [f"  {r.what} refused line {r.line} ({r.user}): {r.reason}"
                  for r in self.other_refused]
        if self.check is not None:
            lines.append(self.check.summary())
        return lines


class _Session:
    """One user's Client with a task draining its events (so no queue grows unread)."""

    def __init__(self, client: Client, keep: Callable[[p.MessagePosted], None] | None) -> None:
        self.client = client
        self.in_room = False
        self._keep = keep
        self.drain = asyncio.create_task(self._drain(), name="zchat-replay-drain")

    async def _drain(self) -> None:
        async for event in self.client.events():
            if self._keep is not None and isinstance(event, p.MessagePosted):
                self._keep(event)

    async def close(self, quit_text: str | None, wait_s: float | None = None) -> None:
        """LOGOUT with ``quit_text`` (None: no LOGOUT), then close. Refusals propagate
        after the client is closed."""
        try:
            if quit_text is not None and self.client.connected:
                if wait_s is None:
                    await self.client.logout(quit_text)
                else:
                    with contextlib.suppress(ZchatError, TimeoutError):
                        await asyncio.wait_for(self.client.logout(quit_text), wait_s)
        finally:
            await self.client.close()
            await asyncio.wait([self.drain])


class _Observer:
    """The verifying client's record of room messages, with a wait for a given seq."""

    def __init__(self, room: str) -> None:
        self.room_key = name_key(room)
        self.seen: list[Posted] = []
        self.highest = 0
        self._moved = asyncio.Event()

    def keep(self, msg: p.MessagePosted) -> None:
        if name_key(msg.room) == self.room_key:
            self.seen.append(Posted(msg.seq, msg.sender, msg.text))
            self.highest = max(self.highest, msg.seq)
            self._moved.set()

    async def wait_for(self, seq: int, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.highest < seq:
                    self._moved.clear()
                    await self._moved.wait()


async def _retrying(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``, retried after the broker's retry_after_ms while it answers 429."""
    for attempt in range(MAX_RETRIES + 1):
        try:
            return await call()
        except RequestFailed as exc:
            if exc.status != Status.TOO_MANY_REQUESTS or attempt == MAX_RETRIES:
                raise
            await asyncio.sleep(max(exc.retry_after_ms, 10) / 1000)
    raise AssertionError("unreachable")


async def replay(events: list[LogEvent], *, server: str, room: str, password: str,
                 speed: float = DEFAULT_SPEED, verify: bool = False,
                 observer: str = "replay-observer", context: zmq.Context[Any] | None = None,
                 timeout_s: float = 5.0, settle_s: float = SETTLE_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 transport: Mapping[str, Any] | None = None,
                 progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Replay ``events`` into ``room`` on the broker at ``server`` (see the module
    docstring for what each event does) and return the report.

    Every nick gets an account with ``password`` (registered first; an existing account
    must already have that password, else ReplayError). ``speed`` divides the log's time
    (0: no waiting). With ``verify``, an ``observer`` account joins the room before the
    first event and ``report.check`` says whether it saw every OK'd message once, in seq
    order (waiting up to ``settle_s`` after the last send). ``clock`` (monotonic seconds)
    and ``sleep`` are the timing, replaceable in tests. ``transport`` holds the Client's
    transport settings (``encryption``, ``server_key``, ``key_server``: docs/security.md)
    for every connection the replay opens. ``progress``, when given, is called with the
    number of messages handled so far (sent or refused) before each event and once at
    the end. Sends are sequential, each waiting
    for its OK, so the room's order is the log's. Raises ConnectionFailed when the broker
    stops answering; every client is closed on the way out.
    """
    report = ReplayReport(messages=sum(isinstance(e, Said) for e in events),
                          log_users=len(log_users(events)))
    sessions: dict[str, _Session] = {}
    users_seen: set[str] = set()
    watcher: _Observer | None = None
    watch_session: _Session | None = None

    async def open_session(nick: str, keep: Callable[[p.MessagePosted], None] | None = None
                           ) -> _Session:
        client = Client(server, context=context, timeout_s=timeout_s, **(transport or {}))
        await client.connect()
        try:
            await _retrying(lambda: client.login(nick, password))
        except RequestFailed as exc:
            await client.close()
            if exc.status == Status.UNAUTHORIZED:
                raise ReplayError(f"cannot log in as {nick}: {exc} — the account exists "
                                  "with another password; set ZCHAT_PASSWORD to it") from None
            raise
        except BaseException:
            await client.close()
            raise
        return _Session(client, keep)

    async def session_for(event: LogEvent, nick: str) -> _Session | None:
        session = sessions.get(name_key(nick))
        if session is not None:
            return session
        try:
            session = await open_session(nick)
        except RequestFailed as exc:
            report.other_refused.append(Refused(event.line, nick, "login", str(exc)))
            return None
        sessions[name_key(nick)] = session
        users_seen.add(name_key(nick))
        report.sessions += 1
        return session

    async def enter(event: LogEvent, nick: str) -> _Session | None:
        session = await session_for(event, nick)
        if session is None or session.in_room:
            return session
        try:
            await _retrying(lambda: session.client.join(room))
        except RequestFailed as exc:
            report.other_refused.append(Refused(event.line, nick, "join", str(exc)))
            return None
        session.in_room = True
        return session

    async def leave(event: LogEvent, nick: str, text: str) -> _Session | None:
        session = sessions.pop(name_key(nick), None)
        if session is None:
            return None
        try:
            await session.close(text)
        except RequestFailed as exc:
            report.other_refused.append(Refused(event.line, nick, "logout", str(exc)))
        return session

    start_s = clock()
    try:
        await _register_all(log_users(events) + ([observer] if verify else []), server,
                            transport,
                            password, context, timeout_s, report)
        if verify:
            watcher = _Observer(room)
            watch_session = await open_session(observer, watcher.keep)
            await watch_session.client.join(room)
        first_ts = events[0].ts if events else dt.datetime.min
        replay_start = clock()
        for event in events:
            if progress is not None:
                progress(len(report.refused) + report.sent)
            due = replay_start + schedule_s(event.ts, first_ts, speed)
            if due > clock():
                await sleep(due - clock())
            if isinstance(event, Joined):
                await enter(event, event.user)
            elif isinstance(event, Parted):
                session = sessions.get(name_key(event.user))
                if session is not None and session.in_room:
                    try:
                        await _retrying(functools.partial(session.client.part, room))
                        session.in_room = False
                    except RequestFailed as exc:
                        report.other_refused.append(
                            Refused(event.line, event.user, "part", str(exc)))
            elif isinstance(event, Quit):
                await leave(event, event.user, quit_text(event.reason))
            elif isinstance(event, Renamed):
                old = await leave(event, event.user, "")
                if old is not None and name_key(event.new) not in sessions:
                    if old.in_room:
                        await enter(event, event.new)
                    else:
                        await session_for(event, event.new)
            else:
                session = await enter(event, event.user)
                if session is None:
                    report.refused.append(Refused(event.line, event.user, event.kind,
                                                  "the user could not join the room"))
                    continue
                try:
                    sent = await _retrying(functools.partial(session.client.send, room,
                                                             event.text, event.kind))
                except RequestFailed as exc:
                    report.refused.append(Refused(event.line, event.user, event.kind,
                                                  str(exc)))
                    continue
                report.sent += 1
                report.posted.append(Posted(sent.seq, session.client.name or event.user,
                                            event.text))
        if progress is not None:
            progress(len(report.refused) + report.sent)
        if watcher is not None:
            if report.posted:
                await watcher.wait_for(max(m.seq for m in report.posted), settle_s)
            report.check = check_delivery(report.posted, watcher.seen)
        for nick in list(sessions):
            session = sessions.pop(nick)
            await session.close("")
    finally:
        # after an error or cancellation: close what is left, briefly trying LOGOUT
        leftovers = list(sessions.values()) + ([watch_session] if watch_session else [])
        for session in leftovers:
            await session.close("", wait_s=CLEANUP_LOGOUT_S)
        report.users = len(users_seen)
        report.elapsed_s = clock() - start_s
    return report


async def _register_all(names: list[str], server: str, transport: Mapping[str, Any] | None,
                        password: str,
                        context: zmq.Context[Any] | None, timeout_s: float,
                        report: ReplayReport) -> None:
    """REGISTER every name (409, taken, is fine: the login then checks the password), a
    few at a time on one connection. Other refusals are reported; that user's logins will
    then fail and be reported too."""
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)
    async with Client(server, context=context, timeout_s=timeout_s,
                      **(transport or {})) as client:

        async def one(name: str) -> None:
            async with gate:
                try:
                    await _retrying(lambda: client.register(name, password))
                except RequestFailed as exc:
                    if exc.status != Status.CONFLICT:
                        report.other_refused.append(Refused(0, name, "register", str(exc)))

        await asyncio.gather(*(one(n) for n in names))
