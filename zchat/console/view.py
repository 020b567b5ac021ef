"""Pure rendering and state for the chat console: lines, conversations, sidebar, status bar.

Nothing here touches a terminal, a socket or a clock; the prompt_toolkit Application sits
on top (docs: STYLE.md §5). Time arrives as broker UTC milliseconds plus a ``tz`` to show
it in; widths are terminal *cells* measured with ``prompt_toolkit.utils.get_cwidth`` (the
same per-character measure prompt_toolkit's renderer uses), never ``len()``.

Shapes:

- a *fragment* is ``(style, text)``; ``style`` is a space-separated list of
  ``class:NAME`` entries for the app's ``Style`` (``DEFAULT_STYLE`` holds a starting set);
- a *row* is ``list[Fragment]``, one screen row; every function here returns rows whose
  total cell width is at most the ``width`` it was given (a width below 1 gives empty rows);
- untrusted text (message bodies, names, topics) always goes through ``sanitize`` before it
  is measured or shown, so it cannot move the cursor, clear the screen, set the title or
  reorder text.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import re
import unicodedata
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from prompt_toolkit.utils import get_cwidth

from zchat import timefmt
from zchat import wire as p
from zchat.client.session import Unread
from zchat.names import mentions, name_key

Fragment = tuple[str, str]
Row = list[Fragment]
LineKind = Literal["message", "action", "notice", "error", "info", "dm"]
#: Of a line you typed: "" (sent, or not yours), "pending" (sent, no answer yet) or
#: "failed" (not sent: refused, or no answer in time).
SendStatus = Literal["", "pending", "failed", "unknown"]
ConversationKind = Literal["room", "dm"]
Presence = Literal["online", "away", "offline"]
ConnectionState = Literal["connected", "reconnecting", "disconnected"]

#: Columns a tab advances to: the next multiple of this many cells, counted from the start
#: of the tab's line within the message text.
TAB_STOP = 4
#: Lines kept per conversation. 5,000 rows of scroll-back covers hours of a busy room; older
#: lines are fetched from the broker's history again when the user scrolls above the top.
MAX_LINES = 5000
#: Timestamp column: local ``HH:MM`` (5 cells). Seconds are noise in a chat pane; the date
#: is left to day-change lines (``day_line``).
TIMESTAMP_WIDTH = 5
#: Default width of the nick column in cells.
DEFAULT_NICK_WIDTH = 12
#: Between the nick column and the text column.
SEPARATOR = " │ "
#: Shown where text was cut: at the end of a topic, in the middle of a name
#: (``truncate_middle``).
ELLIPSIS = "…"
#: Text column narrower than this makes the layout drop the timestamp, then the columns.
MIN_TEXT_WIDTH = 10
#: A line taking more rows than this is folded (``render_line``'s ``fold_rows``): its first
#: FOLD_ROWS - 1 rows, then ``… 37 more lines (Ctrl-O unfolds)``. Ten rows show a code
#: snippet or a short paste whole and stay under half of a 24-row terminal's pane, so one
#: long message (up to the broker's ``max_text_lines``, 50 by default, or 4,000 bytes
#: wrapped) never fills the screen (issue 13).
FOLD_ROWS = 10
#: Key that unfolds (and folds again) long lines, as the fold row names it.
FOLD_KEY = "Ctrl-O"
#: Cells of your away message the status bar shows (``[away: lunch break]``): enough for
#: a few words; a longer one (up to 200 characters) would push the room and topic out.
AWAY_SHOWN_CELLS = 30

#: Nick colours: style class name -> colour. Mid-luminance 256-colour-cube values, each
#: readable on both a dark and a light background (no pure yellow, white, black or grey).
NICK_PALETTE: dict[str, str] = {
    "nick.0": "#d75f5f",   # red
    "nick.1": "#d7875f",   # orange
    "nick.2": "#af8700",   # dark gold
    "nick.3": "#5faf00",   # green
    "nick.4": "#00af87",   # teal
    "nick.5": "#00afaf",   # cyan
    "nick.6": "#0087d7",   # blue
    "nick.7": "#5f87d7",   # cornflower
    "nick.8": "#875fd7",   # purple
    "nick.9": "#af5fd7",   # violet
    "nick.10": "#d75faf",  # pink
    "nick.11": "#af5f00",  # brown
}

#: A starting ``Style.from_dict`` for every class this module emits. ``own``/``mention``/
#: ``notice``/``error``/``info`` are set on every fragment of a row, so a background on
#: them highlights the whole row.
DEFAULT_STYLE: dict[str, str] = {
    **NICK_PALETTE,
    "timestamp": "#808080",
    "separator": "#808080",
    "text": "",
    "own": "",
    "own nick": "bold",
    "pending": "#808080",
    "failed": "#d75f5f",
    "unknown": "#d75f5f",
    "mention": "bold",
    "mention text": "#d7005f bold",
    "notice": "#808080",
    "info": "#808080 italic",
    "error": "#d70000",
    "marker": "",
    "day": "#808080",
    "more": "reverse",
    "fold": "#808080 italic",
    "sidebar": "",
    "sidebar.heading": "bold underline",
    "sidebar.active": "reverse",
    "sidebar.unread": "bold",
    "sidebar.parted": "#808080 italic",
    "sidebar.mention": "#d7005f bold",
    "presence.online": "#5faf00",
    "presence.away": "#af8700",
    "presence.offline": "#808080",
    "bot": "#808080",
    "status": "reverse",
    "status.user": "reverse bold",
    "status.room": "reverse bold",
    "status.topic": "reverse",
    "status.connected": "reverse",
    "status.reconnecting": "reverse #af8700",
    "status.unanswered": "reverse #af8700",
    "status.away": "reverse #af8700",
    "status.disconnected": "reverse #d70000",
}


# ---------------------------------------------------------------------------
# Sanitizing and measuring


#: One flag (a pair of regional indicators) or a lone indicator, spelled out by sanitize.
_FLAGS = re.compile("[\U0001f1e6-\U0001f1ff]{1,2}")


def _spell_flag(match: re.Match[str]) -> str:
    return "[" + "".join(chr(ord("A") + ord(c) - 0x1F1E6) for c in match.group()) + "]"


#: A subdivision flag: black flag, tag letters, cancel tag (🏴 + "gbsct" → [GBSCT]).
_TAG_FLAGS = re.compile("\U0001f3f4([\U000e0061-\U000e007a]+)\U000e007f")


def _spell_tag_flag(match: re.Match[str]) -> str:
    return "[" + "".join(chr(ord(c) - 0xE0000) for c in match.group(1)).upper() + "]"


#: Emoji joiners/selectors dropped for drawing (see ``sanitize``), and the combining
#: keycap (1️⃣ → 1), which terminals draw at widths of their own.
_DROPPED_EMOJI_PARTS = frozenset("\u200d\ufe0f\u20e3")
#: Blank-looking characters whose width terminals disagree on, shown as <U+XXXX>:
#: combining grapheme joiner, Hangul fillers.
_INVISIBLE_FILLERS = frozenset("\u034f\u115f\u1160\u3164\uffa0")


def _visible_escape(ch: str) -> str:
    return f"<U+{ord(ch):04X}>"


@functools.lru_cache(maxsize=4096)
def sanitize(text: str) -> str:
    """Make untrusted ``text`` safe and unambiguous to draw; returns a new string.

    - ``\\n`` is kept (a line break); U+2028/U+2029 (line/paragraph separator) become ``\\n``.
    - ``\\t`` expands to spaces up to the next multiple of ``TAB_STOP`` cells, counted from
      the start of its line (spaces keep widths predictable; a terminal's own tab stops
      would not line up with the text column).
    - every other C0 control (U+0000–U+001F) becomes its Control Pictures symbol
      U+2400+code (ESC → ``␛``, BEL → ``␇``, CR → ``␍``), DEL → ``␡``.
    - C1 controls (U+0080–U+009F, which include the 8-bit CSI U+009B and OSC U+009D) become
      a visible escape ``<U+009B>``.
    - every format character (category Cf: bidi embeddings/overrides/isolates U+202A–U+202E
      and U+2066–U+2069, U+061C, zero-width U+200B–U+200F, U+2060, U+FEFF, soft hyphen,
      tag characters …) becomes ``<U+XXXX>`` so it can neither reorder nor hide text.
    - emoji pieces whose drawn width differs between terminals are normalised so that
      prompt_toolkit's count and the terminal's drawing agree (a mismatch leaves stray
      cells on screen): ZWJ (U+200D) and the emoji variation selector (U+FE0F) are
      dropped, so a joined sequence is drawn as its parts; skin-tone modifiers
      (U+1F3FB–U+1F3FF) are dropped; a regional-indicator flag is spelled out, 🇯🇵 →
      ``[JP]``.
    - unpaired surrogates become U+FFFD ``�``.

    The result holds no character that can move the cursor, clear the screen or set the
    title: ``"\\x1b[2J"`` becomes ``"␛[2J"``.
    """
    if text.isascii() and text.isprintable():
        return text
    text = _FLAGS.sub(_spell_flag, _TAG_FLAGS.sub(_spell_tag_flag, text))
    out: list[str] = []
    col = 0  # cells since the last "\n", for tab stops
    for ch in text:
        o = ord(ch)
        if ch == "\n":
            out.append(ch)
            col = 0
            continue
        if ch == "\t":
            n = TAB_STOP - col % TAB_STOP
            out.append(" " * n)
            col += n
            continue
        if o < 0x20:
            rep = chr(0x2400 + o)
        elif o == 0x7F:
            rep = "\u2421"
        elif 0x80 <= o <= 0x9F:
            rep = _visible_escape(ch)
        elif o < 0xA0:
            rep = ch
        elif ch in _DROPPED_EMOJI_PARTS or _is_emoji_modifier(ch):
            continue
        elif ch in _INVISIBLE_FILLERS:
            rep = _visible_escape(ch)
        else:
            cat = unicodedata.category(ch)
            if cat == "Cf":
                rep = _visible_escape(ch)
            elif cat == "Cs":
                rep = "\ufffd"
            elif cat in ("Zl", "Zp"):
                out.append("\n")
                col = 0
                continue
            else:
                rep = ch
        out.append(rep)
        col += get_cwidth(rep)
    return "".join(out)


def cell_width(text: str) -> int:
    """Cells ``text`` takes on screen, as prompt_toolkit measures it (sum of per-character
    ``get_cwidth``). ``text`` should already be sanitized."""
    return get_cwidth(text) if text else 0


def _is_emoji_modifier(ch: str) -> bool:
    return "\U0001f3fb" <= ch <= "\U0001f3ff"


def _is_regional_indicator(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def clusters(text: str) -> Iterator[tuple[str, int]]:
    """Split ``text`` into the units wrapping never breaks, with their cell widths.

    A unit is a character of non-zero width plus the zero-width characters after it
    (combining marks, variation selectors), plus an emoji skin-tone modifier after it, or a
    pair of regional indicators (a flag). Zero-width characters at the very start form a
    unit of width 0.
    """
    cur = ""
    cur_w = 0
    for ch in text:
        w = get_cwidth(ch)
        if cur and (w == 0
                    or (_is_emoji_modifier(ch) and not any(map(_is_emoji_modifier, cur)))
                    or (_is_regional_indicator(ch) and len(cur) == 1
                        and _is_regional_indicator(cur))):
            cur += ch
            cur_w += w
            continue
        if cur:
            yield cur, cur_w
        cur, cur_w = ch, w
    if cur:
        yield cur, cur_w


def truncate_cells(text: str, width: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``width`` cells, ending in ``ellipsis`` when cut. A wide
    character is never split: when it does not fit, the row is one cell shorter."""
    if width <= 0:
        return ""
    if cell_width(text) <= width:
        return text
    ell_w = cell_width(ellipsis)
    if ell_w > width:
        ellipsis, ell_w = "", 0
    out: list[str] = []
    used = 0
    for unit, w in clusters(text):
        if used + w > width - ell_w:
            break
        out.append(unit)
        used += w
    return "".join(out) + ellipsis


def truncate_middle(text: str, width: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``width`` cells by taking out its middle: its start, then
    ``ellipsis``, then its end, the start getting the odd cell. Names that share a
    beginning stay apart (``alexander_the_great`` and ``alexander_the_small`` in 12
    cells: ``alexan…great``, ``alexan…small``), as they would not cut at the end. Too
    narrow for both ends (``width`` < 3), it is ``truncate_cells``."""
    if width <= 0:
        return ""
    if cell_width(text) <= width:
        return text
    ell_w = cell_width(ellipsis)
    if width < ell_w + 2:
        return truncate_cells(text, width, ellipsis)
    units = list(clusters(text))
    room = width - ell_w
    head: list[str] = []
    used = 0
    for unit, w in units:
        if used + w > (room + 1) // 2:
            break
        head.append(unit)
        used += w
    tail: list[str] = []
    for unit, w in reversed(units[len(head):]):
        if used + w > room:
            break
        tail.append(unit)
        used += w
    return "".join(head) + ellipsis + "".join(reversed(tail))


def pad_cells(text: str, width: int, align: Literal["left", "right"] = "left") -> str:
    """``text`` padded with spaces to exactly ``width`` cells (cut first when longer)."""
    text = truncate_cells(text, width)
    pad = " " * (width - cell_width(text))
    return pad + text if align == "right" else text + pad


_WORD = re.compile(r" +|[^ ]+")


def _break_units(word: str, width: int) -> Iterator[tuple[str, int]]:
    """Units of a word; a unit wider than ``width`` (a wide character in a 1-cell column)
    is replaced by U+FFFD so that nothing ever exceeds the width."""
    for unit, w in clusters(word):
        if w > width:
            yield "\ufffd", 1
        else:
            yield unit, w


def _wrap_one(line: str, width: int) -> list[str]:
    rows: list[str] = []
    cur: list[str] = []
    cur_w = 0

    def flush() -> None:
        nonlocal cur, cur_w
        row = "".join(cur).rstrip(" ")
        rows.append(row)
        cur, cur_w = [], 0

    for m in _WORD.finditer(line):
        tok = m.group()
        if tok[0] == " ":
            if cur_w + len(tok) <= width:
                cur.append(tok)
                cur_w += len(tok)
            elif not rows and not cur:
                # leading indentation wider than the row: keep what fits
                cur.append(" " * width)
                cur_w = width
            else:
                flush()  # break here; the spaces at the break are dropped
            continue
        w = cell_width(tok)
        if cur_w + w <= width:
            cur.append(tok)
            cur_w += w
            continue
        if w <= width and cur_w > 0:
            flush()
            cur.append(tok)
            cur_w = w
            continue
        # a word longer than a row: break it by units, starting on the current row
        for unit, uw in _break_units(tok, width):
            if cur_w + uw > width:
                flush()
            cur.append(unit)
            cur_w += uw
    if cur or not rows:
        rows.append("".join(cur))
    # a row left holding only spaces (after a break) carries nothing
    return rows


def wrap_cells(text: str, width: int) -> list[str]:
    """Wrap ``text`` into rows of at most ``width`` cells; returns the rows (at least one).

    ``"\\n"`` starts a new row. Rows break at spaces where possible (the spaces at a break
    are dropped; leading indentation of a line is kept); a word longer than a row is broken
    between units (see ``clusters``), so a wide character is never split and a combining
    mark stays with its base. ``text`` should be sanitized first. A ``width`` below 1 gives
    one empty row per line of text.
    """
    lines = text.split("\n")
    if width < 1:
        return ["" for _ in lines]
    rows: list[str] = []
    for line in lines:
        rows.extend(_wrap_one(line, width))
    return rows


# ---------------------------------------------------------------------------
# Nick colours and mentions


def nick_style(name: str) -> str:
    """A stable style class for ``name``'s colour, e.g. ``"class:nick.3"``: CRC-32 of the
    casefolded name modulo ``len(NICK_PALETTE)``, so it is the same in every process and
    run (unlike ``hash()``), and case-insensitive like names themselves."""
    index = zlib.crc32(name_key(name).encode("utf-8", "surrogatepass")) % len(NICK_PALETTE)
    return f"class:nick.{index}"


def is_mention(text: str, me: str) -> bool:
    """Whether ``text`` mentions ``me`` by the broker's rule (docs/PROTOCOL.md §6.49.2,
    ``zchat.names.mentions``), so that the lines highlighted here are the ones the
    broker counts in a room's ``mentions``: ``me`` as a word, case-insensitively, with or
    without a leading ``@`` (``"hi Alice"``, ``"@alice: look"``, ``"alice."``); not
    ``"malice"``, ``"alice_b"``, ``"alice.smith"`` or ``"bob-alice"``."""
    return mentions(text, me)


# ---------------------------------------------------------------------------
# Lines


@dataclass(frozen=True, slots=True)
class Line:
    """One item of a conversation.

    - ``kind``: ``message`` (room text), ``action`` (``/me``), ``dm`` (direct message),
      ``notice`` (join/leave/presence), ``error`` and ``info`` (local lines from the app).
    - ``time_ms``: the broker's UTC clock in milliseconds, or None for local lines.
    - ``sender``: who wrote it (message/action/dm), or whom a notice is about, or None.
    - ``seq``: the room's sequence number (message/action), the DM id (dm), else None;
      conversations dedupe on it.
    - ``marker``: the nick column of notice/error/info lines (default by kind:
      ``--`` notice and info, ``=!=`` error; ``-->``/``<--`` for joins/leaves).
    - ``own``/``mention``: set by ``classify``.
    - ``status``: of a line you typed, shown before the broker answers: ``pending``
      (drawn dim, ``(sending…)`` after the text) until the real message replaces it, or
      ``failed`` (``(not sent)``) when it was refused or never answered
      (``Conversation.settle``). ``""`` for every other line.
    - ``said_notice``: a message or dm that is a notice (IRC's NOTICE, docs/PROTOCOL.md
      §6.8): its sender is shown ``-alice-``, as irssi shows notices.
    """

    kind: LineKind
    time_ms: int | None
    sender: str | None
    text: str
    seq: int | None = None
    marker: str = ""
    own: bool = False
    mention: bool = False
    status: SendStatus = ""
    said_notice: bool = False


#: What follows the text of a line not sent yet, or not sent at all.
STATUS_SUFFIX: dict[str, str] = {"pending": " (sending…)", "failed": " (not sent)",
                                  "unknown": " (no answer)"}

_SPOKEN: frozenset[str] = frozenset({"message", "action", "dm"})
_DEFAULT_MARKER: dict[str, str] = {"notice": "--", "info": "--", "error": "=!=", "action": "*"}


def classify(line: Line, me: str) -> Line:
    """``line`` with ``own`` (written by ``me``, compared by name key) and ``mention``
    (someone else's message/action/dm naming ``me``, see ``is_mention``) set."""
    own = line.sender is not None and line.kind in _SPOKEN and name_key(line.sender) == name_key(me)
    mention = (not own and line.kind in _SPOKEN
               and is_mention(line.text, me))
    if own == line.own and mention == line.mention:
        return line
    return dataclasses.replace(line, own=own, mention=mention)


def line_from_event(event: p.MessagePosted | p.UserJoined | p.UserLeft | p.PresenceChanged
                    | p.DirectMessage, me: str) -> Line:
    """The (classified) line that shows a protocol event.

    MessagePosted → message/action with the room seq; DirectMessage → dm with its id as
    seq; UserJoined/UserLeft → notice ``-->``/``<--`` "bob joined #dev"; PresenceChanged →
    notice "bob is away: lunch". Which conversation it goes to: ``conversation_key``.
    """
    line: Line
    if isinstance(event, p.MessagePosted):
        kind: LineKind = "action" if event.kind == "action" else "message"
        text = f"(message deleted by {event.deleted_by})" if event.deleted_by else event.text
        line = Line(kind, event.time, event.sender, text, event.seq,
                    said_notice=event.notice)
    elif isinstance(event, p.DirectMessage):
        line = Line("dm", event.time, event.sender, event.text, event.id,
                    said_notice=event.notice)
    elif isinstance(event, p.UserJoined):
        line = Line("notice", event.time, event.name, f"{event.name} joined #{event.room}",
                    marker="-->")
    elif isinstance(event, p.UserLeft):
        text = f"{event.name} left #{event.room}" + (f": {event.reason}" if event.reason
                                                       else "")
        if event.by:  # removed by a moderator (docs/PROTOCOL.md §6.30, §6.31)
            text = (f"{event.name} was {'banned' if event.ban else 'kicked'} from "
                    f"#{event.room} by {event.by}" + (f": {event.reason}" if event.reason
                                                     else ""))
        line = Line("notice", event.time, event.name, text, marker="<--")
    else:
        text = f"{event.name} is {event.presence}"
        if event.text:
            text += f": {event.text}"
        line = Line("notice", event.time, event.name, text)
    return classify(line, me)


def duration_text(ms: int) -> str:
    """A ban's or mute's length for people, exact to the second where it matters:
    ``90 s``, ``12 min 5 s``, ``2 h 5 min``, ``3 d 4 h`` (seconds rounded up; units that
    are 0 left out). A 90 s ban must not read as "1 minute" (docs/console.md)."""
    s = max(0, -(-ms // 1000))
    if s < 60:
        return f"{s} s"
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = ([(days, "d"), (hours, "h")] if days else
             [(hours, "h"), (minutes, "min")] if hours else [(minutes, "min"), (seconds, "s")])
    return " ".join(f"{n} {unit}" for n, unit in parts if n)


def expiry_text(until_ms: int | None, since_ms: int, tz: datetime.tzinfo) -> str:
    """When a ban or mute set at ``since_ms`` lapses, in local time ``tz`` to the second:
    ``until lifted``, ``until 14:01:30 (90 s)`` the same day, else ``until 2024-06-02
    09:00:00 (18 h 58 min)`` (the time rounded up, so it is never early)."""
    if until_ms is None:
        return "until lifted"
    when = timefmt.local_datetime(until_ms, tz, round_up=True)
    since = timefmt.local_datetime(since_ms, tz)
    shown = when.strftime("%H:%M:%S" if when.date() == since.date() else timefmt.DATE_TIME)
    return f"until {shown} ({duration_text(until_ms - since_ms)})"


def room_key(room: str) -> str:
    """Conversation key of a room: its name key (the same key the client and topics use)."""
    return name_key(room)


def dm_key(name: str) -> str:
    """Conversation key of the direct-message conversation with ``name``: ``dm:<name key>``."""
    return "dm:" + name_key(name)


def conversation_key(event: p.MessagePosted | p.UserJoined | p.UserLeft | p.DirectMessage,
                     me: str) -> str:
    """Key of the conversation an event belongs to: the room's, or for a DM the
    conversation with the other party (the recipient when ``me`` sent it)."""
    if isinstance(event, p.DirectMessage):
        other = event.to if name_key(event.sender) == name_key(me) else event.sender
        return dm_key(other)
    return room_key(event.room)


def _time_text(time_ms: int | None, tz: datetime.tzinfo) -> str:
    if time_ms is None:
        return " " * TIMESTAMP_WIDTH
    return timefmt.clock_text(time_ms, tz)


def _join_style(*parts: str) -> str:
    return " ".join(x for x in parts if x)


def _line_class(line: Line) -> str:
    if line.kind in ("notice", "error", "info"):
        return f"class:{line.kind}"
    if line.status:
        return f"class:own class:{line.status}"
    if line.mention:
        return "class:mention"
    if line.own:
        return "class:own"
    return ""


def fold_text(hidden: int) -> str:
    """What the last row of a folded line says: ``… 37 more lines (Ctrl-O unfolds)``."""
    return f"… {hidden} more line{'s' if hidden != 1 else ''} ({FOLD_KEY} unfolds)"


@functools.lru_cache(maxsize=8192)
def _render_cached(line: Line, width: int, tz: datetime.tzinfo, nick_width: int,
                   fold_rows: int = 0) -> tuple[tuple[Fragment, ...], ...]:
    rows = _render_rows(line, width, tz, nick_width)
    if not fold_rows or len(rows) <= max(1, fold_rows):
        return rows
    keep = max(0, fold_rows - 1)
    hidden = len(rows) - keep
    # The last row is a continuation row: its indent and separator lead the fold row into
    # the text column (the compact layout of a narrow pane has neither).
    last = rows[-1]
    sep_at = next((i for i, (style, _t) in enumerate(last) if "class:separator" in style),
                  None)
    lead = last[:sep_at + 1] if sep_at is not None else ()
    room = width - sum(cell_width(t) for _s, t in lead)
    fold_style = _join_style(_line_class(line), "class:fold")
    # ``(not sent)`` / ``(sending…)`` ends the text, hidden by the fold: said again here,
    # first, so that a narrow pane cuts the hint rather than it
    status = STATUS_SUFFIX.get(line.status, "").strip() if line.kind in _SPOKEN else ""
    said = f"{status} {fold_text(hidden)}" if status else fold_text(hidden)
    marker = (*lead, (fold_style, truncate_cells(said, room)))
    return (*rows[:keep], marker)


def _render_rows(line: Line, width: int, tz: datetime.tzinfo,
                 nick_width: int) -> tuple[tuple[Fragment, ...], ...]:
    base = _line_class(line)
    sender = sanitize(line.sender) if line.sender else ""
    body = sanitize(line.text)
    inline = ""  # sender shown at the start of the text column (actions)
    if line.kind in _SPOKEN:
        nick_text = sender if line.kind != "action" else line.marker or "*"
        if line.said_notice and line.kind != "action":
            nick_text = f"-{sender}-"
        nick_cls = nick_style(line.sender) if line.sender and line.kind != "action" else "class:marker"
        if line.kind == "action":
            inline = sender
            body = f"{sender} {body}" if sender else body
        body += STATUS_SUFFIX.get(line.status, "")
    else:
        nick_text = sanitize(line.marker or _DEFAULT_MARKER.get(line.kind, "--"))
        nick_cls = "class:marker"
    inline_style = _join_style(base, nick_style(line.sender) if line.sender else "", "class:nick")
    text_style = _join_style(base, "class:text")
    sep_w = cell_width(SEPARATOR)

    # Choose a layout that leaves the text column at least MIN_TEXT_WIDTH cells: shrink
    # the nick column (down to 4 cells), then drop the timestamp, then the columns.
    min_nw = max(1, min(4, nick_width))
    show_ts = True
    nw = min(nick_width, width - (TIMESTAMP_WIDTH + 1 + sep_w + MIN_TEXT_WIDTH))
    if nw < min_nw:
        show_ts = False
        nw = min(nick_width, width - sep_w - MIN_TEXT_WIDTH)
    rows: list[tuple[Fragment, ...]] = []

    def text_frags(row_text: str, consumed: int) -> tuple[list[Fragment], int]:
        """Fragments of one text row; the first ``len(inline) - consumed`` characters are
        the action's sender, styled as a nick."""
        frags: list[Fragment] = []
        left = max(0, len(inline) - consumed)
        if left and row_text:
            take = min(left, len(row_text))
            frags.append((inline_style, row_text[:take]))
            row_text = row_text[take:]
            consumed += take
        if row_text:
            frags.append((text_style, row_text))
        return frags, consumed

    if nw >= min_nw:
        text_w = width - (TIMESTAMP_WIDTH + 1 if show_ts else 0) - nw - sep_w
        wrapped = wrap_cells(body, text_w)
        indent = " " * ((TIMESTAMP_WIDTH + 1 if show_ts else 0) + nw)
        consumed = 0
        for i, row_text in enumerate(wrapped):
            frags: list[Fragment] = []
            if i == 0:
                if show_ts:
                    frags.append((_join_style(base, "class:timestamp"),
                                  _time_text(line.time_ms, tz)))
                    frags.append((base, " "))
                frags.append((_join_style(base, nick_cls, "class:nick"),
                              pad_cells(truncate_middle(nick_text, nw), nw, "right")))
            else:
                frags.append((base, indent))
            frags.append((_join_style(base, "class:separator"), SEPARATOR))
            tf, consumed = text_frags(row_text, consumed)
            frags.extend(tf)
            rows.append(tuple(frags))
        return tuple(rows)

    # Compact layout for very narrow panes: a header row with the nick, then the text at
    # the full width, no columns.
    if width < 1:
        return ((),)
    rows.append(((_join_style(base, nick_cls, "class:nick"), truncate_middle(nick_text, width)),))
    consumed = 0
    for row_text in wrap_cells(body, width):
        tf, consumed = text_frags(row_text, consumed)
        rows.append(tuple(tf))
    return tuple(rows)


def render_line(line: Line, width: int, me: str, tz: datetime.tzinfo,
                nick_width: int = DEFAULT_NICK_WIDTH, fold_rows: int = 0) -> list[Row]:
    """Display rows of one line, each a list of ``(style, text)`` fragments at most
    ``width`` cells wide.

    Layout: ``HH:MM`` local time in ``tz`` (blank when ``time_ms`` is None), a space, the
    nick column (``nick_width`` cells, right-aligned, a longer name cut in the middle
    with ``…`` so that names sharing a beginning stay apart; for actions ``*``,
    for notices ``--``/``-->``/``<--``, errors ``=!=``), ``" │ "``, then the text wrapped
    at word boundaries to the rest of the width. Continuation rows (wrapped, or after a
    ``\\n`` in the text) are indented to the text column. Actions read ``* │ alice waves``.

    Styles: timestamp ``class:timestamp``, nick ``class:nick.N class:nick``, separator
    ``class:separator``, text ``class:text``; every fragment of the row also carries
    ``class:own`` (own line), ``class:mention`` (mentions ``me``), ``class:notice``,
    ``class:error`` or ``class:info``.

    Narrow widths degrade: the nick column shrinks to keep ``MIN_TEXT_WIDTH`` cells of
    text, then the timestamp goes, then the columns (a nick row, then the text at the full
    width). Never raises; a ``width`` below 1 gives one empty row. ``line`` is
    re-classified against ``me``.

    ``fold_rows`` > 0 folds a line of more rows than that: its first ``fold_rows - 1``
    rows, then one row in the text column, style ``class:fold``, saying how many rows are
    hidden and how to see them (``fold_text``: ``… 37 more lines (Ctrl-O unfolds)``);
    for a message not sent yet or not sent at all, led by its status (``(not sent) …
    37 more lines (Ctrl-O unfolds)``).
    A line of at most ``fold_rows`` rows is drawn whole.
    """
    line = classify(line, me)
    return [list(row) for row in _render_cached(line, width, tz, nick_width, fold_rows)]


def day_line(time_ms: int, tz: datetime.tzinfo) -> Line:
    """An info line announcing the local day of ``time_ms``, for the app to insert where
    the day changes between two lines: ``-- Tuesday 2 January 2024``."""
    return Line("info", None, None, timefmt.day_text(time_ms, tz), marker="--")


# ---------------------------------------------------------------------------
# Conversations


class Member(NamedTuple):
    """A member of a room as the sidebar shows it."""

    presence: Presence
    bot: bool = False
    text: str = ""  # away message


class Viewport(NamedTuple):
    """What ``Conversation.viewport`` shows: ``rows`` (at most ``height``, oldest first),
    ``at_top`` (the oldest loaded line is visible: time to fetch older history if
    ``oldest_seq`` > 1) and ``at_bottom`` (the newest row is visible)."""

    rows: list[Row]
    at_top: bool
    at_bottom: bool


class Conversation:
    """One room or DM conversation: its lines, unread state and scroll state. Pure logic.

    - ``key``: ``room_key(room)`` or ``dm_key(name)``; ``title``: the display name (room or
      user name, without ``#``/``@``); ``kind``: ``room`` or ``dm``.
    - ``lines``: a deque of at most ``max_lines`` (default ``MAX_LINES``) classified lines,
      oldest first; when full, adding drops the oldest.
    - Unread counts and mention markers are not kept here: they are the account's read
      state on the broker (``zchat.client.Client.unread``, docs/PROTOCOL.md §6.3.1),
      shown through ``unseen_counts``.
    - ``members``: room members, name -> ``Member``.
    - Scrolling is counted in display rows: ``scroll_rows`` rows are hidden below the
      bottom of the pane. ``following`` is True at the bottom (new lines scroll in);
      while scrolled up, ``new_while_scrolled`` counts messages that arrived
      (``"N new messages"``), and the view stays on the same lines.
    """

    def __init__(self, key: str, title: str, kind: ConversationKind, *, topic: str = "",
                 max_lines: int = MAX_LINES) -> None:
        self.key = key
        self.title = title
        self.kind: ConversationKind = kind
        self.topic = topic
        self.lines: deque[Line] = deque()
        self.max_lines = max_lines
        self.members: dict[str, Member] = {}
        #: A room only: False once you were kicked or banned from it (or removed while
        #: disconnected). Its lines stay, marked not joined, as WeeChat keeps a parted
        #: channel's buffer; /join it again (docs/console.md).
        self.joined = True
        #: A room only: it was deleted (ROOM_DELETED, docs/PROTOCOL.md §6.52.1) while
        #: shown; ``joined`` is False too. Its lines stay until /close; a room of that
        #: name joined later is another room, whose seqs start at 1 again
        #: (``replaced_by``), shown in a new Conversation.
        self.deleted = False
        self.following = True
        self.scroll_rows = 0
        self.new_while_scrolled = 0
        #: Long lines drawn whole (Ctrl-O) instead of folded to FOLD_ROWS rows.
        self.unfolded = False
        #: The broker has nothing older than ``oldest_seq``: a history page came back
        #: shorter than asked (``may_have_older``).
        self.history_complete = False
        self._seqs: set[int] = set()
        self._appended_while_scrolled = 0  # lines whose rows viewport() must add to scroll_rows

    # -- lines -------------------------------------------------------------------------

    def __contains__(self, seq: object) -> bool:
        return seq in self._seqs

    def mark_deleted(self, seq: int, by: str) -> bool:
        """Show the room message ``seq`` as ``(message deleted by BY)`` (MESSAGE_DELETED,
        docs/PROTOCOL.md §6.38.1); returns whether it was shown here."""
        for i, line in enumerate(self.lines):
            if line.seq == seq and line.kind in ("message", "action"):
                self.lines[i] = dataclasses.replace(line, text=f"(message deleted by {by})")
                return True
        return False

    def _dedupe_key(self, line: Line) -> int | None:
        return line.seq if line.kind in _SPOKEN else None

    def add(self, line: Line, *, me: str) -> bool:
        """Append ``line`` (classified against ``me``). Returns False, changing nothing,
        when a line with the same seq is already here (a duplicate room message or DM).

        While scrolled up, a message, action or dm increments ``new_while_scrolled``.
        Unread counts are not kept here (the broker's read state, ``unseen_counts``).
        """
        line = classify(line, me)
        seq = self._dedupe_key(line)
        if seq is not None:
            if seq in self._seqs:
                return False
            self._seqs.add(seq)
        if len(self.lines) >= self.max_lines:
            self._drop(self.lines.popleft())
        self.lines.append(line)
        if not self.following:
            self._appended_while_scrolled += 1
            if line.kind in _SPOKEN:
                self.new_while_scrolled += 1
        return True

    def _index_of(self, line: Line) -> int | None:
        """Where ``line`` (this very object) is in ``lines``, searching from the newest."""
        for i in range(len(self.lines) - 1, -1, -1):
            if self.lines[i] is line:
                return i
        return None

    def pending(self, kind: LineKind, text: str,
                status: SendStatus = "pending") -> Line | None:
        """The oldest line you typed of ``kind`` and ``text`` still waiting for the broker's
        answer (status ``pending``; or of another ``status``: ``unknown``, the broker never
        answered it), or None."""
        return next((ln for ln in self.lines if ln.status == status and ln.kind == kind
                     and ln.text == text), None)

    def settle(self, typed: Line, sent: Line | None, me: str,
               status: SendStatus = "failed") -> None:
        """The broker answered the line you typed, shown as ``typed`` (status pending).

        ``sent``, the message as stored (with its seq and time), takes ``typed``'s place;
        when that seq is here already (its MESSAGE event came first), ``typed`` just goes.
        ``sent`` None marks ``typed`` failed, drawn ``(not sent)`` (or ``status``:
        ``unknown``, ``(no answer)``, when it may be stored). A ``typed`` no longer
        here (``/clear``) is no matter: ``sent`` is then added at the end like a new line.
        """
        i = self._index_of(typed)
        if sent is None:
            if i is not None:
                self.lines[i] = dataclasses.replace(typed, status=status)
            return
        sent = classify(dataclasses.replace(sent, status=""), me)
        seq = self._dedupe_key(sent)
        if seq is not None and seq in self._seqs:
            if i is not None:
                del self.lines[i]
            return
        if i is None:
            self.add(sent, me=me)
            return
        self.lines[i] = sent
        if seq is not None:
            self._seqs.add(seq)

    def drop_failed(self, kind: LineKind, text: str) -> None:
        """Forget the lines of ``kind`` and ``text`` marked not sent: the same line is
        being sent again, and shows as pending instead."""
        for line in [ln for ln in self.lines if ln.status in ("failed", "unknown")
                     and ln.kind == kind and ln.text == text]:
            self.lines.remove(line)

    def _drop(self, line: Line) -> None:
        seq = self._dedupe_key(line)
        if seq is not None:
            self._seqs.discard(seq)

    @property
    def oldest_seq(self) -> int | None:
        """Smallest seq loaded (room seq or DM id), or None: fetch history ``before`` it."""
        return min(self._seqs, default=None)

    @property
    def newest_seq(self) -> int | None:
        """Largest seq loaded, or None."""
        return max(self._seqs, default=None)

    @property
    def may_have_older(self) -> bool:
        """Whether the broker may hold messages older than the oldest loaded one: not
        when nothing is loaded, after a short history page (``history_complete``), or in
        a room at seq 1 (a room's seqs start at 1; DM ids are shared by every
        conversation, so only a short page tells)."""
        oldest = self.oldest_seq
        if oldest is None or self.history_complete:
            return False
        return self.kind == "dm" or oldest > 1

    def replaced_by(self, last_seq: int | None, page: Iterable[Line] = ()) -> bool:
        """Whether a room as the broker has it now — its newest seq ``last_seq`` (None:
        not known) and a ``page`` of its messages — cannot be the room shown here: it
        was deleted and a new one made under its name (docs/PROTOCOL.md §6.52), even if
        ROOM_DELETED never came (PUB may drop it). So when its ``last_seq`` is below the
        newest seq shown (a room's seqs never go back; an older broker started a new
        room at 1 again), or a message of ``page`` has a seq shown here with another
        time or sender. The caller then shows it in a new Conversation."""
        newest = self.newest_seq
        if newest is not None and last_seq is not None and last_seq < newest:
            return True
        shown = {ln.seq: ln for ln in self.lines
                 if ln.seq is not None and ln.kind in _SPOKEN and ln.status == ""}
        for line in page:
            old = shown.get(line.seq) if line.seq is not None else None
            if old is not None and (old.time_ms != line.time_ms or old.sender is None
                                    or line.sender is None
                                    or name_key(old.sender) != name_key(line.sender)):
                return True
        return False

    def insert_older(self, lines: Iterable[Line], me: str) -> int:
        """Prepend older lines (a history page); returns how many were added.

        Lines whose seq is already loaded are skipped; the rest are classified and ordered
        by seq. Only lines older than ``oldest_seq`` are prepended (newer ones arrive via
        ``add``). When the deque would overflow, the oldest of the page are left out:
        prepending never drops a newer line. Unread counts do not change.
        """
        oldest = self.oldest_seq
        fresh: dict[int, Line] = {}
        for raw in lines:
            line = classify(raw, me)
            seq = self._dedupe_key(line)
            if seq is None or seq in self._seqs or (oldest is not None and seq > oldest):
                continue
            fresh[seq] = line
        room = max(0, self.max_lines - len(self.lines))
        chosen = sorted(fresh.items())[-room:] if room else []
        for seq, line in reversed(chosen):
            self.lines.appendleft(line)
            self._seqs.add(seq)
        return len(chosen)

    def merge(self, lines: Iterable[Line], me: str) -> int:
        """Merge a history page of any range, each line once and in seq order; returns
        how many were added. Lines older than every one loaded go on top
        (``insert_older``), the others each before the first later message with a
        larger seq (``insert_missed`` with no anchor): a direct conversation's page may
        hold DMs older than, newer than and between those shown (the pending DMs of the
        login, shown before the history came)."""
        page = list(lines)
        return self.insert_older(page, me) + self.insert_missed(page, me, after=None)

    def insert_missed(self, lines: Iterable[Line], me: str, *, after: Line | None) -> int:
        """Place the lines said while you were out of the room (joining it again after a
        kick, a ban or a removal while disconnected, docs/console.md); returns how many
        were added.

        ``after`` is the last line shown when you joined again (the kick notice, say),
        found by identity; None means before every line. A line is taken when its seq
        is not loaded and is above every seq shown up to ``after`` (older ones belong to
        ``insert_older``). Taken lines go after ``after``, in seq order, each before the
        first later message, action or dm with a larger seq (one that arrived live
        meanwhile) — so they come after every notice already shown, never above it as
        ``insert_older`` would put them (the pane orders lines as they were added, not
        by time; a notice has no seq). They count as new lines, as ``add`` counts them
        (``new_while_scrolled``). When the deque overflows, the oldest lines are dropped.
        With ``after`` None this merges any page into the lines in seq order (a direct
        conversation's history, which may hold DMs older, newer and in between the ones
        shown).
        """
        pos = 0
        if after is not None:
            for i, line in enumerate(reversed(self.lines)):
                if line is after:
                    pos = len(self.lines) - i
                    break
        floor = max((ln.seq for ln in itertools.islice(self.lines, pos)
                     if ln.seq is not None and ln.kind in _SPOKEN), default=0)
        fresh: dict[int, Line] = {}
        for raw in lines:
            line = classify(raw, me)
            seq = self._dedupe_key(line)
            if seq is None or seq in self._seqs or seq <= floor:
                continue
            fresh[seq] = line
        for seq, line in sorted(fresh.items()):
            at = next((i for i in range(pos, len(self.lines))
                       if (ln := self.lines[i]).kind in _SPOKEN and ln.seq is not None
                       and ln.seq > seq), len(self.lines))
            self.lines.insert(at, line)
            self._seqs.add(seq)
            pos = at + 1
            if not self.following:
                self._appended_while_scrolled += 1
                self.new_while_scrolled += 1
        while len(self.lines) > self.max_lines:
            self._drop(self.lines.popleft())
        return len(fresh)

    def clear(self) -> None:
        """Forget every line (``/clear``); history can be fetched again."""
        self.lines.clear()
        self._seqs.clear()
        self.history_complete = False
        self.scroll_to_end()

    # -- members -------------------------------------------------------------------------

    def set_member(self, name: str, presence: Presence, *, bot: bool | None = None,
                   text: str = "") -> None:
        """Add or update a member; ``bot=None`` keeps the known bot flag."""
        old = self.members.get(name)
        self.members[name] = Member(presence, old.bot if bot is None and old else bool(bot),
                                    text)

    def remove_member(self, name: str) -> None:
        """Forget a member (they left the room); names match by name key."""
        key = name_key(name)
        for known in [n for n in self.members if name_key(n) == key]:
            del self.members[known]

    # -- scrolling -------------------------------------------------------------------------

    @property
    def fold_rows(self) -> int:
        """``render_line``'s ``fold_rows`` here: FOLD_ROWS, or 0 once unfolded."""
        return 0 if self.unfolded else FOLD_ROWS

    def toggle_fold(self) -> None:
        """Draw long lines whole, or folded again (Ctrl-O, docs/console.md)."""
        self.unfolded = not self.unfolded

    def scroll_up(self, rows: int) -> None:
        """Show ``rows`` older rows (PageUp: the pane height). ``viewport`` clamps at the top."""
        if rows <= 0:
            return
        self.scroll_rows += rows
        self.following = False

    def scroll_down(self, rows: int) -> None:
        """Show ``rows`` newer rows; reaching the bottom is ``scroll_to_end``."""
        if rows <= 0 or self.following:
            return
        self.scroll_rows -= rows
        if self.scroll_rows <= 0 and self._appended_while_scrolled == 0:
            self.scroll_to_end()

    def scroll_to_end(self) -> None:
        """Jump to the newest line and follow new ones; resets ``new_while_scrolled``."""
        self.scroll_rows = 0
        self.following = True
        self.new_while_scrolled = 0
        self._appended_while_scrolled = 0

    def viewport(self, width: int, height: int, me: str, tz: datetime.tzinfo,
                 nick_width: int = DEFAULT_NICK_WIDTH) -> Viewport:
        """The rows to show in a pane of ``width`` x ``height`` cells at the current scroll
        position (rendering only the lines it needs). Lines added while scrolled up push
        ``scroll_rows`` up by their rows, so the view stays put; ``scroll_rows`` is clamped
        so the pane never scrolls above the oldest line. Long lines are folded unless
        ``unfolded`` (``fold_rows``)."""
        if height <= 0:
            return Viewport([], not self.lines, True)
        if self._appended_while_scrolled:
            n = self._appended_while_scrolled
            self._appended_while_scrolled = 0
            recent = list(self.lines)[-n:] if n < len(self.lines) else list(self.lines)
            self.scroll_rows += sum(len(render_line(ln, width, me, tz, nick_width,
                                                    self.fold_rows)) for ln in recent)
        need = max(0, self.scroll_rows) + height
        chunks: list[list[Row]] = []
        total = 0
        all_rendered = True
        for i, line in enumerate(reversed(self.lines)):
            rows = render_line(line, width, me, tz, nick_width, self.fold_rows)
            chunks.append(rows)
            total += len(rows)
            if total >= need and i < len(self.lines) - 1:
                all_rendered = False
                break
        collected = [row for chunk in reversed(chunks) for row in chunk]
        if all_rendered:  # clamp: never scroll above the oldest line
            self.scroll_rows = min(self.scroll_rows, max(0, total - height))
        self.scroll_rows = max(0, self.scroll_rows)
        if self.scroll_rows == 0 and not self.following:
            self.scroll_to_end()
        end = total - self.scroll_rows
        start = max(0, end - height)
        return Viewport(collected[start:end], all_rendered and start == 0,
                        self.scroll_rows == 0)



def render_more_indicator(count: int, width: int) -> Row:
    """The bar shown at the bottom of a scrolled-up pane: ``-- 3 new messages (End) --``
    (``-- more below (End) --`` when ``count`` is 0), style ``class:more``, cut to width."""
    if count == 1:
        text = "-- 1 new message (End) --"
    elif count:
        text = f"-- {count} new messages (End) --"
    else:
        text = "-- more below (End) --"
    return [("class:more", pad_cells(text, max(0, width)))] if width > 0 else []


# ---------------------------------------------------------------------------
# Sidebar and status bar

#: Presence markers: filled circle online, half circle away, empty circle offline.
PRESENCE_MARKERS: dict[str, str] = {"online": "●", "away": "◐", "offline": "○"}
_PRESENCE_ORDER = {"online": 0, "away": 1, "offline": 2}
#: Shown before a conversation with an unread mention (or DM).
MENTION_MARKER = "!"
BOT_MARKER = "[bot]"


def _fit(frags: Sequence[Fragment], width: int) -> Row:
    """Cut a row of fragments to ``width`` cells (the last fitting fragment is truncated)."""
    out: Row = []
    used = 0
    for style, text in frags:
        w = cell_width(text)
        if used + w <= width:
            out.append((style, text))
            used += w
        else:
            cut = truncate_cells(text, width - used)
            if cut:
                out.append((style, cut))
            break
    return out


class Unseen(NamedTuple):
    """What the sidebar and the hotlist show of one conversation: ``unread`` messages
    (``(3)``) and whether one of them is for you (``!``)."""

    unread: int = 0
    mention: bool = False


NOTHING_UNSEEN = Unseen()


def unseen_counts(conversations: Iterable[Conversation], state: Unread,
                  active_key: str | None) -> dict[str, Unseen]:
    """Conversation key -> ``Unseen``, from the account's read state on the broker
    (``Client.unread``, docs/PROTOCOL.md §6.3.1), so that the counts survive a restart
    and agree on every device: a room's ``unread`` messages, ``!`` when ``mentions`` >
    0; a direct conversation's ``unread`` DMs, ``!`` when there is any (every DM is
    addressed to you). Conversations with nothing unread, and the active one (it is on
    screen; its read marker is being moved), are left out."""
    counts: dict[str, Unseen] = {}
    for conv in conversations:
        if conv.key == active_key:
            continue
        if conv.kind == "room":
            room = state.room(conv.title)
            seen = Unseen() if room is None else Unseen(room.unread, room.mentions > 0)
        else:
            dm = state.dm(conv.title)
            seen = Unseen() if dm is None else Unseen(dm.unread, dm.unread > 0)
        if seen.unread or seen.mention:
            counts[conv.key] = seen
    return counts


def _conversation_row(conv: Conversation, active: bool, width: int, seen: Unseen) -> Row:
    base = "class:sidebar.active" if active else "class:sidebar"
    prefix = "#" if conv.kind == "room" else "@"
    mark = MENTION_MARKER if seen.mention else " "
    count = f" ({seen.unread})" if seen.unread else ""
    name_w = max(0, width - 1 - cell_width(count))
    title = prefix + sanitize(conv.title)
    name = truncate_middle(title if conv.joined else f"({title})", name_w)
    style = base if conv.joined else _join_style(base, "class:sidebar.parted")
    if seen.unread:
        style = _join_style(style, "class:sidebar.unread")
    frags: Row = [(_join_style(base, "class:sidebar.mention") if seen.mention else base, mark),
                  (style, name), (style, count)]
    fitted = _fit(frags, width)
    used = sum(cell_width(t) for _, t in fitted)
    if used < width:
        fitted.append((base, " " * (width - used)))
    return fitted


def render_sidebar(conversations: Iterable[Conversation], active_key: str | None,
                   members: Mapping[str, Member] | None, width: int,
                   unseen: Mapping[str, Unseen] | None = None) -> list[Row]:
    """Sidebar rows, each at most ``width`` cells (conversation rows are padded to exactly
    ``width`` so the active one's highlight spans the column).

    ``Rooms`` heading, then rooms in the given order as ``!#dev (3)`` (from ``unseen``,
    by conversation key (``unseen_counts``): ``!`` an unread mention, ``(3)`` unread
    count; the active one ``class:sidebar.active``), then
    ``Direct`` with DM conversations as ``@bob (1)``; then ``Members (N)`` with each
    member as ``● alice`` (``●`` online, ``◐`` away, ``○`` offline; style
    ``class:presence.<presence>``) and ``[bot]`` after bots, sorted online, away, offline,
    then by name. ``members`` None or empty leaves the members section out.
    """
    if width <= 0:
        return []
    convs = list(conversations)
    rows: list[Row] = []
    for heading, kind in (("Rooms", "room"), ("Direct", "dm")):
        these = [c for c in convs if c.kind == kind]
        if not these and kind == "dm":
            continue
        rows.append(_fit([("class:sidebar.heading", heading)], width))
        rows.extend(_conversation_row(c, c.key == active_key, width,
                                      (unseen or {}).get(c.key, NOTHING_UNSEEN))
                    for c in these)
    if members:
        rows.append([])
        rows.append(_fit([("class:sidebar.heading", f"Members ({len(members)})")], width))
        ordered = sorted(members.items(),
                         key=lambda kv: (_PRESENCE_ORDER.get(kv[1].presence, 3),
                                         name_key(kv[0]), kv[0]))
        for name, member in ordered:
            frags: Row = [(f"class:presence.{member.presence}",
                           PRESENCE_MARKERS.get(member.presence, "?") + " ")]
            bot = f" {BOT_MARKER}" if member.bot else ""
            name_w = max(1, width - 2 - cell_width(bot))
            frags.append((_join_style("class:sidebar", nick_style(name)),
                          truncate_middle(sanitize(name), name_w)))
            if bot:
                frags.append(("class:bot", bot))
            rows.append(_fit(frags, width))
    return rows


def render_status(user: str | None, room: str | None, topic: str,
                  state: ConnectionState, reconnect_in_s: float | None,
                  rtt_ms: float | None, width: int, activity: str = "",
                  unanswered_s: float | None = None, away: str | None = None) -> Row:
    """The status bar: exactly ``width`` cells (empty for ``width`` < 1).

    Left: `` alice │ #dev │ topic``; ``room`` is shown as given (pass ``#dev`` or
    ``@bob``). Right: ``connected 12 ms`` (round-trip time, omitted when None),
    ``reconnecting in 3 s`` (or ``reconnecting…`` when ``reconnect_in_s`` is None), or
    ``disconnected``, style ``class:status.<state>``; while connected with something sent
    and not answered for ``unanswered_s`` seconds (not None), ``no answer from the broker
    for 5 s`` instead, style ``class:status.unanswered``; before it, ``activity`` (other
    conversations with unread messages, like WeeChat's hotlist: ``[Act: !@bob,#dev]``),
    and before that, while you are away (``away`` is the away message, "" for none),
    ``[away: lunch break]`` (``[away]``; a message over AWAY_SHOWN_CELLS cells is cut
    with ``…``), style ``class:status.away``. When space runs short the topic is cut
    first, then the room, then the user; the away mark, the activity and the connection
    state stay.
    """
    if width <= 0:
        return []
    shown: str = state
    if state == "connected" and unanswered_s is not None:
        right = f"no answer from the broker for {max(0.0, unanswered_s):.0f} s"
        shown = "unanswered"
    elif state == "connected":
        right = "connected" + (f" {rtt_ms:.0f} ms" if rtt_ms is not None else "")
    elif state == "reconnecting":
        right = (f"reconnecting in {max(0.0, reconnect_in_s):.0f} s"
                 if reconnect_in_s is not None else "reconnecting…")
    else:
        right = "disconnected"
    if activity:
        right = f"[Act: {sanitize(activity)}] {right}"
    right = truncate_cells(f" {right} ", width)
    away_mark = ""
    if away is not None:
        text = truncate_cells(sanitize(away).replace("\n", " "), AWAY_SHOWN_CELLS)
        away_mark = truncate_cells(f" [away: {text}]" if text else " [away]",
                                   width - cell_width(right))
    avail = width - cell_width(right) - cell_width(away_mark)
    sep = " │ "
    parts: list[tuple[str, str]] = []
    for style, text in (("class:status.user", user or ""), ("class:status.room", room or ""),
                        ("class:status.topic", topic)):
        clean = sanitize(text).replace("\n", " ")
        if clean:
            parts.append((style, clean))
    left: Row = []
    used = 0
    for i, (style, text) in enumerate(parts):
        lead = " " if i == 0 else sep
        lead_w = cell_width(lead)
        if used + lead_w >= avail:
            break
        left.append(("class:status", lead))
        used += lead_w
        cut = truncate_cells(text, avail - used)
        if not cut:
            break
        left.append((style, cut))
        used += cell_width(cut)
        if cut != text:
            break
    left.append(("class:status", " " * (avail - used)))
    if away_mark:
        left.append(("class:status class:status.away", away_mark))
    return left + [(f"class:status class:status.{shown}", right)]
