"""Per-account storage quotas (docs/PROTOCOL.md §6.53, issue 14): bytes of message text
an account has stored, the broker-wide ``storage_quota_bytes`` and an operator's
per-account override (ADMIN_SET_QUOTA, ``zchat admin quota``).

The core tests drive BrokerCore through the real codec on real SQLite with the fake
clock of tests/core_helpers.py; the command-line test runs ``zchat admin quota``
against a ``zchat broker`` subprocess. No sockets in the first, no sleeping anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from admin_cli_helpers import failed, register, wire, zchat
from cli_helpers import json_lines, ok
from conftest import TcpBroker, stop_broker
from core_helpers import Peer, World, config

from zchat import wire as p
from zchat.config import Config, ConfigError, validate
from zchat.core import BrokerCore
from zchat.errors import Status
from zchat.store import Store

QUOTA = 100


def quota_world(store: Store | None = None, **overrides: object) -> World:
    return World(store, admins=("root",), storage_quota_bytes=QUOTA, **overrides)


def in_dev(world: World, name: str) -> Peer:
    peer = world.user(name)
    peer.must(p.Join(room="dev"))
    return peer


def audit(world: World) -> list[tuple[str, str, str, str]]:
    return [(r.actor, r.action, r.target, r.detail)
            for r in reversed(world.store.audit_log(action="quota"))]


# -- enforcement ------------------------------------------------------------------------


def test_send_past_the_quota_is_403_and_stores_nothing() -> None:
    world = quota_world()
    alice = in_dev(world, "alice")
    alice.must(p.Send(room="dev", text="x" * 60))
    before = world.counts()
    out = alice.call(p.Send(room="dev", text="y" * 41))
    assert out.status == Status.FORBIDDEN
    assert isinstance(out.reply, p.Error)
    assert out.reply.reason == ("your account's storage quota is full (60 bytes of 100 "
                                "bytes; this message is 41 bytes): ask a broker admin to "
                                "raise it")
    assert out.events == [] and out.pushes == []
    assert world.counts() == before
    assert world.core.last_seq["dev"] == 1  # no sequence number was used
    # up to the quota exactly is allowed
    assert alice.must(p.Send(room="dev", text="z" * 40)).seq == 2
    assert world.core.storage_used["alice"] == QUOTA


def test_dms_and_room_messages_share_the_quota_in_utf8_bytes() -> None:
    world = quota_world()
    alice, bob = in_dev(world, "alice"), world.user("bob")
    alice.must(p.Send(room="dev", text="é" * 30))  # 60 bytes, 30 characters
    alice.must(p.SendDirect(to="bob", text="ab" * 15))  # 30 bytes
    assert world.core.storage_used["alice"] == 90
    before = world.counts()
    out = alice.call(p.SendDirect(to="bob", text="€" * 4))  # 12 bytes
    assert out.status == Status.FORBIDDEN and "storage quota is full" in str(out.reply)
    assert out.pushes == [] and world.counts() == before
    # the recipient's quota is not the sender's: bob's replies are his own
    bob.must(p.SendDirect(to="alice", text="k" * 100))
    assert world.core.storage_used == {"alice": 90, "bob": 100}


def test_a_retry_of_a_message_stored_before_the_quota_filled_gets_its_original() -> None:
    """The client retries with the same cmid when a reply was lost (§6.8): the message is
    stored, so the retry is answered as a retry, not refused by the quota it filled."""
    world = quota_world()
    alice, _bob = in_dev(world, "alice"), world.user("bob")
    first = alice.must(p.Send(room="dev", text="x" * QUOTA, cmid="c-1"))
    again = alice.must(p.Send(room="dev", text="x" * QUOTA, cmid="c-1"))
    assert (again.seq, again.time) == (first.seq, first.time)
    assert alice.call(p.Send(room="dev", text="new", cmid="c-2")).status == 403
    world.core.storage_quotas["alice"] = 2 * QUOTA  # room for one DM
    dm = alice.must(p.SendDirect(to="bob", text="d" * QUOTA, cmid="d-1"))
    assert alice.must(p.SendDirect(to="bob", text="d" * QUOTA, cmid="d-1")).id == dm.id
    assert alice.call(p.SendDirect(to="bob", text="d", cmid="d-2")).status == 403
    assert world.core.storage_used["alice"] == 2 * QUOTA


def test_no_quota_by_default_changes_nothing_and_counts_only_when_asked() -> None:
    """Without any quota the broker neither refuses nor counts (no scan of every text at
    start); USERS or ADMIN_SET_QUOTA counts once, and from then on SEND and DM keep the
    count."""
    world = World(admins=("root",))
    assert world.core.config.storage_quota_bytes == 0
    alice = in_dev(world, "alice")
    for _ in range(5):
        alice.must(p.Send(room="dev", text="x" * 4000))
    assert world.core.storage_used is None
    root = world.user("root")
    users = {u.name: u for u in root.must(p.ListUsers()).users}
    assert (users["alice"].stored_bytes, users["alice"].quota_bytes) == (20_000, 0)
    alice.must(p.Send(room="dev", text="y"))
    assert root.must(p.SetQuota(name="alice", quota_bytes=20_002)).stored_bytes == 20_001
    alice.must(p.Send(room="dev", text="z"))
    assert alice.call(p.Send(room="dev", text="z")).status == Status.FORBIDDEN
    # a quota of its own puts the counting in force from the start
    again = BrokerCore(world.store, world.core.config, "tcp://127.0.0.1:5556", world.clock.ms)
    assert again.storage_used == {"alice": 20_002}


# -- counting ----------------------------------------------------------------------------


def test_counts_are_the_stores_after_a_restart_and_a_lost_group(tmp_path: Path) -> None:
    """The core counts once at start (one GROUP BY) and then in memory: a new core on the
    same database (a restart, or the rebuild after a group commit failed) counts the
    same, and a group that was rolled back counts nothing."""
    db = tmp_path / "zchat.db"
    world = quota_world(Store(db))
    alice, bob = in_dev(world, "alice"), in_dev(world, "bob")
    alice.must(p.Send(room="dev", text="a" * 30))
    bob.must(p.Send(room="dev", text="b" * 20))
    bob.must(p.SendDirect(to="alice", text="ü" * 10))
    alice.must(p.DeleteMessage(room="dev", seq=1))  # kept for the audit: still counted
    counted = dict(world.core.storage_used)
    assert counted == {"alice": 30, "bob": 40}
    assert world.store.storage_used() == counted
    world.store.begin_group()  # as the loop does; this batch is lost
    alice.must(p.Send(room="dev", text="c" * 50))
    assert world.core.storage_used["alice"] == 80
    world.store.abort_group()
    rebuilt = BrokerCore(world.store, world.core.config, "tcp://127.0.0.1:5556", world.clock.ms)
    assert rebuilt.storage_used == counted
    world.store.close()
    restarted = BrokerCore(Store(db), world.core.config, "tcp://127.0.0.1:5556",
                           world.clock.ms)
    assert restarted.storage_used == counted


def test_deleting_a_room_frees_its_text_for_its_senders() -> None:
    world = quota_world()
    alice, bob = in_dev(world, "alice"), in_dev(world, "bob")
    alice.must(p.Join(room="ops"))
    alice.must(p.Send(room="dev", text="a" * 30))
    bob.must(p.Send(room="dev", text="b" * 20))
    alice.must(p.Send(room="ops", text="o" * 60))
    assert alice.call(p.Send(room="ops", text="o" * 20)).status == 403
    root = world.user("root")
    root.must(p.DeleteRoom(room="dev"))
    assert world.core.storage_used == {"alice": 60} == world.store.storage_used()
    alice.must(p.Send(room="ops", text="o" * 20))


# -- ADMIN_SET_QUOTA -----------------------------------------------------------------------


def test_an_admin_override_raises_removes_and_resets_the_quota() -> None:
    world = quota_world()
    alice, root = in_dev(world, "alice"), world.user("root")
    alice.must(p.Send(room="dev", text="x" * QUOTA))
    assert alice.call(p.Send(room="dev", text="more")).status == 403
    assert root.must(p.SetQuota(name="ALICE", quota_bytes=1000)) == p.QuotaSet(
        name="alice", quota_bytes=1000, default=False, stored_bytes=QUOTA)
    alice.must(p.Send(room="dev", text="more"))
    # none: no quota at all, whatever the broker's default
    assert root.must(p.SetQuota(name="alice", quota_bytes=0)).quota_bytes == 0
    alice.must(p.Send(room="dev", text="y" * 4000))
    # null: the broker's default again
    assert root.must(p.SetQuota(name="alice", quota_bytes=None)) == p.QuotaSet(
        name="alice", quota_bytes=QUOTA, default=True, stored_bytes=QUOTA + 4 + 4000)
    assert alice.call(p.Send(room="dev", text="more")).status == 403
    # the same setting again is an OK that writes and logs nothing
    root.must(p.SetQuota(name="alice", quota_bytes=None))
    assert audit(world) == [("root", "quota", "alice", "1,000 bytes"),
                            ("root", "quota", "alice", "none"),
                            ("root", "quota", "alice", "default (100 bytes)")]
    # an override survives a restart: it is stored
    root.must(p.SetQuota(name="alice", quota_bytes=5000))
    again = BrokerCore(world.store, world.core.config, "tcp://127.0.0.1:5556", world.clock.ms)
    assert again.storage_quotas == {"alice": 5000}


def test_an_override_caps_an_account_on_a_broker_without_a_default() -> None:
    world = World(admins=("root",))
    alice, root = in_dev(world, "alice"), world.user("root")
    root.must(p.SetQuota(name="alice", quota_bytes=10))
    assert alice.call(p.Send(room="dev", text="x" * 11)).status == 403
    alice.must(p.Send(room="dev", text="x" * 10))


def test_users_lists_stored_bytes_and_the_quota_in_force() -> None:
    world = quota_world()
    alice, root = in_dev(world, "alice"), world.user("root")
    world.user("bob")
    alice.must(p.Send(room="dev", text="x" * 42))
    root.must(p.SetQuota(name="bob", quota_bytes=0))
    users = {u.name: u for u in root.must(p.ListUsers()).users}
    assert (users["alice"].stored_bytes, users["alice"].quota_bytes) == (42, QUOTA)
    assert (users["bob"].stored_bytes, users["bob"].quota_bytes) == (0, 0)


def test_non_admins_cannot_set_a_quota_and_nothing_changes() -> None:
    world = quota_world()
    mallory = world.user("mallory")
    world.user("alice")
    out = mallory.call(p.SetQuota(name="mallory", quota_bytes=0))
    assert out.status == Status.FORBIDDEN
    assert "only broker admins may set storage quotas" in str(out.reply)
    assert world.store.storage_quotas() == {} and world.core.storage_quotas == {}
    assert audit(world) == []


@pytest.mark.parametrize(("quota", "status"), [
    (-1, Status.BAD_REQUEST), (p.MAX_STORAGE_QUOTA_BYTES + 1, Status.BAD_REQUEST),
    (2**63, Status.BAD_REQUEST), ("10MB", Status.BAD_REQUEST), (1.5, Status.BAD_REQUEST),
    (True, Status.BAD_REQUEST)])
def test_bad_quota_values_are_refused(quota: object, status: Status) -> None:
    world = quota_world()
    world.user("alice")
    root = world.user("root")
    body = '{"name": "alice", "quota_bytes": %s}' % (
        f'"{quota}"' if isinstance(quota, str) else str(quota).lower())
    out = root.frames([p.VERSION, b"q1", b"ADMIN_SET_QUOTA", body.encode()], p.QuotaSet,
                      b"q1")
    assert out.status == status, out.reply
    assert world.store.storage_quotas() == {} and audit(world) == []


def test_unknown_accounts_and_other_admins_are_refused() -> None:
    world = World(admins=("root", "boss"), storage_quota_bytes=QUOTA)
    root = world.user("root")
    assert root.call(p.SetQuota(name="nobody", quota_bytes=5)).status == Status.NOT_FOUND
    out = root.call(p.SetQuota(name="boss", quota_bytes=5))
    assert out.status == Status.FORBIDDEN and "broker admin" in str(out.reply)
    # one's own is allowed: an admin whose quota filled lifts it
    assert root.must(p.SetQuota(name="root", quota_bytes=0)).quota_bytes == 0
    assert world.store.storage_quotas() == {"root": 0}


def test_storage_quota_setting_is_validated() -> None:
    assert Config().broker.storage_quota_bytes == 0
    validate(Config(broker=config(storage_quota_bytes=p.MAX_STORAGE_QUOTA_BYTES)))
    for bad in (-1, p.MAX_STORAGE_QUOTA_BYTES + 1):
        with pytest.raises(ConfigError, match="storage_quota_bytes"):
            validate(Config(broker=config(storage_quota_bytes=bad)))


# -- zchat admin quota, end to end ----------------------------------------------------------


def test_zchat_admin_quota_against_a_running_broker(tmp_path: Path, broker: TcpBroker) -> None:
    register(tmp_path, broker, "pat", "mallory")
    as_pat = ("--server", broker.router, "--as", "pat")
    ok(zchat(tmp_path, "say", *as_pat, "--room", "lobby", "x" * 60))
    said = ok(zchat(tmp_path, "admin", "quota", *wire(broker), "pat", "100"))
    assert "pat has a quota of 100 bytes (100 bytes); 60 bytes stored" in said.stderr
    refused = failed(zchat(tmp_path, "say", *as_pat, "--room", "lobby", "y" * 41))
    assert "storage quota is full (60 bytes of 100 bytes" in refused
    users = {u["name"]: u for u in json_lines(ok(zchat(
        tmp_path, "admin", "users", *wire(broker), "--json")).stdout)}
    assert (users["pat"]["stored_bytes"], users["pat"]["quota_bytes"]) == (60, 100)
    assert users["mallory"]["quota_bytes"] is None  # no quota
    table = ok(zchat(tmp_path, "admin", "users", *wire(broker))).stdout
    assert "STORED" in table and "QUOTA" in table
    assert "only broker admins" in failed(zchat(tmp_path, "admin", "quota",
                                                *wire(broker, "mallory"), "pat", "none"))
    usage = zchat(tmp_path, "admin", "quota", *wire(broker), "pat", "lots")
    assert usage.returncode == 2 and "none or default" in usage.stderr
    ok(zchat(tmp_path, "admin", "quota", *wire(broker), "pat", "none"))
    ok(zchat(tmp_path, "say", *as_pat, "--room", "lobby", "y" * 41))
    # on the database: refused while the broker holds it, then done and audited
    data = ("--data-dir", str(broker.data_dir))
    assert "broker is running" in failed(zchat(tmp_path, "admin", "quota", *data, "pat",
                                               "1kB"))
    rc, _ = stop_broker(broker)
    assert rc == 0
    said = ok(zchat(tmp_path, "admin", "quota", *data, "pat", "1kB"))
    assert "pat has a quota of 1.0 kB (1,000 bytes); 101 bytes stored" in said.stderr
    entries = json_lines(ok(zchat(tmp_path, "admin", "audit", *data, "--json",
                                  "--action", "quota")).stdout)
    assert [(str(e["actor"]).split(":")[0], e["target"], e["detail"]) for e in entries] == [
        ("local", "pat", "1,000 bytes"), ("root", "pat", "none"), ("root", "pat", "100 bytes")]
