"""Rules on what people type, shared by the broker core and ``zchat admin``: passwords,
new accounts (one by one or in a batch), away texts and reasons, room topics. Pure: each
returns the value or raises ProtocolError with the status the wire answers (422, 413).

Names follow docs/PROTOCOL.md §12 (zchat.names); look-alikes are refused by skeleton.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from zchat import wire as p
from zchat.errors import ProtocolError, Status
from zchat.names import BIDI_CONTROLS, name_key, normalize_new_name, skeleton, validate_text


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int      # 1-based line of the file (or index in a request)
    problem: str


@dataclass(frozen=True, slots=True)
class NewAccountRow:
    """One account to create, as read from a CSV line: ``password`` "" means generate."""

    line: int
    name: str
    password: str
    bot: bool


@dataclass(frozen=True, slots=True)
class CheckedAccount:
    """An account that passed ``check_batch``: display ``name``, its ``key`` and
    ``skeleton``, and ``generated`` when the password was made here."""

    line: int
    name: str
    key: str
    skeleton: str
    password: str
    bot: bool
    generated: bool = False


def check_password(password: str) -> str:
    """A password as LOGIN accepts it: not empty (422), at most MAX_PASSWORD_CHARS
    characters (413) (docs/PROTOCOL.md §6.3, §9). No minimum length: an account made
    before the broker's ``min_password_chars`` was raised still logs in. Returns it."""
    if not password:
        raise ProtocolError(Status.INVALID, "password must not be empty")
    if len(password) > p.MAX_PASSWORD_CHARS:
        raise ProtocolError(Status.TOO_LARGE,
                            f"password longer than {p.MAX_PASSWORD_CHARS} characters")
    return password


def password_too_short(min_chars: int) -> str:
    """The one wording of a new password under ``min_chars`` characters, used by the
    broker (422) and by the command line's early check alike."""
    return f"password must be at least {min_chars} characters long"


def check_new_password(password: str, min_chars: int) -> str:
    """A new password (REGISTER, SET_PASSWORD, ADMIN_SET_PASSWORD, CREATE_ACCOUNTS and
    ``zchat admin`` on the database, docs/PROTOCOL.md §6.2): ``check_password``; not
    blank (only white space: eight spaces are no secret); no control character
    (category Cc: a newline, a tab, an escape), which no one could type at a password
    prompt, so the account could never be logged in to; and at least ``min_chars``
    characters (the broker's ``min_password_chars``). Else ProtocolError 422, each in
    one wording that the command line's early checks share. Passwords set before are
    not checked again: LOGIN takes them (``check_password``). Returns it."""
    check_password(password)
    if password.isspace():
        raise ProtocolError(Status.INVALID, "password must not be blank (only white space)")
    control = next((ch for ch in password if unicodedata.category(ch) == "Cc"), None)
    if control is not None:
        raise ProtocolError(Status.INVALID,
                            f"password contains a control character (U+{ord(control):04X}), "
                            "which no one could type at a password prompt")
    if len(password) < min_chars:
        raise ProtocolError(Status.INVALID, password_too_short(min_chars))
    return password


def check_new_account(name: str, password: str, min_password_chars: int
                      ) -> tuple[str, str, str]:
    """(display name, key, skeleton) of a new account, by the broker's rules for REGISTER
    (docs/PROTOCOL.md §12: zchat.names.normalize_new_name; ``check_new_password``).
    Raises ProtocolError 422/413."""
    display = normalize_new_name(name)
    check_new_password(password, min_password_chars)
    return display, name_key(display), skeleton(display)


def check_batch(rows: Iterable[NewAccountRow], taken: Callable[[str, str], bool],
                min_password_chars: int) -> tuple[list[CheckedAccount], list[BadRow]]:
    """Check every row (all of them, so that every problem is reported at once).

    ``taken(key, skeleton)`` says whether an existing account has that key or a
    look-alike name. Two rows of the batch with the same key or skeleton are a conflict
    too. Rows with an empty password must have been given one before (``fill_passwords``);
    each password must have at least ``min_password_chars`` characters. Returns (good rows, bad rows); the caller creates nothing when any row is bad.
    """
    good: list[CheckedAccount] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}  # key or skeleton -> first line
    for row in rows:
        try:
            display, key, skel = check_new_account(row.name, row.password,
                                                   min_password_chars)
        except ProtocolError as exc:
            # Never echo a refused name: with another separator (``xena;pw-xena``) it
            # holds the whole row, password included; the reason names the rule.
            hint = " (are the columns separated by ';' or tabs? use commas)" \
                if any(c in row.name for c in ";\t") else ""
            bad.append(BadRow(row.line, rule_only(exc.reason) + hint))
            continue
        # Nor an accepted one: in a header-less file with the columns swapped, the "name"
        # is a password (a tester's shared class password was echoed by this check).
        first = seen.get("k:" + key) or seen.get("s:" + skel)
        if first is not None:
            bad.append(BadRow(row.line, f"name: the same as or too like the name on line "
                                        f"{first}"))
            continue
        seen["k:" + key] = seen["s:" + skel] = row.line
        if taken(key, skel):
            bad.append(BadRow(row.line, "name: taken by an existing account (or too like "
                                        "an existing name)"))
            continue
        good.append(CheckedAccount(row.line, display, key, skel, row.password, row.bot))
    return good, bad


#: The parts of a name-rule refusal (zchat.names.normalize_name's wording) that hold a
#: piece of the refused value: the character found, its code point and name, the length.
_VALUE_PARTS = (
    (re.compile(r"; found .*$", re.DOTALL), ""),
    (re.compile(r" \(U\+[0-9A-F]{4,6}[^)]*\)"), ""),
    (re.compile(r" is \d+ characters; the limit is (\d+)"), r" is longer than \1 characters"),
)


def rule_only(reason: str) -> str:
    """``reason`` (a name or password refusal) without any piece of the refused value:
    the rule only. A bulk-creation row's "name" may be a password (columns swapped, or
    another separator), so a CSV error never shows a character, code point or length of
    it (docs/admin.md "Creating a class")."""
    for pattern, replacement in _VALUE_PARTS:
        reason = pattern.sub(replacement, reason)
    return reason


def check_away_text(text: str, what: str) -> str:
    """An away or quit message: at most MAX_AWAY_TEXT_CHARS characters (413) and, when
    not empty, the message text rules (422), on one line: no newline, tab or line
    separator, since clients print it inside one line (docs/PROTOCOL.md §12)."""
    if len(text) > p.MAX_AWAY_TEXT_CHARS:
        raise ProtocolError(Status.TOO_LARGE,
                            f"{what} longer than {p.MAX_AWAY_TEXT_CHARS} characters")
    if text:
        validate_text(text, p.MAX_AWAY_TEXT_CHARS * 4)
        if any(ch in "\n\t\u2028\u2029" for ch in text):
            raise ProtocolError(Status.INVALID, f"the {what} must be one line: no line "
                                "breaks or tabs")
    return text


def check_topic(topic: str) -> str:
    """A room topic: at most MAX_TOPIC_CHARS characters (413); may be empty; one line
    with no control character at all, not even newline or tab (422)."""
    if len(topic) > p.MAX_TOPIC_CHARS:
        raise ProtocolError(Status.TOO_LARGE,
                            f"topic longer than {p.MAX_TOPIC_CHARS} characters")
    for ch in topic:
        cat = unicodedata.category(ch)
        if ch in "\r\n\u2028\u2029":
            raise ProtocolError(Status.INVALID, "a topic is one line: no line breaks")
        if cat == "Cc":
            raise ProtocolError(Status.INVALID, "topic contains a control character "
                                f"(U+{ord(ch):04X})")
        if ch in BIDI_CONTROLS:
            raise ProtocolError(Status.INVALID, "topic contains a bidirectional "
                                f"control character (U+{ord(ch):04X})")
        if cat == "Cs":
            raise ProtocolError(Status.INVALID, "topic is not valid Unicode")
    return topic
