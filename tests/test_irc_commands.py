"""The IRC gateway's commands on moderation, presence and counts (zchat/irc/commands.py,
bans.py, history.py), end to end: a real broker (tests/conftest.py ``harness``), the real
gateway on a free loopback port, plain socket IRC clients (tests/irc_helpers.py).
Pure functions (ban masks, durations) are tested directly."""

from __future__ import annotations

import asyncio

import pytest
from conftest import run
from irc_helpers import IrcClient, connect, gateway, registered

from zchat.irc.bans import ban_target, parse_duration
from zchat.irc.codec import Message
from zchat.testing import DEFAULT_PASSWORD, Harness


def numerics(msgs: list[Message], *codes: str) -> list[Message]:
    return [m for m in msgs if m.command in codes]


async def joined(irc: IrcClient, channel: str) -> None:
    irc.send(f"JOIN {channel}")
    await irc.expect(lambda m: m.command == "366" and m.params[1] == channel, "366")


def test_ban_masks_name_one_account_or_none() -> None:
    assert ban_target("bob") == "bob"
    assert ban_target("bob!*@*") == "bob"
    assert ban_target("bob!~u@zchat") == "bob"
    assert ban_target("bob!*@anything.example") == "bob"
    for mask in ("b*b", "*!*@zchat", "*@zchat", "bo?!*@*", "bob!nohost", "!*@*", "3com"):
        assert ban_target(mask) is None, mask


def test_ban_durations_in_inspircd_form() -> None:
    assert [parse_duration(d) for d in ("30s", "10m", "2h", "1d", "1h30m", "90", "1w")] \
        == [30, 600, 7200, 86400, 5400, 90, 604800]
    for bad in ("", "0", "1x", "h", "-5m", "20y"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bans_through_mode_and_tban(harness: Harness) -> None:
    """+b bans the account the mask names (members see MODE +b then the KICK the LEFT
    is), b lists with 367 <chan> <mask> <setter> <set-at s>, -b lifts, a wildcard mask
    is 696 and changes nothing, a member's MODE b is 482, TBAN bans for a while."""
    async def scenario() -> None:
        await registered(harness, "bo1", "bm1", "bw1")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("bw1") as zchat_user:
            owner = await connect(port, "bo1")
            member = await connect(port, "bm1")
            await joined(owner, "#bn1")
            await joined(member, "#bn1")
            await zchat_user.join("bn1")
            await owner.expect(lambda m: m.command == "JOIN" and m.source.startswith("bw1!"))
            # a member may not list the bans: the broker says no, told as 482
            member.send("MODE #bn1 b")
            refused = await member.command("482")
            assert refused.params[1] == "#bn1"
            # a mask naming no single account: 696, nothing changes
            owner.send("MODE #bn1 +b *!*@zchat")
            bad = await owner.command("696")
            assert bad.params[1:4] == ("#bn1", "b", "*!*@zchat")
            # a ban of a member: MODE +b and a KICK, to the banner and to the banned
            owner.send("MODE #bn1 +b bm1!*@*")
            await owner.expect(lambda m: m.command == "KICK" and m.params[1] == "bm1")
            mode = await member.command("MODE")
            assert mode.params == ("#bn1", "+b", "bm1!*@*") and mode.source.startswith("bo1!")
            kick = await member.command("KICK")
            assert kick.params[:2] == ("#bn1", "bm1")
            shown = await owner.sync()
            seen = [m for m in owner.seen if m.command == "MODE" and "+b" in m.params]
            assert len(seen) == 1, owner.seen  # once, whichever came first
            assert not [m for m in shown if m.command == "MODE"]
            member.send("JOIN #bn1")
            assert (await member.command("474")).params[1] == "#bn1"
            # TBAN: a timed ban, of the zchat user in the room
            owner.send("TBAN #bn1 1h30m bw1")
            await owner.expect(lambda m: m.command == "MODE" and m.params[1:] == ("+b",
                                                                                 "bw1!*@*"))
            notice = await owner.command("NOTICE")
            assert "5400 s" in notice.params[1]
            owner.send("TBAN #bn1 soon bw1")
            fail = await owner.command("FAIL")
            assert fail.params[:3] == ("TBAN", "INVALID_PARAMS", "soon")
            # the list: 367 per ban, then 368
            owner.send("MODE #bn1 +b")
            await owner.command("368")
            listed = numerics(owner.seen, "367")
            assert [(m.params[1], m.params[2], m.params[3]) for m in listed] == [
                ("#bn1", "bm1!*@*", "bo1"), ("#bn1", "bw1!*@*", "bo1")]
            assert all(m.params[4].isdigit() and len(m.params[4]) == 10 for m in listed)
            # -b lifts: the member may JOIN again
            owner.send("MODE #bn1 -b bm1")
            lifted = await owner.command("MODE")
            assert lifted.params == ("#bn1", "-b", "bm1!*@*")
            await joined(member, "#bn1")
            # the zchat side agrees: one ban left, timed
            async with harness.client("bo1") as owner_client:
                (left,) = (await owner_client.bans("bn1")).bans
                assert left.name == "bw1" and left.until is not None
                assert 5390_000 <= left.until - left.created <= 5410_000
            for irc in (owner, member):
                irc.close()
    run(scenario())


def test_ison_answers_from_presence_heard_and_asks_the_rest(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "is1", "is2", "is3")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("is2") as is2:
            irc = await connect(port, "is1")
            await is2.set_presence("away", "lunch")
            irc.send("ISON is2 nobody-here is3 IS1 bad!nick")
            answer = await irc.command("303")
            assert answer.params[1].split() == ["is2", "is1"]
            irc.send("ISON is3")
            assert (await irc.command("303")).params[1] == ""
            async with harness.client("is3"):
                # the PRESENCE event comes on its own socket: ask until it is heard
                for _ in range(50):
                    irc.send("ISON is3")
                    if (await irc.command("303")).params[1] == "is3":
                        break
                else:
                    raise AssertionError("is3 never shown online by ISON")
            irc.close()
    run(scenario())


def test_lusers_counts_accounts_online_rooms_and_gateway_connections(
        harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "lu1", "lu2", "lu3")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("lu3") as lu3:
            await lu3.join("lusroom")
            one = await connect(port, "lu1")
            two = await connect(port, "lu2")
            online = len((await lu3.who()).users)
            rooms = len((await lu3.list_rooms()).rooms)
            two.send("LUSERS")
            await two.command("266")
            got = {m.command: m for m in numerics(two.seen[-8:], "251", "254", "255",
                                                  "265", "266")}
            assert got["251"].params[1] == f"There are {online} users and 0 invisible " \
                                           "on 1 servers"
            assert online >= 3
            assert got["254"].params[1] == str(rooms)
            assert got["255"].params[1] == "I have 2 clients and 0 servers"
            assert got["265"].params[1].startswith("Current local users: 2 ")
            assert got["266"].params[1].startswith(f"Current global users: {online} ")
            one.send("QUIT")
            await one.closed()
            two.send("LUSERS")
            await two.command("266")
            assert numerics(two.seen[-8:], "255")[-1].params[1] == \
                "I have 1 clients and 0 servers"
            two.close()
    run(scenario())


def test_one_hostmask_everywhere(harness: Harness) -> None:
    """PRIVMSG, WHO (352), WHOIS (311), USERHOST, userhost-in-names and QUIT give one
    nick!user@host: a second connection of the account (whose username has '@' and '!')
    changes nothing while the first is up, nor when it goes, and the QUIT heard after
    the last one went shows it too."""
    async def scenario() -> None:
        await registered(harness, "hm1", "hm2")
        async with gateway(harness, autojoin=False) as (_gw, port):
            async def with_user(user: str) -> IrcClient:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                irc = IrcClient(reader, writer)
                irc.send("PASS :hm1:" + DEFAULT_PASSWORD)
                irc.send("NICK hm1")
                irc.send(f"USER {user} 0 * :Real")
                await irc.command("001")
                return irc

            first = await with_user("firstuser")
            watcher = await connect(port, "hm2", caps="userhost-in-names")
            await joined(first, "#hmr")
            await joined(watcher, "#hmr")
            second = await with_user("a@b!c")
            mask = "hm1!~firstuser@zchat"
            first.send("PRIVMSG #hmr :hi")
            assert (await watcher.command("PRIVMSG")).source == mask
            watcher.send("WHO #hmr")
            await watcher.command("315")
            (who,) = [m for m in numerics(watcher.seen, "352") if m.params[5] == "hm1"]
            assert f"{who.params[5]}!{who.params[2]}@{who.params[3]}" == mask
            watcher.send("WHOIS hm1")
            whois = await watcher.command("311")
            assert f"{whois.params[1]}!{whois.params[2]}@{whois.params[3]}" == mask
            watcher.send("USERHOST hm1")
            assert (await watcher.command("302")).params[1] == "hm1=+~firstuser@zchat"
            watcher.send("NAMES #hmr")
            names = await watcher.command("353")
            assert mask in [n.lstrip("@") for n in names.params[-1].split()]
            first.close()  # the first connection goes: the second's mask stays the same
            second.send("PRIVMSG #hmr :still me")
            msg = await watcher.expect(lambda m: m.command == "PRIVMSG"
                                       and m.params[1] == "still me")
            assert msg.source == mask
            second.send("QUIT :bye")  # the last connection: its QUIT comes after it went
            quit_line = await watcher.command("QUIT")
            assert quit_line.source == mask
            # a later connection of the account is the only one: its USER now
            third = await with_user("third")
            third.send("PRIVMSG #hmr :third")
            msg = await watcher.expect(lambda m: m.command == "PRIVMSG"
                                       and m.params[1] == "third")
            assert msg.source == "hm1!~third@zchat"
            third.close()
            watcher.close()
    run(scenario())


def test_a_deleted_room_is_a_part_so_auto_rejoin_does_not_create_it_again(
        harness: Harness) -> None:
    """ROOM_DELETED used to be a KICK of you, and irssi's and WeeChat's auto-rejoin then
    sent JOIN, which created a new, empty room of the name. Now: a PART of your own with
    the reason, and a NOTICE; no KICK, so such a client sends nothing."""
    async def scenario() -> None:
        await registered(harness, "rd1", "rd2")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("rd1") as owner:
            await owner.join("gone1")
            irc = await connect(port, "rd2")
            await joined(irc, "#gone1")
            await owner.delete_room("gone1", "spam")
            part = await irc.command("PART")
            assert part.source.startswith("rd2!")
            assert part.params == ("#gone1", "room deleted by rd1: spam")
            notice = await irc.command("NOTICE")
            assert "#gone1 was deleted by rd1" in notice.params[1]
            shown = await irc.sync()
            assert not [m for m in irc.seen if m.command == "KICK"], shown
            rooms = {r.room for r in (await owner.list_rooms()).rooms}
            assert "gone1" not in rooms
            # the channel is gone from the connection: MODE asks the broker, which
            # knows no such room
            irc.send("MODE #gone1")
            assert (await irc.command("403")).params[1] == "#gone1"
            irc.close()
    run(scenario())


def test_a_private_room_unknown_to_you_answers_as_a_missing_or_taken_name(
        harness: Harness) -> None:
    """JOIN of a private room one does not know is answered as a name too like an
    existing room's (the broker's 409, §17.2): same numeric, same words (the name
    aside), and no "(+i)"; MODE, MODE b, TOPIC, NAMES, WHO, LIST, PART and KICK of it
    answer as for a room that does not exist."""
    async def scenario() -> None:
        await registered(harness, "pv1", "pv2")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("pv1") as owner:
            await owner.join("hidden1", private=True)
            await owner.join("pubroom")
            irc = await connect(port, "pv2")

            async def answers(lines: list[str], room: str) -> list[tuple[str, ...]]:
                start = len(irc.seen)
                for line in lines:
                    irc.send(line.format(room))
                await irc.sync()
                return [(m.command, *(p.replace(room, "R") for p in m.params))
                        for m in irc.seen[start:-1]]

            irc.send("JOIN #hidden1")
            private = await irc.command("473")
            irc.send("JOIN #pubroom_")  # a look-alike of an existing public room
            lookalike = await irc.command("473")
            assert private.params[2].replace("hidden1", "R") \
                == lookalike.params[2].replace("pubroom_", "R")
            assert "+i" not in private.params[2]
            probes = ["MODE #{}", "MODE #{} b", "MODE #{} +b pv1", "TOPIC #{}",
                      "TOPIC #{} :x", "NAMES #{}", "WHO #{}", "LIST #{}", "PART #{}",
                      "KICK #{} pv1"]
            hidden = await answers(probes, "hidden1")
            missing = await answers(probes, "nosuch1")
            assert hidden == missing
            assert len(hidden) >= len(probes)
            irc.close()
    run(scenario())


def test_chathistory_targets_lists_channels_and_dm_peers_by_newest_message(
        harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "ct1", "ct2", "ct3")
        caps = "batch server-time message-tags echo-message draft/chathistory"
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("ct3") as ct3:
            irc = await connect(port, "ct1", caps=caps)
            peer = await connect(port, "ct2", caps=caps)
            await joined(irc, "#cta")
            await joined(irc, "#ctb")
            times: dict[str, str] = {}
            for target in ("#cta", "ct2", "#ctb"):
                irc.send(f"PRIVMSG {target} :hello")
                echo = await irc.expect(lambda m, t=target: m.command == "PRIVMSG"
                                        and m.params[0] == t)
                times[target] = echo.tags["time"]
                await asyncio.sleep(0.002)  # distinct server-times (ms): no socket wait
            await ct3.dm("ct1", "from zchat")
            dm = await irc.expect(lambda m: m.command == "PRIVMSG" and m.params[0] == "ct1")
            times["ct3"] = dm.tags["time"]

            async def targets(low: str, high: str, limit: int) -> list[tuple[str, str]]:
                irc.send(f"CHATHISTORY TARGETS timestamp={low} timestamp={high} {limit}")
                start = await irc.expect(lambda m: m.command == "BATCH"
                                         and m.params[0].startswith("+"))
                assert start.params[1] == "draft/chathistory-targets"
                ref = start.params[0][1:]
                await irc.expect(lambda m: m.command == "BATCH" and m.params[0] == "-" + ref)
                return [(m.params[1], m.params[2]) for m in irc.seen
                        if m.command == "CHATHISTORY" and m.tags.get("batch") == ref]

            lo, hi = "2020-01-01T00:00:00.000Z", "2262-01-01T00:00:00.000Z"
            order = ["#cta", "ct2", "#ctb", "ct3"]
            assert await targets(lo, hi, 100) == [(t, times[t]) for t in order]
            assert [t for t, _ in await targets(lo, hi, 2)] == ["#cta", "ct2"]
            assert [t for t, _ in await targets(times["#cta"], times["ct3"], 100)] \
                == ["ct2", "#ctb"]
            assert await targets(hi, times["#ctb"], 100) == [("ct3", times["ct3"])]
            irc.send("CHATHISTORY TARGETS yesterday timestamp=" + hi + " 10")
            fail = await irc.command("FAIL")
            assert fail.params[:3] == ("CHATHISTORY", "INVALID_PARAMS", "TARGETS")
            irc.close()
            peer.close()
    run(scenario())


def test_monitor_tells_online_and_offline_as_presence_changes(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "mo1", "mo2", "mo3")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("mo2"):
            irc = await connect(port, "mo1")
            assert "MONITOR=100" in (await irc.command("005")).params
            irc.send("MONITOR + mo2,mo3,nobody-here,*!*@host")
            await irc.command("432")
            shown = [m for m in await irc.sync() if m.command in ("730", "731")]
            assert [(m.command, m.params[1]) for m in shown] == [
                ("730", "mo2!~u@zchat"), ("731", "mo3"), ("731", "nobody-here")]
            async with harness.client("mo3") as mo3:
                online = await irc.command("730")
                assert online.params[1] == "mo3!~u@zchat"
                await mo3.logout()
            offline = await irc.command("731")
            assert offline.params[1] == "mo3"
            irc.send("MONITOR - mo3")
            irc.send("MONITOR L")
            await irc.command("733")
            assert [m.params[1] for m in irc.seen if m.command == "732"] == ["mo2,nobody-here"]
            irc.send("MONITOR C")
            async with harness.client("mo3"):
                irc.send("MONITOR S")
                assert not [m for m in await irc.sync() if m.command in ("730", "731")]
            irc.send("MONITOR X")
            assert (await irc.command("FAIL")).params[:2] == ("MONITOR", "INVALID_PARAMS")
            irc.close()
    run(scenario())
