"""The text side of the IRC gateway end to end (docs/irc.md, "Texts"): grapheme clusters
kept whole, blank lines, CR line ends, texts longer than a line (topics, reasons),
draft/multiline both ways, TAGMSG and client-only tags. A real broker (tests/conftest.py
``harness``), the real gateway on a free loopback port, plain socket IRC clients
(tests/irc_helpers.py); waits are on lines arriving, each bounded."""

from __future__ import annotations

import asyncio

from conftest import run
from irc_helpers import IrcClient, connect, gateway, registered

from zchat.irc.codec import MAX_LINE_BYTES, Message, graphemes, serialize
from zchat.irc.state import MULTILINE_MAX_BYTES, MULTILINE_MAX_LINES, TOPICLEN
from zchat.testing import DEFAULT_PASSWORD, Harness, next_message

FAMILY = "\U0001F469\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # one cluster
ML_CAPS = "message-tags batch echo-message labeled-response server-time draft/multiline"


async def _lines(irc: IrcClient, command: str, until: str) -> list[Message]:
    """``command`` lines up to the one whose text is ``until``."""
    out = [await irc.command(command)]
    while out[-1].params[-1] != until:
        out.append(await irc.command(command))
    return out


async def _join(irc: IrcClient, channel: str = "#dev") -> None:
    irc.send(f"JOIN {channel}")
    await irc.command("366")


def test_long_texts_are_split_between_grapheme_clusters(harness: Harness) -> None:
    """A family emoji (4 people joined by ZWJ, 25 bytes) was cut across two IRC lines:
    the old split cut at UTF-8 character boundaries."""
    async def scenario() -> None:
        await registered(harness, "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            bob = await connect(port, "bob")
            await _join(bob)
            text = "xyz" + FAMILY * 60 + " end"
            await carol.send("dev", text)
            got = [await bob.command("PRIVMSG")]
            while "".join(m.params[1] for m in got) != text:
                got.append(await bob.command("PRIVMSG"))
            assert len(got) > 2
            for m in got:
                assert len(serialize(m)) <= MAX_LINE_BYTES
                assert m.params[1].replace(FAMILY, "").strip("xyz end") == "", m.params[1]
                assert all(g in (FAMILY, "x", "y", "z", " ", "e", "n", "d")
                           for g in graphemes(m.params[1]))
            bob.close()

    run(scenario())


def test_blank_lines_of_a_zchat_text_stay_visible(harness: Harness) -> None:
    """"a\\n\\nb" reached IRC as two lines: the blank one vanished. Now a single space
    (IRC has no empty PRIVMSG), and the msgid is on the first line only."""
    async def scenario() -> None:
        await registered(harness, "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            bob = await connect(port, "bob", caps="message-tags")
            await _join(bob)
            await carol.send("dev", "a\n\nb")
            got = await _lines(bob, "PRIVMSG", "b")
            assert [m.params[1] for m in got] == ["a", " ", "b"]
            assert "msgid" in got[0].tags
            assert ["msgid" in m.tags for m in got[1:]] == [False, False]
            bob.close()

    run(scenario())


def test_an_irc_client_may_end_lines_with_cr_lf_or_crlf(harness: Harness) -> None:
    """Lines ending in a bare CR were never complete (the codec waited for LF); a CRLF
    cut between two reads ends one line, with no phantom line after it."""
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            alice = IrcClient(reader, writer)
            writer.write(f"PASS :{DEFAULT_PASSWORD}\rNICK alice\rUSER u 0 * :A\r".encode())
            await alice.command("001")
            writer.write(b"JOIN #dev\rPRIVMSG #dev :one\r")
            await writer.drain()
            assert (await next_message(carol, "dev")).text == "one"
            writer.write(b"PRIVMSG #dev :two\r")
            await writer.drain()
            assert (await next_message(carol, "dev")).text == "two"
            writer.write(b"\nPRIVMSG #dev :three\n")     # the LF of the CRLF, then LF
            await writer.drain()
            assert (await next_message(carol, "dev")).text == "three"
            seen = await alice.sync()
            assert not [m for m in seen if m.command in ("421", "461", "FAIL")], seen
            alice.close()

    run(scenario())


def test_texts_longer_than_a_line_are_cut_between_clusters_and_given_in_full(
        harness: Harness) -> None:
    """A topic of 300 CJK characters (900 bytes) was cut at the 512-byte line, silently;
    KICK reasons and away texts too. Now the line ends in "…" at a cluster boundary and
    the whole text follows in NOTICEs; TOPICLEN counts bytes and is enforced."""
    async def scenario() -> None:
        await registered(harness, "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            topic = "話" * 293 + FAMILY  # 300 characters, 904 bytes
            await carol.set_topic("dev", topic)
            bob = await connect(port, "bob", caps="away-notify")
            await bob.expect(lambda m: m.command == "005"
                             and f"TOPICLEN={TOPICLEN}" in m.params, "TOPICLEN")
            bob.send("JOIN #dev")
            shown = await bob.command("332")
            assert len(serialize(shown)) <= MAX_LINE_BYTES
            assert shown.params[-1].endswith("…")
            assert topic.startswith(shown.params[-1][:-1])
            full = await _notices_in_full(bob, "The topic of #dev in full: ", topic)
            assert full == topic
            await bob.command("366")
            # live: a new long topic
            await carol.set_topic("dev", "題" * 300)
            live = await bob.command("TOPIC")
            assert live.params[-1].endswith("…") and len(serialize(live)) <= MAX_LINE_BYTES
            assert await _notices_in_full(bob, "The topic of #dev in full: ", "題" * 300) == "題" * 300
            # an away text of 200 CJK characters
            await carol.set_presence("away", "離" * 200)
            away = await bob.command("AWAY")
            assert away.params[-1].endswith("…") and len(serialize(away)) <= MAX_LINE_BYTES
            assert await _notices_in_full(bob, "The away message in full: ", "離" * 200) == "離" * 200
            # TOPICLEN is in bytes: 101 CJK characters (303 bytes) are refused, no change
            bob.send("TOPIC #dev :" + "字" * 101)
            fail = await bob.command("FAIL")
            assert fail.params[:3] == ("TOPIC", "INVALID_TOPIC", "#dev")
            assert (await carol.room_info("dev")).topic == "題" * 300
            # a KICK reason of 200 CJK characters
            await carol.kick("dev", "bob", "理" * 200)
            kick = await bob.command("KICK")
            assert kick.params[:2] == ("#dev", "bob") and kick.params[2].endswith("…")
            assert len(serialize(kick)) <= MAX_LINE_BYTES
            assert await _notices_in_full(bob, "The reason of #dev in full: ", "理" * 200) == "理" * 200
            bob.close()

    run(scenario())


async def _notices_in_full(irc: IrcClient, head: str, whole: str) -> str:
    """The text of the NOTICEs starting with ``head``, read until they hold as many
    characters as ``whole``; each fits a line."""
    pieces: list[str] = []
    while len("".join(pieces)) < len(whole):
        m = await irc.command("NOTICE")
        assert m.params[1].startswith(head), m
        assert len(serialize(m)) <= MAX_LINE_BYTES
        pieces.append(m.params[1][len(head):])
    return "".join(pieces)


def test_multiline_batches_both_ways(harness: Harness) -> None:
    """draft/multiline: a batch from an IRC client is one zchat message; the echo and
    the other multiline client get the batch as it was sent (concat kept), a client
    without the capability one PRIVMSG per line; a zchat text of several lines reaches a
    multiline client as one batch."""
    async def scenario() -> None:
        await registered(harness, "alice", "bob", "dave")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice = await connect(port, "alice", caps=ML_CAPS)
            bob = await connect(port, "bob", caps=ML_CAPS)
            dave = await connect(port, "dave", caps="message-tags")
            for irc in (alice, bob, dave):
                await _join(irc)
            alice.send("@label=L1;+draft/reply=dev/1 BATCH +b1 draft/multiline #dev")
            for line in ("@batch=b1 PRIVMSG #dev :hello", "@batch=b1 PRIVMSG #dev :",
                         "@batch=b1 PRIVMSG #dev :#how is ",
                         "@batch=b1;draft/multiline-concat PRIVMSG #dev :everyone?"):
                alice.send(line)
            alice.send("BATCH -b1")
            posted = await next_message(carol, "dev")
            assert (posted.sender, posted.text) == ("alice", "hello\n\n#how is everyone?")
            for irc, labeled in ((alice, True), (bob, False)):
                start = await irc.command("BATCH")
                assert start.params[1:] == ("draft/multiline", "#dev")
                assert start.tags["msgid"] == f"dev/{posted.seq}"
                assert start.tags["+draft/reply"] == "dev/1"
                assert (start.tags.get("label") == "L1") is labeled
                ref = start.params[0][1:]
                lines = await _lines(irc, "PRIVMSG", "everyone?")
                assert [m.params for m in lines] == [("#dev", "hello"), ("#dev", ""),
                                                      ("#dev", "#how is "),
                                                      ("#dev", "everyone?")]
                assert [("draft/multiline-concat" in m.tags) for m in lines] \
                    == [False, False, False, True]
                assert all(m.tags["batch"] == ref and "msgid" not in m.tags for m in lines)
                assert (await irc.command("BATCH")).params == ("-" + ref,)
            fallback = await _lines(dave, "PRIVMSG", "everyone?")
            assert [m.params[1] for m in fallback] == ["hello", " ", "#how is ", "everyone?"]
            assert fallback[0].tags["msgid"] == f"dev/{posted.seq}"
            assert fallback[0].tags["+draft/reply"] == "dev/1"
            # zchat -> a multiline client: several lines, and a long one with concat
            await carol.send("dev", "one\n" + "ü" * 300)
            start = await bob.command("BATCH")
            got = [await bob.command("PRIVMSG")]
            while "".join(m.params[1] for m in got) != "one" + "ü" * 300:
                got.append(await bob.command("PRIVMSG"))
            assert got[0].params[1] == "one" and len(got) == 3
            assert [("draft/multiline-concat" in m.tags) for m in got] == [False, False, True]
            assert (await bob.command("BATCH")).params == ("-" + start.params[0][1:],)
            for irc in (alice, bob, dave):
                irc.close()

    run(scenario())


def test_bad_multiline_batches_get_fails_and_send_nothing(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice = await connect(port, "alice", caps=ML_CAPS)
            await _join(alice)
            alice.send("CAP LS 302")
            ls = await alice.command("CAP")
            assert f"draft/multiline=max-bytes={MULTILINE_MAX_BYTES}," \
                   f"max-lines={MULTILINE_MAX_LINES}" in ls.params[-1]

            async def fails(lines: list[str], code: str) -> Message:
                for line in lines:
                    alice.send(line)
                fail = await alice.command("FAIL")
                assert fail.params[:2] == ("BATCH", code), fail
                await alice.sync()
                return fail

            too_many = [f"@batch=m PRIVMSG #dev :l{i}" for i in range(MULTILINE_MAX_LINES + 1)]
            await fails(["BATCH +m draft/multiline #dev", *too_many, "BATCH -m"],
                        "MULTILINE_MAX_LINES")
            big = [f"@batch=b PRIVMSG #dev :{'x' * 400}" for _ in range(11)]
            await fails(["BATCH +b draft/multiline #dev", *big, "BATCH -b"],
                        "MULTILINE_MAX_BYTES")
            await fails(["BATCH +t draft/multiline #dev", "@batch=t PRIVMSG #other :hi",
                         "BATCH -t"], "MULTILINE_INVALID_TARGET")
            await fails(["BATCH +c draft/multiline #dev", "@batch=c PRIVMSG #dev :hi",
                         "@batch=c;draft/multiline-concat PRIVMSG #dev :", "BATCH -c"],
                        "MULTILINE_INVALID")
            await fails(["BATCH +u draft/multiline #dev", "@batch=zz PRIVMSG #dev :hi",
                         "BATCH -u"], "MULTILINE_INVALID")
            await fails(["BATCH +e draft/multiline #dev", "BATCH -e"], "MULTILINE_INVALID")
            # a tester's /me in a batch was refused by the broker as a control character
            # (FAIL PRIVMSG MESSAGE_REFUSED … 422): now the batch's own clear FAIL
            fail = await fails(["BATCH +a draft/multiline #dev",
                                "@batch=a PRIVMSG #dev :\x01ACTION acts\x01",
                                "@batch=a PRIVMSG #dev :second", "BATCH -a"],
                               "MULTILINE_INVALID")
            assert "ACTION" in fail.params[-1]
            # nothing of those reached zchat: the next message carol sees is this one
            alice.send("PRIVMSG #dev :after")
            assert (await next_message(carol, "dev")).text == "after"
            alice.close()

    run(scenario())


def test_tagmsg_and_client_only_tags_reach_the_gateways_irc_users(harness: Harness) -> None:
    """TAGMSG was 421; client-only tags of a PRIVMSG were dropped. Now both reach the
    other IRC users of this gateway who negotiated message-tags (zchat carries no tags)."""
    async def scenario() -> None:
        await registered(harness, "alice", "bob", "erin")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice = await connect(port, "alice", caps="message-tags echo-message")
            bob = await connect(port, "bob", caps="message-tags")
            erin = await connect(port, "erin")
            for irc in (alice, bob, erin):
                await _join(irc)
            alice.send("@+typing=active;foo=bar TAGMSG #dev")
            echo = await alice.command("TAGMSG")
            relayed = await bob.command("TAGMSG")
            for m in (echo, relayed):
                assert m.params == ("#dev",) and m.tags["+typing"] == "active"
                assert "foo" not in m.tags and m.source.startswith("alice!")
            assert echo.tags["msgid"] == relayed.tags["msgid"]
            assert not [m for m in await erin.sync() if m.command == "TAGMSG"]
            # to a nick
            alice.send("@+typing=paused TAGMSG bob")
            to_bob = await bob.command("TAGMSG")
            assert to_bob.params == ("bob",) and to_bob.tags["+typing"] == "paused"
            assert (await alice.command("TAGMSG")).tags["msgid"] == to_bob.tags["msgid"]
            # to oneself: the echo, and received too
            alice.send("@label=t1;+draft/react=x TAGMSG alice")
            mine = [await alice.command("TAGMSG"), await alice.command("TAGMSG")]
            assert [m.tags.get("label") for m in mine].count("t1") <= 1
            assert all(m.params == ("alice",) and m.tags["+draft/react"] == "x" for m in mine), mine
            # to a channel not joined
            alice.send("@+typing=active TAGMSG #elsewhere")
            assert (await alice.command("404")).params[1] == "#elsewhere"
            # client-only tags on a PRIVMSG, to a channel and to a nick
            alice.send("@+draft/reply=dev/1;x=y PRIVMSG #dev :re")
            for irc in (alice, bob):
                m = await irc.command("PRIVMSG")
                assert m.params == ("#dev", "re") and m.tags["+draft/reply"] == "dev/1"
                assert "x" not in m.tags
            plain = await erin.command("PRIVMSG")
            assert plain.params == ("#dev", "re") and plain.tags == {}
            assert (await next_message(carol, "dev")).text == "re"
            alice.send("@+draft/react=\U0001F44D PRIVMSG bob :yo")
            dm = await bob.command("PRIVMSG")
            assert dm.params == ("bob", "yo") and dm.tags["+draft/react"] == "\U0001F44D"
            for irc in (alice, bob, erin):
                irc.close()

    run(scenario())


def test_multiline_limits_are_the_brokers_message_limits() -> None:
    """A batch becomes one zchat message: its limits are the broker's for a text."""
    from zchat.config import BrokerConfig
    assert BrokerConfig().max_text_bytes == MULTILINE_MAX_BYTES
    assert BrokerConfig().max_text_lines == MULTILINE_MAX_LINES
