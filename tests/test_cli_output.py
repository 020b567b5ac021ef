"""What the command line prints, from a fresh tester's report: ``--help`` that says who
may set a slow mode, empty results said on stderr (stdout stays empty for scripts), the
recipient of a DM named as registered, out-of-range counts as usage errors, and ``zchat
join`` refused at once without a terminal.

Most cases run ``zchat.cli.main`` in this process against the in-process broker on
inproc:// (a real broker thread); ``join`` runs as a subprocess, as a script would."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import cli_env, free_port, zchat_command

from zchat import cli
from zchat import wire as p
from zchat.testing import DEFAULT_PASSWORD, Harness

Zchat = Callable[..., tuple[int, str, str]]


@pytest.fixture
def zchat(harness: Harness, capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> Zchat:
    """``zchat(*argv)`` -> (exit code, stdout, stderr), in this process, against the
    harness broker, with $ZCHAT_PASSWORD set."""
    monkeypatch.setenv("ZCHAT_PASSWORD", DEFAULT_PASSWORD)

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main([*argv, "--server", harness.server])
        out, err = capsys.readouterr()
        return code, out, err

    return call


# -- slow --help ---------------------------------------------------------------------------


def test_slow_help_says_moderators_may_set_it_and_they_may(
        zchat: Zchat, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["slow", "--help"])
    assert exited.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Only the room's moderators, its owner (creator) and broker admins may" in \
        help_text
    call = zchat  # and it is true: a moderator who is not the creator sets it
    for name in ("olga", "mia"):
        assert call("register", name)[0] == 0
    assert call("say", "--as", "olga", "--room", "news", "hi")[0] == 0
    assert call("say", "--as", "mia", "--room", "news", "hi")[0] == 0
    assert call("mod", "--as", "olga", "op", "news", "mia")[0] == 0
    assert call("slow", "--as", "mia", "news", "30")[:2] == (
        0, "slow mode of #news: one message per 30 s\n")


# -- empty results -------------------------------------------------------------------------


def test_empty_results_leave_stdout_empty_and_say_so_on_stderr(zchat: Zchat) -> None:
    call = zchat
    for name in ("carol", "dave"):
        assert call("register", name)[0] == 0
    assert call("say", "--as", "carol", "--room", "r1", "first")[0] == 0
    assert call("topic", "--as", "carol", "r1") == (0, "", "#r1 has no topic\n")
    assert call("history", "--as", "carol", "--dm", "dave") == (
        0, "", "no direct messages with dave\n")
    assert call("history", "--as", "carol", "--room", "r1", "--before", "1") == (
        0, "", "no messages in #r1 before 1\n")
    assert call("history", "--as", "carol", "--room", "R1", "--before", "1", "--json") \
        == (0, "", "")  # --json: objects only, as unread does
    assert call("token", "list", "--as", "carol") == (0, "", "carol has no tokens\n")
    assert call("mod", "--as", "carol", "bans", "r1") == (
        0, "", "no bans or mutes in force in #r1\n")
    # and when there is something, stdout has it and stderr nothing
    assert call("topic", "--as", "carol", "r1", "release")[0] == 0
    assert call("topic", "--as", "dave", "r1") == (0, "release\n", "")
    code, out, err = call("history", "--as", "dave", "--room", "r1")
    assert (code, err) == (0, "") and out.endswith("<carol> first\n")


def test_a_new_room_with_no_messages_says_so(zchat: Zchat) -> None:
    call = zchat
    assert call("register", "erin")[0] == 0
    assert call("topic", "--as", "erin", "quiet", "")[0] == 0  # joins, creates
    assert call("history", "--as", "erin", "--room", "#quiet") == (
        0, "", "no messages in #quiet\n")


# -- the recipient of a DM, as registered ---------------------------------------------------


def test_dm_names_the_recipient_as_registered(zchat: Zchat) -> None:
    call = zchat
    for name in ("alice", "bob"):
        assert call("register", name)[0] == 0
    assert call("dm", "--as", "bob", "ALICE", "x") == (
        0, "stored until they log in (to alice)\n", "")


def test_a_dm_to_oneself_is_called_a_note_not_stored_for_later(zchat: Zchat) -> None:
    call = zchat
    assert call("register", "alice")[0] == 0
    assert call("dm", "--as", "alice", "ALICE", "remember the milk") == (
        0, "noted to yourself (a direct message to your own account)\n", "")


def test_plain_dm_lines_show_the_id_that_history_pages_by(zchat: Zchat) -> None:
    call = zchat
    for name in ("alice", "bob"):
        assert call("register", name)[0] == 0
    for text in ("one", "two", "three"):
        assert call("dm", "--as", "alice", "bob", text)[0] == 0
    code, out, _ = call("history", "--as", "bob", "--dm", "alice")
    ids = [int(line.split("[dm #")[1].split("]")[0]) for line in out.splitlines()]
    assert code == 0 and len(ids) == 3 and ids == sorted(ids)
    code, out, _ = call("history", "--as", "bob", "--dm", "alice", "--before", str(ids[1]))
    assert out.splitlines()[0].endswith(f"[dm #{ids[0]}] <alice -> bob> one")
    assert len(out.splitlines()) == 1


def test_tail_prints_unread_dms_of_all_conversations_oldest_first(zchat: Zchat) -> None:
    call = zchat
    for name in ("alice", "bob", "carol"):
        assert call("register", name)[0] == 0
    for who, text in (("alice", "a1"), ("bob", "b1"), ("alice", "a2"), ("bob", "b2")):
        assert call("dm", "--as", who, "carol", text)[0] == 0
    code, out, _ = call("tail", "--as", "carol", "--count", "4")
    assert code == 0
    assert [line.rsplit(" ", 1)[1] for line in out.splitlines()] == ["a1", "b1", "a2", "b2"]


def test_dm_sent_carries_the_recipients_name() -> None:
    from core_helpers import World

    world = World()
    world.user("alice")
    out = world.user("bob").call(p.SendDirect(to="ALICE", text="hi"))
    assert isinstance(out.reply, p.DmSent) and out.reply.to == "alice"


# -- counts out of range are usage errors ---------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["history", "--as", "bob", "--room", "dev", "--limit", "0"],
     "argument --limit: must be a whole number from 1 to 500, not '0'"),
    (["history", "--as", "bob", "--room", "dev", "--limit", "501"],
     "argument --limit: must be a whole number from 1 to 500, not '501'"),
    (["history", "--as", "bob", "--room", "dev", "--limit", "abc"],
     "argument --limit: must be a whole number from 1 to 500, not 'abc'"),
    (["unread", "--as", "bob", "--limit", "0"],
     "argument --limit: must be a whole number of at least 1, not '0'"),
    (["tail", "--as", "bob", "--count", "-1"],
     "argument --count: must be a whole number of at least 1, not '-1'"),
    (["mod", "--as", "bob", "audit", "dev", "--limit", "0"],
     "argument --limit: must be a whole number from 1 to 500, not '0'"),
    (["admin", "audit", "--limit", "9999"],
     "argument --limit: must be a whole number from 1 to 500, not '9999'"),
    (["history", "--as", "bob", "--room", "dev", "--before", "-5"],
     "argument --before: must be a whole number of at least 0, not '-5'"),
    (["admin", "audit", "--before", "-1"],
     "argument --before: must be a whole number of at least 0, not '-1'"),
    (["unread", "--as", "bob", "--limit", "5"], "argument --limit: only with --messages"),
])
def test_out_of_range_counts_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                              argv: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2  # as for --limit abc, before anything is sent
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zchat: error: ")
    assert expected in err


# -- zchat join needs a terminal ------------------------------------------------------------


@pytest.mark.parametrize("piped", [False, True])
def test_join_without_a_terminal_is_one_clear_line(tmp_path: Path, piped: bool) -> None:
    argv = [*zchat_command(), "join", "alice", "--server", f"tcp://127.0.0.1:{free_port()}"]
    if piped:  # echo hi | zchat join alice
        result = subprocess.run(argv, env=cli_env(tmp_path), input="hi\n",
                                capture_output=True, text=True, timeout=30)
    else:
        result = subprocess.run(argv, env=cli_env(tmp_path), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("zchat: error: zchat join needs a terminal, and its standard "
                             "input is not one; scripts use zchat say, dm, tail or "
                             "history\n")
