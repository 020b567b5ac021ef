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
    assert split_text("one\ntwo\r\n\nthree\u2028four", 100) == ["one", "two", "three", "four"]
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
