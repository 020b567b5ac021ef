"""The command line's own rules (issue 13 §5): every error is one line of the same form,
``zchat: error: …`` (usage errors too, and arguments or credentials that are not valid
UTF-8), a NAME that starts with '-' is explained by the name rule, and names are accepted
as the console writes them, ``@bob`` and ``#dev``.

Most cases run ``zchat.cli.main`` in this process, against the in-process broker on
inproc:// where one is needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import TcpBroker, cli_env, zchat_command

from zchat import cli
from zchat.client import Client
from zchat.testing import DEFAULT_PASSWORD, Harness

NOWHERE = ("--server", "inproc://nowhere", "--timeout", "0.2")


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("zchat: error: "), lines
    return lines[0]


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    assert exited.value.code == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("argv", "expected"), [
    (["say", "--as", "bob"], "the following arguments are required: --room, TEXT"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["history", "--as", "bob", "--room", "dev", "--limit", "x"],
     "argument --limit: must be a whole number from 1 to 500, not 'x'"),
    (["admin"], "the following arguments are required: ACTION"),
    (["mod", "--as", "olga", "kick"], "the following arguments are required: ROOM"),
])
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                   expected: str) -> None:
    line = usage_error(capsys, *argv)
    assert expected in line
    assert "--help" in line  # where to read the usage instead of the whole usage block


@pytest.mark.parametrize(("argv", "help_of"), [
    (["who", "--as", "bob", "--bogus"], "zchat who"),
    (["who", "--as", "bob", "dev", "extra"], "zchat who"),
    (["token", "list", "--as", "bob", "--bogus"], "zchat token list"),
    (["say", "--as", "bob", "--room", "dev", "hi", "--bogus"], "zchat say"),
])
def test_an_unknown_argument_names_the_command_that_was_given_it(
        capsys: pytest.CaptureFixture[str], argv: list[str], help_of: str) -> None:
    line = usage_error(capsys, *argv)
    assert "unrecognized arguments:" in line
    assert line.endswith(f"see '{help_of} --help'")


@pytest.mark.parametrize("argv", [["register", "-x"], ["register", "--bot", "-alice"],
                                  ["join", "-x"], ["dm", "--as", "bob", "-x", "hi"],
                                  ["admin", "disable", "-x"]])
def test_a_name_starting_with_a_dash_is_explained(capsys: pytest.CaptureFixture[str],
                                                  argv: list[str]) -> None:
    line = usage_error(capsys, *argv)
    assert "is not a name (it would read as an option): a name is 1-32 letters, digits, " \
        "'_', '-' and '.'" in line  # the rule, PROTOCOL §12
    assert line.count("'-'") == 1  # said once (a tester read it twice in one line)
    assert "required" not in line


@pytest.mark.parametrize(("argv", "what"), [
    (["say", *NOWHERE, "--as", "\udcff", "--room", "dev", "hi"], "--as"),
    (["say", *NOWHERE, "--as", "bob", "--room", "d\udcffv", "hi"], "--room"),
    (["say", *NOWHERE, "--as", "bob", "--room", "dev", "a \udcff b"], "TEXT"),
    (["dm", *NOWHERE, "--as", "bob", "\udcff", "hi"], "TO"),
    (["register", *NOWHERE, "b\udcffb"], "NAME"),
    (["topic", *NOWHERE, "--as", "bob", "dev", "\udcff"], "TEXT"),
    (["mod", *NOWHERE, "--as", "bob", "kick", "dev", "\udcff"], "ARG"),
    (["token", "create", *NOWHERE, "--as", "bob", "--label", "\udcff"], "--label"),
])
def test_arguments_not_valid_utf8_are_one_line(capsys: pytest.CaptureFixture[str],
                                               argv: list[str], what: str) -> None:
    assert cli.main(argv) == 1
    assert one_error_line(capsys.readouterr().err) == \
        f"zchat: error: {what} is not valid UTF-8"


@pytest.mark.parametrize("variable", ["ZCHAT_PASSWORD", "ZCHAT_TOKEN"])
def test_credentials_not_valid_utf8_are_one_line(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 variable: str) -> None:
    monkeypatch.setenv(variable, "s\udcffcret")
    command = ["register", *NOWHERE, "bob"] if variable == "ZCHAT_PASSWORD" else \
        ["who", *NOWHERE, "--as", "bob"]
    assert cli.main(command) == 1
    assert one_error_line(capsys.readouterr().err) == \
        f"zchat: error: ${variable} is not valid UTF-8"


def test_output_that_cannot_be_written_is_one_line(tmp_path: Path,
                                                   tcp_broker: TcpBroker) -> None:
    server = ("--server", tcp_broker.router)
    env = cli_env(tmp_path)
    subprocess.run([*zchat_command(), "register", *server, "alice"], env=env, check=True,
                   capture_output=True, timeout=30)
    with open("/dev/full", "w") as full:
        # --room lobby: alice is listed (her one-shot `who` announces no presence, so
        # the list of accounts online would be empty and nothing would be written)
        result = subprocess.run([*zchat_command(), "who", *server, "--as", "alice",
                                 "--room", "lobby"],
                                env=env, stdout=full, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = one_error_line(result.stderr)
    assert "the output could not be written" in line and "No space left" in line


# -- @bob and #dev, as in the console ----------------------------------------------------------


def run_cli(harness: Harness, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``zchat ARGV --server <the harness>`` in this process: its stdout; exit code 0."""
    code = cli.main([*argv, "--server", harness.server])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_at_and_hash_are_accepted_before_names(harness: Harness,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZCHAT_PASSWORD", DEFAULT_PASSWORD)
    run_cli(harness, capsys, "register", "@alice")
    run_cli(harness, capsys, "register", "bob")
    assert run_cli(harness, capsys, "dm", "--as", "@alice", "@bob", "hi").strip() == \
        "stored until they log in (to bob)"
    run_cli(harness, capsys, "say", "--as", "@bob", "--room", "#dev", "hello")
    history = run_cli(harness, capsys, "history", "--as", "alice", "--room", "#dev",
                      "--json")
    assert [(m["room"], m["text"]) for m in map(json.loads, history.splitlines())] == \
        [("dev", "hello")]
    who = run_cli(harness, capsys, "who", "--as", "alice", "--room", "#dev", "--json")
    assert "bob" in [u["name"] for u in map(json.loads, who.splitlines())]
    run_cli(harness, capsys, "topic", "--as", "bob", "#dev", "release")
    assert run_cli(harness, capsys, "topic", "--as", "alice", "#dev").strip() == "release"
    run_cli(harness, capsys, "say", "--as", "alice", "--room", "dev", "me too")
    assert run_cli(harness, capsys, "mod", "--as", "bob", "kick", "#dev", "@alice").strip() \
        == "kick done: alice in #dev"


@pytest.mark.parametrize(("argv", "name"), [
    (["join", "ev il"], "ev il"), (["join", "--", "-dave"], "-dave"),
    (["say", *NOWHERE, "--as", "ev il", "--room", "dev", "hi"], "ev il")])
def test_a_name_no_account_can_have_is_refused_before_any_password_prompt(
        capsys: pytest.CaptureFixture[str], argv: list[str], name: str) -> None:
    """join asked for a password three times, then the broker refused the name (422)."""
    assert cli.main(argv) == 1  # capsys gives no terminal: a prompt would have failed
    line = one_error_line(capsys.readouterr().err)
    assert "name must not" in line and repr(name) in line


def test_unread_limit_without_messages_names_its_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "unread", "--as", "bob", "--limit", "5")
    assert line.endswith("see 'zchat unread --help'")


@pytest.mark.parametrize("argv", [
    ["join", "alice"], ["say", "--as", "bob", "--room", "dev", "hi"],
    ["tail", "--as", "bob", "--room", "dev"], ["dm", "--as", "bob", "carol", "hi"],
    ["history", "--as", "bob", "--room", "dev"], ["bot", "bot.py"], ["who", "--as", "bob"]])
def test_server_takes_a_cluster_s_endpoints_separated_by_commas(argv: list[str]) -> None:
    """``--server a,b`` on every command that connects (docs/cluster.md): the client
    tries them in order and moves along them (zchat.client.Client)."""
    args = cli.build_parser().parse_args([*argv, "--server", "tcp://a:5555, tcp://b:5555"])
    server = cli._config(args).client.server
    assert Client(server).servers == ("tcp://a:5555", "tcp://b:5555")


def test_a_bad_endpoint_list_is_one_line_naming_the_entry(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["history", "--as", "bob", "--room", "dev",
                     "--server", "tcp://a:1,,tcp://b:2"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "endpoint 2 of 3 is empty" in line and "single commas" in line
