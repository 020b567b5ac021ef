"""Away survives a broker restart: the broker keeps presence in memory (docs/PROTOCOL.md
§8), so a restarted broker has every account that logs in or resumes online. The client
remembers the presence it set (or heard of its account) and sets "away" again after a
reconnect; the console shows ``[away: TEXT]`` in its status bar while away.

Real clients and a real broker thread, stopped and started again on the same endpoints
and SQLite file (tests/client_helpers.py's ``RestartableBroker``); every wait polls
with a deadline.
"""

from __future__ import annotations

import asyncio

from client_helpers import RestartableBroker, collect, is_, logged_in
from conftest import run
from console_helpers import console_session, until

from zchat import wire as p
from zchat.client.events import ConnectionRestored
from zchat.console import view as v


def test_away_is_set_again_after_a_broker_restart(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    """A tester's dave ran ``/away lunch break``; the broker was restarted; the console
    said reconnected and ``zchat who`` showed dave online."""
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        dave = await logged_in(inproc_broker, "dave", timeout_s=1.0, reconnect=True)
        try:
            await dave.set_presence("away", "lunch break")
            await asyncio.to_thread(inproc_broker.stop)
            await asyncio.to_thread(inproc_broker.start)
            await collect(dave, is_(ConnectionRestored), timeout_s=10)
            watcher = await logged_in(inproc_broker, "erin", timeout_s=1.0)
            try:
                found = await watcher.whois("dave")
                assert (found.presence, found.text) == ("away", "lunch break")
            finally:
                await watcher.close()
            assert dave.presence == ("away", "lunch break")

            # Back, then another restart: online stays online (nothing set again).
            await dave.set_presence("online")
            assert dave.presence == ("online", "")
            await asyncio.to_thread(inproc_broker.stop)
            await asyncio.to_thread(inproc_broker.start)
            await collect(dave, is_(ConnectionRestored), timeout_s=10)
            watcher = await logged_in(inproc_broker, "erin", register=False, timeout_s=1.0)
            try:
                assert (await watcher.whois("dave")).presence == "online"
            finally:
                await watcher.close()
        finally:
            await dave.close()

    run(main(), timeout_s=40)


def test_the_client_knows_its_presence_as_another_device_sets_it(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    """Presence belongs to the account (§8): set on the phone, the laptop's client knows
    it (PRESENCE event), so a reconnect of the laptop sets what the account has, not an
    older choice of its own."""
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        laptop = await logged_in(inproc_broker, "dave", timeout_s=1.0, reconnect=True)
        phone = await logged_in(inproc_broker, "dave", register=False, timeout_s=1.0)
        try:
            await phone.set_presence("away", "on the train")
            await collect(laptop, is_(p.PresenceChanged, name="dave", presence="away"))
            assert laptop.presence == ("away", "on the train")
            await phone.set_presence("online")
            await collect(laptop, is_(p.PresenceChanged, name="dave", presence="online"))
            assert laptop.presence == ("online", "")
            # WHOIS and WHO say it too (a console opened while away elsewhere)
            await phone.set_presence("away", "later")
            other = await logged_in(inproc_broker, "dave", register=False, timeout_s=1.0)
            try:
                assert other.presence == ("online", "")
                await other.who("lobby")
                assert other.presence == ("away", "later")
            finally:
                await other.close()
        finally:
            await phone.close()
            await laptop.close()

    run(main(), timeout_s=30)


def test_the_status_bar_shows_away_and_keeps_it_across_a_broker_restart(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    async def main() -> None:
        h = await asyncio.to_thread(inproc_broker.start)
        client = inproc_broker.client(timeout_s=1.0, reconnect=True)
        async with console_session(h, "dave", client=client) as s:
            assert "[away" not in s.status(100)
            s.type_line("/away lunch break")
            await until(lambda: "[away: lunch break]" in s.status(100),
                        what=f"the away mark in {s.status(100)!r}")
            await asyncio.to_thread(inproc_broker.stop)
            h2 = await asyncio.to_thread(inproc_broker.start)
            await until(lambda: "reconnected" in s.texts(), timeout=15, what="reconnect")
            async with h2.client("erin") as erin:
                found = await erin.whois("dave")
                assert (found.presence, found.text) == ("away", "lunch break")
            assert "[away: lunch break]" in s.status(100)
            s.type_line("/back")
            await until(lambda: "[away" not in s.status(100), what="the mark gone")

    run(main(), timeout_s=40)


def test_the_away_mark_in_the_status_bar_is_short_and_stays_when_space_is_short() -> None:
    def text(row: list[tuple[str, str]]) -> str:
        return "".join(t for _s, t in row)

    row = v.render_status("dave", "#lobby", "the topic", "connected", None, 3.0, 80,
                          away="lunch break")
    assert text(row).startswith(" dave │ #lobby │ the topic  ")
    assert text(row).endswith("  [away: lunch break] connected 3 ms ")
    assert len(text(row)) == 80
    assert any("status.away" in style for style, _t in row)
    assert text(v.render_status("dave", "#lobby", "", "connected", None, None, 40,
                                away="")).endswith(" [away] connected ")
    long = text(v.render_status("dave", "#lobby", "topic", "connected", None, None, 80,
                                away="x" * 200))
    assert len(long) == 80 and f"[away: {'x' * 29}…]" in long
    narrow = text(v.render_status("dave", "#lobby", "a topic", "connected", None, None, 36,
                                  away="lunch"))
    assert len(narrow) == 36 and narrow.endswith(" [away: lunch] connected ")
