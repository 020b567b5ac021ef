"""What one gateway's IRC connections share of a message beyond its zchat text: the
client-only tags it was sent with (``+typing``, ``+draft/reply``; message-tags) and the
line structure of a ``draft/multiline`` batch (which lines were ``draft/multiline-concat``).

zchat's protocol carries a message's text and kind only, so none of this reaches the
broker, other gateways or zchat clients, nor playback and CHATHISTORY later: only the
other IRC connections of the same gateway see it, live (docs/irc.md, "Client-only tags").

A connection says what it is about to send (``expect``, keyed by what the event will
show: room or DM peer, sender and text), before the broker has the message; the broker's
reply then names it (``posted``: the msgid). A connection that hears the event before
the sender's reply has come finds it by the same key (``find``). Pure: no I/O, no clock;
one event loop owns it, as it owns ``Gateway.peers``.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

#: Messages remembered, newest kept: enough for every live relay and echo (they are
#: looked up within a broker round trip), small enough to bound memory.
MAX_REMEMBERED = 1000

#: ("room", room key, sender key, text) or ("dm", sender key, recipient key, text).
Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class Extra:
    """A message's client-only tags (name with its ``+`` -> value) and, for one sent as a
    draft/multiline batch, its lines as (text, concat) pairs."""

    client_tags: dict[str, str] = field(default_factory=dict)
    lines: tuple[tuple[str, bool], ...] = ()

    def joined(self) -> str:
        """The zchat text of ``lines``: concat lines appended, the others after "\\n"."""
        out = ""
        for i, (text, concat) in enumerate(self.lines):
            out += text if concat or i == 0 else "\n" + text
        return out


class Relays:
    """The shared table (one per gateway)."""

    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self._max = max_remembered
        self._pending: OrderedDict[Key, Extra] = OrderedDict()
        self._posted: OrderedDict[str, Extra] = OrderedDict()
        self._tagmsgs = 0
        self._epoch = secrets.token_hex(4)  # tells this gateway's TAGMSG ids from another's

    def tagmsg_id(self) -> str:
        """A msgid for a TAGMSG (never stored: ``tag/<gateway epoch>-<n>``)."""
        self._tagmsgs += 1
        return f"tag/{self._epoch}-{self._tagmsgs}"

    def expect(self, key: Key, extra: Extra) -> None:
        """A message with ``extra`` is on its way to the broker."""
        self._pending[key] = extra
        self._pending.move_to_end(key)
        while len(self._pending) > self._max:
            self._pending.popitem(last=False)

    def posted(self, key: Key, msgid: str) -> None:
        """The broker stored the message of ``key`` as ``msgid``."""
        extra = self._pending.pop(key, None)
        if extra is None:
            return
        self._posted[msgid] = extra
        while len(self._posted) > self._max:
            self._posted.popitem(last=False)

    def dropped(self, key: Key) -> None:
        """The message of ``key`` was refused: nothing to relay."""
        self._pending.pop(key, None)

    def find(self, msgid: str, key: Key) -> Extra | None:
        """What is known of the message ``msgid`` (whose event shows ``key``)."""
        extra = self._posted.get(msgid)
        return extra if extra is not None else self._pending.get(key)
