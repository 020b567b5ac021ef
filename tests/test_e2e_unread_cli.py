"""End to end, issue 13 §2: unread direct messages through the command line
(``zchat history --dm``, ``zchat unread``, ``zchat tail``) as subprocesses against a
``zchat broker`` subprocess on loopback TCP."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import json_lines, ok, register, zchat
from conftest import TcpBroker


def test_a_dm_handed_over_but_never_read_stays_unread(tmp_path: Path,
                                                      tcp_broker: TcpBroker) -> None:
    """The issue's repro: bob's session gets erin's DM and acknowledges it (here a
    ``tail --keep-unread``, as the console did) and ends without bob reading it. It is
    still there: ``unread`` lists it, ``history --dm`` shows it, and ``tail`` prints it at
    start, marking it read."""
    register(tmp_path, tcp_broker, "erin", "bob")
    server = ("--server", tcp_broker.router)
    ok(zchat(tmp_path, "dm", *server, "--as", "erin", "bob", "ping me"))
    handed = ok(zchat(tmp_path, "tail", *server, "--as", "bob", "--count", "1", "--json",
                      "--keep-unread"))
    assert [m["text"] for m in json_lines(handed.stdout)] == ["ping me"]

    listed = ok(zchat(tmp_path, "unread", *server, "--as", "bob"))
    assert listed.stdout.split() == ["@erin", "1", "unread"]
    as_json = json_lines(ok(zchat(tmp_path, "unread", *server, "--as", "bob",
                                  "--json")).stdout)
    dm_id = json_lines(ok(zchat(tmp_path, "history", *server, "--as", "bob", "--dm",
                                "erin", "--json")).stdout)[0]["id"]
    assert as_json == [{"room": None, "dm": "erin", "unread": 1, "mentions": 0, "read": 0,
                        "last": dm_id}]

    text = ok(zchat(tmp_path, "history", *server, "--as", "bob", "--dm", "ERIN"))
    assert text.stdout.rstrip().endswith(f"[dm #{dm_id}] <erin -> bob> ping me")

    # tail prints the unread DM first (no longer pending: only the read state knows it)
    # and marks it read: a DM printed by tail has been seen
    tail = ok(zchat(tmp_path, "tail", *server, "--as", "bob", "--count", "1", "--json"))
    assert [(m["id"], m["from"], m["text"]) for m in json_lines(tail.stdout)] == \
        [(dm_id, "erin", "ping me")]
    assert "following direct messages as bob" in tail.stderr
    after = ok(zchat(tmp_path, "unread", *server, "--as", "bob"))
    assert after.stdout == ""
    assert "nothing unread" in after.stderr


def test_unread_lists_rooms_with_mentions_prints_and_marks_read(tmp_path: Path,
                                                                tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "bob")
    server = ("--server", tcp_broker.router)
    ok(zchat(tmp_path, "topic", *server, "--as", "bob", "dev", "reviews"))  # joins #dev
    ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "-",
             stdin="morning\n@bob can you review?\nthanks\n"))
    ok(zchat(tmp_path, "dm", *server, "--as", "alice", "bob", "lunch?"))
    ok(zchat(tmp_path, "dm", *server, "--as", "alice", "bob", "12:30?"))

    listed = ok(zchat(tmp_path, "unread", *server, "--as", "bob", "--json"))
    assert [(c["room"], c["dm"], c["unread"], c["mentions"], c["read"], c["last"])
            for c in json_lines(listed.stdout)] == [
        ("dev", None, 3, 1, 0, 3), (None, "alice", 2, 0, 0, c_last(listed.stdout))]
    text = ok(zchat(tmp_path, "unread", *server, "--as", "bob")).stdout.splitlines()
    assert [line.split() for line in text] == [["#dev", "3", "unread,", "1", "mention"],
                                               ["@alice", "2", "unread"]]

    shown = ok(zchat(tmp_path, "unread", *server, "--as", "bob", "--messages", "--json",
                     "--limit", "2", "--mark-read"))
    assert [(m["room"], m["text"]) for m in json_lines(shown.stdout)] == [
        ("dev", "morning"), ("dev", "@bob can you review?"), (None, "lunch?"),
        (None, "12:30?")]
    # --limit 2 printed two of #dev's three: the third is still unread, with no mention
    left = ok(zchat(tmp_path, "unread", *server, "--as", "bob", "--json"))
    assert [(c["room"], c["unread"], c["mentions"]) for c in json_lines(left.stdout)] == \
        [("dev", 1, 0)]
    plain = ok(zchat(tmp_path, "unread", *server, "--as", "bob", "--messages"))
    assert plain.stdout.rstrip().endswith("#dev #3 <alice> thanks")
    ok(zchat(tmp_path, "unread", *server, "--as", "bob", "--mark-read"))
    assert ok(zchat(tmp_path, "unread", *server, "--as", "bob")).stdout == ""


def c_last(stdout: str) -> object:
    """The ``last`` of the DM conversation listed by ``unread --json``."""
    return next(c["last"] for c in json_lines(stdout) if c["dm"] is not None)


def test_history_dm_pages_back_by_id(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "bob", "carol")
    server = ("--server", tcp_broker.router)
    for who, to, text in (("alice", "bob", "one"), ("carol", "bob", "not yours"),
                          ("bob", "alice", "two"), ("alice", "bob", "three")):
        ok(zchat(tmp_path, "dm", *server, "--as", who, to, text))
    newest = json_lines(ok(zchat(tmp_path, "history", *server, "--as", "alice", "--dm",
                                 "bob", "--limit", "2", "--json")).stdout)
    assert [(m["from"], m["to"], m["text"], m["dm"]) for m in newest] == [
        ("bob", "alice", "two", True), ("alice", "bob", "three", True)]
    older = json_lines(ok(zchat(tmp_path, "history", *server, "--as", "alice", "--dm",
                                "bob", "--before", str(newest[0]["id"]),
                                "--json")).stdout)
    assert [m["text"] for m in older] == ["one"]
    # history reads, it does not mark read; bob's reply read "one", not "three"
    ok(zchat(tmp_path, "history", *server, "--as", "bob", "--dm", "alice"))
    unread = json_lines(ok(zchat(tmp_path, "unread", *server, "--as", "bob",
                                 "--json")).stdout)
    assert {(c["dm"], c["unread"]) for c in unread} == {("alice", 1), ("carol", 1)}
    both = zchat(tmp_path, "history", *server, "--as", "bob", "--dm", "alice", "--room",
                 "dev")
    assert both.returncode == 2  # one of --room and --dm
