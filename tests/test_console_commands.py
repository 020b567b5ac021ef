"""The console's pure input handling: command parsing, help, completion, paste, history."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchat.console.commands import (
    COMMANDS,
    Away,
    Back,
    Clear,
    Completion,
    DeleteRoom,
    Help,
    History,
    InputHistory,
    Join,
    Me,
    Msg,
    ParseError,
    Part,
    PasteResult,
    Quit,
    Rooms,
    SendText,
    Switch,
    TabCycle,
    Topic,
    Who,
    apply_completion,
    complete,
    help_text,
    parse_input,
    paste_to_message,
)

# -- parse_input -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("/join dev", Join("dev")),
    ("/join #dev", Join("dev")),
    ("/join secret private", Join("secret", private=True)),
    ("/JOIN Dev", Join("Dev")),
    ("/j dev", Join("dev")),
    ("/part", Part(None)),
    ("/part #ops", Part("ops")),
    ("/part ops", Part("ops")),
    ("/part #ops back tomorrow", Part("ops", "back tomorrow")),
    ("/part back tomorrow", Part(None, "back tomorrow")),
    ("/leave ops", Part("ops")),
    ("/msg bob hello there", Msg("bob", "hello there")),
    ("/msg @bob  spaced   text ", Msg("bob", "spaced   text")),
    ("/me waves at everyone", Me("waves at everyone")),
    ("/who", Who()),
    ("/rooms", Rooms()),
    ("/topic", Topic(None)),
    ("/topic Deploys on Friday", Topic("Deploys on Friday")),
    ("/topic #ops", Topic(None, "ops")),
    ("/topic #ops Deploys on Friday", Topic("Deploys on Friday", "ops")),
    ("/topic #dev #1 rule: be nice", Topic("#1 rule: be nice", "dev")),
    ("/deleteroom", DeleteRoom(None, "")),
    ("/deleteroom #dev", DeleteRoom("dev", "")),
    ("/deleteroom dev spam cleanup", DeleteRoom("dev", "spam cleanup")),
    ("/away", Away("")),
    ("/away lunch, back at 2", Away("lunch, back at 2")),
    ("/back", Back()),
    ("/history 50", History(50)),
    ("/history 1", History(1)),
    ("/history 500", History(500)),
    ("/switch dev", Switch("dev")),
    ("/switch #dev", Switch("dev")),
    ("/switch @bob", Switch("@bob")),
    ("/clear", Clear()),
    ("/quit", Quit("")),
    ("/quit see you", Quit("see you")),
    ("/exit", Quit("")),
    ("/help", Help(None)),
    ("/help join", Help("join")),
    ("/help /MSG", Help("msg")),
    ("/who   ", Who()),
    ("/join\tdev", Join("dev")),
])
def test_commands_parse(text: str, expected: object) -> None:
    assert parse_input(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("hello", "hello"),
    ("  /join dev", "  /join dev"),  # only a / in the first column starts a command
    ("//join is a command", "/join is a command"),
    ("//", "/"),
    ("multi\nline", "multi\nline"),
    ("trailing  ", "trailing  "),
])
def test_text_is_sent(text: str, expected: str) -> None:
    assert parse_input(text) == SendText(expected)


@pytest.mark.parametrize("text", ["", "   ", "\n", "\t"])
def test_blank_input_is_nothing(text: str) -> None:
    assert parse_input(text) is None


def test_unknown_command() -> None:
    assert parse_input("/foo bar") == ParseError("unknown command /foo — try /help")


@pytest.mark.parametrize("text, usage", [
    ("/join", "/join ROOM [private]"),
    ("/join a b", "/join ROOM [private]"),
    ("/join #", "/join ROOM [private]"),
    ("/msg", "/msg USER TEXT"),
    ("/msg bob", "/msg USER TEXT"),
    ("/msg @ hi", "/msg USER TEXT"),
    ("/me", "/me TEXT"),
    ("/me   ", "/me TEXT"),
    ("/who dev", "/who"),
    ("/rooms x", "/rooms"),
    ("/back now", "/back"),
    ("/history", "/history N"),
    ("/history 0", "/history N"),
    ("/history 501", "/history N"),
    ("/history -3", "/history N"),
    ("/history ten", "/history N"),
    ("/history ５", "/history N"),  # a fullwidth digit is not a number here
    ("/history 5 6", "/history N"),
    ("/switch", "/switch TARGET"),
    ("/clear all", "/clear"),
    ("/help a b", "/help [CMD]"),
    ("/topic #", "/topic [#ROOM] [TEXT]"),
    ("/deleteroom #", "/deleteroom [ROOM] [REASON]"),
])
def test_argument_errors_give_the_usage(text: str, usage: str) -> None:
    result = parse_input(text)
    assert isinstance(result, ParseError)
    assert result.message.endswith(f"usage: {usage}"), result.message


def test_missing_and_extra_arguments_say_which() -> None:
    missing = parse_input("/msg bob")
    assert isinstance(missing, ParseError) and "needs TEXT" in missing.message
    extra = parse_input("/join a private b")
    assert isinstance(extra, ParseError) and "too many arguments" in extra.message
    bad = parse_input("/history 900")
    assert isinstance(bad, ParseError) and "1 to 500" in bad.message


def test_lone_slash_is_an_error() -> None:
    result = parse_input("/ hello")
    assert isinstance(result, ParseError) and "//" in result.message


@given(st.text())
def test_parse_never_raises(text: str) -> None:
    result = parse_input(text)
    assert result is None or isinstance(result, SendText | ParseError) or hasattr(result, "NAME")


def test_every_command_has_usage_and_help() -> None:
    assert set(COMMANDS) == {"join", "part", "msg", "me", "who", "rooms", "topic", "slow",
                             "away", "back", "history", "switch", "clear", "quit", "help",
                             "kick", "ban", "unban", "mute", "unmute", "invite", "op", "deop",
                             "lock", "unlock", "private", "delete", "deleteroom",
                             # issue 13: what IRC users type by habit
                             "query", "names", "close", "window", "whois"}
    for name, spec in COMMANDS.items():
        assert spec.usage.startswith(f"/{name}")
        assert spec.summary and spec.help


# -- help ------------------------------------------------------------------------------------


def test_help_lists_every_command_by_group_in_a_few_lines() -> None:
    lines = help_text(None)
    assert len(lines) <= 8  # issue 13: it fits a 24-row screen (the console test draws it)
    words = " ".join(lines).split()
    for name in COMMANDS:
        assert f"/{name}" in words
    assert "(/list)" in words
    assert lines[0] == "/help CMD explains one command, /help keys lists the keys."


def test_help_for_one_command() -> None:
    lines = help_text("join")
    assert lines[0].startswith("/join ROOM") and "/j" in lines[0]
    assert help_text("/JOIN") == lines
    assert help_text("msg")[0] == "/msg USER TEXT"
    assert help_text("nope") == ["unknown command /nope — try /help"]


# -- completion -------------------------------------------------------------------------------

NICKS = ["alice", "Alan", "bob", "carol"]
ROOMS = ["dev", "design", "ops"]


def comp(text: str, cursor: int | None = None) -> Completion:
    return complete(text, len(text) if cursor is None else cursor, nicks=NICKS, rooms=ROOMS)


def test_complete_command_names() -> None:
    assert comp("/jo") == Completion(0, 3, ("/join ",))
    assert comp("/J").candidates == ("/join ",)
    assert comp("/h").candidates == ("/help ", "/history ")
    assert comp("/").candidates == tuple(f"/{n} " for n in sorted(COMMANDS))
    assert comp("/xyz").candidates == ()


def test_complete_rooms_after_room_commands() -> None:
    assert comp("/join d") == Completion(6, 7, ("design ", "dev "))
    assert comp("/join #de").candidates == ("#design ", "#dev ")
    assert comp("/part o").candidates == ("ops ",)
    assert comp("/deleteroom #o").candidates == ("#ops ",)
    assert comp("/deleteroom ops sp").candidates == ()  # the REASON is no room
    assert comp("/switch ").candidates == ("design ", "dev ", "ops ")
    assert complete("/switch @b", 10, nicks=[], rooms=["dev", "@bob"]).candidates == ("@bob ",)


def test_complete_nicks_after_msg_and_in_text() -> None:
    assert comp("/msg a").candidates == ("Alan ", "alice ")
    assert comp("/msg @b").candidates == ("@bob ",)
    assert comp("al") == Completion(0, 2, ("Alan: ", "alice: "))
    assert comp("hi al").candidates == ("Alan ", "alice ")
    assert comp("hi @car").candidates == ("@carol ",)
    assert comp("/help ms").candidates == ("msg ",)
    assert comp("/msg bob hi ca").candidates == ("carol ",)


def test_complete_in_the_middle_of_the_line() -> None:
    text = "hi bo, how are you"
    c = comp(text, 5)
    assert c == Completion(3, 5, ("bob ",))
    assert apply_completion(text, c, "bob ") == ("hi bob , how are you", 7)


def test_complete_is_sorted_stable_and_deduplicated() -> None:
    c = complete("a", 1, nicks=["b", "ab", "Aa", "ab", "AB"], rooms=[])
    assert c.candidates == ("Aa: ", "AB: ", "ab: ")
    assert complete("a", 1, nicks=["ab", "AB", "Aa"], rooms=[]) == c


def test_tab_cycle() -> None:
    cycle = TabCycle.start("hi al", 5, nicks=NICKS, rooms=ROOMS)
    assert cycle is not None
    assert cycle.next() == ("hi Alan ", 8)
    assert cycle.next() == ("hi alice ", 9)
    assert cycle.next() == ("hi Alan ", 8)
    assert cycle.prev() == ("hi alice ", 9)
    assert TabCycle.start("hi zz", 5, nicks=NICKS, rooms=ROOMS) is None


# -- paste -----------------------------------------------------------------------------------


def test_paste_normalises_newlines() -> None:
    result = paste_to_message("one\r\ntwo\rthree\n\n\n", threshold=5)
    assert result.text == "one\ntwo\nthree"
    assert result.lines == 3 and not result.needs_confirmation


def test_paste_is_never_a_command() -> None:
    result = paste_to_message("/quit\n", threshold=5)
    assert result.text == "/quit" and result.as_send() == SendText("/quit")


def test_paste_confirmation_threshold() -> None:
    assert not paste_to_message("a\nb\nc", threshold=3).needs_confirmation
    assert paste_to_message("a\nb\nc\nd", threshold=3).needs_confirmation
    empty = paste_to_message("\n\n", threshold=3)
    assert empty.text == "" and empty.lines == 0


# -- input history ---------------------------------------------------------------------------


def test_history_navigation_keeps_the_draft() -> None:
    h = InputHistory()
    for line in ("one", "two", "three"):
        h.add(line)
    assert h.up("draft") == "three"
    assert h.up("ignored") == "two"
    assert h.up("") == "one"
    assert h.up("") is None
    assert h.down() == "two"
    assert h.down() == "three"
    assert h.down() == "draft"
    assert h.down() is None
    assert not h.navigating


def test_history_skips_blank_and_consecutive_duplicates() -> None:
    h = InputHistory()
    for line in ("a", "a", "  ", "", "b", "a"):
        h.add(line)
    assert h.entries == ("a", "b", "a")


def test_history_is_bounded() -> None:
    h = InputHistory(max_entries=3, entries=[str(i) for i in range(10)])
    assert h.entries == ("7", "8", "9")
    assert InputHistory().up("x") is None


def test_add_ends_navigation() -> None:
    h = InputHistory(entries=["one", "two"])
    h.up("draft")
    h.add("three")
    assert not h.navigating
    assert h.up("") == "three"


def test_paste_drops_leading_blank_lines() -> None:
    assert paste_to_message("\n \n\nfirst\nsecond\n\n", 5) == PasteResult("first\nsecond", False, 2)
    assert paste_to_message("\n\n/quit\n", 5) == PasteResult("/quit", False, 1, ("/quit",),
                                                               1)
