"""The IRC line codec: parse and serialize IRC messages with IRCv3 message tags
(https://modern.ircdocs.horse/#message-format, https://ircv3.net/specs/extensions/message-tags),
split incoming bytes into lines, and split zchat texts into IRC lines.

Pure: no sockets, no clock. Errors are the peer's fault (``IrcParseError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import regex

#: The body of a line (source, command, parameters and CRLF) may be at most 512 bytes
#: (RFC 1459 §2.3, Modern "Message format").
MAX_LINE_BYTES = 512
#: Tags a client may send: 4094 bytes plus "@" and the space (message-tags spec); a
#: server may send 8191 (its own 4096 plus the client's).
MAX_CLIENT_TAGS_BYTES = 4096
MAX_TAGS_BYTES = 8191
#: Most bytes buffered for one line before it counts as overlong and is dropped
#: (ERR_INPUTTOOLONG): the client's tags and a full body.
MAX_INCOMING_LINE_BYTES = MAX_CLIENT_TAGS_BYTES + MAX_LINE_BYTES
#: Most parameters of one message (RFC 2812 §2.3: 14 middles and a trailing).
MAX_PARAMS = 15

_TAG_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


class IrcParseError(ValueError):
    """A line that is not an IRC message (the peer's fault)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One IRC message: ``tags`` (name -> value, "" for a tag without one), ``source``
    ("" when none), ``command`` (upper case, or a 3-digit numeric) and ``params`` (the
    last may hold spaces)."""

    command: str
    params: tuple[str, ...] = ()
    source: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def escape_tag_value(value: str) -> str:
    return "".join(_TAG_ESCAPES.get(ch, ch) for ch in value)


def unescape_tag_value(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 < len(value):
                out.append(_TAG_UNESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_line(line: bytes | str) -> Message:
    """One IRC message from one line (without its CRLF). Bytes are decoded as UTF-8
    (a ``UnicodeDecodeError`` is the caller's to turn into a FAIL: UTF8ONLY). Raises
    IrcParseError for an empty line or one without a command."""
    text = line.decode("utf-8") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    tags: dict[str, str] = {}
    rest = text.lstrip(" ")
    if rest.startswith("@"):
        raw_tags, _, rest = rest[1:].partition(" ")
        for item in raw_tags.split(";"):
            if not item:
                continue
            key, _, value = item.partition("=")
            tags[key] = unescape_tag_value(value)
        rest = rest.lstrip(" ")
    source = ""
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing: str | None = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    elif rest.startswith(":"):
        rest, trailing = "", rest[1:]
    words = [w for w in rest.split(" ") if w]
    if not words:
        raise IrcParseError("no command")
    command, params = words[0].upper(), words[1:]
    if trailing is not None:
        params.append(trailing)
    return Message(command=command, params=tuple(params), source=source, tags=tags)


def serialize(msg: Message) -> bytes:
    """``msg`` as one line with CRLF. The last parameter is sent as a trailing one (after
    ":") when it is empty, holds a space or starts with ":". The caller keeps the body
    within MAX_LINE_BYTES (``split_text``, ``fit_last_param``); a longer one is cut
    at a grapheme cluster boundary (``cut_text``) rather than sent, so that no peer sees an
    overlong line."""
    parts: list[str] = []
    if msg.source:
        parts.append(":" + msg.source)
    parts.append(msg.command)
    for i, param in enumerate(msg.params):
        last = i == len(msg.params) - 1
        if last and (not param or " " in param or param.startswith(":")):
            parts.append(":" + param)
        else:
            parts.append(param)
    body = " ".join(parts).replace("\r", " ").replace("\n", " ").replace("\0", " ")
    raw = body.encode("utf-8")
    if len(raw) > MAX_LINE_BYTES - 2:
        raw = cut_text(body, MAX_LINE_BYTES - 2).encode("utf-8")
    if msg.tags:
        tag_text = ";".join(k if v == "" else f"{k}={escape_tag_value(v)}"
                            for k, v in msg.tags.items())
        tag_raw = ("@" + tag_text).encode("utf-8")
        if len(tag_raw) < MAX_TAGS_BYTES:
            raw = tag_raw + b" " + raw
    return raw + b"\r\n"


#: What marks a text cut to fit a line (``fit_last_param``).
CUT_MARK = "\u2026"


def body_bytes(msg: Message) -> int:
    """The UTF-8 bytes of ``msg``'s line without tags and CRLF, as ``serialize`` makes
    it but before any cut."""
    n = len(msg.command.encode("utf-8")) + sum(1 + len(p.encode("utf-8"))
                                               for p in msg.params)
    if msg.source:
        n += 2 + len(msg.source.encode("utf-8"))
    if msg.params:
        last = msg.params[-1]
        n += 1 if not last or " " in last or last.startswith(":") else 0
    return n


def fit_last_param(msg: Message) -> tuple[Message, str]:
    """``msg`` within MAX_LINE_BYTES, and "" ; or, when its line would be longer, ``msg``
    with its last parameter (a text: a topic, a reason) cut between grapheme clusters and
    ending in CUT_MARK, and the whole text, for the caller to show in other lines."""
    room = MAX_LINE_BYTES - 2 - body_bytes(msg)
    if room >= 0 or not msg.params:
        return msg, ""
    last = msg.params[-1]
    keep = len(last.encode("utf-8")) + room - len(CUT_MARK.encode("utf-8")) - 1
    cut = cut_text(last, keep) if keep >= 4 else ""
    fitted = Message(msg.command, (*msg.params[:-1], cut + CUT_MARK), msg.source, msg.tags)
    return fitted, last


def body_too_long(line: bytes) -> bool:
    """Whether ``line`` (without CRLF) has more than MAX_LINE_BYTES - 2 bytes after its
    tags, or more than MAX_CLIENT_TAGS_BYTES of tags counting the "@" and the space after
    them (ERR_INPUTTOOLONG; message-tags: "4094 bytes" of tags within those two)."""
    body = line
    if line.startswith(b"@"):
        space = line.find(b" ")  # "@", the tags and this space: MAX_CLIENT_TAGS_BYTES
        if space < 0 or space >= MAX_CLIENT_TAGS_BYTES:
            return space >= MAX_CLIENT_TAGS_BYTES
        body = line[space + 1:].lstrip(b" ")
    return len(body) > MAX_LINE_BYTES - 2


#: One extended grapheme cluster (UAX #29, "Unicode Text Segmentation"): what a reader
#: sees as one character, e.g. a ZWJ emoji sequence, a flag, a letter with its combining
#: marks, a Hangul syllable of jamo. The ``regex`` package's ``\\X`` follows the rules of
#: the Unicode version it was built with (the standard library has no segmentation).
_GRAPHEME = regex.compile(r"\X")
#: Line breaks of a zchat text (zchat.names.LINE_BREAKS) and of what IRC clients send.
_LINE_BREAK = re.compile("\r\n|[\r\n\u2028\u2029]")


def graphemes(text: str) -> list[str]:
    """``text`` as its extended grapheme clusters (UAX #29), in order."""
    return _GRAPHEME.findall(text)


def _units(line: str, max_bytes: int) -> Iterator[str]:
    """The grapheme clusters of ``line``; one longer than ``max_bytes`` UTF-8 bytes (a
    base with hundreds of combining marks) is given as runs of its code points that fit,
    the only place a cut falls inside a cluster."""
    for cluster in _GRAPHEME.findall(line):
        if len(cluster.encode("utf-8")) <= max_bytes:
            yield cluster
            continue
        run, size = "", 0
        for ch in cluster:
            n = len(ch.encode("utf-8"))
            if size + n > max_bytes:
                yield run
                run, size = "", 0
            run, size = run + ch, size + n
        if run:
            yield run


def cut_text(text: str, limit: int) -> str:
    """The longest prefix of ``text`` within ``limit`` UTF-8 bytes that ends at a
    grapheme cluster boundary (a cluster longer than ``limit`` is cut between its code
    points). ``limit`` must be at least 4 (one code point)."""
    out: list[str] = []
    size = 0
    for unit in _units(text, limit):
        n = len(unit.encode("utf-8"))
        if size + n > limit:
            break
        out.append(unit)
        size += n
    return "".join(out)


def cut_utf8(raw: bytes, limit: int) -> bytes:
    """The longest prefix of UTF-8 ``raw`` within ``limit`` bytes that ends at a
    grapheme cluster boundary (``cut_text``)."""
    if len(raw) <= limit:
        return raw
    return cut_text(raw.decode("utf-8", "replace"), limit).encode("utf-8")


def split_line(line: str, max_bytes: int) -> list[str]:
    """One line (no line break in it) as pieces of at most ``max_bytes`` UTF-8 bytes,
    cut only between grapheme clusters (UAX #29; ``_units`` for a cluster too long for
    a piece), preferring to cut just after the last space when that leaves the piece at
    least half full. Nothing is lost: ``"".join(pieces) == line``; "" gives []."""
    pieces: list[str] = []
    units: list[str] = []
    size = 0
    cut = -1        # units[:cut] end with a space and fill at least half a piece
    for unit in _units(line, max_bytes):
        n = len(unit.encode("utf-8"))
        if size + n > max_bytes:
            keep = cut if cut > 0 else len(units)
            pieces.append("".join(units[:keep]))
            units = units[keep:]
            size, cut = 0, -1
            for i, u in enumerate(units):  # the units carried over (after the space)
                if u == " " and size >= max_bytes // 2:
                    cut = i + 1
                size += len(u.encode("utf-8"))
        if unit == " " and size >= max_bytes // 2:
            cut = len(units) + 1
        units.append(unit)
        size += n
    if units:
        pieces.append("".join(units))
    return pieces


def split_text(text: str, max_bytes: int) -> list[str]:
    """``text`` as IRC message texts: one per line of it (``\\n``, ``\\r\\n``, ``\\r``,
    U+2028 and U+2029 break lines), each line cut into pieces of at most ``max_bytes``
    UTF-8 bytes between grapheme clusters (``split_line``: a ZWJ emoji, a flag or a
    letter with its combining marks is never cut across two IRC lines), preferring to
    cut just after the last space. No character is lost: the space at a cut ends the
    first piece, and a piece may be nothing but spaces or start with them (``serialize``
    sends it as a trailing parameter, which keeps them). A blank line is kept as ""
    (the caller chooses how to show it: an IRC client cannot receive an empty PRIVMSG
    outside a ``draft/multiline`` batch), so ``"a\\n\\nb"`` is ``["a", "", "b"]``; an
    empty text gives []. Raises ValueError when ``max_bytes`` is under 4."""
    return [piece for piece, _concat in split_pieces(text, max_bytes)]


def split_pieces(text: str, max_bytes: int) -> list[tuple[str, bool]]:
    """``split_text`` with each piece's place: (piece, concat), ``concat`` true for a
    piece that continues the line before it (draft/multiline-concat)."""
    if max_bytes < 4:
        raise ValueError("max_bytes must hold one character (4 bytes)")
    if not text:
        return []
    out: list[tuple[str, bool]] = []
    for line in _LINE_BREAK.split(text):
        pieces = split_line(line, max_bytes) or [""]
        out += [(piece, i > 0) for i, piece in enumerate(pieces)]
    return out


def irc_lower(name: str) -> str:
    """The ``CASEMAPPING=ascii`` fold of a nick or channel: A-Z to a-z only. Identity of
    accounts and rooms is zchat's own (``zchat.names.name_key``), which agrees on
    ASCII."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


#: A line's end from an IRC client: CRLF, or a CR or LF alone.
_LINE_END = re.compile(b"\r\n|[\r\n]")


class LineBuffer:
    """Bytes from a socket in, complete lines out (h11's ``receive_data``/``next_event``
    shape). A line longer than MAX_INCOMING_LINE_BYTES is dropped whole and reported
    once as ``None`` in ``lines()`` (ERR_INPUTTOOLONG), so a peer that never sends a line
    break holds at most that many bytes here."""

    def __init__(self, max_line_bytes: int = MAX_INCOMING_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line_bytes
        self._discarding = False
        self._after_cr = False

    def receive_data(self, data: bytes) -> list[bytes | None]:
        """Feed ``data``; return the lines it completed (without their terminator,
        empty ones skipped), ``None`` standing for each overlong line dropped. CR, LF
        and CRLF each end a line (Modern "Message format": servers accept all three);
        a CRLF cut between two reads ends one line, not two."""
        out: list[bytes | None] = []
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]      # the LF of a CRLF whose CR ended the last read
        self._after_cr = False
        self._buf += data
        while True:
            end = _LINE_END.search(self._buf)
            if end is None:
                if len(self._buf) > self._max:
                    if not self._discarding:
                        out.append(None)
                    self._discarding = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:end.start()])
            del self._buf[:end.end()]
            if end.group() == b"\r" and not self._buf:
                self._after_cr = True  # its LF may come in the next read
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self._max:
                out.append(None)
                continue
            if line.strip():
                out.append(line)
