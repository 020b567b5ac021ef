"""Mood: tags the sentiment of every room message and sums it up on ``!mood``.

Each message in the bot's rooms is scored with the small lexicon below: +1 for each
positive word, -1 for each negative one, the sign flipped when a negation ("not", "never",
"don't", ...) comes at most NEGATION_WINDOW words before it in the same clause ("not good"
is negative, "not bad" positive; a comma or a "but" ends the negation, so "no problem,
works great" is positive and "not good, it crashed" negative). The message is tagged positive (score > 0), negative (< 0) or neutral,
and counted per room. ``!mood`` posts the room's counts and its overall label.

    ZCHAT_PASSWORD=... zchat bot examples/mood.py --as moody
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any, Literal

from zchat.bot import Bot, Context

log = logging.getLogger("zchat.examples.mood")

Label = Literal["positive", "negative", "neutral"]

POSITIVE = frozenset(["good", "great", "excellent", "awesome", "amazing", "nice", "love", "loved", "lovely", "like", "happy", "glad", "fantastic", "wonderful", "brilliant", "fun", "cool", "perfect", "thanks", "thank", "helpful", "best", "better", "enjoy", "enjoyed", "pleased", "yay", "win", "works", "working", "fixed", "beautiful", "excited", "superb"])
NEGATIVE = frozenset(["bad", "terrible", "awful", "horrible", "hate", "hated", "sad", "angry", "annoying", "annoyed", "broken", "bug", "bugs", "crash", "crashed", "crashes", "fail", "failed", "failing", "failure", "worse", "worst", "slow", "ugly", "wrong", "problem", "problems", "sucks", "disappointed", "disappointing", "useless", "upset", "stuck", "boring"])
NEGATIONS = frozenset(["not", "no", "never", "neither", "nor", "none", "nobody", "nothing", "without", "hardly"])
#: How many words after a negation it still flips ("not very good": 2 words later).
NEGATION_WINDOW = 3
#: Words that start a new clause: a negation before them does not reach past them
#: ("not slow but buggy", "no bugs and great docs").
CLAUSE_WORDS = frozenset(["but", "and", "so", "yet", "though", "although", "because",
                          "however", "while", "whereas"])
#: Punctuation that ends a clause (the hyphen is not one: "well-made").
_BOUNDARY = frozenset(",.;:!?()[]\u2014\u2013")


def _tokens(text: str) -> list[str]:
    """Lower-case words, and each clause-ending punctuation mark as a token of its own."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?|[,.;:!?()\[\]\u2014\u2013]",
                      text.casefold().replace("\u2019", "'"))


def _is_negation(word: str) -> bool:
    return word in NEGATIONS or word.endswith("n't")


def sentiment_score(text: str) -> int:
    """The lexicon score of ``text``: +1 per positive word, -1 per negative word, each
    flipped when a negation precedes it within NEGATION_WINDOW words of the same clause
    (a punctuation mark of ``_BOUNDARY`` or a word of CLAUSE_WORDS ends it)."""
    total = 0
    since_negation = NEGATION_WINDOW + 1
    for word in _tokens(text):
        if word in _BOUNDARY or word in CLAUSE_WORDS:
            since_negation = NEGATION_WINDOW + 1  # the negation does not reach past it
            continue
        if _is_negation(word):
            since_negation = 0
            continue
        since_negation += 1
        value = 1 if word in POSITIVE else -1 if word in NEGATIVE else 0
        if value and since_negation <= NEGATION_WINDOW:
            value = -value
        total += value
    return total


def label(text: str) -> Label:
    score = sentiment_score(text)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def summary(room: str, tally: Counter[str]) -> str:
    """The ``!mood`` line for ``room`` from its counts of labels."""
    pos, neg, neu = tally["positive"], tally["negative"], tally["neutral"]
    if pos + neg + neu == 0:
        return f"Mood in #{room}: no messages yet."
    overall = ("positive" if pos > neg else "negative" if neg > pos
               else "mixed" if pos else "neutral")
    return (f"Mood in #{room}: {pos} positive, {neg} negative, {neu} neutral "
            f"— overall {overall}.")


def make_bot(name: str = "moody", **options: Any) -> Bot:
    """A mood bot called ``name``; ``options`` go to Bot (server, rooms, ...). Its tallies
    are ``bot.tallies``: room (lower-cased) → Counter of labels."""
    bot = Bot(name, **options)
    tallies: dict[str, Counter[str]] = {}
    bot.tallies = tallies  # type: ignore[attr-defined]

    @bot.on_message()
    async def tag(ctx: Context) -> None:
        assert ctx.room is not None
        tag = label(ctx.text)
        tallies.setdefault(ctx.room.casefold(), Counter())[tag] += 1
        log.info("#%s <%s> %s: %s", ctx.room, ctx.sender, tag, ctx.text)

    @bot.on_command("mood")
    async def mood(ctx: Context) -> None:
        if ctx.room is None:
            await ctx.reply("Ask !mood in a room.")
            return
        await ctx.reply(summary(ctx.room, tallies.get(ctx.room.casefold(), Counter())))

    return bot


bot = make_bot()
