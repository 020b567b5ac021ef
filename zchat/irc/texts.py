"""TAGMSG and the draft/multiline batches a client sends (docs/irc.md, "Texts"): the
commands of the IRC text side that zchat/irc/commands.py's PRIVMSG builds on. Pure, like
the state machine.

- ``TAGMSG <target>`` (https://ircv3.net/specs/extensions/message-tags): only client-only
  tags, which zchat does not carry: echoed (echo-message) and shown to the gateway's
  other IRC connections with message-tags that are in the channel or are the nick
  (``c.RelayTagmsg``); zchat clients, other gateways and history never see it.
- ``BATCH +<ref> draft/multiline <target>`` … ``@batch=<ref> PRIVMSG <target> :<line>`` …
  ``BATCH -<ref>`` (https://ircv3.net/specs/extensions/multiline): the lines joined into
  one zchat message (a ``draft/multiline-concat`` line appended to the one before it,
  the others after a newline), sent as one PRIVMSG would be. Over the limits of the
  ``draft/multiline`` capability or malformed: ``FAIL BATCH MULTILINE_*`` and nothing is
  sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zchat.irc import calls as c
from zchat.irc.codec import Message
from zchat.irc.commands import _privmsg, cmd_notice, cmd_privmsg
from zchat.irc.relay import Extra
from zchat.irc.state import (
    CHANTYPES,
    MULTILINE_MAX_BYTES,
    MULTILINE_MAX_LINES,
    IrcConnection,
    valid_nick,
)
from zchat.names import name_key

BATCH_TYPE = "draft/multiline"
CONCAT_TAG = "draft/multiline-concat"


@dataclass
class _Batch:
    """A draft/multiline batch being received: its reference, target, the tags of its
    start (client-only ones are kept), its label, the command of its lines, its lines
    as (text, concat), their bytes as one zchat text, and whether it failed already."""

    ref: str
    target: str
    tags: dict[str, str]
    label: str | None
    command: str = ""
    lines: list[tuple[str, bool]] = field(default_factory=list)
    size: int = 0
    failed: bool = False


def cmd_tagmsg(conn: IrcConnection, msg: Message) -> None:
    # TAGMSG <target>   (message-tags; only the client-only tags are relayed)
    target = msg.params[0]
    if "message-tags" not in conn.caps:
        return  # the tags of a client without message-tags are not read (the spec)
    if "," in target:
        conn.numeric("407", target, "Too many recipients (TAGMSG takes one target)")
        return
    if target.startswith(CHANTYPES):
        ch = conn.channel(target)
        if ch is None:
            conn.numeric("404", target, "Cannot send to channel (you are not in it)")
            return
        target = ch.name
    elif not valid_nick(target):
        conn.numeric("401", target, "No such nick/channel")
        return
    tags = {k: v for k, v in msg.tags.items() if k.startswith("+")}
    msgid = conn.relays.tagmsg_id()
    if "echo-message" in conn.caps:
        conn.send(conn.from_user(conn.nick, "TAGMSG", (target,),
                                 {**conn.tags_for(conn.account, None, msgid), **tags}))
    relay = c.RelayTagmsg(conn.nick, target, tags, msgid)
    if name_key(target) == name_key(conn.nick):
        # to oneself: received too, as a DM to oneself is (not part of a labeled answer)
        conn.show_tagmsg(relay)
    conn.out.append(relay)


def cmd_batch(conn: IrcConnection, msg: Message) -> None:
    # BATCH +<ref> draft/multiline <target>  /  BATCH -<ref>
    ref = msg.params[0]
    if ref.startswith("+"):
        if len(msg.params) < 3 or msg.params[1] != BATCH_TYPE \
                or "draft/multiline" not in conn.caps:
            conn.fail("BATCH", "MULTILINE_INVALID", "only draft/multiline batches with a "
                      "target are taken, once draft/multiline is negotiated")
            return
        if conn.multiline is not None:
            conn.fail("BATCH", "MULTILINE_INVALID", "a draft/multiline batch is open "
                      "already: end it first")
            conn.multiline = None
            return
        # the label of the batch's start labels the answer to the whole batch
        conn.multiline = _Batch(ref[1:], msg.params[2], msg.tags, conn._label)
        conn._label, conn._labeled = None, []
        return
    if not ref.startswith("-"):
        conn.fail("BATCH", "MULTILINE_INVALID", "a batch reference starts with + or -")
        return
    batch: _Batch | None = conn.multiline
    if batch is None or batch.ref != ref[1:]:
        conn.fail("BATCH", "MULTILINE_INVALID", "no such draft/multiline batch open")
        return
    conn.multiline = None
    if conn._label is None and batch.label is not None:
        conn._label, conn._labeled = batch.label, []  # the answer to the whole batch
    if batch.failed:
        return
    if not batch.lines:
        conn.fail("BATCH", "MULTILINE_INVALID", "an empty draft/multiline batch")
        return
    text = Extra(lines=tuple(batch.lines)).joined()
    tags = {k: v for k, v in batch.tags.items() if k.startswith("+")}
    _privmsg(conn, Message(batch.command, (batch.target, text), tags=tags),
             notice=batch.command == "NOTICE", lines=tuple(batch.lines))


def _batch_line(conn: IrcConnection, msg: Message) -> bool:
    """A PRIVMSG or NOTICE of a draft/multiline batch: taken into it (True), or
    ``msg`` has no batch tag (False: an ordinary message)."""
    ref = msg.tags.get("batch")
    if ref is None:
        return False
    conn._label, conn._labeled = None, []  # a line of a batch is not answered alone
    batch: _Batch | None = conn.multiline
    if batch is None or batch.ref != ref:
        conn.fail("BATCH", "MULTILINE_INVALID", f"no draft/multiline batch {ref} open")
        if batch is not None:
            batch.failed = True
        return True
    if batch.failed:
        return True
    text = msg.params[1] if len(msg.params) > 1 else ""
    concat = CONCAT_TAG in msg.tags
    why = ""
    code = "MULTILINE_INVALID"
    if len(msg.params) < 1 or name_key(msg.params[0]) != name_key(batch.target):
        code, why = "MULTILINE_INVALID_TARGET", "every line goes to the batch's target"
    elif batch.command and msg.command != batch.command:
        why = "PRIVMSG and NOTICE lines mixed in one batch"
    elif concat and not text:
        why = f"a blank line cannot carry {CONCAT_TAG}"
    elif text.startswith("\x01"):  # /me included: a zchat message is one kind
        why = "CTCP (an ACTION too) cannot be a line of a draft/multiline batch: send it alone"
    batch.command = msg.command
    if why:
        params = (batch.target, msg.params[0] if msg.params else "*", why) \
            if code == "MULTILINE_INVALID_TARGET" else (why,)
        conn.fail("BATCH", code, *params)
        batch.failed = True
        return True
    batch.size += len(text.encode("utf-8")) + (1 if batch.lines and not concat else 0)
    batch.lines.append((text, concat))
    if len(batch.lines) > MULTILINE_MAX_LINES:
        conn.fail("BATCH", "MULTILINE_MAX_LINES", str(MULTILINE_MAX_LINES),
                  f"a draft/multiline batch has at most {MULTILINE_MAX_LINES} lines")
        batch.failed = True
    elif batch.size > MULTILINE_MAX_BYTES:
        conn.fail("BATCH", "MULTILINE_MAX_BYTES", str(MULTILINE_MAX_BYTES),
                  f"a draft/multiline batch has at most {MULTILINE_MAX_BYTES} bytes "
                  "(its lines and a line break between each two)")
        batch.failed = True
    return True


def cmd_privmsg_or_line(conn: IrcConnection, msg: Message) -> None:
    # PRIVMSG <target> <text>, or a line of a draft/multiline batch (@batch=<ref>)
    if not _batch_line(conn, msg):
        cmd_privmsg(conn, msg)


def cmd_notice_or_line(conn: IrcConnection, msg: Message) -> None:
    # NOTICE <target> <text>, or a line of a draft/multiline batch (@batch=<ref>)
    if not _batch_line(conn, msg):
        cmd_notice(conn, msg)
