"""``zchat replay`` (issue 4): parsing the log, the runner on the in-process broker, and the
real #ltsp corpus at maximum speed with the observer's delivery checked."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from conftest import Proc, TcpBroker, cli_env, run, zchat_command

from zchat import wire as p
from zchat.replay import (
    Joined,
    Parted,
    Posted,
    Quit,
    Renamed,
    ReplayLogError,
    Said,
    check_delivery,
    log_users,
    parse_line,
    parse_log,
    parse_speed,
    quit_text,
    replay,
    schedule_s,
)
from zchat.testing import DEFAULT_PASSWORD, running_broker

CORPUS = (Path(__file__).parents[2] / "shared" / "data"
          / "irc-replay-ltsp-2019-10-01-to-18.jsonl")
T0 = dt.datetime(2019, 10, 1, 4, 0, 0)


def line(**fields: object) -> str:
    return json.dumps(fields)


# -- parsing ------------------------------------------------------------------------------


def test_parse_every_event_kind() -> None:
    lines = [
        line(ts="2019-10-01T04:00:00", event="join", user="u001"),
        line(ts="2019-10-01T04:00:01", event="message", user="u001", text="hi: a|b"),
        line(ts="2019-10-01T04:00:02", event="action", user="u001", text="waves"),
        line(ts="2019-10-01T04:00:03", event="rename", user="u001", new="u002"),
        line(ts="2019-10-01T04:00:04", event="part", user="u002"),
        "",
        line(ts="2019-10-01T04:00:05", event="quit", user="u002", reason="Ping timeout"),
    ]
    events = parse_log(lines)
    assert events == [
        Joined(1, T0, "u001"),
        Said(2, T0 + dt.timedelta(seconds=1), "u001", "hi: a|b", "text"),
        Said(3, T0 + dt.timedelta(seconds=2), "u001", "waves", "action"),
        Renamed(4, T0 + dt.timedelta(seconds=3), "u001", "u002"),
        Parted(5, T0 + dt.timedelta(seconds=4), "u002"),
        Quit(7, T0 + dt.timedelta(seconds=5), "u002", "Ping timeout"),  # blank line 6
    ]
    assert log_users(events) == ["u001", "u002"]


def test_quit_without_reason_has_empty_reason() -> None:
    assert parse_line(line(ts="2019-10-01T04:00:00", event="quit", user="u1"), 1) == \
        Quit(1, T0, "u1", "")


@pytest.mark.parametrize(("raw", "problem"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (line(ts="2019-10-01T04:00:00", user="u1"), "missing field 'event'"),
    (line(ts="2019-10-01T04:00:00", event="kick", user="u1"), "unknown event 'kick'"),
    (line(event="join", user="u1"), "missing field 'ts'"),
    (line(ts="yesterday", event="join", user="u1"), "ts 'yesterday' is not an ISO-8601"),
    (line(ts="2019-10-01T04:00:00", event="join"), "missing field 'user'"),
    (line(ts="2019-10-01T04:00:00", event="join", user=""), "field 'user' is empty"),
    (line(ts="2019-10-01T04:00:00", event="join", user=7), "field 'user' must be a string"),
    (line(ts="2019-10-01T04:00:00", event="message", user="u1"), "missing field 'text'"),
    (line(ts="2019-10-01T04:00:00", event="action", user="u1", text=None),
     "missing field 'text'"),
    (line(ts="2019-10-01T04:00:00", event="rename", user="u1"), "missing field 'new'"),
    (line(ts="2019-10-01T04:00:00", event="quit", user="u1", reason=3),
     "field 'reason' must be a string"),
])
def test_malformed_line_names_its_number(raw: str, problem: str) -> None:
    good = line(ts="2019-10-01T04:00:00", event="join", user="u1")
    with pytest.raises(ReplayLogError) as info:
        parse_log([good, good, raw, good], source="log.jsonl")
    assert info.value.line == 3
    assert str(info.value).startswith("log.jsonl line 3: ")
    assert problem in str(info.value)


def test_quit_text_is_one_acceptable_line() -> None:
    assert quit_text("Ping timeout: 265 seconds") == "Ping timeout: 265 seconds"
    assert quit_text("bye\n\tall\x03\u202e now") == "byeall now"
    assert len(quit_text("x" * 500)) == p.MAX_AWAY_TEXT_CHARS
    assert quit_text("\x02\x03  ") == ""
    assert quit_text("\u200b") == ""  # nothing visible: the broker would refuse it


def test_speed_and_schedule() -> None:
    assert parse_speed("max") == 0.0 and parse_speed("0") == 0.0
    assert parse_speed("60") == 60.0
    for bad in ("-1", "nan", "inf", "fast"):
        with pytest.raises(ValueError):
            parse_speed(bad)
    assert schedule_s(T0 + dt.timedelta(minutes=1), T0, 60) == 1.0
    assert schedule_s(T0 + dt.timedelta(hours=5), T0, 0) == 0.0
    assert schedule_s(T0 - dt.timedelta(seconds=5), T0, 1) == 0.0  # never before start


def test_check_delivery_finds_each_kind_of_fault() -> None:
    sent = [Posted(1, "a", "one"), Posted(2, "b", "two"), Posted(3, "a", "three"),
            Posted(4, "a", "four")]
    assert check_delivery(sent, sent).ok
    seen = [Posted(1, "a", "one"), Posted(3, "a", "three"), Posted(2, "b", "two"),
            Posted(3, "a", "three"), Posted(9, "z", "other"), Posted(4, "a", "FOUR")]
    check = check_delivery(sent, seen)
    assert not check.ok
    assert check.out_of_order == (2,) and check.duplicated == (3,)
    assert check.mismatched == (4,) and check.missing == () and check.foreign == 1
    assert "verify FAILED" in check.summary() and "1 duplicated (#3)" in check.summary()
    assert check_delivery(sent, sent[:2]).missing == (3, 4)


# -- through the in-process broker ---------------------------------------------------------


SYNTHETIC = [
    line(ts="2019-10-01T04:00:00", event="quit", user="u009", reason="before the log"),
    line(ts="2019-10-01T04:00:00", event="join", user="u001"),
    line(ts="2019-10-01T04:00:01", event="message", user="u001", text="hello | all: x"),
    line(ts="2019-10-01T04:00:01", event="message", user="u002", text="no join first"),
    line(ts="2019-10-01T04:00:02", event="action", user="u002", text="waves"),
    line(ts="2019-10-01T04:00:02", event="message", user="u002", text="bold \x02x\x02"),
    line(ts="2019-10-01T04:00:03", event="rename", user="u001", new="u003"),
    line(ts="2019-10-01T04:00:03", event="message", user="u003", text="renamed"),
    line(ts="2019-10-01T04:00:04", event="part", user="u002"),
    line(ts="2019-10-01T04:00:04", event="message", user="u002", text="back again"),
    line(ts="2019-10-01T04:00:05", event="quit", user="u003",
         reason="Quit: bye\nnow " + "z" * 300),
    line(ts="2019-10-01T04:00:06", event="join", user="u003"),
    line(ts="2019-10-01T04:00:06", event="message", user="u003", text="line one\nline two"),
]


def test_synthetic_log_replayed_and_verified() -> None:
    events = parse_log(SYNTHETIC)
    handled: list[int] = []  # zchat replay's progress line counts these
    with running_broker() as h:
        report = run(replay(events, server=h.server, room="ltsp", password=DEFAULT_PASSWORD,
                            speed=0, verify=True, context=h.context,
                            progress=handled.append))
    assert handled == sorted(handled) and handled[0] == 0 and handled[-1] == 7
    assert len(handled) == len(events) + 1  # before each event, and once at the end
    assert report.messages == 7
    assert report.sent == 6
    assert [(r.line, r.user) for r in report.refused] == [(6, "u002")]
    assert "control character" in report.refused[0].reason
    assert report.other_refused == []
    assert report.users == 3 and report.sessions == 4  # u003 logged in twice
    assert [(m.sender, m.text) for m in report.posted] == [
        ("u001", "hello | all: x"), ("u002", "no join first"), ("u002", "waves"),
        ("u003", "renamed"), ("u002", "back again"), ("u003", "line one\nline two")]
    assert [m.seq for m in report.posted] == sorted(m.seq for m in report.posted)
    assert report.check is not None and report.check.ok, report.check.summary()
    assert report.check.expected == report.check.seen == 6
    assert "6 of 7 messages sent, 1 refused; 3 users (4 nicks in the log)" in report.summary_lines()[0]


def test_speed_spreads_events_over_the_scaled_log_time() -> None:
    events = parse_log(SYNTHETIC[1:5])  # 2 s of log time
    with running_broker() as h:
        start = time.monotonic()
        report = run(replay(events, server=h.server, room="r", password=DEFAULT_PASSWORD,
                            speed=10, context=h.context))
        took = time.monotonic() - start
    assert report.sent == 3
    assert took >= 0.2  # 2 s of log at 10x


def test_existing_account_with_another_password_is_a_clear_error() -> None:
    from zchat.replay import ReplayError

    events = parse_log(SYNTHETIC[1:3])

    async def scenario(server: str, context: object) -> None:
        await replay(events, server=server, room="r", password="first password",
                     speed=0, context=context)  # type: ignore[arg-type]
        with pytest.raises(ReplayError, match="cannot log in as u001.*ZCHAT_PASSWORD"):
            await replay(events, server=server, room="r", password="other password",
                         speed=0, context=context)  # type: ignore[arg-type]

    with running_broker() as h:
        run(scenario(h.server, h.context))


@pytest.mark.skipif(not CORPUS.exists(), reason=f"the IRC corpus is not at {CORPUS}")
def test_real_corpus_at_max_speed_arrives_once_in_order() -> None:
    with CORPUS.open(encoding="utf-8") as f:
        events = parse_log(f, source=CORPUS.name)
    said = [e for e in events if isinstance(e, Said)]
    # Fast Argon2id (zchat.testing.FAST_HASH), and the rate limits off (docs/PROTOCOL.md
    # §15): at max speed the busiest nicks post hundreds of lines at once, far over the
    # default SEND burst of 20, and the replay registers every nick of the log over one
    # connection, far over the default LOGIN/REGISTER burst of 30. A throttled replay is
    # correct but takes minutes.
    # No timing assertion (performance is measured in benchmarks); the run's bound only
    # turns a hang into a failure.
    with running_broker(send_rate_per_s=0.0, login_rate_per_s=0.0) as h:
        report = run(replay(events, server=h.server, room="ltsp", password=DEFAULT_PASSWORD,
                            speed=0, verify=True, context=h.context), timeout_s=300)
    assert report.messages == len(said) == 2009  # 1,995 messages + 14 actions
    assert report.check is not None
    assert report.check.ok, report.check.summary()
    assert report.check.seen == report.sent == len(report.posted)
    assert report.sent + len(report.refused) == report.messages
    assert report.other_refused == []
    assert report.log_users == 128
    assert report.users == 127  # one nick only ever quits, before any join of its own


# -- the command line ------------------------------------------------------------------------


def test_cli_malformed_log_is_one_line_with_exit_1(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from zchat.cli import main

    log = tmp_path / "bad.jsonl"
    log.write_text(SYNTHETIC[1] + "\n" + '{"ts": "2019-10-01T04:00:00", "event": "join"}\n',
                   encoding="utf-8")
    assert main(["replay", str(log), "--room", "r", "--server", "inproc://nowhere"]) == 1
    err = capsys.readouterr().err
    assert err == f"zchat: error: {log} line 2: missing field 'user'\n"
    assert main(["replay", str(log), "--room", "r", "--speed", "fast"]) == 1
    assert "--speed must be a number" in capsys.readouterr().err


def test_cli_bad_room_is_one_line_before_anything_runs(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from zchat.cli import main

    log = tmp_path / "ok.jsonl"
    log.write_text(SYNTHETIC[1] + "\n", encoding="utf-8")
    assert main(["replay", str(log), "--room", "bad room", "--server", "inproc://nowhere"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zchat: error: room name must not contain whitespace") and \
        err.count("\n") == 1


def test_cli_replay_verify_against_a_broker_process(tcp_broker: TcpBroker,
                                                    tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(SYNTHETIC) + "\n", encoding="utf-8")
    proc = Proc([*zchat_command(), "replay", str(log), "--room", "ltsp", "--speed", "max",
                 "--verify", "--server", tcp_broker.router], cli_env(tmp_path))
    assert proc.wait(30) == 0, proc.stderr
    assert "6 of 7 messages sent, 1 refused" in proc.stdout[1]
    assert any("refused line 6 (u002)" in line for line in proc.stdout)
    assert proc.stdout[-1] == "verify: the observer saw all 6 messages once each, in order"


def test_cli_replay_uses_the_client_transport_settings(tmp_path: Path) -> None:
    """`zchat replay` connects as every other command does ([client] encryption here):
    it once built its clients with the defaults and could not reach a plain broker."""
    from zchat.testing import free_port

    (tmp_path / "broker.toml").write_text('[broker]\nargon2_memory_kib = 1024\nargon2_time_cost = 1\nencryption = "none"\n',
                                          encoding="utf-8")
    router = f"tcp://127.0.0.1:{free_port()}"
    broker = Proc([*zchat_command(), "broker", "--config", str(tmp_path / "broker.toml"),
                   "--data-dir", str(tmp_path / "data"), "--router", router,
                   "--pub", f"tcp://127.0.0.1:{free_port()}"], cli_env(tmp_path))
    try:
        broker.wait_line("stdout", "database", timeout_s=15)
        client = tmp_path / "xdg-config" / "zchat" / "zchat.toml"
        client.parent.mkdir(parents=True)
        client.write_text('[client]\nencryption = "none"\n', encoding="utf-8")
        log = tmp_path / "log.jsonl"
        log.write_text("\n".join(SYNTHETIC) + "\n", encoding="utf-8")
        proc = Proc([*zchat_command(), "replay", str(log), "--room", "ltsp", "--speed",
                     "max", "--verify", "--server", router], cli_env(tmp_path))
        assert proc.wait(30) == 0, proc.stderr
        assert proc.stdout[-1] == "verify: the observer saw all 6 messages once each, in order"
    finally:
        broker.kill()
