"""Issue 13 §4, console defects: long messages folded, a line shown at once while it is
being sent, a paste without bracketed paste, Ctrl-Z, unknown accounts, IRC habits,
wording. Pure rendering is tested directly; the rest through the real console fed from
a pipe input (prompt_toolkit's DummyOutput) over a real broker, or in a pseudo-terminal.
"""

from __future__ import annotations

import datetime as dt

from conftest import run
from test_console_app import ENTER, console_session, until, window_text

from zchat.console import view as v
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
