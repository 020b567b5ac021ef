"""A connection's state machine with its tables: ``connection()`` is what the adapter
(server.py) and the tests make. State (state.py), commands (commands.py), events
(events.py) and CHATHISTORY (history.py) are separate modules by domain; this one puts
them together, so that none of them imports another in a loop."""

from __future__ import annotations

from zchat.irc.commands import COMMANDS as _COMMANDS
from zchat.irc.events import EVENTS
from zchat.irc.register import cmd_register, cmd_verify
from zchat.irc.relay import Relays
from zchat.irc.state import Command, IrcConnection, Peer, Settings
from zchat.irc.texts import cmd_batch, cmd_notice_or_line, cmd_privmsg_or_line, cmd_tagmsg

#: commands.py's table with the text side's (texts.py): TAGMSG, BATCH, and PRIVMSG and
#: NOTICE taking the lines of a draft/multiline batch; REGISTER and VERIFY
#: (register.py, draft/account-registration).
COMMANDS: dict[str, Command] = {
    **_COMMANDS,
    "BATCH": Command(cmd_batch, min_params=1),
    "NOTICE": Command(cmd_notice_or_line),
    "PRIVMSG": Command(cmd_privmsg_or_line),
    "REGISTER": Command(cmd_register, pre_registration=True),
    "TAGMSG": Command(cmd_tagmsg, min_params=1),
    "VERIFY": Command(cmd_verify, pre_registration=True),
}


def connection(settings: Settings | None = None,
               peers: dict[str, Peer] | None = None,
               relays: Relays | None = None) -> IrcConnection:
    """A new IRC connection's state machine (no I/O). ``peers`` and ``relays`` are
    shared by one gateway's connections."""
    return IrcConnection(settings, peers, COMMANDS, EVENTS, relays)
