"""Bots: a small decorator API on top of the asyncio ``Client`` (docs/bots.md).

    bot = Bot("helper", rooms=("lobby", "dev"))

    @bot.on_command("ping")
    async def ping(ctx: Context) -> None:
        await ctx.reply("pong " + ctx.command.text)

    bot.run_forever()

The pure part, which handlers an event reaches (``match_handlers``) and how a command
line is read (``parse_command``), touches no socket and is unit-tested on its own; the
``Bot`` object is the thin loop around it: it logs in with ``Client(reconnect=True)``,
joins its rooms, reads ``Client.events()`` and awaits the matching handlers one at a time,
in event order. A handler that raises is logged with its traceback and the bot keeps
running; cancellation is never swallowed.

Dispatch rules (``match_handlers``):

- A room message (not the bot's own) reaches ``on_command`` handlers when its text is
  ``!NAME …`` for a registered NAME (case-insensitive); otherwise it reaches the
  ``on_message`` handlers whose ``room`` (if given) is the message's room and whose
  ``pattern`` (if given, ``re.search``) matches its text.
- A direct message to the bot reaches ``on_command`` handlers the same way, otherwise the
  ``on_dm`` handlers (``pattern`` as above). Copies of the bot's own DMs are ignored.
- A **notice** (a room message or DM with ``notice``, IRC's NOTICE: docs/PROTOCOL.md
  §6.8) reaches only ``on_notice`` handlers — never ``on_message``, ``on_dm`` or
  ``on_command`` — because automatic programs must never answer a notice (RFC 2812
  §3.3.2): two bots answering each other's notices would loop for ever.
- A presence change of another account reaches every ``on_presence`` handler.
- ``every(seconds)`` handlers run on their own timer, first ``seconds`` after the bot
  started, concurrently with the event handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import re
import shlex
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import SessionEnded
from zchat.client.session import Unread
from zchat.errors import ConnectionFailed, LocalProtocolError, ZchatError
from zchat.names import name_key

log = logging.getLogger("zchat.bot")

#: What starts a command in a message: ``!faq how do I pay``.
#: The broker a Bot connects to when it is given none.
DEFAULT_SERVER = "tcp://127.0.0.1:5555"

COMMAND_PREFIX = "!"
#: How long ``stop()`` waits for the LOGOUT reply before closing anyway.
LOGOUT_WAIT_S = 0.5

HandlerKind = Literal["message", "dm", "command", "notice", "presence", "timer"]
HandlerFunc = Callable[["Context"], Awaitable[Any]]


# -- the pure part -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A ``!name args…`` line: ``name`` lower-cased without the prefix, ``text`` the rest
    of the line (stripped), ``args`` that rest split like a shell would (``split_args``)."""

    name: str
    args: tuple[str, ...]
    text: str


def split_args(text: str) -> tuple[str, ...]:
    """Split ``text`` into words as ``shlex.split`` does; an unbalanced quote is taken as
    closed at the end of the line (``'say "hi there'`` → ``('say', 'hi there')``), and a
    trailing lone backslash as a literal one. Never raises."""
    for suffix in ("", "\\", '"', "'", '\\"', "\\'"):
        try:
            return tuple(shlex.split(text + suffix))
        except ValueError:
            continue
    return tuple(text.split())


def parse_command(text: str, prefix: str = COMMAND_PREFIX) -> Command | None:
    """The command in a message ``text``, or None when it does not start with ``prefix``
    followed by a name (``"!faq  refund policy"`` → name "faq", text "refund policy").
    Leading whitespace is ignored; ``"!"`` alone or ``"! faq"`` is not a command."""
    stripped = text.lstrip()
    if not stripped.startswith(prefix):
        return None
    head, _, rest = stripped[len(prefix):].partition(" ")
    head, nl, more = head.partition("\n")
    if nl:
        rest = more + (" " + rest if rest else "")
    if not head:
        return None
    rest = rest.strip()
    return Command(name=head.casefold(), args=split_args(rest), text=rest)


@dataclass(frozen=True, slots=True)
class Handler:
    """One registered handler: ``kind`` says which events reach it; ``room`` and
    ``pattern`` narrow message handlers, ``command`` names a command handler, and
    ``seconds`` is a timer's period."""

    kind: HandlerKind
    func: HandlerFunc
    room: str | None = None
    pattern: re.Pattern[str] | None = None
    command: str | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return getattr(self.func, "__qualname__", repr(self.func))


@dataclass(frozen=True, slots=True)
class Match:
    """A handler an event reaches, with the command it was reached by (if any) and the
    ``pattern`` match (if any)."""

    handler: Handler
    command: Command | None = None
    match: re.Match[str] | None = None


def _same(a: str, b: str | None) -> bool:
    return b is not None and name_key(a) == name_key(b)


def match_handlers(handlers: Iterable[Handler], event: object, me: str | None,
                   prefix: str = COMMAND_PREFIX) -> list[Match]:
    """The handlers ``event`` reaches, in registration order (rules in the module
    docstring). ``me`` is the bot's account name: its own messages reach nothing."""
    handlers = list(handlers)
    if isinstance(event, p.MessagePosted | p.DirectMessage):
        if _same(event.sender, me):
            return []
        if isinstance(event, p.DirectMessage) and me is not None and not _same(event.to, me):
            return []
        command = None if event.notice else parse_command(event.text, prefix)
        if command is not None:
            hits = [Match(h, command) for h in handlers
                    if h.kind == "command" and h.command == command.name]
            if hits:
                return hits
        kind = "notice" if event.notice else \
            "message" if isinstance(event, p.MessagePosted) else "dm"
        found: list[Match] = []
        for h in handlers:
            if h.kind != kind:
                continue
            if isinstance(event, p.MessagePosted) and h.room is not None \
                    and not _same(event.room, h.room):
                continue
            m = h.pattern.search(event.text) if h.pattern is not None else None
            if h.pattern is not None and m is None:
                continue
            found.append(Match(h, None, m))
        return found
    if isinstance(event, p.PresenceChanged):
        if _same(event.name, me):
            return []
        return [Match(h) for h in handlers if h.kind == "presence"]
    return []


# -- what a handler gets -------------------------------------------------------------------


@dataclass
class Context:
    """What a handler receives: the bot, the event (None for a timer), and for messages
    the ``room`` (None for a DM), ``sender``, ``text``, the ``command`` it was reached by
    and the ``match`` of its pattern."""

    bot: Bot
    event: p.MessagePosted | p.DirectMessage | p.PresenceChanged | None = None
    command: Command | None = None
    match: re.Match[str] | None = None

    @property
    def room(self) -> str | None:
        return self.event.room if isinstance(self.event, p.MessagePosted) else None

    @property
    def sender(self) -> str | None:
        if isinstance(self.event, p.MessagePosted | p.DirectMessage):
            return self.event.sender
        if isinstance(self.event, p.PresenceChanged):
            return self.event.name
        return None

    @property
    def text(self) -> str:
        return self.event.text if isinstance(self.event, p.MessagePosted | p.DirectMessage) \
            else ""

    @property
    def is_dm(self) -> bool:
        return isinstance(self.event, p.DirectMessage)

    async def reply(self, text: str, *, notice: bool = False) -> None:
        """Answer where the event came from: in the same room, or by DM to the sender
        (also for a presence change: a DM to that account); as a notice with ``notice``.
        Raises LocalProtocolError for a timer, which has no one to answer."""
        if self.room is not None:
            await self.bot.say(self.room, text, notice=notice)
        elif self.sender is not None:
            await self.bot.dm(self.sender, text, notice=notice)
        else:
            raise LocalProtocolError("a timer has no one to reply to; use bot.say()")

    async def mark_read(self) -> p.ReadState:
        """Mark the event's conversation read up to the event, on every device of the
        bot's account (docs/PROTOCOL.md §6.49): its room up to this message, or the
        direct conversation with the sender up to this DM. Raises LocalProtocolError for
        a presence change or a timer, which are no messages."""
        event = self.event
        if isinstance(event, p.MessagePosted):
            return await self.bot.mark_read(room=event.room, upto=event.seq)
        if isinstance(event, p.DirectMessage):
            return await self.bot.mark_read(dm=event.sender, upto=event.id)
        raise LocalProtocolError("only a message can be marked read")


# -- the bot -------------------------------------------------------------------------------


class Bot:
    """A chat bot: handlers registered with the decorators below, run by ``run()`` (async),
    ``run_forever()`` (blocking) or ``attach(client)`` (on a client already logged in).

    Credentials: ``token`` (a bot token, ``zchat token create``) or ``password``; the
    ``zchat bot`` command fills them from ``ZCHAT_TOKEN`` / ``ZCHAT_PASSWORD``. ``server``
    is the broker's ROUTER endpoint, or a cluster's several (a sequence, or one string
    with commas: the bot moves to the next when its broker is lost, docs/cluster.md)
    (DEFAULT_SERVER when not given; ``zchat bot`` then uses ``--server`` or the config
    file's ``[client] server``), ``rooms`` the rooms joined at start, ``context`` the
    zmq context (the process's one by default). ``ignore_bots`` (default True): room
    messages and DMs from other bot accounts reach no handler, so that two bots cannot
    answer each other forever (an echo bot and a help desk did, at ~400 DMs/s).
    """

    def __init__(self, name: str, *, password: str | None = None, token: str | None = None,
                 server: str | Sequence[str] | None = None, rooms: Iterable[str] = ("lobby",),
                 context: zmq.Context[Any] | None = None, ignore_bots: bool = True) -> None:
        self.name = name
        self.ignore_bots = ignore_bots
        self._bot_names: dict[str, bool] = {}  # name key -> is a bot account
        self.password = password
        self.token = token
        #: Whether the bot's file named its broker: ``zchat bot`` then keeps it unless
        #: ``--server`` is given; else it takes the config file's ``[client] server``.
        self.server_given = server is not None
        self.server: str | Sequence[str] = server if server is not None else DEFAULT_SERVER
        self.rooms = tuple(rooms)
        self.context = context
        self.handlers: list[Handler] = []
        self.client: Client | None = None
        self._ready: asyncio.Event | None = None
        self._serving: asyncio.Task[None] | None = None
        self._stopping = False

    # -- registration ----------------------------------------------------------------------

    def _add(self, kind: HandlerKind, **where: Any) -> Callable[[HandlerFunc], HandlerFunc]:
        def register(func: HandlerFunc) -> HandlerFunc:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"{func!r}: bot handlers must be async functions")
            self.handlers.append(Handler(kind, func, **where))
            return func
        return register

    def on_message(self, room: str | None = None,
                   pattern: str | re.Pattern[str] | None = None
                   ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Room messages of others (in ``room`` if given; matching ``pattern`` if given,
        with ``re.search``; ``ctx.match`` holds the match). Not command lines that a
        ``on_command`` handler takes."""
        return self._add("message", room=room,
                         pattern=re.compile(pattern) if pattern is not None else None)

    def on_dm(self, pattern: str | re.Pattern[str] | None = None
              ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Direct messages to the bot (matching ``pattern`` if given)."""
        return self._add("dm", pattern=re.compile(pattern) if pattern is not None else None)

    def on_command(self, name: str) -> Callable[[HandlerFunc], HandlerFunc]:
        """Messages ``!name …`` in the bot's rooms or by DM; ``ctx.command`` is the
        parsed Command. Raises ValueError for an empty name or one with whitespace."""
        name = name.removeprefix(COMMAND_PREFIX)
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"bad command name {name!r}")
        return self._add("command", command=name.casefold())

    def on_notice(self, room: str | None = None,
                  pattern: str | re.Pattern[str] | None = None
                  ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Notices (docs/PROTOCOL.md §6.8) of others: in ``room`` if given, by DM too when
        not (``ctx.is_dm``); matching ``pattern`` if given. Notices reach no other
        handler. A notice must never be answered automatically (RFC 2812 §3.3.2): log
        it, count it, never ``ctx.reply`` to it."""
        return self._add("notice", room=room,
                         pattern=re.compile(pattern) if pattern is not None else None)

    def on_presence(self) -> Callable[[HandlerFunc], HandlerFunc]:
        """Presence changes of other accounts; ``ctx.event`` is the PresenceChanged."""
        return self._add("presence")

    def every(self, seconds: float) -> Callable[[HandlerFunc], HandlerFunc]:
        """Call the handler every ``seconds`` (> 0) while the bot runs, first ``seconds``
        after it started; ``ctx.event`` is None."""
        if seconds <= 0:
            raise ValueError("every(seconds) needs seconds > 0")
        return self._add("timer", seconds=float(seconds))

    # -- talking ---------------------------------------------------------------------------

    def _client(self) -> Client:
        if self.client is None:
            raise LocalProtocolError(f"bot {self.name} is not running")
        return self.client

    async def say(self, room: str, text: str, *, notice: bool = False) -> p.Sent:
        """Post ``text`` to ``room`` (joined first if the bot is not in it); as a notice
        with ``notice`` (other bots do not answer it: docs/bots.md)."""
        client = self._client()
        if name_key(room) not in {name_key(r) for r in client.rooms}:
            await client.join(room)
        return await client.send(room, text, cmid=uuid.uuid4().hex, notice=notice)

    async def dm(self, user: str, text: str, *, notice: bool = False) -> p.DmSent:
        """Send ``text`` to ``user`` as a direct message; a notice with ``notice``."""
        return await self._client().dm(user, text, notice=notice)

    # -- history and read state (docs/PROTOCOL.md §6.3.1, §6.48, §6.49) ------------------

    async def dm_history(self, user: str, before: int | None = None,
                         after: int | None = None,
                         limit: int = p.DEFAULT_HISTORY_LIMIT) -> p.DmHistoryPage:
        """A page of the bot's direct conversation with ``user``, ascending by DM id
        (``Client.dm_history``: ``before``/``after`` are exclusive DM ids)."""
        return await self._client().dm_history(user, before=before, after=after, limit=limit)

    @property
    def unread(self) -> Unread:
        """What the bot's account has not read (``Client.unread``): per room and per
        direct conversation, the read marker and the unread count. Raises
        LocalProtocolError when the bot is not running."""
        return self._client().unread

    async def mark_read(self, *, room: str | None = None, dm: str | None = None,
                        upto: int | None = None) -> p.ReadState:
        """Mark ``room`` or the direct conversation with ``dm`` read up to ``upto`` (a
        seq or a DM id; default the newest handed to the bot), for every session of the
        account (``Client.mark_read``)."""
        return await self._client().mark_read(room=room, dm=dm, upto=upto)

    # -- running ---------------------------------------------------------------------------

    async def login(self, client: Client) -> p.LoggedIn:
        """Log ``client`` in with the bot's token, else its password. Raises
        LocalProtocolError when there is neither, RequestFailed 401 when refused."""
        if self.token:
            return await client.login(self.name, token=self.token)
        if self.password:
            return await client.login(self.name, self.password)
        raise LocalProtocolError(f"no credentials for bot {self.name}: set a token or a "
                                 "password")

    async def run(self) -> None:
        """Connect with ``Client(reconnect=True)``, log in, join the rooms and dispatch
        events until ``stop()`` or cancellation; then log out and close. Raises
        LocalProtocolError without a token or password (before connecting),
        ConnectionFailed when the broker cannot be reached or the session ends (e.g. the
        token was revoked), RequestFailed when the login is refused."""
        if not (self.token or self.password):
            raise LocalProtocolError(f"no credentials for bot {self.name}: set a token or "
                                     "a password")
        async with Client(self.server, context=self.context, reconnect=True) as client:
            await self.login(client)
            try:
                await self.serve(client)
            finally:
                with contextlib.suppress(ZchatError, TimeoutError):
                    await asyncio.wait_for(client.logout(), LOGOUT_WAIT_S)

    def run_forever(self) -> None:
        """``asyncio.run(self.run())``; Ctrl-C ends it (KeyboardInterrupt propagates after
        the bot logged out)."""
        asyncio.run(self.run())

    async def serve(self, client: Client) -> None:
        """Run the bot on ``client``, already connected and logged in: join the rooms,
        start the timers, dispatch events until ``stop()`` (returns) or cancellation
        (re-raised). Does not log out or close the client. Raises ConnectionFailed after
        SessionEnded."""
        if self._serving is not None:
            raise LocalProtocolError(f"bot {self.name} is already running")
        self.client = client
        self._ready = asyncio.Event()
        self._stopping = False
        task = asyncio.create_task(self._serve(client), name=f"zchat-bot-{self.name}")
        self._serving = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # we were cancelled, not the serving task by stop()
                task.cancel()
                await asyncio.wait([task])
                raise
            if not self._stopping:
                raise
        finally:
            self._serving = None
            self.client = None

    async def _serve(self, client: Client) -> None:
        for room in self.rooms:
            await client.join(room)
        timers = [asyncio.create_task(self._tick(h), name=f"zchat-bot-timer-{h.label}")
                  for h in self.handlers if h.kind == "timer"]
        assert self._ready is not None
        self._ready.set()
        log.info("bot %s serving %s", client.name,
                 ", ".join(f"#{r}" for r in self.rooms) or "direct messages only")
        if client.name is not None and not await self._is_bot(client.name):
            log.warning("%s is not registered as a bot (zchat register --bot): other bots "
                        "will not ignore it, so two bots answering each other could loop",
                        client.name)
        try:
            async for event in client.events():
                if isinstance(event, SessionEnded):
                    raise ConnectionFailed(f"the session ended: {event.reason}")
                await self.dispatch(event)
        finally:
            for t in timers:
                t.cancel()
            if timers:
                await asyncio.wait(timers)

    async def dispatch(self, event: object) -> int:
        """Await every handler ``event`` reaches, one at a time; returns how many ran
        without raising. A handler's exception is logged with its traceback."""
        me = self.client.name if self.client is not None else self.name
        ok = 0
        if not isinstance(event, p.MessagePosted | p.DirectMessage | p.PresenceChanged):
            return 0
        if self.ignore_bots and isinstance(event, p.MessagePosted | p.DirectMessage) and \
                not _same(event.sender, me) and await self._is_bot(event.sender):
            return 0
        for m in match_handlers(self.handlers, event, me):
            ok += await self._call(m.handler, Context(self, event, m.command, m.match))
        return ok

    async def _is_bot(self, name: str) -> bool:
        """Whether ``name`` is a bot account, from WHO (cached; a sender is online, so the
        WHO of online accounts lists it). Unknown or on error: not a bot."""
        key = name_key(name)
        if key not in self._bot_names and self.client is not None:
            try:
                for user in (await self.client.who()).users:
                    self._bot_names[name_key(user.name)] = user.bot
            except ZchatError as exc:
                log.debug("could not tell whether %s is a bot: %s", name, exc)
                return False
        return self._bot_names.get(key, False)

    async def _call(self, handler: Handler, ctx: Context) -> int:
        try:
            await handler.func(ctx)
        except Exception:  # a handler's bug must not stop the bot; cancellation passes
            log.exception("bot %s: handler %s failed on %r", self.name, handler.label,
                          ctx.event)
            return 0
        return 1

    async def _tick(self, handler: Handler) -> None:
        while True:
            await asyncio.sleep(handler.seconds)  # the timer itself, not a socket wait
            await self._call(handler, Context(self))

    async def wait_ready(self, timeout_s: float = 5.0) -> None:
        """Wait until the bot has joined its rooms and listens. Raises TimeoutError."""
        async with asyncio.timeout(timeout_s):
            while self._ready is None:
                await asyncio.sleep(0.005)  # polling step until serve() has started
            await self._ready.wait()

    async def stop(self) -> None:
        """Stop dispatching; ``run()`` then logs out and returns. Idempotent."""
        task = self._serving
        if task is None or task.done():
            return
        self._stopping = True
        task.cancel()
        await asyncio.wait([task])

    @contextlib.asynccontextmanager
    async def attach(self, client: Client, ready_timeout_s: float = 5.0
                     ) -> AsyncIterator[Bot]:
        """Run the bot on ``client`` (connected and logged in) in the background for the
        ``async with`` block: joined and listening on entry, stopped on exit. An error
        that ended the bot meanwhile is raised on exit."""
        runner = asyncio.create_task(self.serve(client), name=f"zchat-bot-run-{self.name}")
        try:
            ready = asyncio.create_task(self.wait_ready(ready_timeout_s))
            await asyncio.wait([runner, ready], return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                ready.cancel()
                runner.result()  # raises what ended it
                raise LocalProtocolError(f"bot {self.name} ended before it was ready")
            await ready
            yield self
        finally:
            if not runner.done():
                await self.stop()
            await asyncio.wait([runner])
        runner.result()


# -- loading a bot from a file ---------------------------------------------------------------


class BotLoadError(ZchatError):
    """A bot file could not be loaded (missing, broken, or defines no bot)."""


def load_bot(path: str | Path) -> Bot:
    """Import the Python file ``path`` as a module and return its module-level ``bot``
    (a Bot), else the result of its ``make_bot()``. Raises BotLoadError."""
    path = Path(path)
    if not path.is_file():
        raise BotLoadError(f"no such bot file: {path}")
    module_name = f"zchat_bot_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BotLoadError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise BotLoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
    bot = getattr(module, "bot", None)
    if bot is None and callable(getattr(module, "make_bot", None)):
        try:
            bot = module.make_bot()
        except Exception as exc:
            raise BotLoadError(f"{path}: make_bot() failed: {type(exc).__name__}: "
                               f"{exc}") from exc
    if not isinstance(bot, Bot):
        raise BotLoadError(f"{path} defines no bot: give it a module-level `bot = Bot(...)` "
                           "or a make_bot() function")
    return bot


__all__ = ["Bot", "BotLoadError", "Command", "Context", "Handler", "Match", "load_bot",
           "match_handlers", "parse_command", "split_args"]
