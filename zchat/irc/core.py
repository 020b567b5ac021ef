"""A connection's state machine with its tables: ``connection()`` is what the adapter
(server.py) and the tests make. State (state.py), commands (commands.py), events
(events.py) and CHATHISTORY (history.py) are separate modules by domain; this one puts
them together, so that none of them imports another in a loop."""

from __future__ import annotations

from zchat.irc.commands import COMMANDS
from zchat.irc.events import EVENTS
from zchat.irc.state import IrcConnection, Peer, Settings


def connection(settings: Settings | None = None,
               peers: dict[str, Peer] | None = None) -> IrcConnection:
    """A new IRC connection's state machine (no I/O)."""
    return IrcConnection(settings, peers, COMMANDS, EVENTS)
