"""docs/PROTOCOL.md documents every message type the code speaks, and nothing else.

Message headings follow the pattern stated at the top of the document's §6:
``### <section> <TYPE>`` for a request, ``### <section> <TYPE> event`` for an event,
``#### <section> <TYPE> push`` for a push and ``### <section> <TYPE> reply`` for the reply
frame types OK and ERROR. These tests fail when a type is added to zchat/wire/ without
its heading here or its round-trip case in tests/codec_examples.py (``ROUND_TRIPPED``).
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest
from codec_examples import ALL_CLASSES, ROUND_TRIPPED

from zchat import wire as p

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PROTOCOL.md"

#: A message heading: level 3 or 4, a section number, the wire TYPE, an optional kind.
MESSAGE_HEADING = re.compile(
    r"^#{3,4} (?P<num>\d+(?:\.\d+)+) (?P<type>[A-Z][A-Z_]*)(?: (?P<kind>event|push|reply))?$")
ANY_HEADING = re.compile(r"^#{1,6} ")


def _doc_lines() -> list[str]:
    """The document's lines outside fenced code blocks (a ``###`` in a fence is no heading)."""
    lines, fenced = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line.rstrip())
    return lines


def _sections() -> list[tuple[str, str, str, str]]:
    """(number, TYPE, kind, section text) of every message heading; kind is ``request``
    when the heading names none. The text runs to the next heading of any level."""
    lines = _doc_lines()
    found = []
    for i, line in enumerate(lines):
        m = MESSAGE_HEADING.match(line)
        if not m:
            continue
        end = next((j for j in range(i + 1, len(lines)) if ANY_HEADING.match(lines[j])),
                   len(lines))
        found.append((m["num"], m["type"], m["kind"] or "request", "\n".join(lines[i:end])))
    return found


SECTIONS = _sections()
CODE_KINDS: dict[str, set[str]] = {
    "request": set(p.REQUEST_TYPES),
    "event": set(p.EVENT_TYPES),
    "push": set(p.PUSH_TYPES),
    "reply": {"OK", "ERROR"},
}
CODE_NAMES = set().union(*CODE_KINDS.values())


def test_document_has_message_headings() -> None:
    assert len(SECTIONS) >= len(CODE_NAMES)


def test_documented_types_equal_code_types() -> None:
    documented = {type_ for _n, type_, _k, _t in SECTIONS}
    assert documented == CODE_NAMES, (
        f"undocumented: {sorted(CODE_NAMES - documented)}; "
        f"documented but not in code: {sorted(documented - CODE_NAMES)}")


@pytest.mark.parametrize("kind", sorted(CODE_KINDS))
def test_documented_types_per_kind(kind: str) -> None:
    documented = {type_ for _n, type_, k, _t in SECTIONS if k == kind}
    assert documented == CODE_KINDS[kind]


def test_each_message_documented_once_with_unique_numbers() -> None:
    keys = [(type_, kind) for _n, type_, kind, _t in SECTIONS]
    assert len(keys) == len(set(keys))
    numbers = [num for num, _t, _k, _s in SECTIONS]
    assert len(numbers) == len(set(numbers))


def test_fixed_section_numbers() -> None:
    """zchat/wire/ cites these numbers; they must not move."""
    by_type = {type_: num for num, type_, kind, _t in SECTIONS if kind == "request"}
    fixed = {"INFO": "6.1", "REGISTER": "6.2", "LOGIN": "6.3", "LOGOUT": "6.4", "JOIN": "6.5",
             "PART": "6.6", "DM": "6.7", "SEND": "6.8", "HISTORY": "6.9"}
    assert {t: by_type.get(t) for t in fixed} == fixed


def test_sections_cited_by_the_code_exist() -> None:
    headings = {m[1] for line in _doc_lines() if (m := re.match(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", line))}
    sources = [*sorted((ROOT / "zchat" / "wire").glob("*.py")), ROOT / "zchat" / "errors.py"]
    for path in sources:
        source = path.relative_to(ROOT)
        text = path.read_text(encoding="utf-8")
        cited = set(re.findall(r"§(\d+(?:\.\d+)*)", text))
        assert cited <= headings, f"{source} cites missing sections {sorted(cited - headings)}"


def _field_names(cls: type) -> set[str]:
    """Field names of ``cls`` and of the plain nested values (RoomState, …) it holds.
    Nested message types (MESSAGE, DM) are documented in their own sections."""
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in msgspec.structs.fields(cls):
        names.add(f.name)
        for arg in (hints[f.name], *typing.get_args(hints[f.name])):
            if (isinstance(arg, type) and issubclass(arg, msgspec.Struct)
                    and not issubclass(arg, p.Message)):
                names |= _field_names(arg)
    return names


def _documented_class(type_: str, kind: str) -> list[type]:
    if kind == "request":
        request = p.REQUEST_TYPES[type_]
        return [request, request.REPLY]
    if kind == "event":
        return [p.EVENT_TYPES[type_]]
    if kind == "push":
        return [p.PUSH_TYPES[type_]]
    return [p.Error] if type_ == "ERROR" else []  # OK bodies are in each request's section


@pytest.mark.parametrize(("type_", "kind", "text"),
                         [(t, k, s) for _n, t, k, s in SECTIONS if t in CODE_NAMES],
                         ids=[f"{t}-{k}" for _n, t, k, _s in SECTIONS if t in CODE_NAMES])
def test_every_field_is_documented_in_its_section(type_: str, kind: str, text: str) -> None:
    for cls in _documented_class(type_, kind):
        missing = {name for name in _field_names(cls) if f"`{name}`" not in text}
        assert not missing, f"{type_} {kind}: {cls.__name__} fields {sorted(missing)} undocumented"


def test_every_documented_type_has_a_round_trip_case() -> None:
    table = ROUND_TRIPPED
    assert set(table) == CODE_NAMES
    covered = {type(value) for values in table.values() for value in values}
    for type_, kind in {(t, k) for _n, t, k, _s in SECTIONS}:
        for cls in _documented_class(type_, kind):
            assert cls in covered, f"{cls.__name__} ({type_} {kind}) has no round-trip case"
    assert covered >= ALL_CLASSES
