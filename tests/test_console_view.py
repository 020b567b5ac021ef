"""The console's pure view: sanitizing, cell widths, line rendering, conversations,
sidebar and status bar. No terminal: rows are checked as (style, text) fragments."""

from __future__ import annotations

import datetime
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.utils import get_cwidth

from zchat import wire as p
from zchat.client.session import Unread
from zchat.console.view import (
    DEFAULT_STYLE,
    NICK_PALETTE,
    Conversation,
    Line,
    Member,
    Unseen,
    cell_width,
    classify,
    conversation_key,
    day_line,
    dm_key,
    is_mention,
    line_from_event,
    nick_style,
    render_line,
    render_more_indicator,
    render_sidebar,
    render_status,
    sanitize,
    truncate_cells,
    unseen_counts,
    wrap_cells,
)
from zchat.names import mentions

UTC = datetime.UTC
JST = datetime.timezone(datetime.timedelta(hours=9))
#: 2024-01-02 03:04:05 UTC in milliseconds.
T0 = int(datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp() * 1000)


def text_of(row: list[tuple[str, str]]) -> str:
    return "".join(t for _, t in row)


def width_of(row: list[tuple[str, str]]) -> int:
    return sum(get_cwidth(t) for _, t in row)


def body_of(rows: list[list[tuple[str, str]]]) -> str:
    """The text-column fragments of rendered rows, concatenated."""
    return "".join(t for row in rows for s, t in row if "class:text" in s.split())


def msg(text: str, sender: str = "alice", seq: int | None = 1, kind: str = "message",
        time_ms: int | None = T0) -> Line:
    return Line(kind, time_ms, sender, text, seq)  # type: ignore[arg-type]


# -- sanitize ------------------------------------------------------------------------------


def _dangerous(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return (ch != "\n" and cat == "Cc") or cat in ("Cf", "Cs", "Zl", "Zp")


def test_sanitize_every_c0_control_becomes_its_control_picture() -> None:
    for code in range(0x20):
        ch = chr(code)
        if ch in "\n\t":
            continue
        assert sanitize(f"a{ch}b") == f"a{chr(0x2400 + code)}b"
    assert sanitize("\x1b") == "␛"
    assert sanitize("\x00") == "␀"
    assert sanitize("\r") == "␍"


def test_sanitize_keeps_newline_and_expands_tabs_to_stops_of_four() -> None:
    assert sanitize("a\nb") == "a\nb"
    assert sanitize("a\tb") == "a   b"
    assert sanitize("\tx") == "    x"
    assert sanitize("abcd\tx") == "abcd    x"
    assert sanitize("日\tx") == "日  x"  # the wide character takes two cells of the stop
    assert sanitize("ab\n\tx") == "ab\n    x"


def test_sanitize_del_c1_and_format_characters_become_visible() -> None:
    assert sanitize("\x7f") == "␡"
    for code in range(0x80, 0xA0):
        assert sanitize(chr(code)) == f"<U+{code:04X}>"
    for ch in ("\u200b\u200c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
               "\u2066\u2067\u2068\u2069\u061c\ufeff\u2060\u00ad"):
        assert sanitize(ch) == f"<U+{ord(ch):04X}>"
    assert sanitize("\U000e0041") == "<U+E0041>"  # tag characters can smuggle hidden text


def test_emoji_parts_terminals_draw_differently_are_normalised() -> None:
    # prompt_toolkit counts cells per character; terminals combine these pieces in their
    # own ways, and a disagreement leaves stray cells on screen (seen in tmux)
    assert sanitize("flags \U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8 here") == "flags [JP][US] here"
    assert sanitize("lone \U0001f1ef") == "lone [J]"
    assert sanitize("\U0001f44d\U0001f3fd ok") == "\U0001f44d ok"          # skin tone dropped
    assert sanitize("\u2764\ufe0f heart") == "\u2764 heart"                # VS16 dropped
    assert sanitize("\U0001f468\u200d\U0001f469 fam") == "\U0001f468\U0001f469 fam"  # ZWJ dropped
    for text in ("\U0001f1ef\U0001f1f5", "\U0001f44d\U0001f3fd", "\u2764\ufe0f"):
        assert cell_width(sanitize(text)) == sum(cell_width(c) for c in sanitize(text))


def test_sanitize_surrogates_and_line_separators() -> None:
    assert sanitize("a\ud800b") == "a\ufffdb"
    assert sanitize("a\udfffb") == "a\ufffdb"
    assert sanitize("a\u2028b\u2029c") == "a\nb\nc"


def test_terminal_escape_sequences_become_harmless_visible_text() -> None:
    assert sanitize("\x1b[2J") == "␛[2J"
    assert sanitize("\x1b]0;title\x07") == "␛]0;title␇"
    assert sanitize("\x9b2J") == "<U+009B>2J"
    assert sanitize("evil\u202egnp.exe") == "evil<U+202E>gnp.exe"


def test_sanitize_leaves_ordinary_text_alone() -> None:
    for text in ("hello, world", "日本語のテキスト", "👍 🎉", "e\u0301", "Ünïcödé ñ", ""):
        assert sanitize(text) == text


@given(st.text())
def test_sanitized_text_holds_no_control_format_or_surrogate(text: str) -> None:
    out = sanitize(text)
    assert not any(_dangerous(ch) for ch in out)
    assert "\t" not in out


# -- widths and wrapping -------------------------------------------------------------------


def test_wrap_breaks_at_spaces_and_keeps_indentation() -> None:
    assert wrap_cells("the quick brown fox", 10) == ["the quick", "brown fox"]
    assert wrap_cells("a\nb", 10) == ["a", "b"]
    assert wrap_cells("  code", 10) == ["  code"]
    assert wrap_cells("", 10) == [""]


def test_wrap_breaks_long_words_by_cells() -> None:
    assert wrap_cells("abcdefghijkl", 5) == ["abcde", "fghij", "kl"]
    assert wrap_cells("日本語のテキスト", 5) == ["日本", "語の", "テキ", "スト"]
    rows = wrap_cells("日本語のテキスト", 7)
    assert rows == ["日本語", "のテキ", "スト"]
    assert all(cell_width(r) <= 7 for r in rows)


def test_wrap_keeps_combining_marks_and_emoji_modifiers_with_their_base() -> None:
    text = "e\u0301" * 6
    rows = wrap_cells(text, 4)
    assert rows == ["e\u0301" * 4, "e\u0301" * 2]
    rows = wrap_cells("👍🏽👍🏽👍🏽", 5)
    assert rows == ["👍🏽", "👍🏽", "👍🏽"]  # prompt_toolkit counts 4 cells each
    assert wrap_cells("🎉🎉🎉", 5) == ["🎉🎉", "🎉"]


def test_wrap_replaces_a_character_wider_than_the_row() -> None:
    assert wrap_cells("日x", 1) == ["\ufffd", "x"]
    assert wrap_cells("abc", 0) == [""]


def test_truncate_by_cells_never_splits_a_wide_character() -> None:
    assert truncate_cells("alexandra", 5) == "alex…"
    assert truncate_cells("日本語", 4) == "日…"  # 2 + 1 cells; the gap is not filled
    assert truncate_cells("日本語", 6) == "日本語"
    assert truncate_cells("abc", 0) == ""
    assert truncate_cells("abc", 1) == "…"


# -- nick colours and mentions -------------------------------------------------------------


def test_nick_style_is_stable_and_case_insensitive() -> None:
    style = nick_style("alice")
    assert style.startswith("class:nick.")
    assert style.removeprefix("class:") in NICK_PALETTE
    assert nick_style("alice") == style
    assert nick_style("ALICE") == style == nick_style("Alice")
    # a fixed value: CRC-32, not the per-process salted hash()
    import zlib
    assert style == f"class:nick.{zlib.crc32(b'alice') % len(NICK_PALETTE)}"
    styles = {nick_style(n) for n in ("alice", "bob", "carol", "dave", "erin", "frank",
                                      "grace", "heidi", "ivan", "judy")}
    assert len(styles) > 3


def test_style_covers_every_palette_class() -> None:
    assert set(NICK_PALETTE) <= set(DEFAULT_STYLE)


@pytest.mark.parametrize("text", ["alice", "hi alice", "Alice: look", "@alice ping",
                                  "thanks ALICE.", "(alice)", "ok @Alice!", "...alice"])
def test_mention_whole_word_case_insensitive(text: str) -> None:
    assert is_mention(text, "alice")


@pytest.mark.parametrize("text", ["malice", "alice_b", "alices", "alice.smith",
                                  "bob.alice", "alice-bot", "a lice", "",
                                  # one word by the broker's rule (docs/PROTOCOL.md
                                  # §6.49.2), which the console's own pattern took for
                                  # a mention: a highlight the broker did not count
                                  "alice..bob", "alice--x", "alice.-bob"])
def test_not_a_mention(text: str) -> None:
    assert not is_mention(text, "alice")
    assert not mentions(text, "alice")


def test_classify_sets_own_and_mention() -> None:
    line = classify(msg("hello alice", sender="bob"), "alice")
    assert line.mention and not line.own
    own = classify(msg("I am alice", sender="Alice"), "alice")
    assert own.own and not own.mention
    notice = classify(Line("notice", T0, "bob", "bob mentions alice"), "alice")
    assert not notice.mention and not notice.own


# -- render_line ---------------------------------------------------------------------------


def test_render_message_layout_and_timestamp_in_tz() -> None:
    rows = render_line(msg("hello"), 60, "bob", UTC)
    assert len(rows) == 1
    assert text_of(rows[0]) == "03:04        alice │ hello"
    rows = render_line(msg("hello"), 60, "bob", JST)
    assert text_of(rows[0]).startswith("12:04 ")
    styles = [s for s, _ in rows[0]]
    assert "class:timestamp" in styles[0]
    assert nick_style("alice") in styles[2]
    assert "class:separator" in styles[3]
    assert "class:text" in styles[4]


def test_render_local_line_without_time_has_blank_timestamp() -> None:
    rows = render_line(Line("info", None, None, "connected"), 40, "bob", UTC)
    assert text_of(rows[0]) == "                --" + " │ connected"
    assert all("class:info" in s for s, _ in rows[0])


def test_render_own_mention_notice_and_error_classes() -> None:
    own = render_line(msg("hi", sender="bob"), 40, "bob", UTC)
    assert all("class:own" in s for s, _ in own[0])
    mention = render_line(msg("hi bob"), 40, "bob", UTC)
    assert all("class:mention" in s for s, _ in mention[0])
    notice = render_line(Line("notice", T0, "carol", "carol joined #dev", marker="-->"),
                         40, "bob", UTC)
    assert text_of(notice[0]) == "03:04          --> │ carol joined #dev"
    assert all("class:notice" in s for s, _ in notice[0])
    error = render_line(Line("error", None, None, "no such room"), 40, "bob", UTC)
    assert "=!=" in text_of(error[0])
    assert all("class:error" in s for s, _ in error[0])


def test_render_action() -> None:
    rows = render_line(msg("waves", kind="action"), 40, "bob", UTC)
    assert text_of(rows[0]) == "03:04            * │ alice waves"
    name_frag = rows[0][-2]
    assert name_frag[1] == "alice" and nick_style("alice") in name_frag[0]


def test_render_multiline_indents_under_the_text_column() -> None:
    rows = render_line(msg("first\nsecond\n\nfourth"), 40, "bob", UTC)
    texts = [text_of(r) for r in rows]
    assert texts == ["03:04        alice │ first",
                     "                   │ second",
                     "                   │ ",
                     "                   │ fourth"]


def test_render_wraps_long_lines_under_the_text_column() -> None:
    rows = render_line(msg("word " * 20), 40, "bob", UTC)
    assert len(rows) > 1
    for row in rows:
        assert width_of(row) <= 40
        assert text_of(row)[19] == "│"
    assert [w for row in rows for w in body_of([row]).split()] == ["word"] * 20


def test_render_nick_column_truncates_by_cells() -> None:
    # cut in the middle (issue 13): names sharing a beginning stay apart
    rows = render_line(msg("hi", sender="bartholomew_the_third"), 60, "x", UTC)
    assert text_of(rows[0]).startswith("03:04 bartho…third │ hi")
    rows = render_line(msg("hi", sender="日本語の名前です"), 60, "x", UTC)
    head = text_of(rows[0])
    assert head.startswith("03:04  日本語…です │ hi")  # 11 cells + a pad: 12
    nick = rows[0][2][1]
    assert get_cwidth(nick) == 12


def test_render_cjk_and_emoji_widths() -> None:
    for text in ("日本語のテキスト" * 5, "👍🏽🎉" * 10, "e\u0301" * 50, "x" * 300):
        for width in (20, 25, 33, 40, 80):
            rows = render_line(msg(text), width, "bob", UTC)
            assert all(width_of(r) <= width for r in rows), (text, width)


@pytest.mark.parametrize("width", [-5, 0, 1, 2, 5, 10, 15, 19, 20, 21, 24, 30])
def test_render_tiny_widths_degrade_without_exceeding(width: int) -> None:
    for line in (msg("hello there 日本語 👍🏽"), msg("x", sender="日本語の名前"),
                 msg("waves", kind="action"), Line("notice", T0, "bob", "bob left #dev")):
        rows = render_line(line, width, "me", UTC)
        assert rows
        assert all(width_of(r) <= max(width, 0) for r in rows)


def test_render_escape_sequences_are_visible() -> None:
    rows = render_line(msg("\x1b[2J\x1b]0;pwned\x07"), 60, "bob", UTC)
    out = "".join(text_of(r) for r in rows)
    assert "\x1b" not in out and "\x07" not in out
    assert "␛[2J␛]0;pwned␇" in out
    rows = render_line(msg("hi", sender="ev\x1bil"), 60, "bob", UTC)
    assert "\x1b" not in text_of(rows[0])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=10, max_value=200),
       st.sampled_from(["message", "dm", "notice"]))
def test_render_never_exceeds_width_and_keeps_the_text(text: str, width: int,
                                                       kind: str) -> None:
    line = Line(kind, T0, "alice", text, 1)  # type: ignore[arg-type]
    rows = render_line(line, width, "bob", JST)
    assert all(width_of(r) <= width for r in rows)
    expected = "".join(sanitize(text).split())
    assert "".join(body_of(rows).split()) == expected


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40), st.integers(min_value=-2, max_value=40),
       st.integers(min_value=0, max_value=20))
def test_render_any_nick_any_width(nick: str, width: int, nick_width: int) -> None:
    rows = render_line(msg("text 日本", sender=nick), width, "bob", UTC, nick_width=nick_width)
    assert all(width_of(r) <= max(width, 0) for r in rows)


def test_render_returns_fresh_lists() -> None:
    rows = render_line(msg("hi"), 40, "bob", UTC)
    rows[0].clear()
    assert render_line(msg("hi"), 40, "bob", UTC)[0]


def test_day_line() -> None:
    line = day_line(T0, UTC)
    assert line.kind == "info" and line.text == "Tuesday 2 January 2024"


# -- events to lines -----------------------------------------------------------------------


def test_line_from_events() -> None:
    posted = p.MessagePosted(room="dev", seq=7, time=T0, sender="bob", text="hi alice")
    line = line_from_event(posted, "alice")
    assert (line.kind, line.seq, line.sender, line.mention) == ("message", 7, "bob", True)
    action = line_from_event(p.MessagePosted("dev", 8, T0, "bob", "waves", "action"), "alice")
    assert action.kind == "action"
    joined = line_from_event(p.UserJoined("dev", "carol", T0), "alice")
    assert (joined.kind, joined.marker, joined.text) == ("notice", "-->", "carol joined #dev")
    left = line_from_event(p.UserLeft("dev", "carol", T0), "alice")
    assert left.marker == "<--"
    away = line_from_event(p.PresenceChanged("carol", "away", T0, "lunch"), "alice")
    assert away.text == "carol is away: lunch"
    dm = p.DirectMessage(id=3, time=T0, sender="alice", to="Bob", text="psst")
    assert line_from_event(dm, "alice").own
    assert conversation_key(dm, "alice") == dm_key("bob") == "dm:bob"
    assert conversation_key(dm, "bob") == "dm:alice"
    assert conversation_key(posted, "alice") == "dev"


# -- conversations -------------------------------------------------------------------------


def test_counts_come_from_the_read_state_not_from_the_lines_shown() -> None:
    """The sidebar's counts are the broker's (issue 13 §2): lines added to a conversation
    count nothing; a room's count and its ``!`` are its RoomRead's ``unread`` and
    ``mentions``, a direct conversation's its DmRead's ``unread`` (``!`` for any)."""
    dev, ops, lobby = (Conversation(k, k, "room") for k in ("dev", "ops", "lobby"))
    bob, erin = Conversation(dm_key("bob"), "bob", "dm"), Conversation(dm_key("Erin"),
                                                                        "Erin", "dm")
    for seq in range(1, 4):
        dev.add(msg(f"alice: {seq}", sender="bob", seq=seq), me="alice")
    bob.add(Line("dm", T0, "bob", "psst", 1), me="alice")
    state = Unread(
        rooms=(p.RoomRead(room="dev", read_seq=3, unread=0, mentions=0),
               p.RoomRead(room="OPS", read_seq=1, unread=4, mentions=1),
               p.RoomRead(room="lobby", read_seq=1, unread=2, mentions=0)),
        dms=(p.DmRead(peer="erin", last_id=9, read_id=5, unread=2),
             p.DmRead(peer="bob", last_id=1, read_id=1, unread=0)))
    convs = [dev, ops, lobby, bob, erin]
    assert unseen_counts(convs, state, None) == {
        "ops": Unseen(4, True), "lobby": Unseen(2, False), "dm:erin": Unseen(2, True)}
    # The conversation on screen shows none: its read marker is on its way.
    assert unseen_counts(convs, state, "ops") == {
        "lobby": Unseen(2, False), "dm:erin": Unseen(2, True)}
    assert unseen_counts(convs, Unread(), None) == {}


def test_room_messages_dedupe_by_seq() -> None:
    conv = Conversation("dev", "dev", "room")
    assert conv.add(msg("a", seq=5), me="x")
    assert not conv.add(msg("a", seq=5), me="x")
    assert len(conv.lines) == 1
    assert 5 in conv


def test_lines_are_bounded() -> None:
    conv = Conversation("dev", "dev", "room", max_lines=3)
    for seq in range(1, 6):
        conv.add(msg(str(seq), seq=seq), me="x")
    assert [ln.seq for ln in conv.lines] == [3, 4, 5]
    assert conv.oldest_seq == 3 and conv.newest_seq == 5
    assert conv.add(msg("1 again", seq=1), me="x")  # forgotten seqs may return


def test_insert_older_prepends_without_duplicates() -> None:
    conv = Conversation("dev", "dev", "room")
    for seq in (10, 11):
        conv.add(msg(str(seq), seq=seq), me="x")
    assert conv.oldest_seq == 10
    page = [msg(str(s), seq=s) for s in (9, 7, 8, 10, 11, 12)]
    assert conv.insert_older(page, "x") == 3
    assert [ln.seq for ln in conv.lines] == [7, 8, 9, 10, 11]
    assert conv.insert_older(page, "x") == 0
    assert conv.oldest_seq == 7


def test_insert_older_never_drops_newer_lines() -> None:
    conv = Conversation("dev", "dev", "room", max_lines=4)
    for seq in (10, 11):
        conv.add(msg(str(seq), seq=seq), me="x")
    added = conv.insert_older([msg(str(s), seq=s) for s in range(1, 10)], "x")
    assert added == 2
    assert [ln.seq for ln in conv.lines] == [8, 9, 10, 11]


def test_merge_puts_a_dm_page_in_id_order_around_the_dms_shown() -> None:
    """The pending DMs of the login (5, 7) are shown before the conversation's history
    comes: the page's older DMs go above them, the one in between (6, sent from another
    device) between them, a newer one (8) below; none twice."""
    conv = Conversation(dm_key("erin"), "erin", "dm")
    for dm_id in (5, 7):
        conv.add(Line("dm", T0, "erin", f"dm {dm_id}", dm_id), me="bob")
    page = [Line("dm", T0, "erin" if i % 2 else "bob", f"dm {i}", i) for i in (2, 3, 5, 6, 7, 8)]
    assert conv.merge(page, "bob") == 4
    assert [ln.seq for ln in conv.lines] == [2, 3, 5, 6, 7, 8]
    assert conv.merge(page, "bob") == 0
    assert [ln.own for ln in conv.lines] == [True, False, False, True, False, True]


def test_may_have_older() -> None:
    room, dm = Conversation("dev", "dev", "room"), Conversation(dm_key("bob"), "bob", "dm")
    assert not room.may_have_older and not dm.may_have_older  # nothing loaded
    room.add(msg("2", seq=2), me="x")
    dm.add(Line("dm", T0, "bob", "hi", 40), me="x")
    assert room.may_have_older and dm.may_have_older  # DM ids do not start at 1
    room.insert_older([msg("1", seq=1)], "x")
    assert not room.may_have_older  # a room's first message is seq 1
    dm.history_complete = True  # a short page came back
    assert not dm.may_have_older
    dm.clear()
    assert not dm.history_complete


def test_insert_older_classifies() -> None:
    conv = Conversation("dev", "dev", "room")
    conv.insert_older([msg("hey alice", sender="bob", seq=1)], "alice")
    assert conv.lines[0].mention


def _fill(conv: Conversation, n: int, start: int = 1) -> None:
    for seq in range(start, start + n):
        conv.add(msg(f"message {seq}", seq=seq), me="x")


def test_viewport_follows_the_end() -> None:
    conv = Conversation("dev", "dev", "room")
    _fill(conv, 30)
    view = conv.viewport(60, 5, "x", UTC)
    assert len(view.rows) == 5 and view.at_bottom and not view.at_top
    assert text_of(view.rows[-1]).endswith("message 30")


def test_scroll_counts_new_messages_and_keeps_the_view() -> None:
    conv = Conversation("dev", "dev", "room")
    _fill(conv, 30)
    conv.viewport(60, 5, "x", UTC)
    conv.scroll_up(5)
    assert not conv.following
    view = conv.viewport(60, 5, "x", UTC)
    assert text_of(view.rows[-1]).endswith("message 25")
    _fill(conv, 3, start=31)
    conv.add(Line("notice", T0, "bob", "bob left #dev"), me="x")
    assert conv.new_while_scrolled == 3
    view = conv.viewport(60, 5, "x", UTC)
    assert text_of(view.rows[-1]).endswith("message 25")  # the view did not move
    assert not view.at_bottom
    conv.scroll_down(100)
    view = conv.viewport(60, 5, "x", UTC)
    assert conv.following and conv.new_while_scrolled == 0 and view.at_bottom
    assert text_of(view.rows[-1]).endswith("bob left #dev")


def test_scroll_to_end_resets_the_count() -> None:
    conv = Conversation("dev", "dev", "room")
    _fill(conv, 30)
    conv.scroll_up(3)
    _fill(conv, 2, start=31)
    assert conv.new_while_scrolled == 2
    conv.scroll_to_end()
    assert conv.following and conv.new_while_scrolled == 0
    assert text_of(conv.viewport(60, 5, "x", UTC).rows[-1]).endswith("message 32")


def test_scroll_is_clamped_at_the_top() -> None:
    conv = Conversation("dev", "dev", "room")
    _fill(conv, 10)
    conv.scroll_up(1000)
    view = conv.viewport(60, 4, "x", UTC)
    assert view.at_top and not view.at_bottom
    assert text_of(view.rows[0]).endswith("message 1")
    assert conv.scroll_rows == 6
    conv.scroll_down(6)
    assert conv.following


def test_short_conversation_fits_and_is_at_top() -> None:
    conv = Conversation("dev", "dev", "room")
    _fill(conv, 2)
    conv.scroll_up(3)
    view = conv.viewport(60, 10, "x", UTC)
    assert len(view.rows) == 2 and view.at_top and view.at_bottom and conv.following


def test_more_indicator() -> None:
    assert text_of(render_more_indicator(3, 40)).strip() == "-- 3 new messages (End) --"
    assert text_of(render_more_indicator(1, 40)).strip() == "-- 1 new message (End) --"
    assert width_of(render_more_indicator(3, 10)) == 10


def test_clear() -> None:
    conv = Conversation("dev", "dev", "room")
    _fill(conv, 3)
    conv.clear()
    assert not conv.lines and conv.oldest_seq is None


def test_members() -> None:
    conv = Conversation("dev", "dev", "room")
    conv.set_member("helper", "online", bot=True)
    conv.set_member("helper", "away", text="busy")
    assert conv.members["helper"] == Member("away", True, "busy")
    conv.remove_member("HELPER")
    assert not conv.members


# -- sidebar and status ----------------------------------------------------------------------


def test_sidebar() -> None:
    dev = Conversation("dev", "dev", "room")
    ops = Conversation("ops", "ops", "room")
    bob = Conversation("dm:bob", "bob", "dm")
    members = {"zed": Member("offline"), "amy": Member("away"), "helper": Member("online", True),
               "bea": Member("online")}
    unseen = {"ops": Unseen(3, True), "dm:bob": Unseen(1, False)}
    rows = render_sidebar([dev, ops, bob], "dev", members, 20, unseen)
    texts = [text_of(r).rstrip() for r in rows]
    assert texts == ["Rooms", " #dev", "!#ops (3)", "Direct", " @bob (1)", "",
                     "Members (4)", "● bea", "● helper [bot]", "◐ amy", "○ zed"]
    assert all(width_of(r) <= 20 for r in rows)
    assert all("class:sidebar.active" in s for s, _ in rows[1])
    assert "class:sidebar.mention" in rows[2][0][0]


def test_sidebar_narrow_keeps_counts_and_widths() -> None:
    conv = Conversation("k", "a_very_long_room_name", "room")
    unseen = {"k": Unseen(12)}
    for width in (1, 3, 8, 12):
        rows = render_sidebar([conv], None, {"日本語の名前": Member("online", True)}, width,
                              unseen)
        assert all(width_of(r) <= width for r in rows)
    rows = render_sidebar([conv], None, None, 12, unseen)
    assert text_of(rows[1]).endswith("(12)")
    assert render_sidebar([conv], None, None, 0) == []


@pytest.mark.parametrize("width", [1, 5, 10, 20, 40, 80])
def test_status_is_exactly_the_width(width: int) -> None:
    for state, wait, rtt in (("connected", None, 12.4), ("reconnecting", 3.2, None),
                             ("reconnecting", None, None), ("disconnected", None, None)):
        row = render_status("alice", "#dev", "the topic \x1b[2J 日本語", state,  # type: ignore[arg-type]
                            wait, rtt, width)
        assert width_of(row) == width
        assert "\x1b" not in text_of(row)


def test_status_contents() -> None:
    row = render_status("alice", "#dev", "Deploys on Friday", "connected", None, 12.4, 60)
    text = text_of(row)
    assert text.startswith(" alice │ #dev │ Deploys on Friday")
    assert text.endswith(" connected 12 ms ")
    row = render_status("alice", "#dev", "", "reconnecting", 3.0, None, 60)
    assert text_of(row).endswith(" reconnecting in 3 s ")
    assert "class:status.reconnecting" in row[-1][0]
    narrow = text_of(render_status("alice", "#dev", "long topic here", "connected", None,
                                   None, 24))
    assert narrow.endswith(" connected ") and narrow.startswith(" alice")


def test_default_style_loads_into_prompt_toolkit() -> None:
    from prompt_toolkit.styles import Style

    style = Style.from_dict(DEFAULT_STYLE)
    attrs = style.get_attrs_for_style_str(f"class:mention {nick_style('bob')} class:nick")
    assert attrs.bold
    assert style.get_attrs_for_style_str("class:status class:status.disconnected").reverse


def test_keycaps_subdivision_flags_and_blank_fillers_are_drawn_predictably() -> None:
    assert sanitize("A 1\ufe0f\u20e3 B") == "A 1 B"
    scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    assert sanitize(scotland + " x") == "[GBSCT] x"
    assert sanitize("\u034f\u115f") == "<U+034F><U+115F>"
