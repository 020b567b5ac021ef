"""Pure input handling for the chat console: slash commands, Tab completion, paste, history.

``parse_input`` turns one accepted input line into a value: ``SendText`` (a message for the
current conversation), one ``Command`` subclass per slash command, a ``ParseError`` to show,
or None (blank input). Only a ``/`` in the very first column starts a command, as in IRC
clients: `` /join`` (leading space) is text, and ``//text`` sends ``/text``.
Command names are case-insensitive; a room may be written ``dev`` or ``#dev``, a user
``bob`` or ``@bob``. Names are checked by the broker, not here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from zchat.names import text_lines
from zchat.wire import MAX_BAN_S, MAX_SLOW_MODE_S

#: Largest /history page, the broker's own limit (docs/PROTOCOL.md §6.9).
MAX_HISTORY = 500
#: Input lines remembered for Up/Down.
MAX_INPUT_HISTORY = 500


# ---------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class SendText:
    """Send ``text`` as a message to the current conversation (room or DM)."""

    text: str


@dataclass(frozen=True, slots=True)
class ParseError:
    """The input was a command that cannot run; ``message`` says why and how to use it."""

    message: str


@dataclass(frozen=True, slots=True)
class Command:
    """Base of the parsed slash commands; ``NAME`` is the command without ``/``."""

    NAME: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class Join(Command):
    """Join ``room`` (created if new) and switch to it."""

    NAME: ClassVar[str] = "join"
    room: str
    #: Create it private (invite-only, docs/PROTOCOL.md §17.2) if it is new.
    private: bool = False


@dataclass(frozen=True, slots=True)
class Part(Command):
    """Leave ``room``, or the current room when None."""

    NAME: ClassVar[str] = "part"
    room: str | None = None
    #: Why, shown to the room's other members (docs/PROTOCOL.md §6.6); "" for none.
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Msg(Command):
    """Send ``text`` to ``user`` directly and open the DM conversation."""

    NAME: ClassVar[str] = "msg"
    user: str
    text: str


@dataclass(frozen=True, slots=True)
class Query(Command):
    """Open the DM conversation with ``user`` (IRC's /query) and show it; send ``text``
    there when given (``""``: none)."""

    NAME: ClassVar[str] = "query"
    user: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Whois(Command):
    """Show one account's presence, offline ones too."""

    NAME: ClassVar[str] = "whois"
    user: str


@dataclass(frozen=True, slots=True)
class Names(Command):
    """List the names of the current room's members on a few lines (IRC's /names)."""

    NAME: ClassVar[str] = "names"


@dataclass(frozen=True, slots=True)
class Close(Command):
    """Close the current conversation: a DM conversation goes from the sidebar; a room
    is left (/part) and goes too."""

    NAME: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class Window(Command):
    """Show the ``number``-th conversation as the sidebar lists them (from 1); None:
    list the conversations with their numbers (the sidebar may be hidden)."""

    NAME: ClassVar[str] = "window"
    number: int | None


@dataclass(frozen=True, slots=True)
class Me(Command):
    """Send ``text`` as an action (``* alice waves``)."""

    NAME: ClassVar[str] = "me"
    text: str


@dataclass(frozen=True, slots=True)
class Who(Command):
    """List the current room's members and their presence."""

    NAME: ClassVar[str] = "who"


@dataclass(frozen=True, slots=True)
class Rooms(Command):
    """List the broker's rooms."""

    NAME: ClassVar[str] = "rooms"


@dataclass(frozen=True, slots=True)
class Topic(Command):
    """Show a room's topic (``text`` None) or set it: the current room's, or ``room``'s
    when the line named one (``/topic #ops``), a room you need not be in to read it."""

    NAME: ClassVar[str] = "topic"
    text: str | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Slow(Command):
    """Show the current room's slow mode (``seconds`` None) or set it (0 turns it off)."""

    NAME: ClassVar[str] = "slow"
    seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Away(Command):
    """Set presence to away with an optional message (``""`` for none)."""

    NAME: ClassVar[str] = "away"
    text: str = ""


@dataclass(frozen=True, slots=True)
class Back(Command):
    """Set presence back to online."""

    NAME: ClassVar[str] = "back"


@dataclass(frozen=True, slots=True)
class History(Command):
    """Fetch the ``count`` (1..MAX_HISTORY) messages before the oldest one shown."""

    NAME: ClassVar[str] = "history"
    count: int


@dataclass(frozen=True, slots=True)
class Switch(Command):
    """Show another conversation: ``target`` is a room name, or ``@name`` for a DM."""

    NAME: ClassVar[str] = "switch"
    target: str


@dataclass(frozen=True, slots=True)
class Clear(Command):
    """Clear the current conversation's pane."""

    NAME: ClassVar[str] = "clear"


@dataclass(frozen=True, slots=True)
class Quit(Command):
    """Log out and leave the console; ``text`` is an optional farewell (``""`` for none)."""

    NAME: ClassVar[str] = "quit"
    text: str = ""


@dataclass(frozen=True, slots=True)
class Help(Command):
    """Show the list of commands, or the help of ``command`` (a name without ``/``)."""

    NAME: ClassVar[str] = "help"
    command: str | None = None


@dataclass(frozen=True, slots=True)
class Moderate(Command):
    """A moderation command in the current room (docs/PROTOCOL.md §17): ``action`` is
    the command name (kick, ban, unban, mute, unmute, invite, op, deop, lock, unlock,
    private, delete); the other fields as that command takes them."""

    NAME: ClassVar[str] = "moderate"
    action: str
    user: str = ""
    reason: str = ""
    duration_s: int = 0
    on: bool = False
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteRoom(Command):
    """Delete ``room`` (None: the current room) with its history, for everyone
    (docs/PROTOCOL.md §6.52); ``reason`` is shown to its members (``""``: none). The
    console asks for confirmation before it sends anything."""

    NAME: ClassVar[str] = "deleteroom"
    room: str | None = None
    reason: str = ""


ParseResult = Command | SendText | ParseError


# ---------------------------------------------------------------------------
# The command table


@dataclass(frozen=True, slots=True)
class Param:
    """One argument: a single word, or (``rest``) the remainder of the line."""

    name: str
    required: bool = True
    rest: bool = False
    #: How the usage line shows it, when not its name (e.g. "DURATION] [REASON").
    label: str = ""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A row of the command table: ``usage`` like ``/msg USER TEXT``, a one-line
    ``summary``, a longer ``help`` and the parameters."""

    name: str
    params: tuple[Param, ...]
    summary: str
    help: str
    build: Callable[[dict[str, str]], Command]
    #: The heading ``/help`` lists it under (``HELP_GROUPS``).
    group: str = "rooms"

    @property
    def usage(self) -> str:
        parts = [f"/{self.name}"]
        for prm in self.params:
            shown = prm.label or prm.name
            parts.append(shown if prm.required else f"[{shown}]")
        return " ".join(parts)


def _room(word: str) -> str:
    room = word[1:] if word.startswith("#") else word
    if not room:
        raise ValueError("a room name is missing after '#'")
    return room


def _user(word: str) -> str:
    user = word[1:] if word.startswith("@") else word
    if not user:
        raise ValueError("a user name is missing after '@'")
    return user


def _window(word: str) -> int:
    if not (word.isascii() and word.isdigit()) or int(word) < 1:
        raise ValueError(f"N must be a whole number from 1, not {word!r}")
    return int(word)


def _count(word: str) -> int:
    if not (word.isascii() and word.isdigit()):
        raise ValueError(f"N must be a whole number from 1 to {MAX_HISTORY}, not {word!r}")
    n = int(word)
    if not 1 <= n <= MAX_HISTORY:
        raise ValueError(f"N must be from 1 to {MAX_HISTORY}, not {n}")
    return n


def _seconds(word: str) -> int:
    """SECONDS of /slow: a whole number from 0 to MAX_SLOW_MODE_S (docs/PROTOCOL.md
    §6.28). Raises ValueError naming the problem."""
    if not (word.isascii() and word.isdigit()):
        raise ValueError(f"SECONDS must be a whole number from 0 to {MAX_SLOW_MODE_S}, "
                         f"not {word!r}")
    n = int(word)
    if n > MAX_SLOW_MODE_S:
        raise ValueError(f"SECONDS must be from 0 to {MAX_SLOW_MODE_S}, not {n}")
    return n


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
DURATION_FORMS = "30s, 10m, 2h, 1d or 1w"


def parse_duration(word: str, what: str = "DURATION") -> int | None:
    """A ban or mute duration in seconds (docs/console.md, docs/cli.md): a whole number
    and a unit, ``30s``, ``10m``, ``2h``, ``1d``, ``1w``, from 1 s to MAX_BAN_S (ten
    years, the broker's bound, docs/PROTOCOL.md §6.31).

    Returns None when ``word`` is no duration at all: a word without a digit, or a bare
    number (``3``: with no unit it is the start of a reason, as in ``/mute mem 3 strikes
    and you are out``). Raises ValueError, naming the rule, for a word that is a
    mistyped duration — a number with a wrong unit or trailing letters (``5min``,
    ``10x``), a sign (``-5m``), zero (``0s``) or over ten years (``99999w``) — so that a
    typo never becomes a ban until lifted; ``what`` names it in the message."""
    folded = word.casefold()
    if folded.isascii() and folded.isdigit():
        return None
    if not (folded[:1].isdigit() or folded[:1] in "+-" and folded[1:2].isdigit()):
        return None
    number, unit = folded[:-1], folded[-1:]
    if unit not in _UNITS or not (number.isascii() and number.isdigit()):
        raise ValueError(f"{what} must look like {DURATION_FORMS} (a number and a "
                         f"unit), not {word!r}")
    seconds = int(number) * _UNITS[unit]
    if seconds == 0:
        raise ValueError(f"{what} must be more than 0, not {word!r} (leave it out for "
                         "until lifted)")
    if seconds > MAX_BAN_S:
        raise ValueError(f"{what} must be at most ten years ({MAX_BAN_S} s, "
                         f"{MAX_BAN_S // 86_400}d), not {word!r}")
    return seconds


def _timed(action: str) -> Callable[[dict[str, str]], Command]:
    """Builder of /ban and /mute: NICK [DURATION] [REASON]."""
    def build(a: dict[str, str]) -> Command:
        rest = a.get("REST", "").strip()
        first, _sp, tail = rest.partition(" ")
        # a mistyped duration raises (it must not become a ban until lifted with it as
        # reason); a bare number is no duration: it starts the reason
        seconds = parse_duration(first) if first else None
        reason = tail.strip() if seconds is not None else rest
        return Moderate(action, _user(a["NICK"]), reason, seconds or 0)
    return build


def _delete(a: dict[str, str]) -> Command:
    word = a["TARGET"]
    if word.isascii() and word.isdigit():
        return Moderate("delete", seq=int(word))
    return Moderate("delete", user=_user(word))


def _private_word(word: str) -> bool:
    if not word:
        return False
    if word.casefold() == "private":
        return True
    raise ValueError(f"say /join ROOM or /join ROOM private, not {word!r}")


def _on_off(word: str) -> bool:
    if word.casefold() in ("on", "yes", "true"):
        return True
    if word.casefold() in ("off", "no", "false"):
        return False
    raise ValueError(f"say on or off, not {word!r}")


def _topic(args: dict[str, str]) -> Command:
    """/topic [#ROOM] [TEXT]: a first word starting with ``#`` names the room, as in
    irssi (a topic starting with ``#`` is set with the room named first)."""
    text = args.get("TEXT") or None
    if text is not None and text.startswith("#"):
        word, _sp, rest = text.partition(" ")
        return Topic(rest.strip() or None, _room(word))
    return Topic(text)


def _part(text: str) -> Part:
    """``/part [#ROOM] [REASON]`` as irssi reads it: a first word starting with ``#`` is
    the room and the rest the reason; a single word is the room (``/part dev``); several
    words not starting with ``#`` are the reason for the current room."""
    text = text.strip()
    word, _sp, rest = text.partition(" ")
    if not text:
        return Part()
    if word.startswith("#") or not rest.strip():
        return Part(_room(word), rest.strip())
    return Part(None, text)


_ROOM = Param("ROOM")
_SPECS: tuple[CommandSpec, ...] = (
    CommandSpec("msg", (Param("USER"), Param("TEXT", rest=True)),
                "send a direct message",
                "Sends TEXT to USER (bob or @bob) directly and opens your conversation with "
                "them. A user who is offline receives it when they next log in; a name "
                "with no account is refused.",
                lambda a: Msg(_user(a["USER"]), a["TEXT"]), "talk"),
    CommandSpec("query", (Param("USER"), Param("TEXT", required=False, rest=True)),
                "open a direct conversation",
                "Opens your direct-message conversation with USER (bob or @bob) and shows "
                "it; with TEXT, sends it there. A name with no account is refused.",
                lambda a: Query(_user(a["USER"]), a.get("TEXT", "")), "talk"),
    CommandSpec("me", (Param("TEXT", rest=True),), "send an action",
                "Sends TEXT as an action, shown as '* alice TEXT'.",
                lambda a: Me(a["TEXT"]), "talk"),
    CommandSpec("whois", (Param("USER"),), "show someone's presence",
                "Shows whether USER (bob or @bob) is online, away (with the away "
                "message) or offline, and whether it is a bot.",
                lambda a: Whois(_user(a["USER"])), "talk"),
    CommandSpec("close", (), "close this conversation",
                "Closes the current conversation: a direct one goes from the sidebar "
                "(its messages come back with the next one); in a room, it leaves the "
                "room as /part does.",
                lambda a: Close(), "talk"),
    CommandSpec("join", (_ROOM, Param("PRIVATE", required=False, label="private")),
                "join a room and switch to it",
                "Joins ROOM (written dev or #dev), creating it if it does not exist, and "
                "switches to it. Its recent history is shown. /join ROOM private creates "
                "a new room invite-only from the start, so not even its name or first "
                "lines cross the public channel.",
                lambda a: Join(_room(a["ROOM"]), _private_word(a.get("PRIVATE", "")))),
    CommandSpec("part", (Param("TEXT", required=False, rest=True, label="#ROOM] [REASON"),),
                "leave a room",
                "Leaves ROOM, or the current room when none is given, and closes its "
                "conversation; REASON is shown to the other members (/part #dev back "
                "tomorrow, or /part back tomorrow for the current room). ROOM may be "
                "written without # when it is the only word. You stop receiving its "
                "messages; /join it again to come back. In a direct conversation, closes "
                "it (/close).",
                lambda a: _part(a.get("TEXT", ""))),
    CommandSpec("names", (), "list the room's members",
                "Lists the names of the current room's members on a few lines, online "
                "first, with (away) and (offline) marked. /who gives one line each.",
                lambda a: Names()),
    CommandSpec("who", (), "list the members with presence",
                "Lists the members of the current room with their presence "
                "(online, away with its message, offline) and marks bots.",
                lambda a: Who()),
    CommandSpec("topic", (Param("TEXT", required=False, rest=True,
                                label="#ROOM] [TEXT"),),
                "show or set a room's topic",
                "Without TEXT, shows the current room's topic; with TEXT, sets it. "
                "/topic #ROOM shows the topic of ROOM, also of a room you are not in "
                "(nothing is joined); /topic #ROOM TEXT sets it (so a topic starting "
                "with # is set as /topic #dev #1 priority).",
                _topic),
    CommandSpec("rooms", (), "list the broker's rooms",
                "Lists the broker's rooms with their member counts and topics; rooms "
                "you are in are marked.",
                lambda a: Rooms()),
    CommandSpec("history", (Param("N"),), "load older messages",
                f"Loads up to N (1 to {MAX_HISTORY}) messages older than the oldest one "
                "shown in the current room or direct conversation. Scrolling above "
                "the top does the same.",
                lambda a: History(_count(a["N"]))),
    CommandSpec("clear", (), "clear the pane",
                "Clears the current conversation's pane. Nothing is deleted on the "
                "broker; /history loads messages again.",
                lambda a: Clear()),
    CommandSpec("slow", (Param("SECONDS", required=False),),
                "show or set the room's slow mode",
                "Without SECONDS, shows the current room's slow mode; with SECONDS, lets "
                "each member post (a message or a topic change) at most once per SECONDS "
                "there (0 turns it off). Only the room's moderators, its owner and broker "
                "admins may set it, and they are exempt.",
                lambda a: Slow(_seconds(a["SECONDS"]) if a.get("SECONDS") else None)),
    CommandSpec("switch", (Param("TARGET"),), "show another conversation",
                "Switches to a room you are in (dev or #dev) or to the direct-message "
                "conversation with a user (@bob), opening it if the account exists.",
                lambda a: Switch(a["TARGET"][1:] if a["TARGET"].startswith("#")
                                 else a["TARGET"]), "moving"),
    CommandSpec("window", (Param("N", required=False),), "show the N-th conversation",
                "Shows the N-th conversation as the sidebar lists them, rooms first, "
                "then direct ones (as Alt-1 … Alt-9 do). Without N, lists them with "
                "their numbers (below 78 columns the sidebar is hidden).",
                lambda a: Window(_window(a["N"]) if a.get("N") else None), "moving"),
    CommandSpec("away", (Param("TEXT", required=False, rest=True),), "mark yourself away",
                "Sets your presence to away, with TEXT as the away message if given, "
                "for all your sessions; the status bar shows [away: TEXT]. It is set "
                "again after a reconnect. /back returns to online.",
                lambda a: Away(a.get("TEXT", "")), "you"),
    CommandSpec("back", (), "mark yourself online",
                "Sets your presence back to online after /away.",
                lambda a: Back(), "you"),
    CommandSpec("quit", (Param("TEXT", required=False, rest=True),), "leave zchat",
                "Logs out and closes the console; TEXT is the quit message others see "
                "when this was your last session.",
                lambda a: Quit(a.get("TEXT", "")), "you"),
    CommandSpec("help", (Param("CMD", required=False),), "show help",
                "Without CMD, lists the commands; with CMD (join or /join), shows its "
                "help; /help keys lists the keys. Type // at the start of a line to send "
                "a message starting with /.",
                lambda a: Help(a["CMD"].lstrip("/").casefold() if a.get("CMD") else None),
                "you"),
    CommandSpec("kick", (Param("NICK"), Param("REASON", required=False, rest=True)),
                "remove someone from the room",
                "Removes NICK from the current room (moderators). They may join again "
                "unless banned.",
                lambda a: Moderate("kick", _user(a["NICK"]), a.get("REASON", "")),
                "moderation"),
    CommandSpec("ban", (Param("NICK"), Param("REST", required=False, rest=True,
                                                label="DURATION] [REASON")),
                "ban someone from the room",
                "Bans NICK from the current room (moderators): /ban NICK [DURATION] "
                "[REASON], DURATION like 10m, 2h, 7d (none: until /unban).",
                _timed("ban"), "moderation"),
    CommandSpec("unban", (Param("NICK"),), "lift a ban",
                "Lifts NICK's ban from the current room.",
                lambda a: Moderate("unban", _user(a["NICK"])), "moderation"),
    CommandSpec("mute", (Param("NICK"), Param("REST", required=False, rest=True,
                                                 label="DURATION] [REASON")),
                "stop someone posting here",
                "Mutes NICK in the current room (moderators): /mute NICK [DURATION] "
                "[REASON]. They still read.",
                _timed("mute"), "moderation"),
    CommandSpec("unmute", (Param("NICK"),), "lift a mute",
                "Lifts NICK's mute in the current room.",
                lambda a: Moderate("unmute", _user(a["NICK"])), "moderation"),
    CommandSpec("invite", (Param("NICK"),), "invite someone to the room",
                "Invites NICK to the current room (moderators); needed to join a private "
                "room.",
                lambda a: Moderate("invite", _user(a["NICK"])), "moderation"),
    CommandSpec("op", (Param("NICK"),), "make someone a moderator",
                "Makes NICK a moderator of the current room (its owner, admins).",
                lambda a: Moderate("op", _user(a["NICK"])), "moderation"),
    CommandSpec("deop", (Param("NICK"),), "make a moderator a member",
                "Makes NICK a plain member of the current room again.",
                lambda a: Moderate("deop", _user(a["NICK"])), "moderation"),
    CommandSpec("lock", (), "only moderators may post",
                "Locks the current room: only its moderators post (classroom or "
                "announcement mode). /unlock ends it.",
                lambda a: Moderate("lock"), "moderation"),
    CommandSpec("unlock", (), "everyone may post again",
                "Unlocks the current room.",
                lambda a: Moderate("unlock"), "moderation"),
    CommandSpec("private", (Param("ON_OFF", label="on|off"),),
                "make the room invite-only or public",
                "/private on makes the current room invite-only (its owner, admins); its "
                "traffic then goes to members only. /private off makes it public.",
                lambda a: Moderate("private", on=_on_off(a["ON_OFF"])), "moderation"),
    CommandSpec("deleteroom", (Param("ROOM", required=False),
                               Param("REASON", required=False, rest=True)),
                "delete a room and its history",
                "Deletes ROOM (the current room when none is given) with all its "
                "messages, for everyone, for good; its members are told, with REASON "
                "if given. The room's owner (from inside it) and broker admins may; "
                "never lobby. It asks first: Enter on an empty line, or the same "
                "/deleteroom again, deletes; Esc or any other line cancels.",
                lambda a: DeleteRoom(_room(a["ROOM"]) if a.get("ROOM") else None,
                                     a.get("REASON", "")), "moderation"),
    CommandSpec("delete", (Param("TARGET", label="SEQ|NICK"),), "delete a message",
                "/delete SEQ deletes message number SEQ of the current room; /delete NICK "
                "deletes the last message of NICK shown here. Moderators delete any; you "
                "may delete your own.",
                _delete, "moderation"),
)

#: The command table, name -> spec, in help order.
COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in _SPECS}
#: Other spellings accepted by ``parse_input`` (not offered by completion).
ALIASES: dict[str, str] = {"j": "join", "leave": "part", "exit": "quit", "list": "rooms"}
#: ``/help``'s headings, in order: a short overview that fits a 24-row terminal, with
#: ``/help CMD`` for the detail.
HELP_GROUPS: dict[str, str] = {"talk": "talk", "rooms": "rooms", "moving": "move",
                               "you": "you", "moderation": "moderate"}
#: Said after a group's commands in the /help overview.
HELP_GROUP_NOTES: dict[str, str] = {"moving": " — /window alone lists their numbers"}
#: ``/help keys``: the keys of the console (docs/console.md, "Keys"), a few to a line.
KEYS_HELP: tuple[str, ...] = (
    "Enter sends; Up/Down walk the lines you entered; Tab completes",
    "PageUp/PageDown scroll; End (Alt-End) back to the newest",
    "Alt-1 … Alt-9, Ctrl-N/Ctrl-P: another conversation",
    "Ctrl-O: long messages whole, or folded again",
    "Ctrl-A/Ctrl-E start/end; Ctrl-W word, Ctrl-U/Ctrl-K line",
    "Esc cancels a paste (Up recalls its lines) or a /deleteroom waiting for Enter",
    "Ctrl-Z suspends (fg resumes); Ctrl-C, or Ctrl-D on an empty line, quits",
)


def _resolve(name: str) -> CommandSpec | None:
    name = name.casefold()
    return COMMANDS.get(ALIASES.get(name, name))


def _split_args(spec: CommandSpec, argtext: str) -> dict[str, str] | ParseError:
    values: dict[str, str] = {}
    rest = argtext.lstrip()
    for prm in spec.params:
        if prm.rest:
            word = rest.rstrip()
            rest = ""
        else:
            word, _, rest = rest.partition(" ")
            rest = rest.lstrip()
        if not word:
            if prm.required:
                return ParseError(f"/{spec.name} needs {prm.label or prm.name} — usage: "
                                  f"{spec.usage}")
            continue
        values[prm.name] = word
    if rest.strip():
        return ParseError(f"too many arguments for /{spec.name} — usage: {spec.usage}")
    return values


def parse_input(text: str) -> ParseResult | None:
    """Parse one accepted input line.

    Returns None for blank input (empty or whitespace only); ``SendText(text)`` for text
    (unchanged) or for ``//text`` (``SendText("/text")``); a ``Command`` for a known
    ``/command`` with valid arguments; else ``ParseError`` whose message names the
    problem and the usage (unknown command: ``unknown command /foo — try /help``).
    Arguments are separated by spaces; a trailing TEXT takes the rest of the line.
    """
    if not text.strip():
        return None
    if not text.startswith("/"):
        return SendText(text)
    if text.startswith("//"):
        return SendText(text[1:])
    head, _, argtext = text[1:].replace("\t", " ").partition(" ")
    if not head:
        return ParseError("empty command — type // to send a line starting with /")
    spec = _resolve(head)
    if spec is None:
        return ParseError(f"unknown command /{head} — try /help")
    args = _split_args(spec, argtext)
    if isinstance(args, ParseError):
        return args
    try:
        return spec.build(args)
    except ValueError as exc:
        return ParseError(f"{exc} — usage: {spec.usage}")


def help_text(cmd: str | None = None) -> list[str]:
    """Lines of help.

    Without ``cmd``: a short overview, one line per group of commands (``HELP_GROUPS``:
    ``talk: /msg /query /me /close``, aliases in brackets), then how to learn more — a
    dozen lines, so that it fits a 24-row terminal even with the sidebar. With ``cmd``
    (``join``, ``/join`` or an alias): its usage, summary and longer help; ``keys``:
    ``KEYS_HELP``; an unknown ``cmd``: one line saying so."""
    if cmd is None:
        lines = ["/help CMD explains one command, /help keys lists the keys."]
        for group, heading in HELP_GROUPS.items():
            names = []
            for row in _SPECS:
                if row.group != group:
                    continue
                aliases = [a for a, n in ALIASES.items() if n == row.name and len(a) > 1]
                names.append(f"/{row.name}" + "".join(f" (/{a})" for a in aliases))
            lines.append(f"{heading}: {' '.join(names)}{HELP_GROUP_NOTES.get(group, '')}")
        lines.append("// at the start of a line sends a line starting with /.")
        return lines
    if cmd.lstrip("/").casefold() == "keys":
        return list(KEYS_HELP)
    spec = _resolve(cmd.lstrip("/"))
    if spec is None:
        return [f"unknown command /{cmd.lstrip('/')} — try /help"]
    aliases = [f"/{a}" for a, n in ALIASES.items() if n == spec.name]
    lines = [spec.usage + (f"  (also {', '.join(aliases)})" if aliases else ""),
             spec.summary, spec.help]
    return lines


# ---------------------------------------------------------------------------
# Tab completion


@dataclass(frozen=True, slots=True)
class Completion:
    """Replacements for ``text[start:end]`` (``end`` is the cursor), sorted
    case-insensitively; each candidate includes its suffix (``"/join "``,
    ``"alice: "``). No candidates: nothing to complete."""

    start: int
    end: int
    candidates: tuple[str, ...]


def _matches(prefix: str, names: Iterable[str], lead: str, suffix: str) -> tuple[str, ...]:
    folded = prefix.casefold()
    found = {n for n in names if n and n.casefold().startswith(folded)}
    return tuple(lead + n + suffix for n in sorted(found, key=lambda n: (n.casefold(), n)))


def complete(text: str, cursor: int, *, nicks: Iterable[str], rooms: Iterable[str],
             commands: Iterable[str] | None = None) -> Completion:
    """Candidates for the word before ``cursor`` (a character index into ``text``).

    - ``/jo`` at the start of the line: command names → ``/join ``;
    - the argument of ``/join``, ``/part``, ``/switch``, ``/deleteroom``: ``rooms``
      (``#de`` → ``#dev ``; ``/switch`` also takes ``@name`` entries the app puts in
      ``rooms``);
    - the argument of ``/msg``, ``/query``, ``/whois``: ``nicks`` (``@`` kept when typed);
      of ``/help``: commands (and ``keys``);
    - anywhere else: ``nicks``; at the start of the line the nick is followed by ``": "``
      (``al`` → ``alice: ``), elsewhere by a space.

    Matching is a case-insensitive prefix match; an empty word matches everything.
    ``commands`` defaults to the command table's names.
    """
    cursor = max(0, min(cursor, len(text)))
    start = cursor
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:cursor]
    cmd_names = list(commands) if commands is not None else list(COMMANDS)

    def done(cands: tuple[str, ...]) -> Completion:
        return Completion(start, cursor, cands)

    if start == 0 and word.startswith("/") and not word.startswith("//"):
        return done(_matches(word[1:], cmd_names, "/", " "))
    words = text[:start].split()
    if text.startswith("/") and not text.startswith("//") and words:
        spec = _resolve(words[0][1:])
        argn = len(words) - 1
        if spec is not None and argn == 0:
            if spec.name in ("join", "part", "switch", "deleteroom"):
                lead = "#" if word.startswith("#") else ""
                bare = [r[1:] if r.startswith("#") else r for r in rooms]
                if spec.name == "switch" and word.startswith("@"):
                    return done(_matches(word, bare, "", " "))
                return done(_matches(word[len(lead):], bare, lead, " "))
            if spec.name in ("msg", "query", "whois"):
                lead = "@" if word.startswith("@") else ""
                return done(_matches(word[len(lead):], nicks, lead, " "))
            if spec.name == "help":
                lead = "/" if word.startswith("/") else ""
                topics = cmd_names if lead else [*cmd_names, "keys"]
                return done(_matches(word[len(lead):], topics, lead, " "))
    lead = "@" if word.startswith("@") else ""
    suffix = ": " if start == 0 and not lead else " "
    return done(_matches(word[len(lead):], nicks, lead, suffix))


def apply_completion(text: str, completion: Completion, candidate: str) -> tuple[str, int]:
    """``text`` with ``candidate`` in place of ``text[start:end]``; returns the new text and
    the new cursor index (just after the candidate)."""
    new = text[:completion.start] + candidate + text[completion.end:]
    return new, completion.start + len(candidate)


@dataclass
class TabCycle:
    """Repeated Tab: each ``next()`` (``prev()`` for Shift+Tab) replaces the word with the
    next candidate, always starting from the original ``text``. The app keeps one while
    the user presses Tab and drops it on any other key.

    >>> c = TabCycle.start("al", 2, nicks=["alice", "alan"], rooms=[])
    >>> c.next(), c.next(), c.next()
    (('alan: ', 6), ('alice: ', 7), ('alan: ', 6))
    """

    text: str
    completion: Completion
    index: int = -1

    @classmethod
    def start(cls, text: str, cursor: int, *, nicks: Iterable[str], rooms: Iterable[str],
              commands: Iterable[str] | None = None) -> TabCycle | None:
        """A cycle over ``complete(...)``'s candidates, or None when there are none."""
        comp = complete(text, cursor, nicks=nicks, rooms=rooms, commands=commands)
        return cls(text, comp) if comp.candidates else None

    def next(self) -> tuple[str, int]:
        """The next candidate applied: ``(new_text, new_cursor)``."""
        self.index = (self.index + 1) % len(self.completion.candidates)
        return apply_completion(self.text, self.completion, self.completion.candidates[self.index])

    def prev(self) -> tuple[str, int]:
        """The previous candidate applied: ``(new_text, new_cursor)``."""
        self.index = (self.index - 1) % len(self.completion.candidates)
        return apply_completion(self.text, self.completion, self.completion.candidates[self.index])


# ---------------------------------------------------------------------------
# Paste


#: Commands a paste prompt names at most (``they start with /msg, /away, /join, …``).
PASTE_COMMANDS_SHOWN = 3
#: Cells of one command word a paste prompt shows at most (a pasted line can be anything).
PASTE_COMMAND_CELLS = 20


@dataclass(frozen=True, slots=True)
class PasteResult:
    """A paste as message text: ``text`` (never a command, even if a line starts with
    ``/``), ``lines`` its line count, ``commands`` the first words of its lines that
    start with ``/`` as a command would (not ``//``), each once, in order, and
    ``command_lines`` how many lines do. ``needs_confirmation``: ask before sending it —
    when ``lines`` exceeds the threshold, or when it has several lines and one of them
    looks like a command (lines typed ahead during a stall arrive as a paste: they must
    not be posted to the room unasked)."""

    text: str
    needs_confirmation: bool
    lines: int
    commands: tuple[str, ...] = ()
    command_lines: int = 0

    def as_send(self) -> SendText:
        """The message to send."""
        return SendText(self.text)


def paste_to_message(pasted: str, threshold: int) -> PasteResult:
    """Normalise pasted text: ``\\r\\n`` and ``\\r`` become ``\\n``, trailing newlines are
    dropped, and so are blank lines before the first. ``lines`` is 0 for an empty paste.
    Other control characters are kept: the broker refuses them (422), and the app may
    show that error or sanitize first. A paste of more than ``threshold`` lines, or of
    two or more with a line starting with ``/``, needs confirmation."""
    rows = pasted.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    while len(rows) > 1 and not rows[0].strip():
        rows.pop(0)
    text = "\n".join(rows)
    lines = text.count("\n") + 1 if text else 0
    commands: list[str] = []
    command_lines = 0
    for row in rows:
        if row.startswith("/") and not row.startswith("//") and row[1:2].strip():
            command_lines += 1
            word = "/" + row[1:].replace("\t", " ").partition(" ")[0]
            if word not in commands:
                commands.append(word)
    confirm = lines > threshold or (lines > 1 and command_lines > 0)
    return PasteResult(text, confirm, lines, tuple(commands), command_lines)


def paste_prompt(paste: PasteResult, where: str) -> str:
    """What the console says of a paste waiting for Enter; ``where`` is the conversation
    it goes to (``#lobby``, ``@bob``): ``pasted 8 lines for #lobby: Enter sends them as
    one message, Esc cancels``. When lines start with ``/`` it says so, and that they go
    as text: ``pasted 2 lines for #lobby — they start with /msg, /away: Enter sends them
    as text, in one message; Esc cancels``."""
    head = f"pasted {paste.lines} lines for {where}"
    if not paste.commands:
        return f"{head}: Enter sends them as one message, Esc cancels"
    shown = [w if len(w) <= PASTE_COMMAND_CELLS else w[:PASTE_COMMAND_CELLS - 1] + "…"
             for w in paste.commands[:PASTE_COMMANDS_SHOWN]]
    if len(paste.commands) > PASTE_COMMANDS_SHOWN:
        shown.append("…")
    n = paste.command_lines
    who = ("they start" if n == paste.lines else
           "1 of them starts" if n == 1 else f"{n} of them start")
    return (f"{head} — {who} with {', '.join(shown)}: Enter sends them as text, in one "
            "message; Esc cancels")


def count_of(n: int, noun: str) -> str:
    """``1 line``, ``3 lines``: a count with its noun."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def over_limit(text: str, max_lines: int, max_bytes: int) -> str | None:
    """Why ``text`` cannot be sent as one message, by the broker's limits from its INFO
    (``max_text_lines``, ``max_text_bytes``; 0: not announced, no bound here), or None:
    ``60 lines, over the broker's limit of 50 lines a message``. Lines are counted as
    the broker counts them (``zchat.names.text_lines``)."""
    lines = text_lines(text)
    if max_lines and lines > max_lines:
        return f"{lines} lines, over the broker's limit of {max_lines} lines a message"
    size = len(text.encode("utf-8", "surrogatepass"))
    if max_bytes and size > max_bytes:
        return f"{size:,} bytes, over the broker's limit of {max_bytes:,} bytes a message"
    return None


# ---------------------------------------------------------------------------
# Input history


class InputHistory:
    """Lines the user entered, for Up/Down, oldest first; at most ``max_entries`` (older
    ones are dropped), blank lines and a repeat of the previous line are not recorded.

    Navigation: ``up(draft)`` returns the previous entry, saving ``draft`` (the unsent
    text in the input line) on the first step; ``down()`` returns the next entry and, past
    the newest, the saved draft. Both return None when they cannot move (leave the input
    unchanged). ``add`` and ``reset`` end the navigation.
    """

    def __init__(self, max_entries: int = MAX_INPUT_HISTORY,
                 entries: Sequence[str] = ()) -> None:
        self._entries: deque[str] = deque(maxlen=max_entries)
        self._pos: int | None = None  # index into _entries while navigating
        self._draft = ""
        for entry in entries:
            self.add(entry)

    @property
    def entries(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def add(self, line: str) -> None:
        """Record an entered line and end navigation."""
        self.reset()
        if not line.strip() or (self._entries and self._entries[-1] == line):
            return
        self._entries.append(line)

    def reset(self) -> None:
        """End navigation (the draft is forgotten)."""
        self._pos = None
        self._draft = ""

    @property
    def navigating(self) -> bool:
        return self._pos is not None

    def up(self, draft: str) -> str | None:
        """The previous (older) entry, or None at the oldest or with no entries."""
        if not self._entries:
            return None
        if self._pos is None:
            self._draft = draft
            self._pos = len(self._entries) - 1
        elif self._pos == 0:
            return None
        else:
            self._pos -= 1
        return self._entries[self._pos]

    def down(self) -> str | None:
        """The next (newer) entry; past the newest, the saved draft; None when not
        navigating."""
        if self._pos is None:
            return None
        if self._pos < len(self._entries) - 1:
            self._pos += 1
            return self._entries[self._pos]
        draft = self._draft
        self.reset()
        return draft
