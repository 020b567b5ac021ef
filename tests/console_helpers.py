"""Drivers for the console tests: the real prompt_toolkit Application (``ChatConsole``)
reading keystrokes from a pipe input and drawing to a DummyOutput (STYLE.md §5), over real
clients and a real broker thread on ``inproc://``.

``console_session`` logs an account in and runs its console; the ``Session`` it yields
types lines and reads the panes, the status bar and the sidebar. The key constants, ``alt``
and ``paste`` are what a terminal sends; ``until`` and ``next_of`` wait with a deadline;
``window_text`` draws one window; ``Script`` answers ``login_flow``'s questions.

Every wait polls a condition with a deadline (``until``); nothing sleeps for a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.layout import Window
from prompt_toolkit.output import DummyOutput

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import Event
from zchat.console import view as v
from zchat.console.app import ChatConsole
from zchat.errors import RequestFailed
from zchat.testing import DEFAULT_PASSWORD, Harness

ENTER = "\r"
UP, DOWN = "\x1b[A", "\x1b[B"
PAGE_UP, PAGE_DOWN, END = "\x1b[5~", "\x1b[6~", "\x1b[F"
TAB, ESC = "\t", "\x1b"
CTRL_A, CTRL_C, CTRL_D, CTRL_E = "\x01", "\x03", "\x04", "\x05"
CTRL_N, CTRL_P, CTRL_U, CTRL_W = "\x0e", "\x10", "\x15", "\x17"


def alt(key: str) -> str:
    return "\x1b" + key


def paste(text: str) -> str:
    return f"\x1b[200~{text}\x1b[201~"


async def until(condition: Callable[[], Any], timeout: float = 5.0,
                what: str = "condition") -> Any:
    """Poll ``condition()`` until it is truthy and return it; AssertionError after
    ``timeout`` seconds. Yields to the loop between checks (polling, not sleeping for a
    socket)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def next_of(client: Client, match: Callable[[Event], bool],
                  timeout: float = 5.0) -> Event:
    """The next event of ``client`` that ``match``es (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no matching event in time")
        event = await client.next_event(left)
        if event is not None and match(event):
            return event


def window_text(window: Window, width: int, height: int) -> list[str]:
    """The text of the rows a window's control draws at ``width`` x ``height``."""
    content = window.content.create_content(width, height)
    return ["".join(text for _style, text, *_ in content.get_line(i))
            for i in range(content.line_count)]


@dataclass
class Session:
    console: ChatConsole
    keys: PipeInput
    task: asyncio.Future[None]
    client: Client

    def send(self, text: str) -> None:
        self.keys.send_text(text)

    def type_line(self, text: str) -> None:
        self.keys.send_text(text + ENTER)

    @property
    def conv(self) -> v.Conversation:
        conv = self.console.current
        assert conv is not None
        return conv

    def texts(self, key: str | None = None, kinds: tuple[str, ...] = ()) -> list[str]:
        conv = self.console.conversations[key] if key else self.conv
        return [ln.text for ln in conv.lines if not kinds or ln.kind in kinds]

    def seqs(self, key: str = "lobby") -> list[int]:
        return [ln.seq for ln in self.console.conversations[key].lines
                if ln.seq is not None]

    def errors(self) -> list[str]:
        return self.texts(kinds=("error",))

    def status(self, width: int = 80) -> str:
        (status,) = [w for w in self.console.app.layout.find_all_windows()
                     if w.style == "class:status"]
        return window_text(status, width, 1)[0]

    def sidebar(self) -> list[str]:
        (sidebar,) = [w for w in self.console.app.layout.find_all_windows()
                      if w.style == "class:sidebar"]
        return [row.rstrip() for row in window_text(sidebar, 24, 30)]

    async def wait_text(self, text: str, key: str | None = None) -> None:
        await until(lambda: text in self.texts(key), what=f"line {text!r}")

    async def wait_exit(self, timeout: float = 1.0) -> float:
        """Seconds until run() returned; fails after ``timeout``."""
        start = time.monotonic()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return time.monotonic() - start


async def login(h: Harness, name: str, client: Client | None = None) -> tuple[Client,
                                                                            p.LoggedIn]:
    client = client or h.new_client()
    await client.connect()
    with contextlib.suppress(RequestFailed):  # already registered
        await client.register(name, DEFAULT_PASSWORD)
    return client, await client.login(name, DEFAULT_PASSWORD)


@contextlib.asynccontextmanager
async def console_session(h: Harness, name: str = "alice", client: Client | None = None,
                          **options: Any) -> AsyncIterator[Session]:
    """``name`` logged in and shown by a running ChatConsole fed from a pipe input; left
    with Ctrl-C (if still running) and the client closed on exit."""
    client, logged_in = await login(h, name, client)
    with create_pipe_input() as keys:
        console = ChatConsole(client, logged_in, input=keys, output=DummyOutput(),
                              tz=dt.UTC, **options)
        task = asyncio.ensure_future(console.run())
        session = Session(console, keys, task, client)
        try:
            await until(lambda: task.done() or (
                console.app.is_running and console.current is not None
                and any(t.startswith("connected to") for t in session.texts())),
                what="the console to start")
            assert not task.done(), task
            yield session
        finally:
            if not task.done():
                keys.send_text(CTRL_C)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5)
            await client.close()


class Script:
    """A scripted ``ask``: answers in order, records the prompts."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []
        self.said: list[str] = []

    async def ask(self, prompt: str, secret: bool) -> str:
        self.prompts.append(f"{prompt}{'(secret)' if secret else ''}")
        assert self.answers, f"unexpected prompt {prompt!r}"
        return self.answers.pop(0)

    def say(self, text: str) -> None:
        self.said.append(text)
