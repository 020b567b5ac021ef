"""What the core asks its adapter to do (zchat.broker carries it out).

The core says *what* reaches *whom*; zchat.core.delivery is the one place that turns
"reply to this request", "push this to an account's sessions" and "publish this event on
a room" into these actions for the sessions held by this broker:

- ``ToPeer(routing_id, frames)``: send on the ROUTER (a reply or a push);
- ``ToTopic(frames)``: send on the PUB socket (the frames start with the topic);
- ``Offload(job_id, work)``: run ``work()`` off the loop (password hashing) and hand the
  result back through ``BrokerCore.complete(job_id, result, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ToPeer:
    routing_id: bytes
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class ToTopic:
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Offload:
    job_id: int
    work: Callable[[], Any]


Action = ToPeer | ToTopic | Offload
