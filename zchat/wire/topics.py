"""PUB topics (docs/PROTOCOL.md §5): the first frame of every event, on which ZeroMQ's
prefix subscription filters.

Names never contain "/", so the trailing "/" terminates the topic: subscribing to
b"room/dev/" cannot match b"room/devops/".
"""

from __future__ import annotations

TOPIC_ROOM_PREFIX = b"room/"
TOPIC_PRESENCE_PREFIX = b"presence/"
TOPIC_TICK = b"tick/"
#: Broker-wide notices (GOING_AWAY, §6.29); every client subscribes to it.
TOPIC_BROKER = b"broker/"


def room_topic(room_key: str) -> bytes:
    """PUB topic of a room's messages, join/leave notices and topic changes; ``room_key``
    is the folded name."""
    return TOPIC_ROOM_PREFIX + room_key.encode() + b"/"


def presence_topic(name_key: str) -> bytes:
    """PUB topic of one account's presence events; ``name_key`` is the folded name."""
    return TOPIC_PRESENCE_PREFIX + name_key.encode() + b"/"

