"""Echo: repeats every direct message back to its sender.

    ZCHAT_PASSWORD=... zchat bot examples/echo.py --as echo
"""

from __future__ import annotations

from typing import Any

from zchat.bot import Bot, Context


def make_bot(name: str = "echo", **options: Any) -> Bot:
    """An echo bot called ``name``; ``options`` go to Bot (server, rooms, ...)."""
    bot = Bot(name, **options)

    @bot.on_dm()
    async def repeat(ctx: Context) -> None:
        await ctx.reply(ctx.text)

    return bot


bot = make_bot()
