"""The bots in examples/, each run on the in-process broker through the zchat_broker
fixture (zchat.testing's pytest plugin), plus their pure helpers."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from zchat.testing import Harness, next_dm, next_message, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> ModuleType:
    """Import examples/NAME.py (once) as the module ``zchat_example_NAME``."""
    module_name = f"zchat_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# -- echo --------------------------------------------------------------------------------------


def test_echo_bot_repeats_direct_messages(zchat_broker: Harness) -> None:
    echo = example("echo")

    async def scenario() -> None:
        async with zchat_broker.run_bot(echo.make_bot("echo")), \
                zchat_broker.client("alice") as alice:
            await alice.dm("echo", "hello there")
            reply = await next_dm(alice, sender="echo")
            assert (reply.to, reply.text) == ("alice", "hello there")

    run(scenario())


def test_echo_bot_ignores_other_bots_so_two_bots_cannot_loop(zchat_broker: Harness) -> None:
    echo = example("echo")

    async def scenario() -> None:
        async with zchat_broker.run_bot(echo.make_bot("echo")), \
                zchat_broker.client() as desk, zchat_broker.client("alice") as alice:
            await desk.register("helpdesk", "pw-helpdesk", bot=True)
            await desk.login("helpdesk", "pw-helpdesk")
            await desk.dm("echo", "Sorry, I don't know.")  # another bot: no answer
            await alice.dm("echo", "ping")                  # a person: answered
            reply = await next_dm(alice, sender="echo")
            assert reply.text == "ping"
            # the bot handles events in order: had it answered helpdesk, that DM
            # would have reached helpdesk before alice's answer
            got = []
            while (event := await desk.next_event(0.2)) is not None:
                got.append(event)
            assert not [e for e in got if getattr(e, "sender", None) == "echo"]

    run(scenario())


# -- faq ---------------------------------------------------------------------------------------


def test_faq_best_keyword_match() -> None:
    faq = example("faq")
    entries = faq.load_faq(EXAMPLES / "faq.toml")
    assert len(entries) == 4
    assert faq.best_answer(entries, "When are you OPEN?").startswith("We are open Monday")
    # "reset" and "password" (2) beat "open" (1)
    assert faq.best_answer(entries, "I cannot open the reset password page") \
        .startswith("Reset your password")
    assert faq.best_answer(entries, "I want my money back").startswith("You can return")
    assert faq.best_answer(entries, "what's the weather like") is None
    assert faq.best_answer(entries, "opener") is None  # whole words only


def test_faq_file_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "faq.toml"
    bad.write_text('[[faq]]\nkeywords = "refund"\nanswer = "x"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="entry 1: keywords"):
        example("faq").load_faq(bad)


def test_faq_bot_answers_and_calls_an_agent(zchat_broker: Harness) -> None:
    faq = example("faq")
    bot = faq.make_bot("helpdesk", staff_room="support")

    async def scenario() -> None:
        async with zchat_broker.run_bot(bot), zchat_broker.client("carol") as carol, \
                zchat_broker.client("stan") as stan:
            await stan.join("support")
            # a DM question
            await carol.dm("helpdesk", "how long does delivery take?")
            answer = await next_dm(carol, sender="helpdesk")
            assert answer.text.startswith("Orders ship within 2 working days")
            # a question it cannot answer
            await carol.dm("helpdesk", "do you sell bicycles?")
            unknown = await next_dm(carol, sender="helpdesk")
            assert unknown.text == faq.UNKNOWN and "!agent" in unknown.text
            # !faq in a room is answered in that room
            await carol.send("lobby", "!faq what are your opening hours")
            posted = await next_message(carol, "lobby", sender="helpdesk")
            assert posted.text == "We are open Monday to Friday, 9:00 to 17:00 (CET)."
            # !agent: staff are told, the customer is reassured
            await carol.send("lobby", "!agent my order never came")
            call = await next_message(stan, "support", sender="helpdesk")
            assert call.text == "carol asks for an agent in #lobby: my order never came"
            told = await next_message(carol, "lobby", sender="helpdesk")
            assert told.text == ("Thanks, carol. Someone from our staff will be with you "
                                 "shortly.")
            await carol.dm("helpdesk", "!agent")
            call = await next_message(stan, "support", sender="helpdesk")
            assert call.text == "carol asks for an agent by direct message"

    run(scenario())


# -- mood --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("this is good", "positive"),
    ("this is not good", "negative"),
    ("not bad at all", "positive"),
    ("I don't like it", "negative"),
    ("it isn't very good", "negative"),
    ("great work, but the build is broken and slow", "negative"),
    ("the meeting is at noon", "neutral"),
    ("not that it matters, the release is great", "positive"),  # beyond the window
    # a negation ends at a clause boundary: punctuation or a joining word (issue 13 §5)
    ("no problem, works great", "positive"),
    ("not good, it crashed", "negative"),
    ("not slow; great", "positive"),
    ("no bugs and great docs", "positive"),
    ("it is not good but fixed", "neutral"),
])
def test_mood_labels(text: str, expected: str) -> None:
    assert example("mood").label(text) == expected


def test_mood_summary() -> None:
    mood = example("mood")
    assert mood.summary("dev", Counter()) == "Mood in #dev: no messages yet."
    assert mood.summary("dev", Counter(positive=1, negative=1)) == \
        "Mood in #dev: 1 positive, 1 negative, 0 neutral — overall mixed."


def test_mood_bot_tallies_per_room(zchat_broker: Harness) -> None:
    mood = example("mood")
    bot = mood.make_bot("moody", rooms=("dev", "ops"))

    async def scenario() -> None:
        async with zchat_broker.run_bot(bot), zchat_broker.client("alice") as alice, \
                zchat_broker.client("bob") as bob:
            for who in (alice, bob):
                await who.join("dev")
                await who.join("ops")
            await alice.send("dev", "I love the new release, great job")
            await bob.send("dev", "the tests are not good today")
            await bob.send("dev", "lunch at noon?")
            await alice.send("dev", "thanks, that fixed it")
            await bob.send("ops", "disk is broken again")
            await alice.send("dev", "!mood")
            dev = await next_message(alice, "dev", sender="moody")
            assert dev.text == ("Mood in #dev: 2 positive, 1 negative, 1 neutral "
                                "— overall positive.")
            await bob.send("ops", "!MOOD")
            ops = await next_message(bob, "ops", sender="moody")
            assert ops.text == ("Mood in #ops: 0 positive, 1 negative, 0 neutral "
                                "— overall negative.")
        assert bot.tallies == {"dev": Counter(positive=2, negative=1, neutral=1),
                               "ops": Counter(negative=1)}

    run(scenario())


# -- the test shown in docs/bots.md (kept identical by the test after it) ----------------------


def test_greeter_bot(zchat_broker: Harness) -> None:
    from zchat.bot import Bot, Context
    from zchat.testing import next_message, run

    bot = Bot("greeter", rooms=("dev",))

    @bot.on_command("hello")
    async def hello(ctx: Context) -> None:
        who = ctx.command.text if ctx.command and ctx.command.text else ctx.sender
        await ctx.reply(f"Hello, {who}!")

    async def scenario() -> None:
        async with zchat_broker.run_bot(bot), zchat_broker.client("alice") as alice:
            await alice.join("dev")
            await alice.send("dev", "!hello world")
            reply = await next_message(alice, "dev", sender="greeter")
            assert reply.text == "Hello, world!"

    run(scenario())


def test_docs_show_the_greeter_test_verbatim() -> None:
    import inspect

    source = inspect.getsource(test_greeter_bot)
    docs = (EXAMPLES.parent / "docs" / "bots.md").read_text(encoding="utf-8")
    assert source in docs
