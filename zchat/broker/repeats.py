"""The broker's log without floods of one error (a fourth tester's: a 40 s PostgreSQL
outage wrote ~450 ERROR lines from three brokers, several a second each — the lease, the
cluster's news, the reload, the LISTEN connection — burying the first one that said
what went wrong).

``RepeatFilter`` is a ``logging.Filter`` for the broker's handlers: of the ERROR (and
worse) records made from one message template by one logger, the first in each
``window_s`` passes, the others are counted, and the next one to pass says how many were
held back (``… (37 more like it in 10 s not shown)``). Records below ERROR all pass: a
warning or an info line is one event each (an eviction, a reaping) that an operator
reads one by one. The template is the record's ``msg`` before its arguments, so one
outage's "cannot renew its lease (%.1f s left): %s" is one template whatever the
seconds left and the driver's text say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds during which a repeated error template is counted rather than written.
WINDOW_S = 10.0
#: Templates remembered at most (forgotten all at once beyond: a burst of distinct
#: errors then passes whole, which is the safe side).
MAX_TEMPLATES = 1000


class RepeatFilter(logging.Filter):
    """See the module. ``clock`` gives monotonic seconds (a test's fake clock)."""

    def __init__(self, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        #: (logger, level, template) -> (when one last passed, how many held since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            # formatted first: the note must not meet the template's % placeholders
            record.msg = f"{record.getMessage()} ({seen[1]} more like it in " \
                         f"{now - seen[0]:.0f} s not shown)"
            record.args = None
        if len(self._seen) >= MAX_TEMPLATES:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True
