"""A paste without bracketed paste: several lines arriving in one read are one paste.

A terminal with bracketed paste (every current one, when the application asks) wraps a
paste in ``ESC [200~`` … ``ESC [201~`` and prompt_toolkit hands it over as one
``Keys.BracketedPaste`` key, which the console sends as one message, never as commands
(docs/console.md, "Pasting"). Without it — an old terminal, a multiplexer or serial line
that drops the sequences, text piped in — the pasted bytes arrive as key presses, and a
pasted line ``/quit`` followed by Enter ran ``/quit``.

prompt_toolkit reads its input when the file descriptor is readable
(``Application.read_from_input``: ``input.read_keys()``, then the key processor) in
chunks of up to 1,024 bytes. A person types one key at a time, so a read holds one key
or a few; a paste arrives as a burst, many keys in one read. prompt_toolkit's own
Windows console reader (``ConsoleInputReader._is_paste``) turns such a burst into a
``BracketedPaste``; ``PasteGroupingInput`` does the same on POSIX, around any
prompt_toolkit ``Input``:

- it reads everything available at once (``read_keys`` again while the descriptor stays
  readable, at most ``MAX_READS_PER_BURST`` times), so a paste longer than one chunk
  stays one paste;
- ``group_pasted_keys`` (pure) decides: a burst in which a line break (Enter) is
  followed by more text is several lines, hence a paste; each run of text, line breaks
  and tabs in it becomes one ``BracketedPaste`` key. Text ending with one Enter (a line
  typed fast, or over a slow link) stays typing: that Enter sends the line.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from contextlib import AbstractContextManager

from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

#: Reads gathered into one burst at most: 64 chunks of prompt_toolkit's 1,024 bytes, far
#: more than a chat paste, and a bound on the time spent away from the event loop.
MAX_READS_PER_BURST = 64

_LINE_BREAKS = frozenset({Keys.ControlM, Keys.ControlJ})
#: Keys that are pasted text: Enter and Ctrl-J (line breaks) and Tab; any other ``Keys``
#: (arrows, mouse events, terminal answers) ends a run.
_PASTED_KEYS = _LINE_BREAKS | {Keys.ControlI}


def _is_text(key: KeyPress) -> bool:
    return not isinstance(key.key, Keys)


def is_paste(keys: list[KeyPress]) -> bool:
    """Whether keys read at once are a paste: a line break followed, later in the same
    read, by a text character (``"one\\rtwo"``, ``"hi\\r/quit\\r"``). ``"hello\\r"`` and
    ``"hello\\r\\r"`` are typing."""
    seen_break = False
    for key in keys:
        if key.key in _LINE_BREAKS:
            seen_break = True
        elif seen_break and _is_text(key):
            return True
    return False


def group_pasted_keys(keys: list[KeyPress]) -> list[KeyPress]:
    """``keys`` read at once, with a paste (``is_paste``) made ``BracketedPaste`` keys: each
    run of text, line breaks (``\\r`` as typed) and tabs becomes one, in order; other keys
    stay where they were. Not a paste: ``keys`` unchanged."""
    if not is_paste(keys):
        return keys
    out: list[KeyPress] = []
    run: list[str] = []
    for key in keys:
        if _is_text(key) or key.key in _PASTED_KEYS:
            run.append(key.data)
            continue
        if run:
            out.append(KeyPress(Keys.BracketedPaste, "".join(run)))
            run = []
        out.append(key)
    if run:
        out.append(KeyPress(Keys.BracketedPaste, "".join(run)))
    return out


def _readable(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False


def _hung_up(fd: int) -> bool:
    """Whether terminal ``fd`` was hung up (its pseudo-terminal's master closed: the
    window or the tmux session is gone) or closed: poll says POLLHUP, POLLERR or
    POLLNVAL. prompt_toolkit takes only an empty read for the end of its input; a hung-up
    tty answers EIO instead, which it takes for a SIGWINCH and reads again, for ever."""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return True


class PasteGroupingInput(Input):
    """``inner`` (a prompt_toolkit ``Input``: the terminal, or a pipe in tests) whose
    ``read_keys`` returns a whole burst of input with pastes grouped
    (``group_pasted_keys``). Everything else is ``inner``'s: raw and cooked mode,
    attaching to the event loop, suspending."""

    def __init__(self, inner: Input) -> None:
        self.inner = inner
        self._hung_up = False

    def read_keys(self) -> list[KeyPress]:
        keys = self.inner.read_keys()
        if not keys and not self.inner.closed and _hung_up(self.inner.fileno()):
            # Readable, nothing read: the terminal is gone. Closed, the application
            # ends (EOFError) and the console logs out (ChatConsole.run).
            self._hung_up = True
            return keys
        for _ in range(MAX_READS_PER_BURST - 1):
            if self.inner.closed or not _readable(self.inner.fileno()):
                break
            keys.extend(self.inner.read_keys())
        return group_pasted_keys(keys)

    def flush_keys(self) -> list[KeyPress]:
        return self.inner.flush_keys()

    def fileno(self) -> int:
        return self.inner.fileno()

    def typeahead_hash(self) -> str:
        return self.inner.typeahead_hash()

    @property
    def closed(self) -> bool:
        return self._hung_up or self.inner.closed

    def raw_mode(self) -> AbstractContextManager[None]:
        return self.inner.raw_mode()

    def cooked_mode(self) -> AbstractContextManager[None]:
        return self.inner.cooked_mode()

    def attach(self, input_ready_callback: Callable[[], None]) -> AbstractContextManager[None]:
        return self.inner.attach(input_ready_callback)

    def detach(self) -> AbstractContextManager[None]:
        return self.inner.detach()

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
