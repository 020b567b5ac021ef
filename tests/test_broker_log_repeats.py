"""The broker's log keeps the first of a flood of one error and counts the rest
(zchat/broker/repeats.py): a pure unit test with a fake clock."""

from __future__ import annotations

import logging

from zchat.broker.repeats import RepeatFilter


def record(level: int, msg: str, *args: object, name: str = "zchat.broker") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_error_template_passes_once_a_window_and_the_next_says_how_many_were_held() -> None:
    now = [100.0]
    repeats = RepeatFilter(window_s=10.0, clock=lambda: now[0])
    template = "cannot renew its lease (%.1f s left): %s"
    assert repeats.filter(record(logging.ERROR, template, 5.0, "connection refused"))
    passed = []
    for left in range(40):  # four a second for ten seconds, as in the tester's outage
        now[0] += 0.25
        rec = record(logging.ERROR, template, 4.0 - left / 10, "connection refused")
        if repeats.filter(rec):
            passed.append(rec.getMessage())
    assert passed == ["cannot renew its lease (0.1 s left): connection refused (39 more "
                      "like it in 10 s not shown)"]


def test_other_templates_loggers_and_levels_below_error_all_pass() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=10.0, clock=lambda: now[0])
    assert repeats.filter(record(logging.ERROR, "storage failed: %s", "x"))
    assert not repeats.filter(record(logging.ERROR, "storage failed: %s", "y"))
    assert repeats.filter(record(logging.ERROR, "fenced out (%s)", "x"))  # another one
    assert repeats.filter(record(logging.ERROR, "storage failed: %s", "x", name="other"))
    for _ in range(3):  # each eviction is an event of its own
        assert repeats.filter(record(logging.WARNING, "evicted %s", "alice"))
        assert repeats.filter(record(logging.INFO, "evicted %s", "alice"))


def test_a_message_with_a_percent_sign_in_its_text_is_noted_safely() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=1.0, clock=lambda: now[0])
    assert repeats.filter(record(logging.ERROR, "disk %s", "100% full"))
    assert not repeats.filter(record(logging.ERROR, "disk %s", "100% full"))
    now[0] = 2.0
    rec = record(logging.ERROR, "disk %s", "100% full")
    assert repeats.filter(rec)
    assert rec.getMessage() == "disk 100% full (1 more like it in 2 s not shown)"
