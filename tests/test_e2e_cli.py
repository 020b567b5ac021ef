"""End to end: the ``zchat`` command line as subprocesses against a ``zchat broker``
subprocess on loopback TCP (the helpers of tests/cli_helpers.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import json_lines, ok, one_line_error, register, zchat
from conftest import (
    Proc,
    TcpBroker,
    cli_env,
    free_port,
    start_broker,
    stop_broker,
    zchat_command,
)

COMMANDS = ("broker", "register", "say", "dm", "tail", "history", "who")


def test_register_twice_fails_with_one_line(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice")
    again = zchat(tmp_path, "register", "--server", tcp_broker.router, "alice")
    line = one_line_error(again)
    assert "taken" in line
    assert again.stdout == ""


def test_tail_prints_messages_posted_by_say(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "bob")
    server = ("--server", tcp_broker.router)
    tail = Proc([*zchat_command(), "tail", *server, "--as", "bob", "--room", "dev",
                 "--count", "2", "--json"], cli_env(tmp_path))
    try:
        tail.wait_line("stderr", "following #dev as bob")
        ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "hello"))
        ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "-",
                 stdin="a\nb\n"))
        assert tail.wait(10) == 0, tail.stderr
    finally:
        tail.kill()
    lines = [json.loads(line) for line in tail.stdout]
    assert [(m["room"], m["seq"], m["from"], m["text"], m["dm"]) for m in lines] == \
        [("dev", 1, "alice", "hello", False), ("dev", 2, "alice", "a", False)]
    for m in lines:
        assert isinstance(m["time"], str) and m["time"].endswith("Z")
        assert isinstance(m["time_ms"], int) and m["time_ms"] > 1_600_000_000_000

    history = ok(zchat(tmp_path, "history", *server, "--as", "bob", "--room", "dev",
                       "--json", "--limit", "2"))
    assert [(m["seq"], m["text"]) for m in json_lines(history.stdout)] == [(2, "a"), (3, "b")]

    who = ok(zchat(tmp_path, "who", *server, "--as", "alice", "--room", "dev", "--json"))
    # `zchat who` is one-shot: alice's session announces no presence (§6.3)
    assert {(u["name"], u["presence"]) for u in json_lines(who.stdout)} == \
        {("alice", "offline"), ("bob", "offline")}


def test_stored_dm_is_printed_first_by_tail(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "carol")
    server = ("--server", tcp_broker.router)
    sent = ok(zchat(tmp_path, "dm", *server, "--as", "alice", "carol", "psst: meet at 5"))
    assert sent.stdout.strip() == "stored until they log in (to carol)"
    tail = ok(zchat(tmp_path, "tail", *server, "--as", "carol", "--room", "lobby",
                    "--count", "1", "--json"))
    (dm,) = json_lines(tail.stdout)
    assert (dm["dm"], dm["from"], dm["to"], dm["text"], dm["room"]) == \
        (True, "alice", "carol", "psst: meet at 5", None)


def test_who_shows_online_accounts(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "bob", "carol")
    server = ("--server", tcp_broker.router)
    tail = Proc([*zchat_command(), "tail", *server, "--as", "bob", "--room", "lobby"],
                cli_env(tmp_path))
    try:
        tail.wait_line("stderr", "following #lobby as bob")
        who = ok(zchat(tmp_path, "who", *server, "--as", "alice", "--json"))
    finally:
        tail.popen.send_signal(signal.SIGINT)
        tail.wait(5)
    users = json_lines(who.stdout)
    # alice's `zchat who` is a one-shot command: its session announces no presence
    # (LOGIN presence false, docs/PROTOCOL.md §6.3), so alice is not listed online
    assert [(u["name"], u["presence"], u["bot"]) for u in users] == \
        [("bob", "online", False)]


def test_wrong_password_is_one_line(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice")
    result = zchat(tmp_path, "say", "--server", tcp_broker.router, "--as", "alice",
                   "--room", "dev", "hi", password="not the password")
    assert "wrong name or password" in one_line_error(result)


@pytest.mark.parametrize(("text", "expected"), [
    ("x" * 4001, "limit"),
    ("ring \x07 the bell", "control character"),
    ("evil \u202e txt.exe", "bidirectional control character (U+202E"),
])
def test_say_refuses_bad_text(tmp_path: Path, tcp_broker: TcpBroker, text: str,
                              expected: str) -> None:
    register(tmp_path, tcp_broker, "alice")
    result = zchat(tmp_path, "say", "--server", tcp_broker.router, "--as", "alice",
                   "--room", "dev", text)
    assert expected in one_line_error(result)
    history = ok(zchat(tmp_path, "history", "--server", tcp_broker.router, "--as", "alice",
                       "--room", "dev", "--json"))
    assert history.stdout == ""


def test_unreachable_broker_fails_quickly(tmp_path: Path) -> None:
    start = time.monotonic()
    result = zchat(tmp_path, "say", "--server", f"tcp://127.0.0.1:{free_port()}",
                   "--timeout", "1", "--as", "alice", "--room", "dev", "hi")
    elapsed = time.monotonic() - start
    line = one_line_error(result)
    assert line.startswith("zchat: error: the broker does not answer")
    # --timeout 1 is honoured: well short of the default 30 s of retrying (a generous
    # bound, not a speed figure; the machine may be busy).
    assert elapsed < 15.0, elapsed


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_broker_prints_endpoints_and_stops_cleanly_on_signal(tmp_path: Path, sig: int) -> None:
    broker, lines = start_broker(tmp_path)
    try:
        assert lines[0].startswith("zchat broker ")
        assert lines[1].split() == ["router", broker.router]
        assert lines[2].split()[0] == "pub" and lines[2].split()[1].startswith("tcp://127.0.0.1:")
        assert lines[3].split() == ["database", str(broker.data_dir / "zchat.db")]
        register(tmp_path, broker, "alice")  # it serves before the signal
    finally:
        rc, elapsed = stop_broker(broker, sig)
    assert rc == 0, broker.process.stderr
    assert elapsed < 2.5, elapsed
    assert not any("Traceback" in line for line in broker.process.stderr)
    assert (broker.data_dir / "zchat.db").exists()


def test_python_m_zchat_help_lists_the_commands(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "zchat", "--help"], env=cli_env(tmp_path),
                            capture_output=True, text=True, timeout=15)
    ok(result)
    for command in COMMANDS:
        assert command in result.stdout


def test_zchat_help_exits_zero(tmp_path: Path) -> None:
    result = ok(zchat(tmp_path, "--help"))
    assert result.stdout.startswith("usage: zchat")


def test_tail_reconnects_after_a_broker_restart(tmp_path: Path) -> None:
    broker, _lines = start_broker(tmp_path)
    argv = broker.process.argv
    restarted: Proc | None = None
    tail: Proc | None = None
    try:
        register(tmp_path, broker, "alice", "bob")
        server = ("--server", broker.router)
        tail = Proc([*zchat_command(), "tail", *server, "--as", "bob", "--room", "dev",
                     "--count", "2", "--json"], cli_env(tmp_path))
        tail.wait_line("stderr", "following #dev as bob")
        rc, _elapsed = stop_broker(broker)
        assert rc == 0
        tail.wait_line("stderr", "zchat: connection lost; reconnecting in ", timeout_s=15)
        restarted = Proc(argv, cli_env(tmp_path))  # same endpoints, same data directory
        restarted.wait_line("stdout", "database", timeout_s=15)
        ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "during"))
        tail.wait_line("stderr", "zchat: reconnected", timeout_s=15)
        ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "after"))
        assert tail.wait(10) == 0, tail.stderr
        assert [(m["seq"], m["text"]) for m in json_lines("\n".join(tail.stdout))] == \
            [(1, "during"), (2, "after")]
        assert "Traceback" not in "\n".join(tail.stderr)
    finally:
        if tail is not None:
            tail.kill()
        if restarted is not None and restarted.popen.poll() is None:
            restarted.popen.send_signal(signal.SIGTERM)
            assert restarted.wait(5) == 0
        broker.process.kill()


# -- tester's findings ------------------------------------------------------------------------


def test_history_before_beyond_64_bits_is_one_line_400(tmp_path: Path,
                                                       tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice")
    result = zchat(tmp_path, "history", "--server", tcp_broker.router, "--as", "alice",
                   "--room", "dev", "--before", "99999999999999999999999")
    line = one_line_error(result)
    assert "field before is out of range" in line and "(400)" in line


def test_corrupt_database_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "zchat.db").write_text("not sqlite\n", encoding="utf-8")
    result = zchat(tmp_path, "broker", "--data-dir", str(data), "--router",
                   f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}")
    assert one_line_error(result) == \
        f"zchat: error: cannot open the database {data / 'zchat.db'}: file is not a database"
    assert (data / "zchat.db").read_text(encoding="utf-8") == "not sqlite\n"


def test_name_starting_with_dash_is_refused(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    result = zchat(tmp_path, "register", "--server", tcp_broker.router, "--", "-x")
    assert "must not start with '-'" in one_line_error(result)


def test_argv_text_not_utf8_is_one_line(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "bob")
    server = ("--server", tcp_broker.router)
    for argv in (["say", *server, "--as", "alice", "--room", "dev"],
                 ["dm", *server, "--as", "alice", "bob"]):
        result = subprocess.run([*zchat_command(), *argv, b"a \xff b"], env=cli_env(tmp_path),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=15)
        assert one_line_error(result) == "zchat: error: TEXT is not valid UTF-8"


def test_say_stdin_line_not_utf8_is_skipped(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice")
    server = ("--server", tcp_broker.router)
    result = subprocess.run([*zchat_command(), "say", *server, "--as", "alice", "--room",
                             "dev", "-"], env=cli_env(tmp_path),
                            input=b"one\n\xff\xfe\n\nthree \xe2\x82\xac\n",
                            capture_output=True, timeout=15)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.splitlines() == ["zchat: not sent (line 2): not valid UTF-8"]
    history = ok(zchat(tmp_path, "history", *server, "--as", "alice", "--room", "dev",
                       "--json"))
    assert [m["text"] for m in json_lines(history.stdout)] == ["one", "three €"]


def test_empty_password_without_terminal_is_one_line(tmp_path: Path,
                                                     tcp_broker: TcpBroker) -> None:
    for argv in (["register", "alice"], ["say", "--as", "alice", "--room", "dev", "hi"]):
        result = subprocess.run(  # a new session: no controlling terminal, no /dev/tty
            [*zchat_command(), argv[0], "--server", tcp_broker.router, *argv[1:]],
            env=cli_env(tmp_path, password=""), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=15, start_new_session=True)
        assert one_line_error(result) == \
            "zchat: error: no password: set ZCHAT_PASSWORD or run in a terminal"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_tail_logs_out_at_once(tmp_path: Path, tcp_broker: TcpBroker, sig: int,
                                         code: int) -> None:
    register(tmp_path, tcp_broker, "alice", "bob")
    server = ("--server", tcp_broker.router)
    tail = Proc([*zchat_command(), "tail", *server, "--as", "bob", "--room", "dev"],
                cli_env(tmp_path))
    try:
        tail.wait_line("stderr", "following #dev as bob")
        tail.popen.send_signal(sig)
        assert tail.wait(5) == code, tail.stderr
    finally:
        tail.kill()
    assert "Traceback" not in "\n".join(tail.stderr)
    who = ok(zchat(tmp_path, "who", *server, "--as", "alice", "--json"))
    # nobody is online: bob's tail ended, alice's `who` announces no presence
    assert [u["name"] for u in json_lines(who.stdout) if u["presence"] != "offline"] == []
    dm = ok(zchat(tmp_path, "dm", *server, "--as", "alice", "bob", "still there?"))
    assert dm.stdout.strip() == "stored until they log in (to bob)"


def test_sigterm_to_say_stdin_logs_out_at_once(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice", "bob")
    server = ("--server", tcp_broker.router)
    say = Proc([*zchat_command(), "say", *server, "--as", "bob", "--room", "dev", "-"],
               cli_env(tmp_path), stdin=subprocess.PIPE)
    try:
        assert say.popen.stdin is not None
        say.popen.stdin.write("first\n")
        say.popen.stdin.flush()
        wait_for_texts(tmp_path, tcp_broker, ["first"])
        start = time.monotonic()
        say.popen.send_signal(signal.SIGTERM)  # stdin stays open: a read is blocked
        assert say.wait(5) == 143, say.stderr
        assert time.monotonic() - start < 2.0
    finally:
        say.kill()
    assert "Traceback" not in "\n".join(say.stderr)
    dm = ok(zchat(tmp_path, "dm", *server, "--as", "alice", "bob", "gone?"))
    assert dm.stdout.strip() == "stored until they log in (to bob)"


def wait_for_texts(tmp_path: Path, broker: TcpBroker, texts: list[str]) -> None:
    deadline = time.monotonic() + 10
    while True:
        history = zchat(tmp_path, "history", "--server", broker.router, "--as", "alice",
                        "--room", "dev", "--json")
        if "no room named 'dev' (404)" not in history.stderr:  # not created yet: wait
            ok(history)
            if [m["text"] for m in json_lines(history.stdout)] == texts:
                return
        assert time.monotonic() < deadline, (history.stdout, history.stderr)
        time.sleep(0.1)  # polling the broker's history, not waiting for a socket


def test_say_stdin_counts_lines_sent_before_the_broker_died(tmp_path: Path) -> None:
    broker, _lines = start_broker(tmp_path)
    say: Proc | None = None
    try:
        register(tmp_path, broker, "alice")
        say = Proc([*zchat_command(), "say", "--server", broker.router, "--timeout", "1",
                    "--retry-for", "1", "--as", "alice", "--room", "dev", "-"],
                   cli_env(tmp_path), stdin=subprocess.PIPE)
        assert say.popen.stdin is not None
        say.popen.stdin.write("one\ntwo\nthree\n")
        say.popen.stdin.flush()
        wait_for_texts(tmp_path, broker, ["one", "two", "three"])
        rc, _elapsed = stop_broker(broker)
        assert rc == 0
        say.popen.stdin.write("four\n")
        say.popen.stdin.flush()
        assert say.wait(10) == 1, say.stderr
        assert len(say.stderr) == 1, say.stderr
        assert say.stderr[0].startswith("zchat: error: ")
        assert say.stderr[0].endswith(" — 3 lines were sent before it"), say.stderr
        assert f"the broker at {broker.router} did not come back within 1 s" in \
            say.stderr[0], say.stderr
    finally:
        if say is not None:
            say.kill()
        broker.process.kill()


def test_say_stdin_survives_a_broker_restart(tmp_path: Path) -> None:
    """`tail -f log | zchat say -` through a broker restart: the client resumes by itself
    and no line is lost or stored twice (a tester saw every line after a restart refused
    with 401)."""
    broker, _lines = start_broker(tmp_path)
    argv = list(broker.process.popen.args)  # type: ignore[arg-type]
    say: Proc | None = None
    restarted: Proc | None = None
    try:
        register(tmp_path, broker, "alice")
        say = Proc([*zchat_command(), "say", "--server", broker.router, "--as", "alice",
                    "--room", "dev", "-"], cli_env(tmp_path), stdin=subprocess.PIPE)
        assert say.popen.stdin is not None
        say.popen.stdin.write("one\ntwo\n")
        say.popen.stdin.flush()
        wait_for_texts(tmp_path, broker, ["one", "two"])
        assert stop_broker(broker)[0] == 0
        say.popen.stdin.write("three\n")  # offered while the broker is away
        say.popen.stdin.flush()
        restarted = Proc([str(a) for a in argv], cli_env(tmp_path))
        restarted.wait_line("stdout", "database", timeout_s=15)
        say.popen.stdin.write("four\n")
        say.popen.stdin.close()
        assert say.wait(30) == 0, say.stderr
        assert not [line for line in say.stderr if "not sent" in line], say.stderr
        wait_for_texts(tmp_path, broker, ["one", "two", "three", "four"])
    finally:
        if say is not None:
            say.kill()
        broker.process.kill()
        if restarted is not None:
            restarted.kill()


def test_topic_shows_and_sets(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    register(tmp_path, tcp_broker, "alice")
    server = ("--server", tcp_broker.router)
    ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "hi"))
    none = ok(zchat(tmp_path, "topic", *server, "--as", "alice", "dev"))
    assert (none.stdout, none.stderr) == ("", "#dev has no topic\n")  # stdout for scripts
    done = ok(zchat(tmp_path, "topic", *server, "--as", "alice", "dev", "release on Friday"))
    assert done.stdout.strip() == "topic of #dev: release on Friday"
    shown = ok(zchat(tmp_path, "topic", *server, "--as", "alice", "dev"))
    assert shown.stdout.strip() == "release on Friday"


def test_bad_server_port_fails_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    result = zchat(tmp_path, "history", "--server", "tcp://127.0.0.1:99999", "--as", "alice",
                   "--room", "dev")
    assert "port 99999 is out of range (1-65535)" in one_line_error(result)
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("server", ["http://x", "", "tcp:// 127.0.0.1:5555"])
def test_bad_server_is_one_line_at_once(tmp_path: Path, server: str) -> None:
    out = zchat(tmp_path, "who", "--as", "alice", "--server", server, "--timeout", "5",
                timeout_s=3)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("zchat: error:") and "endpoint" in out.stderr
