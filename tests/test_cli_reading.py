"""Reading changes nothing (issue 13 §5): ``zchat history``, ``zchat who --room`` and
``zchat topic ROOM`` read a public room without joining it — no membership, no JOINED
for its members, no room created — private rooms stay readable by their members and
admins only, and an unknown room is a 404 that creates nothing. The broker side is
ROOM_INFO (docs/PROTOCOL.md §6.51), HISTORY and WHO, which need no membership.

The CLI runs in this process (``zchat.cli.main``) against the in-process broker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import run
from core_helpers import World

from zchat import cli
from zchat import wire as p
from zchat.client.sync import SyncClient
from zchat.errors import Status
from zchat.names import name_key
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """A broker with the admin root, alice in #dev (topic "release Friday", two
    messages) and in the private #secret, and bob, in neither."""
    monkeypatch.setenv("ZCHAT_PASSWORD", DEFAULT_PASSWORD)
    with running_broker(admins=("root",)) as harness:
        async def setup() -> None:
            async with harness.client("alice") as alice, harness.client("bob"):
                await alice.join("dev")
                await alice.send("dev", "one")
                await alice.send("dev", "two")
                await alice.set_topic("dev", "release Friday")
                await alice.join("secret", private=True)
                await alice.send("secret", "hush")

        run(setup())
        yield harness


def zchat(h: Harness, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--server", h.server])
    out, err = capsys.readouterr()
    return code, out, err


def members(h: Harness, room: str) -> set[str]:
    assert h.broker.core is not None
    return set(h.broker.core.members.get(name_key(room), set()))


def test_reading_a_public_room_joins_nothing(h: Harness,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = zchat(h, capsys, "history", "--as", "bob", "--room", "dev", "--json")
    assert code == 0, err
    assert [m["text"] for m in map(json.loads, out.splitlines())] == ["one", "two"]
    code, out, err = zchat(h, capsys, "who", "--as", "bob", "--room", "dev", "--json")
    assert code == 0, err
    assert [u["name"] for u in map(json.loads, out.splitlines())] == ["alice"]
    code, out, err = zchat(h, capsys, "topic", "--as", "bob", "dev")
    assert (code, out) == (0, "release Friday\n"), err
    assert members(h, "dev") == {"alice"}  # bob was never made a member


def test_members_are_not_told_of_a_reader(h: Harness,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with SyncClient(h.server, context=h.context) as alice:  # its loop runs in a thread
        alice.login("alice", DEFAULT_PASSWORD)
        for argv in (["history", "--as", "bob", "--room", "dev"],
                     ["who", "--as", "bob", "--room", "dev"],
                     ["topic", "--as", "bob", "dev"]):
            assert zchat(h, capsys, *argv)[0] == 0
        alice.send("dev", "marker")  # every earlier event of #dev comes before it
        seen = []
        while (event := alice.next_event(5)) is not None:
            seen.append(event)
            if isinstance(event, p.MessagePosted) and event.text == "marker":
                break
        else:
            raise AssertionError(f"no marker: {seen}")
    assert not [e for e in seen if isinstance(e, p.UserJoined | p.UserLeft)], seen


@pytest.mark.parametrize("argv", [["history", "--as", "bob", "--room", "nosuch"],
                                  ["who", "--as", "bob", "--room", "nosuch"],
                                  ["topic", "--as", "bob", "nosuch"]])
def test_an_unknown_room_is_404_and_not_created(h: Harness,
                                                capsys: pytest.CaptureFixture[str],
                                                argv: list[str]) -> None:
    code, _out, err = zchat(h, capsys, *argv)
    assert code == 1
    assert err == "zchat: error: no room named 'nosuch' (404)\n"
    assert h.broker.core is not None and name_key("nosuch") not in h.broker.core.rooms


@pytest.mark.parametrize("argv", [["history", "--as", "bob", "--room", "secret"],
                                  ["who", "--as", "bob", "--room", "secret"],
                                  ["topic", "--as", "bob", "secret"]])
def test_a_private_room_is_read_by_members_and_admins_only(
        h: Harness, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _out, err = zchat(h, capsys, *argv)
    assert code == 1
    assert err == "zchat: error: no room named 'secret' (404)\n"  # §17.2: hidden
    for reader in ("alice", "root"):
        code, _out, err = zchat(h, capsys, *[reader if a == "bob" else a for a in argv])
        assert code == 0, err
    assert members(h, "secret") == {"alice"}  # the admin read it from outside


def test_setting_the_topic_still_needs_membership(h: Harness,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI joins to set a topic (as ``say`` joins to post); the broker refuses a
    non-member's SET_TOPIC."""
    async def scenario() -> None:
        async with h.client("bob", register=False) as bob:
            reply = await bob.request(p.SetTopic(room="dev", topic="mine"))
            raise AssertionError(reply)

    with pytest.raises(Exception, match="JOIN it first"):
        run(scenario())
    code, out, err = zchat(h, capsys, "topic", "--as", "bob", "dev", "mine now")
    assert (code, out) == (0, "topic of #dev: mine now\n"), err
    assert members(h, "dev") == {"alice", "bob"}


# -- ROOM_INFO in the core ---------------------------------------------------------------------


def test_room_info_reads_without_joining() -> None:
    world = World(admins=("root",))
    alice, bob, root = world.user("alice"), world.user("bob"), world.user("root")
    alice.must(p.Join(room="dev"))
    alice.must(p.SetTopic(room="dev", topic="hello"))
    alice.must(p.Send(room="dev", text="hi"))
    out = bob.call(p.FetchRoom(room="DEV"))
    assert out.reply == p.RoomDetails(room="dev", members=1, last_seq=1, joined=False,
                                      topic="hello")
    assert out.events == [] and out.pushes == []
    assert bob.call(p.FetchRoom(room="nosuch")).status == Status.NOT_FOUND
    assert world.core.rooms.get("nosuch") is None
    assert bob.call(p.FetchRoom(room="bad name")).status == Status.INVALID
    alice.must(p.Join(room="hidden", private=True))
    assert bob.call(p.FetchRoom(room="hidden")).status == Status.NOT_FOUND  # §17.2
    assert root.must(p.FetchRoom(room="hidden")).private is True
    assert alice.must(p.FetchRoom(room="hidden")).joined is True
