"""What terminal chat users expect of the console: long messages folded, a line shown at once while it is
being sent, a paste without bracketed paste, Ctrl-Z, unknown accounts, IRC habits,
wording. Pure rendering is tested directly; the rest through the real console fed from
a pipe input (prompt_toolkit's DummyOutput) over a real broker, or in a pseudo-terminal.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import signal
import time
from pathlib import Path

import pexpect
import pyte
from cli_helpers import register
from conftest import TcpBroker, run, zchat_command
from console_helpers import console_session, next_of, until, window_text
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input.vt100_parser import Vt100Parser
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import ConditionalContainer
from prompt_toolkit.layout.layout import walk
from terminal_helpers import COLS, ROWS, Terminal, console_env, screen_on_failure

from zchat import wire as p
from zchat.client.client import Client
from zchat.console import view as v
from zchat.console.app import MIN_WIDTH_FOR_SIDEBAR, SIDEBAR_WIDTH
from zchat.console.paste_input import group_pasted_keys, is_paste
from zchat.testing import Harness

UTC = dt.UTC
T0 = int(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp() * 1000)
CTRL_O = "\x0f"


def text_of(row: list[tuple[str, str]]) -> str:
    return "".join(t for _, t in row)


def pane(console: object, width: int = 80, height: int = 24) -> list[str]:
    return [row.rstrip() for row in window_text(console.pane, width, height)]  # type: ignore[attr-defined]


# -- long messages are folded -----------------------------------------------------------------


def test_a_long_message_is_folded_to_fold_rows_with_a_count_of_the_rest() -> None:
    line = v.Line("message", T0, "bob", "\n".join(f"row {i}" for i in range(1, 48)), 7)
    whole = v.render_line(line, 60, "alice", UTC)
    assert len(whole) == 47
    rows = v.render_line(line, 60, "alice", UTC, fold_rows=10)
    assert len(rows) == 10
    assert [text_of(r) for r in rows[:2]] == ["03:04          bob │ row 1",
                                              "                   │ row 2"]
    assert text_of(rows[8]).endswith("│ row 9")
    assert text_of(rows[9]) == "                   │ … 38 more lines (Ctrl-O unfolds)"
    assert any("class:fold" in style for style, _ in rows[9])
    assert all(v.cell_width(text_of(r)) <= 60 for r in rows)
    # Wrapped rows count as rows: a long line without breaks folds too.
    wrapped = v.render_line(v.Line("message", T0, "bob", "word " * 400, 8), 40, "alice", UTC,
                            fold_rows=10)
    assert len(wrapped) == 10 and "more lines" in text_of(wrapped[-1])
    # At most fold_rows rows: drawn whole; narrow panes stay within the width.
    ten = v.Line("message", T0, "bob", "\n".join("x" * 10), 9)
    assert len(v.render_line(ten, 60, "alice", UTC, fold_rows=10)) == 10
    for width in (1, 5, 12, 25):
        narrow = v.render_line(line, width, "alice", UTC, fold_rows=10)
        assert len(narrow) == 10
        assert all(v.cell_width(text_of(r)) <= width for r in narrow)


def test_ctrl_o_unfolds_and_folds_the_long_messages_of_the_conversation(
        harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            await bob.send("lobby", "\n".join(f"line {i}" for i in range(1, 41)))
            await s.wait_text("\n".join(f"line {i}" for i in range(1, 41)))
            shown = pane(s.console, 80, 40)
            assert any("│ line 9" in r for r in shown)
            assert not any("│ line 10" in r for r in shown)
            assert any(r.endswith("│ … 31 more lines (Ctrl-O unfolds)") for r in shown)
            s.send(CTRL_O)
            await until(lambda: s.conv.unfolded, what="unfolded")
            shown = pane(s.console, 80, 45)
            assert any(r.endswith("│ line 40") for r in shown)
            assert not any("more lines" in r for r in shown)
            s.send(CTRL_O)
            await until(lambda: not s.conv.unfolded, what="folded again")
            assert any("31 more lines" in r for r in pane(s.console, 80, 40))

    run(main())


# -- a line typed while the broker is silent ---------------------------------------------------


def test_a_line_typed_to_a_silent_broker_shows_at_once_and_the_status_bar_says_so(
        tcp_broker: TcpBroker) -> None:
    """Issue 13: with the broker gone silent (here: stopped with SIGSTOP, as a hung or
    dead host looks), a line typed left the input and showed nowhere for ~30 s. It now
    shows at once as pending, the status bar says within the request's timeout that the
    broker does not answer, and once the broker answers the stored message takes the
    pending line's place (once)."""
    async def main() -> None:
        client = Client(tcp_broker.router, timeout_s=5.0, reconnect=True)
        async with console_session(None, client=client) as s:  # type: ignore[arg-type]
            assert "connected" in s.status()
            tcp_broker.process.popen.send_signal(signal.SIGSTOP)
            try:
                s.type_line("are you there?")
                await until(lambda: any(ln.text == "are you there?" for ln in s.conv.lines),
                            timeout=0.5, what="the line in the pane at once")
                assert s.console.input_buffer.text == ""
                assert any(r.endswith("│ are you there? (sending…)") for r in pane(s.console))
                started = time.monotonic()
                await until(lambda: "no answer from the broker for" in s.status(),
                            timeout=5, what="the status bar to say the broker is silent")
                assert time.monotonic() - started < 4.5
                assert re.search(r"no answer from the broker for [2-4] s $", s.status())
            finally:
                tcp_broker.process.popen.send_signal(signal.SIGCONT)
            await until(lambda: [(ln.text, ln.status, ln.seq) for ln in s.conv.lines
                                 if ln.own] == [("are you there?", "", 1)],
                        timeout=5, what="the pending line replaced by the message")
            assert not any("sending…" in r for r in pane(s.console))
            await until(lambda: "no answer" not in s.status(), what="the status bar again")

    run(main())


def test_pending_and_not_sent_lines_are_drawn_dim_and_marked() -> None:
    pending = v.Line("message", T0, "alice", "hello", status="pending")
    (row,) = v.render_line(pending, 60, "alice", UTC)
    assert text_of(row) == "03:04        alice │ hello (sending…)"
    assert all("class:pending" in style for style, _ in row)
    failed = v.Line("action", None, "alice", "waves", marker="*", status="failed")
    (row,) = v.render_line(failed, 60, "alice", UTC)
    assert text_of(row).endswith("* │ alice waves (not sent)")
    assert all("class:failed" in style for style, _ in row)


def test_the_status_bar_says_how_long_the_broker_has_not_answered() -> None:
    row = v.render_status("alice", "#dev", "", "connected", None, 3.0, 60, unanswered_s=4.2)
    assert text_of(row).endswith(" no answer from the broker for 4 s ")
    assert "class:status.unanswered" in row[-1][0]
    # reconnecting says more than a silence, and wins
    row = v.render_status("alice", "#dev", "", "reconnecting", 3.0, None, 60,
                          unanswered_s=9.0)
    assert text_of(row).endswith(" reconnecting in 3 s ")


def test_a_settled_line_takes_the_pending_lines_place_once() -> None:
    conv = v.Conversation("dev", "dev", "room")
    typed = v.classify(v.Line("message", T0, "alice", "hi", status="pending"), "alice")
    conv.add(typed, me="alice")
    conv.add(v.Line("message", T0, "bob", "meanwhile", 4), me="alice")
    conv.settle(typed, v.Line("message", T0 + 5, "alice", "hi", 5), "alice")
    assert [(ln.text, ln.seq, ln.status) for ln in conv.lines] == [
        ("hi", 5, ""), ("meanwhile", 4, "")]
    # its MESSAGE event first, then the OK: shown once, where the event put it
    again = v.classify(v.Line("message", T0, "alice", "again", status="pending"), "alice")
    conv.add(again, me="alice")
    conv.add(v.Line("message", T0, "alice", "again", 6), me="alice")
    conv.settle(again, v.Line("message", T0, "alice", "again", 6), "alice")
    assert [ln.text for ln in conv.lines].count("again") == 1
    # not sent: marked, and forgotten when the same line is sent again
    lost = v.classify(v.Line("message", T0, "alice", "lost", status="pending"), "alice")
    conv.add(lost, me="alice")
    conv.settle(lost, None, "alice")
    assert conv.lines[-1].status == "failed"
    conv.drop_failed("message", "lost")
    assert "lost" not in [ln.text for ln in conv.lines]


# -- a paste without bracketed paste -----------------------------------------------------------


def keys_of(text: str) -> list[KeyPress]:
    """The key presses prompt_toolkit's vt100 parser makes of ``text`` read at once."""
    found: list[KeyPress] = []
    parser = Vt100Parser(found.append)
    parser.feed(text)
    parser.flush()
    return found


def test_several_lines_in_one_read_are_one_paste_and_a_typed_line_is_not() -> None:
    assert not is_paste(keys_of("hello\r"))
    assert not is_paste(keys_of("hello\r\r"))
    assert is_paste(keys_of("hi\r/quit\r"))
    (key,) = group_pasted_keys(keys_of("hi\r/quit\r"))
    assert (key.key, key.data) == (Keys.BracketedPaste, "hi\r/quit\r")
    assert [k.data for k in group_pasted_keys(keys_of("a\tb\rc"))] == ["a\tb\rc"]
    # an arrow key in the middle ends a run; what is not a paste is left alone
    grouped = group_pasted_keys(keys_of("one\rtwo\x1b[Athree"))
    assert [(k.key, k.data) for k in grouped] == [
        (Keys.BracketedPaste, "one\rtwo"), (Keys.Up, "\x1b[A"), (Keys.BracketedPaste, "three")]
    typed = keys_of("abc\r")
    assert group_pasted_keys(typed) == typed


def test_a_paste_without_bracketed_paste_never_runs_a_pasted_command(
        harness: Harness) -> None:
    """Issue 13: pasted without bracketed paste, "hello\\r/quit\\r" ran /quit. Several
    lines in one read are a paste, held for Enter like a bracketed paste, and sent as
    one message (never commands)."""
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.send("hello everyone\r/quit\r")
            await until(lambda: s.console.pending_paste is not None, what="confirmation")
            assert not s.task.done() and s.console.app.is_running
            s.send("\r")
            said = await next_of(bob, lambda e: isinstance(e, p.MessagePosted)
                                 and e.sender == "alice")
            assert said.text == "hello everyone\n/quit"
            assert not s.task.done() and s.console.app.is_running
            s.send("".join(f"line {i}\r" for i in range(1, 9)))
            await until(lambda: s.console.pending_paste is not None, what="confirmation")
            assert s.console.pending_paste.lines == 8
            s.send("\x1b")  # Esc: cancelled
            await until(lambda: s.console.pending_paste is None, what="cancelled")
            s.type_line("typed, then Enter")  # one line and its Enter: still typing
            said = await next_of(bob, lambda e: isinstance(e, p.MessagePosted)
                                 and e.sender == "alice")
            assert said.text == "typed, then Enter"

    run(main())


# -- Ctrl-Z ---------------------------------------------------------------------------------


def test_ctrl_z_suspends_the_console_and_fg_brings_it_back_in_raw_mode(
        tmp_path: Path, tcp_broker: TcpBroker) -> None:
    """Issue 13: Ctrl-Z typed ``^Z``. In a shell with job control it now stops the
    console as other terminal programs do; after ``fg`` the screen is drawn again and
    keys act at once (raw mode: Tab completes without a line break)."""
    server = ("--server", tcp_broker.router)
    register(tmp_path, tcp_broker, "alice")
    env = console_env(tmp_path)
    env.update(PS1="shell$ ", HISTFILE="/dev/null")
    command = " ".join(shlex.quote(a) for a in [*zchat_command(), "join", "alice", *server])
    term = Terminal.__new__(Terminal)  # the shell, not zchat, in the pseudo-terminal
    term.child = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env=env,
                               dimensions=(ROWS, COLS))
    term.screen = pyte.Screen(COLS, ROWS)
    term.screen.write_process_input = term._answer  # type: ignore[method-assign]
    term.stream = pyte.ByteStream(term.screen)
    with screen_on_failure(term):
        term.wait_shows("shell$")
        term.child.send(command.encode() + b"\r")
        term.wait_for(lambda t: "alice │ #lobby" in t and "connected" in t, "the console")
        term.child.send(b"\x1a")  # Ctrl-Z
        term.wait_for(lambda t: re.search(r"Stopped.*shell\$", t, re.DOTALL) is not None,
                      "the shell's prompt after the stop")
        term.child.send(b"fg\r")
        term.wait_for(lambda t: "alice │ #lobby" in t and "Rooms" in t, "the console again")
        term.child.send(b"/jo\t")  # raw mode: Tab is a key at once, not a character
        term.wait_shows("#lobby > /join")  # typed "/jo"
        term.child.send(b"\x15/quit\r")  # Ctrl-U, then /quit
        term.wait_shows("shell$")
        term.child.send(b"exit\r")
        term.child.expect(pexpect.EOF, timeout=5)


# -- unknown accounts, closing conversations, IRC habits ----------------------------------------


def test_switch_to_an_unknown_account_is_refused_and_close_closes(harness: Harness) -> None:
    """Issue 13: ``/switch @nobody`` opened a conversation with an account that does not
    exist, and nothing closed it. The broker is asked (WHOIS); /close and /part in a
    direct conversation close it; /close in a room leaves it."""
    async def main() -> None:
        async with harness.client("Bob"), console_session(harness) as s:
            s.type_line("/switch @nobody")
            await until(lambda: s.errors() == [
                "refused: no account named 'nobody' (404)"], what="the refusal")
            assert s.console.order == ["lobby"] and s.console.active == "lobby"
            assert s.console.input_buffer.text == ""  # /switch is not given back
            s.type_line("/switch @bob")  # an existing account, offline too: opened
            await until(lambda: s.console.active == "dm:bob", what="the DM with bob")
            assert s.conv.title == "Bob"  # as registered
            s.type_line("/close")
            await until(lambda: s.console.order == ["lobby"], what="closed")
            assert s.console.active == "lobby"
            s.type_line("/query bob")
            await until(lambda: s.console.active == "dm:bob", what="/query")
            s.type_line("/part")
            await until(lambda: s.console.order == ["lobby"], what="closed by /part")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="#dev")
            s.type_line("/close")
            await until(lambda: s.console.order == ["lobby"], what="#dev closed")
            rooms = (await s.client.list_rooms()).rooms
            assert [r.joined for r in rooms if r.room == "dev"] == [False]  # and left

    run(main())


def test_irc_habits_query_names_list_window_whois(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, harness.client("carol") as carol, \
                console_session(harness) as s:
            await carol.set_presence("away", "lunch")
            s.type_line("/query @bob hi bob")  # opened, shown, and the message sent
            said = await next_of(bob, lambda e: isinstance(e, p.DirectMessage))
            assert said.text == "hi bob" and s.console.active == "dm:bob"
            await until(lambda: [(ln.text, ln.status) for ln in s.conv.lines if ln.own]
                        == [("hi bob", "")], what="the DM shown as sent")
            s.type_line("/query nobody hello")
            await until(lambda: "refused: no account named 'nobody' (404)" in s.errors(),
                        what="no such account")
            assert "dm:nobody" not in s.console.order
            await until(lambda: s.console.input_buffer.text == "/query nobody hello",
                        what="given back to fix the name")
            s.console.input_buffer.text = ""
            s.type_line("/window 1")
            await until(lambda: s.console.active == "lobby", what="/window 1")
            s.type_line("/names")
            await until(lambda: any(t.startswith("#lobby, 3 members: ") for t in s.texts()),
                        what="/names")
            (names,) = [t for t in s.texts() if t.startswith("#lobby, 3 members: ")]
            assert names == "#lobby, 3 members: alice, bob, carol (away)"
            s.type_line("/list")
            await until(lambda: "1 room:" in s.texts(), what="/list")
            await s.wait_text(" *#lobby (3 members)")
            s.type_line("/window 2")
            await until(lambda: s.console.active == "dm:bob", what="/window 2")
            s.type_line("/window 3")
            await until(lambda: "there is no conversation 3: the sidebar lists 2"
                        in s.errors(), what="no third")
            s.type_line("/whois carol")
            await s.wait_text("carol is away: lunch")

    run(main())


def test_help_fits_a_24_row_terminal_beside_the_sidebar(harness: Harness) -> None:
    """Issue 13: /help was 29 lines. On an 80 x 24 terminal (a pane of 55 x 22 beside
    the sidebar) the overview is seen whole, and so is /help keys."""
    async def main() -> None:
        async with console_session(harness) as s:
            for topic, first, last in (
                    ("/help", "/help CMD explains one command", "// at the start of a line"),
                    ("/help keys", "Enter sends", "Ctrl-Z suspends")):
                s.type_line("/clear")
                await until(lambda: not s.conv.lines, what="cleared")
                s.type_line(topic)
                await until(lambda last=last: any(t.startswith(last) for t in s.texts()),
                            what=topic)
                shown = "\n".join(pane(s.console, 80 - SIDEBAR_WIDTH - 1, 22))
                assert first in shown and last in shown, shown
            assert any("Ctrl-O" in t for t in s.texts())  # folding is told of

    run(main())


def test_names_sharing_a_beginning_stay_apart_in_the_nick_column_and_sidebar() -> None:
    great, small = "alexander_the_great", "alexander_the_small"
    rows = [v.render_line(v.Line("message", T0, n, "hi", i), 60, "me", UTC)[0]
            for i, n in enumerate((great, small))]
    assert [text_of(r)[:18] for r in rows] == ["03:04 alexan…great", "03:04 alexan…small"]
    conv = v.Conversation("dev", "dev", "room")
    members = {great: v.Member("online"), small: v.Member("online")}
    sidebar = [text_of(r).rstrip() for r in v.render_sidebar([conv], "dev", members, 14)]
    assert sidebar[-2:] == ["● alexan…great", "● alexan…small"]
    long_rooms = [v.Conversation(k, k, "room") for k in ("project-alpha-frontend",
                                                         "project-alpha-backend")]
    rows = [text_of(r).rstrip() for r in v.render_sidebar(long_rooms, None, None, 16)]
    assert rows[1:] == [" #projec…rontend", " #projec…backend"]
    assert v.truncate_middle("日本語の名前です長い", 12) == "日本語…長い"
    assert v.cell_width(v.truncate_middle("日本語の名前です長い", 12)) <= 12


def test_the_sidebar_gives_way_below_78_columns(harness: Harness) -> None:
    """Issue 13: the sidebar stayed down to 60 columns, leaving 14 cells of text. It
    now shows only with at least 32 cells of text beside it: from 78 columns."""
    assert MIN_WIDTH_FOR_SIDEBAR == 78

    async def main() -> None:
        async with console_session(harness) as s:
            (container,) = [c for c in s.console.app.layout.walk()
                            if isinstance(c, ConditionalContainer)
                            and any(getattr(w, "style", "") == "class:sidebar"
                                    for w in walk(c))]
            for columns, shown in ((120, True), (80, True), (78, True), (77, False),
                                   (60, False)):
                size = Size(rows=24, columns=columns)
                s.console.app.output.get_size = lambda size=size: size  # type: ignore[method-assign]
                assert container.filter() is shown, columns

    run(main())


# -- wording -------------------------------------------------------------------------------------


def test_usage_lines_say_what_to_type() -> None:
    from zchat.console.commands import COMMANDS, ParseError, parse_input

    assert COMMANDS["private"].usage == "/private on|off"
    assert COMMANDS["delete"].usage == "/delete SEQ|NICK"
    assert parse_input("/private") == ParseError(
        "/private needs on|off — usage: /private on|off")
    assert parse_input("/delete") == ParseError(
        "/delete needs SEQ|NICK — usage: /delete SEQ|NICK")


def test_console_md_and_help_name_every_command_and_alias() -> None:
    """docs/console.md and /help stay true to the command table."""
    from zchat.console.commands import ALIASES, COMMANDS, help_text

    doc = (Path(__file__).resolve().parent.parent / "docs" / "console.md").read_text()
    overview = " ".join(help_text()).split()
    for name, spec in COMMANDS.items():
        assert f"`{spec.usage}" in doc or f"`/{name}" in doc, name
        assert f"/{name}" in overview, name
    for alias in ALIASES:
        assert f"`/{alias}`" in doc, alias
