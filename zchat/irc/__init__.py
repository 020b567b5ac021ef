"""The IRC gateway, ``zchat irc`` (docs/irc.md): IRC clients in, one zchat client each.

- ``codec.py``: the IRC line codec (IRCv3 message tags, the 512-byte line, casemapping,
  splitting zchat texts into IRC lines at character boundaries). Pure.
- ``state.py``: one IRC connection's state machine: parsed IRC messages, zchat events and
  replies in; IRC lines to send and zchat calls to make out. Pure (h11's shape,
  docs/STYLE §1).
- ``server.py``: the asyncio adapter: a listener, and per connection one
  ``zchat.client.Client`` driven by the state machine.
"""
