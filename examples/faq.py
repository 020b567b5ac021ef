"""FAQ: a customer-service helper that answers from examples/faq.toml.

Ask it by direct message, or in a room with ``!faq QUESTION``. It answers with the entry
whose keywords match the question best, and otherwise says it does not know and suggests
``!agent``. ``!agent [what about]`` (in a room or by DM) announces the customer in the
staff room and tells them that someone will come.

    ZCHAT_PASSWORD=... zchat bot examples/faq.py --as helpdesk

Settings: ``ZCHAT_FAQ_FILE`` (default: faq.toml beside this file) and
``ZCHAT_FAQ_STAFF_ROOM`` (default "staff").
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zchat.bot import Bot, Context

DEFAULT_FAQ = Path(__file__).with_name("faq.toml")
DEFAULT_STAFF_ROOM = "staff"
UNKNOWN = ("Sorry, I don't know the answer to that. Type !agent and someone from our "
           "staff will help you.")


@dataclass(frozen=True)
class Entry:
    keywords: tuple[str, ...]
    answer: str


def load_faq(path: str | Path) -> list[Entry]:
    """The [[faq]] entries of the TOML file ``path``. Raises ValueError naming the file and
    entry when one has no keywords (a list of strings) or no answer (a string)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries = []
    for i, item in enumerate(data.get("faq", []), 1):
        keywords, answer = item.get("keywords"), item.get("answer")
        if not isinstance(keywords, list) or not keywords \
                or not all(isinstance(k, str) and k.strip() for k in keywords):
            raise ValueError(f"{path}: [[faq]] entry {i}: keywords must be a list of words")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{path}: [[faq]] entry {i}: answer must be a text")
        entries.append(Entry(tuple(k.casefold().strip() for k in keywords), answer.strip()))
    return entries


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def score(entry: Entry, question: str) -> int:
    """How many of ``entry``'s keywords occur in ``question`` as whole words (a phrase
    keyword as consecutive words)."""
    words = _words(question)
    joined = " " + " ".join(words) + " "
    return sum(1 for k in entry.keywords if " " + " ".join(_words(k)) + " " in joined)


def best_answer(entries: list[Entry], question: str) -> str | None:
    """The answer of the best-scoring entry (the first on a tie), or None when no keyword
    matches."""
    best, best_score = None, 0
    for entry in entries:
        s = score(entry, question)
        if s > best_score:
            best, best_score = entry, s
    return best.answer if best is not None else None


def make_bot(name: str = "helpdesk", *, faq_path: str | Path | None = None,
             staff_room: str | None = None, rooms: tuple[str, ...] = ("lobby",),
             **options: Any) -> Bot:
    """A FAQ bot answering from ``faq_path``, calling staff in ``staff_room``."""
    entries = load_faq(faq_path or os.environ.get("ZCHAT_FAQ_FILE") or DEFAULT_FAQ)
    staff = staff_room or os.environ.get("ZCHAT_FAQ_STAFF_ROOM") or DEFAULT_STAFF_ROOM
    bot = Bot(name, rooms=(*rooms, staff), **options)

    async def answer(ctx: Context, question: str) -> None:
        if not question.strip():
            await ctx.reply("Ask me a question, e.g. !faq when are you open?")
            return
        await ctx.reply(best_answer(entries, question) or UNKNOWN)

    @bot.on_dm()
    async def on_question(ctx: Context) -> None:
        await answer(ctx, ctx.text)

    @bot.on_command("faq")
    async def on_faq(ctx: Context) -> None:
        assert ctx.command is not None
        await answer(ctx, ctx.command.text)

    @bot.on_command("agent")
    async def on_agent(ctx: Context) -> None:
        assert ctx.command is not None
        where = f"in #{ctx.room}" if ctx.room else "by direct message"
        about = f": {ctx.command.text}" if ctx.command.text else ""
        await bot.say(staff, f"{ctx.sender} asks for an agent {where}{about}")
        await ctx.reply(f"Thanks, {ctx.sender}. Someone from our staff will be with you "
                        "shortly.")

    return bot


bot = make_bot()
