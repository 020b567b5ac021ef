"""Rules for account and room names, and for message text (docs/PROTOCOL.md §12).

Pure functions. Names follow the identifier profile of Unicode TR #36/UTS #39:
NFKC-normalised, 1–32 characters of letters, digits, ``_``, ``-`` and ``.``; unique
case-insensitively (the *key* is the NFKC casefold); no mixing of scripts beyond UTS #39's
"highly restrictive" combinations (Latin + Han + Hiragana + Katakana, Latin + Han +
Bopomofo, Latin + Han + Hangul); and a look-alike *skeleton* so that ``pаypal`` (Cyrillic
а), ``a1ice`` or ``alice_`` cannot pose as ``paypal`` or ``alice``. Script and confusable
data come from the confusable-homoglyphs package (the Unicode consortium's tables).

``normalize_name`` is what every name meets, and looks names up; ``normalize_new_name``
adds the rules for a name being created (a letter or digit in it, no ``.`` or ``-`` at its
ends), which came later: a name made before them is still found, logged in and joined.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from confusable_homoglyphs import categories, utils

from zchat.errors import ProtocolError, Status

MAX_NAME_CHARS = 32
_PUNCT = frozenset("_-.")
_IGNORED_SCRIPTS = frozenset({"COMMON", "INHERITED"})
_ALLOWED_SCRIPT_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
#: Format characters that hide or reorder text: zero-width and bidi controls.
_INVISIBLE = frozenset(
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\u202a\u202b\u202c\u202d\u202e"
    "\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)

#: Bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): refused in
#: message text because they reorder what a terminal prints after them ("Trojan Source",
#: CVE-2021-42574). The marks U+200E/U+200F/U+061C and ZWJ/ZWNJ stay allowed: they reorder
#: nothing beyond themselves, and emoji sequences and Persian need ZWJ/ZWNJ.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _describe(ch: str) -> str:
    fallback = "control character" if unicodedata.category(ch) == "Cc" else "unnamed character"
    return f"U+{ord(ch):04X} {unicodedata.name(ch, fallback)}"


def normalize_name(raw: str, what: str = "name") -> str:
    """Return the NFKC form of ``raw`` if it is a valid name, else raise.

    Raises ProtocolError(422) naming the rule that failed: empty or longer than 32
    characters; control, whitespace, zero-width or bidi characters; any character other
    than letters, digits, ``_``, ``-``, ``.``; a leading ``-``; scripts mixed outside
    UTS #39's highly restrictive profile; a name in one non-Latin script whose every letter
    has a Latin look-alike (UTS #39 §4 whole-script confusable).
    """
    name = unicodedata.normalize("NFKC", raw)
    if not name:
        raise ProtocolError(Status.INVALID, f"{what} must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ProtocolError(Status.INVALID,
                            f"{what} is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    for ch in name:
        if ch in _INVISIBLE:
            raise ProtocolError(Status.INVALID,
                                f"{what} contains an invisible character ({_describe(ch)})")
        cat = unicodedata.category(ch)
        if cat.startswith("C"):
            raise ProtocolError(Status.INVALID,
                                f"{what} contains a control character ({_describe(ch)})")
        if cat.startswith("Z"):
            raise ProtocolError(Status.INVALID, f"{what} must not contain whitespace")
        if not (cat[0] in "LN" or cat == "Mn" or cat == "Mc" or ch in _PUNCT):
            raise ProtocolError(Status.INVALID,
                                f"{what} may hold only letters, digits, '_', '-' and '.'; "
                                f"found {ch!r}")
    if name.startswith("-"):
        raise ProtocolError(Status.INVALID,
                            f"{what} must not start with '-' (it would read as a "
                            "command-line option)")
    scripts = set(categories.unique_aliases(name)) - _IGNORED_SCRIPTS
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _ALLOWED_SCRIPT_SETS):
        raise ProtocolError(Status.INVALID,
                            f"{what} mixes scripts ({', '.join(sorted(scripts))}); "
                            "use one script so that it cannot imitate another name")
    if scripts and "LATIN" not in scripts and _whole_script_confusable(name):
        raise ProtocolError(Status.INVALID,
                            f"{what} could be mistaken for a Latin name; every letter of it "
                            "has a Latin look-alike, so use at least one letter that has "
                            "none")
    return name


#: Where a new name may not start or end (``normalize_new_name``): in a sentence such an
#: end reads as punctuation ("thanks alice."), and ``mention_words`` strips it.
_NO_EDGE = frozenset(".-")


def normalize_new_name(raw: str, what: str = "name") -> str:
    """Return the NFKC form of ``raw`` if it may be given to a new account or room
    (REGISTER, CREATE_ACCOUNTS, ``zchat admin create``, a JOIN that creates the room;
    docs/PROTOCOL.md §12), else raise ProtocolError(422).

    ``normalize_name``'s rules, and two more: it holds at least one letter or digit (not
    ``.``, ``...`` or ``_``), and it neither starts nor ends with ``.`` or ``-``, which a
    sentence around it would swallow ("thanks alice." mentions ``alice``,
    ``mention_words``). Names made before these rules keep working: lookups use
    ``normalize_name``.
    """
    name = normalize_name(raw, what)
    if name[0] in _NO_EDGE or name[-1] in _NO_EDGE:
        raise ProtocolError(Status.INVALID,
                            f"{what} must start and end with a letter, digit or '_': a '.' "
                            "or '-' at an end would read as punctuation (\"thanks alice.\")")
    if not any(unicodedata.category(ch)[0] in "LN" for ch in name):
        raise ProtocolError(Status.INVALID, f"{what} must hold at least one letter or digit")
    return name


@functools.cache
def _latin_look_alike(ch: str) -> bool:
    """Whether the Unicode confusables table gives ``ch`` a look-alike made only of basic
    Latin letters and digits (``а`` -> ``a``, ``Β`` -> ``B``, ``ӏ`` -> ``i``).

    Only ASCII targets count: the table also pairs many letters with rare Latin ones (small
    capitals such as ``ᴍ`` for Cyrillic ``м``), which no Latin name is written with.
    """
    for glyph in utils.load("confusables.json").get(ch, ()):
        other = glyph["c"].replace("\u200e", "")  # the table wraps RTL glyphs in LRMs
        if other and other.isascii() and other.isalnum():
            return True
    return False


def _whole_script_confusable(name: str) -> bool:
    """UTS #39 §4 whole-script confusable with Latin: every letter of ``name`` (digits,
    punctuation and combining marks aside) has a Latin look-alike, so the whole name can
    pass for a Latin one (all-Cyrillic ``аӏісе``, Greek ``ΑΒΕ``)."""
    letters = [ch for ch in name if unicodedata.category(ch).startswith("L")]
    return bool(letters) and all(_latin_look_alike(ch) for ch in letters)


def name_key(name: str) -> str:
    """The case-insensitive identity of a valid name: NFKC casefold (used in topics)."""
    return unicodedata.normalize("NFKC", name.casefold())


@functools.cache
def _confusable_classes() -> dict[str, str]:
    """Each confusable character -> the representative of its look-alike class.

    Classes are the transitive closure (union-find) of the Unicode confusables table, so
    the mapping is consistent: if a looks like b and b like c, all three share one
    representative (the smallest code point). Built once, on first use (~50 ms).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for char, glyphs in utils.load("confusables.json").items():
        for glyph in glyphs:
            other = glyph["c"].replace("\u200e", "")  # the table wraps RTL glyphs in LRMs
            if len(char) == 1 and len(other) == 1:
                a, b = find(char), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {ch: find(ch) for ch in parent}


def _map_confusables(text: str) -> str:
    classes = _confusable_classes()
    return "".join(classes.get(ch, ch) for ch in text)


def _strip_marks(text: str) -> str:
    """``text`` decomposed (NFD) without its nonspacing marks (Mn): ``alíce`` -> ``alice``."""
    return "".join(ch for ch in unicodedata.normalize("NFD", text)
                   if unicodedata.category(ch) != "Mn")


#: Look-alike sequences of lower-case ASCII added to Unicode's confusables table (see
#: ``skeleton``), applied before it.
ASCII_LOOK_ALIKES: tuple[tuple[str, str], ...] = (
    ("rn", "m"), ("vv", "w"), ("cl", "d"), ("0", "o"))


#: Latin small capitals -> the lower-case ASCII letter they look like. Unicode's
#: confusables table maps only a few of them (``ᴄ``, ``ᴏ``, ``ɪ``, ``ꜱ``…) to ASCII and
#: leaves ``ᴀ``, ``ʙ``, ``ᴅ``, ``ᴇ``, ``ɢ``, ``ʜ``, ``ʟ``, ``ɴ``, ``ʀ``… unmapped or paired
#: only with Cherokee and Cyrillic letters, so ``ᴀlice`` could sit beside ``alice``.
#: Applied before each pass over the table (see ``skeleton``). The Phonetic Extensions
#: block (U+1D00..), the IPA block's small capitals and Latin Extended-D's ``ꜰ ꜱ ꞯ``.
SMALL_CAPITALS: dict[str, str] = {
    "\u1d00": "a", "\u0299": "b", "\u1d04": "c", "\u1d05": "d", "\u1d07": "e",
    "\ua730": "f", "\u0262": "g", "\u029c": "h", "\u026a": "i", "\u1d0a": "j",
    "\u1d0b": "k", "\u029f": "l", "\u1d0d": "m", "\u0274": "n", "\u1d0f": "o",
    "\u1d18": "p", "\ua7af": "q", "\u0280": "r", "\ua731": "s", "\u1d1b": "t",
    "\u1d1c": "u", "\u1d20": "v", "\u1d21": "w", "\u028f": "y", "\u1d22": "z",
    "\u1d01": "ae", "\u0276": "oe",
}
_SMALL_CAPITALS = str.maketrans(SMALL_CAPITALS)

#: The punctuation a name may hold (``_PUNCT``), which skeletons leave out.
_DROP_PUNCT = str.maketrans("", "", "".join(sorted(_PUNCT)))


def skeleton(name: str) -> str:
    """A look-alike skeleton of a valid name: two names with equal skeletons can be
    mistaken for each other (``alice``/``a1ice``/``aIice``/``alíce``, ``paypal``/
    ``pаypal``, ``alice``/``alice.``/``Alice_``/``al-ice``), so only one of them may
    exist. After UTS #39 §4 over the same confusables table, with case folded in between
    (names are unique case-insensitively): drop nonspacing marks, map, fold, drop marks,
    map again.

    The punctuation a name may hold, ``_``, ``-`` and ``.`` (names hold no other
    punctuation and no symbols), is left out first, and so is whatever the table maps to
    it at the end (Arabic-Indic zero ``٠`` looks like ``.``): names that differ only by
    punctuation cannot coexist, and a name of punctuation alone has an empty skeleton.

    Unicode's table maps ``0`` only to ``O`` and knows ``rn`` as ``m`` but not ``vv`` as
    ``w`` or ``cl`` as ``d``; ``ASCII_LOOK_ALIKES`` adds these, so ``b0b``, ``rnallory``,
    ``vvendy`` and ``clave`` cannot pose as ``bob``, ``mallory``, ``wendy`` and ``dave``
    (and ``modern``/``modem`` cannot both exist). Latin small capitals become their
    letters (``SMALL_CAPITALS``) before each pass, so ``ᴀlice`` and ``ʙᴏʙ`` collide
    with ``alice`` and ``bob`` too (after a pass, a letter the table paired with a small
    capital, such as Cyrillic ``в`` with ``ʙ``, follows it)."""
    plain = _strip_marks(unicodedata.normalize("NFKC", name)).translate(_SMALL_CAPITALS)
    plain = plain.translate(_DROP_PUNCT)
    for seq, like in ASCII_LOOK_ALIKES:
        plain = plain.replace(seq, like)
    once = _map_confusables(plain)
    folded = _strip_marks(unicodedata.normalize("NFKC", once.casefold()))
    return _map_confusables(folded.translate(_SMALL_CAPITALS)).translate(_DROP_PUNCT)


#: Characters that draw nothing visible on their own: format characters and lone
#: combining marks (categories), and blank letters and symbols (Hangul fillers, the blank
#: braille pattern). A text made only of these and white space is empty.
_UNSEEN = frozenset({"Cf", "Mn", "Me"})
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


#: What validate_text refuses, as one character class: category Cc (exactly U+0000-U+001F
#: and U+007F-U+009F in Unicode) except newline and tab, the bidi controls, and the
#: surrogates (category Cs, U+D800-U+DFFF: an unpaired one reaches Python from JSON).
_REFUSED_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e"
                              "\u2066-\u2069\ud800-\udfff]")


#: What ends a line of message text as terminals and the console draw it: newline, and
#: the Unicode line and paragraph separators (every other line-breaking control is refused).
LINE_BREAKS = ("\n", "\u2028", "\u2029")


def text_lines(text: str) -> int:
    """Lines ``text`` is drawn as: one more than its line breaks (``LINE_BREAKS``), so
    ``"a"`` is 1, ``"a\nb"`` 2 and ``"a\n"`` 2 (an empty last line still takes a row)."""
    return 1 + sum(text.count(br) for br in LINE_BREAKS)


def validate_text(text: str, max_bytes: int, max_lines: int = 0) -> str:
    """Return ``text`` if it may be sent as a message, else raise.

    Raises ProtocolError 422 when it is empty or whitespace only or holds a control
    character other than newline and tab, a bidi embedding, override or isolate
    (U+202A–U+202E, U+2066–U+2069), or an unpaired surrogate; 413 when its UTF-8
    form exceeds ``max_bytes``, or when it has more than ``max_lines`` lines
    (``text_lines``; 0: no bound). Text is never cut: an over-long message is refused
    whole (docs/PROTOCOL.md §12).
    """
    if all(ch.isspace() or ch in _BLANK_LOOKING or unicodedata.category(ch) in _UNSEEN
           for ch in text):
        # nothing visible: empty, blank, or only invisible format characters (U+200B…)
        raise ProtocolError(Status.INVALID, "message text is empty")
    bad = _REFUSED_IN_TEXT.search(text)  # one C-level scan, not a Python loop per char
    if bad is not None:
        ch = bad.group()
        if ch in BIDI_CONTROLS:
            raise ProtocolError(Status.INVALID, "message text contains a bidirectional "
                                                f"control character ({_describe(ch)})")
        if unicodedata.category(ch) == "Cs":
            raise ProtocolError(Status.INVALID, "message text is not valid Unicode")
        raise ProtocolError(Status.INVALID,
                            f"message text contains a control character ({_describe(ch)})")
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > max_bytes:
        raise ProtocolError(Status.TOO_LARGE,
                            f"message text is {size} bytes; the limit is {max_bytes}")
    if max_lines:
        lines = text_lines(text)
        if lines > max_lines:
            raise ProtocolError(Status.TOO_LARGE,
                                f"message text is {lines} lines; the limit is {max_lines}")
    return text


# -- mentions (docs/PROTOCOL.md §6.49.2) ------------------------------------------------------

#: Splits a folded text at every ASCII character that cannot be in a name (white space,
#: punctuation but ``_ . -``, ``@``): what is left are ASCII words and non-ASCII stretches.
_ASCII_NON_NAME = re.compile(r"[\x00-\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]+")


def _is_name_char(ch: str) -> bool:
    """A character a name may hold (``normalize_name``): a letter, a digit, a combining
    mark (Mn, Mc), ``_``, ``-`` or ``.``."""
    cat = unicodedata.category(ch)
    return cat[0] in "LN" or cat == "Mn" or cat == "Mc" or ch in _PUNCT


def _name_runs(token: str) -> list[str]:
    """The maximal runs of name characters in a token with non-ASCII characters."""
    runs, start = [], None
    for i, ch in enumerate(token):
        if _is_name_char(ch):
            if start is None:
                start = i
        elif start is not None:
            runs.append(token[start:i])
            start = None
    if start is not None:
        runs.append(token[start:])
    return runs


def mention_words(text: str) -> set[str]:
    """The name keys that message ``text`` mentions (docs/PROTOCOL.md §6.49.2): its
    *words* — maximal runs of name characters (letters, digits, combining marks, ``_``,
    ``-``, ``.``) in the text's key form (NFKC casefold, as ``name_key``) — each without
    the ``.`` and ``-`` it starts or ends with, which are the sentence's punctuation
    (``alice.`` at the end of a sentence, ``-alice``; no new name starts or ends with
    them, ``normalize_new_name``). So ``Hi @Alice!``, ``ALICE: look`` and ``alice.``
    mention ``alice``, and never an account named ``alice.`` made before that rule;
    ``malice``, ``alice_b``, ``alice.smith`` and ``bob-alice`` do not mention ``alice``.
    A text is folded once and scanned in C but for its non-ASCII stretches, so this is
    cheap enough for every SEND (the broker counts mentions as it stores them)."""
    folded = name_key(text)
    tokens = _ASCII_NON_NAME.split(folded)
    if not folded.isascii():
        tokens = [run for token in tokens
                  for run in ((token,) if token.isascii() else _name_runs(token))]
    words = set(tokens)
    for token in tokens:  # the rare word with a "." or "-" at an end: only without it
        if token and (token[0] in ".-" or token[-1] in ".-"):
            words.discard(token)
            words.add(token.strip(".-"))
    words.discard("")
    return words


def mentions(text: str, name: str) -> bool:
    """Whether message ``text`` mentions the account ``name`` (``mention_words``)."""
    return bool(name) and name_key(name) in mention_words(text)
