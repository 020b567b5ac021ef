"""The IRC connection's pure state machine (zchat/irc/state.py), driven directly: IRC
messages, zchat replies and events in; IRC messages and zchat calls out. No sockets."""

from __future__ import annotations

import base64
from typing import Any

from zchat import wire as p
from zchat.irc import calls as c
from zchat.irc.codec import Message, parse_line
from zchat.irc.core import connection
from zchat.irc.state import IrcConnection, Settings


def lines(actions: list[c.Action]) -> list[Message]:
    return [a.message for a in actions if isinstance(a, c.Send)]


def calls(actions: list[c.Action]) -> list[c.Call]:
    return [a for a in actions if isinstance(a, c.Call)]


def feed(conn: IrcConnection, *raw: str) -> list[c.Action]:
    out: list[c.Action] = []
    for line in raw:
        out += conn.receive(parse_line(line))
    return out


def logged_in(name: str = "alice", rooms: tuple[str, ...] = ()) -> p.LoggedIn:
    return p.LoggedIn(name=name, session="s", rooms=tuple(
        p.RoomState(room=r, last_seq=0) for r in rooms))


def lusers_answered(conn: IrcConnection, out: list[c.Action],
                    online: tuple[str, ...] = ("alice",)) -> list[c.Action]:
    """``out`` and what follows once the LUSERS of registration (WHO, ROOMS) are
    answered."""
    for call in calls(out):
        if call.request == c.Who(None):
            out = out + conn.result(call.id, p.WhoList(users=tuple(
                p.UserPresence(name=n, presence="online") for n in online)))
        elif call.request == c.ListRooms():
            out = out + conn.result(call.id, p.RoomList(rooms=()))
    return out


def register(conn: IrcConnection, nick: str = "alice", caps: str = "") -> list[c.Action]:
    out = feed(conn, *(["CAP LS 302", f"CAP REQ :{caps}"] if caps else []),
               "PASS secret", f"NICK {nick}", "USER u 0 * :Real Name",
               *(["CAP END"] if caps else []))
    (login,) = calls(out)
    assert login.request == c.Login(nick, "secret")
    return lusers_answered(conn, out + conn.result(login.id, logged_in(nick)))


def joined(conn: IrcConnection, room: str = "dev", created: bool = True) -> list[c.Action]:
    (call,) = calls(feed(conn, f"JOIN #{room}"))
    assert call.request == c.Join(room)
    out = conn.result(call.id, p.RoomJoined(room=room, last_seq=0, created=created,
                                            topic="t"))
    (who,) = calls(out)
    return out + conn.result(who.id, p.WhoList(users=(
        p.UserPresence(name="alice", presence="online"),
        p.UserPresence(name="bob", presence="online"),
        p.UserPresence(name="carol", presence="offline"))))


def test_no_credentials_is_a_clear_error_and_a_close() -> None:
    conn = connection()
    out = feed(conn, "NICK alice", "USER u 0 * :x")
    assert [m.command for m in lines(out)] == ["NOTICE", "ERROR"]
    assert isinstance(out[-1], c.Close)
    assert conn.closed


def test_pass_account_colon_password_wins_over_the_nick() -> None:
    conn = connection()
    out = feed(conn, "PASS bob:pw", "NICK whatever", "USER u 0 * :x")
    (login,) = calls(out)
    assert login.request == c.Login("bob", "pw")
    out = lusers_answered(conn, conn.result(login.id, logged_in("bob")))
    msgs = lines(out)
    assert msgs[0] == Message("NICK", ("bob",), source="whatever!~u@zchat")
    assert msgs[1].command == "001" and msgs[1].params[0] == "bob"


def test_wrong_password_is_464_and_a_close() -> None:
    conn = connection()
    (login,) = calls(feed(conn, "PASS x", "NICK alice", "USER u 0 * :x"))
    out = conn.failure(login.id, 401, "wrong name or password")
    assert [m.command for m in lines(out)] == ["464", "ERROR"]
    assert conn.closed


def test_welcome_advertises_isupport() -> None:
    out = register(connection())
    isupport = next(m for m in lines(out) if m.command == "005")
    assert {"CASEMAPPING=ascii", "CHANTYPES=#", "UTF8ONLY", "NICKLEN=32",
            "TOPICLEN=300"} <= set(isupport.params)


def test_sasl_plain_logs_in_before_registration() -> None:
    conn = connection()
    out = feed(conn, "CAP LS 302", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    assert lines(out)[-1] == Message("AUTHENTICATE", ("+",))
    blob = base64.b64encode(b"\0bob\0pw").decode()
    (login,) = calls(feed(conn, f"AUTHENTICATE {blob}"))
    assert login.request == c.Login("bob", "pw")
    out = conn.result(login.id, logged_in("bob"))
    assert [m.command for m in lines(out)] == ["900", "903"]
    out = feed(conn, "NICK nick", "USER u 0 * :x", "CAP END")
    assert any(m.command == "001" and m.params[0] == "bob" for m in lines(out))
    assert [call.request for call in calls(out)] == [c.Who(None), c.ListRooms()]


def test_sasl_failure_is_904() -> None:
    conn = connection()
    feed(conn, "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    (login,) = calls(feed(conn, "AUTHENTICATE " + base64.b64encode(b"\0bob\0x").decode()))
    assert [m.command for m in lines(conn.failure(login.id, 401, "no"))] == ["904"]


def test_commands_before_registration_are_451() -> None:
    conn = connection()
    assert [m.command for m in lines(feed(conn, "JOIN #a"))] == ["451"]


def test_join_names_and_topic() -> None:
    conn = connection()
    register(conn)
    out = lines(joined(conn))
    assert out[0] == Message("JOIN", ("#dev",), source="alice!~u@zchat")
    assert out[1].command == "332"
    names = next(m for m in out if m.command == "353")
    assert names.params[-1] == "@alice bob"  # the creator is an operator; offline left out
    assert out[-1].command == "366"


def test_privmsg_to_channel_and_echo_once() -> None:
    conn = connection()
    register(conn, caps="echo-message server-time message-tags account-tag")
    joined(conn)
    (post,) = calls(feed(conn, "PRIVMSG #dev :hi \x02there\x02"))
    assert post.request == c.Post("dev", "hi there", "text")
    # the event comes first: held until the reply says whose it is, then shown once
    ev = p.MessagePosted(room="dev", seq=7, time=1_700_000_000_123, sender="alice",
                         text="hi there")
    assert lines(conn.event(ev)) == []
    out = lines(conn.result(post.id, p.Sent(room="dev", seq=7, time=1_700_000_000_123)))
    assert len(out) == 1
    assert out[0].tags == {"time": "2023-11-14T22:13:20.123Z", "msgid": "dev/7",
                           "account": "alice"}
    assert lines(conn.event(ev)) == []


def test_no_echo_without_the_capability() -> None:
    conn = connection()
    register(conn)
    joined(conn)
    (post,) = calls(feed(conn, "PRIVMSG #dev :\x01ACTION waves\x01"))
    assert post.request == c.Post("dev", "waves", "action")
    assert lines(conn.result(post.id, p.Sent(room="dev", seq=1, time=0))) == []
    assert lines(conn.event(p.MessagePosted(room="dev", seq=1, time=0, sender="alice",
                                            text="waves", kind="action"))) == []


def test_others_messages_split_and_actions() -> None:
    conn = connection()
    register(conn)
    joined(conn)
    out = lines(conn.event(p.MessagePosted(room="dev", seq=2, time=0, sender="bob",
                                           text="line one\nline two", kind="text")))
    assert [m.params for m in out] == [("#dev", "line one"), ("#dev", "line two")]
    out = lines(conn.event(p.MessagePosted(room="dev", seq=3, time=0, sender="bob",
                                           text="é" * 400, kind="action")))
    assert len(out) == 2
    assert all(m.params[1].startswith("\x01ACTION ") and m.params[1].endswith("\x01")
               for m in out)


def test_refusals_are_numerics_or_fail_never_silence() -> None:
    conn = connection()
    register(conn)
    joined(conn)
    cases: list[tuple[int, str]] = [(403, "404"), (413, "FAIL"), (429, "FAIL"),
                                    (404, "403"), (500, "FAIL")]
    for status, expected in cases:
        (post,) = calls(feed(conn, "PRIVMSG #dev :hi"))
        out = lines(conn.failure(post.id, status, "because"))
        assert out and out[0].command == expected, (status, out)
    (dm,) = calls(feed(conn, "PRIVMSG nobody :hi"))
    assert [m.command for m in lines(conn.failure(dm.id, 404, "no"))] == ["401"]


def test_presence_and_membership_events() -> None:
    conn = connection()
    register(conn, caps="away-notify extended-join")
    joined(conn)
    out = conn.event(p.UserJoined(room="dev", name="dave", time=0))
    (ask,) = calls(out)  # dave's presence is not known: the broker is asked
    assert ask.request == c.Whois("dave") and lines(out) == []
    out = lines(conn.result(ask.id, p.UserFound(name="dave", presence="online")))
    assert out == [Message("JOIN", ("#dev", "dave", "dave"), source="dave!~u@zchat")]
    out = lines(conn.event(p.PresenceChanged(name="bob", presence="away", time=0,
                                             text="lunch")))
    assert out == [Message("AWAY", ("lunch",), source="bob!~u@zchat")]
    out = lines(conn.event(p.PresenceChanged(name="bob", presence="offline", time=0)))
    assert [m.command for m in out] == ["QUIT"]
    out = lines(conn.event(p.UserLeft(room="dev", name="dave", time=0, by="alice",
                                      reason="out")))
    assert out == [Message("KICK", ("#dev", "dave", "out"), source="alice!~u@zchat")]
    # rooms the IRC client did not join stay silent
    assert lines(conn.event(p.UserJoined(room="other", name="x", time=0))) == []


def test_quit_logs_out_and_closes() -> None:
    conn = connection()
    register(conn)
    out = feed(conn, "QUIT :bye")
    assert lines(out)[0].command == "ERROR"
    assert any(isinstance(a, c.Call) and a.request == c.Logout("bye") for a in out)
    assert isinstance(out[-1], c.Close)


def test_unknown_and_short_commands() -> None:
    conn = connection()
    register(conn)
    assert [m.command for m in lines(feed(conn, "FROB x"))] == ["421"]
    assert [m.command for m in lines(feed(conn, "KICK #dev"))] == ["461"]
    assert [m.command for m in lines(feed(conn, "NICK bad!nick"))] == ["432"]
    # a command with terminal escapes is named without them (a tester's BEL and ESC
    # came back raw in the 421)
    (unknown,) = lines(feed(conn, "FOO\x07\x1b[31m x"))
    assert unknown.params == ("alice", "FOO??[31M", "Unknown command")


def test_shutdown_sends_error() -> None:
    conn = connection(Settings(server_name="gw"))
    register(conn)
    out: list[Any] = conn.shutdown("bye")
    assert lines(out)[0].command == "ERROR" and isinstance(out[-1], c.Close)


def test_labeled_response_batches_what_the_command_said() -> None:
    conn = connection()
    register(conn, caps="labeled-response batch")
    out = feed(conn, "@label=a1 PING x")
    (ping,) = calls(out)
    assert lines(out) == []  # nothing before the command's call is answered
    (pong,) = lines(conn.result(ping.id, None))
    assert pong.command == "PONG" and pong.tags == {"label": "a1"}
    (ack,) = lines(feed(conn, "@label=a2 PONG x"))
    assert ack.command == "ACK" and ack.tags == {"label": "a2"}
    (who,) = calls(feed(conn, "@label=a3 WHO #dev"))
    out = lines(conn.result(who.id, p.WhoList(users=(
        p.UserPresence(name="bob", presence="online"),))))
    assert [m.command for m in out] == ["BATCH", "352", "315", "BATCH"]
    assert out[0].tags == {"label": "a3"} and out[0].params[1] == "labeled-response"
    assert all(m.tags == {"batch": out[0].params[0][1:]} for m in out[1:3])


def test_chathistory_selection() -> None:
    from zchat.irc.history import Item, parse_timestamp, select

    items = [Item(1000 * i, f"dev/{i}", "bob", "#dev", f"m{i}") for i in range(1, 11)]

    def texts(sub: str, *refs: str, limit: int = 100) -> list[str]:
        return [it.text for it in select(items, sub, refs, limit)]

    assert texts("LATEST", "*", limit=3) == ["m8", "m9", "m10"]
    assert texts("LATEST", "msgid=dev/8") == ["m9", "m10"]
    assert texts("BEFORE", "msgid=dev/5", limit=2) == ["m3", "m4"]
    assert texts("AFTER", "msgid=dev/5", limit=2) == ["m6", "m7"]
    assert texts("AROUND", "msgid=dev/7", limit=1) == ["m7"]
    assert texts("AROUND", "msgid=dev/7", limit=3) == ["m6", "m7", "m8"]
    assert texts("BETWEEN", "msgid=dev/1", "msgid=dev/10", limit=3) == ["m2", "m3", "m4"]
    assert texts("BETWEEN", "msgid=dev/10", "msgid=dev/1", limit=3) == ["m7", "m8", "m9"]
    assert texts("BEFORE", "timestamp=1970-01-01T00:00:03.000Z") == ["m1", "m2"]
    assert texts("AFTER", "timestamp=1970-01-01T00:00:09.500Z") == ["m10"]
    assert texts("BEFORE", "msgid=other/3") == []
    assert parse_timestamp("2023-11-14T22:13:20.123Z") == 1_700_000_000_123


def _names_of(out: list[c.Action]) -> list[str]:
    return [n for m in lines(out) if m.command == "353" for n in m.params[-1].split()]


def test_names_and_who_show_owners_and_moderators_as_operators() -> None:
    """WHO's role (docs/PROTOCOL.md §6.11): the owner and moderators are ``@`` in NAMES and
    WHO; an older broker's WHO (no role) leaves what MODE events told."""
    conn = connection()
    register(conn)
    (call,) = calls(feed(conn, "JOIN #dev"))
    (who,) = calls(conn.result(call.id, p.RoomJoined(room="dev", last_seq=0, created=False)))
    out = conn.result(who.id, p.WhoList(users=(
        p.UserPresence(name="alice", presence="online", role="member"),
        p.UserPresence(name="bob", presence="online", role="owner"),
        p.UserPresence(name="carol", presence="away", role="moderator"),
        p.UserPresence(name="dan", presence="online", role="member"))))
    assert _names_of(out) == ["alice", "@bob", "@carol", "dan"]
    (who,) = calls(feed(conn, "WHO #dev"))
    out = conn.result(who.id, p.WhoList(users=(
        p.UserPresence(name="bob", presence="online", role="owner"),
        p.UserPresence(name="carol", presence="away", role="member"),
        p.UserPresence(name="dan", presence="online", role="moderator"))))
    assert [(m.params[5], m.params[6]) for m in lines(out) if m.command == "352"] == [
        ("bob", "H@"), ("carol", "G"), ("dan", "H@")]
    (who,) = calls(feed(conn, "NAMES #dev"))
    out = conn.result(who.id, p.WhoList(users=(
        p.UserPresence(name="bob", presence="online"),
        p.UserPresence(name="dan", presence="online"))))
    assert _names_of(out) == ["alice", "@bob", "carol", "@dan"]


def _posted(seq: int, text: str, sender: str = "bob", time: int = 1_700_000_000_000
            ) -> p.MessagePosted:
    return p.MessagePosted(room="dev", seq=seq, sender=sender, text=text, time=time + seq)


def test_playback_on_join_replays_each_message_once_then_what_was_held() -> None:
    """[irc] playback (docs/irc.md, "Playback"): a client without draft/chathistory gets
    the messages up to the room's last seq at JOIN; one posted meanwhile comes after them,
    once; the read marker follows what the client was given."""
    conn = connection(Settings(playback=2))
    register(conn)
    (call,) = calls(feed(conn, "JOIN #dev"))
    (who,) = calls(conn.result(call.id, p.RoomJoined(room="dev", last_seq=7, created=False)))
    assert lines(conn.event(_posted(8, "live"))) == []  # held until the playback
    (history,) = calls(conn.result(who.id, p.WhoList(users=())))
    assert history.request == c.History("dev", 2)
    out = conn.result(history.id, p.HistoryPage(room="dev", messages=(
        _posted(6, "six"), _posted(7, "seven"), _posted(8, "live"))))
    texts = [m.params[1] for m in lines(out) if m.command == "PRIVMSG"]
    assert texts == ["[2023-11-14 22:13Z] six", "[2023-11-14 22:13Z] seven", "live"]
    assert [x.request for x in calls(out)] == [c.MarkRead("dev", 6)]


def test_no_playback_for_a_chathistory_client_and_unread_ones_when_more() -> None:
    conn = connection(Settings(playback=2))
    register(conn, caps="draft/chathistory")
    (call,) = calls(feed(conn, "JOIN #dev"))
    (who,) = calls(conn.result(call.id, p.RoomJoined(room="dev", last_seq=7, created=False)))
    assert calls(conn.result(who.id, p.WhoList(users=()))) == []
    conn = connection(Settings(playback=2))
    (login,) = calls(feed(conn, "PASS secret", "NICK alice", "USER u 0 * :x"))
    lusers_answered(conn, conn.result(login.id, p.LoggedIn(name="alice", session="s", rooms=(
        p.RoomState(room="dev", last_seq=7),), room_reads=(p.RoomRead(room="dev", read_seq=2),))))
    (call,) = calls(feed(conn, "JOIN #dev"))
    (who,) = calls(conn.result(call.id, p.RoomJoined(room="dev", last_seq=7, created=False)))
    (history,) = calls(conn.result(who.id, p.WhoList(users=())))
    assert history.request == c.History("dev", 5)


def test_formatting_only_and_several_targets_are_answered() -> None:
    """A PRIVMSG that carries nothing once IRC formatting is taken out gets 412, and one
    to several targets (TARGMAX=PRIVMSG:1) gets 407 with nothing sent: neither used to
    get any reply (#misc,carol reached #misc only)."""
    conn = connection()
    register(conn)
    joined(conn)
    out = feed(conn, "PRIVMSG #dev :\x02\x02")
    assert not calls(out)
    assert [m.command for m in lines(out)] == ["412"]
    out = feed(conn, "PRIVMSG #dev :\x03" + "4   ")
    assert [m.command for m in lines(out)] == ["412"] and not calls(out)
    out = feed(conn, "PRIVMSG #misc,carol :multi")
    assert not calls(out)
    (too_many,) = lines(out)
    assert too_many.command == "407" and too_many.params[1] == "#misc,carol"
    out = feed(conn, "NOTICE #misc,carol :multi")
    assert not calls(out) and [m.command for m in lines(out)] == ["407"]
    isupport = " ".join(" ".join(m.params) for m in lines(register(connection()))
                        if m.command == "005")
    assert "TARGMAX=PRIVMSG:1,NOTICE:1" in isupport


def test_a_message_kept_for_the_broker_answers_its_label_with_its_outcome() -> None:
    """A labeled PRIVMSG the adapter keeps while the broker is away (``held``): the
    NOTICE saying so comes at once, unlabeled; the label waits for the outcome
    (``held_answer``): the echo, or the FAIL, labeled; a labeled command meanwhile is
    answered with its own label, unmixed (a tester's client got ACK at once, then an
    unlabeled FAIL, and believed the message sent)."""
    conn = connection()
    register(conn, caps="labeled-response echo-message batch")
    joined(conn)
    (post,) = calls(feed(conn, "@label=a PRIVMSG #dev :later"))
    (notice,) = lines(conn.held(post.id, True, 30))
    assert notice.command == "NOTICE" and "label" not in notice.tags
    (ping,) = calls(feed(conn, "@label=b PING x"))  # another labeled command under way
    (echo,) = lines(conn.held_answer(post.id, p.Sent(room="dev", seq=7, time=1000)))
    assert echo.command == "PRIVMSG" and echo.tags.get("label") == "a"
    (pong,) = lines(conn.result(ping.id, None))
    assert pong.command == "PONG" and pong.tags.get("label") == "b"
    (post,) = calls(feed(conn, "@label=c PRIVMSG #dev :never"))
    assert lines(conn.held(post.id, False, 30)) == []
    out = conn.held_answer(post.id, status=503, reason="not sent: gone")
    assert [(m.command, m.params[1], m.tags.get("label")) for m in lines(out)] == [
        ("FAIL", "MESSAGE_REFUSED", "c")]
    (post,) = calls(feed(conn, "PRIVMSG #dev :unlabeled"))
    conn.held(post.id, False, 30)
    out = conn.held_answer(post.id, status=503, reason="not sent: gone")
    assert [(m.command, m.tags) for m in lines(out)] == [("FAIL", {})]


def _ban_shown(answer_first: bool) -> list[Message]:
    conn = connection()
    register(conn)
    joined(conn)
    (ban,) = calls(feed(conn, "MODE #dev +b bob!*@*"))
    assert ban.request == c.Ban("dev", "bob", 0)
    left = p.UserLeft(room="dev", name="bob", time=1, by="alice", reason="spam", ban=True)
    if answer_first:
        out = conn.result(ban.id, p.Ok()) + conn.event(left)
    else:
        out = conn.event(left) + conn.result(ban.id, p.Ok())
    return lines(out)


def test_a_ban_of_ones_own_is_shown_once_whichever_comes_first() -> None:
    """BAN's answer and the LEFT with ``ban`` race: MODE +b once, then the KICK."""
    for answer_first in (True, False):
        shown = _ban_shown(answer_first)
        assert [(m.command, m.params) for m in shown] == [
            ("MODE", ("#dev", "+b", "bob!*@*")), ("KICK", ("#dev", "bob", "spam"))]
    conn = connection()
    register(conn)
    joined(conn)
    out = lines(conn.event(p.UserLeft(room="dev", name="bob", time=1, by="carol", ban=True)))
    assert [m.command for m in out] == ["MODE", "KICK"] and out[0].source.startswith("carol!")


def test_presence_is_kept_only_for_accounts_the_connection_cares_about() -> None:
    """Every connection hears every account's presence: keeping all of it made the
    gateway's memory grow with the square of its connections (benchmarks/irc.py, 1,000
    idle connections). Kept: members of its channels, MONITORed nicks, nicks it already
    knows (kept up to date, so ISON's answer from them never goes stale)."""
    conn = connection()
    register(conn)
    joined(conn)
    conn.event(p.PresenceChanged(name="bob", presence="away", time=0, text="lunch"))
    for n in range(50):
        conn.event(p.PresenceChanged(name=f"stranger{n}", presence="online", time=0))
    assert "stranger0" not in conn.known and conn.known["bob"] == ("away", "lunch")
    # an ISON of a stranger asks the broker, and its answer is then kept up to date
    (ask,) = calls(feed(conn, "ISON stranger7"))
    assert ask.request == c.Whois("stranger7")
    out = conn.result(ask.id, p.UserFound(name="stranger7", presence="online"))
    assert lines(out) == [Message("303", ("alice", "stranger7"), source="irc.zchat")]
    conn.event(p.PresenceChanged(name="stranger7", presence="offline", time=0))
    assert conn.known["stranger7"] == ("offline", "")
    assert lines(feed(conn, "ISON stranger7")) == [
        Message("303", ("alice", ""), source="irc.zchat")]


# -- members shown (zchat/irc/members.py): JOIN/QUIT/AWAY once, from what was shown ---------


def _bob_said(text: str, seq: int, sender: str = "frank") -> p.MessagePosted:
    return p.MessagePosted(room="dev", seq=seq, sender=sender, text=text, time=0)


def test_an_offline_joiner_is_not_shown_and_its_message_still_is() -> None:
    """A one-shot ``zchat say --as frank`` joins #dev and posts without announcing
    presence: the gateway asks WHOIS, holds the room's lines meanwhile, shows no JOIN for
    an offline frank (as NAMES does not), delivers the line, and shows the JOIN when frank
    comes online."""
    conn = connection()
    register(conn)
    joined(conn)
    out = conn.event(p.UserJoined(room="dev", name="frank", time=0))
    (ask,) = calls(out)
    assert ask.request == c.Whois("frank") and lines(out) == []
    assert lines(conn.event(_bob_said("hello", 1))) == []  # held until WHOIS answers
    out = lines(conn.result(ask.id, p.UserFound(name="frank", presence="offline")))
    assert [(m.command, m.source) for m in out] == [("PRIVMSG", "frank!~u@zchat")]
    assert conn.channels["dev"].members["frank"].presence == "offline"  # not in NAMES
    out = lines(conn.event(p.PresenceChanged(name="frank", presence="online", time=0)))
    assert out == [Message("JOIN", ("#dev",), source="frank!~u@zchat")]
    out = lines(conn.event(p.PresenceChanged(name="frank", presence="offline", time=0)))
    assert [m.command for m in out] == ["QUIT"]


def test_an_online_joiner_is_shown_before_its_first_line() -> None:
    conn = connection()
    register(conn)
    joined(conn)
    (ask,) = calls(conn.event(p.UserJoined(room="dev", name="frank", time=0)))
    assert lines(conn.event(_bob_said("hi all", 1))) == []
    out = lines(conn.result(ask.id, p.UserFound(name="frank", presence="online")))
    assert [(m.command, m.params) for m in out] == [("JOIN", ("#dev",)),
                                                    ("PRIVMSG", ("#dev", "hi all"))]


def test_a_presence_event_during_the_joiners_whois_wins_over_its_answer() -> None:
    conn = connection()
    register(conn)
    joined(conn)
    (ask,) = calls(conn.event(p.UserJoined(room="dev", name="frank", time=0)))
    out = lines(conn.event(p.PresenceChanged(name="frank", presence="online", time=0)))
    assert [m.command for m in out] == ["JOIN"]
    # the WHOIS answer, computed before, says offline: older than the event, ignored
    assert lines(conn.result(ask.id, p.UserFound(name="frank", presence="offline"))) == []
    assert conn.channels["dev"].members["frank"].presence == "online"


def _restored_two_channels(conn: IrcConnection) -> dict[str, int]:
    """alice in #dev and #rs with bob in both; the broker stopped (bob QUIT) and came
    back: the resync's WHO calls, by room."""
    register(conn, caps="away-notify")
    joined(conn)
    joined(conn, "rs", created=False)
    conn.event(p.PresenceChanged(name="bob", presence="offline", time=0))
    from zchat.client.events import ConnectionLost, ConnectionRestored
    conn.event(ConnectionLost(1.0))
    return {call.request.room: call.id  # type: ignore[union-attr]
            for call in calls(conn.event(ConnectionRestored()))
            if isinstance(call.request, c.Who)}


def _who(*users: tuple[str, str]) -> p.WhoList:
    return p.WhoList(users=tuple(p.UserPresence(name=n, presence=pr) for n, pr in users))


def test_a_resync_answer_older_than_a_presence_event_shows_no_second_join() -> None:
    """The race of a broker restart: bob's PRESENCE online arrives between the resync's
    WHO and its answer; the answer (computed before or after) must not JOIN bob again
    in either channel, nor QUIT him."""
    conn = connection()
    whos = _restored_two_channels(conn)
    out = lines(conn.event(p.PresenceChanged(name="bob", presence="online", time=0)))
    assert [(m.command, m.params) for m in out] == [("JOIN", ("#dev",)), ("JOIN", ("#rs",))]
    assert lines(conn.result(whos["dev"], _who(("alice", "online"), ("bob", "online")))) == []
    assert lines(conn.result(whos["rs"], _who(("alice", "online"), ("bob", "offline")))) == []
    assert not conn.presence_unsure


def test_a_presence_event_after_one_channels_resync_joins_only_where_not_shown() -> None:
    """The resync of #dev shows bob; a PRESENCE online then must JOIN him in #rs only,
    and #rs's WHO after that nothing (the old code JOINed him in #dev twice)."""
    conn = connection()
    whos = _restored_two_channels(conn)
    out = lines(conn.result(whos["dev"], _who(("alice", "online"), ("bob", "online"))))
    assert [(m.command, m.params) for m in out] == [("JOIN", ("#dev",))]
    out = lines(conn.event(p.PresenceChanged(name="bob", presence="away", time=0,
                                             text="tea")))
    assert [(m.command, m.params) for m in out] == [
        ("AWAY", ("tea",)), ("JOIN", ("#rs",)), ("AWAY", ("tea",))]
    assert lines(conn.result(whos["rs"], _who(("alice", "online"), ("bob", "online")))) == []


def test_a_line_from_a_member_shown_offline_after_a_reconnect_joins_it_first() -> None:
    conn = connection()
    whos = _restored_two_channels(conn)
    out = lines(conn.event(_bob_said("outage-late", 7, sender="bob")))
    assert [(m.command, m.params) for m in out] == [("JOIN", ("#dev",)),
                                                    ("PRIVMSG", ("#dev", "outage-late"))]
    assert lines(conn.result(whos["dev"], _who(("alice", "online"), ("bob", "online")))) == []
    out = lines(conn.result(whos["rs"], _who(("alice", "online"), ("bob", "online"))))
    assert [(m.command, m.params) for m in out] == [("JOIN", ("#rs",))]
    # the resync answered: a line from a member shown offline joins nothing any more
    conn.event(p.PresenceChanged(name="bob", presence="offline", time=0))
    out = lines(conn.event(_bob_said("one-shot", 8, sender="bob")))
    assert [m.command for m in out] == ["PRIVMSG"]


def test_after_a_sasl_login_others_see_the_users_mask_at_once() -> None:
    """The broker publishes carol online at her SASL LOGIN, before her CAP END: the
    other connections' JOIN of her must already show her USER (~carolyn), as her 900
    and everything after do."""
    peers: dict[str, Any] = {}
    alice = connection(peers=peers)
    register(alice)
    joined(alice)  # carol is a member of #dev, offline
    carol = connection(peers=peers)
    feed(carol, "CAP LS 302", "NICK carol", "USER carolyn 0 * :Carol", "CAP REQ :sasl",
         "AUTHENTICATE PLAIN")
    (login,) = calls(feed(carol, "AUTHENTICATE " + base64.b64encode(b"\0carol\0pw")
                          .decode()))
    out = lines(carol.result(login.id, logged_in("carol")))
    assert out[0].command == "900" and out[0].params[1] == "carol!~carolyn@zchat"
    out = lines(alice.event(p.PresenceChanged(name="carol", presence="online", time=0)))
    assert [m.source for m in out if m.command == "JOIN"] == ["carol!~carolyn@zchat"]


def test_a_topic_and_modes_changed_while_away_are_shown_after_the_reconnect() -> None:
    """A third tester's topic change made while another user's gateway client was
    reconnecting was never shown to that user, and TOPIC kept the old one: the resync
    reads each channel's ROOM_INFO too. A change heard by an event meanwhile is newer."""
    from zchat.client.events import ConnectionLost, ConnectionRestored
    conn = connection()
    register(conn)
    joined(conn)  # topic "t"
    joined(conn, "rs", created=False)
    conn.event(ConnectionLost(1.0))
    infos = {call.request.room: call.id  # type: ignore[union-attr]
             for call in calls(conn.event(ConnectionRestored()))
             if isinstance(call.request, c.RoomInfo)}
    assert set(infos) == {"dev", "rs"}
    out = lines(conn.result(infos["dev"], p.RoomDetails(
        room="dev", members=2, last_seq=0, joined=True, topic="changed", locked=True)))
    assert out == [Message("TOPIC", ("#dev", "changed"), source="irc.zchat"),
                   Message("MODE", ("#dev", "+m"), source="irc.zchat")]
    assert conn.channels["dev"].topic == "changed"
    # #rs: a TOPIC event heard before the answer is newer than the answer
    conn.event(p.TopicChanged(room="rs", topic="newest", by="bob", time=0))
    assert lines(conn.result(infos["rs"], p.RoomDetails(
        room="rs", members=2, last_seq=0, joined=True, topic="older"))) == []
    assert conn.channels["rs"].topic == "newest"


def test_a_background_answer_is_no_part_of_a_labeled_response_under_way() -> None:
    """A joiner is shown (JOIN) once its WHOIS is answered, a background call; that
    answer came while another command's labeled response was being gathered, and the
    JOIN went into that command's labeled-response batch (a flake of the multiline test
    under load). Its lines are written as an event's."""
    conn = connection()
    register(conn, caps="labeled-response batch message-tags")
    joined(conn)
    (ask,) = calls(conn.event(p.UserJoined(room="dev", name="frank", time=0)))
    assert ask.request == c.Whois("frank")
    (whois,) = calls(feed(conn, "@label=L1 WHOIS bob"))
    out = lines(conn.result(ask.id, p.UserFound(name="frank", presence="online")))
    assert [(m.command, m.tags.get("label"), m.tags.get("batch")) for m in out] == [
        ("JOIN", None, None)]
    out = lines(conn.result(whois.id, p.UserFound(name="bob", presence="online")))
    assert out[0].command == "BATCH" and out[0].tags == {"label": "L1"}
    assert "JOIN" not in [m.command for m in out]
