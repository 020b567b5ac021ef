"""Replay benchmark (issue 7): the real IRC log of ../shared/data through zchat at maximum
speed, every message checked on an observer.

Scenario ``replay`` (``python benchmarks/run.py --only replay``): the real ``zchat replay
FILE --room ltsp --speed max --verify`` command (zchat/replay.py: one session per user of
the log, joins, parts, quits, renames and messages in the log's order, each SEND waiting
for its OK) against a benchmark broker, in a subprocess with its own XDG directories and
the broker's key pinned. ``--verify`` makes an observer account in the room check that it
saw every OK'd message exactly once, in sequence order, with its sender and text (exit 1
otherwise). Afterwards the room's HISTORY is read and compared with the log too: the
messages' texts, in order, must be the log's ``message``/``action`` lines.

Figures: messages per second over the whole replay (which includes registering every user
and each session's LOGIN: Argon2id at the harness's 1 MiB, one pass; the sessions scenario measures
the shipped cost), and over the span from the first to the last stored message (the
broker's commit times).

The log is ``--replay-log FILE`` (benchmarks/run.py), by default ``LOG`` in
``Path(__file__).resolve().parents[1].parent / "shared" / "data"``; without the default
log the scenario prints why and reports nothing (run.py refuses a ``--replay-log`` that is
not there before anything starts). ``--quick`` replays the log's first 600 events only.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness import BROKER_DEFAULTS, Bench, BrokerHandle, Row
from sessions import BlockingClient
from startup import zchat_argv

from zchat import replay as zreplay
from zchat import wire as p
from zchat.client import trust

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOG = DATA / "irc-replay-ltsp-2019-10-01-to-18.jsonl"
ROOM = "ltsp"
PASSWORD = "bench password"
#: With --quick, only the log's first events (about a fifth of it).
QUICK_EVENTS = 600
SUMMARY = re.compile(r"(\d+) of (\d+) messages sent, (\d+) refused; (\d+) users .*?"
                     r"(\d+) sessions; ([\d.]+) s")


def _history(bench: Bench, broker: BrokerHandle) -> list[p.MessagePosted]:
    """Every message of ROOM, oldest first, read with HISTORY pages of the maximum size."""
    client = BlockingClient(bench.ctx, broker)
    try:
        client.call(p.Register(name="replay-checker", password=PASSWORD))
        client.call(p.Login(name="replay-checker", password=PASSWORD))
        messages: list[p.MessagePosted] = []
        after = 0
        while True:
            page = client.call(p.FetchHistory(room=ROOM, after=after,
                                              limit=p.MAX_HISTORY_LIMIT))
            if not page.messages:
                return messages
            messages += page.messages
            after = page.messages[-1].seq
    finally:
        client.close()


def replay(bench: Bench) -> list[Row]:
    source: Path = getattr(bench.args, "replay_log", None) or LOG
    if not source.exists():
        why = (f"replay skipped: the IRC log {source} is absent (see "
               "../shared/data/README.md, or give one with --replay-log FILE)")
        print(f"  {why}", flush=True)
        bench.note(why)
        return []
    if bench.encryption != "curve":
        # zchat.replay.replay() makes its Clients with the default transport (curve) and
        # `zchat replay` does not pass [client] encryption / --server-key on: it cannot
        # reach a plain broker.
        why = ("replay skipped with --encryption none: `zchat replay` ignores [client] "
               "encryption (zchat.replay.replay takes no transport settings)")
        print(f"  {why}", flush=True)
        bench.note(why)
        return []
    home = bench.scratch("replay-home")
    log = source
    if bench.quick:  # the log's first QUICK_EVENTS events only
        log = home / f"quick-{source.name}"
        with source.open(encoding="utf-8") as f:
            log.write_text("".join(line for _n, line in zip(range(QUICK_EVENTS), f,
                                                            strict=False)))
    with log.open(encoding="utf-8") as f:
        events = zreplay.parse_log(f, source=str(log))
    said = [e for e in events if isinstance(e, zreplay.Said)]
    with bench.broker("replay") as broker:
        assert broker.public_key is not None
        config = home / "config" / "zchat"
        config.mkdir(parents=True)
        trust.pin_broker_key(config / trust.KNOWN_BROKERS_FILE, broker.router,
                            broker.public_key.decode())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ZCHAT_"))}
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
                   XDG_DATA_HOME=str(home / "data"), XDG_STATE_HOME=str(home / "state"),
                   ZCHAT_PASSWORD=PASSWORD)
        argv = [*zchat_argv(), "replay", str(log), "--room", ROOM, "--speed", "max",
                "--verify", "--server", broker.router]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800,
                              stdin=subprocess.DEVNULL)
        out = done.stdout + done.stderr
        history = _history(bench, broker) if done.returncode == 0 else []
    found = SUMMARY.search(out)
    verify = next((line for line in out.splitlines() if line.startswith("verify")), "")
    error = ""
    if done.returncode != 0 or found is None:
        error = f"zchat replay exited {done.returncode}: {out.strip()[-400:]}"
        return [Row("replay of the IRC log", float("nan"), "", error=error)]
    sent, messages, refused, users, sessions, elapsed = (
        int(found[1]), int(found[2]), int(found[3]), int(found[4]), int(found[5]),
        float(found[6]))
    # The room's history against the log: the texts in order (refused lines left out).
    texts = [m.text for m in history]
    log_texts = iter(e.text for e in said)
    in_log_order = all(any(t == want for want in log_texts) for t in texts)
    if not verify.startswith("verify: the observer saw all"):
        error = f"observer check failed: {verify or 'no verify line'}"
    elif len(history) != sent or not in_log_order:
        error = (f"history holds {len(history)} messages for {sent} sent"
                 + ("" if in_log_order else ", not in the log's order"))
    elif refused:
        error = f"{refused} messages refused by the broker"
    span_s = (history[-1].time - history[0].time) / 1000 if len(history) > 1 else 0.0
    raw = {"log": log.name, "events": len(events), "messages": messages, "sent": sent,
           "refused": refused, "users": users, "sessions": sessions, "elapsed_s": elapsed,
           "first_to_last_message_s": span_s, "verify": verify,
           "argon2_memory_kib": BROKER_DEFAULTS.get("argon2_memory_kib"), "history_checked": len(history)}
    print(f"  replay: {sent} of {messages} messages, {sessions} sessions in {elapsed:.1f} s; "
          f"{verify}", flush=True)
    return [
        Row("IRC log replay, whole run (incl. logins)", sent / elapsed if elapsed else 0.0,
            "msg/s", raw=raw, error=error),
        Row("IRC log replay, first to last message", sent / span_s if span_s else 0.0,
            "msg/s", raw=raw),
    ]


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {"replay": replay}
