"""One updating progress line on a terminal for long work (``zchat replay``, ``zchat admin
create`` from a CSV, ``zchat admin migrate``).

:func:`progress_line` is pure: ``replay: 12,345 / 98,765 messages (12%), 3,210 msg/s``.
:class:`Progress` draws it on a stream (standard error) only when that stream is a
terminal, redrawing the one line (``\\r`` and erase-to-end ``ESC [K``) at most every
``interval_s`` seconds, and ends it with a newline in :meth:`Progress.close`. On a pipe
or a file it writes nothing at all, so scripts and logs see only the command's own
output. Time is an argument (``clock``, monotonic seconds), so tests drive it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Fewest seconds between two redraws: at most four a second, which a person can read and
#: which costs nothing next to the work measured.
DEFAULT_INTERVAL_S = 0.25
#: Erase from the cursor to the end of the line (ECMA-48 EL, CSI K): a shorter line drawn
#: over a longer one leaves nothing of it.
_ERASE_TO_END = "\x1b[K"


def progress_line(label: str, done: int, total: int | None, unit: str, rate_unit: str,
                  elapsed_s: float) -> str:
    """The progress text: ``LABEL: DONE / TOTAL UNIT (PCT%), RATE RATE_UNIT/s``; without
    a ``total`` (None) ``LABEL: DONE UNIT, RATE RATE_UNIT/s``. Counts have thousands
    separators; the percentage is rounded down (100% only when done); the rate is
    ``done / elapsed_s``, left out before any time has passed."""
    text = f"{label}: {done:,}"
    if total is not None:
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        text += f" / {total:,} {unit} ({percent}%)"
    else:
        text += f" {unit}"
    if elapsed_s > 0:
        text += f", {done / elapsed_s:,.0f} {rate_unit}/s"
    return text


class Progress:
    """A progress line on ``stream`` (default ``sys.stderr``) for ``total`` things
    (None: unknown). ``advance(n)`` / ``update(done)`` count; the line is redrawn when
    ``interval_s`` has passed since the last drawing. ``close()`` draws the final count
    and ends the line. Nothing is written when ``stream`` is not a terminal (``tty``
    overrides the check). Usable as a context manager (closes on the way out)."""

    def __init__(self, label: str, total: int | None, unit: str, rate_unit: str | None = None,
                 *, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.rate_unit = rate_unit or unit
        self.stream = stream if stream is not None else sys.stderr
        self.shown = _isatty(self.stream) if tty is None else tty
        self.clock, self.interval_s = clock, interval_s
        self.done = 0
        self.started_s = clock()
        self._drawn_s: float | None = None
        self._closed = False

    def set_total(self, total: int | None) -> None:
        """The total, once it is known (``migrate`` counts the rows first)."""
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        if not self.shown or self._closed:
            return
        now = self.clock()
        if self._drawn_s is None or now - self._drawn_s >= self.interval_s:
            self._draw(now)

    def close(self) -> None:
        """Draw the final count and end the line (a terminal only); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.shown and (self._drawn_s is not None or self.done):
            self._draw(self.clock())
            self._write("\n")

    def _draw(self, now: float) -> None:
        self._drawn_s = now
        line = progress_line(self.label, self.done, self.total, self.unit, self.rate_unit,
                             now - self.started_s)
        self._write(f"\r{line}{_ERASE_TO_END}")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal: progress is not worth an error
            self.shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
