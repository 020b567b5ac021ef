"""The zchat client library (docs/design.md, "The client package").

Users import the public API from here, as they always have::

    from zchat.client import Client, SyncClient, ConnectionLost

The names are re-exported lazily (PEP 562 ``__getattr__``): ``import zchat.client`` loads
nothing else, and the first use of ``Client`` loads the asyncio client and zmq. So the
pure session module, ``zchat.client.session``, can be imported (it imports this package
first) without loading sockets or an event loop. Inside zchat, import each name from the
module that defines it:

- ``client.py``: ``Client``, the asyncio client (sockets, requests, readers, heartbeats,
  reconnecting), with its constants;
- ``sync.py``: ``SyncClient``, the blocking wrapper;
- ``events.py``: the client-side events and ``Event``;
- ``session.py``: the pure decisions (``RoomFeed``, ``UnreadTracker``, ``Unread``, gap
  and backfill, membership, liveness, ``backoff_delay``);
- ``trust.py``: the broker's key — trust on first use and pinning (``BrokerKeyChanged``,
  ``pin_broker_key``, ``fetch_broker_key`` …);
- ``endpoints.py``: the PUB endpoint, host names looked up before connecting.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zchat.client.client import Client, new_cmid
    from zchat.client.events import (
        ConnectionLost,
        ConnectionRestored,
        Event,
        JoinedElsewhere,
        LeftElsewhere,
        Reconnecting,
        SessionEnded,
    )
    from zchat.client.session import RoomFeed, Unread, UnreadTracker, backoff_delay
    from zchat.client.sync import SyncClient
    from zchat.client.trust import BrokerKeyChanged, Pinned
    from zchat.errors import (
        ConnectionFailed,
        LocalProtocolError,
        ProtocolError,
        RequestFailed,
        Status,
        ZchatError,
    )

#: Each public name -> the module that defines it.
_PUBLIC = {
    "Client": "zchat.client.client",
    "new_cmid": "zchat.client.client",
    "SyncClient": "zchat.client.sync",
    "ConnectionLost": "zchat.client.events",
    "ConnectionRestored": "zchat.client.events",
    "Event": "zchat.client.events",
    "JoinedElsewhere": "zchat.client.events",
    "LeftElsewhere": "zchat.client.events",
    "Reconnecting": "zchat.client.events",
    "SessionEnded": "zchat.client.events",
    "Unread": "zchat.client.session",
    "backoff_delay": "zchat.client.session",
    "BrokerKeyChanged": "zchat.client.trust",
    "Pinned": "zchat.client.trust",
    # the errors a client raises, importable from here as before the client package
    # (a user's `from zchat.client import Client, ConnectionFailed` kept working)
    "ConnectionFailed": "zchat.errors",
    "RequestFailed": "zchat.errors",
    "LocalProtocolError": "zchat.errors",
    "ProtocolError": "zchat.errors",
    "ZchatError": "zchat.errors",
    "Status": "zchat.errors",
    "RoomFeed": "zchat.client.session",
    "UnreadTracker": "zchat.client.session",
}

__all__ = [
    "BrokerKeyChanged", "Client", "ConnectionFailed", "ConnectionLost",
    "ConnectionRestored", "Event", "JoinedElsewhere", "LeftElsewhere",
    "LocalProtocolError", "Pinned", "ProtocolError", "Reconnecting", "RequestFailed",
    "RoomFeed", "SessionEnded", "Status", "SyncClient", "Unread", "UnreadTracker",
    "ZchatError", "backoff_delay", "new_cmid",
]


def __getattr__(name: str) -> Any:
    """A public name, loaded from its module at first use (then kept here)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'zchat.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
