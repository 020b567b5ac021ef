"""End to end: ``zchat admin …`` and ``zchat passwd`` as subprocesses against a ``zchat
broker`` subprocess on loopback TCP (CurveZMQ, its key pinned up front), with an admin
account named in the broker's config; and the direct (database) mode once it stopped."""

from __future__ import annotations

import stat
from pathlib import Path

from admin_cli_helpers import failed, register, wire, zchat
from cli_helpers import json_lines, ok
from conftest import (
    TcpBroker,
    stop_broker,
)


def test_bulk_create_from_csv_over_the_wire(tmp_path: Path, broker: TcpBroker) -> None:
    # "root" (the admin) was created by start_broker, as the operator does
    csv_file = tmp_path / "class.csv"
    csv_file.write_text("name,password,bot\nada,,\nbrian,pw-brian-1,\nquizbot,,yes\n",
                        encoding="utf-8")
    out = tmp_path / "passwords.csv"
    result = ok(zchat(tmp_path, "admin", "create", *wire(broker), "--csv", str(csv_file),
                      "--output", str(out)))
    assert "created 3 accounts: ada, brian, quizbot" in result.stderr
    assert result.stdout == ""  # the passwords are in the file only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text().splitlines()
    assert lines[0] == "name,password" and [x.split(",")[0] for x in lines[1:]] == \
        ["ada", "quizbot"]
    ada_password = lines[1].split(",", 1)[1]
    who = ok(zchat(tmp_path, "who", *wire(broker, "ada"), "--room", "lobby", "--json",
                   password=ada_password))
    assert {u["name"] for u in json_lines(who.stdout)} >= {"ada", "brian", "quizbot"}
    users = {u["name"]: u for u in json_lines(ok(zchat(
        tmp_path, "admin", "users", *wire(broker), "--json")).stdout)}
    assert users["quizbot"]["bot"] is True and users["ada"]["bot"] is False
    assert users["root"]["online"] is True and users["brian"]["online"] is False


def test_bad_csv_lists_every_bad_row_and_creates_nothing(tmp_path: Path,
                                                         broker: TcpBroker) -> None:
    register(tmp_path, broker, "zoe")
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text("ok1,pw-ok1-x\nbad name!,pw-bad-x\nZOE,pw-zoe-x\n"
                        "ok2,pw-ok2-x,perhaps\nok1,pw-ok1-y\n", encoding="utf-8")
    error = failed(zchat(tmp_path, "admin", "create", *wire(broker), "--csv", str(csv_file)))
    assert "4 bad rows" in error and "nothing created" in error
    for line in (2, 3, 4, 5):
        assert f"{csv_file}:{line}:" in error
    assert f"{csv_file}:1:" not in error
    users = json_lines(ok(zchat(tmp_path, "admin", "users", *wire(broker), "--json")).stdout)
    assert sorted(str(u["name"]) for u in users) == ["root", "zoe"]


def test_reset_disable_enable_audit_and_non_admin(tmp_path: Path, broker: TcpBroker) -> None:
    register(tmp_path, broker, "pat", "mallory")
    denied = failed(zchat(tmp_path, "admin", "disable", *wire(broker, "mallory"), "pat"))
    assert "only broker admins" in denied
    ok(zchat(tmp_path, "admin", "reset-password", *wire(broker), "pat", "--stdin",
             stdin="fresh pass phrase\n"))
    assert "wrong name or password" in failed(zchat(tmp_path, "who", *wire(broker, "pat")))
    ok(zchat(tmp_path, "who", *wire(broker, "pat"), password="fresh pass phrase"))
    ok(zchat(tmp_path, "admin", "disable", *wire(broker), "pat"))
    assert "disabled" in failed(zchat(tmp_path, "who", *wire(broker, "pat"),
                                      password="fresh pass phrase"))
    ok(zchat(tmp_path, "admin", "enable", *wire(broker), "pat"))
    ok(zchat(tmp_path, "who", *wire(broker, "pat"), password="fresh pass phrase"))
    audit = json_lines(ok(zchat(tmp_path, "admin", "audit", *wire(broker), "--json")).stdout)
    assert [(e["actor"], e["action"], e["target"]) for e in audit] == [
        ("root", "enable", "pat"), ("root", "disable", "pat"),
        ("root", "reset_password", "pat")]
    # filters and paging: --action, --target, --before the last id shown
    only = json_lines(ok(zchat(tmp_path, "admin", "audit", *wire(broker), "--json",
                               "--action", "disable", "--target", "pat")).stdout)
    assert [(e["action"], e["target"]) for e in only] == [("disable", "pat")]
    page = json_lines(ok(zchat(tmp_path, "admin", "audit", *wire(broker), "--json",
                               "--before", str(audit[0]["id"]), "--limit", "1")).stdout)
    assert [e["id"] for e in page] == [audit[1]["id"]]
    direct = json_lines(ok(zchat(tmp_path, "admin", "audit", "--data-dir",
                                 str(broker.data_dir), "--json", "--before",
                                 str(audit[1]["id"]))).stdout)
    assert [e["id"] for e in direct] == [audit[2]["id"]]
    generated = ok(zchat(tmp_path, "admin", "reset-password", *wire(broker), "mallory",
                         "--generate"))
    new = generated.stdout.strip()
    assert len(new) == 16
    ok(zchat(tmp_path, "who", *wire(broker, "mallory"), password=new))


def test_bans_and_unban_from_the_command_line(tmp_path: Path, broker: TcpBroker) -> None:
    register(tmp_path, broker, "troll")
    ok(zchat(tmp_path, "mod", "ban", *wire(broker), "*", "troll", "--reason", "spam"))
    bans = json_lines(ok(zchat(tmp_path, "admin", "bans", *wire(broker), "--json")).stdout)
    assert [(b["kind"], b["room"], b["name"], b["by"], b["reason"]) for b in bans] == \
        [("ban", None, "troll", "root", "spam")]
    assert "banned" in failed(zchat(tmp_path, "who", *wire(broker, "troll")))
    ok(zchat(tmp_path, "admin", "unban", *wire(broker), "troll"))
    assert json_lines(ok(zchat(tmp_path, "admin", "bans", *wire(broker),
                               "--json")).stdout) == []
    ok(zchat(tmp_path, "who", *wire(broker, "troll")))


def test_passwd_happy_path_and_wrong_old_password(tmp_path: Path, broker: TcpBroker) -> None:
    register(tmp_path, broker, "uma")
    wrong = failed(zchat(tmp_path, "passwd", *wire(broker, "uma"), password="not it",
                         ZCHAT_NEW_PASSWORD="whatever new"))
    assert "wrong name or password" in wrong
    ok(zchat(tmp_path, "passwd", *wire(broker, "uma"), ZCHAT_NEW_PASSWORD="uma's new one"))
    assert "wrong name or password" in failed(zchat(tmp_path, "who", *wire(broker, "uma")))
    ok(zchat(tmp_path, "who", *wire(broker, "uma"), password="uma's new one"))


def test_direct_mode_refuses_writes_while_the_broker_runs(tmp_path: Path,
                                                          broker: TcpBroker) -> None:
    register(tmp_path, broker, "vic")
    data = ("--data-dir", str(broker.data_dir))
    users = json_lines(ok(zchat(tmp_path, "admin", "users", *data, "--json")).stdout)
    assert sorted(str(u["name"]) for u in users) == ["root", "vic"]
    assert "broker is running" in failed(zchat(tmp_path, "admin", "disable", *data, "vic"))
    rc, _ = stop_broker(broker)
    assert rc == 0
    ok(zchat(tmp_path, "admin", "disable", *data, "vic"))
    audit = json_lines(ok(zchat(tmp_path, "admin", "audit", *data, "--json")).stdout)
    assert [(e["action"], e["target"]) for e in audit] == [("disable", "vic")]
    assert str(audit[0]["actor"]).startswith("local:")
    users = {u["name"]: u for u in json_lines(ok(zchat(tmp_path, "admin", "users", *data,
                                                       "--json")).stdout)}
    assert users["vic"]["disabled"] is True
    missing = failed(zchat(tmp_path, "admin", "users", "--db", str(tmp_path / "nope.db")))
    assert "no zchat database" in missing
