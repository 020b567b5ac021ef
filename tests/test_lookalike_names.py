"""Names that differ only by punctuation, and names of punctuation alone (docs/PROTOCOL.md
§12): ``alice.`` and ``Alice_`` may not sit beside ``alice``, ``.`` is no name, and
"thanks alice." mentions alice and only alice.

A tester registered ``alice.`` and ``Alice_`` next to ``alice`` (nearly the same in a
member list), got a mention for ``alice.`` from "thanks alice.", and created the room
``.``. The pure rules are tested directly; the refusals and the names made before the rules
through a real broker (in-process, and the command line against ``zchat broker``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import TcpBroker, cli_env, zchat_command

from zchat.admin import NewAccountRow, check_batch
from zchat.errors import ProtocolError, RequestFailed, Status
from zchat.names import (
    mention_words,
    mentions,
    name_key,
    normalize_name,
    normalize_new_name,
    skeleton,
)
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, Harness, fast_hash, run, running_broker

# -- the pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["alice.", "Alice_", "_alice", "al-ice", "a.l.i.c.e",
                                   "ali_ce", "Alice__", "a1ice_", "alice\uff3f"])
def test_names_that_differ_only_by_punctuation_share_a_skeleton(other: str) -> None:
    assert skeleton(normalize_name(other)) == skeleton("alice")


def test_letters_that_look_like_punctuation_are_left_out_too() -> None:
    # ARABIC-INDIC DIGIT ZERO looks like '.' (the Unicode confusables table)
    assert skeleton(normalize_name("\u0645\u062d\u0645\u062f\u0660")) == \
        skeleton("\u0645\u062d\u0645\u062f")


def test_punctuation_does_not_merge_names_that_differ_otherwise() -> None:
    assert len({skeleton(n) for n in ("alice", "alice_b", "alicia", "a.lic", "bob-1",
                                      "bob-2")}) == 6


@pytest.mark.parametrize("raw", ["alice", "Alice_", "_alice", "al-ice", "a.b", "x_",
                                 "dev-ops", "2", "山田", "e\u0301"])
def test_a_new_name_may_be(raw: str) -> None:
    assert normalize_new_name(raw) == normalize_name(raw)


@pytest.mark.parametrize(("raw", "why"), [
    (".", "must start and end with a letter, digit or '_'"),
    ("...", "must start and end with a letter, digit or '_'"),
    ("alice.", "must start and end with a letter, digit or '_'"),
    (".alice", "must start and end with a letter, digit or '_'"),
    ("alice-", "must start and end with a letter, digit or '_'"),
    ("alice\uff0e", "must start and end with a letter, digit or '_'"),  # fullwidth '.'
    ("_", "must hold at least one letter or digit"),
    ("__", "must hold at least one letter or digit"),
    ("_-_", "must hold at least one letter or digit"),
    ("_._", "must hold at least one letter or digit"),
    ("-x", "must not start with '-'"),  # normalize_name's rule, said first
])
def test_a_new_name_may_not_be(raw: str, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        normalize_new_name(raw, "room name")
    assert info.value.status == Status.INVALID
    assert info.value.reason.startswith("room name ")
    assert why in info.value.reason


@pytest.mark.parametrize("old", [".", "...", "_", "alice.", ".alice", "alice-"])
def test_names_made_before_the_rules_are_still_looked_up(old: str) -> None:
    assert normalize_name(old) == old


@pytest.mark.parametrize(("text", "words"), [
    ("thanks alice.", {"thanks", "alice"}),
    ("alice... and bob-", {"alice", "and", "bob"}),
    ("-alice- .bob.", {"alice", "bob"}),
    ("alice.smith.", {"alice.smith"}),
    ("alice_.", {"alice_"}),
])
def test_a_word_is_taken_without_the_sentence_punctuation_at_its_ends(
        text: str, words: set[str]) -> None:
    assert mention_words(text) == words


def test_thanks_alice_dot_mentions_alice_and_only_alice() -> None:
    assert mentions("thanks alice.", "alice")
    assert not mentions("thanks alice.", "alice.")   # an account made before the rules
    assert not mentions("thanks alice.", "alice_")
    assert not mentions("see .alice", ".alice")


def test_bulk_creation_refuses_punctuation_look_alikes_and_punctuation_names() -> None:
    rows = [NewAccountRow(1, "alice", "password1", False),
            NewAccountRow(2, "Alice_", "password1", False),
            NewAccountRow(3, "...", "password1", False),
            NewAccountRow(4, "bob", "password1", False)]
    good, bad = check_batch(rows, lambda key, skel: skel == skeleton("carol"), 8)
    assert [a.name for a in good] == ["alice", "bob"]
    assert [(b.line, b.problem) for b in bad] == [
        (2, "name: the same as or too like the name on line 1"),
        (3, "name must start and end with a letter, digit or '_': a '.' or '-' at an end "
            "would read as punctuation (\"thanks alice.\")")]
    _good, taken = check_batch([NewAccountRow(1, "carol.x", "password1", False),
                                NewAccountRow(2, "c_arol", "password1", False)],
                               lambda key, skel: skel == skeleton("carol"), 8)
    assert [b.line for b in taken] == [2]


# -- through a real broker -------------------------------------------------------------------


def test_register_and_join_refuse_look_alikes_and_punctuation(harness: Harness) -> None:
    async def scenario() -> None:
        async with harness.client("alice") as alice:
            await alice.join("dev")
            for name, status in (("alice.", Status.INVALID), ("Alice_", Status.CONFLICT),
                                 ("al-ice", Status.CONFLICT), (".", Status.INVALID),
                                 ("...", Status.INVALID), ("_", Status.INVALID)):
                with pytest.raises(RequestFailed) as info:
                    await alice.register(name, DEFAULT_PASSWORD)
                assert info.value.status == status, (name, info.value)
            for room, status in ((".", Status.INVALID), ("dev.", Status.INVALID),
                                 ("_", Status.INVALID), ("dev_", Status.CONFLICT),
                                 ("d.ev", Status.CONFLICT), ("lob-by", Status.CONFLICT)):
                with pytest.raises(RequestFailed) as info:
                    await alice.join(room)
                assert info.value.status == status, (room, info.value)
            with pytest.raises(RequestFailed) as info:
                await alice.join(".")
            assert info.value.reason == ("room name must start and end with a letter, "
                                         "digit or '_': a '.' or '-' at an end would read "
                                         "as punctuation (\"thanks alice.\")")
            rooms = (await alice.list_rooms()).rooms
            assert sorted(r.room for r in rooms) == ["dev", "lobby"]

    run(scenario())


def _made_before_the_rules(db: Path) -> None:
    """An account ``alice.`` and a room ``dev.`` as a broker before this rule stored them:
    their old skeletons kept punctuation."""
    store = Store(db)
    try:
        store.ensure_room(name_key("lobby"), "lobby", skeleton("lobby"), 0)
        pw = fast_hash(DEFAULT_PASSWORD)
        store.create_account("alice.", "alice.", "alice.", pw, 0, rooms=("lobby",))
        store.ensure_room("dev.", "dev.", "dev.", 0)
    finally:
        store.close()


def test_names_made_before_the_rules_log_in_and_join_but_are_not_mentioned_by_a_full_stop(
        tmp_path: Path) -> None:
    db = tmp_path / "zchat.db"
    _made_before_the_rules(db)

    async def scenario(harness: Harness) -> None:
        async with harness.client("alice") as alice, \
                harness.client("alice.", register=False) as old, \
                harness.client("bob") as bob:
            for c in (alice, old, bob):
                await c.join("dev.")
            await bob.send("dev.", "thanks alice.")
        async with harness.client("alice", register=False) as alice, \
                harness.client("alice.", register=False) as old:
            mentioned = {c.name: c.unread.room("dev.") for c in (alice, old)}
        assert {name: r.mentions if r else None for name, r in mentioned.items()} == \
            {"alice": 1, "alice.": 0}

    with running_broker(db) as harness:
        run(scenario(harness))


# -- the command line, against `zchat broker` -------------------------------------------------


def _zchat(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)


def test_zchat_register_refuses_alice_dot_and_alice_underscore(
        tmp_path: Path, tcp_broker: TcpBroker) -> None:
    server = ("--server", tcp_broker.router)
    assert _zchat(tmp_path, "register", *server, "alice").returncode == 0
    dot = _zchat(tmp_path, "register", *server, "alice.")
    assert (dot.returncode, dot.stdout) == (1, "")
    assert dot.stderr.startswith("zchat: error: name must start and end with a letter, "
                                 "digit or '_'") and dot.stderr.endswith("(422)\n")
    under = _zchat(tmp_path, "register", *server, "Alice_")
    assert (under.returncode, under.stdout) == (1, "")
    assert under.stderr == ("zchat: error: the name 'Alice_' is taken (or too like an "
                            "existing name) (409)\n")
    room = _zchat(tmp_path, "say", *server, "--as", "alice", "--room", ".", "hi")
    assert room.returncode == 1 and "room name must start and end" in room.stderr
    who = _zchat(tmp_path, "who", *server, "--as", "alice", "--room", "lobby")
    assert [line.split()[0] for line in who.stdout.splitlines()] == ["alice"]

