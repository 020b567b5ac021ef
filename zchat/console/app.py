"""The console: a full-screen prompt_toolkit application over the pure view model.

``ChatConsole(client, logged_in)`` shows a logged-in ``zchat.client.Client``: the message
pane of the active conversation (left), rooms, DMs and members (right), a status bar and
the input line. Everything it draws comes from ``zchat.console.view`` (pure, unit-tested)
and every command is parsed by ``zchat.console.commands``; this module only wires keys,
client events and requests together. Key bindings are listed in docs/console.md.

``login_flow`` is the part before the screen: password, offer to create the account,
ask again after a wrong password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prompt_toolkit.application import Application, get_app_session
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import (
    ConditionalContainer,
    Dimension,
    HSplit,
    Layout,
    VSplit,
    Window,
)
from prompt_toolkit.layout.containers import WindowAlign
from prompt_toolkit.layout.controls import BufferControl, UIContent, UIControl
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
from prompt_toolkit.styles import Style

from zchat import timefmt
from zchat import wire as p
from zchat.admin import broker_min_password_chars, check_new_password
from zchat.client.client import Client, new_cmid
from zchat.client.events import (
    ConnectionLost,
    ConnectionRestored,
    JoinedElsewhere,
    LeftElsewhere,
    Reconnecting,
    SessionEnded,
)
from zchat.console import commands as c
from zchat.console import view as v
from zchat.console.paste_input import PasteGroupingInput
from zchat.errors import ConnectionFailed, ProtocolError, RequestFailed, Status, ZchatError
from zchat.names import name_key

log = logging.getLogger("zchat.console")
#: Bound of the lines kept with their client message id after the broker did not answer.
UNANSWERED_MAX = 100

HISTORY_ON_OPEN = 50      # messages shown when a room is opened (issue: "the last 50")
OLDER_PAGE = 100          # messages fetched when scrolling above the loaded history
#: Pages fetched to reach a direct conversation's read marker, or to catch up after a
#: reconnect: the broker's largest (docs/PROTOCOL.md §6.48).
DM_PAGE = p.MAX_HISTORY_LIMIT
#: A conversation's read marker moves at most this often (MARK_READ, docs/PROTOCOL.md
#: §6.49): a busy room on screen is marked twice a second, each time up to its newest
#: message by then, not once per message; other devices lose the count within a second.
MARK_READ_INTERVAL_S = 0.5
#: Refusals of a MARK_READ itself (beyond the newest message, not in the room, no such
#: conversation): that position is not asked again. Any other refusal (401 for a session
#: the broker forgot, 429, 503) is the moment's: the mark is sent again.
MARK_REFUSED = (Status.BAD_REQUEST, Status.FORBIDDEN, Status.NOT_FOUND)
SIDEBAR_WIDTH = 24
#: Cells of message text the pane keeps beside the sidebar: about five words a row, the
#: least that still reads as a chat. Narrower, the sidebar gives way (issue 13: at 60
#: columns it left 14 cells of text).
MIN_TEXT_BESIDE_SIDEBAR = 32
#: Terminal width from which the sidebar shows: its column and separator, the time, the
#: nick column and MIN_TEXT_BESIDE_SIDEBAR (78, so an 80-column terminal keeps it).
MIN_WIDTH_FOR_SIDEBAR = (SIDEBAR_WIDTH + 1 + v.TIMESTAMP_WIDTH + 1 + v.DEFAULT_NICK_WIDTH
                         + v.cell_width(v.SEPARATOR) + MIN_TEXT_BESIDE_SIDEBAR)
QUIT_TIMEOUT_S = 0.4      # LOGOUT gets this long; /quit exits within 1 s even without a broker
#: A line or request unanswered this long makes the status bar say ``no answer from the
#: broker for 2 s``: well inside a request's timeout (5 s), long enough that a slow link's
#: ordinary round trip does not make it flicker.
NO_ANSWER_SHOWN_S = 2.0
#: Said once in your direct conversation with yourself, at its first note.
NOTE_TO_SELF = "a note to yourself: kept with your direct messages, on every device"
#: The pane's first row when no conversation is open (every one closed or left).
NO_CONVERSATION = "No conversation. /join ROOM or /query NAME"
#: The error of a line typed then: it went nowhere (and comes back to the input).
NOTHING_OPEN = "no conversation: /join ROOM or /query NAME first"


Row = v.Row


class RowsControl(UIControl):
    """A UIControl that draws rows computed from its (width, height)."""

    def __init__(self, rows: Callable[[int, int], list[Row]],
                 on_mouse: Callable[[MouseEvent], object] | None = None) -> None:
        self._rows = rows
        self._on_mouse = on_mouse

    def create_content(self, width: int, height: int) -> UIContent:
        rows: list[StyleAndTextTuples] = [list(r) for r in self._rows(width, height)]

        def get_line(i: int) -> StyleAndTextTuples:
            return rows[i] if i < len(rows) else []

        return UIContent(get_line=get_line, line_count=len(rows), show_cursor=False)

    def mouse_handler(self, mouse_event: MouseEvent) -> Any:
        if self._on_mouse is None:
            return NotImplemented
        return self._on_mouse(mouse_event)

    def is_focusable(self) -> bool:
        return False


class ChatConsole:
    """The full-screen console for one logged-in client.

    ``paste_confirm_lines``: a paste of more lines than this (bracketed, or several lines
    in one read) asks for Enter before it is sent; so does one of two lines or more with
    a line starting with ``/`` (docs/console.md, "Pasting"). ``tz`` is the zone timestamps are shown in (default: local).
    ``input``/``output`` are prompt_toolkit's (tests pass a pipe input and DummyOutput).
    """

    def __init__(self, client: Client, logged_in: p.LoggedIn, *,
                 tz: dt.tzinfo | None = None, paste_confirm_lines: int = 1,
                 mouse: bool = True, input: Any = None, output: Any = None) -> None:
        self.client = client
        self.me = logged_in.name
        self.tz = tz or dt.datetime.now().astimezone().tzinfo or dt.UTC
        self.paste_confirm_lines = paste_confirm_lines
        self.conversations: dict[str, v.Conversation] = {}
        self.order: list[str] = []
        self.active: str | None = None
        self.history = c.InputHistory()
        self.pending_paste: c.PasteResult | None = None
        self._paste_target: str | None = None
        #: (room, reason) of a /deleteroom waiting for confirmation: Enter on an empty
        #: line or the same /deleteroom again sends it; Esc or another line cancels.
        self.pending_delete: tuple[str, str] | None = None
        self.known_rooms: set[str] = set()  # every room on the broker, for completion
        self.state: v.ConnectionState = "connected"
        self.reconnect_at: float | None = None
        self.ended = False
        #: (conversation key, text) -> client message id of a line the broker never
        #: answered, given back to the input: sent again unchanged it carries the same id,
        #: so the broker stores it at most once even if the first try did get through.
        #: The value is (cmid, the line as typed): when the message turns up in the
        #: room after all (``_stored_after_all``), the line given back is taken back.
        self._unanswered: dict[tuple[str, str], tuple[str, str]] = {}
        #: id() of pending lines whose MESSAGE came before the SEND's reply: stored,
        #: whatever the SEND then says (no answer in time).
        self._seen_stored: set[int] = set()
        #: id() of each line shown as pending -> time.monotonic() it was sent at: the
        #: status bar says when the broker has not answered for NO_ANSWER_SHOWN_S.
        self._sending: dict[int, float] = {}
        self.going_away = False  # GOING_AWAY shown: the ConnectionLost after it says no more
        self._tab: c.TabCycle | None = None
        #: Timed mutes of yours by room key ("" server-wide): their end is announced.
        self._mute_timers: dict[str, asyncio.TimerHandle] = {}
        #: Your mutes known from MUTED pushes, by room key ("" server-wide): (where, e.g.
        #: "in #dev", until_ms or None = until lifted). Says which mute still holds when
        #: another ends.
        self._mutes: dict[str, tuple[str, int | None]] = {}
        self._fetching_older: set[str] = set()
        #: Direct conversations whose history was loaded (or is loading): once each.
        self._dm_history: set[str] = set()
        #: Read markers by conversation key (docs/console.md, "When a conversation counts
        #: as read"): the newest position drawn on screen, the newest the broker has (or
        #: was asked for and refused), and the conversations with a MARK_READ under way.
        self._mark_want: dict[str, int] = {}
        self._marked: dict[str, int] = {}
        self._marking: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: What the pane shows with no conversation open: command output and errors
        #: said then (``info``), under a line saying how to open one. Never sent.
        self.no_conversation = v.Conversation("", "", "room")
        self.no_conversation.joined = False
        self._logged_in = logged_in
        self._logged_out = False  # LOGOUT sent (or tried): once, however the console ends
        self._completing = False
        self.input_buffer = Buffer(multiline=False, accept_handler=self._accept,
                                   on_text_changed=self._text_changed)
        self.app: Application[None] = self._build_app(mouse, input, output)

    # -- model ------------------------------------------------------------------------------

    def conversation(self, key: str, title: str, kind: v.ConversationKind,
                     topic: str = "") -> v.Conversation:
        conv = self.conversations.get(key)
        if conv is None:
            conv = v.Conversation(key, title, kind, topic=topic)
            self.conversations[key] = conv
            self.order.append(key)
        return conv

    @property
    def current(self) -> v.Conversation | None:
        return self.conversations.get(self.active) if self.active else None

    def switch(self, key: str) -> None:
        """Show conversation ``key``. It counts as read once drawn at its bottom
        (``_on_screen``), not here; a direct conversation whose history is not loaded
        yet (its first load failed) loads it now."""
        if key in self.conversations:
            self.active = key
            self._tab = None
            if self.conversations[key].kind == "dm" and key not in self._dm_history:
                self._spawn(self.load_dm_history(key), quiet=True)
            self.app.invalidate()

    def sidebar_order(self) -> list[str]:
        """Conversation keys as the sidebar lists them: rooms, then DMs, each in opening
        order. Alt-1…9 and Ctrl-N/Ctrl-P follow it."""
        return ([k for k in self.order if self.conversations[k].kind == "room"]
                + [k for k in self.order if self.conversations[k].kind == "dm"])

    def _switch_by(self, step: int) -> None:
        order = self.sidebar_order()
        if not order:
            return
        index = order.index(self.active) if self.active in order else 0
        self.switch(order[(index + step) % len(order)])

    def add_line(self, key: str, line: v.Line) -> None:
        """Append a line to a conversation (a day marker first when the day changed)."""
        conv = self.conversations[key]
        if line.time_ms is not None and conv.lines:
            last = next((ln for ln in reversed(conv.lines) if ln.time_ms is not None), None)
            if last is not None and last.time_ms is not None and \
                    self._day(last.time_ms) != self._day(line.time_ms):
                conv.add(v.day_line(line.time_ms, self.tz), me=self.me)
        conv.add(line, me=self.me)
        self.app.invalidate()

    def _day(self, ms: int) -> dt.date:
        return timefmt.local_datetime(ms, self.tz).date()

    def info(self, text: str, kind: v.LineKind = "info", key: str | None = None) -> None:
        """A local line in the active (or given) conversation; never sent anywhere. With
        no conversation open (every one closed or left), it goes to the lines the empty
        pane shows (``no_conversation``), as irssi's status window takes what has no
        window: command output and errors are never dropped."""
        line = v.Line(kind, None, None, text, marker="=!=" if kind == "error" else "--")
        key = key or self.active
        if key is None or key not in self.conversations:
            if key is None or self.active is None:
                self.no_conversation.add(line, me=self.me)
                self.app.invalidate()
            return
        self.add_line(key, line)

    def error(self, text: str) -> None:
        self.info(text, "error")

    # -- opening rooms ------------------------------------------------------------------------

    async def open_room(self, room: str, topic: str = "", activate: bool = False,
                        joined: bool = False, last_seq: int | None = None,
                        created: bool = False) -> None:
        """Create the room's conversation, load its last messages and members.

        A room already shown (joined again after a kick, a ban or a removal while
        disconnected) keeps its lines: the last HISTORY_ON_OPEN messages said meanwhile
        come after them and after the notice of the removal, in seq order, and the pane
        scrolls down to them (``Conversation.insert_missed``). ``joined``: you joined it
        just now (/join): a ``--> you joined #room`` notice follows, as others see
        ``--> alice joined #room`` (docs/console.md).

        A room shown that was deleted is another room now (docs/PROTOCOL.md §6.52; its
        seqs go on from the old one's): it gets a new, empty conversation in its place
        (``_replace_room``), so that the old room's lines are not shown as its own. Known
        deleted (ROOM_DELETED), or told so by the JOIN reply (``created``, or ``last_seq``
        below the newest seq shown, from an older broker whose new rooms started at 1
        again) or by its history (``Conversation.replaced_by``: the oldest line shown is
        no longer in it, or its seqs name other messages), when ROOM_DELETED was
        missed."""
        key = v.room_key(room)
        shown = self.conversations.get(key)
        fresh = shown is not None and shown.kind == "room" and (
            shown.deleted or created
            or (last_seq is not None and shown.replaced_by(last_seq)))
        if fresh:
            shown = self._replace_room(key, room, topic)
        rejoined = shown is not None and bool(shown.lines)
        announce = joined and (shown is None or not shown.joined or fresh)
        conv = self.conversation(key, room, "room", topic)
        conv.joined = True  # again, after a kick or ban
        # Taken before the first await: lines the pump adds meanwhile arrived live, after.
        anchor = conv.lines[-1] if conv.lines else None
        page = await self.client.history(room, limit=HISTORY_ON_OPEN)
        lines = [v.line_from_event(m, self.me) for m in page.messages]
        if rejoined and conv.oldest_seq is not None:
            # Is the oldest line shown still in the room's history? Not if the room was
            # deleted (and made again) while we were out of it.
            probe = await self.client.history(room, after=conv.oldest_seq - 1, limit=1)
            lines_probe = [v.line_from_event(m, self.me) for m in probe.messages]
            gone = not lines_probe or lines_probe[0].seq != conv.oldest_seq
        else:
            lines_probe, gone = [], False
        if rejoined and (gone or conv.replaced_by(None, lines + lines_probe)):
            conv = self._replace_room(key, room, topic)
            announce, rejoined = joined, False
            page = await self.client.history(room, limit=HISTORY_ON_OPEN)
            lines = [v.line_from_event(m, self.me) for m in page.messages]
        if rejoined:
            conv.insert_missed(lines, self.me, after=anchor)
            if activate:
                conv.scroll_to_end()
        else:
            conv.insert_older(lines, self.me)
        if announce:
            self.add_line(key, v.Line("notice", int(time.time() * 1000), self.me,
                                      f"you joined #{room}", marker="-->"))
        for u in (await self.client.who(room)).users:
            conv.set_member(u.name, u.presence, bot=u.bot, text=u.text)
        if activate or self.active is None:
            self.switch(key)
        self.app.invalidate()

    def _replace_room(self, key: str, room: str, topic: str) -> v.Conversation:
        """A new, empty conversation for room ``key`` in place of the one shown (its
        place in the sidebar; still the current one if it was), joined: the room shown
        was deleted, and ``room`` is another of that name. What was kept about the old
        one by seq goes with it: its read markers, a page being fetched, lines the
        broker never answered."""
        conv = v.Conversation(key, room, "room", topic=topic)
        self.conversations[key] = conv
        self._mark_want.pop(key, None)
        self._marked.pop(key, None)
        self._fetching_older.discard(key)
        self._unanswered = {k: got for k, got in self._unanswered.items() if k[0] != key}
        self.app.invalidate()
        return conv

    async def start(self) -> None:
        """Restore the account's rooms (or lobby), then show them, and open a direct
        conversation for each one with unread DMs (the LOGIN reply's ``dm_reads``,
        docs/PROTOCOL.md §6.3.1), oldest first, as they would have opened had the
        console been running, with their history. Pending DMs arrive as events."""
        # Before the first await: the pump, which shows the LOGIN's pending DMs, runs only
        # from there on, so these conversations keep the order of their newest DMs.
        unread_dms = sorted((d for d in self.client.unread.dms if d.unread),
                            key=lambda d: d.last_id)
        for d in unread_dms:
            self.conversation(v.dm_key(d.peer), d.peer, "dm")
        rooms = self._logged_in.rooms
        if not rooms:  # the account left every room: back to the lobby, joined for real
            joined = await self.client.join(p.DEFAULT_ROOM)
            rooms = (p.RoomState(room=joined.room, last_seq=joined.last_seq,
                                 topic=joined.topic),)
        for room in rooms:
            await self.open_room(room.room, room.topic)
        lobby = v.room_key(p.DEFAULT_ROOM)
        self.switch(lobby if lobby in self.conversations else self.sidebar_order()[0])
        self._spawn(self._load_room_names(), quiet=True)
        for d in unread_dms:
            try:
                await self.load_dm_history(v.dm_key(d.peer))
            except ZchatError as exc:  # shown anyway; loaded when it is next shown
                self.error(f"could not load the direct messages with {d.peer}: {exc}")
        self.info(f"connected to {self.client.server} as {self.me} — /help for commands")
        if self.client.pinned is not None:  # trusted on first use: say so on screen too,
            for line in self.client.pinned.notice().splitlines():  # not only on stderr
                self.info(line.strip().removeprefix("zchat: "))

    # -- direct conversations --------------------------------------------------------------------

    async def load_dm_history(self, key: str) -> None:
        """Load the history of direct conversation ``key`` when it opens (at start, at
        its first DM, on /msg, /query, /switch @x): its last HISTORY_ON_OPEN DMs, and
        further back to the read marker when more are unread, so that every unread DM
        is shown (docs/PROTOCOL.md §6.48). The DMs are merged by id (``Line.seq``) with
        those already shown: pending DMs the pump added meanwhile, older, newer or in
        between. Once per conversation; a load that fails is tried again when the
        conversation is next shown (``switch``)."""
        conv = self.conversations.get(key)
        if conv is None or conv.kind != "dm" or key in self._dm_history:
            return
        self._dm_history.add(key)
        try:
            known = self.client.unread.dm(conv.title)
            read_id = known.read_id if known is not None and known.unread else None
            page = await self.client.dm_history(conv.title, limit=HISTORY_ON_OPEN)
            messages = list(page.messages)
            complete = len(messages) < HISTORY_ON_OPEN
            while (read_id is not None and not complete and messages[0].id > read_id + 1
                   and len(messages) < v.MAX_LINES):
                page = await self.client.dm_history(conv.title, before=messages[0].id,
                                                    limit=DM_PAGE)
                messages[:0] = page.messages
                complete = len(page.messages) < DM_PAGE
        except BaseException:
            self._dm_history.discard(key)
            raise
        if self.conversations.get(key) is conv:  # not closed meanwhile
            self._merge_dms(conv, messages)
            if complete and (not messages or conv.oldest_seq == messages[0].id):
                conv.history_complete = True

    def _merge_dms(self, conv: v.Conversation, messages: Iterable[p.DirectMessage]) -> None:
        """Put DMs from a history page among those shown, in id order, each once."""
        conv.merge([v.line_from_event(m, self.me) for m in messages], self.me)
        self.app.invalidate()

    async def _catch_up_dms(self) -> None:
        """After a reconnect: the DMs of the open direct conversations that went to the
        account's other sessions during the outage (DMs are not pushed again, and one
        read elsewhere is not pending either, docs/PROTOCOL.md §6.7), fetched after the
        newest one shown, unless the read state says there is none newer."""
        state = self.client.unread
        for conv in [cv for cv in self.conversations.values() if cv.kind == "dm"]:
            if conv.key not in self._dm_history:
                await self.load_dm_history(conv.key)
                continue
            newest = conv.newest_seq
            known = state.dm(conv.title)
            if newest is None or (known is not None and known.last_id <= newest):
                continue
            for _ in range(v.MAX_LINES // DM_PAGE):
                page = await self.client.dm_history(conv.title, after=newest, limit=DM_PAGE)
                self._merge_dms(conv, page.messages)
                if len(page.messages) < DM_PAGE:
                    break
                newest = page.messages[-1].id

    # -- read markers ------------------------------------------------------------------------------

    def _on_screen(self, conv: v.Conversation) -> None:
        """``conv`` has just been drawn down to its newest line: the person has it on
        screen, so its read marker moves to the newest message shown (docs/console.md,
        "When a conversation counts as read"). Called from drawing, so it covers
        switching to a conversation, a message arriving while it follows the bottom,
        scrolling back down, and the redraw after ``fg`` (while suspended with Ctrl-Z
        the process is stopped: nothing is drawn, nothing is marked)."""
        upto = conv.newest_seq
        if upto is None or upto <= self._marked.get(conv.key, 0) or not conv.joined \
                or self.client.state != "connected":
            return
        self._mark_want[conv.key] = max(upto, self._mark_want.get(conv.key, 0))
        if conv.key not in self._marking:
            self._marking.add(conv.key)
            task = asyncio.ensure_future(self._mark_read(conv.key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _mark_read(self, key: str) -> None:
        """Move the read marker of conversation ``key`` to ``_mark_want[key]``
        (MARK_READ, docs/PROTOCOL.md §6.49): one request at a time per conversation, at
        most one per MARK_READ_INTERVAL_S, each up to the newest position wanted by then.
        Nothing is sent when the read state has it already (your own posts move the
        marker on the broker). A mark that did not get through — no answer
        (ConnectionFailed), or refused for the session (401: evicted during a long
        Ctrl-Z), the broker busy (503) or rate-limiting (429) — is asked again by the
        next drawing and after the next login (``_retry_marks``); a refusal of the mark
        itself (400, 403, 404) is logged and that position not asked again."""
        try:
            while True:
                conv = self.conversations.get(key)
                upto = self._mark_want.get(key, 0)
                if conv is None or upto <= self._marked.get(key, 0):
                    return
                if self._read_upto(conv) >= upto:
                    self._marked[key] = upto
                    return
                try:
                    if conv.kind == "room":
                        await self.client.mark_read(room=conv.title, upto=upto)
                    else:
                        await self.client.mark_read(dm=conv.title, upto=upto)
                except ConnectionFailed as exc:
                    log.debug("%s not marked read up to %d now: %s", key, upto, exc)
                    return
                except RequestFailed as exc:
                    if exc.status not in MARK_REFUSED:
                        log.info("%s not marked read up to %d now: %s", key, upto, exc)
                        return
                    log.info("%s not marked read up to %d: %s", key, upto, exc)
                if self.conversations.get(key) is not conv:  # closed, or a new room
                    return  # of that name (``_replace_room``): its seqs are not these
                self._marked[key] = max(self._marked.get(key, 0), upto)
                self.app.invalidate()
                await asyncio.sleep(MARK_READ_INTERVAL_S)
        finally:
            self._marking.discard(key)

    def _retry_marks(self) -> None:
        """After a login again (a reconnect, a RESUME): send every read marker that has
        not got through (``_mark_want`` beyond ``_marked``): what was drawn was seen,
        whether or not it is still on screen."""
        for key, upto in list(self._mark_want.items()):
            if key in self.conversations and upto > self._marked.get(key, 0) \
                    and key not in self._marking:
                self._marking.add(key)
                task = asyncio.ensure_future(self._mark_read(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _read_upto(self, conv: v.Conversation) -> float:
        """How far ``conv`` is read in the account's read state; infinite when there is
        nothing to mark: a room not followed, a direct conversation with nothing unread
        since the login (``Client.unread`` lists every one that has)."""
        state = self.client.unread
        if conv.kind == "room":
            room = state.room(conv.title)
            return float("inf") if room is None else room.read_seq
        dm = state.dm(conv.title)
        return float("inf") if dm is None else dm.read_id

    async def _flush_marks(self) -> None:
        """Send the read markers still waiting out MARK_READ_INTERVAL_S (quitting)."""
        for key, upto in list(self._mark_want.items()):
            conv = self.conversations.get(key)
            if conv is None or upto <= self._marked.get(key, 0) or \
                    self._read_upto(conv) >= upto:
                continue
            with contextlib.suppress(ZchatError):
                if conv.kind == "room":
                    await self.client.mark_read(room=conv.title, upto=upto)
                else:
                    await self.client.mark_read(dm=conv.title, upto=upto)

    # -- events --------------------------------------------------------------------------------

    async def pump(self) -> None:
        """Apply client events to the model until the client closes."""
        async for event in self.client.events():
            try:
                self.on_event(event)
            except Exception:  # one bad event must not take the console down
                log.exception("could not show an event")

    def on_event(self, event: Any) -> None:
        if isinstance(event, p.MessagePosted):
            key = v.room_key(event.room)
            conv = self.conversations.get(key)
            if conv is not None:
                line = v.line_from_event(event, self.me)
                typed = conv.pending(line.kind, line.text) if line.own else None
                if typed is not None:  # the line you sent, in before the OK: in its place
                    self._seen_stored.add(id(typed))
                    conv.settle(typed, line, self.me)
                elif not (line.own and self._stored_after_all(conv, line)):
                    self.add_line(key, line)
        elif isinstance(event, p.DirectMessage):
            other = event.to if name_key(event.sender) == name_key(self.me) else event.sender
            key = v.dm_key(other)
            new = key not in self.conversations
            self.conversation(key, other, "dm")
            self.add_line(key, v.line_from_event(event, self.me))
            if new:  # its first DM opens it: the conversation so far comes above
                self._spawn(self.load_dm_history(key), quiet=True)
        elif isinstance(event, p.ReadMarked):
            pass  # another device read a conversation: client.unread has it; redrawn below
        elif isinstance(event, p.UserJoined | p.UserLeft):
            key = v.room_key(event.room)
            conv = self.conversations.get(key)
            if conv is not None and isinstance(event, p.UserLeft) and event.by \
                    and name_key(event.name) == name_key(self.me):
                self._removed(conv, event)  # kicked or banned: say so, mark it parted
            elif conv is not None:
                if isinstance(event, p.UserJoined):
                    # The notice does not say whether they are online (REGISTER joins lobby
                    # without logging in): take what another room knows, else ask.
                    known = self._presence_of(event.name)
                    if known is None:
                        conv.set_member(event.name, "offline")
                        self._spawn(self.refresh_members(conv.key), quiet=True)
                    else:
                        conv.set_member(event.name, known)
                else:
                    conv.remove_member(event.name)
                # Your own JOINED reaches you or not (the SUBSCRIBE races the JOIN):
                # open_room says "you joined #room" instead, always and once.
                if not (isinstance(event, p.UserJoined)
                        and name_key(event.name) == name_key(self.me)):
                    self.add_line(key, v.line_from_event(event, self.me))
        elif isinstance(event, p.PresenceChanged):
            self._on_presence(event)
        elif isinstance(event, p.TopicChanged):
            key = v.room_key(event.room)
            conv = self.conversations.get(key)
            if conv is not None:
                conv.topic = event.topic
                text = (f"{event.by} set the topic: {event.topic}" if event.topic
                        else f"{event.by} cleared the topic")
                self.add_line(key, v.Line("notice", event.time, event.by, text))
        elif isinstance(event, p.SlowModeChanged):
            key = v.room_key(event.room)
            if key in self.conversations:
                text = (f"{event.by} set slow mode: one message per {event.seconds} s"
                        if event.seconds else f"{event.by} turned slow mode off")
                self.add_line(key, v.Line("notice", event.time, event.by, text))
        elif isinstance(event, p.MessageDeleted | p.RoomModeChanged | p.RoleChanged):
            self._on_moderation(event)
        elif isinstance(event, p.RoomDeleted):
            self._room_deleted(event.room, event.by, event.reason)
        elif isinstance(event, JoinedElsewhere):
            self._spawn(self._joined_elsewhere(event))
        elif isinstance(event, LeftElsewhere):
            conv = self.conversations.get(v.room_key(event.room))
            if conv is not None and conv.kind == "room" and conv.joined:
                conv.joined = False  # nothing more is sent there meanwhile
                # Told by a heartbeat while connected: left on another device; found by
                # a reconnect (before its ConnectionRestored): while disconnected.
                self._spawn(self._say_why_gone(conv, elsewhere=self.state == "connected"))
        elif isinstance(event, p.Invited):
            self.info(f"{event.by} invited you to #{event.room} — /join {event.room}")
        elif isinstance(event, p.MuteChanged):
            self._on_muted(event)
        elif isinstance(event, p.GoingAway):  # the client reconnects at once (§6.29)
            self.state = "reconnecting"
            self.going_away = True
            self.error(f"broker going away: {event.text}; reconnecting…")
        elif isinstance(event, ConnectionLost):
            self.state = "disconnected"
            if self.going_away:  # already said why, just above
                self.going_away = False
            elif event.session_only:  # the broker answers but evicted or forgot our session
                self.error("the broker ended our session; logging in again")
            else:
                self.error(f"lost the broker (nothing heard for {event.silent_s:.0f} s)")
        elif isinstance(event, Reconnecting):
            self.state = "reconnecting"
            self.reconnect_at = time.monotonic() + float(event.delay_s)
        elif isinstance(event, ConnectionRestored):
            self.state = "connected"
            self.reconnect_at = None
            self.info("reconnected")
            self._check_still_joined()
            self._retry_marks()  # refused with the old session, or unanswered
            self._spawn(self.refresh_members(), quiet=True)  # presence changed meanwhile?
            self._spawn(self._catch_up_dms(), quiet=True)  # DMs to other sessions meanwhile
            if not self.known_rooms:
                self._spawn(self._load_room_names(), quiet=True)
        elif isinstance(event, SessionEnded):
            self.state = "disconnected"
            self.ended = True
            by = f" by {event.by}" if event.by else ""  # an operator's order (§6.47)
            self.error(f"session ended{by}: {event.reason} — /quit to leave")
        self.app.invalidate()

    def _on_moderation(self, event: p.MessageDeleted | p.RoomModeChanged
                       | p.RoleChanged) -> None:
        """Moderation notices of a room (docs/PROTOCOL.md §17)."""
        key = v.room_key(event.room)
        conv = self.conversations.get(key)
        if conv is None:
            return
        if isinstance(event, p.MessageDeleted):
            conv.mark_deleted(event.seq, event.by)
            return
        if isinstance(event, p.RoomModeChanged):
            text = (f"{event.by} set #{event.room}: "
                    f"{'private' if event.private else 'public'}, "
                    f"{'locked (only moderators post)' if event.locked else 'unlocked'}")
        else:
            text = f"{event.by} made {event.name} {event.role} of #{event.room}"
        self.add_line(key, v.Line("notice", event.time, event.by, text))

    def _removed(self, conv: v.Conversation, event: p.UserLeft) -> None:
        """You were kicked or banned from the room (LEFT with ``by``, docs/PROTOCOL.md
        §6.19): say so plainly, in the room and (when elsewhere) where you are looking,
        and keep the room's lines, marked not joined, as WeeChat keeps a parted channel's
        buffer (docs/console.md). Typing there then says to /join it."""
        how = (f"banned from #{event.room} by {event.by} "
               f"{v.expiry_text(event.until, event.time, self.tz)}" if event.ban
               else f"kicked from #{event.room} by {event.by}")
        hint = ("" if event.ban and event.until is None
                else f" — /join {event.room} after that" if event.ban
                else f" — /join {event.room} to go back")
        reason = f": {event.reason}" if event.reason else ""
        self._mark_parted(conv, f"you were {how}{reason}{hint}")

    def _mark_parted(self, conv: v.Conversation, text: str,
                     kind: v.LineKind = "error") -> None:
        conv.joined = False
        conv.members.clear()
        self.info(text, kind, key=conv.key)
        if self.active != conv.key:
            self.info(text, kind)

    def _room_deleted(self, room: str, by: str, reason: str) -> None:
        """Room ``room`` was deleted by ``by`` (ROOM_DELETED, docs/PROTOCOL.md §6.52.1,
        or the OK of your own /deleteroom): said in its pane and where you are looking
        (``#dev was deleted by olga: spam cleanup``, ``you deleted #dev``), and the room
        is kept as a room you were removed from — greyed in the sidebar, nothing sent
        there, no unread count (the client forgot its read state) — until /close; /join
        makes a new room of that name (``open_room``). Once, whichever of the event and
        the reply comes first; a mute in it ends with it."""
        key = v.room_key(room)
        conv = self.conversations.get(key)
        if conv is not None and conv.kind == "room" and conv.deleted:
            return
        mine = name_key(by) == name_key(self.me)
        text = ((f"you deleted #{room}" if mine else f"#{room} was deleted by {by}")
                + (f": {reason}" if reason else ""))
        timer = self._mute_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._mutes.pop(key, None)
        if self.pending_delete is not None and v.room_key(self.pending_delete[0]) == key:
            self.pending_delete = None  # nothing left to confirm
        if conv is None or conv.kind != "room":  # an admin deleting a room not shown
            self.info(text)
            return
        conv.deleted = True
        conv.topic = ""  # the room's, gone with it: not shown in the status bar
        self._mark_parted(conv, text, "info" if mine else "error")

    async def _joined_elsewhere(self, event: JoinedElsewhere) -> None:
        """The account joined a room on another device (``zchat say --room``, a second
        console): open it in the sidebar with its history, members and unread count, as
        at start, without switching to it, and say so there and where you are looking:
        ``you joined #dev on another device``. A room already shown and joined is left
        as it is."""
        key = v.room_key(event.room)
        shown = self.conversations.get(key)
        if shown is not None and shown.kind == "room" and shown.joined \
                and not shown.deleted:
            return
        await self.open_room(event.room, event.topic, last_seq=event.last_seq)
        text = f"you joined #{event.room} on another device"
        self.info(text, key=key)
        if self.active != key:
            self.info(text)

    def _check_still_joined(self) -> None:
        """After a reconnect: a room the broker no longer lists for you (kicked, banned
        or deleted while you were disconnected) is marked not joined at once, and a line
        says why once ROOM_INFO has told removed from deleted (``_say_why_gone``)."""
        joined = {v.room_key(room) for room in self.client.rooms}
        for conv in list(self.conversations.values()):
            if conv.kind == "room" and conv.joined and conv.key not in joined:
                conv.joined = False  # nothing more is sent there meanwhile
                self._spawn(self._say_why_gone(conv))

    async def _say_why_gone(self, conv: v.Conversation, elsewhere: bool = False) -> None:
        """Mark ``conv`` parted with why: ``#dev was deleted while you were
        disconnected`` when the broker has no such room (404), else ``you are no longer
        in #dev (removed while disconnected) — /join dev to go back``. With
        ``elsewhere`` (a heartbeat, not a reconnect, found the account out of the room:
        most likely it left on another device): ``#dev was deleted``, ``you left #dev on
        another device — /join dev to go back``."""
        try:
            await self.client.room_info(conv.title)
            deleted = False
        except RequestFailed as exc:  # 403 (private), 405 (older broker): removed
            deleted = exc.status == Status.NOT_FOUND
        except ZchatError:
            deleted = False
        if self.conversations.get(conv.key) is not conv or conv.joined:
            return  # closed or joined again meanwhile
        if deleted:
            conv.deleted = True
            conv.topic = ""
            self._mark_parted(conv, f"#{conv.title} was deleted" + (
                "" if elsewhere else " while you were disconnected"))
        elif elsewhere:
            self._mark_parted(conv, f"you left #{conv.title} on another device — /join "
                              f"{conv.title} to go back", "info")
        else:
            self._mark_parted(conv, f"you are no longer in #{conv.title} (removed while "
                              f"disconnected) — /join {conv.title} to go back")

    def _on_muted(self, event: p.MuteChanged) -> None:
        """MUTED (docs/PROTOCOL.md §6.33.1): you were muted or unmuted; shown in the room
        (or, server-wide, where you are looking). A timed mute's end is announced here
        when its time comes (the broker sends nothing then)."""
        key = v.room_key(event.room) if event.room else None
        where = f"in #{event.room}" if event.room else "on this whole server (DMs too)"
        timer = self._mute_timers.pop(key or "", None)
        if timer is not None:
            timer.cancel()
        if event.muted:
            self._mutes[key or ""] = (where, event.until)
            text = (f"{event.by} muted you {where} "
                    f"{v.expiry_text(event.until, event.time, self.tz)}"
                    + (f": {event.reason}" if event.reason else "")
                    + " — you can read but not post")
            if event.until is not None:
                delay = max(0.0, (event.until - time.time() * 1000) / 1000)
                self._mute_timers[key or ""] = asyncio.get_running_loop().call_later(
                    delay, self._mute_lapsed, key, where)
        else:
            self._mutes.pop(key or "", None)
            text = f"{event.by} unmuted you {where}; {self._may_post_text(key)}"
        self.info(text, "error" if event.muted else "info",
                  key=key if key in self.conversations else None)

    def _mute_lapsed(self, key: str | None, where: str) -> None:
        self._mute_timers.pop(key or "", None)
        self._mutes.pop(key or "", None)
        self.info(f"your mute {where} has ended; {self._may_post_text(key)}",
                  key=key if key in self.conversations else None)
        self.app.invalidate()

    def _may_post_text(self, key: str | None) -> str:
        """After the room mute of ``key`` (None: the server-wide one) ended: ``you may
        post again`` when no other mute known from MUTED pushes is in force there, else
        which still holds: ``you are still muted on this whole server (DMs too) until
        lifted`` (for a room), ``you are still muted in #dev until 14:01:30 (90 s)`` (for
        the server-wide mute, naming each room mute left)."""
        now_ms = int(time.time() * 1000)
        live = {k: m for k, m in self._mutes.items() if m[1] is None or m[1] > now_ms}
        left = ([live[""]] if key and "" in live else
                [] if key else [m for k, m in live.items() if k])
        if not left:
            return "you may post again"
        return "you are still muted " + ", ".join(
            f"{where} {v.expiry_text(until, now_ms, self.tz)}" for where, until in left)

    def _not_joined(self, conv: v.Conversation) -> bool:
        """Whether ``conv`` is a room you were removed from; then one error line says
        to /join it (nothing is sent: the broker would only answer 403)."""
        if conv.kind == "room" and conv.deleted:
            self.error(f"#{conv.title} was deleted; /join {conv.title} makes a new, empty "
                       "room of that name")
            return True
        if conv.kind == "room" and not conv.joined:
            self.error(f"you are not in #{conv.title}; /join {conv.title} to go back")
            return True
        return False

    def _on_presence(self, event: p.PresenceChanged) -> None:
        for conv in self.conversations.values():
            known = next((n for n in conv.members if name_key(n) == name_key(event.name)),
                         None)
            if known is None:
                continue
            conv.set_member(known, event.presence, text=event.text)
            # Presence shows in the member list; only a quit with a message is worth a line
            # (scripts log in and out all day, and a line each would drown the room).
            if event.presence == "offline" and event.text and \
                    name_key(event.name) != name_key(self.me):
                conv.add(v.line_from_event(event, self.me), me=self.me)

    # -- input ----------------------------------------------------------------------------------

    def _text_changed(self, _buffer: Buffer) -> None:
        if not self._completing:
            self._tab = None  # typing anything but Tab ends a completion cycle

    def _accept(self, buffer: Buffer) -> bool:
        """Enter: send a paste waiting for it (what is typed meanwhile stays in the
        input), else take the input line. Whether to keep the input's text."""
        text = buffer.text
        if self.pending_paste is not None:
            paste, self.pending_paste = self.pending_paste, None
            self._spawn(self._say(paste.text, self._paste_target))
            return True
        if "\n" in text:
            return self._accept_lines(text)
        if text.strip():
            self.history.add(text)
        self.history.reset()
        result = c.parse_input(text)
        if self.pending_delete is not None and self._confirm_delete(result):
            return False
        if result is None:
            return False
        if isinstance(result, c.ParseError):
            self.error(result.message)
        elif isinstance(result, c.SendText):
            self._spawn(self._say(result.text))
        else:
            self._spawn(self.run_command(result, text))
        return False  # clear the buffer

    def _accept_lines(self, text: str) -> bool:
        """Enter on an input of several lines — a paste given back (over the broker's
        limit, or refused) or recalled with Up, and edited: it is text, never commands,
        sent as one message at once (it is on screen, unlike a paste). One still over
        the broker's limit stays in the input with an error line. Whether to keep the
        input's text."""
        self.history.add(text)
        if self.pending_delete is not None:
            room, self.pending_delete = self.pending_delete[0], None
            self.info(f"room deletion cancelled: #{room} stays")
        over = self._over_limit(text)
        if over is not None:
            self.error(f"not sent: {over} — cut it down (Ctrl-U clears the input)")
            return True
        self._spawn(self._say(text))
        return False

    def _over_limit(self, text: str) -> str | None:
        """Why ``text`` is too long to send, by the limits of the broker's INFO
        (``max_text_lines``, ``max_text_bytes``), or None."""
        info = self.client.info
        if info is None:
            return None
        return c.over_limit(text, info.max_text_lines, info.max_text_bytes)

    def _confirm_delete(self, result: c.ParseResult | None) -> bool:
        """A line entered while a /deleteroom waits for confirmation: an empty one, or
        the same /deleteroom again (its REASON, if it gives one, replacing the first's),
        deletes the room; anything else cancels it, says so, and is then taken as typed.
        Whether the line was the confirmation."""
        assert self.pending_delete is not None
        room, reason = self.pending_delete
        self.pending_delete = None
        conv = self.current
        if isinstance(result, c.DeleteRoom):
            again = result.room or (conv.title if conv is not None and conv.kind == "room"
                                    else None)
            if again is not None and name_key(again) == name_key(room):
                self._spawn(self._delete_room(room, result.reason or reason))
                return True
        elif result is None:
            self._spawn(self._delete_room(room, reason))
            return True
        self.info(f"room deletion cancelled: #{room} stays")
        return False

    async def _delete_room(self, room: str, reason: str) -> None:
        """Delete ``room`` (confirmed /deleteroom); a refusal is one error line."""
        await self.client.delete_room(room, reason)
        self._room_deleted(room, self.me, reason)

    def _spawn(self, coro: Awaitable[Any], quiet: bool = False) -> None:
        task = asyncio.ensure_future(self._guard(coro, quiet))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Awaitable[Any], quiet: bool = False) -> None:
        """Run one user action; a refused request becomes one clear line in the pane.
        ``quiet``: a task of the console's own (members, history, room names), not one
        the user asked for; losing the broker or the session meanwhile is logged, not
        shown — the reconnect's lines say that once, and the reconnect does it again."""
        try:
            await coro
        except (ConnectionFailed, RequestFailed) as exc:
            if quiet and (isinstance(exc, ConnectionFailed)
                          or exc.status == Status.UNAUTHORIZED) and not self.ended:
                log.info("not done now (%s); done again after the reconnect", exc)
            elif isinstance(exc, RequestFailed):
                self._refused(exc)
            else:
                self.error(str(exc))
        except ZchatError as exc:
            self.error(str(exc))
        self.app.invalidate()

    def _refused(self, exc: RequestFailed) -> None:
        if exc.status == Status.TOO_MANY_REQUESTS:  # the reason says why and how long
            self.error(exc.reason)
        else:
            self.error(f"refused: {exc.reason} ({int(exc.status)})")

    async def _say(self, text: str, key: str | None = None, *, action: bool = False,
                   typed: str = "") -> None:
        """Send ``text`` to the conversation ``key`` (default: the current one) as a
        message, or with ``action`` as ``/me``. It shows at once, dim and ``(sending…)``,
        and the stored message takes its place when the broker answers; refused or
        unanswered, it is marked ``(not sent)``, the error says why and ``typed`` (the
        line as typed, default ``text``) comes back to the input (docs/console.md)."""
        conv = self.conversations.get(key) if key else self.current
        typed = typed or text
        if conv is None:
            self.error(NOTHING_OPEN)
            self._give_back(typed)
            return
        if self._not_joined(conv):
            self._give_back(typed)
            return
        kind: v.LineKind = "action" if action else "message" if conv.kind == "room" else "dm"
        unanswered_key = (conv.key, f"/me {text}" if action else text)
        cmid = self._unanswered.pop(unanswered_key, ("", ""))[0] or new_cmid()
        offline = self.client.state != "connected"  # then nothing goes out at all
        conv.drop_failed(kind, text)  # sent again: the pending line stands for it
        shown = v.classify(v.Line(kind, int(time.time() * 1000), self.me, text,
                                  status="pending"), self.me)
        self.add_line(conv.key, shown)
        self._sending[id(shown)] = time.monotonic()
        sent: v.Line
        stored = False
        try:
            if conv.kind == "room":
                # A rate limit or slow mode is shown at once with its wait, and the line
                # comes back to the input, rather than the console waiting silently.
                reply = await self.client.send(conv.title, text,
                                               kind="action" if action else "text",
                                               cmid=cmid, patient=False)
                sent = v.Line(kind, reply.time, self.me, text, reply.seq)
            else:
                dm = await self.client.dm(conv.title, text, cmid, patient=False)
                sent = v.Line("dm", dm.time, self.me, text, dm.id)
                stored = dm.delivered == "stored"
        except RequestFailed:
            conv.settle(shown, None, self.me)
            self._give_back(typed)  # refused: to fix and resend
            raise
        except ConnectionFailed as exc:
            if id(shown) in self._seen_stored:  # its MESSAGE came: stored after all
                return
            conv.settle(shown, None, self.me, status="failed" if offline else "unknown")
            # No answer: it may or may not have been stored. Kept with its cmid, so that
            # sending the same line again (given back, or recalled with Up) is safe
            # (docs/console.md, "Reconnecting"); its MESSAGE arriving later says it was.
            if len(self._unanswered) >= UNANSWERED_MAX:
                self._unanswered.clear()
            self._unanswered[unanswered_key] = (cmid, typed)
            if offline:
                what = "not sent: the broker is lost, reconnecting"
            else:
                what = (f"no answer from the broker ({exc}): it may not have been "
                        "stored")
            if self._give_back(typed):
                how = "Enter sends it again"
            else:  # something else is being typed: say which line, and where it is
                how = f"{_short(typed)!r} is in the input history (Up) to send again"
            raise ConnectionFailed(f"{what}; {how} (the broker keeps it once)") from None
        finally:
            self._sending.pop(id(shown), None)
            self._seen_stored.discard(id(shown))
            self.app.invalidate()
        conv.settle(shown, sent, self.me)
        if conv.kind == "dm" and name_key(conv.title) == name_key(self.me):
            # Kept like any DM, with no one else to deliver it to: never "offline".
            if not any(ln.text == NOTE_TO_SELF for ln in conv.lines):
                self.info(NOTE_TO_SELF, key=conv.key)
        elif stored:
            self.info(f"{conv.title} is offline; they get it at their next login",
                      key=conv.key)

    def _stored_after_all(self, conv: v.Conversation, line: v.Line) -> bool:
        """Your own message ``line`` came in the room's stream, matching a line shown
        ``(no answer)`` whose SEND the broker never answered: it was stored after all
        (a frozen broker that caught up). The stored message takes that line's place,
        and the line given back is taken back from the input if it is still there
        unedited (or else said to be sent). MESSAGE events carry no client message id
        (docs/PROTOCOL.md §6.8), so the match is by room, sender, kind and text. Whether
        it was such a line."""
        text = f"/me {line.text}" if line.kind == "action" else line.text
        got = self._unanswered.get((conv.key, text))
        failed = conv.pending(line.kind, line.text, status="unknown")
        if got is None or failed is None:
            return False
        del self._unanswered[(conv.key, text)]
        conv.settle(failed, line, self.me)
        typed = got[1]
        if self.input_buffer.text == typed:
            self.input_buffer.reset()
            self.info(f"{_short(typed)!r} was stored after all (the broker answered "
                      "late): taken back from the input", key=conv.key)
        else:
            self.info(f"{_short(typed)!r} was stored after all (the broker answered "
                      "late): no need to send it again", key=conv.key)
        return True

    def _give_back(self, text: str) -> bool:
        """Put a line or paste that was not sent back into the input, to fix and resend
        (a paste of several lines goes back as text: Enter sends it as one message,
        ``_accept_lines``), unless something new is typed there already: then it goes
        to the input history (Up), unless it is there already (a typed line is). Whether
        it was put back into the input."""
        if text and not self.input_buffer.text:
            self.input_buffer.text = text
            self.input_buffer.cursor_position = len(text)
            return True
        if text and self.history.entries[-1:] != (text,):
            self.history.add(text)
        return False

    def on_paste(self, data: str) -> None:
        """A paste (bracketed, or several lines in one read: ``PasteGroupingInput``).
        One line goes into the input at the cursor. Several are never run as commands:
        over the broker's limit they go into the input to cut down, with an error line;
        over ``paste_confirm_lines``, or with a line starting with ``/``, they wait for
        Enter (``c.paste_prompt`` says how many, where to and which commands); else they
        are sent as one message at once."""
        if self.pending_delete is not None:  # a paste is no confirmation
            room, self.pending_delete = self.pending_delete[0], None
            self.info(f"room deletion cancelled: #{room} stays")
        paste = c.paste_to_message(data, self.paste_confirm_lines)
        if paste.lines <= 1:
            self.input_buffer.insert_text(paste.text)
            return
        over = self._over_limit(paste.text)
        if over is not None:
            self.pending_paste = None
            self.input_buffer.insert_text(paste.text)
            self.error(f"pasted {over}: not sent — it is in the input to cut down "
                       "(Ctrl-U clears it)")
            return
        if paste.needs_confirmation:
            self.pending_paste = paste
            self._paste_target = self.active  # sent there, even after switching away
            target = self.conversations.get(self.active or "")
            where = "" if target is None else (
                f"#{target.title}" if target.kind == "room" else f"@{target.title}")
            self.info(c.paste_prompt(paste, where or "here"))
        else:
            self._spawn(self._say(paste.text))

    def _cancel_paste(self) -> None:
        """Esc on a paste waiting for Enter: nothing is sent, and its lines go to the
        input history (Up), each as if typed, so that lines typed ahead during a stall
        can be looked at and run one by one."""
        paste, self.pending_paste = self.pending_paste, None
        if paste is None:
            return
        kept = [line for line in paste.text.split("\n") if line.strip()]
        for line in kept:
            self.history.add(line)
        self.info(f"paste cancelled: its {c.count_of(len(kept), 'line')} "
                  f"{'is' if len(kept) == 1 else 'are'} in the input history (Up)")

    # -- commands --------------------------------------------------------------------------------

    async def run_command(self, cmd: c.Command, typed: str = "") -> None:
        """Carry out a parsed command; ``typed`` is the line as typed, given back to the
        input when the command is refused before anything is sent (a room not joined)."""
        conv = self.current
        client = self.client
        if isinstance(cmd, c.Join):
            reply = await client.join(cmd.room, private=cmd.private)
            await self.open_room(reply.room, reply.topic, activate=True, joined=True,
                                 last_seq=reply.last_seq, created=reply.created)
        elif isinstance(cmd, c.Part):
            if cmd.room is None and conv is not None and conv.kind == "dm":
                self._close(conv.key)  # as WeeChat: /part in a private buffer closes it
                return
            room = cmd.room or (conv.title if conv and conv.kind == "room" else None)
            if room is None:
                self.error("/part needs a ROOM here")
                return
            await self._part(room, cmd.reason)
        elif isinstance(cmd, c.Close):
            if conv is None:
                self.error("no conversation to close")
            elif conv.kind == "dm":
                self._close(conv.key)
            else:
                await self._part(conv.title)
        elif isinstance(cmd, c.Msg | c.Query):
            key = await self._open_dm(cmd.user, typed)
            if key is None:
                return
            self.switch(key)
            if cmd.text:
                await self._say(cmd.text, key, typed=typed)
        elif isinstance(cmd, c.Whois):
            found = await client.whois(cmd.user)
            self.info(f"{found.name} is {found.presence}"
                      + (f": {found.text}" if found.text else "")
                      + (" [bot]" if found.bot else ""))
        elif isinstance(cmd, c.Names):
            if conv is None or conv.kind != "room":
                self.error("/names works in rooms")
                return
            if self._not_joined(conv):
                return
            users = (await client.who(conv.title)).users
            rank = {"online": 0, "away": 1, "offline": 2}
            shown = [u.name + ("" if u.presence == "online" else f" ({u.presence})")
                     for u in sorted(users, key=lambda u: (rank.get(u.presence, 3),
                                                           name_key(u.name)))]
            self.info(f"#{conv.title}, {_count(len(users), 'member')}: " + ", ".join(shown))
        elif isinstance(cmd, c.Window):
            order = self.sidebar_order()
            if cmd.number is None:  # the numbers, when the sidebar is hidden (narrow)
                self.info(self._numbered(order))
                return
            if cmd.number > len(order):
                self.error(f"there is no conversation {cmd.number}: the sidebar lists "
                           f"{len(order)}")
                return
            self.switch(order[cmd.number - 1])
        elif isinstance(cmd, c.Me):
            if conv is None or conv.kind != "room":
                # A DM has no kind on the wire (docs/PROTOCOL.md §6.7, unlike SEND's
                # "action"): an action there would need a protocol change.
                self.error("/me works in rooms: a direct message cannot carry an action "
                           "(type it as text)")
                self._give_back(typed)
                return
            await self._say(cmd.text, conv.key, action=True, typed=typed)
        elif isinstance(cmd, c.Who):
            room = conv.title if conv and conv.kind == "room" else None
            users = (await client.who(room)).users
            where = f"#{room}" if room else "online"
            self.info(f"{_count(len(users), 'member' if room else 'account')} {where}:")
            for u in users:
                if conv is not None and room:
                    conv.set_member(u.name, u.presence, bot=u.bot, text=u.text)
                extra = (" [bot]" if u.bot else "") + (f" — {u.text}" if u.text else "")
                self.info(f"  {u.name} ({u.presence}){extra}")
        elif isinstance(cmd, c.Rooms):
            rooms = (await client.list_rooms()).rooms
            self.known_rooms = {r.room for r in rooms}
            self.info(f"{_count(len(rooms), 'room')}:")
            for r in rooms:
                mark = "*" if r.joined else " "
                topic = f" — {r.topic}" if r.topic else ""
                self.info(f" {mark}#{r.room} ({_count(r.members, 'member')}){topic}")
        elif isinstance(cmd, c.Topic):
            await self._topic(cmd)
        elif isinstance(cmd, c.DeleteRoom):
            await self._ask_delete_room(cmd)
        elif isinstance(cmd, c.Slow):
            if conv is None or conv.kind != "room":
                self.error("/slow works in rooms")
            elif cmd.seconds is None:
                rooms = (await client.list_rooms()).rooms
                seconds = next((r.slow_mode_s for r in rooms
                                if v.room_key(r.room) == conv.key), 0)
                self.info(f"slow mode of #{conv.title}: "
                          + (f"one message per {seconds} s" if seconds else "off"))
            else:
                await client.set_slow_mode(conv.title, cmd.seconds)
        elif isinstance(cmd, c.Moderate):
            await self._moderate(cmd, typed)
        elif isinstance(cmd, c.Away):
            await client.set_presence("away", cmd.text)
            self.info("you are marked away" + (f": {cmd.text}" if cmd.text else ""))
        elif isinstance(cmd, c.Back):
            await client.set_presence("online")
            self.info("you are back")
        elif isinstance(cmd, c.History):
            if conv is None:
                self.error(NOTHING_OPEN)
                return
            added = await self._load_older(conv, conv.oldest_seq, cmd.count)
            self.info(f"loaded {added} older message{'s' if added != 1 else ''}")
        elif isinstance(cmd, c.Switch):
            await self._switch_to_name(cmd.target)
        elif isinstance(cmd, c.Clear):
            if conv is not None:
                conv.clear()
        elif isinstance(cmd, c.Quit):
            await self.quit(cmd.text)
        elif isinstance(cmd, c.Help):
            for line in c.help_text(cmd.command):
                self.info(line)
        self.app.invalidate()

    def _numbered(self, order: list[str]) -> str:
        """``/window``: ``conversations: 1 #lobby (shown), 2 #dev (3), 3 @bob — /window
        N or Alt-N shows one``, by the sidebar's order and with its unread counts."""
        if not order:
            return "no conversation open: /join ROOM or /query NAME"
        counts = v.unseen_counts((self.conversations[k] for k in order),
                                 self.client.unread, self.active)
        shown = []
        for n, key in enumerate(order, 1):
            conv = self.conversations[key]
            name = ("#" if conv.kind == "room" else "@") + conv.title
            if not conv.joined:
                name = f"({name})"
            count = counts.get(key)
            extra = (" (shown)" if key == self.active
                     else f" ({count.unread})" if count is not None and count.unread else "")
            shown.append(f"{n} {name}{extra}")
        return f"conversations: {', '.join(shown)} — /window N or Alt-N shows one"

    async def _topic(self, cmd: c.Topic) -> None:
        """/topic [#ROOM] [TEXT]: show or set the topic of the current room or ROOM. A
        room you are in shows the topic it has on screen; one you are not in (never
        joined, left, removed from) is asked of the broker without joining it
        (ROOM_INFO, docs/PROTOCOL.md §6.51)."""
        conv = self.current
        room = cmd.room or (conv.title if conv is not None and conv.kind == "room" else None)
        if room is None:
            self.error("/topic works in rooms; /topic #ROOM shows the topic of ROOM")
            return
        if cmd.text is not None:
            await self.client.set_topic(room, cmd.text)
            return
        shown = self.conversations.get(v.room_key(room))
        if shown is not None and shown.kind == "room" and shown.joined:
            self.info(f"topic of #{shown.title}: {shown.topic or '(none)'}")
            return
        found = await self.client.room_info(room)
        self.info(f"topic of #{found.room}: {found.topic or '(none)'} (you are not in "
                  f"#{found.room}; {_count(found.members, 'member')})")

    async def _ask_delete_room(self, cmd: c.DeleteRoom) -> None:
        """/deleteroom [ROOM] [REASON]: say what it would delete (ROOM_INFO: its number
        of messages and members) and wait for confirmation (``_confirm_delete``), as a
        long paste waits for Enter: it deletes the room's history for everyone."""
        conv = self.current
        room = cmd.room or (conv.title if conv is not None and conv.kind == "room" else None)
        if room is None:
            self.error("/deleteroom needs a ROOM here — usage: /deleteroom [ROOM] [REASON]")
            return
        found = await self.client.room_info(room)
        self.pending_delete = (found.room, cmd.reason)
        self.info(f"/deleteroom deletes #{found.room} and its "
                   f"{_count(found.last_seq, 'message')} for everyone "
                   f"({_count(found.members, 'member')}), for good: Enter on an empty "
                   "line (or the same /deleteroom again) deletes it, Esc cancels")

    async def _moderate(self, cmd: c.Moderate, typed: str = "") -> None:
        """/kick /ban /unban /mute /unmute /invite /op /deop /lock /unlock /private
        /delete in the current room (docs/console.md); a 403 is shown as an error. In a
        room you are not in, nothing is sent and ``typed`` comes back to the input."""
        conv = self.current
        if conv is None or conv.kind != "room":
            self.error(f"/{cmd.action} works in rooms")
            return
        if self._not_joined(conv):
            self._give_back(typed)
            return
        room, client, a = conv.title, self.client, cmd.action
        if a == "kick":
            await client.kick(room, cmd.user, cmd.reason)
        elif a == "ban":
            await client.ban(cmd.user, room, cmd.reason, cmd.duration_s)
        elif a == "unban":
            await client.unban(cmd.user, room)
        elif a == "mute":
            await client.mute(cmd.user, room, cmd.reason, cmd.duration_s)
        elif a == "unmute":
            await client.unmute(cmd.user, room)
        elif a == "invite":
            await client.invite(room, cmd.user)
        elif a in ("op", "deop"):
            await client.set_role(room, cmd.user, "moderator" if a == "op" else "member")
        elif a in ("lock", "unlock"):
            await client.set_room(room, locked=a == "lock")
        elif a == "private":
            await client.set_room(room, private=cmd.on)
        elif a == "delete":
            seq = cmd.seq
            if seq is None:  # the last message of that user shown here
                seq = next((ln.seq for ln in reversed(conv.lines)
                            if ln.seq is not None and ln.kind in ("message", "action")
                            and ln.sender is not None
                            and name_key(ln.sender) == name_key(cmd.user)), None)
                if seq is None:
                    self.error(f"no message of {cmd.user} shown here")
                    return
            await client.delete_message(room, seq)
        if a in ("ban", "unban", "mute", "unmute", "invite", "op", "deop"):
            self.info(f"{a} {cmd.user} in #{room}: done")

    async def _switch_to_name(self, target: str) -> None:
        """/switch: ``@name`` is the DM conversation with name, opened if the account
        exists (``_open_dm``); a bare name a room you are in, else the DM conversation
        already open with someone of that name."""
        if target.startswith("@"):
            key = await self._open_dm(target[1:])
            if key is not None:
                self.switch(key)
            return
        for key in (v.room_key(target), v.dm_key(target)):
            if key in self.conversations:
                self.switch(key)
                return
        self.error(f"you are not in #{target}; /join {target} to join it, or "
                   f"/query {target} to talk with someone of that name")

    async def _open_dm(self, name: str, typed: str = "") -> str | None:
        """The key of the DM conversation with ``name``, opened first when new, after the
        broker said the account exists (WHOIS; a broker older than it, 405, is taken at
        its word). None when there is no such account: an error line says so and
        ``typed`` (the command as typed) comes back to the input to fix. A new
        conversation shows its history (``load_dm_history``) before anything is sent
        in it; a history that cannot be loaded does not stop the command (it is tried
        again when the conversation is next shown)."""
        key = v.dm_key(name)
        if key in self.conversations:
            return key
        try:
            title = (await self.client.whois(name)).name
        except RequestFailed as exc:
            if exc.status == Status.NOT_FOUND:
                self.error(f"refused: {exc.reason} ({int(exc.status)})")
                self._give_back(typed)  # to fix the name
                return None
            if exc.status != Status.UNKNOWN_COMMAND:
                self._give_back(typed)
                raise
            title = name
        except ZchatError:
            self._give_back(typed)
            raise
        self.conversation(key, title, "dm")
        try:
            await self.load_dm_history(key)
        except ZchatError as exc:
            log.info("no history of the conversation with %s now: %s", title, exc)
        return key

    def _close(self, key: str) -> None:
        """Take a conversation out of the sidebar; the one before it in the sidebar's
        order is shown when it was the current one. Nothing is asked of the broker."""
        order = self.sidebar_order()
        at = order.index(key) if key in order else 0
        self.conversations.pop(key, None)
        self._dm_history.discard(key)  # opened again, it loads its history again
        self._mark_want.pop(key, None)
        self._marked.pop(key, None)
        if key in self.order:
            self.order.remove(key)
        if self.active == key:
            self.active = None
            left = self.sidebar_order()
            if left:
                self.switch(left[max(0, at - 1)])
        self.app.invalidate()

    async def _part(self, room: str, reason: str = "") -> None:
        """Leave ``room`` (telling the others ``reason``) and close its conversation; a
        room you were removed from is only closed (the broker would refuse the PART)."""
        key = v.room_key(room)
        parted = self.conversations.get(key)
        if parted is None or parted.joined:
            await self.client.part(room, reason=reason)
        self._close(key)

    async def _load_room_names(self) -> None:
        """Every room on the broker, so that /join completes rooms not joined yet."""
        self.known_rooms = {r.room for r in (await self.client.list_rooms()).rooms}

    def _presence_of(self, name: str) -> v.Presence | None:
        for conv in self.conversations.values():
            for known, member in conv.members.items():
                if name_key(known) == name_key(name):
                    return member.presence
        return None

    async def refresh_members(self, key: str | None = None) -> None:
        """Reload the member list and presence of one room (``key``) or of every room
        (after a reconnect). Rooms marked not joined are skipped: you are no member, and
        a private one would only answer 403 (a tester saw that line at every reconnect)."""
        for conv in list(self.conversations.values()):
            if conv.kind == "room" and conv.joined and key in (None, conv.key):
                users = (await self.client.who(conv.title)).users
                conv.members.clear()
                for u in users:
                    conv.set_member(u.name, u.presence, bot=u.bot, text=u.text)
        self.app.invalidate()

    async def older_history(self, conv: v.Conversation) -> None:
        """Scrolled above the loaded lines: fetch the page before them (a room's
        messages or a direct conversation's DMs)."""
        if conv.key in self._fetching_older or not conv.may_have_older:
            return
        self._fetching_older.add(conv.key)
        try:
            await self._load_older(conv, conv.oldest_seq, OLDER_PAGE)
        finally:
            self._fetching_older.discard(conv.key)
        self.app.invalidate()

    async def _load_older(self, conv: v.Conversation, before: int | None, limit: int) -> int:
        """Put up to ``limit`` messages before ``before`` (None: the newest) on top of
        ``conv`` (HISTORY for a room, DM_HISTORY for a direct conversation); how many
        were added. A short page means there is nothing older (``history_complete``)."""
        events: tuple[p.MessagePosted, ...] | tuple[p.DirectMessage, ...]
        if conv.kind == "room":
            events = (await self.client.history(conv.title, before=before,
                                                limit=limit)).messages
        else:
            events = (await self.client.dm_history(conv.title, before=before,
                                                   limit=limit)).messages
        lines = [v.line_from_event(m, self.me) for m in events]
        added = conv.insert_older(lines, self.me)
        if len(lines) < limit and (not lines or conv.oldest_seq == lines[0].seq):
            conv.history_complete = True
        return added

    async def quit(self, text: str = "") -> None:
        """Log out (briefly: the broker may be gone) and leave the screen. A read marker
        still waiting out MARK_READ_INTERVAL_S goes first: what you saw stays read."""
        if self.client.state == "connected" and not self._logged_out:
            self._logged_out = True
            with contextlib.suppress(ZchatError, TimeoutError):
                await asyncio.wait_for(self._flush_marks(), QUIT_TIMEOUT_S / 2)
            with contextlib.suppress(ZchatError, TimeoutError):
                try:
                    await asyncio.wait_for(self.client.logout(text), QUIT_TIMEOUT_S / 2)
                except RequestFailed:
                    # The quit message was refused (too long, a control character): log
                    # out without it rather than stay online until the heartbeat timeout.
                    await asyncio.wait_for(self.client.logout(), QUIT_TIMEOUT_S / 2)
        if self.app.is_running and not self.app.future.done():  # type: ignore[union-attr]
            self.app.exit()

    # -- drawing ----------------------------------------------------------------------------------

    def _message_rows(self, width: int, height: int) -> list[Row]:
        conv = self.current
        if conv is None:
            head: Row = [("class:info", NO_CONVERSATION)]
            if not self.no_conversation.lines:
                return [head]
            said = self.no_conversation.viewport(width, max(0, height - 1), self.me,
                                                 self.tz).rows
            return [head, *said]
        more = not conv.following
        vp = conv.viewport(width, height - (1 if more else 0), self.me, self.tz)
        blank: list[Row] = [[] for _ in range(height - len(vp.rows) - (1 if more else 0))]
        rows = blank + vp.rows
        if more:
            rows.append(v.render_more_indicator(conv.new_while_scrolled, width))
        # Not in a room you were removed from: a private one answers only 403, and the
        # refusal's line would keep the pane at the top, asking again at every redraw.
        if vp.at_top and not conv.following and conv.joined and conv.may_have_older:
            self._spawn(self.older_history(conv))
        if vp.at_bottom and height > 0:  # its newest line is on screen: read
            self._on_screen(conv)
        return rows

    def _sidebar_rows(self, width: int, height: int) -> list[Row]:
        conv = self.current
        members = conv.members if conv is not None and conv.kind == "room" else None
        convs = [self.conversations[k] for k in self.order]
        rows = v.render_sidebar(convs, self.active, members, width,
                                v.unseen_counts(convs, self.client.unread, self.active))
        if len(rows) <= height:
            return rows
        # Too many rows: scroll so that the active conversation stays in sight.
        active = next((i for i, row in enumerate(rows)
                       if any("sidebar.active" in style for style, *_ in row)), 0)
        start = min(max(0, active - height // 3), len(rows) - height)
        return rows[start:start + height]

    def _status_rows(self, width: int, height: int) -> list[Row]:
        conv = self.current
        room = None if conv is None else (f"#{conv.title}" if conv.kind == "room"
                                          else f"@{conv.title}")
        wait = None
        if self.state == "reconnecting" and self.reconnect_at is not None:
            left = self.reconnect_at - time.monotonic()
            wait = left if left >= 0.5 else None  # trying now: "reconnecting…"
        rtt = self.client.rtt_s * 1000 if self.client.rtt_s is not None else None
        presence, away_text = self.client.presence
        return [v.render_status(self.me, room, conv.topic if conv else "", self.state, wait,
                                rtt, width, activity=self._activity(),
                                unanswered_s=self._unanswered_for(),
                                away=away_text if presence == "away" else None)]

    def _unanswered_for(self) -> float | None:
        """Seconds the oldest line shown pending, or request of the client (a heartbeat
        too), has waited for the broker, when that is NO_ANSWER_SHOWN_S or more; else
        None. A line waiting to be tried again after a request timed out still counts."""
        since = [*self._sending.values()]
        if self.client.unanswered_since is not None:
            since.append(self.client.unanswered_since)
        if not since:
            return None
        waited = time.monotonic() - min(since)
        return waited if waited >= NO_ANSWER_SHOWN_S else None

    def _activity(self) -> str:
        """Other conversations with unread messages, mentions first (`!`), like WeeChat's
        hotlist: visible even when the sidebar has scrolled them away or is hidden.
        From the account's read state on the broker, as the sidebar's counts."""
        order = self.sidebar_order()
        counts = v.unseen_counts((self.conversations[k] for k in order), self.client.unread,
                                 self.active)
        hot = [key for key in order if key in counts and counts[key].unread]
        hot.sort(key=lambda key: not counts[key].mention)
        return ",".join(("!" if counts[key].mention else "")
                        + ("#" if self.conversations[key].kind == "room" else "@")
                        + self.conversations[key].title for key in hot)

    def _on_pane_mouse(self, event: MouseEvent) -> object:
        conv = self.current
        if conv is None:
            return NotImplemented
        if event.event_type == MouseEventType.SCROLL_UP:
            conv.scroll_up(3)
        elif event.event_type == MouseEventType.SCROLL_DOWN:
            conv.scroll_down(3)
        else:
            return NotImplemented
        self.app.invalidate()
        return None

    def _prompt(self) -> StyleAndTextTuples:
        conv = self.current
        if self.pending_paste is not None:
            target = self.conversations.get(self._paste_target or "")
            where = "" if target is None else (f" to #{target.title}" if target.kind == "room"
                                               else f" to @{target.title}")
            return [("class:prompt", f"[paste {self.pending_paste.lines} lines{where}] ")]
        if self.pending_delete is not None:
            return [("class:prompt", f"[delete #{self.pending_delete[0]}? Enter/Esc] ")]
        if conv is None:
            return [("class:prompt", "> ")]
        name = f"#{conv.title}" if conv.kind == "room" else f"@{conv.title}"
        if not conv.joined:
            name = f"({name}: not joined)"
        return [("class:prompt", f"{name} > ")]

    # -- the application ---------------------------------------------------------------------------

    def _build_app(self, mouse: bool, input: Any, output: Any) -> Application[None]:
        self._pane_height = 20
        pane = Window(RowsControl(self._message_rows, self._on_pane_mouse), wrap_lines=False)
        self.pane = pane
        sidebar = Window(RowsControl(self._sidebar_rows), width=SIDEBAR_WIDTH,
                         style="class:sidebar")
        status = Window(RowsControl(self._status_rows), height=1, style="class:status")
        # The input wraps and grows up to 5 rows (no horizontal scrolling, which could
        # hide the prompt after a long line).
        entry = Window(BufferControl(self.input_buffer,
                                     input_processors=[BeforeInput(self._prompt)]),
                       height=Dimension(min=1, max=5), wrap_lines=True,
                       dont_extend_height=True, align=WindowAlign.LEFT)
        wide = Condition(lambda: self.app.output.get_size().columns >= MIN_WIDTH_FOR_SIDEBAR)
        root = HSplit([VSplit([pane, ConditionalContainer(
            VSplit([Window(width=1, char="│", style="class:separator"), sidebar]),
            filter=wide)]), status, entry])
        style = Style.from_dict({**v.DEFAULT_STYLE, "prompt": "bold"})
        # Several lines in one read are a paste, even without bracketed paste: a pasted
        # "/quit" line must not run (zchat/console/paste_input.py).
        grouped = PasteGroupingInput(input if input is not None else get_app_session().input)
        return Application(layout=Layout(root, focused_element=entry),
                           key_bindings=self._bindings(), style=style, full_screen=True,
                           mouse_support=mouse, refresh_interval=0.5, input=grouped,
                           output=output)

    def _page(self) -> int:
        info = self.pane.render_info
        return max(1, (info.window_height if info else 20) - 2)

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()
        input_empty = Condition(lambda: not self.input_buffer.text)
        scrolled = Condition(lambda: self.current is not None and not self.current.following)

        @kb.add("c-c", eager=True)
        def _ctrl_c(event: KeyPressEvent) -> None:
            self._spawn(self.quit())

        @kb.add("c-d", filter=input_empty, eager=True)
        def _ctrl_d(event: KeyPressEvent) -> None:
            self._spawn(self.quit())

        @kb.add("pageup")
        def _page_up(event: KeyPressEvent) -> None:
            if self.current:
                self.current.scroll_up(self._page())

        @kb.add("pagedown")
        def _page_down(event: KeyPressEvent) -> None:
            if self.current:
                self.current.scroll_down(self._page())

        @kb.add("end", filter=scrolled)
        def _end(event: KeyPressEvent) -> None:
            if self.current:
                self.current.scroll_to_end()

        @kb.add("escape", "end")
        def _alt_end(event: KeyPressEvent) -> None:
            if self.current:
                self.current.scroll_to_end()

        @kb.add("c-z", eager=True)
        def _suspend(event: KeyPressEvent) -> None:
            # As other terminal programs: the terminal back in cooked mode, SIGTSTP to the
            # process group; on SIGCONT (fg) raw mode again and the screen redrawn.
            event.app.suspend_to_background()

        @kb.add("c-o", eager=True)
        def _fold(event: KeyPressEvent) -> None:
            if self.current:  # long messages whole, or folded again
                self.current.toggle_fold()

        @kb.add("c-n", eager=True)
        def _next(event: KeyPressEvent) -> None:
            self._switch_by(1)

        @kb.add("c-p", eager=True)
        def _prev(event: KeyPressEvent) -> None:
            self._switch_by(-1)

        for digit in "123456789":
            @kb.add("escape", digit, eager=True)
            def _alt_digit(event: KeyPressEvent, n: int = int(digit)) -> None:
                order = self.sidebar_order()
                if n <= len(order):
                    self.switch(order[n - 1])

        @kb.add("up", eager=True)
        def _up(event: KeyPressEvent) -> None:
            if self.input_buffer.document.cursor_position_row > 0:  # several lines
                self.input_buffer.cursor_up()
                return
            previous = self.history.up(self.input_buffer.text)
            if previous is not None:
                self.input_buffer.text = previous
                self.input_buffer.cursor_position = len(previous)

        @kb.add("down", eager=True)
        def _down(event: KeyPressEvent) -> None:
            doc = self.input_buffer.document
            if doc.cursor_position_row < doc.line_count - 1:  # several lines
                self.input_buffer.cursor_down()
                return
            following = self.history.down()
            if following is not None:
                self.input_buffer.text = following
                self.input_buffer.cursor_position = len(following)

        def _tab(backwards: bool) -> None:
            buf = self.input_buffer
            if self._tab is None:
                conv = self.current
                nicks = sorted(conv.members) if conv else []
                if conv and conv.kind == "dm":
                    nicks = [conv.title]
                rooms = sorted({self.conversations[k].title for k in self.order
                                if self.conversations[k].kind == "room"} | self.known_rooms)
                if buf.text.lower().startswith("/switch "):
                    rooms += ["@" + self.conversations[k].title for k in self.order
                              if self.conversations[k].kind == "dm"]
                self._tab = c.TabCycle.start(buf.text, buf.cursor_position, nicks=nicks,
                                             rooms=rooms)
                if self._tab is None:
                    return
            new_text, cursor = self._tab.prev() if backwards else self._tab.next()
            self._completing = True
            try:
                buf.text = new_text
                buf.cursor_position = cursor
            finally:
                self._completing = False

        @kb.add("tab", eager=True)
        def _tab_fwd(event: KeyPressEvent) -> None:
            _tab(False)

        @kb.add("s-tab", eager=True)
        def _tab_back(event: KeyPressEvent) -> None:
            _tab(True)

        @kb.add(Keys.BracketedPaste, eager=True)
        def _paste(event: KeyPressEvent) -> None:
            self.on_paste(event.data)

        @kb.add("escape", filter=Condition(lambda: self.pending_paste is not None
                                           or self.pending_delete is not None),
                eager=True)
        def _cancel_pending(event: KeyPressEvent) -> None:
            if self.pending_paste is not None:
                self._cancel_paste()
            elif self.pending_delete is not None:
                room, self.pending_delete = self.pending_delete[0], None
                self.info(f"room deletion cancelled: #{room} stays")

        @kb.add("c-u", filter=Condition(lambda: "\n" in self.input_buffer.text))
        def _discard_lines(event: KeyPressEvent) -> None:
            # In an input of several lines (a paste given back: over the limit, refused)
            # the input is the line: from its start to the cursor, so that one key
            # clears a long paste. Ctrl-Y yanks it back, as after any Ctrl-U.
            buf = self.input_buffer
            event.app.clipboard.set_text(buf.delete_before_cursor(buf.cursor_position))

        return kb

    # -- running -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Show the screen until /quit, Ctrl-C or Ctrl-D, or until the terminal is gone
        (its end of input, or EIO reading or writing it: the window or tmux session was
        closed); closes the client on the way out.

        However it ends — those, or SIGTERM or SIGHUP cancelling it (see cli.cmd_join),
        or prompt_toolkit failing — it logs out first unless /quit did (at most
        QUIT_TIMEOUT_S), so the others see us offline now, not after the broker's
        heartbeat timeout. An exception of prompt_toolkit's own callbacks is logged
        (console.log), not printed over the screen with a wait for Enter that a closed
        terminal would never give."""
        pump = asyncio.ensure_future(self.pump())
        me = asyncio.current_task()
        cancelled = False
        try:
            await self.start()
            await self.app.run_async(set_exception_handler=False)
        except (EOFError, OSError) as exc:  # the terminal went away
            log.info("the terminal is gone (%r); logging out", exc)
            # A SIGHUP's cancellation that met EIO while prompt_toolkit restored the
            # terminal: still a cancellation (exit status 129), once logged out.
            cancelled = me is not None and me.cancelling() > 0
        finally:
            if self.client.state == "connected" and not self._logged_out:
                self._logged_out = True
                with contextlib.suppress(ZchatError, TimeoutError, OSError,
                                         asyncio.CancelledError):
                    await asyncio.wait_for(self.client.logout(), QUIT_TIMEOUT_S)
            pump.cancel()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await self.client.close()
        if cancelled:
            raise asyncio.CancelledError


def _short(typed: str) -> str:
    """A line as typed, cut to 40 characters, to name it in a notice."""
    return typed if len(typed) <= 40 else typed[:39] + "…"


def _count(n: int, noun: str) -> str:
    """``1 member``, ``3 members``: a count with its noun."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- before the screen: logging in -------------------------------------------------------------

Ask = Callable[[str, bool], Awaitable[str]]


async def login_flow(client: Client, name: str, ask: Ask, password: str | None,
                     say: Callable[[str], None], max_tries: int = 3) -> p.LoggedIn:
    """Log ``name`` in: use ``password`` (from $ZCHAT_PASSWORD) or ``ask`` for it; offer to
    create a missing account (password asked twice); ask again after a wrong password.

    ``ask(prompt, secret)`` returns the user's answer; ``say(text)`` shows a line.
    Raises RequestFailed when it cannot log in (e.g. wrong password from the environment,
    or ``max_tries`` wrong answers); ProtocolError (422) when the password from the
    environment is too short for a new account (the broker's ``min_password_chars``).
    """
    given = password
    for attempt in range(max_tries):
        secret = given if given else await ask(f"Password for {name}: ", True)
        try:
            return await client.login(name, secret)
        except RequestFailed as exc:
            if exc.status == Status.NOT_FOUND:
                answer = await ask(f"There is no account named {name!r}. Create it? [y/N] ",
                                   False)
                if answer.strip().lower() not in ("y", "yes"):
                    raise
                new = await _new_password(client, ask, say, given)
                if not given and await ask("New password (again): ", True) != new:
                    say("The passwords do not match.")
                    continue
                await client.register(name, new)
                say(f"Created the account {name}.")
                return await client.login(name, new)
            if exc.status == Status.UNAUTHORIZED and not given \
                    and attempt < max_tries - 1:
                say("Wrong password, try again.")
                continue
            raise
    raise RequestFailed(401, "wrong name or password")


async def _new_password(client: Client, ask: Ask, say: Callable[[str], None],
                        given: str | None) -> str:
    """The password of a new account, checked before it is sent by the broker's rule
    (``min_password_chars`` from its INFO, ``zchat.admin.check_new_password``): asked
    with the rule in the prompt (``New password (at least 8 characters): ``) until one
    keeps it, each refusal said in the broker's words. ``given`` (from $ZCHAT_PASSWORD)
    is not asked again: one too short raises ProtocolError (422) naming the variable."""
    min_chars = broker_min_password_chars(client)
    if given:
        try:
            return check_new_password(given, min_chars)
        except ProtocolError as exc:
            raise ProtocolError(exc.status, f"{exc.reason} (the password from "
                                "$ZCHAT_PASSWORD, for the new account)") from None
    rule = f" (at least {min_chars} characters)" if min_chars > 1 else ""
    while True:
        new = await ask(f"New password{rule}: ", True)
        try:
            return check_new_password(new, min_chars)
        except ProtocolError as exc:
            say(exc.reason[:1].upper() + exc.reason[1:] + ".")
