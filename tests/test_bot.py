"""zchat.bot: the pure dispatch rules and command parsing, then a bot on the in-process
broker (handler errors, timers, presence, stop, token login)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from zchat import wire as p
from zchat.bot import (
    Bot,
    BotLoadError,
    Command,
    Context,
    Handler,
    load_bot,
    match_handlers,
    parse_command,
    split_args,
)
from zchat.errors import LocalProtocolError
from zchat.testing import Harness, next_dm, next_message, run

# -- pure: parsing ---------------------------------------------------------------------------


def test_parse_command_name_args_and_text() -> None:
    cmd = parse_command('!FAQ  how do I "reset my" password ')
    assert cmd == Command(name="faq", args=("how", "do", "I", "reset my", "password"),
                          text='how do I "reset my" password')


def test_parse_command_without_arguments_and_non_commands() -> None:
    assert parse_command("  !agent") == Command("agent", (), "")
    assert parse_command("hello !faq") is None
    assert parse_command("!") is None
    assert parse_command("! faq") is None
    assert parse_command("!faq\nsecond line") == Command("faq", ("second", "line"),
                                                         "second line")


def test_split_args_tolerates_unbalanced_quotes() -> None:
    assert split_args('say "hi there') == ("say", "hi there")
    assert split_args("it's fine") == ("its fine",)
    assert split_args("end \\") == ("end", "\\")
    assert split_args("") == ()


# -- pure: dispatch --------------------------------------------------------------------------


async def _h(ctx: Context) -> None:
    return None


def _msg(text: str, room: str = "dev", sender: str = "alice") -> p.MessagePosted:
    return p.MessagePosted(room=room, seq=1, time=0, sender=sender, text=text)


def _dm(text: str, sender: str = "alice", to: str = "bot") -> p.DirectMessage:
    return p.DirectMessage(id=1, time=0, sender=sender, to=to, text=text)


ANY_MSG = Handler("message", _h)
DEV_MSG = Handler("message", _h, room="Dev")
PATTERN = Handler("message", _h, pattern=re.compile(r"\bdeploy(ed)?\b"))
DM = Handler("dm", _h)
FAQ = Handler("command", _h, command="faq")
PRESENCE = Handler("presence", _h)
TIMER = Handler("timer", _h, seconds=1)
ALL = [ANY_MSG, DEV_MSG, PATTERN, DM, FAQ, PRESENCE, TIMER]


def handlers_for(event: object, me: str = "bot") -> list[Handler]:
    return [m.handler for m in match_handlers(ALL, event, me)]


def test_room_message_reaches_room_and_pattern_handlers() -> None:
    assert handlers_for(_msg("hello", room="dev")) == [ANY_MSG, DEV_MSG]
    assert handlers_for(_msg("hello", room="ops")) == [ANY_MSG]
    assert handlers_for(_msg("we deployed it", room="ops")) == [ANY_MSG, PATTERN]
    (m,) = [m for m in match_handlers(ALL, _msg("deploy now", "ops"), "bot")
            if m.handler is PATTERN]
    assert m.match is not None and m.match.group(0) == "deploy"


def test_own_messages_reach_nothing() -> None:
    assert handlers_for(_msg("hello", sender="BOT")) == []
    assert handlers_for(_dm("copy", sender="bot", to="alice")) == []
    assert handlers_for(p.PresenceChanged(name="bot", presence="online", time=0)) == []


def test_command_goes_to_command_handlers_only() -> None:
    matches = match_handlers(ALL, _msg("!faq refunds?"), "bot")
    assert [m.handler for m in matches] == [FAQ]
    assert matches[0].command == Command("faq", ("refunds?",), "refunds?")
    assert handlers_for(_dm("!FAQ hours")) == [FAQ]


def test_unknown_command_is_an_ordinary_message() -> None:
    assert handlers_for(_msg("!nope")) == [ANY_MSG, DEV_MSG]
    assert handlers_for(_dm("!nope")) == [DM]


def test_dm_and_presence() -> None:
    assert handlers_for(_dm("hi")) == [DM]
    assert handlers_for(_dm("not for me", to="carol")) == []
    assert handlers_for(p.PresenceChanged(name="alice", presence="away", time=0)) == [PRESENCE]
    assert handlers_for(p.UserJoined(room="dev", name="alice", time=0)) == []


def test_decorators_validate() -> None:
    bot = Bot("b")
    with pytest.raises(TypeError):
        bot.on_dm()(lambda ctx: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError):
        bot.on_command("two words")
    with pytest.raises(ValueError):
        bot.every(0)
    bot.on_command("!Stats")(_h)
    assert bot.handlers == [Handler("command", _h, command="stats")]


# -- on the in-process broker ----------------------------------------------------------------


def test_failing_handler_is_logged_and_the_bot_keeps_running(
        zchat_broker: Harness, caplog: pytest.LogCaptureFixture) -> None:
    bot = Bot("robot", rooms=("dev",))
    calls: list[str] = []

    @bot.on_command("boom")
    async def boom(ctx: Context) -> None:
        calls.append("boom")
        raise RuntimeError("kaboom")

    @bot.on_message(room="dev")
    async def seen(ctx: Context) -> None:
        calls.append(ctx.text)
        await ctx.reply(f"seen {ctx.text}")

    async def scenario() -> None:
        async with zchat_broker.run_bot(bot), zchat_broker.client("alice") as alice:
            await alice.join("dev")
            await alice.send("dev", "!boom")
            await alice.send("dev", "after")
            reply = await next_message(alice, "dev", sender="robot")
            assert reply.text == "seen after"

    with caplog.at_level(logging.ERROR, logger="zchat.bot"):
        run(scenario())
    assert calls == ["boom", "after"]
    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert "boom" in record.getMessage()
    assert record.exc_info is not None and "kaboom" in str(record.exc_info[1])


def test_timer_presence_say_and_dm(zchat_broker: Harness) -> None:
    bot = Bot("clock", rooms=("dev",))
    ticks: list[int] = []
    seen: list[tuple[str, str]] = []

    @bot.every(0.02)
    async def tick(ctx: Context) -> None:
        ticks.append(len(ticks) + 1)
        if len(ticks) == 2:
            await bot.say("dev", "tick 2")

    @bot.on_presence()
    async def presence(ctx: Context) -> None:
        assert isinstance(ctx.event, p.PresenceChanged)
        seen.append((ctx.event.name, ctx.event.presence))
        if ctx.event.presence == "away":
            await ctx.reply("see you later")

    async def scenario() -> None:
        async with zchat_broker.client("alice") as alice:
            await alice.join("dev")
            async with zchat_broker.run_bot(bot):
                msg = await next_message(alice, "dev", sender="clock")
                assert msg.text == "tick 2"
                await alice.set_presence("away", "lunch")
                dm = await next_dm(alice, sender="clock")
                assert dm.text == "see you later"
                await bot.dm("alice", "direct")
                assert (await next_dm(alice, sender="clock")).text == "direct"
            assert bot.client is None  # stopped
        assert ("alice", "away") in seen

    run(scenario())
    assert ticks[:2] == [1, 2]


def test_stop_ends_serve_and_cancel_propagates(zchat_broker: Harness) -> None:
    async def scenario() -> None:
        bot = Bot("stopper", rooms=())
        async with zchat_broker.client("stopper") as client:
            task = asyncio.create_task(bot.serve(client))
            await bot.wait_ready()
            await bot.stop()
            assert await task is None
            task = asyncio.create_task(bot.serve(client))
            await bot.wait_ready()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(scenario())


def test_run_logs_in_with_a_password_and_stops(zchat_broker: Harness) -> None:
    async def scenario() -> None:
        async with zchat_broker.client("alice") as alice:
            await alice.join("dev")
            await alice.register("runner", "s3cret pass phrase")
            bot = Bot("runner", password="s3cret pass phrase", server=zchat_broker.server,
                      rooms=("dev",), context=zchat_broker.context)

            @bot.on_command("ping")
            async def ping(ctx: Context) -> None:
                await ctx.reply("pong " + " ".join(ctx.command.args if ctx.command else ()))

            task = asyncio.create_task(bot.run())
            await bot.wait_ready()
            await alice.send("dev", "!ping a 'b c")
            assert (await next_message(alice, "dev", sender="runner")).text == "pong a b c"
            await bot.stop()
            await task
            users = {u.name: u.presence for u in (await alice.who()).users}
            assert "runner" not in users or users["runner"] == "offline"

    run(scenario())


def test_run_without_credentials_fails_clearly() -> None:
    with pytest.raises(LocalProtocolError, match="no credentials for bot nobody"):
        run(Bot("nobody", server="inproc://zchat-nowhere").run(), timeout_s=2)


def test_load_bot_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BotLoadError, match="no such bot file"):
        load_bot(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(BotLoadError, match="defines no bot"):
        load_bot(empty)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('nope')\n", encoding="utf-8")
    with pytest.raises(BotLoadError, match="RuntimeError: nope"):
        load_bot(broken)
    factory = tmp_path / "factory.py"
    factory.write_text("from zchat.bot import Bot\n\ndef make_bot():\n    return Bot('f')\n",
                       encoding="utf-8")
    assert load_bot(factory).name == "f"


def test_run_logs_in_with_a_token(zchat_broker: Harness) -> None:
    async def scenario() -> None:
        async with zchat_broker.client("tokenbot") as owner:
            token = (await owner.create_token("bot")).token
        bot = Bot("tokenbot", token=token, server=zchat_broker.server, rooms=("dev",),
                  context=zchat_broker.context)

        @bot.on_dm()
        async def hi(ctx: Context) -> None:
            await ctx.reply(f"hi {ctx.sender}")

        task = asyncio.create_task(bot.run())
        await bot.wait_ready()
        async with zchat_broker.client("alice") as alice:
            await alice.dm("tokenbot", "hello")
            assert (await next_dm(alice, sender="tokenbot")).text == "hi alice"
        await bot.stop()
        await task

    run(scenario())
