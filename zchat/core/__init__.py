"""The broker core: the broker's state machine, pure (no sockets, no clock, no database
of its own), behind ports (docs/design.md, "Architecture").

- ``facade``: ``BrokerCore``, the entry points the loop calls (handle, complete, tick …);
- ``requests``: the request table — each request type's handler and preconditions;
- ``sessions``, ``rooms``, ``dms``, ``moderation``, ``tokens``, ``operators``: the
  handlers, one module per domain; ``operator_actions``: the operator writes shared
  with `zchat admin`;
- ``context`` (shared services, the request's ``Call``), ``protection`` (rate limits,
  budgets, quotas, password jobs' bounds), ``state`` (the in-memory tables and the one
  place they change), ``delivery`` (who becomes routing ids and topics), ``actions``
  (what the adapter carries out), ``jobs`` (typed work for the hash pool);
- ``ports``: the Store port and its rows and domain errors; ``validation`` and
  ``wording``: rules on what people type, and how numbers are worded for them.

Importing it loads neither zmq, sqlite3, asyncio nor argparse (tests/test_hygiene.py).
"""

from zchat.core.actions import Action, Offload, ToPeer, ToTopic
from zchat.core.facade import COSTLY_PING_ROOMS, MAX_SUBSCRIPTION_BYTES, BrokerCore
from zchat.core.jobs import MAX_JOBS_PER_PEER, MAX_PENDING_JOBS
from zchat.core.protection import RESUME_BURST, RESUME_RATE_PER_S
from zchat.core.requests import READING_REQUESTS, REQUESTS
from zchat.core.state import DEFAULT_ROOM, RANKS, Account, Session

__all__ = [
    "COSTLY_PING_ROOMS", "DEFAULT_ROOM", "MAX_JOBS_PER_PEER", "MAX_PENDING_JOBS",
    "MAX_SUBSCRIPTION_BYTES", "RANKS", "READING_REQUESTS", "REQUESTS", "RESUME_BURST",
    "RESUME_RATE_PER_S", "Account", "Action", "BrokerCore", "Offload", "Session", "ToPeer",
    "ToTopic",
]
