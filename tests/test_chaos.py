"""Chaos: the delivery guarantees of docs/PROTOCOL.md §14 under killed, paused and
restarted processes — a real ``zchat broker`` subprocess on loopback TCP and client
worker processes (``python tests/chaos_harness.py worker``), audited against the broker's store.

Short versions of the scenarios in tests/chaos_harness.py; ``scripts/chaos.py`` runs long ones.
Each asserts: every OK'd message is stored, every surviving member got every stored
message after its join exactly once and in sequence order (lost 0, duplicated 0, out of
order 0), no client message id stored twice, and no internal error in the broker's log.
Nothing sleeps to wait for a condition: the scenarios poll the workers' logs with deadlines.
"""

from __future__ import annotations

import signal
from pathlib import Path

import chaos_harness as chaos
import pytest
from chaos_harness import Summary


def assert_guarantees(summary: Summary) -> None:
    print(chaos.SUMMARY_HEADER)
    print(summary.row(), summary.notes)
    assert summary.problems == []
    assert (summary.lost, summary.duplicated, summary.out_of_order, summary.stored_twice,
            summary.mismatched) == (0, 0, 0, 0, 0)
    assert summary.sent > 0 and summary.delivered > 0 and summary.members > 0


@pytest.mark.timeout(120)
def test_survivors_get_everything_when_half_the_clients_are_killed(tmp_path: Path) -> None:
    """(a) 20 clients chat; 10 are SIGKILLed at once mid-stream. The 10 survivors and an
    observer get every message; the observer sees exactly one offline event per killed
    account and none for a survivor; the broker keeps its pid."""
    summary = chaos.scenario_kill_clients(tmp_path, clients=20, killed=10, messages=15,
                                          rate=15.0)
    assert_guarantees(summary)
    assert summary.members == 11  # 10 survivors and the observer
    assert summary.stored >= summary.sent >= 10 * 15  # survivors' sends all OK'd


@pytest.mark.timeout(120)
def test_a_paused_client_catches_up_exactly_once(tmp_path: Path) -> None:
    """(b) one member SIGSTOPped while 5,000 messages pass (evicted by heartbeat timeout,
    its share of the PUB queue over the high-water mark), then SIGCONT: it ends with all
    5,000 exactly once in order, and so does a member that was never paused."""
    summary = chaos.scenario_stop_client(tmp_path, messages=5000, pad=100, window=16)
    assert_guarantees(summary)
    assert (summary.sent, summary.stored, summary.members) == (5000, 5000, 3)
    assert summary.delivered == 3 * 5000
    assert summary.notes["paused_evicted"] is True
    assert summary.notes["paused_reconnects"] >= 1


@pytest.mark.timeout(120)
def test_a_paused_client_is_evicted_even_when_the_messages_pass_quickly(tmp_path: Path) -> None:
    """(b) with only 50 small messages, sent well within the heartbeat timeout: the paused
    member is still let go only after the broker evicted it, so it always has to
    reconnect and backfill, and ends with the 50 exactly once in order."""
    summary = chaos.scenario_stop_client(tmp_path, messages=50, pad=10, window=4)
    assert_guarantees(summary)
    assert (summary.sent, summary.stored, summary.delivered) == (50, 50, 3 * 50)
    assert summary.notes["paused_evicted"] is True
    assert summary.notes["paused_reconnects"] >= 1


@pytest.mark.timeout(120)
def test_nothing_acknowledged_is_lost_when_the_broker_is_killed(tmp_path: Path) -> None:
    """(c) the broker is SIGKILLed mid-stream and started again on the same ports and
    database; members reconnect on their own, retry what was not acknowledged with the
    same cmid, and every OK'd message is stored once and delivered once in order."""
    summary = chaos.scenario_kill_broker(tmp_path, clients=4, messages=100, rate=50.0)
    assert_guarantees(summary)
    assert summary.sent == 400
    assert summary.stored == 400  # each cmid stored once: stored_twice is 0 above
    assert summary.notes["reconnects"] >= 4  # every member came back by itself


@pytest.mark.timeout(120)
def test_rapid_login_logout_cycles_under_load(tmp_path: Path) -> None:
    """(d) 200 LOGIN/LOGOUT cycles while three members chat: nothing lost, the cycling
    account's presence alternates online/offline 200 times, the broker keeps its pid."""
    summary = chaos.scenario_login_cycles(tmp_path, cycles=200, clients=3, messages=60,
                                          rate=40.0)
    assert_guarantees(summary)
    assert (summary.sent, summary.stored) == (180, 180)
    assert summary.notes["cycles"] == 200


@pytest.mark.timeout(120)
def test_cluster_nothing_lost_or_doubled_when_a_broker_is_killed(tmp_path: Path,
                                                                 pg_url: str) -> None:
    """(e) three real brokers on one real PostgreSQL, sharing a key pair; six members dealt
    over them, each with all three endpoints, post 60 messages each while broker 0 is
    SIGKILLed. Its two members move to another broker and RESUME there; another broker
    reaps its lease; every member and an observer get every message once, in order; the
    database's seqs are 1..N with no gap; every member is online at the end."""
    summary = chaos.scenario_cluster_kill_broker(tmp_path, clients=6, messages=60,
                                                 rate=30.0, victim=0, url=pg_url)
    assert_guarantees(summary)
    assert (summary.sent, summary.stored, summary.members) == (360, 360, 7)
    assert summary.delivered == summary.notes["due"] >= 360  # the observer's alone
    assert len(summary.notes["move_s"]) == 2  # m0 and m3 were on broker 0
    assert all(0 < s < 30 for s in summary.notes["move_s"])


@pytest.mark.timeout(120)
def test_cluster_a_broker_stopped_past_its_lease_is_fenced_and_loses_nothing(
        tmp_path: Path, pg_url: str) -> None:
    """(f) as (e), but broker 1 is SIGSTOPped past its 1 s lease while traffic flows: it is
    reaped, its members move and RESUME elsewhere; SIGCONTinued, it logs that it was
    fenced out, takes a fresh lease and serves the same history as the others; nothing
    lost, doubled or out of order; the database's seqs are 1..N with no gap."""
    summary = chaos.scenario_cluster_stop_broker(tmp_path, clients=6, messages=60,
                                                 rate=30.0, victim=1, url=pg_url)
    assert_guarantees(summary)
    assert (summary.sent, summary.stored, summary.members) == (360, 360, 7)
    assert summary.delivered == summary.notes["due"] >= 360  # the observer's alone
    assert len(summary.notes["move_s"]) == 2  # m1 and m4 were on broker 1


def test_the_audit_counts_loss_duplicates_and_disorder(tmp_path: Path) -> None:
    """The audit is not vacuous: hand-written logs with a lost, a duplicated, a reordered
    and a doubly stored message are counted as such."""
    log = tmp_path / "m.jsonl"
    log.write_text("\n".join([
        '{"e": "joined", "room": "chaos", "last_seq": 0}',
        '{"e": "sent", "room": "chaos", "seq": 1, "cmid": "a-0"}',
        '{"e": "sent", "room": "chaos", "seq": 9, "cmid": "a-1"}',
        '{"e": "msg", "room": "chaos", "seq": 1, "sender": "a", "id": "a-0"}',
        '{"e": "msg", "room": "chaos", "seq": 3, "sender": "a", "id": "a-2"}',
        '{"e": "msg", "room": "chaos", "seq": 2, "sender": "a", "id": "a-0"}',
        '{"e": "msg", "room": "chaos", "seq": 3, "sender": "a", "id": "a-2"}',
        '{"e": "msg", "room": "chaos", "seq": 5, "sender": "a", "id": "a-4"}',
        '{"e": "cut by SIGKILL',
    ]) + "\n")
    worker = chaos.Worker("m", log, popen=None)  # type: ignore[arg-type]
    history = [(1, "a-0"), (2, "a-0"), (3, "a-2"), (4, "a-3"), (5, "a-4")]
    summary = chaos.audit("unit", [worker], history)
    assert summary.sent == 2
    assert summary.stored == 5
    assert summary.delivered == 5
    assert summary.duplicated == 1            # #3 twice
    assert summary.out_of_order == 1          # #2 after #3
    assert summary.stored_twice == 1          # a-0 stored as #1 and #2
    assert summary.lost == 2                  # a-1 OK'd as #9 but not stored; #4 missing
    assert not summary.ok
    assert worker.count("msg") == 5 and worker.count("joined") == 1


def test_a_killed_worker_has_no_expectations(tmp_path: Path) -> None:
    """A worker process really runs, logs its login, and once SIGKILLed counts as killed
    (its missed messages are not losses); the broker it used keeps serving."""
    with chaos.chaos_run(tmp_path) as (broker, workers):
        w = chaos.spawn_worker(broker, tmp_path, "solo")
        workers.append(w)
        chaos.wait_until(lambda: w.has("joined"), 30, "the worker to join")
        w.kill()
        assert w.popen.returncode == -signal.SIGKILL
        assert w.killed
        summary = chaos.audit("solo", workers, chaos.fetch_history(broker.router))
        assert (summary.members, summary.lost, summary.stored) == (0, 0, 0)
        assert broker.alive


def test_a_flooding_client_gets_429_and_keeps_its_session(tmp_path: Path) -> None:
    """The one scenario with the limiter on (``send_rate_per_s`` 1, ``send_burst`` 5): a
    raw DEALER fires 40 SENDs without waiting. Each gets exactly one answer — OK for the
    burst, ERROR 429 with a ``retry_after_ms`` for the rest — and the connection stays
    logged in (its PING still names the session): rate limiting never disconnects."""
    import zmq

    from zchat import wire as p

    with chaos.chaos_run(tmp_path, send_rate_per_s=1.0, send_burst=5) as (broker, _w):
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVTIMEO, 10_000)
        try:
            dealer.connect(broker.router)

            def call(rid: bytes, request: p.Request) -> p.Message:
                dealer.send_multipart(p.encode_request(rid, request))
                got_rid, value = p.decode_from_broker(dealer.recv_multipart(),
                                                      {rid: request.REPLY})
                assert got_rid == rid
                return value

            assert isinstance(call(b"r", p.Register(name="flood", password=chaos.PASSWORD)),
                              p.Registered)
            login = call(b"l", p.Login(name="flood", password=chaos.PASSWORD))
            assert isinstance(login, p.LoggedIn)
            assert isinstance(call(b"j", p.Join(room=chaos.ROOM)), p.RoomJoined)
            for i in range(40):
                dealer.send_multipart(p.encode_request(b"s%d" % i, p.Send(
                    room=chaos.ROOM, text=f"flood {i}")))
            answers = [p.decode_from_broker(dealer.recv_multipart(), {})[1]
                       for _ in range(40)]
            pong = call(b"p", p.Ping())
        finally:
            dealer.close(0)
            context.term()
        refused = [a for a in answers if isinstance(a, p.Error)]
        # the burst of 5 less the JOIN's token (JOIN takes one, §15), plus refills
        assert 4 <= len(answers) - len(refused) <= 8
        assert refused and all(a.status == 429 and a.retry_after_ms > 0 for a in refused)
        assert isinstance(pong, p.Pong) and pong.session == login.session
        stored = chaos.fetch_history(broker.router)
        assert [cmid for _, cmid in stored] == ["flood"] * (40 - len(refused))
        assert broker.alive
