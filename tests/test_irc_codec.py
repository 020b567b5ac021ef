"""The IRC line codec (zchat/irc/codec.py): tags, trailing parameters, the 512-byte line,
splitting texts at character boundaries, incoming lines bounded."""

from __future__ import annotations

import pytest

from zchat.irc.codec import (
    MAX_INCOMING_LINE_BYTES,
    MAX_LINE_BYTES,
    IrcParseError,
    LineBuffer,
    Message,
    cut_text,
    graphemes,
    irc_lower,
    parse_line,
    serialize,
    split_text,
)


def test_parse_tags_source_and_trailing() -> None:
    msg = parse_line(b"@time=2026-01-01T00:00:00.000Z;+x=a\\sb\\:c;flag :nick!u@h "
                     b"privmsg #dev :hello: world ")
    assert msg.tags == {"time": "2026-01-01T00:00:00.000Z", "+x": "a b;c", "flag": ""}
    assert msg.source == "nick!u@h"
    assert msg.command == "PRIVMSG"
    assert msg.params == ("#dev", "hello: world ")


def test_parse_middle_params_and_empty_trailing() -> None:
    assert parse_line("USER u 0 * :").params == ("u", "0", "*", "")
    assert parse_line("JOIN   #a,#b  k").params == ("#a,#b", "k")


@pytest.mark.parametrize("line", [b"", b"   ", b"@a=b", b":src"])
def test_no_command_is_a_parse_error(line: bytes) -> None:
    with pytest.raises(IrcParseError):
        parse_line(line)


def test_bad_utf8_is_the_callers_to_report() -> None:
    with pytest.raises(UnicodeDecodeError):
        parse_line(b"PRIVMSG #a :\xff")


def test_serialize_round_trips() -> None:
    msg = Message("PRIVMSG", ("#dev", "a b"), source="x!~u@zchat",
                  tags={"time": "t", "msgid": "dev/3", "k": "a;b c\\"})
    raw = serialize(msg)
    assert raw.endswith(b"\r\n")
    assert parse_line(raw[:-2]) == msg


def test_serialize_trailing_only_when_needed() -> None:
    assert serialize(Message("PART", ("#dev", "bye"))) == b"PART #dev bye\r\n"
    assert serialize(Message("TOPIC", ("#dev", ""))) == b"TOPIC #dev :\r\n"
    assert serialize(Message("X", (":smile",))) == b"X ::smile\r\n"


def test_serialize_never_sends_an_overlong_or_broken_line() -> None:
    raw = serialize(Message("PRIVMSG", ("#dev", "é" * 600)))
    assert len(raw) <= MAX_LINE_BYTES
    raw[:-2].decode("utf-8")  # cut at a character boundary
    assert b"\n" not in serialize(Message("PRIVMSG", ("#dev", "a\r\nQUIT")))[:-2]


def test_split_text_lines_and_characters() -> None:
    assert split_text("one\ntwo\r\n\nthree\u2028four", 100) == ["one", "two", "", "three",
                                                                 "four"]
    assert split_text("", 100) == []
    pieces = split_text("日本語" * 100, 31)
    assert "".join(pieces) == "日本語" * 100
    assert all(len(p.encode()) <= 31 for p in pieces)
    text = ("word " * 40).strip()
    words = split_text(text, 50)
    assert all(len(p.encode()) <= 50 for p in words)
    assert "".join(words) == text  # cut after a space, which stays at the line's end
    assert all(p.endswith(" ") for p in words[:-1])


def test_split_text_keeps_every_whitespace_character() -> None:
    """No character is lost at a split (a tester's 600 spaces arrived as 133, and a run
    of spaces was sent as a line of nothing but spaces with the rest dropped)."""
    for text in ("A" * 10 + " " * 600 + "B" * 10, "a" + " " * 1000 + "b",
                 " " * 700, "x " * 300, "\t" + "é " * 400):
        pieces = split_text(text, 100)
        assert "".join(pieces) == text, (text[:20], pieces)
        assert all(0 < len(p.encode()) <= 100 for p in pieces)


def test_casemapping_ascii() -> None:
    assert irc_lower("#Dev[]É") == "#dev[]É"


def test_line_buffer_splits_and_bounds() -> None:
    buf = LineBuffer()
    assert buf.receive_data(b"NICK a\r\nUSER") == [b"NICK a"]
    assert buf.receive_data(b" u 0 * :x\n\r\n") == [b"USER u 0 * :x"]
    # a line that never ends is dropped once it passes the bound, reported once
    out = buf.receive_data(b"x" * (MAX_INCOMING_LINE_BYTES + 1))
    assert out == [None]
    assert buf.receive_data(b"y" * 10_000) == []
    assert buf.receive_data(b"rest\r\nPING a\r\n") == [b"PING a"]


#: Extended grapheme clusters built after lines of Unicode's GraphemeBreakTest.txt (the
#: rule that holds each together in brackets): none may be cut across two IRC lines.
CLUSTERS = {
    "family (GB11, ZWJ)": "\U0001F469\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
    "flag (GB12, regional indicator pair)": "\U0001F1EB\U0001F1F7",
    "e + U+0301 (GB9, Extend)": "e\u0301",
    "e + three marks (GB9)": "e\u0301\u0323\u0308",
    "Hangul L V T jamo (GB6, GB7, GB8)": "\u1100\u1161\u11A8",
    "Devanagari conjunct with virama (GB9c)": "\u0915\u094D\u0937\u093F",
    "Devanagari SpacingMark (GB9a)": "\u0915\u093F",
    "heart + VS16 (GB9, variation selector)": "\u2764\uFE0F",
    "thumbs up + skin tone (GB9, Extend)": "\U0001F44D\U0001F3FD",
    "keycap (GB9)": "1\uFE0F\u20E3",
}


@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_graphemes_follow_uax29(name: str) -> None:
    cluster = CLUSTERS[name]
    assert graphemes(cluster) == [cluster]
    assert graphemes("a" + cluster + "b") == ["a", cluster, "b"]  # GB999 around it


def test_graphemes_break_where_the_rules_say() -> None:
    # GB12/GB13: regional indicators pair up from the start; a third starts a new flag
    assert graphemes("\U0001F1E6\U0001F1E8\U0001F1E6") == ["\U0001F1E6\U0001F1E8",
                                                                "\U0001F1E6"]
    assert graphemes("ab") == ["a", "b"]                   # GB999
    assert graphemes("\u0301a") == ["\u0301", "a"]        # a lone mark is a cluster (GB2)
    assert graphemes("\u1100\u1100\u1161") == ["\u1100\u1100\u1161"]  # GB6: L x L


def _cut_offsets(pieces: list[str]) -> set[int]:
    out, at = set(), 0
    for piece in pieces[:-1]:
        at += len(piece)
        out.add(at)
    return out


@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_split_text_never_cuts_a_grapheme_cluster(name: str) -> None:
    """The old split cut at UTF-8 character boundaries: a family emoji or a flag landed
    half on one IRC line and half on the next."""
    cluster = CLUSTERS[name]
    size = len(cluster.encode())
    for budget in range(max(size, 4), size + 12):
        for lead in range(0, 12):
            text = "x" * lead + cluster * 5
            pieces = split_text(text, budget)
            assert "".join(pieces) == text
            assert all(len(p.encode()) <= budget for p in pieces)
            bounds, at = set(), 0
            for g in graphemes(text):
                at += len(g)
                bounds.add(at)
            assert _cut_offsets(pieces) <= bounds, (budget, lead, pieces)


def test_a_cluster_longer_than_a_line_is_cut_between_its_code_points() -> None:
    zalgo = "a" + "\u0301\u0316\u0340" * 400      # one cluster of 2,401 bytes
    pieces = split_text(zalgo + " ok", 100)
    assert "".join(pieces) == zalgo + " ok"
    assert all(0 < len(p.encode()) <= 100 for p in pieces)
    assert cut_text(zalgo, 10) == zalgo[:5]   # 1 + 2 + 2 + 2 bytes, then U+0316 no more
    assert cut_text("\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA", 11) \
        == "\U0001F1EB\U0001F1F7"


def test_split_text_keeps_blank_lines() -> None:
    """A blank line of a zchat text used to vanish on IRC ("a\\n\\nb" came as two lines)."""
    assert split_text("a\n\nb", 100) == ["a", "", "b"]
    assert split_text("a\n", 100) == ["a", ""]
    assert split_text("\n", 100) == ["", ""]


def test_serialize_cuts_an_overlong_line_between_clusters() -> None:
    family = CLUSTERS["family (GB11, ZWJ)"]
    raw = serialize(Message("PRIVMSG", ("#dev", "x" * 3 + family * 30)))
    body = raw[:-2].decode("utf-8")
    assert len(raw) <= MAX_LINE_BYTES
    assert body.endswith(family)


@pytest.mark.parametrize("chunks", [
    [b"PING a\rPING b\r"],                  # bare CR
    [b"PING a\nPING b\n"],                  # bare LF
    [b"PING a\r\nPING b\r\n"],              # CRLF
    [b"PING a\r", b"\nPING b\r", b"\n"],     # CRLF cut between reads
    [b"PING a\r", b"\n", b"PING b\r\n"],
    [b"PING a\r\r\nPING b\n\r"],            # stray terminators: empty lines, skipped
])
def test_line_buffer_takes_cr_lf_and_crlf(chunks: list[bytes]) -> None:
    buf = LineBuffer()
    lines: list[bytes | None] = []
    for chunk in chunks:
        lines += buf.receive_data(chunk)
    assert lines == [b"PING a", b"PING b"]


def test_a_bare_cr_line_is_complete_at_once() -> None:
    buf = LineBuffer()
    assert buf.receive_data(b"NICK a\r") == [b"NICK a"]
    assert buf.receive_data(b"\nUSER u 0 * x\r") == [b"USER u 0 * x"]
